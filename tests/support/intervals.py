"""Seeding stored intervals in tests by the path a calc worker stores its runs
(``analytics.calculation.runs_store``: intervals, events, the assignment's state), with the
intervals before the change read from PostgreSQL instead of a worker's cache."""

from __future__ import annotations

import math
import time

from django.db import transaction

from analytics import storage
from analytics.calculation import Run, runs_store
from analytics.engine import Diff
from analytics.models import Assignment
from flespi_site import celery as calc_queue


class StoredBefore:
    """``Before`` from PostgreSQL."""

    def __init__(self, alias: str):
        self.alias = alias

    def interval(self, key: tuple[int, int], interval_id: int) -> dict | None:
        return next(iter(storage.intervals_read(alias=self.alias, pairs=[key], ids=[interval_id])), None)

    def newest(self, key: tuple[int, int]) -> dict | None:
        return next(iter(storage.intervals_read(alias=self.alias, pairs=[key], count=1, reverse=True)), None)


def diff_store(
    *, assignment: Assignment, diff: Diff, begin: float = -math.inf, end: float = math.inf, now: float | None = None
) -> storage.StoredChanges:
    """Store one assignment's diff, covering ``begin``..``end``, by the path a calc worker stores
    its runs (intervals, events, the assignment's state), in a transaction of its own on the
    assignment's database; the intervals before it are read from there. Returns what was stored."""
    alias = assignment.database
    run = Run(assignment=assignment, calculator=assignment.calculator, begin=begin, end=end,
              was_state=assignment.state, diff=diff)
    with transaction.atomic(using=alias):
        dependents = runs_store(alias=alias, runs=[run], stamp=time.time() if now is None else now,
                                before=lambda _run: StoredBefore(alias))
        if dependents:
            region = calc_queue.region_of_alias(alias)
            shards = {dependent.shard for dependent in dependents}
            transaction.on_commit(lambda: calc_queue.shards_request(region=region, shards=shards), using=alias)
    assert run.changes is not None
    return run.changes
