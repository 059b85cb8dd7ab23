"""Admin of calculators, assignments and stored intervals (docs/admin.md).

Every write goes through ``analytics.services``; the pages read one datacenter database at a
time (``accounts.regional_admin``). An assignment's page draws the intervals of its device on a
timeline and a chosen interval's route on a map; a calculator's page tries its configuration on a
device before it is saved.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from rest_framework.utils.encoders import JSONEncoder

from accounts import placement
from accounts.models import Account
from accounts.regional_admin import RegionalModelAdmin, as_utc, datacenter_code, parse_utc
from analytics import selectors, services
from analytics.choices import AssignmentState
from analytics.models import Assignment, Calculator
from devices import selectors as device_selectors
from devices.admin import HasPosition
from devices.models import Device
from flespi_site.errors import DomainError
from flespi_site.jsontext import unstorable

INTERVALS_PER_PAGE = 100
TIMELINE_DAYS = 7  # the default range of the timeline: the week ending with the newest interval
MAX_TIMELINE_DAYS = 62
MAX_TIMELINE_INTERVALS = 5000  # per assignment and page
MAX_ROUTE_POINTS = 50_000  # positions of an interval drawn from its messages
DAY = 86400
BASE_FIELDS = frozenset({"id", "begin", "end", "duration", "timestamp", "calc_id", "device_id"})


def json_response(body: dict, status: int = 200) -> JsonResponse:
    return JsonResponse(body, status=status, encoder=JSONEncoder, json_dumps_params={"ensure_ascii": False})


def problem_response(status: int, *problems: tuple[str, str, str]) -> JsonResponse:
    """A refusal of an admin JSON endpoint: each problem as the field it is about, the path inside
    that field ("" for the field as a whole) and what is wrong."""
    return json_response(
        {"errors": [{"field": field, "path": where, "message": what} for field, where, what in problems]},
        status,
    )


def _day(text: str, *, field: str) -> float:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a date (2019-02-18)") from None


def timeline_range(query, *, newest: float | None) -> tuple[float, float]:
    """The days a timeline shows, [begin, end) in unix seconds: ``from``..``to`` (UTC dates,
    inclusive), by default the ``TIMELINE_DAYS`` ending with the day of ``newest``; ``ValueError``
    naming the field that is wrong."""
    begin = _day(query["from"], field="from") if query.get("from") else None
    if query.get("to"):
        end = _day(query["to"], field="to") + DAY
    elif begin is not None:
        end = begin + TIMELINE_DAYS * DAY
    else:
        newest = dt.datetime.now(dt.UTC).timestamp() if newest is None else newest
        end = (newest // DAY + 1) * DAY
    if begin is None:
        begin = end - TIMELINE_DAYS * DAY
    if begin >= end:
        raise ValueError(f"from: {as_utc(begin)[:10]} is after to {as_utc(end - DAY)[:10]}")
    if end - begin > MAX_TIMELINE_DAYS * DAY:
        raise ValueError(f"to: the timeline shows at most {MAX_TIMELINE_DAYS} days")
    return begin, end


def device_timeline(*, assignment: Assignment, begin: float, end: float) -> dict[str, Any]:
    """The intervals of every assignment of the assignment's device between ``begin`` and
    ``end``, as timeline bars: one lane per assignment, the calculator's name on it."""
    siblings = list(
        Assignment.objects.using(assignment.database)
        .filter(device_id=assignment.device_id)
        .select_related("calculator")
        .order_by("calculator_id")
    )
    lane_of = {(a.calculator_id, a.device_id): a.pk for a in siblings}
    intervals = selectors.intervals_of(
        assignments=siblings, begin=begin, end=end - 1e-6, count=MAX_TIMELINE_INTERVALS
    )
    shown = Counter(interval["calc_id"] for interval in intervals)
    return {
        "lanes": [
            {
                "key": a.pk,
                "name": f"{a.calculator}{' (this assignment)' if a.pk == assignment.pk else ''}",
                "calculator": a.calculator_id,
            }
            for a in siblings
        ],
        "bars": [
            {
                "id": interval["id"],
                "begin": interval["begin"],
                "end": interval["end"],
                "lane": lane_of[(interval["calc_id"], interval["device_id"])],
            }
            for interval in intervals
        ],
        "full": [a.pk for a in siblings if shown[a.calculator_id] >= MAX_TIMELINE_INTERVALS],
    }


