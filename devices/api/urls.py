from devices.api import views
from flespi_site.api.resources import resource_paths, selection_path

urlpatterns = [
    *resource_paths(views.DevicesView, "gw-devices"),
    selection_path(views.MessagesView, "gw-device-messages"),
    selection_path(views.TelemetryView, "gw-device-telemetry"),
]
