"""Retention on a held shard: intervals beyond ``intervals_ttl`` / ``intervals_rotate`` (with
their ``deleted`` events) and cached messages beyond each device's ``messages_ttl``."""

from __future__ import annotations

from collections.abc import Sequence

from analytics import events as event_topics
from analytics import services, storage
from analytics.engine import Diff
from analytics.fleet.held import HeldShard, fenced, placed_elsewhere
from analytics.models import Assignment
from devices.models import Device


def shard_purge(*, held: HeldShard, aliases: Sequence[str], now: float) -> int:
    """Purge the shard's assignments and cache in every datacenter of ``aliases``; returns how
    many intervals went."""
    purged = 0
    for alias in aliases:
        assignments = list(
            Assignment.objects.using(alias).filter(shard=held.shard).select_related("calculator", "device")
        )
        for assignment in assignments:
            if placed_elsewhere(alias, [assignment.account_id]):
                continue
            with fenced(alias, [held]):
                gone = services.intervals_purge(assignment=assignment, calculator=assignment.calculator, now=now)
                if gone:
                    storage.outbox_events(
                        alias=alias,
                        events=event_topics.deleted_events(
                            calc_id=assignment.calculator_id, device_id=assignment.device_id, rows=gone
                        ),
                    )
            if gone:
                held.cache.intervals_apply(
                    calc_id=assignment.calculator_id,
                    device_id=assignment.device_id,
                    diff=Diff(deleted=gone),
                    marker=held.cache.assignment_marker(
                        calc_id=assignment.calculator_id, device_id=assignment.device_id
                    ),
                )
                purged += len(gone)
        for device in Device.objects.using(alias).filter(shard=held.shard).only("id", "messages_ttl"):
            held.cache.messages_expire(device_id=device.pk, before=now - device.messages_ttl)
    return purged
