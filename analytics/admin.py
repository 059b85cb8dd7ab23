"""Admin of calculators, assignments and stored intervals (docs/admin.md).

Every write goes through ``analytics.services``; the pages read one datacenter database at a
time (``accounts.regional_admin``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts import placement
from accounts.models import Account
from accounts.regional_admin import RegionalModelAdmin, as_utc, datacenter_code
from analytics import selectors, services
from analytics.choices import AssignmentState
from analytics.models import Assignment, Calculator
from flespi_site.errors import DomainError
from flespi_site.jsontext import unstorable

INTERVALS_PER_PAGE = 100


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

    def rows(self, alias):
        return super().rows(alias).annotate(assignment_count=Count("assignments"))

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
        view = self.admin_site.admin_view(self.intervals_view)
        return [
            path("<path:object_id>/intervals/", view, name="analytics_assignment_intervals"),
            *super().get_urls(),
        ]

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
