"""Admin of devices: a read-only list per datacenter (docs/admin.md); deleting goes through
``devices.services.device_delete`` (messages, telemetry, ident claim and assignments with it)."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib import admin

from accounts.regional_admin import RegionalModelAdmin, as_utc
from devices import services
from devices.models import Device


@admin.register(Device)
class DeviceAdmin(RegionalModelAdmin):
    list_display = ["id", "name", "ident", "account", "shard", "enabled", "created_at"]
    list_display_links = ["id", "name"]
    list_filter = ["enabled"]
    search_fields = ["=ident", "name"]
    ordering = ["id"]
    fields = (
        "id",
        "name",
        "ident",
        "account",
        "datacenter",
        "shard",
        "enabled",
        "messages_ttl",
        "configuration",
        "metadata",
        "created_at",
    )
    readonly_fields = fields

    @admin.display(description="created")
    def created_at(self, obj: Device) -> str:
        return as_utc(obj.created)

    def has_add_permission(self, request):
        return False  # devices are created over the API (an ident claim in the region comes with it)

    def has_change_permission(self, request, obj=None):
        return False

    def delete_rows(self, rows: Iterable[Device]) -> None:
        for device in rows:
            services.device_delete(device=device)
