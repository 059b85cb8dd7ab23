from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"

    def ready(self) -> None:
        from analytics.fleet.status import FleetStateCollector
        from flespi_site import metrics

        metrics.state_collector_register(FleetStateCollector)
