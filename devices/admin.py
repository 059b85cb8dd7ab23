"""Admin of devices: a read-only list per datacenter (docs/admin.md); deleting goes through
``devices.services.device_delete`` (messages, telemetry, ident claim and assignments with it).
A device's page draws its recent track and last position on a map and its speed on a chart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote

from accounts.regional_admin import RegionalModelAdmin, as_utc, parse_utc, utc_input
from devices import selectors, services
from devices.models import Device

TRACK_POINTS = 1000  # the default number of positions drawn: the newest ones
MAX_TRACK_POINTS = 20_000


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class HasPosition:
    """A message with a numeric latitude and longitude (the condition of the track's read)."""

    @staticmethod
    def matches(message: dict) -> bool:
        return _number(message.get("position.latitude")) and _number(message.get("position.longitude"))


def device_track(*, device: Device, begin: float | None, end: float | None, count: int) -> dict[str, Any]:
    """What the device page draws: the positions of its newest ``count`` messages with one (or
    of the first ``count`` between ``begin`` and ``end``), the speed of those messages, and the
    last known position (its telemetry)."""
    ranged = begin is not None or end is not None
    messages = selectors.messages_matching(
        devices=[device], begin=begin, end=end, count=count, reverse=not ranged, condition=HasPosition()
    )
    if not ranged:
        messages.reverse()
    telemetry = selectors.telemetry_of(devices=[device]).get(device.pk, {})
    latitude, longitude = telemetry.get("position.latitude"), telemetry.get("position.longitude")
    last = None
    if latitude and longitude and _number(latitude["value"]) and _number(longitude["value"]):
        last = {
            "lat": latitude["value"],
            "lon": longitude["value"],
            "ts": max(latitude["ts"], longitude["ts"]),
        }
    return {
        "track": [[message["position.latitude"], message["position.longitude"]] for message in messages],
        "speed": [
            [message["timestamp"], message["position.speed"]]
            for message in messages
            if _number(message.get("position.speed"))
        ],
        "last": last,
        "first_ts": messages[0]["timestamp"] if messages else None,
        "last_ts": messages[-1]["timestamp"] if messages else None,
        "full": len(messages) >= count,
    }


def track_query(query) -> dict[str, Any]:
    """The device page's choice of track (``count``, or ``begin``/``end``); ``ValueError``
    naming the field that is wrong."""
    begin = parse_utc(query["begin"], field="begin") if query.get("begin") else None
    end = parse_utc(query["end"], field="end") if query.get("end") else None
    if begin is not None and end is not None and begin > end:
        raise ValueError(f"begin: {as_utc(begin)} is after end {as_utc(end)}")
    text = query.get("count") or str(TRACK_POINTS)
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_TRACK_POINTS):
        raise ValueError(f"count: {text!r} is not a number of positions from 1 to {MAX_TRACK_POINTS}")
    return {"begin": begin, "end": end, "count": int(text)}


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
    change_form_template = "admin/devices/device/pictures.html"

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

    def change_view(self, request, object_id, form_url="", extra_context=None):
        device = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        problem = None
        if device is not None and self.has_view_permission(request, device):
            try:
                choice = track_query(request.GET)
            except ValueError as exc:
                problem, choice = str(exc), track_query({})
            context["pictures"] = device_track(device=device, **choice)
            context["choice"] = {
                "begin": utc_input(choice["begin"]),
                "end": utc_input(choice["end"]),
                "count": choice["count"],
            }
            context["problem"] = problem
        response = super().change_view(request, object_id, form_url, context)
        if problem is not None:
            response.status_code = 400
        return response
