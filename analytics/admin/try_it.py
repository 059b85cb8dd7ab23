""""Try it" on a calculator's page: the configuration as typed (not saved) calculated over one
device's stored messages, next to what the saved calculator has stored for that device.

The request is read in the page's terms (the configuration's text, a device id, moments as typed)
and validated as the API's on-demand calculation validates its own: the configuration is the
API's inline calculator (``analytics.api.serializers.InlineCalculatorField``), the calculation is
the API's (``analytics.calculation.calculate_stored``, which refuses a range too long or too
full), and every refusal is rendered as the API renders it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rest_framework import serializers

from accounts.regional_admin import parse_utc
from analytics import calculation, selectors
from analytics.admin.common import DAY, MAX_TIMELINE_INTERVALS, configuration_from_text
from analytics.api.serializers import InlineCalculatorField
from analytics.models import Assignment, Calculator
from devices import selectors as device_selectors
from flespi_site.api.fields import StrictSerializer


class TypedConfigurationField(InlineCalculatorField):
    """The configuration as typed into the page: its JSON text (an object is taken as it is),
    then the API's inline calculator."""

    default_error_messages = {"invalid": "the configuration is a JSON object, or its text"}

    def to_internal_value(self, data):
        if isinstance(data, str):
            try:
                data = configuration_from_text(data)
            except ValueError as exc:
                raise serializers.ValidationError(str(exc)) from None
        elif not isinstance(data, dict):
            self.fail("invalid")
        return super().to_internal_value(data)


class DeviceIdField(serializers.Field):
    """A device by its id (a number, or its digits as text), in whichever datacenter holds it."""

    default_error_messages = {
        "invalid": "choose a device (its id)",
        "required": "choose a device (its id)",
        "null": "choose a device (its id)",
        "missing": "no device {device_id}",
    }

    def to_internal_value(self, data):
        if isinstance(data, str) and data.strip().isdigit():
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        try:
            device = device_selectors.device_by_id(data)
        except LookupError as exc:  # an account whose datacenter this server does not serve
            raise serializers.ValidationError(str(exc)) from None
        if device is None:
            self.fail("missing", device_id=data)
        return device


class MomentField(serializers.Field):
    """A moment as typed into the page: unix seconds, or a UTC date and time
    (``accounts.regional_admin.parse_utc``); empty or null for the default."""

    default_error_messages = {"invalid": "{value!r} is not a moment"}

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_null=True, **kwargs)

    def to_internal_value(self, data):
        if data == "":
            return None
        if isinstance(data, bool) or not isinstance(data, str | int | float):
            self.fail("invalid", value=data)
        try:
            return parse_utc(str(data), field=self.field_name)
        except ValueError as exc:  # its text starts with the field's name, which the error names
            raise serializers.ValidationError(str(exc).partition(": ")[2]) from None


class CalculatorTrySerializer(StrictSerializer):
    """``POST {"configuration", "device", "begin", "end"}`` of a calculator's page. Every field's
    problems are named at once; the configuration's at their paths
    (``configuration.selectors[0].expression``)."""

    configuration = TypedConfigurationField()
    device = DeviceIdField()
    begin = MomentField()
    end = MomentField()


def calculator_try(*, data: Any, calculator: Calculator | None) -> dict[str, Any]:
    """The intervals the configuration in ``data`` (a "try it" request, validated by
    ``CalculatorTrySerializer``) gives over the device's stored messages, nothing stored; with
    the intervals ``calculator`` (when saved and assigned to the device) has stored in the same
    range. ``begin``/``end`` left out: the day up to the device's newest message."""
    serializer = CalculatorTrySerializer(data=data)
    serializer.is_valid(raise_exception=True)
    tried = serializer.validated_data
    device, engine_calculator = tried["device"], tried["configuration"]
    begin, end = tried.get("begin"), tried.get("end")
    if end is None:
        newest = device_selectors.messages_of(devices=[device], begin=begin, end=None, count=1, reverse=True)
        end = newest[0]["timestamp"] if newest else dt.datetime.now(dt.UTC).timestamp()
    if begin is None:
        begin = max(0.0, end - DAY)
    intervals = calculation.calculate_stored(device=device, calculator=engine_calculator, begin=begin, end=end)
    stored = None
    if calculator is not None and calculator.pk is not None and calculator.database == device.database:
        assignment = (
            Assignment.objects.using(device.database).filter(calculator=calculator, device=device).first()
        )
        if assignment is not None:
            stored = [
                {"id": interval["id"], "begin": interval["begin"], "end": interval["end"]}
                for interval in selectors.intervals_of(
                    assignments=[assignment], begin=begin, end=end, count=MAX_TIMELINE_INTERVALS
                )
            ]
    return {
        "device": device.pk,
        "begin": begin,
        "end": end,
        "intervals": list(intervals),
        "route_counters": [counter.name for counter in engine_calculator.counters if counter.type == "route"],
        "stored": stored,
    }
