"""The bridge between stored data and the analytics engine, and the one home of a
recalculation (docs/analytics.md, "A recalculation").

- On-demand calculation (``calculate_stored``) reads a device's messages for a time range by
  column (``analytics.blocks``: its message blocks, and the rows no block covers), only the
  parameters the calculator reads, and runs the engine over them; nothing is stored.
- A recalculation of assignments (``runs_calculate``) runs the engine's windowed
  ``recalculate`` over a shard cache (``analytics.fleet.cache``) and gives a ``Run`` per
  assignment; ``runs_store`` stores their diffs, their events (the outbox) and their
  assignments' state in the caller's transaction (a calc worker's fenced one), in a few
  statements for the whole batch (and the pending ranges of the assignments chaining what
  changed: docs/analytics.md, "Calculator chaining"); ``runs_cached`` brings the cache's intervals
  in step after the commit. A run of a calculator that chains others reads their intervals from
  the same cache (``CachedSource``); an on-demand one from PostgreSQL (``sources_stored``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from accounts.placement_guard import placement_guard
from analytics import blocks, storage, stored_columns
from analytics import events as event_topics
from analytics.choices import AssignmentState
from analytics.engine import (
    Calculator,
    Diff,
    IntervalList,
    ListedIntervals,
    Messages,
    calculate,
    clock_deadline,
    intervals_as_messages,
    message_time,
    messages_of,
    recalculate,
)
from analytics.engine.interval_fields import ENGINE_FIELDS
from analytics.fleet.batches import HISTORY_BEGIN, HISTORY_END
from analytics.fleet.cache import AssignmentReader, ShardCache
from analytics.models import Assignment
from analytics.models import Calculator as StoredCalculator
from devices.models import Device
from flespi_site.errors import ErrorKind, InvalidInput, TooLarge

# One on-demand call reads at most this many messages (about a second of work: the columnar read
# and the engine run at over a million messages a second) and spans at most this much time. A
# longer history is calculated in parts, or by an assignment that keeps its intervals stored.
MAX_ON_DEMAND_MESSAGES = 1_000_000
MAX_ON_DEMAND_SPAN = 366 * 86400  # seconds
# A dependent's pending range is its source's changed range this much wider (s): an interval is
# a message of a ``messages_source`` calculator at its begin to the microsecond (``message_time``).
CHAIN_PAD = 1e-3


def on_demand_range(*, calculator: Calculator, now: float) -> tuple[float, float]:
    """The range of an on-demand calculation that names none: the calculator's
    ``update_period`` (the span a stored calculator keeps current; a year by default) up to
    ``now``, at most ``MAX_ON_DEMAND_SPAN``."""
    return max(0.0, now - min(calculator.update_period, MAX_ON_DEMAND_SPAN)), now


def calculate_stored(
    *, device: Device, calculator: Calculator, begin: float, end: float, now: float | None = None
) -> IntervalList:
    """The intervals of ``calculator`` over the device's stored messages with
    ``begin <= timestamp <= end`` (unix seconds, inclusive, as the messages API reads them), its
    expressions reading the device's metadata.
    Raises ``InvalidInput`` for a bad range and ``TooLarge`` when the range holds more than
    ``MAX_ON_DEMAND_MESSAGES`` messages."""
    low, high = _range_of(begin, end)
    sources = sources_stored(device=device, calculator=calculator, begin=begin, end=end) if calculator.chained else None
    if sources is not None and calculator.messages_calc is not None:
        source = sources.get(calculator.messages_calc)
        intervals = source.read_intervals(-math.inf, math.inf) if source is not None else []
        messages = intervals_as_messages([interval for interval in intervals if begin <= message_time(interval) <= end])
        return calculate(messages, calculator, now=now, sources=sources)
    found = stored_columns.messages_count(
        device=device, begin=low, end=high, limit=MAX_ON_DEMAND_MESSAGES + 1
    )
    if found > MAX_ON_DEMAND_MESSAGES:
        raise TooLarge(
            f"more than {MAX_ON_DEMAND_MESSAGES:,} messages between begin and end: narrow begin/end "
            "and calculate the range in parts",
            kind=ErrorKind.TOO_MANY_MESSAGES,
            limit=MAX_ON_DEMAND_MESSAGES,
        )
    return calculate(
        messages_stored(device=device, begin=low, end=high, parameters=calculator.parameters),
        calculator.for_device(device.metadata),
        now=now,
        sources=sources,
    )


def source_fields(calculator: StoredCalculator) -> frozenset[str]:
    """The fields of a source calculator's intervals that a calculator chaining it sees: the
    engine's and its counters' (not ``timestamp``, not user fields)."""
    return frozenset((*ENGINE_FIELDS, *(counter["name"] for counter in calculator.counters)))


def _engine_only(interval: dict, fields: frozenset[str]) -> dict:
    return {key: value for key, value in interval.items() if key in fields}


def sources_stored(
    *, device: Device, calculator: Calculator, begin: float, end: float
) -> dict[int, ListedIntervals]:
    """The intervals of the calculators ``calculator`` chains (``Calculator.references``) of
    ``device`` that overlap ``begin``..``end``, read from PostgreSQL, by calculator id; only
    calculators of the device's account (another's has no assignment of the device)."""
    ids = sorted({calc_id for _path, calc_id in calculator.references})
    stored = StoredCalculator.objects.using(device.database).filter(pk__in=ids, account_id=device.account_id)
    fields = {row.pk: source_fields(row) for row in stored}
    rows = storage.intervals_read(alias=device.database, pairs=[(calc_id, device.pk) for calc_id in sorted(fields)],
                                  begin=begin, end=end)
    by_calc: dict[int, list[dict]] = {calc_id: [] for calc_id in fields}
    for row in rows:
        by_calc[row["calc_id"]].append(_engine_only(row, fields[row["calc_id"]]))
    return {calc_id: ListedIntervals(intervals) for calc_id, intervals in by_calc.items()}


class CachedSource:
    """A source calculator's intervals of the device in a shard cache (``engine.IntervalReader``),
    with their engine fields and counters only."""

    def __init__(self, cache: ShardCache, calc_id: int, device_id: int, fields: frozenset[str]):
        self.reader = cache.reader(calc_id=calc_id, device_id=device_id)
        self.fields = fields

    def read_intervals(self, begin: float, end: float) -> list[dict]:
        return [_engine_only(row, self.fields) for row in self.reader.read_intervals(begin, end)]

    def interval_before(self, moment: float) -> dict | None:
        row = self.reader.interval_before(moment)
        return None if row is None else _engine_only(row, self.fields)

    def newest(self) -> float | None:
        """The message time of the newest interval (``messages_source``)."""
        row = self.reader.interval_before(math.inf)
        return None if row is None else message_time(row)


def messages_stored(*, device: Device, begin: int, end: int, parameters: frozenset[str] | None) -> Messages:
    """The device's messages with ``begin <= ts <= end`` (microseconds) as engine ``Messages``
    holding ``parameters`` (``None``: every parameter): from the device's message blocks, and
    from its rows where no block covers them (``analytics.blocks``)."""
    return blocks.messages_block(
        alias=device.database, device_id=device.pk, begin=begin, end=end, names=parameters
    ).to_messages()


def _range_of(begin: float, end: float) -> tuple[int, int]:
    for name, value in (("begin", begin), ("end", end)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidInput(
                f"{name} must be unix seconds (a non-negative number), got {value!r}", field=name
            )
    if begin > end:
        raise InvalidInput(f"begin ({begin}) is after end ({end})", field="begin")
    if end - begin > MAX_ON_DEMAND_SPAN:
        raise InvalidInput(
            f"begin..end spans {end - begin:,.0f} s, more than {MAX_ON_DEMAND_SPAN:,} s ({MAX_ON_DEMAND_SPAN // 86400} days)"
            " for one on-demand calculation: narrow begin/end and calculate the range in parts",
            kind=ErrorKind.RANGE_TOO_LONG,
            field="end",
            limit=MAX_ON_DEMAND_SPAN,
        )
    return round(begin * 1_000_000), round(end * 1_000_000)


# -- recalculation of assignments ---------------------------------------------------------------

@dataclass
class RunStats:
    """What one batch of runs did, for logs and benchmarks."""

    assignments: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    messages_read: int = 0
    extended: int = 0  # runs that extended the active interval from its tail
    fenced: bool = False


@dataclass
class Run:
    """One assignment's recalculation on its way from the cache to PostgreSQL: the range it
    covers (``begin``..``end``, unix seconds), the engine's diff, and what was stored."""

    assignment: Assignment
    calculator: StoredCalculator
    begin: float
    end: float
    was_state: str = ""
    cache: ShardCache | None = None
    # What the run reads of its cache (``runs_calculate`` makes it).
    reader: AssignmentReader | None = None
    # The device's metadata, when the calculator reads it (``device.metadata.x``).
    device_metadata: dict | None = None
    diff: Diff | None = None
    changes: storage.StoredChanges | None = None
    stamp: float = 0.0
    outbox: list[event_topics.Event] = field(default_factory=list)
    # The calculators it chains that have an assignment of the device, with the fields of their
    # intervals it sees (``source_fields``); the caller brings their cached intervals in step.
    sources: dict[int, frozenset[str]] = field(default_factory=dict)
    # The device's newest message the run saw (a ``messages_source`` run: the message time of the
    # source's newest interval).
    newest: float | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.assignment.calculator_id, self.assignment.device_id

    @property
    def synced_now(self) -> bool:
        return self.was_state != AssignmentState.SYNCED


