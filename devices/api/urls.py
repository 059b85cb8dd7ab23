from django.urls import path

from devices.api import views
from flespi_site.api.views import resource_paths

urlpatterns = [
    *resource_paths("gw/devices", views.DevicesView, "gw-devices"),
    path("gw/devices/<str:selector>/messages", views.MessagesView.as_view(), name="gw-device-messages"),
    path("gw/devices/<str:selector>/telemetry", views.TelemetryView.as_view(), name="gw-device-telemetry"),
]
