import gzip
import os
from dataclasses import dataclass, field

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from devices import importers
from devices.constants import MAX_MESSAGES_PER_BATCH
from devices.selectors import device_by_id
from devices.services import IngestResult, messages_ingest

SHOWN_PROBLEMS = 20


@dataclass
class Tally:
    read: int = 0
    stored: int = 0
    changed: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    def add(self, chunk: list[importers.Record], result: IngestResult) -> None:
        self.read += len(chunk)
        self.stored += result.accepted
        self.changed += sum(change.count for change in result.changes)
        self.problems.extend(
            (chunk[error.index].line if error.index is not None else 0, error.reason) for error in result.errors
        )


class Command(BaseCommand):
    help = (
        "Import the messages of one device from a GPX, CSV or JSON lines file (optionally gzipped), "
        "deriving position.speed and position.direction where the file has none. Writes go through "
        "the ingestion service in batches, so re-importing a file changes nothing. Records refused one "
        "by one are listed in the summary; the command fails when the file cannot be read to its end "
        "(what was read before the problem is stored)."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="path of the file (.gpx, .csv, .jsonl or .ndjson, optionally .gz)")
        parser.add_argument(
            "--device", type=int, required=True, help="id of the device that receives the messages"
        )
        parser.add_argument(
            "--format", choices=importers.FORMATS, help="file format (default: from the extension)"
        )
        parser.add_argument("--batch", type=int, default=1000, help="messages per write (default 1000)")

    def handle(self, *args, **options):
        path, batch = options["file"], options["batch"]
        format_name = options["format"] or importers.format_of(path)
        if format_name is None:
            raise CommandError(f"cannot tell the format of {path!r} from its extension; give --format")
        if not 0 < batch <= MAX_MESSAGES_PER_BATCH:
            raise CommandError(f"--batch must be between 1 and {MAX_MESSAGES_PER_BATCH}")
        try:
            device = device_by_id(options["device"])
        except LookupError as exc:  # its datacenter is not served by this process
            raise CommandError(str(exc)) from None
        if device is None:
            raise CommandError(f"device {options['device']} not found")
        if not device.enabled:
            raise CommandError(f"device {device.pk} is disabled: enable it (PUT /gw/devices/{device.pk}) and import again")
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise CommandError(f"cannot open {path}: {exc.strerror}") from None
        name = os.path.basename(path)
        tally = Tally()
        parse_errors: list[importers.ParseError] = []
        failure = None
        progress = tqdm(
            total=os.fstat(raw.fileno()).st_size,
            unit="B",
            unit_scale=True,
            desc=name,
            file=self.stderr,
            disable=None,
        )

        def write(chunk: list[importers.Record]) -> None:
            tally.add(
                chunk,
                messages_ingest(
                    devices=[device], messages=[record.message for record in chunk], source="import"
                ),
            )
            progress.update(raw.tell() - progress.n)
            progress.set_postfix(messages=tally.read, refresh=False)

        with raw, progress:
            stream = gzip.GzipFile(fileobj=raw) if path.lower().endswith(".gz") else raw
            records = importers.derive_motion(
                importers.read(stream, format=format_name, name=name, errors=parse_errors)
            )
            chunk: list[importers.Record] = []
            try:
                for record in records:
                    chunk.append(record)
                    if len(chunk) == batch:
                        write(chunk)
                        chunk = []
            except (importers.ParseError, OSError, EOFError) as exc:
                failure = exc
            if chunk:
                write(chunk)
        self._summary(device, name, format_name, tally, parse_errors)
        if failure is not None:
            raise CommandError(f"import stopped: {failure}")

    def _summary(self, device, name, format_name, tally, parse_errors):
        problems = sorted([(error.line, error.reason) for error in parse_errors] + tally.problems)
        self.stdout.write(
            f"{name} ({format_name}) -> device {device.pk} ({device.ident}): "
            f"read {tally.read + len(parse_errors)} records, stored {tally.stored} messages "
            f"({tally.changed} new or changed), refused {len(problems)}"
        )
        for line, reason in problems[:SHOWN_PROBLEMS]:
            self.stdout.write(f"  refused {name}:{line}: {reason}")
        if len(problems) > SHOWN_PROBLEMS:
            self.stdout.write(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
