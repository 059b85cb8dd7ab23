from django.core.management.base import BaseCommand

from flespi_site.runner import run_loops
from regions.selectors import served_datacenters
from webhooks.delivery import delivery_loops


class Command(BaseCommand):
    help = "Deliver the webhooks' events of each datacenter (docs/webhooks.md), until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--datacenter", action="append", help="datacenter code (repeatable); default: all served")
        parser.add_argument("--senders", type=int, default=None, help="sender threads per datacenter (WEBHOOK_SENDERS)")
        parser.add_argument("--log-every", type=float, default=60, help="log the counts every N seconds")

    def handle(self, *args, **options):
        loops = delivery_loops(
            datacenters=[(region.code, dc.alias) for region, dc in served_datacenters(codes=options["datacenter"])],
            senders=options["senders"],
        )
        self.stdout.write(f"delivering webhooks of {len(loops)} datacenter(s): {', '.join(loop.alias for loop in loops)}")
        counts = run_loops(loops, name="webhook_delivery", log_every=options["log_every"])
        for loop in loops:
            done = counts[loop.name]
            self.stdout.write(f"{loop.alias}: delivered {done['delivered']}, dropped {done['dropped']}")
