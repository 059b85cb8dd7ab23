from django.urls import path

from analytics.api import views
from flespi_site.api.views import resource_paths

_ASSIGNMENTS = "gw/calcs/<str:calc_selector>/devices"

urlpatterns = [
    *resource_paths("gw/calcs", views.CalculatorsView, "gw-calcs"),
    path(_ASSIGNMENTS, views.AssignmentsView.as_view(), name="gw-calc-devices"),
    path(f"{_ASSIGNMENTS}/<str:device_selector>", views.AssignmentsView.as_view(), name="gw-calc-devices-selected"),
    path(f"{_ASSIGNMENTS}/<str:device_selector>/intervals", views.IntervalsView.as_view(), name="gw-calc-intervals"),
    path(
        f"{_ASSIGNMENTS}/<str:device_selector>/intervals/<str:interval_selector>",
        views.IntervalsView.as_view(),
        name="gw-calc-intervals-selected",
    ),
    path(f"{_ASSIGNMENTS}/<str:device_selector>/recalculate", views.RecalculateView.as_view(), name="gw-calc-recalculate"),
    path("gw/devices/<str:selector>/calculate", views.CalculateView.as_view(), name="gw-device-calculate"),
]