def interval_picture(*, assignment: Assignment, interval: dict) -> dict[str, Any]:
    """A stored interval as its assignment's page shows it: counters, user fields, and its route
    (the encoded polyline of the calculator's ``route`` counter, else the positions of its
    messages)."""
    counters = assignment.calculator.counters
    names = [counter["name"] for counter in counters]
    route_names = [counter["name"] for counter in counters if counter["type"] == "route"]
    route = next((interval[n] for n in route_names if isinstance(interval.get(n), str) and interval[n]), None)
    points = None
    if route is None:
        messages = device_selectors.messages_matching(
            devices=[assignment.device],
            begin=interval["begin"],
            end=interval["end"],
            count=MAX_ROUTE_POINTS,
            reverse=False,
            condition=HasPosition(),
        )
        points = [[m["position.latitude"], m["position.longitude"]] for m in messages]
    return {
        "id": interval["id"],
        "assignment": assignment.pk,
        "calculator": str(assignment.calculator),
        "begin": interval["begin"],
        "end": interval["end"],
        "duration": interval["duration"],
        "timestamp": interval.get("timestamp"),
        "counters": [[name, interval.get(name)] for name in names if name not in route_names],
        "user": [[k, v] for k, v in interval.items() if k not in BASE_FIELDS and k not in names],
        "route": route,
        "route_counter": route_names[0] if route is not None else None,
        "points": points,
    }


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


