from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.mqtt_dynsec import dynsec_file_write, dynsec_plugin, mosquitto_setup

# The exit status when Mosquitto's dynamic security plugin is not installed: the embedded
# services then start their amqtt broker instead.
NO_PLUGIN = 3


class Command(BaseCommand):
    help = ("Write the configuration of a Mosquitto the platform manages (dynamic security, the platform's "
            "client from MQTT_PLATFORM_USERNAME/PASSWORD) into a directory; prints the configuration's path.")

    def add_arguments(self, parser):
        parser.add_argument("--directory", required=True, type=Path, help="where the configuration and data go")
        parser.add_argument("--port", type=int, help="the port it listens on, on 127.0.0.1 (with the configuration)")
        parser.add_argument("--dynsec-only", action="store_true",
                            help="write only dynsec.json (a broker configured elsewhere, as in deploy/compose.yml)")

    def handle(self, *args, directory, port, dynsec_only, **options):
        if dynsec_only:
            path = dynsec_file_write(directory=directory, root=settings.MQTT_TOPIC_ROOT,
                                     platform_username=settings.MQTT_PLATFORM_USERNAME,
                                     platform_password=settings.MQTT_PLATFORM_PASSWORD)
            self.stdout.write(str(path))
            return
        if port is None:
            raise CommandError("--port is required unless --dynsec-only")
        if dynsec_plugin() is None:
            raise CommandError("Mosquitto's dynamic security plugin is not installed", returncode=NO_PLUGIN)
        conf = mosquitto_setup(
            directory=directory, port=port, root=settings.MQTT_TOPIC_ROOT,
            platform_username=settings.MQTT_PLATFORM_USERNAME, platform_password=settings.MQTT_PLATFORM_PASSWORD,
        )
        self.stdout.write(str(conf))
