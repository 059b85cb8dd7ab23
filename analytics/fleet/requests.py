"""Durable recalculation requests: an enabled assignment whose stored row asks for a run (a
pending range, or not synced: a new assignment, a calculator change, the recalculate endpoint).
The worker schedules its shard's at once when told (``ShardRequests``); the pump's reconciliation
schedules any that Redis does not hold."""

from __future__ import annotations

import math
from collections.abc import Iterable

from analytics.choices import AssignmentState
from analytics.fleet.batches import finite
from analytics.fleet.debounce import Change
from analytics.models import Assignment


def requests_read(*, aliases: Iterable[str], shard: int | None = None) -> dict[int, list[Change]]:
    """shard -> the debounce changes of the enabled assignments with a durable request, of one
    shard or all, in ``aliases``: the pending range, or all of history for an assignment not
    synced."""
    changes: dict[int, list[Change]] = {}
    for alias in aliases:
        rows = Assignment.objects.using(alias).filter(enabled=True).exclude(
            pending_begin__isnull=True, state=AssignmentState.SYNCED
        )
        if shard is not None:
            rows = rows.filter(shard=shard)
        values = rows.values_list("shard", "calculator_id", "device_id", "pending_begin", "pending_end", "state")
        for of, calc_id, device_id, begin, end, state in values.iterator():
            if begin is None or end is None or state != AssignmentState.SYNCED:
                begin, end = -math.inf, math.inf
            changes.setdefault(of, []).append(Change(calc_id, device_id, *finite(begin, end), 0.0))
    return changes
