"""Devices (regional) and the control-database index of their idents.

Messages, telemetry and the outbox are plain tables created by migrations (see
docs/messages.md): they are written with COPY and set-based SQL, never through the ORM.
"""

from __future__ import annotations

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
