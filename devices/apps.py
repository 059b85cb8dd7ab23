from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices and messages"

    def ready(self) -> None:
        # accounts' MQTT access needs the owners of devices and sits below this app: provided here.
        from accounts.mqtt_facts import device_owners_provide
        from devices.mqtt_facts import DEVICE_OWNERS

        device_owners_provide(DEVICE_OWNERS)
