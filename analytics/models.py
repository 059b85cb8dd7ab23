"""Calculators and assignments (regional), and where their intervals are stored.

Intervals are a plain partitioned table created by a migration (``intervals``; docs/analytics.md,
"Interval storage"): they are written with set-based SQL by ``analytics.storage``, never through
the ORM, because an assignment holds years of them and a recalculation writes many at once.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models

from accounts.regional_model import RegionalModel
from analytics.choices import AssignmentState
from devices.models import Device, Group


def device_source() -> dict:
    """The ``messages_source`` of a calculator reading its device's own messages."""
    return {"source": "device"}


class Calculator(RegionalModel):
    """How to cut a device's message stream into intervals (DESIGN 7.2). The configuration is
    stored normalised (every default filled in); ``version`` grows by one whenever a field that
    changes the computed intervals changes (``analytics.constants.RESULT_FIELDS``)."""

    name = models.CharField(max_length=255)
    # {"source": "device"}, or {"source": "calculator", "calculator_id": N}: calculator N's
    # intervals of the device are the messages (docs/analytics.md, "Calculator chaining").
    messages_source = models.JSONField(default=device_source)
    selectors = models.JSONField()
    counters = models.JSONField(default=list)
    # null is the engine's "no expression" (an empty string would be one that does not parse).
    validate_message = models.TextField(null=True, blank=True)  # noqa: DJ001
    validate_interval = models.TextField(null=True, blank=True)  # noqa: DJ001
    timezone = models.CharField(max_length=64, default="UTC")
    update_delay = models.BigIntegerField(default=30)
    update_period = models.BigIntegerField(default=31536000)
    update_onchange = models.BooleanField(default=True)
    intervals_ttl = models.BigIntegerField(default=31536000)
    intervals_rotate = models.BigIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField(default=1)
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(update_delay__gte=0), name="calculator_update_delay_nonnegative"),
            models.CheckConstraint(condition=models.Q(update_period__gt=0), name="calculator_update_period_positive"),
            models.CheckConstraint(condition=models.Q(intervals_ttl__gt=0), name="calculator_intervals_ttl_positive"),
            models.CheckConstraint(
                condition=models.Q(intervals_rotate__gte=0), name="calculator_intervals_rotate_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"

    def configuration(self) -> dict:
        """The configuration as the engine takes it (and the API shows it)."""
        return {
            "name": self.name,
            "messages_source": self.messages_source,
            "selectors": self.selectors,
            "counters": self.counters,
            "validate_message": self.validate_message,
            "validate_interval": self.validate_interval,
            "timezone": self.timezone,
            "update_delay": self.update_delay,
            "update_period": self.update_period,
            "update_onchange": self.update_onchange,
            "intervals_ttl": self.intervals_ttl,
            "intervals_rotate": self.intervals_rotate,
            "metadata": self.metadata,
        }


class CalculatorSource(RegionalModel):
    """A calculator chaining another of the same account: ``calculator`` reads ``source``'s
    intervals of each device (a ``calc`` selector, a ``calculator`` counter, its
    ``messages_source``; docs/analytics.md, "Calculator chaining"). Kept in step with the
    configuration by ``calculator_create``/``calculator_update``, which refuse a cycle; a stored
    change of a source's intervals makes its dependents' assignments of the device recalculate
    that range. A calculator that others chain is not deleted (``PROTECT``, and a 409 first)."""

    calculator = models.ForeignKey(Calculator, on_delete=models.CASCADE, related_name="source_links")
    source = models.ForeignKey(Calculator, on_delete=models.PROTECT, related_name="dependent_links")
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["calculator_id", "source_id"]
        constraints = [
            models.UniqueConstraint(fields=["calculator", "source"], name="calculator_source_unique"),
            models.CheckConstraint(condition=~models.Q(calculator=models.F("source")), name="calculator_source_not_self"),
        ]
        indexes = [models.Index(fields=["source"], name="calculator_source_source_idx")]

    def __str__(self) -> str:
        return f"calculator {self.calculator_id} chains {self.source_id}"


class Assignment(RegionalModel):
    """A device assigned to a calculator of the same account: its intervals are computed and
    kept current in the background by the worker of the device's ``shard``.

    ``calc_version`` is the calculator version the stored intervals were computed with;
    ``pending_begin``/``pending_end`` is a durable request to recalculate that range (a calculator
    change, the recalculate endpoint, enabling, a device metadata or user field change): the
    fleet's reconciliation picks it up even when its fast path (the debounce timers in Redis) lost
    it. ``active_id`` is the id of the open interval, if any; ``calculated`` the wall time of the
    last stored change of its intervals (a recalculation, a user field merge), which a worker's
    cached copy of them is marked with.

    ``interval_names`` holds every counter and user-field name any of its stored intervals has
    had, sorted in byte order; it never shrinks (a deleted interval's names stay). The writers of intervals add
    to it in their transaction (``analytics.calculation.runs_store``,
    ``analytics.storage.intervals_user_merge``), so that a CSV export knows without reading the
    rows whether they hold a name beyond the calculator's counters (docs/api.md, "Exports").
    Writers union into it in SQL; a ``save()`` of a loaded row would write back the names it
    read, and no code saves a loaded assignment whole.
    """

    calculator = models.ForeignKey(Calculator, on_delete=models.CASCADE, related_name="assignments")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    shard = models.PositiveSmallIntegerField()
    enabled = models.BooleanField(default=True)
    state = models.CharField(max_length=16, choices=AssignmentState.choices, default=AssignmentState.UNSYNCED)
    calc_version = models.PositiveIntegerField(default=0)
    pending_begin = models.FloatField(null=True, blank=True)
    pending_end = models.FloatField(null=True, blank=True)
    active_id = models.BigIntegerField(null=True, blank=True)
    calculated = models.FloatField(null=True, blank=True, help_text="unix time of the last stored recalculation")
    created = models.FloatField(help_text="unix time")
    # Whether a hand-made assignment (POST /gw/calcs/{c}/devices/{d}) holds it; the groups the
    # calculator is assigned to hold it too while the device is a member of one of them
    # (``GroupAssignment``). It exists while either holds; the API shows ``auto_created`` when
    # only groups do.
    by_hand = models.BooleanField(default=True)
    # The database fills it on insert (raw INSERTs too) and returns it.
    interval_names = ArrayField(models.TextField(), db_default=[], editable=False)

    class Meta:
        ordering = ["calculator_id", "device_id"]
        constraints = [
            models.UniqueConstraint(fields=["calculator", "device"], name="assignment_unique_per_device"),
            models.CheckConstraint(
                condition=models.Q(pending_begin__isnull=True, pending_end__isnull=True)
                | models.Q(pending_begin__isnull=False, pending_end__isnull=False, pending_begin__lte=models.F("pending_end")),
                name="assignment_pending_range",
            ),
        ]
        indexes = [models.Index(fields=["shard", "enabled"], name="assignment_shard_idx")]

    def __str__(self) -> str:
        return f"calculator {self.calculator_id} / device {self.device_id}"

    @property
    def synced(self) -> bool:
        return self.state == AssignmentState.SYNCED


class Geofence(RegionalModel):
    """A shared zone of an account (a circle, polygon or corridor): assigned to calculators, whose
    expressions and geofence selectors see it (docs/analytics.md, "Geofences"). ``geometry`` is
    stored validated and normalised (``analytics.engine.geofence_geometry_check``)."""

    name = models.CharField(max_length=255)
    enabled = models.BooleanField(default=True)
    priority = models.PositiveSmallIntegerField(default=0, help_text="0..100; higher is checked first")
    geometry = models.JSONField()
    metadata = models.JSONField(default=dict, blank=True)
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(priority__lte=100), name="geofence_priority_range"),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"


