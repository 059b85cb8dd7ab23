"""The admin of geofences: the list with its zones drawn on one map, and a geofence's page with
its zone and the calculators it is assigned to. Geofences are written through the API
(``/gw/geofences``); the admin deletes them through ``analytics.services``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.regional_admin import RegionalModelAdmin, as_utc, datacenter_code
from analytics import services
from analytics.models import CalculatorGeofence, Geofence


def zone_picture(geofence: Geofence) -> dict:
    """What the page's map draws of a geofence."""
    return {"id": geofence.pk, "name": geofence.name, "enabled": geofence.enabled, "geometry": geofence.geometry}


@admin.register(Geofence)
class GeofenceAdmin(RegionalModelAdmin):
    list_display = ["id", "name", "account", "enabled", "priority", "kind", "created_at"]
    list_display_links = ["id", "name"]
    search_fields = ["name"]
    ordering = ["id"]
    change_list_template = "admin/analytics/geofence/change_list.html"
    change_form_template = "admin/analytics/geofence/change_form.html"
    fields = ("id", "account", "datacenter", "name", "enabled", "priority", "kind", "geometry_text", "metadata",
              "calculators", "created_at")
    readonly_fields = ("id", "account", "datacenter", "name", "enabled", "priority", "kind", "geometry_text",
                       "metadata", "calculators", "created_at")

    def has_add_permission(self, request):
        return False  # created through the API, where the geometry is checked

    def has_change_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context is not None and "cl" in context:
            context["zones"] = [zone_picture(geofence) for geofence in context["cl"].result_list]
        return response

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["zones"] = [zone_picture(obj)]
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.display(description="type")
    def kind(self, obj: Geofence) -> str:
        return obj.geometry.get("type", "?")

    @admin.display(description="geometry")
    def geometry_text(self, obj: Geofence):
        return format_html("<pre>{}</pre>", json.dumps(obj.geometry, indent=1))

    @admin.display(description="calculators")
    def calculators(self, obj: Geofence):
        links = CalculatorGeofence.objects.using(obj.database).filter(geofence_id=obj.pk).select_related("calculator")
        code = datacenter_code(obj.database)
        return format_html_join(
            ", ", '<a href="{}?datacenter={}">{}</a>',
            ((reverse("admin:analytics_calculator_change", args=[link.calculator_id]), code, str(link.calculator))
             for link in links),
        ) or "none"

    @admin.display(description="created")
    def created_at(self, obj: Geofence) -> str:
        return as_utc(obj.created)

    def delete_rows(self, rows: Iterable[Geofence]) -> None:
        for geofence in rows:
            services.geofence_delete(geofence=geofence)

    def deleted_extra(self, rows: list) -> dict[str, int]:
        return {"calculator assignments": CalculatorGeofence.objects.using(rows[0].database).filter(
            geofence_id__in=[row.pk for row in rows]).count()}
