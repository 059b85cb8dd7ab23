"""/gw/calcs: calculators, their assignments, stored intervals, recalculation requests, and
on-demand calculation on devices; /gw/geofences and their assignment to calculators."""

from __future__ import annotations

import time
from typing import Any

from django.http.response import HttpResponseBase
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from analytics import calculation, exports, selectors, services
from analytics.api.serializers import (
    AssignmentUpdateSerializer,
    CalculateQuerySerializer,
    CalculateSerializer,
    CalculatorSerializer,
    GeofenceSerializer,
    HittestQuerySerializer,
    IntervalsExportQuerySerializer,
    IntervalsQuerySerializer,
    RecalculateSerializer,
    RollupSerializer,
    calculator_problems,
)
from analytics.constants import DEFAULT_INTERVALS_COUNT
from analytics.engine import ExpressionError, compile_expression
from analytics.engine.rollups import RollupError
from analytics.models import Assignment, CalculatorGeofence, Geofence
from devices.api.views import DeviceResource, DeviceSelectionView, GroupResource
from flespi_site.api.batch import batch_response, each_item
from flespi_site.api.exports import CSV, GEOJSON, GPX, JSON, export_format, streamed
from flespi_site.api.params import project, projection, validated_params
from flespi_site.api.renderers import ExactJSONRenderer
from flespi_site.api.resources import Resource, ResourceView, SelectionView, selected_with_missing_ids
from flespi_site.api.selection import SelectionField, is_id_list
from flespi_site.api.views import json_body
from flespi_site.errors import InvalidInput, NotFound
from flespi_site.jsontext import unstorable

CALCULATOR_FIELDS = (
    "id", "cid", "name", "messages_source", "selectors", "counters", "validate_message", "validate_interval", "timezone",
    "update_delay", "update_period", "update_onchange", "intervals_ttl", "intervals_rotate", "metadata",
    "version", "created",
)
ASSIGNMENT_FIELDS = ("id", "calc_id", "cid", "enabled", "synced", "state", "calc_version", "auto_created", "created")
GROUP_ASSIGNMENT_FIELDS = ("id", "calc_id", "cid", "name", "created")


render_calculator = selectors.calculator_item


def render_assignment(assignment: Assignment) -> dict:
    return {
        "id": assignment.device_id,
        "calc_id": assignment.calculator_id,
        "cid": assignment.account_id,
        "enabled": assignment.enabled,
        "synced": assignment.synced,
        "state": assignment.state,
        "calc_version": assignment.calc_version,
        # Held only by groups of the calculator (docs/analytics.md, "Groups and automatic assignment").
        "auto_created": not assignment.by_hand,
        "created": assignment.created,
    }


def _problems(exc: services.CalculatorInvalid) -> serializers.ValidationError:
    return serializers.ValidationError(calculator_problems(exc.problems))


class CalculatorResource(Resource):
    name = "calculator"
    url_path = "gw/calcs"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "cid": SelectionField("account_id", "int"),
        "name": SelectionField("name", "str"),
        "metadata": SelectionField("metadata", "json"),
    }
    create_serializer = CalculatorSerializer
    update_serializer = CalculatorSerializer
    output_fields = CALCULATOR_FIELDS
    merge_fields = ("metadata",)

    def queryset(self):
        return selectors.calculators_of(account=self.account)

    def render(self, obj):
        return render_calculator(obj)

    def create(self, data):
        try:
            return services.calculator_create(account=self.account, config=data)
        except services.CalculatorInvalid as exc:
            raise _problems(exc) from None

    def update(self, obj, data):
        try:
            return services.calculator_update(calculator=obj, data=data)
        except services.CalculatorInvalid as exc:
            raise InvalidInput(str(exc), field=exc.problems[0].path if exc.problems else None) from None

    def delete(self, obj):
        services.calculator_delete(calculator=obj)


