"""Full calculation: messages + calculator -> intervals (DESIGN 7.6)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .calculator import Calculator, compile_calculator
from .chains import (
    IntervalReader,
    ListedIntervals,
    Sources,
    SourcesGiven,
    SourceSpan,
    intervals_as_messages,
    source_spans,
)
from .counters import COUNTER_TYPES, OMIT, message_counters
from .expressions import Frame
from .geo import first_containing
from .messages import Messages
from .selectors import Runs, intersect, select
from .timeutil import period_keys


class IntervalList(list):
    """The intervals of a calculation, oldest first, with ``active_id``: the id of the active
    interval (the last one, reaching the newest message, not closed by a rule or by the wall
    clock), or ``None``."""

    active_id: int | None = None


def interval_id(begin: float) -> int:
    """An interval's id: its begin in microseconds."""
    return round(begin * 1_000_000)


def validated(calc: Calculator, messages: Messages) -> Messages:
    """The messages that pass the calculator's ``validate_message`` (all of them without one)."""
    if calc.validate_message is None or not len(messages):
        return messages
    keep = calc.validate_message.evaluate_frame(Frame(messages)).truth()
    if keep.all():
        return messages
    return messages.take(np.flatnonzero(keep))


def select_all(
    calc: Calculator, frame: Frame, now: float | None, chained: Mapping[int, SourceSpan] | None = None
) -> Runs:
    runs = None
    for spec in calc.selectors:
        selected = select(spec, frame, now=now, tz=calc.tz, chained=chained)
        runs = selected if runs is None else intersect(runs, selected)[0]
    assert runs is not None  # compile_calculator requires at least one selector
    return runs


def compute(
    calc: Calculator,
    messages: Messages,
    *,
    now: float | None,
    reached_end: bool = True,
    keep_from: float | None = None,
    previous: Mapping | None = None,
    sources: Sources | None = None,
    user_fields: Mapping[int, Mapping] | None = None,
) -> IntervalList:
    """Intervals over validated ``messages``.

    ``keep_from``: only intervals beginning at or after it are kept (a window's lead-in).
    ``previous``: the interval before the first kept one, for ``previous()`` and accumulators.
    ``reached_end``: whether the last message is the device's newest (else nothing is active).
    ``sources``: the intervals of the calculators it chains (``chains``), by calculator id.
    ``user_fields``: the user fields of stored intervals by id, which ``previous('field')`` of the
    interval after each sees (the intervals returned hold engine fields only).
    """
    intervals = IntervalList()
    count = len(messages)
    if count == 0:
        return intervals
    frame = Frame(messages)
    chained = source_spans(calc.reads_calcs, sources, messages.timestamps) if calc.reads_calcs else None
    # The wall clock speaks only of the newest message: a window that ends before it must not see
    # its last message as the newest (an ``inactive`` selector would open an interval there).
    runs = select_all(calc, frame, now if reached_end else None, chained)
    first, last, open_ = runs.first, runs.last, runs.open_
    timestamps = messages.timestamps
    if keep_from is not None and len(first):
        keep = timestamps[first] >= keep_from
        first, last, open_ = first[keep], last[keep], open_[keep]
    kept = len(first)
    if kept == 0:
        return intervals
    active = open_ & (count - 1 == last) & reached_end
    if kept > 1:
        active[:-1] = False
    geofence_index = None
    if any(COUNTER_TYPES[counter.type].reads_geofences for counter in calc.counters):
        lat, lon, positioned = frame.position()
        geofence_index = first_containing(calc.geofences, lat, lon, positioned)
    counter_values = message_counters(calc, messages, first, last, active, geofence_index, chained=chained)
    begin = timestamps[first]
    end = timestamps[last]
    raw_ids = np.round(begin * 1_000_000).astype(np.int64)
    # Intervals sharing a begin (possible when runs share a message through the merge options
    # and selectors overlap) are numbered by their end: the n-th of them adds n microseconds.
    # That depends only on intervals with that begin, so a window gives the same ids.
    order = np.arange(kept, dtype=np.int64)
    new_begin = np.ones(kept, bool)
    new_begin[1:] = raw_ids[1:] != raw_ids[:-1]
    ids = raw_ids + order - np.maximum.accumulate(np.where(new_begin, order, 0))
    rows = zip(ids.tolist(), begin.tolist(), end.tolist(), strict=True)
    if not calc.needs_interval_pass:
        named_values = []
        for counter, values in counter_values:
            assert values is not None  # only per-interval counters need the interval pass
            named_values.append((counter.name, values))
        for j, (identifier, interval_begin, interval_end) in enumerate(rows):
            interval = _interval(identifier, interval_begin, interval_end)
            for name, values in named_values:
                value = values[j]
                if value is not OMIT:
                    interval[name] = value
            intervals.append(interval)
        if active[-1]:
            intervals.active_id = intervals[-1]["id"]
        return intervals
    return _interval_pass(calc, rows, counter_values, active, previous, intervals, user_fields)


def _interval(identifier: int, begin: float, end: float) -> dict:
    """An interval's engine fields, before its counters."""
    return {"id": identifier, "begin": begin, "end": end, "duration": end - begin}


