"""Devices (regional) and the control-database index of their idents.

Messages, telemetry and the outbox are plain tables created by migrations (see
docs/messages.md): they are written with COPY and set-based SQL, never through the ORM.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models

from accounts.regional_model import RegionalModel
from devices.constants import DEFAULT_MESSAGES_TTL


class Device(RegionalModel):
    """A tracked asset receiving messages. ``shard`` (a stable hash of the id, fixed at creation)
    names the calculation shard whose worker handles the device."""

    name = models.CharField(max_length=255, blank=True, default="")
    ident = models.CharField(max_length=255)
    configuration = models.JSONField(default=dict)
    enabled = models.BooleanField(default=True)
    messages_ttl = models.BigIntegerField(default=DEFAULT_MESSAGES_TTL)
    # Bytes of stored messages kept; older ones are deleted past it by the purge (0: no limit).
    messages_rotate = models.BigIntegerField(default=0)
    # flespi's device type and media settings: stored and answered; the platform has no protocol
    # to pick by type and stores no media (docs/api.md, "flespi compatibility").
    device_type_id = models.BigIntegerField(null=True, blank=True)
    media_ttl = models.BigIntegerField(null=True, blank=True)
    media_rotate = models.BigIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    shard = models.PositiveSmallIntegerField()
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(messages_ttl__gt=0), name="device_messages_ttl_positive"),
            models.CheckConstraint(condition=models.Q(messages_rotate__gte=0), name="device_messages_rotate_not_negative"),
            models.CheckConstraint(
                condition=models.Q(device_type_id__isnull=True) | models.Q(device_type_id__gt=0),
                name="device_type_id_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(media_ttl__isnull=True) | models.Q(media_ttl__gt=0), name="device_media_ttl_positive"
            ),
            models.CheckConstraint(condition=models.Q(media_rotate__gte=0), name="device_media_rotate_not_negative"),
        ]
        indexes = [models.Index(fields=["ident"], name="device_ident_idx")]

    def __str__(self) -> str:
        return f"{self.name or 'device'} #{self.pk} ({self.ident})"


class Group(RegionalModel):
    """A named set of devices of one account: its explicit members (``GroupDevice``) or, when
    ``selector`` is set, every device of the account that the stored device selector selects
    (the grammar of ``/gw/devices/{selector}``, evaluated when asked, never stored per device).
    A group with a selector has no explicit members (``devices.services``)."""

    name = models.CharField(max_length=255)
    metadata = models.JSONField(default=dict, blank=True)
    # null: membership is the explicit member list.
    selector = models.TextField(null=True, blank=True)  # noqa: DJ001
    # A condition the selector implies (``devices.selectors.selector_hint``): a device's field
    # (``name``, or the text at ``hint_path`` in ``metadata`` or ``configuration``) equal to
    # ``hint_value``, or starting with it (``hint_prefix``). Finding the groups a device may join
    # is then one comparison per group in SQL; only those are evaluated in full. null: the
    # selector implies none.
    hint_field = models.CharField(max_length=16, null=True, blank=True)  # noqa: DJ001
    hint_path = ArrayField(models.TextField(), null=True, blank=True)
    hint_value = models.TextField(null=True, blank=True)  # noqa: DJ001
    hint_prefix = models.BooleanField(default=False)
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(selector__isnull=True) | ~models.Q(selector=""), name="group_selector_not_empty"
            ),
            models.CheckConstraint(
                condition=models.Q(hint_field__isnull=True) | models.Q(selector__isnull=False, hint_value__isnull=False),
                name="group_hint_of_selector",
            ),
        ]
        indexes = [models.Index(fields=["account_id", "selector"], name="group_account_selector_idx")]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"


class GroupDevice(RegionalModel):
    """An explicit member of a group: a device of the group's account."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="members")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["group_id", "device_id"]
        constraints = [models.UniqueConstraint(fields=["group", "device"], name="group_device_unique")]
        indexes = [models.Index(fields=["device"], name="group_device_device_idx")]

    def __str__(self) -> str:
        return f"group {self.group_id} / device {self.device_id}"


class DeviceIdent(models.Model):
    """Control-database index: an ident is unique within a region across all its datacenters,
    and MQTT ingestion finds a device (and its datacenter) by ident here."""

    region = models.CharField(max_length=32)
    ident = models.CharField(max_length=255)
    device_id = models.BigIntegerField(unique=True)
    account_id = models.BigIntegerField(db_index=True)

    class Meta:
        ordering = ["region", "ident"]
        constraints = [models.UniqueConstraint(fields=["region", "ident"], name="device_ident_unique_in_region")]

    def __str__(self) -> str:
        return f"{self.region}:{self.ident} -> {self.device_id}"
