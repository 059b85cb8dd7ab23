import gzip
import os
from itertools import islice

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from devices import importers
from devices.constants import MAX_MESSAGES_PER_BATCH
from devices.models import Device, DeviceIdent
from devices.services import messages_ingest
from flespi_site.errors import DomainError
from regions import placement

SHOWN_PROBLEMS = 20


def device_by_id(device_id: int) -> Device | None:
    """The device with ``device_id``, read from the datacenter of its account, or None."""
    claim = DeviceIdent.objects.filter(device_id=device_id).first()
    if claim is None:
        return None
    return placement.using_account(Device, claim.account_id).filter(pk=device_id).first()


class Command(BaseCommand):
    help = (
        "Import the messages of one device from a GPX, CSV or JSON lines file (optionally gzipped), "
        "deriving position.speed and position.direction where the file has none. Writes go through "
        "the ingestion service in batches, so re-importing a file changes nothing. Exits with an "
        "error when the file cannot be read to its end (the batches before the problem are stored); "
        "records refused one by one are listed in the summary."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="path of the file (.gpx, .csv, .jsonl or .ndjson, optionally .gz)")
        parser.add_argument("--device", type=int, required=True, help="id of the device that receives the messages")
        parser.add_argument("--format", choices=importers.FORMATS, help="file format (default: from the extension)")
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
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        if device is None:
            raise CommandError(f"device {options['device']} not found")
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the with below, through the decoder
        except OSError as exc:
            raise CommandError(f"cannot open {path}: {exc.strerror}") from None
        name = os.path.basename(path)
        parse_errors: list[importers.ParseError] = []
        refused: list[tuple[int, str]] = []
        read = stored = changed = 0
        stream = gzip.GzipFile(fileobj=raw) if path.lower().endswith(".gz") else raw
        progress = tqdm(
            total=os.fstat(raw.fileno()).st_size, unit="B", unit_scale=True, desc=name, file=self.stderr, disable=None
        )
        failure = None
        with stream, progress:
            records = importers.derive_motion(importers.read(stream, format=format_name, name=name, errors=parse_errors))
            try:
                while chunk := list(islice(records, batch)):
                    result = messages_ingest(devices=[device], messages=[r.message for r in chunk], source="import")
                    read += len(chunk)
                    stored += result.accepted
                    changed += sum(change.count for change in result.changes)
                    refused.extend((chunk[error["index"]].line, error["reason"]) for error in result.errors)
                    progress.update(raw.tell() - progress.n)
                    progress.set_postfix(messages=read, refresh=False)
            except (importers.ParseError, OSError, EOFError, DomainError) as exc:
                failure = exc
        self._summary(device, name, format_name, read, stored, changed, parse_errors, refused)
        if failure is not None:
            raise CommandError(f"import stopped: {failure}")

    def _summary(self, device, name, format_name, read, stored, changed, parse_errors, refused):
        self.stdout.write(
            f"{name} ({format_name}) -> device {device.pk} ({device.ident}): read {read + len(parse_errors)} records, "
            f"stored {stored} messages ({changed} new or changed), refused {len(parse_errors) + len(refused)}"
        )
        problems = sorted([(e.line, e.reason) for e in parse_errors] + refused)
        for line, reason in problems[:SHOWN_PROBLEMS]:
            self.stdout.write(f"  refused {name}:{line}: {reason}")
        if len(problems) > SHOWN_PROBLEMS:
            self.stdout.write(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