class Compiler(Protocol):
    """The compiled calculator of a stored one, as it runs for a device with that metadata."""

    def __call__(self, calculator: StoredCalculator, device_metadata: dict | None) -> Calculator: ...


def runs_calculate(*, runs: Sequence[Run], compiled: Compiler, now: float, stats: RunStats) -> None:
    """The engine's diff of each run, from its cache (which mirrors PostgreSQL for the run's
    assignment: ``analytics.fleet.changes.assignment_cached``). A run of an assignment not synced
    covers all of history."""
    for run in runs:
        assert run.cache is not None
        calculator = compiled(run.calculator, run.device_metadata)
        reader = run.reader = run.cache.reader(calc_id=run.assignment.calculator_id,
                                               device_id=run.assignment.device_id, names=calculator.parameters)
        begin, end = (-math.inf, math.inf) if run.synced_now else (run.begin, run.end)
        sources: dict[int, CachedSource] | None = None
        read_messages, tail = reader.read_messages, reader.tail
        oldest, newest = reader.bounds
        if calculator.chained:
            sources = {calc_id: CachedSource(run.cache, calc_id, run.assignment.device_id, fields)
                       for calc_id, fields in run.sources.items()}
            tail = None
            if calculator.messages_calc is not None:
                source = sources.get(calculator.messages_calc)
                read_messages = functools.partial(messages_of, source if source is not None else ListedIntervals([]))
                # No oldest message: a source interval that goes is a change, not an expiry (its
                # purge is older than the dependent's update_period when the source keeps its
                # intervals that long: docs/analytics.md, "Calculator chaining").
                oldest = None
                newest = source.newest() if source is not None else None
        run.newest = newest
        run.diff = recalculate(
            calculator=calculator,
            read_messages=read_messages,
            read_intervals=reader.read_intervals,
            interval_before=reader.interval_before,
            dirty_begin=begin if begin > HISTORY_BEGIN else -math.inf,
            dirty_end=end if end < HISTORY_END else math.inf,
            now=now,
            frozen_before=now - run.calculator.update_period,
            messages_begin=oldest,
            newest=newest,
            tail=tail,
            sources=sources,
        )
        reader.tail = run.diff.tail
        stats.messages_read += run.diff.messages_read
        stats.extended += run.diff.extended


