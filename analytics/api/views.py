"""/gw/calcs: calculators, their assignments, stored intervals, recalculation requests, and
on-demand calculation on devices."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from analytics import selectors, services
from analytics.api.serializers import (
    AssignmentUpdateSerializer,
    CalculateSerializer,
    CalculatorSerializer,
    IntervalsQuerySerializer,
    RecalculateSerializer,
)
from analytics.models import Assignment, Calculator
from devices.api.views import DeviceChildView, DeviceResource
from devices.models import Device
from devices.selectors import devices_of
from flespi_site.api.selectors import SelectorField, is_id_list, parse_selector
from flespi_site.api.views import (
    FlespiAPIView,
    ProjectionParameters,
    Resource,
    ResourceView,
    json_body,
    project,
    projection,
    query_params,
    validated_params,
)
from flespi_site.errors import DomainError, InvalidInput, NotFound

CALCULATOR_FIELDS = (
    "id", "cid", "name", "selectors", "counters", "validate_message", "validate_interval", "timezone",
    "update_delay", "update_period", "update_onchange", "intervals_ttl", "intervals_rotate", "metadata",
    "version", "created",
)
ASSIGNMENT_FIELDS = ("id", "calc_id", "cid", "enabled", "synced", "state", "calc_version", "created")


def render_calculator(calculator: Calculator) -> dict:
    return {"id": calculator.pk, "cid": calculator.account_id, **calculator.configuration(),
            "version": calculator.version, "created": calculator.created}


def render_assignment(assignment: Assignment) -> dict:
    return {
        "id": assignment.device_id,
        "calc_id": assignment.calculator_id,
        "cid": assignment.account_id,
        "enabled": assignment.enabled,
        "synced": assignment.synced,
        "state": assignment.state,
        "calc_version": assignment.calc_version,
        "created": assignment.created,
    }


def _problems(exc: services.CalculatorInvalid) -> serializers.ValidationError:
    return serializers.ValidationError({problem.path or "non_field_errors": [problem.message] for problem in exc.problems})


class CalculatorResource(Resource):
    name = "calculator"
    selector_fields = {
        "id": SelectorField("pk", "int"),
        "name": SelectorField("name", "str"),
        "metadata": SelectorField("metadata", "json"),
    }
    create_serializer = CalculatorSerializer
    update_serializer = CalculatorSerializer
    output_fields = CALCULATOR_FIELDS

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

    def put(self, request: Request, selector: str | None = None) -> Response:
        # The whole configuration is validated by the engine after the change; a problem of the
        # body itself is a 400 with every path, before any calculator is touched.
        data = json_body(request)
        if isinstance(data, dict):
            try:
                services.calculator_config_check({"name": "-", "selectors": [{"type": "datetime", "split": "day"}], **data})
            except services.CalculatorInvalid as exc:
                raise _problems(exc) from None
        return super().put(request, selector)


class CalcChildView(FlespiAPIView):
    """A view under ``/gw/calcs/{calc-sel}/devices/{dev-sel}``: the selected calculators and
    devices of the acting account."""

    def selected_calculators(self, selector: str) -> list[Calculator]:
        query = parse_selector(selector, CalculatorResource.selector_fields)
        calculators = list(selectors.calculators_of(account=self.account).filter(query))
        if not calculators:
            raise NotFound(f"no calculator matches {selector!r}")
        return calculators

    def selected_devices(self, selector: str) -> list[Device]:
        query = parse_selector(selector, DeviceResource.selector_fields)
        devices = list(devices_of(account=self.account).filter(query))
        if not devices:
            raise NotFound(f"no device matches {selector!r}")
        return devices

    def missing_ids(self, selector: str, found: list[Device]) -> list[int]:
        """Ids an id-list selector named that the account does not have (they do not exist for it)."""
        if not is_id_list(selector):
            return []
        have = {device.pk for device in found}
        return [int(part) for part in selector.split(",") if int(part) not in have]

    def selected_assignments(self, calc_selector: str, device_selector: str) -> list[Assignment]:
        calculators = self.selected_calculators(calc_selector)
        device_ids = None
        if device_selector != "all":
            device_ids = [device.pk for device in self.selected_devices(device_selector)]
        assignments = list(
            selectors.assignments_of(
                account=self.account, calculator_ids=[c.pk for c in calculators], device_ids=device_ids
            )
        )
        if not assignments:
            raise NotFound(f"no device matching {device_selector!r} is assigned to calculator {calc_selector!r}")
        return assignments

    @staticmethod
    def batch(result: list, errors: list[dict]) -> Response:
        return ResourceView._batch_response(result, errors)


class AssignmentsView(CalcChildView):
    """``POST|GET|PUT|DELETE /gw/calcs/{calc-sel}/devices/{dev-sel}``: assign, list, enable or
    disable, unassign."""

    query_parameters = {"GET": ProjectionParameters, "POST": ProjectionParameters, "PUT": ProjectionParameters}
    request_serializers = {"PUT": AssignmentUpdateSerializer}

    def get(self, request: Request, calc_selector: str, device_selector: str = "all") -> Response:
        names = projection(query_params(request), ASSIGNMENT_FIELDS)
        calculators = self.selected_calculators(calc_selector)
        device_ids = None
        if device_selector != "all":
            device_ids = [device.pk for device in self.selected_devices(device_selector)]
        rows = selectors.assignments_of(
            account=self.account, calculator_ids=[c.pk for c in calculators], device_ids=device_ids
        )
        return Response({"result": [project(render_assignment(row), names) for row in rows]})

    def post(self, request: Request, calc_selector: str, device_selector: str | None = None) -> Response:
        if device_selector is None:
            raise InvalidInput("POST assigns devices: name them in the path, /gw/calcs/{calc}/devices/{devices}")
        if request.stream is not None and request.content_type:
            body = request.data
            if body not in ([], {}):
                raise InvalidInput("assigning takes no body (or an empty JSON array)")
        names = projection(query_params(request), ASSIGNMENT_FIELDS)
        calculators = self.selected_calculators(calc_selector)
        errors: list[dict] = []
        try:
            devices = self.selected_devices(device_selector)
        except NotFound:
            devices = []
        for device_id in self.missing_ids(device_selector, devices):
            errors.append({**NotFound(f"no device with id {device_id}").as_error(), "id": device_id})
        if not devices and not errors:
            raise NotFound(f"no device matches {device_selector!r}")
        result = []
        for calculator in calculators:
            for device in devices:
                try:
                    assignment, _new = services.assignment_create(calculator=calculator, device=device)
                except DomainError as exc:
                    errors.append({**exc.as_error(), "id": device.pk, "calc_id": calculator.pk})
                    continue
                result.append(project(render_assignment(assignment), names))
        return self.batch(result, errors)

    def put(self, request: Request, calc_selector: str, device_selector: str = "all") -> Response:
        data = json_body(request)
        serializer = AssignmentUpdateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        names = projection(query_params(request), ASSIGNMENT_FIELDS)
        result, errors = [], []
        for assignment in self.selected_assignments(calc_selector, device_selector):
            try:
                assignment = services.assignment_update(assignment=assignment, enabled=serializer.validated_data["enabled"])
            except DomainError as exc:
                errors.append({**exc.as_error(), "id": assignment.device_id, "calc_id": assignment.calculator_id})
                continue
            result.append(project(render_assignment(assignment), names))
        return self.batch(result, errors)

    def delete(self, request: Request, calc_selector: str, device_selector: str = "all") -> Response:
        result, errors = [], []
        for assignment in self.selected_assignments(calc_selector, device_selector):
            try:
                services.assignment_delete(assignment=assignment)
            except DomainError as exc:
                errors.append({**exc.as_error(), "id": assignment.device_id, "calc_id": assignment.calculator_id})
                continue
            result.append({"id": assignment.device_id, "calc_id": assignment.calculator_id})
        return self.batch(result, errors)


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
    from analytics.engine import ExpressionError, compile_expression

    try:
        return compile_expression(text)
    except ExpressionError as exc:
        raise InvalidInput(f"filter: {exc}", field="filter") from None


class IntervalsView(CalcChildView):
    """``GET /gw/calcs/{calc-sel}/devices/{dev-sel}/intervals/{int-sel}`` and ``PUT`` of one
    interval's user fields."""

    query_parameters = {"GET": IntervalsQuerySerializer}

    def get(self, request: Request, calc_selector: str, device_selector: str, interval_selector: str = "all") -> Response:
        params = validated_params(request, IntervalsQuerySerializer)
        ids = _interval_ids(interval_selector)
        condition = _interval_filter(params.get("filter"))
        assignments = self.selected_assignments(calc_selector, device_selector)
        intervals = selectors.intervals_of(
            assignments=assignments,
            ids=ids,
            begin=params.get("begin"),
            end=params.get("end"),
            count=params.get("count", 100_000),
            reverse=params.get("reverse", False),
            condition=condition,
        )
        if ids is not None and len(ids) == 1 and not intervals:
            raise NotFound(f"no interval {ids[0]}")
        if "fields" in params:
            names = [name.strip() for name in params["fields"].split(",") if name.strip()]
            intervals = [{name: interval[name] for name in names if name in interval} for interval in intervals]
        return Response({"result": intervals})

    def put(self, request: Request, calc_selector: str, device_selector: str, interval_selector: str = "all") -> Response:
        ids = _interval_ids(interval_selector)
        if ids is None or len(ids) != 1:
            raise InvalidInput("PUT attaches user fields to one interval: name its id in the path", field="selector")
        fields = json_body(request)
        if not isinstance(fields, dict):
            raise InvalidInput("the body must be a JSON object of user fields")
        from flespi_site.jsontext import unstorable

        what = unstorable(fields)
        if what is not None:
            raise InvalidInput(f"user fields must not contain {what}")
        calculators = {c.pk: c for c in self.selected_calculators(calc_selector)}
        result, errors = [], []
        for assignment in self.selected_assignments(calc_selector, device_selector):
            try:
                interval = services.interval_user_update(
                    assignment=assignment, calculator=calculators[assignment.calculator_id],
                    interval_id=ids[0], fields=fields,
                )
            except DomainError as exc:
                errors.append({**exc.as_error(), "id": ids[0], "calc_id": assignment.calculator_id,
                               "device_id": assignment.device_id})
                continue
            result.append(interval)
        return self.batch(result, errors)


