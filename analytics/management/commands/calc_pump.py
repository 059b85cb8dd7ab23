from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from analytics.blocks import Sealer
from analytics.fleet.batches import region_aliases
from analytics.fleet.pump import Pump
from flespi_site.maintenance import QueueVacuum
from flespi_site.runner import run_loops


class Command(BaseCommand):
    help = (
        "Run the pump of a region: due debounce timers to the calc workers, reconciliation, purges; "
        "and the sealer of its datacenters' message blocks and the vacuuming of their queue tables."
    )

    def add_arguments(self, parser):
        parser.add_argument("--region", required=True, help="the region to pump")

    def handle(self, *args, region, **options):
        codes = [region.code for region in settings.TOPOLOGY.regions]
        if region not in codes:
            raise CommandError(f"unknown region {region!r}; regions: {', '.join(codes)}")
        aliases = region_aliases(region)
        run_loops(
            [Pump(region=region), *(Sealer(alias=alias) for alias in aliases),
             *(QueueVacuum(alias=alias) for alias in aliases)],
            name=f"pump {region}",
        )