def _interval_pass(
    calc, rows, counter_values, active, previous, intervals: IntervalList, user_fields: Mapping | None = None
) -> IntervalList:
    """Counters that look at the interval itself or at the one before it (with its user fields),
    in order."""
    counters = [(counter, COUNTER_TYPES[counter.type], values) for counter, values in counter_values]
    previous_interval = dict(previous) if previous is not None else None
    last_kept_active = False
    for j, (identifier, interval_begin, interval_end) in enumerate(rows):
        interval = _interval(identifier, interval_begin, interval_end)
        for counter, counter_type, values in counters:
            if values is not None:
                value = values[j]
            else:
                value = counter_type.interval_value(counter, interval, previous_interval, calc)
            if value is not OMIT:
                interval[counter.name] = value
        if calc.validate_interval is not None and not calc.validate_interval.matches(
            interval, previous_interval
        ):
            last_kept_active = False
            continue
        intervals.append(interval)
        user = user_fields.get(identifier) if user_fields else None
        previous_interval = {**user, **interval} if user else interval
        last_kept_active = bool(active[j])
    if intervals and last_kept_active:
        intervals.active_id = intervals[-1]["id"]
    return intervals


def readers(sources: SourcesGiven | None) -> dict[int, IntervalReader]:
    """``sources`` with every list of intervals wrapped as an ``IntervalReader``."""
    return {
        calc_id: ListedIntervals(source) if isinstance(source, Sequence) else source
        for calc_id, source in (sources or {}).items()
    }


def calculate(messages, calculator, *, now: float | None = None, sources: SourcesGiven | None = None) -> IntervalList:
    """All intervals of ``messages`` (a list of message dicts, or ``Messages``) under
    ``calculator`` (a configuration dict or a compiled ``Calculator``). ``sources``: for a
    calculator that chains others (``chains``), each one's intervals of the device (a list, or
    an ``IntervalReader``) by calculator id; one it lacks has none. With a ``messages_source``
    calculator, ``messages`` may be ``None``: the source's intervals are the messages."""
    calc = compile_calculator(calculator)
    chain = readers(sources)
    if messages is None:
        reader = chain.get(calc.messages_calc) if calc.messages_calc is not None else None
        messages = intervals_as_messages(reader.read_intervals(-math.inf, math.inf) if reader is not None else [])
    msgs = Messages.coerce(messages)
    return compute(calc, validated(calc, msgs), now=now, sources=chain)


def active_deadline(calculator, *, newest: float) -> float | None:
    """When the wall clock closes an active interval whose newest message is at ``newest``: the
    earliest ``now`` for which ``calculate``/``recalculate`` no longer report it active
    (``max_inactive`` of an expression or geofence selector, or the end of a ``datetime``
    period). ``None`` when no rule closes it by time. For the worker's deactivation sweep."""
    calc = compile_calculator(calculator)
    deadlines = []
    for spec in calc.selectors:
        if spec.type in ("expression", "geofence") and spec.options.get("max_inactive", 0) > 0:
            deadlines.append(float(np.nextafter(newest + spec.options["max_inactive"], np.inf)))
        elif spec.type == "datetime" and spec.split is not None:  # unsplit: one interval, never closed
            deadlines.append(_next_period(calc, float(newest), spec.split))
    return min(deadlines) if deadlines else None


def inactive_deadline(calculator, *, newest: float) -> float | None:
    """When the wall clock opens an ``inactive`` interval after the newest message at ``newest``:
    the earliest ``now`` for which ``calculate``/``recalculate`` give one (the calculator's
    smallest ``delay_threshold`` after it). ``None`` when the calculator has no inactive selector.
    Whether it becomes active also depends on the other selectors: the recalculation says."""
    calc = compile_calculator(calculator)
    thresholds = [spec.delay_threshold for spec in calc.selectors if spec.type == "inactive"]
    if not thresholds:
        return None
    return float(np.nextafter(newest + min(thresholds), np.inf))


def clock_deadline(calculator, *, newest: float, active: bool, now: float) -> float | None:
    """The next moment after ``now`` at which the wall clock alone changes the intervals of a
    device whose newest message is at ``newest``: the open interval closing (``active_deadline``,
    when one is ``active``) or an ``inactive`` one opening (``inactive_deadline``). ``None`` when
    nothing will."""
    deadlines = [
        deadline
        for deadline in (
            active_deadline(calculator, newest=newest) if active else None,
            inactive_deadline(calculator, newest=newest),
        )
        if deadline is not None and deadline > now
    ]
    return min(deadlines) if deadlines else None


def _next_period(calc: Calculator, moment: float, split: str) -> float:
    key = period_keys(np.array([moment]), calc.tz, split)[0]
    grid = moment + np.arange(1, 24 * 367 + 2, dtype=np.float64) * 3600.0
    later = np.flatnonzero(period_keys(grid, calc.tz, split) != key)
    hi = float(grid[later[0]])
    lo = hi - 3600.0 if later[0] else moment
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if period_keys(np.array([mid]), calc.tz, split)[0] != key:
            hi = mid
        else:
            lo = mid
    return round(hi, 6)
