import logging
import threading

from django.core.management.base import BaseCommand

from devices.services import messages_purge_expired
from flespi_site.runner import run_until_signalled
from regions.selectors import served_datacenters

logger = logging.getLogger(__name__)


class PurgeLoop:
    def __init__(self, alias: str, every: float):
        self.alias = alias
        self.every = every
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            deleted = messages_purge_expired(alias=self.alias)
            logger.info("purge %s: deleted %d expired messages", self.alias, deleted)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()


class Command(BaseCommand):
    help = "Delete messages older than their device's messages_ttl, in short batches."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="repeat every N seconds until stopped (0: once)")

    def handle(self, *args, **options):
        datacenters = [dc.alias for _region, dc in served_datacenters()]
        if not options["every"]:
            for alias in datacenters:
                self.stdout.write(f"{alias}: deleted {messages_purge_expired(alias=alias)} expired messages")
            return
        run_until_signalled([PurgeLoop(alias, options["every"]) for alias in datacenters], name="purge_messages")
