"""The admin of regional models: one datacenter database at a time (docs/admin.md).

Django's admin assumes that a model lives in one database: it asks the router for it with no row
at hand (the changelist, the transaction around a form's POST, the "deleted objects" summary),
which the placement router refuses for a regional model. ``RegionalModelAdmin`` names the database
everywhere instead: the changelist shows the datacenter chosen by its ``datacenter`` filter (the
first served one by default), a change or delete page finds its row in whichever served datacenter
holds it, and writes go through the services, which open their transactions on the row's database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters, csrf_protect_m
from django.contrib.admin.utils import NestedObjects
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import capfirst

from accounts.models import Account
from flespi_site.errors import DomainError
from regions.datacenters import datacenter_of_id
from regions.selectors import served_datacenters

DATACENTER_PARAM = "datacenter"


def admin_datacenters() -> list[tuple[str, str]]:
    """(code, database alias) of every datacenter this process serves and has a database for, in
    the order of the configuration."""
    return [(dc.code, dc.alias) for _region, dc in served_datacenters() if dc.alias in settings.DATABASES]


def datacenter_code(alias: str) -> str:
    return next(dc.code for dc in settings.TOPOLOGY.datacenters if dc.alias == alias)


class DatacenterFilter(admin.SimpleListFilter):
    """Which datacenter database the changelist shows; there is no "all" (docs/admin.md)."""

    title = "datacenter"
    parameter_name = DATACENTER_PARAM

    def lookups(self, request, model_admin):
        return [(code, code) for code, _alias in admin_datacenters()]

    def choices(self, changelist):
        current = self.value() or next((code for code, _title in self.lookup_choices), None)
        for code, title in self.lookup_choices:
            yield {
                "selected": code == current,
                "query_string": changelist.get_query_string({self.parameter_name: code}),
                "display": title,
            }

    def queryset(self, request, queryset):
        return queryset  # ``RegionalModelAdmin.get_queryset`` already runs on the chosen database


class RegionalChangeList(ChangeList):
    """A changelist whose page of rows the admin completes with reads of other tables (account
    names, interval counts): one query per page, whatever its length."""

    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        self.model_admin.annotate_page(self.result_list)


class RegionalModelAdmin(admin.ModelAdmin):
    """Base of the admin of a ``RegionalModel``: the rows of one served datacenter per changelist,
    rows found by id in any served datacenter, deletions through ``delete_rows``."""

    list_per_page = 50

    # --- where the rows are ---------------------------------------------------------------

    def datacenter_alias(self, request) -> str:
        served = dict(admin_datacenters())
        if not served:
            raise IncorrectLookupParameters("this server serves no datacenter with a configured database")
        code = request.GET.get(DATACENTER_PARAM)
        if code is None:
            return next(iter(served.values()))
        if code not in served:
            raise IncorrectLookupParameters(f"datacenter {code!r} is not served here")
        return served[code]

    def rows(self, alias: str) -> QuerySet:
        """The model's rows in the database ``alias``, joined to what its pages show."""
        return self.model._default_manager.using(alias)

    def get_queryset(self, request):
        queryset = self.rows(self.datacenter_alias(request))
        ordering = self.get_ordering(request)
        return queryset.order_by(*ordering) if ordering else queryset

    def get_list_filter(self, request):
        return [DatacenterFilter, *super().get_list_filter(request)]

    def get_changelist(self, request, **kwargs):
        return RegionalChangeList

    def get_object(self, request, object_id, from_field=None):
        field = self.model._meta.pk if from_field is None else self.model._meta.get_field(from_field)
        try:
            value = field.to_python(object_id)
        except ValidationError:
            return None
        aliases = [alias for _code, alias in admin_datacenters()]
        if from_field is None and isinstance(value, int):
            # An id names the datacenter it was created in, where the row usually still is.
            created_in = datacenter_of_id(value)
            numbers = {dc.alias: dc.number for dc in settings.TOPOLOGY.datacenters}
            aliases.sort(key=lambda alias: numbers[alias] != created_in)
        for alias in aliases:
            obj = self.rows(alias).filter(**{field.name: value}).first()
            if obj is not None:
                return obj
        return None

    def annotate_page(self, rows: list) -> None:
        """Complete a changelist page; by default with the names of the rows' accounts."""
        names = dict(
            Account.objects.filter(pk__in={row.account_id for row in rows}).values_list("pk", "name")
        )
        for row in rows:
            row.account_name = names.get(row.account_id)

    @admin.display(description="datacenter")
    def datacenter(self, obj) -> str:
        return datacenter_code(obj._state.db)

    @admin.display(description="account", ordering="account_id")
    def account(self, obj) -> str:
        name = getattr(obj, "account_name", None)
        if name is None:  # a change page, not a changelist page
            name = Account.objects.filter(pk=obj.account_id).values_list("name", flat=True).first()
        url = reverse("admin:accounts_account_change", args=[obj.account_id])
        return format_html('<a href="{}">{} #{}</a>', url, name or "account", obj.account_id)

    # --- writes ---------------------------------------------------------------------------

    @csrf_protect_m
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Django runs a POST in a transaction on ``router.db_for_write(model)``, which a regional
        # model has none of; the services open theirs on the row's database. A row that changed
        # or went away between the form's checks and the service's write is a message, not a 500.
        try:
            return self._changeform_view(request, object_id, form_url, extra_context)
        except DomainError as exc:
            self.message_user(request, exc.reason, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    @csrf_protect_m
    def delete_view(self, request, object_id, extra_context=None):
        try:
            return self._delete_view(request, object_id, extra_context)
        except DomainError as exc:
            self.message_user(request, exc.reason, messages.ERROR)
            return HttpResponseRedirect(
                reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
            )

    def delete_rows(self, rows: Iterable[Any]) -> None:
        raise NotImplementedError

    def delete_model(self, request, obj):
        self.delete_rows([obj])

    def delete_queryset(self, request, queryset):
        self.delete_rows(list(queryset))

    def deleted_extra(self, rows: list) -> dict[str, int]:
        """What a deletion of ``rows`` removes outside the ORM, by name: counts for the summary."""
        return {}

    def get_deleted_objects(self, objs, request):
        # Django's version asks the router for the database; the rows know theirs.
        rows = list(objs)
        if not rows:
            return [], {}, set(), []
        collector = NestedObjects(using=rows[0]._state.db, origin=rows)
        collector.collect(rows)
        perms_needed: set[str] = set()

        def describe(obj) -> str:
            model_admin = self.admin_site._registry.get(type(obj))
            if model_admin is not None and not model_admin.has_delete_permission(request, obj):
                perms_needed.add(str(obj._meta.verbose_name))
            return f"{capfirst(obj._meta.verbose_name)}: {obj}"

        to_delete = collector.nested(describe)
        counts = {
            str(model._meta.verbose_name_plural): len(found) for model, found in collector.model_objs.items()
        }
        counts.update(self.deleted_extra(rows))
        return to_delete, counts, perms_needed, [describe(obj) for obj in collector.protected]


def as_utc(seconds: float | None) -> str:
    """A unix time as the admin shows it (UTC, to the second)."""
    if seconds is None:
        return "—"
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def parse_utc(text: str, *, field: str) -> float:
    """A moment typed into an admin page: unix seconds, or a UTC date or date and time
    (``2019-02-18``, ``2019-02-18T07:45``, ``2019-02-18 07:45:50``); ``ValueError`` naming
    ``field`` otherwise."""
    import datetime as dt
    import math

    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{field}: {text!r} is neither unix seconds nor a UTC date and time (2019-02-18T07:45)"
            ) from None
        return moment.replace(tzinfo=dt.UTC).timestamp() if moment.tzinfo is None else moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{field}: {text!r} is not a moment (non-negative unix seconds)")
    return seconds


def utc_input(seconds: float | None) -> str:
    """A unix time as a ``datetime-local`` input's value, in UTC (``2019-02-18T07:45:50``)."""
    return "" if seconds is None else as_utc(seconds).replace(" ", "T")
