import os
import time

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, connections
from tqdm import tqdm

from analytics import demo as demos
from flespi_site.errors import DomainError

START_HINT = "start the platform with `make run` (in another terminal), then run `make demo` again"


class Command(BaseCommand):
    help = (
        "Create a demo account with a master token, a device per real track in tests/data/tracks "
        "(imported with derived speeds), calculators of trips, parkings and daily mileage assigned to "
        "both; wait until the calc workers have synced them; print the token and curl commands that "
        "show the intervals. Running it again changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-wait", action="store_true", help="do not wait for the assignments to be synced"
        )
        parser.add_argument(
            "--timeout", type=float, default=300.0, help="seconds to wait for them at most (default 300)"
        )
        parser.add_argument(
            "--url",
            default=f"http://localhost:{os.environ.get('PORT') or 8000}",
            help="the platform's address in the printed commands (default http://localhost:$PORT, 8000)",
        )

    def handle(self, *args, **options):
        try:
            connections["default"].ensure_connection()
        except OperationalError as exc:
            raise CommandError(f"cannot reach the database ({str(exc).strip()}): {START_HINT}") from None
        try:
            demo = demos.demo_setup()
        except DomainError as exc:
            raise CommandError(exc.reason) from None
        for line in demo.created:
            self.stdout.write(f"created {line}")
        for track, device in zip(demos.TRACKS, demo.devices, strict=True):
            call_command(
                "import_messages",
                str(demos.TRACKS_DIR / track.file),
                device=device.pk,
                stdout=self.stdout,
                stderr=self.stderr,
            )
        if not options["no_wait"]:
            self._wait(demo, options["timeout"])
        self._summary(demo, options["url"].rstrip("/"))

    def _wait(self, demo: demos.Demo, timeout: float) -> None:
        total, synced = len(demo.assignments), demos.assignments_synced(demo=demo)
        if synced == total:
            return
        region = demo.account.region.code
        if not demos.calc_workers_running(region=region):
            self.stdout.write(
                f"{synced} of {total} assignments synced and no calc worker of region {region} is running: "
                f"{START_HINT} to see the intervals"
            )
            return
        deadline = time.monotonic() + timeout
        with tqdm(
            total=total,
            initial=synced,
            desc="synchronizing",
            unit="assignment",
            file=self.stderr,
            disable=None,
        ) as progress:
            while synced < total:
                if time.monotonic() > deadline:
                    progress.close()
                    self.stdout.write(
                        f"{synced} of {total} assignments synced after {timeout:.0f} s: is the platform running? "
                        f"{START_HINT[0].upper()}{START_HINT[1:]}"
                    )
                    return
                time.sleep(0.5)
                synced = demos.assignments_synced(demo=demo)
                progress.update(synced - progress.n)

    def _summary(self, demo: demos.Demo, url: str) -> None:
        trips, parkings, daily = (calculator.pk for calculator in demo.calculators)
        bus, car = (device.pk for device in demo.devices)
        auth = f'curl -H "Authorization: FlespiToken {demo.key}"'
        ids = ",".join(str(calculator.pk) for calculator in demo.calculators)
        self.stdout.write(
            f"\ndemo account {demo.account.pk} ({demo.account.name!r}, region {demo.account.region.code}); "
            f"its master token (kept in {demos.token_file()}):"
        )
        self.stdout.write(demo.key)
        self.stdout.write(f"admin: {url}/admin/ (the superuser `make run` printed on its first start)")
        self.stdout.write("the assignments and whether they are synced:")
        self.stdout.write(f"  {auth} '{url}/gw/calcs/{ids}/devices/all'")
        self.stdout.write("trips of the bus, parkings of the car, mileage per day of both:")
        self.stdout.write(
            f"  {auth} '{url}/gw/calcs/{trips}/devices/{bus}/intervals/all"
            "?fields=id,begin,end,duration,mileage,max_speed'"
        )
        self.stdout.write(
            f"  {auth} '{url}/gw/calcs/{parkings}/devices/{car}/intervals/all?fields=id,begin,duration,lat,lon'"
        )
        self.stdout.write(
            f"  {auth} '{url}/gw/calcs/{daily}/devices/all/intervals/all?fields=device_id,date,mileage'"
        )
