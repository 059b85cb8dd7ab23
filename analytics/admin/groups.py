"""The admin of groups of devices: the list (an account's groups, how each holds its devices,
how many, the calculators assigned to it) and a group's page (its members and calculators,
linked). Groups are ``devices`` models; their admin lives here because the calculators assigned
to a group are analytics' (``devices`` never imports ``analytics``). Groups are written through
the API (``/gw/groups``); the admin deletes them through ``devices.services.group_delete``."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html_join

from accounts.regional_admin import RegionalModelAdmin, as_utc, datacenter_code
from analytics.models import GroupAssignment
from devices import selectors as device_selectors
from devices import services as device_services
from devices.models import Device, Group


@admin.register(Group)
class GroupAdmin(RegionalModelAdmin):
    list_display = ["id", "name", "account", "holds", "member_count", "calculators", "created_at"]
    list_display_links = ["id", "name"]
    search_fields = ["name"]
    ordering = ["id"]
    fields = ("id", "account", "datacenter", "name", "holds", "metadata", "members", "calculators", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # created through the API, where the selector and the members are checked

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="devices by")
    def holds(self, obj: Group) -> str:
        return "member list" if obj.selector is None else f"selector {obj.selector}"

    @admin.display(description="members")
    def member_count(self, obj: Group) -> int:
        return len(device_selectors.group_member_ids(groups=[obj])[obj.pk])

    @admin.display(description="members")
    def members(self, obj: Group):
        ids = device_selectors.group_member_ids(groups=[obj])[obj.pk]
        devices = Device.objects.using(obj.database).filter(pk__in=ids).order_by("pk")
        code = datacenter_code(obj.database)
        return format_html_join(
            ", ", '<a class="group-member" href="{}?datacenter={}">{}</a>',
            ((reverse("admin:devices_device_change", args=[device.pk]), code, str(device)) for device in devices),
        ) or "none"

    @admin.display(description="calculators")
    def calculators(self, obj: Group):
        links = GroupAssignment.objects.using(obj.database).filter(group_id=obj.pk).select_related("calculator")
        code = datacenter_code(obj.database)
        return format_html_join(
            ", ", '<a class="group-calculator" href="{}?datacenter={}">{}</a>',
            ((reverse("admin:analytics_calculator_change", args=[link.calculator_id]), code, str(link.calculator))
             for link in links.order_by("calculator_id")),
        ) or "none"

    @admin.display(description="created")
    def created_at(self, obj: Group) -> str:
        return as_utc(obj.created)

    def delete_rows(self, rows: Iterable[Group]) -> None:
        for group in rows:
            device_services.group_delete(group=group)

    def deleted_extra(self, rows: list) -> dict[str, int]:
        return {"calculator assignments": GroupAssignment.objects.using(rows[0].database).filter(
            group_id__in=[row.pk for row in rows]).count()}