class CalculatorsView(ResourceView):
    """``POST|GET|PUT|DELETE /gw/calcs[/{calc-sel}]``."""

    resource_class = CalculatorResource

    def put(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        # A problem of the changes themselves is a 400 naming every path, before any calculator is
        # touched; the whole merged configuration is validated again by the update.
        data = json_body(request)
        if isinstance(data, dict):
            try:
                services.calculator_changes_check(changes=data)
            except services.CalculatorInvalid as exc:
                raise _problems(exc) from None
        return super().put(request, selector, **parents)


def _device_field(field: SelectionField) -> SelectionField:
    return SelectionField("device_id" if field.lookup == "pk" else f"device__{field.lookup}", field.kind)


class AssignmentResource(Resource):
    """The assignments of the selected calculators; selected by their device's fields (``id`` is
    the device id, as in flespi)."""

    name = "assignment"
    parent = CalculatorResource
    url_path = "devices"
    selection_fields = {
        **{name: _device_field(field) for name, field in DeviceResource.selection_fields.items()},
        "cid": SelectionField("account_id", "int"),
    }
    create_serializer = AssignmentUpdateSerializer
    update_serializer = AssignmentUpdateSerializer
    output_fields = ASSIGNMENT_FIELDS

    def queryset(self):
        return selectors.assignments_of(
            account=self.account, calculator_ids=[calculator.pk for calculator in self.parents]
        )

    def render(self, obj):
        return render_assignment(obj)

    def named(self, obj):
        return {"id": obj.device_id, "calc_id": obj.calculator_id}

    def create(self, data):
        raise InvalidInput("assign devices with POST /gw/calcs/{calc}/devices/{devices}")

    def update(self, obj, data):
        return services.assignment_update(assignment=obj, enabled=data["enabled"])

    def delete(self, obj):
        services.assignment_delete(assignment=obj)


class AssignmentsView(ResourceView):
    """``POST|GET|PUT|DELETE /gw/calcs/{calc-sel}/devices/{dev-sel}``: assign, list, enable or
    disable, unassign."""

    resource_class = AssignmentResource

    def post(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        if selector is None:
            raise InvalidInput("POST assigns devices: name them in the path, /gw/calcs/{calc}/devices/{devices}")
        if request.stream is not None and request.content_type and request.data not in ([], {}):
            raise InvalidInput("assigning takes no body (or an empty JSON array)")
        answer = self.projected(request)
        devices, missing = selected_with_missing_ids(self, DeviceResource, selector)
        assignments, refused = services.assignments_create(
            calculators=self._resource().parents,  # type: ignore[arg-type]  # the parent resource selects calculators
            devices=devices,  # type: ignore[arg-type]  # DeviceResource selects devices
        )
        return batch_response(
            [answer(assignment) for assignment in assignments], [error.as_error() for error in [*missing, *refused]]
        )


class GroupAssignmentResource(Resource):
    """The groups assigned to the selected calculators; selected by the group's fields (``id`` is
    the group id)."""

    name = "group assignment"
    parent = CalculatorResource
    url_path = "groups"
    selection_fields = {
        "id": SelectionField("group_id", "int"),
        "cid": SelectionField("account_id", "int"),
        "name": SelectionField("group__name", "str"),
        "metadata": SelectionField("group__metadata", "json"),
    }
    create_serializer = AssignmentUpdateSerializer
    update_serializer = AssignmentUpdateSerializer
    output_fields = GROUP_ASSIGNMENT_FIELDS

    def queryset(self):
        return selectors.group_assignments_of(
            account=self.account, calculator_ids=[calculator.pk for calculator in self.parents]
        )

    def render(self, obj):
        return {"id": obj.group_id, "calc_id": obj.calculator_id, "cid": obj.account_id, "name": obj.group.name,
                "created": obj.created}

    def named(self, obj):
        return {"id": obj.group_id, "calc_id": obj.calculator_id}

    def create(self, data):
        raise InvalidInput("assign groups with POST /gw/calcs/{calc}/groups/{groups}")

    def update(self, obj, data):
        raise InvalidInput("an assignment of a group has nothing to change")

    def delete(self, obj):
        services.group_assignment_delete(link=obj)


class GroupAssignmentsView(ResourceView):
    """``POST|GET|DELETE /gw/calcs/{calc-sel}/groups/{group-sel}``: assign groups (their members
    now and later), list them, unassign them."""

    resource_class = GroupAssignmentResource
    http_method_names = ["get", "post", "delete", "options"]

    def post(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        if selector is None:
            raise InvalidInput("POST assigns groups: name them in the path, /gw/calcs/{calc}/groups/{groups}")
        if request.stream is not None and request.content_type and request.data not in ([], {}):
            raise InvalidInput("assigning takes no body (or an empty JSON array)")
        answer = self.projected(request)
        groups, missing = selected_with_missing_ids(self, GroupResource, selector)
        links, refused = services.group_assignments_create(
            calculators=self._resource().parents,  # type: ignore[arg-type]  # the parent resource selects calculators
            groups=groups,  # type: ignore[arg-type]  # GroupResource selects groups
        )
        return batch_response([answer(link) for link in links], [error.as_error() for error in [*missing, *refused]])


class AssignmentSelectionView(SelectionView):
    """A view under ``/gw/calcs/{calc-sel}/devices/{dev-sel}/...``."""

    selection_of = AssignmentResource

    def assignments(self) -> list[Assignment]:
        return self.selection()  # type: ignore[return-value]  # AssignmentResource selects assignments


def _interval_ids(selector: str) -> list[int] | None:
    if selector == "all":
        return None
    if not is_id_list(selector):
        raise InvalidInput(f"interval selector {selector[:64]!r}: use all or interval ids separated by commas",
                           field="selector")
    return [int(part) for part in selector.split(",")]


def _interval_filter(text: str | None):
    if text is None:
        return None
    try:
        return compile_expression(text)
    except ExpressionError as exc:
        raise InvalidInput(f"filter: {exc}", field="filter") from None


class IntervalsView(AssignmentSelectionView):
    """``GET /gw/calcs/{calc-sel}/devices/{dev-sel}/intervals/{int-sel}`` and ``PUT`` of one
    interval's user fields."""

    url_path = "intervals"
    query_parameters = {"GET": IntervalsQuerySerializer}
    export_formats = (CSV, GEOJSON, GPX)

    def get(self, request: Request, interval_selector: str = "all", **selection: str) -> HttpResponseBase:
        format = export_format(request, accepted=(JSON, *self.export_formats))
        if format != JSON:
            return self._export(request, format, interval_selector)
        params = validated_params(request, IntervalsQuerySerializer)
        ids = _interval_ids(interval_selector)
        condition = _interval_filter(params.get("filter"))
        intervals = selectors.intervals_of(
            assignments=self.assignments(),
            ids=ids,
            begin=params.get("begin"),
            end=params.get("end"),
            count=params.get("count", DEFAULT_INTERVALS_COUNT),
            reverse=params.get("reverse", False),
            condition=condition,
        )
        if ids is not None and len(ids) == 1 and not intervals:
            raise NotFound(f"no interval {ids[0]}")
        names = projection(params)
        return Response({"result": [project(interval, names) for interval in intervals]})

    def _export(self, request: Request, format: str, interval_selector: str) -> HttpResponseBase:
        params = validated_params(request, IntervalsExportQuerySerializer)
        ids = _interval_ids(interval_selector)
        export = exports.stored_intervals_export(
            assignments=self.assignments(),
            format=format,
            names=projection(params),
            ids=ids,
            begin=params.get("begin"),
            end=params.get("end"),
            count=params.get("count", DEFAULT_INTERVALS_COUNT),
            reverse=params.get("reverse", False),
            condition=_interval_filter(params.get("filter")),
        )
        if ids is not None and len(ids) == 1 and export.empty:
            raise NotFound(f"no interval {ids[0]}")
        return streamed(export.chunks, format=format, filename=export.filename)

    def put(self, request: Request, interval_selector: str = "all", **selection: str) -> Response:
        ids = _interval_ids(interval_selector)
        if ids is None or len(ids) != 1:
            raise InvalidInput("PUT attaches user fields to one interval: name its id in the path", field="selector")
        fields = json_body(request)
        if not isinstance(fields, dict):
            raise InvalidInput("the body must be a JSON object of user fields")
        what = unstorable(fields)
        if what is not None:
            raise InvalidInput(f"user fields must not contain {what}")
        return each_item(
            self.assignments(),
            lambda assignment: services.interval_user_update(
                assignment=assignment, calculator=assignment.calculator, interval_id=ids[0], fields=fields
            ),
            named=lambda assignment: {"id": ids[0], "calc_id": assignment.calculator_id, "device_id": assignment.device_id},
        )


class RecalculateView(AssignmentSelectionView):
    """``POST /gw/calcs/{calc-sel}/devices/{dev-sel}/recalculate``: ask for the recalculation of
    ``begin``..``end`` (all of history when absent); the calc fleet does it."""

    url_path = "recalculate"
    request_serializers = {"POST": RecalculateSerializer}

    def post(self, request: Request, **selection: str) -> Response:
        data: Any = {}
        if request.stream is not None and request.content_type:
            data = request.data
        serializer = RecalculateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        assignments = self.assignments()
        services.recalculation_request(
            assignments=assignments, begin=serializer.validated_data.get("begin"), end=serializer.validated_data.get("end")
        )
        return Response(
            {
                "result": [
                    {"id": assignment.device_id, "calc_id": assignment.calculator_id}
                    for assignment in assignments
                ]
            }
        )


class RollupView(AssignmentSelectionView):
    """``POST /gw/calcs/{calc-sel}/devices/{dev-sel}/calculate``: counters over the stored
    intervals per device and calendar period (docs/analytics.md, "Rollups"); no message is read,
    nothing is stored."""

    url_path = "calculate"
    request_serializers = {"POST": RollupSerializer}
    renderer_classes = (ExactJSONRenderer,)  # tens of thousands of items

    def post(self, request: Request, **selection: str) -> Response:
        serializer = RollupSerializer(data=json_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            rows = selectors.rollups_of(
                account=self.account, assignments=self.assignments(), rollup=data["rollup"], begin=data["begin"],
                end=data["end"],
            )
        except RollupError as exc:
            raise serializers.ValidationError(calculator_problems(exc.problems)) from None
        return Response({"result": rows})


class CalculateView(DeviceSelectionView):
    """``POST /gw/devices/{dev-sel}/calculate``: intervals of a stored or inline calculator over
    ``begin``..``end``, computed from the stored messages now, nothing stored."""

    url_path = "calculate"
    request_serializers = {"POST": CalculateSerializer}
    query_parameters = {"POST": CalculateQuerySerializer}
    export_formats = (CSV, GEOJSON, GPX)

    def post(self, request: Request, selector: str) -> HttpResponseBase:
        format = export_format(request, accepted=(JSON, *self.export_formats))
        names = projection(validated_params(request, CalculateQuerySerializer))
        serializer = CalculateSerializer(data=json_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "calc_id" in data:
            stored = selectors.calculators_of(account=self.account).filter(pk=data["calc_id"]).first()
            if stored is None:
                raise NotFound(f"no calculator with id {data['calc_id']}", field="calc_id")
            calculator = services.compiled(stored)
        else:
            calculator = data["calculator"]  # compiled by the serializer
            try:
                services.calculator_chain_check(account=self.account, calculator=calculator)
            except services.CalculatorInvalid as exc:
                detail: dict = calculator_problems(exc.problems)
                raise serializers.ValidationError(detail if serializer.top_level else {"calculator": detail}) from None
        begin, end = data.get("begin"), data.get("end")
        if begin is None or end is None:
            begin, end = calculation.on_demand_range(calculator=calculator, now=time.time())
        results = [
            (device.pk, list(calculation.calculate_stored(device=device, calculator=calculator, begin=begin, end=end)))
            for device in self.selected_devices()
        ]
        if format != JSON:
            export = exports.calculated_intervals_export(
                results=results, config=calculator.config, format=format, names=names
            )
            return streamed(export.chunks, format=format, filename=export.filename)
        return Response(
            {
                "result": [
                    {"id": device_id, "intervals": [project(interval, names) for interval in intervals]}
                    for device_id, intervals in results
                ]
            }
        )


# --- geofences -------------------------------------------------------------------------------

GEOFENCE_FIELDS = ("id", "cid", "name", "enabled", "priority", "geometry", "metadata", "created")
CALCULATOR_GEOFENCE_FIELDS = ("id", "calc_id", "cid", "name", "enabled", "priority", "created")

render_geofence = selectors.geofence_item


def render_calculator_geofence(link: CalculatorGeofence) -> dict:
    return {
        "id": link.geofence_id,
        "calc_id": link.calculator_id,
        "cid": link.account_id,
        "name": link.geofence.name,
        "enabled": link.geofence.enabled,
        "priority": link.geofence.priority,
        "created": link.created,
    }


class GeofenceResource(Resource):
    name = "geofence"
    url_path = "gw/geofences"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "cid": SelectionField("account_id", "int"),
        "name": SelectionField("name", "str"),
        "enabled": SelectionField("enabled", "bool"),
        "priority": SelectionField("priority", "int"),
        "metadata": SelectionField("metadata", "json"),
    }
    create_serializer = GeofenceSerializer
    update_serializer = GeofenceSerializer
    output_fields = GEOFENCE_FIELDS
    merge_fields = ("metadata",)

    def queryset(self):
        return selectors.geofences_of(account=self.account)

    def render(self, obj):
        return render_geofence(obj)

    def create(self, data):
        return services.geofence_create(account=self.account, data=data)

    def update(self, obj, data):
        return services.geofence_update(geofence=obj, data=data)

    def delete(self, obj):
        services.geofence_delete(geofence=obj)


class GeofencesView(ResourceView):
    """``POST|GET|PUT|DELETE /gw/geofences[/{sel}]``."""

    resource_class = GeofenceResource


def _geofence_field(field: SelectionField) -> SelectionField:
    return SelectionField("geofence_id" if field.lookup == "pk" else f"geofence__{field.lookup}", field.kind)


class CalculatorGeofenceResource(Resource):
    """The geofences assigned to the selected calculators; selected by the geofence's fields
    (``id`` is the geofence id)."""

    name = "calculator geofence"
    parent = CalculatorResource
    url_path = "geofences"
    selection_fields = {
        **{name: _geofence_field(field) for name, field in GeofenceResource.selection_fields.items()},
        "cid": SelectionField("account_id", "int"),
    }
    create_serializer = GeofenceSerializer  # unused: POST assigns the geofences its path names
    update_serializer = GeofenceSerializer  # unused: no PUT
    output_fields = CALCULATOR_GEOFENCE_FIELDS

    def queryset(self):
        return selectors.calculator_geofences_of(
            account=self.account, calculator_ids=[calculator.pk for calculator in self.parents]
        )

    def render(self, obj):
        return render_calculator_geofence(obj)

    def named(self, obj):
        return {"id": obj.geofence_id, "calc_id": obj.calculator_id}

    def create(self, data):
        raise InvalidInput("assign geofences with POST /gw/calcs/{calc}/geofences/{geofences}")

    def update(self, obj, data):
        raise InvalidInput("an assigned geofence has nothing to change here: PUT /gw/geofences/{geofence}")

    def delete(self, obj):
        services.calculator_geofence_unassign(link=obj)


class CalculatorGeofencesView(ResourceView):
    """``POST|GET|DELETE /gw/calcs/{calc-sel}/geofences/{geofence-sel}``: assign, list,
    unassign."""

    resource_class = CalculatorGeofenceResource
    http_method_names = ["get", "post", "delete", "options"]

    def post(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        if selector is None:
            raise InvalidInput("POST assigns geofences: name them in the path, /gw/calcs/{calc}/geofences/{geofences}")
        if request.stream is not None and request.content_type and request.data not in ([], {}):
            raise InvalidInput("assigning takes no body (or an empty JSON array)")
        answer = self.projected(request)
        geofences, missing = selected_with_missing_ids(self, GeofenceResource, selector)
        links, refused = services.calculator_geofences_assign(
            calculators=self._resource().parents,  # type: ignore[arg-type]  # the parent resource selects calculators
            geofences=geofences,  # type: ignore[arg-type]  # GeofenceResource selects geofences
        )
        return batch_response([answer(link) for link in links], [error.as_error() for error in [*missing, *refused]])


class HittestView(SelectionView):
    """``GET /gw/geofences/{sel}/hittest?data={"lat": .., "lon": ..}`` (or ``data={"points":
    [..]}``): which of the selected geofences contain each point."""

    selection_of = GeofenceResource
    url_path = "hittest"
    query_parameters = {"GET": HittestQuerySerializer}

    def get(self, request: Request, selector: str) -> Response:
        params = validated_params(request, HittestQuerySerializer)
        geofences: list[Geofence] = self.selection()  # type: ignore[assignment]  # GeofenceResource selects geofences
        return Response({"result": services.geofences_hittest(geofences=geofences, points=params["points"])})
