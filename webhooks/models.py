"""Webhooks (control database): what an account's events trigger. Their delivery logs are in the
datacenter databases, next to the outbox that feeds them (``webhooks.storage``)."""

from __future__ import annotations

import time

from django.db import models

from accounts.models import Account
from webhooks.constants import DEFAULT_RETRY_SECONDS, DEFAULT_TIMEOUT, MAX_RETRY_SECONDS, MAX_TIMEOUT


class Webhook(models.Model):
    """An HTTP request made for every event of the account's subtree whose topic matches one of
    ``triggers`` (``[{"topic": <MQTT filter>}]``), as ``configuration`` describes it (flespi's
    ``{"type": "custom-server", "uri", "method", "headers": [{"name", "value"}], "body"}``, the
    URI, header values and body being templates, ``webhooks.templates``). Signed with ``secret``;
    an event still failing ``retry_seconds`` after its first attempt is dropped."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=255)
    triggers = models.JSONField()
    configuration = models.JSONField()
    enabled = models.BooleanField(default=True)
    secret = models.CharField(max_length=128)
    retry_seconds = models.PositiveIntegerField(default=DEFAULT_RETRY_SECONDS)
    timeout = models.PositiveSmallIntegerField(default=DEFAULT_TIMEOUT, help_text="seconds per request")
    created = models.FloatField(default=time.time, help_text="unix time")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(retry_seconds__lte=MAX_RETRY_SECONDS),
                                   name="webhook_retry_seconds_range"),
            models.CheckConstraint(condition=models.Q(timeout__gte=1, timeout__lte=MAX_TIMEOUT),
                                   name="webhook_timeout_range"),
        ]

    def __str__(self) -> str:
        return f"webhook {self.name} (#{self.pk}) of account {self.account_id}"