class Before(Protocol):
    """The stored intervals of an assignment before a run's change: one by id, and the newest."""

    def interval(self, key: tuple[int, int], interval_id: int) -> dict | None: ...

    def newest(self, key: tuple[int, int]) -> dict | None: ...


class CachedBefore:
    """``Before`` from the shard cache through the run's reader (a worker's cache mirrors
    PostgreSQL for the assignments it runs): what the engine read of the stored intervals is not
    read again."""

    def __init__(self, reader: AssignmentReader):
        self.reader = reader

    def interval(self, key: tuple[int, int], interval_id: int) -> dict | None:
        return self.reader.interval(interval_id)

    def newest(self, key: tuple[int, int]) -> dict | None:
        return self.reader.newest_interval()

    @classmethod
    def of(cls, run: Run) -> CachedBefore:
        assert run.reader is not None  # made by ``runs_calculate``
        return cls(run.reader)


def runs_store(
    *, alias: str, runs: Sequence[Run], stamp: float, before: Callable[[Run], Before]
) -> list[storage.DependentWidened]:
    """In the caller's transaction on ``alias``: every diff of the runs, their events, and the state
    of their assignments (with any name their written intervals add to ``interval_names``), in a
    few statements for the whole batch. ``before(run)`` reads the
    intervals as they were stored before the change (the open one, the newest), for the events.
    The assignments chaining a run's calculator (of the same device) get the range its intervals
    changed in as their pending range; returns them, for the caller to arm their timers after
    commit."""
    placement_guard(alias=alias, account_ids={run.assignment.account_id for run in runs})
    known_names = storage.assignments_lock(alias=alias, assignment_ids=[run.assignment.pk for run in runs])
    events: list[event_topics.Event] = []
    rows: list[storage.AssignmentDone] = []
    for run in runs:
        run.stamp = stamp
        if run.assignment.pk not in known_names:  # unassigned meanwhile: its intervals are gone with it
            run.changes = storage.StoredChanges()
    stored = [run for run in runs if run.changes is None]
    # Read before the writes: ``before`` may read PostgreSQL.
    priors = {run.key: before(run) for run in stored}
    was = {
        run.key: (
            None if run.assignment.active_id is None else priors[run.key].interval(run.key, run.assignment.active_id),
            priors[run.key].newest(run.key),
        )
        for run in stored
    }
    chained = storage.chain_sources(alias=alias, calc_ids={run.key[0] for run in stored if run.diff})
    # What the changed intervals covered before the change: their old extent matters to a dependent.
    old_extents = {
        run.key: [prior_row for interval in run.diff.updated
                  if (prior_row := priors[run.key].interval(run.key, interval["id"])) is not None]
        for run in stored if run.key[0] in chained and run.diff is not None
    }
    writes = {}
    for run in stored:
        assert run.diff is not None
        writes[run.key] = ([*run.diff.created, *run.diff.updated], [interval["id"] for interval in run.diff.deleted])
    written_by_key = storage.intervals_write_many(alias=alias, writes=writes, stamp=stamp)
    for run in stored:
        assert run.diff is not None
        assignment, key, prior = run.assignment, run.key, priors[run.key]
        before_active, before_last = was[key]
        written, deleted = written_by_key[key]
        created_ids = {interval["id"] for interval in run.diff.created}
        changes = storage.StoredChanges(
            created=[row for row in written if row["id"] in created_ids],
            updated=[row for row in written if row["id"] not in created_ids],
            deleted=deleted,
        )
        by_id = {row["id"]: row for row in written}
        deleted_ids = {row["id"] for row in deleted}
        active_id = run.diff.active_id if run.diff.reached_end else assignment.active_id
        active = by_id.get(active_id) if active_id is not None else None
        if active is None and active_id is not None and active_id not in deleted_ids:
            active = prior.interval(key, active_id)
        was_active = None
        if before_active is not None:
            was_active = by_id.get(before_active["id"], before_active)
        last, last_changed = _newest(alias, key, before_last, written, deleted_ids)
        run.outbox = event_topics.interval_events(
            calc_id=key[0], device_id=key[1], created=changes.created, updated=changes.updated,
            deleted=changes.deleted, was_active=was_active, active=active,
            active_known=run.diff.reached_end, last=last, last_changed=last_changed,
        )
        if run.synced_now:
            run.outbox.append(event_topics.synced_event(calc_id=key[0], device_id=key[1], synced=True))
            if last is not None and not last_changed:
                run.outbox.append(event_topics.last_event(calc_id=key[0], device_id=key[1], last=last))
        events.extend(run.outbox)
        # Mostly the names the row has: then it is written as it was.
        new_names = storage.written_names(writes[key][0]) - known_names[assignment.pk]
        rows.append(storage.AssignmentDone(
            id=assignment.pk, version=run.calculator.version, calculated=stamp,
            begin=-math.inf if run.synced_now else run.begin, end=math.inf if run.synced_now else run.end,
            active_id=active_id, synced=True, new_names=new_names or None,
        ))
        assignment.active_id = active_id
        run.changes = changes
    storage.outbox_events(alias=alias, events=events)
    storage.assignments_done(alias=alias, rows=rows)
    # After ``assignments_done``: a dependent that ran in this batch keeps the range it must run again for.
    changed = {}
    for run in stored:
        if run.key in old_extents and run.changes:
            rows_changed = [*run.changes.created, *run.changes.updated, *run.changes.deleted, *old_extents[run.key]]
            changed[run.key] = (min(row["begin"] for row in rows_changed) - CHAIN_PAD,
                                max(row["end"] for row in rows_changed) + CHAIN_PAD)
    return storage.dependents_pending_widen(alias=alias, ranges=changed)


