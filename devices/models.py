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
    metadata = models.JSONField(default=dict, blank=True)
    shard = models.PositiveSmallIntegerField()
    created = models.FloatField(help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(messages_ttl__gt=0), name="device_messages_ttl_positive"),
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
