import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.mqtt_dynsec import DynsecError, dynsec_reconcile
from flespi_site.runner import run_until_signalled


class Reconciler:
    """Reconciles every served region's broker, once or every ``every`` seconds."""

    def __init__(self, command: BaseCommand, every: float | None):
        self.command, self.every = command, every
        self._stop = threading.Event()

    def once(self) -> None:
        brokers: dict[str, list[str]] = {}
        for region in settings.TOPOLOGY.regions:
            if not settings.SERVED_REGION or region.code == settings.SERVED_REGION:
                brokers.setdefault(region.mqtt_url, []).append(region.code)
        for url, regions in brokers.items():
            try:
                report = dynsec_reconcile(url=url, regions=regions)
            except DynsecError as error:
                self.command.stderr.write(f"{url}: {error}")
                continue
            self.command.stdout.write(f"{url} ({', '.join(regions)}): {report.commands} commands")
            if report.tokens_without_client:
                self.command.stderr.write(
                    f"{url}: tokens {report.tokens_without_client} have no client on the broker (it lost its "
                    "dynamic-security file after they were made): create new tokens for their MQTT clients"
                )
            for refusal in report.errors:
                self.command.stderr.write(f"{url}: {refusal}")

    def run(self) -> None:
        while True:
            self.once()
            if self.every is None or self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()


class Command(BaseCommand):
    help = ("Make each served region's Mosquitto (dynamic security) hold exactly the clients, roles and ACLs "
            "the tokens, accounts and devices imply; with --every, again and again.")

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, help="seconds between reconciles; default: once")

    def handle(self, *args, **options):
        if not settings.MQTT_DYNSEC:
            raise CommandError("MQTT_DYNSEC is not 1: the brokers are not Mosquittos the platform manages")
        reconciler = Reconciler(self, options["every"])
        if options["every"] is None:
            reconciler.once()
        else:
            run_until_signalled([reconciler], name="mqtt_sync")