class CalculatorGeofence(RegionalModel):
    """A geofence assigned to a calculator of the same account."""

    calculator = models.ForeignKey(Calculator, on_delete=models.CASCADE, related_name="geofence_links")
    geofence = models.ForeignKey(Geofence, on_delete=models.CASCADE, related_name="calculator_links")
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["calculator_id", "geofence_id"]
        constraints = [
            models.UniqueConstraint(fields=["calculator", "geofence"], name="calculator_geofence_unique"),
        ]

    def __str__(self) -> str:
        return f"calculator {self.calculator_id} / geofence {self.geofence_id}"


class GroupAssignment(RegionalModel):
    """A calculator assigned to a group of devices of the same account: every current and future
    member of the group is assigned to the calculator (an ``Assignment`` held by the group), and
    a device leaving the group is unassigned unless something else still holds its assignment
    (``analytics.services.auto_assignments_follow``)."""

    calculator = models.ForeignKey(Calculator, on_delete=models.CASCADE, related_name="group_assignments")
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="+")
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["calculator_id", "group_id"]
        constraints = [models.UniqueConstraint(fields=["calculator", "group"], name="group_assignment_unique")]
        indexes = [models.Index(fields=["group"], name="group_assignment_group_idx")]

    def __str__(self) -> str:
        return f"calculator {self.calculator_id} / group {self.group_id}"
