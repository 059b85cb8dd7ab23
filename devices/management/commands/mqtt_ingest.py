from django.conf import settings
from django.core.management.base import BaseCommand

from devices.ingest_mqtt import consumers_for
from flespi_site.runner import run_loops


class Command(BaseCommand):
    help = ("Ingest device messages published to the ingest topic pattern on each served region's broker "
            "(one consumer per broker, for the regions that share it).")

    def add_arguments(self, parser):
        parser.add_argument("--pattern", default=settings.MQTT_INGEST_TOPIC, help="topic pattern; '+' is the ident")
        parser.add_argument("--log-every", type=float, default=60, help="log the counts every N seconds")
        parser.add_argument("--name", help="this consumer's name, unique among the consumers of a broker "
                                           "(default: the host's name); the payloads are shared among them")

    def handle(self, *args, **options):
        served = [region for region in settings.TOPOLOGY.regions
                  if not settings.SERVED_REGION or region.code == settings.SERVED_REGION]
        consumers = consumers_for(served, pattern=options["pattern"], name=options["name"])
        self.stdout.write(
            f"ingesting {options['pattern']} in regions "
            f"{', '.join(consumer.region for consumer in consumers)}"
        )
        counts = run_loops(consumers, name="mqtt_ingest", log_every=options["log_every"])
        for consumer in consumers:
            done = counts[consumer.name]
            self.stdout.write(f"{consumer.region}: received {done['received']}, rejected {done['rejected']}")
