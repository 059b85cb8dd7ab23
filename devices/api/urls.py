from django.urls import path

from devices.api import views
from flespi_site.api.resources import resource_paths, selection_path

telemetry = selection_path(views.TelemetryView, "gw-device-telemetry")

urlpatterns = [
    *resource_paths(views.DevicesView, "gw-devices"),
    selection_path(views.MessagesView, "gw-device-messages"),
    telemetry,
    path(
        f"{telemetry.pattern}/<str:telemetry_selector>",
        views.TelemetryView.as_view(),
        name="gw-device-telemetry-selected",
    ),
]