def runs_cached(*, runs: Sequence[Run], stats: RunStats) -> None:
    """After the commit: each run's stored changes into its cache, marked with the run's stamp (so
    that the next run knows the cache's copy is the stored one)."""
    for run in runs:
        assert run.changes is not None and run.cache is not None
        run.cache.intervals_apply(
            calc_id=run.assignment.calculator_id,
            device_id=run.assignment.device_id,
            diff=Diff(created=[*run.changes.created, *run.changes.updated], deleted=run.changes.deleted),
            marker=run.stamp,
        )
        if run.reader is not None:
            run.reader.forget()
        stats.assignments += 1
        stats.created += len(run.changes.created)
        stats.updated += len(run.changes.updated)
        stats.deleted += len(run.changes.deleted)


def run_deadline(*, run: Run, compiled: Compiler, now: float) -> tuple[float, float] | None:
    """When the wall clock alone changes the run's intervals (``clock_deadline``: its open
    interval closing by ``max_inactive`` or a ``datetime`` period's end, or an ``inactive``
    selector's interval opening), unix seconds, with the newest message's timestamp it follows
    from; None when nothing will."""
    assert run.diff is not None and run.cache is not None
    if not run.diff.reached_end:
        return None
    calculator = compiled(run.calculator, run.device_metadata)
    newest = run.newest
    if newest is None:
        return None
    deadline = clock_deadline(calculator, newest=newest, active=run.diff.active_id is not None, now=now)
    return None if deadline is None else (deadline, newest)