class RecalculateView(CalcChildView):
    """``POST /gw/calcs/{calc-sel}/devices/{dev-sel}/recalculate``: ask for the recalculation of
    ``begin``..``end`` (all of history when absent); the calc fleet does it."""

    request_serializers = {"POST": RecalculateSerializer}

    def post(self, request: Request, calc_selector: str, device_selector: str) -> Response:
        data: Any = {}
        if request.stream is not None and request.content_type:
            data = request.data
        serializer = RecalculateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        assignments = self.selected_assignments(calc_selector, device_selector)
        services.recalculation_request(
            assignments=assignments, begin=serializer.validated_data.get("begin"), end=serializer.validated_data.get("end")
        )
        return Response({"result": [{"id": a.device_id, "calc_id": a.calculator_id} for a in assignments]})


class CalculateView(DeviceChildView):
    """``POST /gw/devices/{dev-sel}/calculate``: intervals of a stored or inline calculator over
    ``begin``..``end``, computed from the stored messages now, nothing stored."""

    request_serializers = {"POST": CalculateSerializer}

    def post(self, request: Request, selector: str) -> Response:
        from analytics import calculation

        serializer = CalculateSerializer(data=json_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "calc_id" in data:
            stored = selectors.calculators_of(account=self.account).filter(pk=data["calc_id"]).first()
            if stored is None:
                raise NotFound(f"no calculator with id {data['calc_id']}", field="calc_id")
            calculator = services.compiled(stored)
        else:
            try:
                calculator = services.calculator_compile(config=data["calculator"])
            except services.CalculatorInvalid as exc:
                raise serializers.ValidationError(
                    {f"calculator.{p.path}" if p.path else "calculator": [p.message] for p in exc.problems}
                ) from None
        devices = self.selected_devices(selector)
        result = []
        for device in devices:
            intervals = calculation.calculate_stored(device=device, calculator=calculator, begin=data["begin"], end=data["end"])
            result.append({"id": device.pk, "intervals": list(intervals)})
        return Response({"result": result})
