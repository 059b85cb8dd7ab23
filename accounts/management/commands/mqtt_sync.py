from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.mqtt_dynsec import DynsecError, dynsec_reconcile
from flespi_site.runner import PeriodicLoop, run_loops


class Command(BaseCommand):
    help = ("Make each served region's Mosquitto (dynamic security) hold exactly the clients, roles and ACLs "
            "the tokens, accounts and devices imply; with --every, again and again.")

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, help="seconds between reconciles; default: once")

    def handle(self, *args, **options):
        if not settings.MQTT_DYNSEC:
            raise CommandError("MQTT_DYNSEC is not 1: the brokers are not Mosquittos the platform manages")
        if options["every"] is None:
            self.reconcile_all()
        else:
            run_loops([PeriodicLoop(name="mqtt_sync", every=options["every"], step=self.reconcile_all,
                                    what="commands")], name="mqtt_sync")

    def reconcile_all(self) -> int:
        """Reconcile every served region's broker once; returns how many commands it sent."""
        brokers: dict[str, list[str]] = {}
        for region in settings.TOPOLOGY.regions:
            if not settings.SERVED_REGION or region.code == settings.SERVED_REGION:
                brokers.setdefault(region.mqtt_url, []).append(region.code)
        sent = 0
        for url, regions in brokers.items():
            try:
                report = dynsec_reconcile(url=url, regions=regions)
            except DynsecError as error:
                self.stderr.write(f"{url}: {error}")
                continue
            sent += report.commands
            self.stdout.write(f"{url} ({', '.join(regions)}): {report.commands} commands")
            if report.tokens_without_client:
                self.stderr.write(
                    f"{url}: tokens {report.tokens_without_client} have no client on the broker (it lost its "
                    "dynamic-security file after they were made): create new tokens for their MQTT clients"
                )
            for refusal in report.errors:
                self.stderr.write(f"{url}: {refusal}")
        return sent
