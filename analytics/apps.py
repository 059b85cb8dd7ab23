from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"

    def ready(self) -> None:
        from accounts.mqtt_facts import calculator_owners_provide
        from analytics.fleet.status import FleetStateCollector
        from analytics.mqtt_facts import CALCULATOR_OWNERS
        from analytics.services import AUTO_ASSIGNMENTS, DEVICE_METADATA
        from devices.followers import metadata_follower_provide
        from devices.membership import follower_provide
        from flespi_site import metrics

        metrics.state_collector_register(FleetStateCollector)
        calculator_owners_provide(CALCULATOR_OWNERS)
        # Groups (devices) change memberships; the assignments held by groups follow, here.
        follower_provide(AUTO_ASSIGNMENTS)
        # A device's metadata changes; the calculators reading it recalculate, here.
        metadata_follower_provide(DEVICE_METADATA)
