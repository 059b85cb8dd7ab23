"""The admin of calculators: the list, and the form that edits a calculator as one JSON object
validated by the engine (docs/admin.md, "The calculator form"), with "try it" below it
(``analytics.admin.try_it``)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Count
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from rest_framework.exceptions import MethodNotAllowed

from accounts import placement
from accounts.models import Account
from accounts.regional_admin import RegionalModelAdmin, as_utc, datacenter_code
from analytics import selectors, services
from analytics.admin.common import configuration_from_text, json_endpoint
from analytics.admin.try_it import calculator_try
from analytics.models import Assignment, Calculator
from devices.models import Device
from flespi_site.api.parsers import loads_strict
from flespi_site.errors import DomainError, NotAllowed, NotFound
from flespi_site.jsontext import unstorable


class ConfigurationField(forms.JSONField):
    """A calculator configuration as one JSON object, shown indented; a parse error says where."""

    widget = forms.Textarea(
        attrs={"rows": 30, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"}
    )

    def to_python(self, value):
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        try:
            return configuration_from_text(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc), code="invalid") from None

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

    @json_endpoint
    def try_view(self, request, object_id=None) -> dict:
        """``POST {"configuration", "device", "begin", "end"}``: the intervals the configuration
        gives over the device's messages (``analytics.admin.try_it``); every problem at its
        field and path."""
        if request.method != "POST":
            raise MethodNotAllowed(request.method, detail="POST the configuration, the device and the range")
        calculator = None
        if object_id is not None:
            calculator = self.get_object(request, unquote(object_id))
            if calculator is None:
                raise NotFound(f"no calculator {object_id}", field="calculator")
        if not (self.has_add_permission(request) or self.has_change_permission(request, calculator)):
            raise NotAllowed("you may not try calculators")
        return calculator_try(data=loads_strict(request.body), calculator=calculator)

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
            (None, {"fields": ["id", "account", "datacenter", "version", "created_at", "assignments", "geofences"]}),
            ("Configuration", {"fields": ["configuration"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["id", "account", "datacenter", "version", "created_at", "assignments", "geofences"]

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

    @admin.display(description="geofences")
    def geofences(self, obj: Calculator):
        """The geofences assigned to the calculator, in the order its expressions check them."""
        zones = sorted(selectors.geofences_of_calculator(calculator=obj), key=lambda zone: (-zone.priority, zone.pk))
        if not zones:
            return "none"
        code = datacenter_code(obj.database)
        return format_html_join(
            ", ", '<a class="assigned-geofence" href="{}?datacenter={}">{}</a>{}',
            ((reverse("admin:analytics_geofence_change", args=[zone.pk]), code, str(zone),
              f" (priority {zone.priority})" if zone.enabled else " (disabled)") for zone in zones),
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
            Assignment.objects.using(rows[0].database).filter(
                calculator_id__in=[calculator.pk for calculator in rows]
            )
        )
        return {
            "intervals": sum(
                count for count, _newest in selectors.interval_counts(assignments=assignments).values()
            )
        }
