from django.urls import path

from devices.api import views
from flespi_site.api.resources import collection_path, resource_paths, selection_path

telemetry = selection_path(views.TelemetryView, "gw-device-telemetry")

_GROUP_DEVICES = f"{collection_path(views.GroupResource)}/<str:group_selector>/devices"

urlpatterns = [
    *resource_paths(views.DevicesView, "gw-devices"),
    *resource_paths(views.GroupsView, "gw-groups"),
    path(_GROUP_DEVICES, views.GroupDevicesView.as_view(), name="gw-group-devices"),
    path(f"{_GROUP_DEVICES}/<str:selector>", views.GroupDevicesView.as_view(), name="gw-group-devices-selected"),
    selection_path(views.MessagesView, "gw-device-messages"),
    telemetry,
    path(
        f"{telemetry.pattern}/<str:telemetry_selector>",
        views.TelemetryView.as_view(),
        name="gw-device-telemetry-selected",
    ),
]
