"""The admin of assignments: the list with interval counts, enabling and disabling, an
assignment's page with the timeline of its device (``analytics.admin.pictures``), the page of its
stored intervals (``analytics.admin.intervals``), and the fleet status page."""

from __future__ import annotations

from collections.abc import Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts.regional_admin import RegionalModelAdmin, as_utc
from analytics import selectors, services
from analytics.admin import intervals
from analytics.admin.common import DAY, json_endpoint
from analytics.admin.pictures import device_timeline, interval_picture, timeline_range
from analytics.choices import AssignmentState
from analytics.fleet import status
from analytics.models import Assignment
from flespi_site.errors import DomainError, NotAllowed, NotFound


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
        # As the API's unassign: one that only groups hold stays (a group would bring it back);
        # the others go, and the refusals are the answer.
        refused = []
        for assignment in rows:
            try:
                services.assignment_delete(assignment=assignment)
            except DomainError as exc:
                refused.append(exc.reason)
        if refused:
            raise PermissionDenied("; ".join(refused))

    def deleted_extra(self, rows: list) -> dict[str, int]:
        return {
            "intervals": sum(count for count, _newest in selectors.interval_counts(assignments=rows).values())
        }

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

    # --- an assignment's pages ------------------------------------------------------------

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
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Fleet status",
            "regions": status.fleet_status(),
            "states": AssignmentState.values,
        }
        return TemplateResponse(request, "admin/analytics/fleet_status.html", context)

    @json_endpoint
    def interval_view(self, request, object_id, interval_id) -> dict:
        """One stored interval of an assignment, with its route, as JSON (the page's map)."""
        assignment = self.get_object(request, object_id)
        if assignment is None:
            raise NotFound(f"no assignment {object_id}", field="assignment")
        if not self.has_view_or_change_permission(request, assignment):
            raise NotAllowed("you may not view this assignment", field="assignment")
        found = selectors.intervals_of(assignments=[assignment], ids=[interval_id])
        if not found:
            raise NotFound(f"assignment {assignment.pk} has no interval {interval_id}", field="interval")
        return interval_picture(assignment=assignment, interval=found[0])

    def intervals_view(self, request, object_id):
        """An assignment's stored intervals, newest first, a page at a time; ``before`` (the id
        of the last interval shown) asks for the next older page."""
        assignment = self.get_object(request, object_id)
        if assignment is None:
            raise Http404(f"no assignment {object_id}")
        if not self.has_view_or_change_permission(request, assignment):
            raise PermissionDenied
        before = intervals.before_of(request.GET.get("before"))
        total, _newest = self._counts(assignment)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Intervals of {assignment}",
            "assignment": assignment,
            **intervals.intervals_page(assignment=assignment, before=before),
            "total": total,
            "paged": before is not None,
            "state_label": AssignmentState(assignment.state).label,
        }
        return TemplateResponse(request, "admin/analytics/assignment/intervals.html", context)
