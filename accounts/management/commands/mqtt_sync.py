from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.mqtt_dynsec import dynsec_reconcile_served
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
        sent = 0
        for broker in dynsec_reconcile_served():
            if broker.report is None:
                self.stderr.write(f"{broker.url}: {broker.problem}")
                continue
            report = broker.report
            sent += report.commands
            self.stdout.write(f"{broker.url} ({', '.join(broker.regions)}): {report.commands} commands")
            if report.tokens_without_client:
                self.stderr.write(
                    f"{broker.url}: tokens {report.tokens_without_client} have no client on the broker (it lost "
                    "its dynamic-security file after they were made): create new tokens for their MQTT clients"
                )
            for refusal in report.errors:
                self.stderr.write(f"{broker.url}: {refusal}")
        return sent
