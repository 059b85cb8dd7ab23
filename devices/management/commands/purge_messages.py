from functools import partial

from django.core.management.base import BaseCommand

from devices.services import messages_purge_expired
from flespi_site.runner import PeriodicLoop, run_loops
from regions.selectors import served_datacenters


class Command(BaseCommand):
    help = "Delete messages older than their device's messages_ttl, in short batches."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="repeat every N seconds until stopped (0: once)")
        parser.add_argument("--log-every", type=float, default=3600, help="log the counts every N seconds")

    def handle(self, *args, **options):
        datacenters = [dc.alias for _region, dc in served_datacenters()]
        if not options["every"]:
            for alias in datacenters:
                self.stdout.write(f"{alias}: deleted {messages_purge_expired(alias=alias)} expired messages")
            return
        loops = [
            PeriodicLoop(
                name=f"purge {alias}", every=options["every"], step=partial(messages_purge_expired, alias=alias),
                what="deleted",
            )
            for alias in datacenters
        ]
        for name, counts in run_loops(loops, name="purge_messages", log_every=options["log_every"]).items():
            self.stdout.write(f"{name}: deleted {counts['deleted']} expired messages in {counts['steps']} runs")
