from django.conf import settings
from django.core.management.base import BaseCommand

from devices.outbox import OutboxRelay
from flespi_site.runner import run_loops
from regions.selectors import served_datacenters


class Command(BaseCommand):
    help = "Publish the outbox of each datacenter to its region's MQTT broker (QoS 1), until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--datacenter", action="append", help="datacenter code (repeatable); default: all served")
        parser.add_argument("--log-every", type=float, default=60, help="log the counts every N seconds")

    def handle(self, *args, **options):
        relays = [
            OutboxRelay(alias=dc.alias, mqtt_url=region.mqtt_url, topic_root=settings.MQTT_TOPIC_ROOT)
            for region, dc in served_datacenters(codes=options["datacenter"])
        ]
        self.stdout.write(
            f"relaying {len(relays)} datacenter outbox(es): {', '.join(relay.alias for relay in relays)}"
        )
        counts = run_loops(relays, name="outbox_relay", log_every=options["log_every"])
        for relay in relays:
            done = counts[relay.name]
            self.stdout.write(f"{relay.alias}: published {done['published']}, skipped {done['skipped']}")
