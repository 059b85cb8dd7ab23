from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.mqtt_access import BrokerAccess
from flespi_site import health
from flespi_site.mqtt.broker.server import Limits, run
from flespi_site.mqtt.client import broker_address
from flespi_site.runner import startup_frozen


class Command(BaseCommand):
    help = (
        "Run a region's MQTT broker (MQTT 3.1, 3.1.1 and 5, over TCP and WebSocket) with the platform's "
        "access policy; it serves the regions whose MQTT URL is the region's (docs/mqtt.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--region", default=settings.SERVED_REGION or settings.TOPOLOGY.default_region)
        parser.add_argument("--bind", default=settings.MQTT_BIND, help="the address to listen on")
        parser.add_argument(
            "--port", type=int, help="MQTT over TCP (default: the port of the region's MQTT URL)"
        )
        parser.add_argument(
            "--ws-port",
            type=int,
            help="MQTT over WebSocket (default: the port of the region's MQTT WebSocket URL; 0: none)",
        )
        parser.add_argument("--store", help="the SQLite file of sessions and retained messages")

    def handle(self, *args, **options):
        regions = {known.code: known for known in settings.TOPOLOGY.regions}
        region = regions.get(options["region"])
        if region is None:
            raise CommandError(f"--region {options['region']!r} is not one of {', '.join(regions)}")
        port = options["port"] or broker_address(region.mqtt_url)[1]
        ws_port = options["ws_port"]
        if ws_port is None:
            ws_url = settings.MQTT_WS_URLS.get(region.code)
            ws_port = urlsplit(ws_url).port if ws_url else 0
        store = options["store"] or str(Path(settings.STATE_DIR) / "mqtt" / f"broker-{region.code}.sqlite3")
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        access = BrokerAccess(url=region.mqtt_url)
        listening = []

        def ready(broker):
            startup_frozen(f"broker-{region.code}")
            listening.append(broker)

        health.serve(role="broker", problems=lambda: {} if listening else {"broker": "not listening yet"})
        self.stdout.write(
            f"MQTT broker of {', '.join(sorted(access.regions))} on {options['bind']}:{port}"
            + (f", WebSocket on {ws_port}" if ws_port else "")
        )
        run(
            access,
            host=options["bind"],
            port=port,
            ws_port=ws_port or None,
            store_path=store,
            limits=Limits(
                max_queued=settings.MQTT_MAX_QUEUED,
                # four reports within the timeout: a live session never lets its device go
                activity_seconds=min(60.0, settings.DEVICE_CONNECTION_TIMEOUT / 4),
            ),
            name=f"broker-{region.code}",
            ready=ready,
        )
