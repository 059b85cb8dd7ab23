"""Retention on a held shard: intervals beyond ``intervals_ttl`` / ``intervals_rotate`` (with
their ``deleted`` events) and cached messages beyond each device's ``messages_ttl``."""

from __future__ import annotations

from collections.abc import Sequence

from accounts.placement_guard import AccountMoving
from analytics import events as event_topics
from analytics import services, storage
from analytics.engine import Diff
from analytics.fleet.held import HeldShard, fenced, placed_elsewhere
from analytics.models import Assignment
from devices.models import Device


def shard_purge(*, held: HeldShard, aliases: Sequence[str], now: float) -> int:
    """Purge the shard's assignments and cache in every datacenter of ``aliases``; returns how
    many intervals went. An assignment whose cached intervals mirror the stored ones
    (``assignment_marker``) and hold nothing to purge costs no statement; the others are purged in
    one transaction per datacenter, fenced by the shard's epoch."""
    purged = 0
    cache = held.cache
    for alias in aliases:
        assignments = list(Assignment.objects.using(alias).filter(shard=held.shard).select_related("calculator"))
        elsewhere = placed_elsewhere(alias, {assignment.account_id for assignment in assignments})
        due = []
        for assignment in assignments:
            if assignment.account_id in elsewhere:
                continue
            calculator = assignment.calculator
            key = {"calc_id": assignment.calculator_id, "device_id": assignment.device_id}
            if cache.assignment_marker(**key) == assignment.calculated and not cache.intervals_outlived(
                **key, ended_before=now - calculator.intervals_ttl, keep=calculator.intervals_rotate
            ):
                continue  # the cache mirrors what is stored: nothing to delete there
            due.append(assignment)
        if due:
            with fenced(alias, [held]):
                removed = []
                for assignment in due:
                    try:
                        gone = services.intervals_purge(assignment=assignment, calculator=assignment.calculator,
                                                        now=now)
                    except AccountMoving:
                        continue  # its move's switch holds its writes: the next purge takes it
                    if gone:
                        storage.outbox_events(
                            alias=alias,
                            events=event_topics.deleted_events(
                                calc_id=assignment.calculator_id, device_id=assignment.device_id, rows=gone
                            ),
                        )
                        removed.append((assignment, gone))
            with cache.batch():
                for assignment, gone in removed:
                    cache.intervals_apply(
                        calc_id=assignment.calculator_id,
                        device_id=assignment.device_id,
                        diff=Diff(deleted=gone),
                        marker=cache.assignment_marker(calc_id=assignment.calculator_id, device_id=assignment.device_id),
                    )
                    purged += len(gone)
        with cache.batch():
            for device in Device.objects.using(alias).filter(shard=held.shard).only("id", "messages_ttl"):
                cache.messages_expire(device_id=device.pk, before=now - device.messages_ttl)
    return purged
