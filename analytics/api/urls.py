from django.urls import path

from analytics.api import views
from flespi_site.api.resources import collection_path, resource_paths, selection_path

_INTERVALS = f"{collection_path(views.AssignmentResource)}/<str:selector>/intervals"

urlpatterns = [
    *resource_paths(views.CalculatorsView, "gw-calcs"),
    *resource_paths(views.AssignmentsView, "gw-calc-devices"),
    *resource_paths(views.GroupAssignmentsView, "gw-calc-groups"),
    path(_INTERVALS, views.IntervalsView.as_view(), name="gw-calc-intervals"),
    path(f"{_INTERVALS}/<str:interval_selector>", views.IntervalsView.as_view(), name="gw-calc-intervals-selected"),
    selection_path(views.RecalculateView, "gw-calc-recalculate"),
    selection_path(views.RollupView, "gw-calc-rollup"),
    selection_path(views.CalculateView, "gw-device-calculate"),
    *resource_paths(views.GeofencesView, "gw-geofences"),
    *resource_paths(views.CalculatorGeofencesView, "gw-calc-geofences"),
    selection_path(views.HittestView, "gw-geofence-hittest"),
]
