"""Reads of webhooks and their delivery logs."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet

from accounts.models import Account
from webhooks import storage
from webhooks.choices import DeliveryStatus
from webhooks.models import Webhook


def webhooks_of(*, account: Account) -> QuerySet[Webhook]:
    """The account's own webhooks (a subaccount's are reached with its cid, like every entity)."""
    return Webhook.objects.filter(account=account)


def webhooks_enabled(*, region: str) -> list[tuple[Webhook, Account]]:
    """The enabled webhooks of accounts of ``region``, with their accounts."""
    rows = Webhook.objects.filter(account__region__code=region, enabled=True).select_related("account", "account__region")
    return [(webhook, webhook.account) for webhook in rows]


def delivery_log(
    *, webhooks: list[Webhook], region: str, begin: float, end: float, status: int | None, count: int,
) -> list[dict]:
    """The events of ``webhooks`` queued in [begin, end] (at most ``count``, oldest first) from
    every datacenter of the region, as the API answers them."""
    rows: list[dict] = []
    ids = [webhook.pk for webhook in webhooks]
    for dc in settings.TOPOLOGY.region(region).datacenters:
        rows.extend(storage.log_read(alias=dc.alias, webhook_ids=ids, begin=begin, end=end, status=status, count=count))
    rows.sort(key=lambda row: (row["queued"], row["id"]))
    return [
        {
            "id": row["id"],
            "webhook_id": row["webhook_id"],
            "topic": row["topic"],
            "timestamp": row["queued"],
            "status": DeliveryStatus(row["status"]).label,
            "attempts": row["attempts"],
            "first_attempt": row["first_try"],
            "last_status": row["last_status"],
            "last_error": row["last_error"] or None,
            "finished": row["done"],
            "replay_of": row["replay_of"],
        }
        for row in rows[:count]
    ]
