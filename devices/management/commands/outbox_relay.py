from django.conf import settings
from django.core.management.base import BaseCommand

from devices.outbox import OutboxRelay
from flespi_site.runner import run_until_signalled
from regions.selectors import served_datacenters


class Command(BaseCommand):
    help = "Publish the outbox of each datacenter to its region's MQTT broker (QoS 1), until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--datacenter", action="append", help="datacenter code (repeatable); default: all served")

    def handle(self, *args, **options):
        relays = [
            OutboxRelay(alias=dc.alias, mqtt_url=region.mqtt_url, topic_root=settings.MQTT_TOPIC_ROOT)
            for region, dc in served_datacenters(codes=options["datacenter"])
        ]
        self.stdout.write(f"relaying {len(relays)} datacenter outbox(es): {', '.join(r.alias for r in relays)}")
        run_until_signalled(relays, name="outbox_relay")
        for relay in relays:
            self.stdout.write(f"{relay.alias}: published {relay.stats.published}, skipped {relay.stats.skipped}")