def assignment_synchronizing(*, alias: str, assignment: Assignment) -> None:
    """In the caller's transaction: an unsynced assignment's first run starts (its ``synced``
    state event says false until the run is stored)."""
    placement_guard(alias=alias, account_ids=[assignment.account_id])
    Assignment.objects.using(alias).filter(pk=assignment.pk).update(state=AssignmentState.SYNCHRONIZING)
    storage.outbox_events(
        alias=alias,
        events=[event_topics.synced_event(calc_id=assignment.calculator_id, device_id=assignment.device_id,
                                          synced=False)],
    )


def _newest(
    alias: str, key: tuple[int, int], before: dict | None, written: list[dict], deleted_ids: set[int]
) -> tuple[dict | None, bool]:
    """The newest stored interval after a change, and whether it (or which one it is) changed;
    ``before`` is the newest before it."""
    candidates = list(written)
    if before is not None and before["id"] not in deleted_ids:
        candidates.append(before)
    last = max(candidates, key=lambda row: row["id"]) if candidates else None
    if before is not None and before["id"] in deleted_ids and (last is None or last["id"] < before["id"]):
        # The newest went and nothing newer came: the newest left is read back (rare).
        last = next(iter(storage.intervals_read(alias=alias, pairs=[key], count=1, reverse=True)), None)
    written_ids = {row["id"] for row in written}
    before_id = None if before is None else before["id"]
    last_id = None if last is None else last["id"]
    changed = last_id != before_id or (last_id is not None and last_id in written_ids)
    return last, changed