class ConfigurationField(forms.JSONField):
    """A calculator configuration as one JSON object, shown indented; a parse error says where."""

    widget = forms.Textarea(
        attrs={"rows": 30, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"}
    )

    def to_python(self, value):
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        try:
            config = json.loads(value, parse_constant=_refuse_constant)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise forms.ValidationError(f"not valid JSON: {exc}", code="invalid") from None
        if not isinstance(config, dict):
            raise forms.ValidationError("the configuration is a JSON object", code="invalid")
        return config

    def prepare_value(self, value):
        if isinstance(value, dict):
            return json.dumps(value, indent=2, ensure_ascii=False)
        return super().prepare_value(value)


class TryRefused(Exception):
    """A "try it" request with problems: (field, path, message) each, and the HTTP status."""

    def __init__(self, status: int, *problems: tuple[str, str, str]):
        super().__init__("; ".join(f"{f} {p}: {m}" for f, p, m in problems))
        self.status = status
        self.problems = problems


def _try_moment(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TryRefused(400, (name, "", f"{value!r} is not a moment"))
    try:
        return parse_utc(str(value), field=name)
    except ValueError as exc:
        raise TryRefused(400, (name, "", str(exc).partition(": ")[2])) from None


def calculator_try(*, body: Any, calculator: Calculator | None) -> dict[str, Any]:
    """An on-demand calculation of the configuration typed into a calculator's page over one
    device's stored messages (``analytics.calculation.calculate_stored``), nothing stored; with
    the intervals the calculator (when saved and assigned to the device) has stored in the same
    range. ``begin``/``end`` left out: the day up to the device's newest message."""
    from analytics import calculation

    if not isinstance(body, dict):
        raise TryRefused(400, ("", "", "the request is a JSON object"))
    problems: list[tuple[str, str, str]] = []
    engine_calculator = None
    config: dict = {}
    try:
        raw = body.get("configuration")
        if raw is not None and not isinstance(raw, str | dict):
            raise forms.ValidationError("the configuration is a JSON object, or its text")
        config = raw if isinstance(raw, dict) else ConfigurationField().clean(raw)
        what = unstorable(config)
        if what is not None:
            raise forms.ValidationError(f"the configuration must not contain {what}")
        engine_calculator = services.calculator_compile(config=config)
    except forms.ValidationError as exc:
        problems.extend(("configuration", "", message) for message in exc.messages)
    except services.CalculatorInvalid as exc:
        problems.extend(("configuration", p.path, p.message) for p in exc.problems)
    device_id = body.get("device")
    device = None
    if isinstance(device_id, str) and device_id.strip().isdigit():
        device_id = int(device_id)
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        problems.append(("device", "", "choose a device (its id)"))
    else:
        try:
            device = device_selectors.device_by_id(device_id)
        except LookupError as exc:
            problems.append(("device", "", str(exc)))
        else:
            if device is None:
                problems.append(("device", "", f"no device {device_id}"))
    try:
        begin, end = _try_moment(body, "begin"), _try_moment(body, "end")
    except TryRefused as exc:
        problems.extend(exc.problems)
        begin = end = None
    if problems:
        raise TryRefused(400, *problems)
    assert device is not None and engine_calculator is not None
    if end is None:
        newest = device_selectors.messages_of(devices=[device], begin=begin, end=None, count=1, reverse=True)
        end = newest[0]["timestamp"] if newest else dt.datetime.now(dt.UTC).timestamp()
    if begin is None:
        begin = max(0.0, end - DAY)
    try:
        intervals = calculation.calculate_stored(
            device=device, calculator=engine_calculator, begin=begin, end=end
        )
    except DomainError as exc:
        raise TryRefused(exc.status, (exc.field or "", "", exc.reason)) from None
    stored = None
    if calculator is not None and calculator.pk is not None and calculator.database == device.database:
        assignment = (
            Assignment.objects.using(device.database).filter(calculator=calculator, device=device).first()
        )
        if assignment is not None:
            stored = [
                {"id": i["id"], "begin": i["begin"], "end": i["end"]}
                for i in selectors.intervals_of(
                    assignments=[assignment], begin=begin, end=end, count=MAX_TIMELINE_INTERVALS
                )
            ]
    routes = [c["name"] for c in config.get("counters") or [] if c.get("type") == "route"]
    return {
        "device": device.pk,
        "begin": begin,
        "end": end,
        "intervals": list(intervals),
        "route_counters": routes,
        "stored": stored,
    }


class CalculatorForm(forms.ModelForm):
    """The whole configuration in one field (a key left out takes its default), validated by the
    engine: every problem is shown at its path and nothing is saved."""

    account = forms.ModelChoiceField(queryset=Account.objects.order_by("path"), required=False)
    configuration = ConfigurationField(
        help_text="the calculator as the API takes it (DESIGN 7.2): name, selectors, counters, validate_message, "
        "validate_interval, timezone, update_*, intervals_*, metadata; a key left out takes its default"
    )

    class Meta:
        model = Calculator
        fields: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial.setdefault("configuration", self.instance.configuration())

    def clean_account(self):
        account = self.cleaned_data.get("account")
        if self.instance.pk is not None:
            return None
        if account is None:
            raise forms.ValidationError("choose the account the calculator belongs to", code="required")
        try:
            placement.alias_for_account(account.pk)
        except DomainError as exc:
            raise forms.ValidationError(exc.reason) from None
        return account

    def clean(self):
        cleaned = super().clean()
        config = cleaned.get("configuration")
        if config is None:
            return cleaned
        what = unstorable(config)
        if what is not None:
            self.add_error("configuration", f"the configuration must not contain {what}")
            return cleaned
        try:
            cleaned["normalised"] = services.calculator_config_check(config)
        except services.CalculatorInvalid as exc:
            for problem in exc.problems:
                self.add_error("configuration", str(problem))
        return cleaned

    def _post_clean(self):
        # The model's own validation would ask the router for a database before the calculator
        # has an account; the engine validated the configuration and the services build the row.
        pass


@admin.register(Calculator)
class CalculatorAdmin(RegionalModelAdmin):
    form = CalculatorForm
    list_display = ["id", "name", "account", "version", "assignment_count", "update_onchange", "created_at"]
    list_display_links = ["id", "name"]
    search_fields = ["name"]
    ordering = ["id"]
    change_form_template = "admin/analytics/calculator/try_it.html"

    def rows(self, alias):
        return super().rows(alias).annotate(assignment_count=Count("assignments"))

    def get_urls(self):
        view = self.admin_site.admin_view(self.try_view)
        return [
            path("try/", view, name="analytics_calculator_try"),
            path("<path:object_id>/try/", view, name="analytics_calculator_try_saved"),
            *super().get_urls(),
        ]

    def try_view(self, request, object_id=None):
        """``POST {"configuration", "device", "begin", "end"}``: the intervals the configuration
        gives over the device's messages, as JSON; every problem at its field and path."""
        if request.method != "POST":
            return problem_response(405, ("", "", "POST the configuration, the device and the range"))
        calculator = None
        if object_id is not None:
            calculator = self.get_object(request, unquote(object_id))
            if calculator is None:
                return problem_response(404, ("calculator", "", f"no calculator {object_id}"))
        if not (self.has_add_permission(request) or self.has_change_permission(request, calculator)):
            return problem_response(403, ("", "", "you may not try calculators"))
        try:
            body = json.loads(request.body, parse_constant=_refuse_constant)
        except ValueError as exc:
            return problem_response(400, ("", "", f"not valid JSON: {exc}"))
        try:
            return json_response(calculator_try(body=body, calculator=calculator))
        except TryRefused as exc:
            return problem_response(exc.status, *exc.problems)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        devices = []
        if obj is not None:
            devices = [
                {"id": device.pk, "name": device.name}
                for device in Device.objects.using(obj.database)
                .filter(account_id=obj.account_id)
                .order_by("id")[:200]
            ]
        context["try_it"] = {
            "url": reverse("admin:analytics_calculator_try_saved", args=[obj.pk])
            if obj is not None
            else reverse("admin:analytics_calculator_try"),
            "devices": devices,
        }
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": ["account", "configuration"]})]
        return [
            (None, {"fields": ["id", "account", "datacenter", "version", "created_at", "assignments"]}),
            ("Configuration", {"fields": ["configuration"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["id", "account", "datacenter", "version", "created_at", "assignments"]

    @admin.display(description="assignments", ordering="assignment_count")
    def assignment_count(self, obj: Calculator) -> int:
        return obj.assignment_count  # type: ignore[attr-defined]

    @admin.display(description="created")
    def created_at(self, obj: Calculator) -> str:
        return as_utc(obj.created)

    @admin.display(description="assignments")
    def assignments(self, obj: Calculator):
        url = reverse("admin:analytics_assignment_changelist")
        code = datacenter_code(obj.database)
        return format_html(
            '<a href="{}?datacenter={}&calculator__id__exact={}">{} assigned devices</a>',
            url,
            code,
            obj.pk,
            obj.assignment_count,  # type: ignore[attr-defined]
        )

    def save_model(self, request, obj, form, change):
        config = form.cleaned_data["normalised"]
        if change:
            saved = services.calculator_update(calculator=obj, data=config)
        else:
            saved = services.calculator_create(account=form.cleaned_data["account"], config=config)
        obj.__dict__.update(saved.__dict__)

    def save_related(self, request, form, formsets, change):
        pass  # a calculator has no many-to-many fields; Django's would save through the ORM

    def delete_rows(self, rows: Iterable[Calculator]) -> None:
        for calculator in rows:
            services.calculator_delete(calculator=calculator)

    def deleted_extra(self, rows: list) -> dict[str, int]:
        assignments = list(
            Assignment.objects.using(rows[0].database).filter(calculator_id__in=[r.pk for r in rows])
        )
        return {
            "intervals": sum(n for n, _newest in selectors.interval_counts(assignments=assignments).values())
        }


class AssignmentForm(forms.ModelForm):
    class Meta:
        model = Assignment
        fields = ["enabled"]


@admin.register(Assignment)
class AssignmentAdmin(RegionalModelAdmin):
    form = AssignmentForm
    list_display = [
        "id",
        "calculator_link",
        "device_link",
        "account",
        "enabled",
        "synced",
        "state",
        "calc_version",
        "interval_count",
        "newest_interval",
        "intervals_link",
    ]
    list_display_links = ["id"]
    list_filter = ["enabled", "state"]
    list_select_related = ["calculator", "device"]
    ordering = ["calculator_id", "device_id"]
    actions = ["enable", "disable"]
    readonly_fields = [
        "calculator_link",
        "device_link",
        "account",
        "shard",
        "synced",
        "state",
        "calc_version",
        "pending",
        "calculated_at",
        "created_at",
        "interval_count",
        "newest_interval",
        "intervals_link",
    ]
    fields = ["enabled", *readonly_fields]
    change_form_template = "admin/analytics/assignment/pictures.html"
    change_list_template = "admin/analytics/assignment/change_list_fleet.html"

    def rows(self, alias):
        return super().rows(alias).select_related("calculator", "device")

    def has_add_permission(self, request):
        return False  # a calculator takes devices of its own account: assign over the API

    def annotate_page(self, rows: list) -> None:
        super().annotate_page(rows)
        counts = selectors.interval_counts(assignments=rows)
        for row in rows:
            row.interval_count, row.newest_end = counts.get((row.calculator_id, row.device_id), (0, None))

    def _counts(self, obj: Assignment) -> tuple[int, float | None]:
        if not hasattr(obj, "interval_count"):
            obj.interval_count, obj.newest_end = selectors.interval_counts(assignments=[obj]).get(  # type: ignore[attr-defined]
                (obj.calculator_id, obj.device_id), (0, None)
            )
        return obj.interval_count, obj.newest_end  # type: ignore[attr-defined]

    @admin.display(description="calculator", ordering="calculator_id")
    def calculator_link(self, obj: Assignment):
        url = reverse("admin:analytics_calculator_change", args=[obj.calculator_id])
        return format_html('<a href="{}">{}</a>', url, obj.calculator)

    @admin.display(description="device", ordering="device_id")
    def device_link(self, obj: Assignment):
        url = reverse("admin:devices_device_change", args=[obj.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.device)

    @admin.display(description="synced", boolean=True)
    def synced(self, obj: Assignment) -> bool:
        return obj.synced

    @admin.display(description="intervals")
    def interval_count(self, obj: Assignment) -> int:
        return self._counts(obj)[0]

    @admin.display(description="newest interval ends")
    def newest_interval(self, obj: Assignment) -> str:
        return as_utc(self._counts(obj)[1])

    @admin.display(description="")
    def intervals_link(self, obj: Assignment):
        url = reverse("admin:analytics_assignment_intervals", args=[obj.pk])
        return format_html('<a href="{}">intervals</a>', url)

    @admin.display(description="recalculation requested")
    def pending(self, obj: Assignment) -> str:
        if obj.pending_begin is None:
            return "—"
        return f"{as_utc(obj.pending_begin)} .. {as_utc(obj.pending_end)}"

    @admin.display(description="last recalculation stored")
    def calculated_at(self, obj: Assignment) -> str:
        return as_utc(obj.calculated)

    @admin.display(description="created")
    def created_at(self, obj: Assignment) -> str:
        return as_utc(obj.created)

    def save_model(self, request, obj, form, change):
        saved = services.assignment_update(assignment=obj, enabled=form.cleaned_data["enabled"])
        obj.__dict__.update(saved.__dict__)

    def save_related(self, request, form, formsets, change):
        pass

    def delete_rows(self, rows: Iterable[Assignment]) -> None:
        for assignment in rows:
            services.assignment_delete(assignment=assignment)

    def deleted_extra(self, rows: list) -> dict[str, int]:
        return {"intervals": sum(n for n, _newest in selectors.interval_counts(assignments=rows).values())}

    def _set_enabled(self, request, queryset, enabled: bool) -> None:
        changed = 0
        for assignment in queryset:
            try:
                services.assignment_update(assignment=assignment, enabled=enabled)
            except DomainError as exc:
                self.message_user(request, exc.reason, messages.WARNING)
                continue
            changed += 1
        self.message_user(
            request, f"{'enabled' if enabled else 'disabled'} {changed} assignments", messages.SUCCESS
        )

    @admin.action(
        description="Enable selected assignments (recalculates their history)", permissions=["change"]
    )
    def enable(self, request, queryset):
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected assignments", permissions=["change"])
    def disable(self, request, queryset):
        self._set_enabled(request, queryset, False)

    # --- the intervals of one assignment --------------------------------------------------

    def get_urls(self):
        site = self.admin_site
        return [
            path("fleet/", site.admin_view(self.fleet_view), name="analytics_fleet_status"),
            path(
                "<path:object_id>/intervals/",
                site.admin_view(self.intervals_view),
                name="analytics_assignment_intervals",
            ),
            path(
                "<path:object_id>/interval/<int:interval_id>/",
                site.admin_view(self.interval_view),
                name="analytics_assignment_interval",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        assignment = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        problem = None
        if assignment is not None and self.has_view_or_change_permission(request, assignment):
            newest = max(
                (
                    end
                    for _n, end in selectors.interval_counts(assignments=[assignment]).values()
                    if end is not None
                ),
                default=None,
            )
            try:
                begin, end = timeline_range(request.GET, newest=newest)
            except ValueError as exc:
                problem = str(exc)
                begin, end = timeline_range({}, newest=newest)
            context["timeline"] = {
                **device_timeline(assignment=assignment, begin=begin, end=end),
                "base": reverse("admin:analytics_assignment_changelist"),
                "selected": request.GET.get("interval"),
            }
            context["choice"] = {"from": as_utc(begin)[:10], "to": as_utc(end - DAY)[:10]}
            context["problem"] = problem
        response = super().change_view(request, object_id, form_url, context)
        if problem is not None:
            response.status_code = 400
        return response

    def fleet_view(self, request):
        """The operators' page: per region its shards and workers, per datacenter its
        assignments by state and outbox backlog (``analytics.fleet.status``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from analytics.fleet import status

        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Fleet status",
            "regions": status.fleet_status(),
            "states": AssignmentState.values,
        }
        return TemplateResponse(request, "admin/analytics/fleet_status.html", context)

    def interval_view(self, request, object_id, interval_id):
        """One stored interval of an assignment, with its route, as JSON (the page's map)."""
        assignment = self.get_object(request, object_id)
        if assignment is None:
            return problem_response(404, ("assignment", "", f"no assignment {object_id}"))
        if not self.has_view_or_change_permission(request, assignment):
            return problem_response(403, ("assignment", "", "you may not view this assignment"))
        found = selectors.intervals_of(assignments=[assignment], ids=[interval_id])
        if not found:
            return problem_response(
                404, ("interval", "", f"assignment {assignment.pk} has no interval {interval_id}")
            )
        return json_response(interval_picture(assignment=assignment, interval=found[0]))

    def intervals_view(self, request, object_id):
        """An assignment's stored intervals, newest first, a page at a time; ``before`` (the id
        of the last interval shown) asks for the next older page."""
        assignment = self.get_object(request, object_id)
        if assignment is None:
            raise Http404(f"no assignment {object_id}")
        if not self.has_view_or_change_permission(request, assignment):
            raise PermissionDenied
        before_text = request.GET.get("before")
        before = int(before_text) if before_text and before_text.isascii() and before_text.isdigit() else None
        # An interval's id is its begin in microseconds: the intervals before id ``before`` are
        # those that begin before it (the one at the boundary, if read, is dropped by id).
        page = selectors.intervals_of(
            assignments=[assignment],
            end=None if before is None else before / 1_000_000,
            count=INTERVALS_PER_PAGE + 2,
            reverse=True,
        )
        if before is not None:
            page = [interval for interval in page if interval["id"] < before]
        more = len(page) > INTERVALS_PER_PAGE
        page = page[:INTERVALS_PER_PAGE]
        total, _newest = self._counts(assignment)
        counters = [counter["name"] for counter in assignment.calculator.counters]
        shown = {"id", "begin", "end", "duration", "timestamp", "calc_id", "device_id", *counters}
        rows = [
            {
                "id": interval["id"],
                "begin": as_utc(interval["begin"]),
                "end": as_utc(interval["end"]),
                "duration": interval["duration"],
                "timestamp": as_utc(interval["timestamp"]),
                "counters": [interval.get(name) for name in counters],
                "other": json.dumps({k: v for k, v in interval.items() if k not in shown}, ensure_ascii=False)
                if set(interval) - shown
                else "",
            }
            for interval in page
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Intervals of {assignment}",
            "assignment": assignment,
            "counters": counters,
            "rows": rows,
            "total": total,
            "older": page[-1]["id"] if more else None,
            "paged": before is not None,
            "state_label": AssignmentState(assignment.state).label,
        }
        return TemplateResponse(request, "admin/analytics/assignment/intervals.html", context)
