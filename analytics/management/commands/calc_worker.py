import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from analytics.fleet.home import HomeTaken
from analytics.fleet.process import run_calc_worker


class Command(BaseCommand):
    help = "Run a calc worker of a region: it holds some of the region's shards and keeps their intervals current."

    def add_arguments(self, parser):
        parser.add_argument("--region", required=True, help="the region whose shards this worker serves")
        parser.add_argument("--lease-ttl", type=float, default=settings.CALC_LEASE_TTL,
                            help="seconds a shard lease lasts without renewal (default %(default)s)")
        parser.add_argument("--name", default=os.environ.get("CALC_WORKER_NAME") or None,
                            help="this worker's stable name, and the directory of its caches under CALC_DATA_DIR "
                                 "(default: CALC_WORKER_NAME, else the first slot no other worker of this host holds)")
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args, region, lease_ttl, name, loglevel, **options):
        codes = [region.code for region in settings.TOPOLOGY.regions]
        if region not in codes:
            raise CommandError(f"unknown region {region!r}; regions: {', '.join(codes)}")
        try:
            run_calc_worker(region=region, data_dir=settings.CALC_DATA_DIR, lease_ttl=lease_ttl, name=name,
                            loglevel=loglevel)
        except (HomeTaken, ValueError) as exc:
            raise CommandError(f"{exc}; give each calc worker of a host its own --name") from exc
