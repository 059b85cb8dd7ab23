"""Input of the /gw/calcs API. A calculator is validated whole by the engine
(``analytics.services.calculator_config_check``), which names the path of every problem; the
serializers here check only the shape of the envelope around it and document it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rest_framework import serializers
from rest_framework.settings import api_settings

from analytics import services
from analytics.engine import Calculator, Problem
from analytics.engine.rollups import RollupError, compile_rollup, range_problems
from devices.api.serializers import EXPORT_FORMAT_HELP, MAX_EXPORT_COUNT, MAX_QUERY_TIME, TimeRangeSerializer
from flespi_site.api.fields import (
    JSONObjectField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
)
from flespi_site.jsontext import unstorable


def calculator_problems(problems: Sequence[Problem]) -> dict[str, list[str]]:
    """The problems of a calculator as a serializer's errors: each at its path (one of the whole
    calculator as the object's own), which the API renders as the error's ``field``."""
    detail: dict[str, list[str]] = {}
    for problem in problems:
        detail.setdefault(problem.path or api_settings.NON_FIELD_ERRORS_KEY, []).append(problem.message)
    return detail


def calculator_compiled(config: dict) -> Calculator:
    """The engine's compiled form of an inline calculator; a ``ValidationError`` naming each of
    its problems at its path otherwise."""
    try:
        return services.calculator_compile(config=config)
    except services.CalculatorInvalid as exc:
        raise serializers.ValidationError(calculator_problems(exc.problems)) from None


class InlineCalculatorField(JSONObjectField):
    """A calculator given inline (DESIGN 7.2): a JSON object that the engine compiles. Its value
    is the engine's calculator; a problem is named at its path inside the field
    (``calculator.selectors[0].expression``)."""

    def to_internal_value(self, data):
        return calculator_compiled(super().to_internal_value(data))


class CalculatorSerializer(serializers.Serializer):
    """A calculator (DESIGN 7.2). Fields are documented here; the engine validates them."""

    name = StrictCharField(max_length=255)
    messages_source = JSONObjectField(
        required=False, help_text='where its messages come from: {"source": "device"} (default), or '
        '{"source": "calculator", "calculator_id": N}: calculator N\'s intervals of the device'
    )
    selectors = serializers.ListField(child=JSONObjectField(), help_text="interval selectors; at least one")
    counters = serializers.ListField(child=JSONObjectField(), required=False)
    validate_message = StrictCharField(required=False, allow_null=True)
    validate_interval = StrictCharField(required=False, allow_null=True)
    timezone = StrictCharField(required=False, help_text="IANA name, default UTC")
    update_delay = StrictIntegerField(required=False, min_value=0)
    update_period = StrictIntegerField(required=False, min_value=1)
    update_onchange = StrictBooleanField(required=False)
    intervals_ttl = StrictIntegerField(required=False, min_value=1)
    intervals_rotate = StrictIntegerField(required=False, min_value=0)
    metadata = JSONObjectField(required=False)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["a calculator must be a JSON object"]})
        what = unstorable(data)
        if what is not None:
            raise serializers.ValidationError({"non_field_errors": [f"a calculator must not contain {what}"]})
        return data


class AssignmentUpdateSerializer(StrictSerializer):
    enabled = StrictBooleanField()


class RecalculateSerializer(StrictSerializer):
    begin = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)
    end = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)


class IntervalsQuerySerializer(StrictSerializer):
    begin = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)
    end = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)
    count = StrictIntegerField(required=False, min_value=1, max_value=100_000, help_text="per assignment")
    reverse = StrictBooleanField(required=False)
    fields = StrictCharField(required=False)  # type: ignore[assignment]  # DRF's metaclass takes it out of the class
    filter = StrictCharField(required=False, max_length=4096, help_text="an expression over interval fields")
    format = StrictCharField(required=False, help_text=EXPORT_FORMAT_HELP)


class IntervalsExportQuerySerializer(IntervalsQuerySerializer):
    """The same parameters for a streamed export (CSV, GeoJSON, GPX): ``count`` may be larger."""

    count = StrictIntegerField(required=False, min_value=1, max_value=MAX_EXPORT_COUNT, help_text="per assignment")


class CalculateQuerySerializer(StrictSerializer):
    """The query parameters of ``POST /gw/devices/{sel}/calculate``."""

    fields = StrictCharField(  # type: ignore[assignment]  # DRF's metaclass takes it out of the class
        required=False, help_text="the fields of each interval, separated by commas (the columns of a CSV)"
    )
    format = StrictCharField(required=False, help_text=EXPORT_FORMAT_HELP)


ON_DEMAND_RANGE_KEYS = ("begin", "end", "from", "to")
# The name of an inline calculator sent without one (flespi's body needs none).
ON_DEMAND_NAME = "on-demand"


class CalculateSerializer(TimeRangeSerializer):
    """``POST /gw/devices/{sel}/calculate``: a stored calculator (``calc_id``) or an inline one
    (``calculator``, validated last and compiled: ``validated_data["calculator"]`` is the
    engine's calculator), over ``begin``..``end`` (``from``/``to`` are aliases). flespi's body,
    the calculator's fields at the top level beside ``from``/``to``, is read as the inline form.
    Without a range the view takes the calculator's default one (``on_demand_range``)."""

    # Whether the body was flespi's, the calculator's fields at the top level: its problems are
    # then named at their paths in that body, without "calculator.".
    top_level = False

    def to_internal_value(self, data):
        if isinstance(data, dict) and "calculator" not in data and "calc_id" not in data:
            fields = {key: value for key, value in data.items() if key not in ON_DEMAND_RANGE_KEYS}
            if fields:
                self.top_level = True
                data = {
                    **{key: data[key] for key in ON_DEMAND_RANGE_KEYS if key in data},
                    "calculator": {"name": ON_DEMAND_NAME, **fields},
                }
        return super().to_internal_value(data)

    calc_id = StrictIntegerField(required=False)
    calculator = JSONObjectField(required=False)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if ("calc_id" in attrs) == ("calculator" in attrs):
            raise serializers.ValidationError(
                {"calc_id": ["give calc_id (a stored calculator) or calculator (an inline one), one of them"]}
            )
        if ("begin" in attrs) != ("end" in attrs):
            raise serializers.ValidationError({"begin" if "begin" not in attrs else "end": ["required"]})
        if "begin" in attrs and attrs["begin"] > attrs["end"]:
            raise serializers.ValidationError({"begin": ["must not be after end"]})
        if "calculator" in attrs:
            # Compiled once the envelope is right: a request with a bad range is refused for its
            # range alone, as before the engine reads anything.
            try:
                attrs["calculator"] = calculator_compiled(attrs["calculator"])
            except serializers.ValidationError as exc:
                raise serializers.ValidationError(exc.detail if self.top_level else {"calculator": exc.detail}) from None
        return attrs


class GeofenceSerializer(StrictSerializer):
    """A geofence: its geometry is checked by the engine (``analytics.services.geofence_geometry_check``),
    each problem named at its path (``geometry.path[2].lat``)."""

    name = StrictCharField(max_length=255)
    enabled = StrictBooleanField(required=False)
    priority = StrictIntegerField(required=False, min_value=0, max_value=100, help_text="higher is checked first")
    geometry = JSONObjectField(
        help_text='{"type": "circle", "center": {"lat", "lon"}, "radius": km}, {"type": "polygon", "path": '
        '[{"lat", "lon"}, ...]} or {"type": "corridor", "path": [...], "width": km}'
    )
    metadata = JSONObjectField(required=False)

    def validate(self, attrs):
        if "geometry" in attrs:
            try:
                attrs["geometry"] = services.geofence_geometry_check(geometry=attrs["geometry"])
            except services.GeofenceInvalid as exc:
                raise serializers.ValidationError(calculator_problems(exc.problems)) from None
        return attrs


MAX_HITTEST_POINTS = 1000


class HittestQuerySerializer(StrictSerializer):
    """``data={"lat": .., "lon": ..}`` (one point) or ``data={"points": [{"lat", "lon"}, ...]}``."""

    lat = StrictFloatField(required=False, min_value=-90, max_value=90)
    lon = StrictFloatField(required=False, min_value=-180, max_value=180)
    points = serializers.ListField(
        child=JSONObjectField(), required=False, min_length=1, max_length=MAX_HITTEST_POINTS,
        help_text=f"up to {MAX_HITTEST_POINTS} points, each {{lat, lon}}",
    )

    def validate(self, attrs):
        single = "lat" in attrs or "lon" in attrs
        if single == ("points" in attrs):
            raise serializers.ValidationError(
                {"non_field_errors": ['give one point (data={"lat": .., "lon": ..}) or points (data={"points": [..]})']}
            )
        if single:
            missing = [name for name in ("lat", "lon") if name not in attrs]
            if missing:
                raise serializers.ValidationError({name: ["missing field"] for name in missing})
            return {"points": [{"lat": attrs["lat"], "lon": attrs["lon"]}]}
        problems: dict[str, list[str]] = {}
        for index, point in enumerate(attrs["points"]):
            for name, limit in (("lat", 90), ("lon", 180)):
                value = point.get(name)
                where = f"points[{index}].{name}"
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    problems[where] = ["missing field" if value is None else "must be a number"]
                elif abs(value) > limit:
                    problems[where] = [f"must be between -{limit} and {limit}"]
            for name in point:
                if name not in ("lat", "lon"):
                    problems[f"points[{index}].{name}"] = ["unknown field"]
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class RollupSerializer(TimeRangeSerializer):
    """``POST /gw/calcs/{calc-sel}/devices/{dev-sel}/calculate``: counters over the stored
    intervals that begin in ``from``..``to`` (``to`` excluded), per calendar period of one
    ``datetime`` selector. ``validated_data["rollup"]`` is the engine's compiled rollup; each
    problem is named at its path in the body (``counters[1].type``)."""

    selectors = serializers.ListField(child=JSONObjectField(), help_text='one selector: {"type": "datetime", "split": "day"}')
    counters = serializers.ListField(
        child=JSONObjectField(), help_text='each {"name", "type": summary|minimum|maximum|average|first|last|count, "field"}'
    )
    timezone = StrictCharField(required=False, help_text="IANA name; default: each calculator's timezone")

    def validate(self, attrs):
        attrs = super().validate(attrs)
        for name, flespis in (("begin", "from"), ("end", "to")):
            if name not in attrs:
                raise serializers.ValidationError({flespis: ["required"]})
        try:
            problems = range_problems(attrs["begin"], attrs["end"])
            rollup = compile_rollup({key: attrs[key] for key in ("selectors", "counters", "timezone") if key in attrs})
        except RollupError as exc:
            problems = [*problems, *exc.problems]
        if problems:
            raise serializers.ValidationError(calculator_problems(problems))
        return {"begin": attrs["begin"], "end": attrs["end"], "rollup": rollup}
