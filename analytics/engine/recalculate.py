"""Windowed recalculation (DESIGN 7.6 points 1-5).

The caller (a calc worker with its SQLite cache) says which time range of a device's messages
changed; ``recalculate`` reads only the messages and stored intervals around it, recomputes a
window, and returns the diff to apply to the stored intervals. See ``recalculate`` for the
contract and docs/engine.md for why the window is exact.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .calculate import IntervalList, _interval, _interval_pass, compute, readers, validated
from .calculator import Calculator, compile_calculator
from .chains import Sources, SourcesGiven, source_spans
from .counters import COUNTER_TYPES, OMIT, carried_values, counters_carried
from .expressions import Frame
from .interval_fields import INTERVAL_FIELDS
from .messages import Messages
from .selectors import IGNORED, clean_cuts, raw_state

_MISSING = object()
_MAX_ROUNDS = 12


@dataclass
class Diff:
    """What a recalculation changes.

    ``created``/``updated`` hold the new interval dicts (engine fields only: merge user fields
    and stamp ``timestamp`` when storing); ``deleted`` holds the stored dicts that vanish.
    ``reached_end`` tells whether the window reached the device's newest message; only then is
    ``active_id`` meaningful (the id of the active interval, or ``None`` when none is active).
    ``window`` is the range ``[begin, end)`` of interval begins that was recomputed, and
    ``messages_read`` how many messages were read (for benchmarks and logs). ``tail``: what the
    next recalculation may extend the active interval from (``Tail``), or ``None``;
    ``extended`` tells whether this one did.
    """

    created: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)
    deleted: list[dict] = field(default_factory=list)
    active_id: int | None = None
    reached_end: bool = False
    window: tuple[float, float] = (math.inf, -math.inf)
    messages_read: int = 0
    engine_keys: tuple = ()
    tail: Tail | None = None
    extended: bool = False

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


@dataclass(frozen=True)
class Tail:
    """The active interval of an assignment as a recalculation left it, for the next one to extend
    when its new messages all come after the newest (docs/engine.md, "Extending the active
    interval"): the compiled calculator it was computed with, the interval's engine fields, its
    last messages (validated, the calculator's parameters only: those the window recalculation
    read, at most ``TAIL_MESSAGES``, or the last extension's), the device's newest message then
    (the interval's last) and the state of each counter (``counters.counters_carried``). ``rows``
    is what holding it costs."""

    calc: Calculator
    interval: dict
    messages: Messages
    newest: float
    counters: tuple

    @property
    def rows(self) -> int:
        return len(self.messages)


def extendable(calc: Calculator) -> bool:
    """Whether an active interval of ``calc`` can be extended by appended messages without a
    window recalculation: one selector, an expression or geofence one whose runs only grow as
    messages that keep it on arrive (no ``change`` method, no merging of neighbour messages, no
    ``max_active`` piece cutting), no counter that reads which geofence holds a message, and no
    chaining (``chains``: its intervals depend on another calculator's, not only on the messages)."""
    if len(calc.selectors) != 1 or calc.chained:
        return False
    spec = calc.selectors[0]
    if spec.type not in ("expression", "geofence") or spec.method == "change":
        return False
    options = spec.options
    if options.get("merge_message_before") or options.get("merge_message_after") or options.get("max_active", 0) > 0:
        return False
    return not any(COUNTER_TYPES[counter.type].reads_geofences for counter in calc.counters)


def _reads_previous_position(calc: Calculator) -> bool:
    """Whether an expression over messages measures from an earlier message's position
    (``mileage()``): from the message before, or the last one before it with a position."""
    spec = calc.selectors[0]
    expressions = [calc.validate_message, spec.expression, spec.validate]
    for counter in calc.counters:
        if not COUNTER_TYPES[counter.type].per_interval:
            expressions += [counter.validate, *counter.expressions()]
    return any(expression is not None and expression.reads_previous_position for expression in expressions)


def _extended(
    calc: Calculator,
    tail: Tail,
    *,
    read_messages: Callable[[float, float], Messages | list],
    interval_before: Callable[[float], dict | None],
    dirty_begin: float,
    now: float | None,
    frozen_before: float,
    messages_begin: float | None,
) -> Diff | None:
    """The diff of appending the messages after ``tail.newest`` to the active interval, when every
    one of them keeps it active; ``None`` when the window recalculation must decide. Equal to a
    calculation from scratch by construction: the selector's state of each new message is
    computed with the message before it (the interval's last) as context, and each counter is
    carried on from its state over the new messages only, with that message as their context
    (``CounterType.carry``: the same reductions, and sums added in the same order)."""
    begin = tail.interval["begin"]
    if tail.calc is not calc or dirty_begin < begin:
        return None
    stored = interval_before(math.inf)
    if stored is None or stored.get("id") != tail.interval["id"] or not same_interval(calc, tail.interval, stored):
        return None
    if _frozen(stored, frozen_before, messages_begin):
        return None
    if dirty_begin <= tail.newest and not _unchanged_since(tail, read_messages, dirty_begin):
        return None
    # Every message after the tail's newest is new: it was the device's newest when the tail was made.
    raw = Messages.coerce(read_messages(tail.newest, math.inf))
    stamps = raw.timestamps
    if len(raw) < 2 or stamps[0] != tail.newest:
        return None  # the interval's last message is gone, or nothing was appended
    count = len(raw)
    lead = tail.messages.slice(len(tail.messages) - 1, len(tail.messages))
    if _reads_previous_position(calc) and not Frame(lead).position()[2][0]:
        return None  # mileage() would measure from a message before the lead
    if calc.validate_message is not None:
        keep = calc.validate_message.evaluate_frame(Frame(raw)).truth()
        if not keep[1:].all():
            return None  # a new message left out: the next one's previous raw message is not the lead
    new = raw.slice(1, count)
    appended = Messages.concat([lead, new])
    spec = calc.selectors[0]
    options = spec.options
    state, _, _ = raw_state(spec, Frame(appended))
    state = state[1:]
    on = (state == 1) | (state == IGNORED)
    if options.get("merge_unknown"):
        on |= state == -1
    if not on.all():
        return None
    max_gap = options.get("max_messages_time_diff", 0)
    if max_gap > 0 and (np.diff(np.concatenate(([tail.newest], new.timestamps))) > max_gap).any():
        return None
    newest = float(new.timestamps[-1])
    max_inactive = options.get("max_inactive", 0)
    if max_inactive > 0 and now is not None and float(now) - newest > max_inactive:
        return None  # the wall clock closes it: the window recalculation says how
    carried = counters_carried(calc, tail.counters, appended)
    if carried is None:
        return None
    active = np.ones(1, bool)
    counter_values = carried_values(calc, carried)
    identifier = tail.interval["id"]
    if calc.needs_interval_pass:
        computed = _interval_pass(
            calc, [(identifier, begin, newest)], counter_values, active, interval_before(begin), IntervalList()
        )
        if not computed:
            return None  # validate_interval drops it: the window recalculation says what remains
        interval = computed[0]
    else:
        interval = _interval(identifier, begin, newest)
        for counter, values in counter_values:
            assert values is not None  # only per-interval counters need the interval pass
            if values[0] is not OMIT:
                interval[counter.name] = values[0]
    diff = Diff(reached_end=True, active_id=identifier, window=(begin, math.inf), messages_read=count,
                engine_keys=calc.engine_keys, extended=True)
    if not same_interval(calc, interval, stored):
        diff.updated.append(interval)
    diff.tail = Tail(calc=calc, interval=interval, messages=_last_messages(appended), newest=newest, counters=carried)
    return diff


# The messages a tail keeps, at most: its last one is the context of the next, and a changed range
# that reaches back into them (a pending range kept while the run that made the tail was under way:
# the last run's messages, a few) is compared with the cache's (``_unchanged_since``; one reaching
# further back costs a window recalculation). Few, so that a calc worker's budget holds a tail for
# each of tens of thousands of assignments (``analytics.fleet.cache.CALC_TAIL_ROWS``).
TAIL_MESSAGES = 32


def _last_messages(messages: Messages) -> Messages:
    return messages if len(messages) <= TAIL_MESSAGES else messages.slice(len(messages) - TAIL_MESSAGES, len(messages))


def same_interval(calc: Calculator, new: Mapping, old: Mapping) -> bool:
    """Equal in every field the engine writes (user fields and ``timestamp`` are ignored)."""
    return all(new.get(key, _MISSING) == old.get(key, _MISSING) for key in calc.engine_keys)


def _cut_info(calc: Calculator, accepted: Messages, from_start: bool, sources: Sources | None = None):
    """Clean cuts of the whole calculator over ``accepted`` (the messages ``validate_message``
    accepts): strict for at least one selector (so no interval of the calculator spans the
    cut), and strict or transparent for every selector. ``need[c]``: the earliest message whose
    state the cut relies on (its previous message is the window's first); -1 where the cut
    cannot be used (what it relies on lies before ``accepted``)."""
    frame = Frame(accepted)
    count = len(accepted)
    any_strict = np.zeros(count, bool)
    every = np.ones(count, bool)
    need = np.arange(count) - 1
    chained = source_spans(calc.reads_calcs, sources, accepted.timestamps) if calc.reads_calcs else None
    for spec in calc.selectors:
        strict, transparent, needs = clean_cuts(spec, frame, calc.tz, chained)
        any_strict |= strict
        every &= strict | transparent
        need = np.minimum(need, needs)
    if any(
        selector.expression is not None and selector.expression.reads_previous_position
        for selector in calc.selectors
    ):
        need = _reach_previous_position(frame, need, from_start)
    return any_strict & every, need


def _reach_previous_position(frame: Frame, need: np.ndarray, from_start: bool) -> np.ndarray:
    """``mileage()`` of the first positioned message at or after ``need`` measures from the last
    positioned message before it, however far back: the cut relies on that one too. Where ``accepted``
    holds none (and does not start at the history's start), the cut cannot be used yet."""
    count = frame.n
    valid = frame.position()[2]
    index = np.arange(count)
    last = np.maximum.accumulate(np.where(valid, index, -1))  # last positioned at or before i
    next_positioned = np.minimum.accumulate(np.where(valid, index, count)[::-1])[::-1]  # first at or after i
    at = np.clip(need, 0, count - 1)
    before = np.where(need >= 1, last[np.clip(need - 1, 0, count - 1)], -1)
    looks_back = (need >= 0) & (next_positioned[at] < count)
    reached = np.where(before >= 0, np.minimum(need, before + 1), need if from_start else -1)
    return np.where(looks_back, reached, need)


def _first_known(calc: Calculator, raw: Messages, accepted: Messages, from_start: bool) -> int:
    """The first index of ``accepted`` a window may start at: the calculator's ``validate_message``
    cannot be decided here for the first raw message when it reads ``#name``, nor for the first
    positioned one when it reads ``mileage()`` (what they look back to lies before the read)."""
    validate = calc.validate_message
    if from_start or validate is None or not len(accepted) or not len(raw):
        return 0
    unknown = []
    if validate.reads_previous:
        unknown.append(0)
    if validate.reads_previous_position:
        valid = Frame(raw).position()[2]
        if valid.any():
            unknown.append(int(np.argmax(valid)))
    first_usable = 0
    stamps = accepted.timestamps
    for unknown_at in unknown:
        moment = raw.timestamps[unknown_at]
        position = int(np.searchsorted(stamps, moment))
        # Present: exclude it from the window; absent: the message after it has the wrong
        # previous message.
        first_usable = max(
            first_usable, position + 1 if position < len(stamps) and stamps[position] == moment else position
        )
    return first_usable


def _validity_settled(
    calc: Calculator, raw: Messages, after: np.ndarray, dirty_end: float
) -> np.ndarray | None:
    """For the cut after the dirty range, when the calculator's ``validate_message`` reads
    ``mileage()``: whether the validity of the raw messages after each time in ``after`` looks
    back only to positions after the dirty range (``None``: it reads no position)."""
    validate = calc.validate_message
    if validate is None or not validate.reads_previous_position:
        return None
    valid = Frame(raw).position()[2]
    pos_ts = raw.timestamps[valid]
    if not len(pos_ts):
        return None
    following = np.searchsorted(pos_ts, after, "right")
    has_later = following < len(pos_ts)
    back = np.where(following > 0, pos_ts[np.maximum(following - 1, 0)], -math.inf)
    return ~has_later | (back > dirty_end)


def recalculate(
    *,
    calculator,
    read_messages: Callable[[float, float], Messages | list],
    read_intervals: Callable[[float, float], list[dict]],
    interval_before: Callable[[float], dict | None],
    dirty_begin: float,
    dirty_end: float,
    now: float | None,
    frozen_before: float | None = None,
    messages_begin: float | None = None,
    newest: float | None = None,
    tail: Tail | None = None,
    sources: SourcesGiven | None = None,
) -> Diff:
    """Recalculate the intervals of one assignment after its messages changed in
    ``[dirty_begin, dirty_end]``, reading only what is near that range.

    What the caller passes:

    * ``read_messages(begin, end)``: the device's current messages with ``begin <= timestamp <
      end`` (bounds may be ``-inf``/``inf``), sorted, as ``Messages`` or a list of dicts.
    * ``read_intervals(begin, end)``: the stored intervals whose ``begin`` is in ``[begin, end)``,
      sorted by begin (dicts with at least the engine fields; extra fields are ignored).
    * ``interval_before(t)``: the stored interval with the largest ``begin < t``, or ``None``.
    * ``dirty_begin``/``dirty_end``: the smallest and largest timestamp of every message
      inserted, changed or deleted since the stored intervals were computed (for a deleted
      message, its timestamp). The union over several batches is fine. After a calculator
      change pass ``-inf``/``inf``. A wall-clock sweep (``max_inactive`` closing, a ``datetime``
      period ending) passes the newest message's timestamp for both, or a moment just after it
      (nothing changed at the newest: a tail then extends without reading it again).
    * ``now``: wall-clock time, for closing the active interval by ``max_inactive`` or by a
      ``datetime`` period's end.
    * ``frozen_before``: stored intervals ending before it are never changed, and no interval
      ending before it is created (defaults to ``now - update_period``; pass ``-inf`` for none).
    * ``messages_begin``: the oldest message still available (older ones expired by
      ``messages_ttl``); stored intervals beginning before it are frozen too.
    * ``newest``: the device's newest message timestamp, if the caller knows it (saves reads
      when looking forward for the end of the window).
    * ``tail``: the ``Diff.tail`` of the assignment's previous recalculation, if the caller kept
      it. When every changed message comes after the newest then and keeps the active interval
      active, the interval is extended from it instead (``Diff.extended``); the tail is checked
      against the stored intervals and the messages, so a stale one only costs the window.
    * ``sources``: for a calculator that chains others (``chains``), an ``IntervalReader`` (or a
      list) of each one's current intervals of the device, by calculator id. The dirty range then also covers
      every source interval created, updated or deleted since the stored intervals were computed
      (its old and new extent). For a ``messages_source`` calculator, ``read_messages`` gives the
      source's intervals as messages (``chains.messages_of``) and the dirty range is in their
      time.

    What it does: it reads messages around the dirty range and finds a *clean cut* before it and
    one after it (a place between two messages where no interval of any selector spans, no rule
    can join across, and the state the rules look at is the same in the old and new messages),
    widening the read until both are found or the history ends. The window between the cuts is
    recomputed (with a lead-in of the messages the rules need before the first cut); the stored
    intervals beginning in it are compared with the new ones. When counters reach across
    intervals (``previous()`` in ``interval`` counters or ``validate_interval``, accumulators)
    the window keeps extending forward until the last recomputed interval equals the stored one.

    The diff, applied to the stored intervals, gives what a full calculation over the current
    messages gives (frozen intervals excepted).
    """
    calc = compile_calculator(calculator)
    if dirty_begin > dirty_end:
        raise ValueError("dirty_begin is after dirty_end")
    chain = readers(sources) if sources else None
    if frozen_before is None:
        frozen_before = (now - calc.update_period) if now is not None else -math.inf
    if tail is not None:
        extended = _extended(
            calc, tail, read_messages=read_messages, interval_before=interval_before, dirty_begin=dirty_begin,
            now=now, frozen_before=frozen_before, messages_begin=messages_begin,
        )
        if extended is not None:
            return extended
    reach = max([selector.options.get("max_inactive", 0) or 0 for selector in calc.selectors] + [0])

    hint = interval_before(np.nextafter(dirty_begin, math.inf)) if math.isfinite(dirty_begin) else None
    span_b = 2 * reach + 60.0
    if hint is not None and hint["end"] >= dirty_begin - span_b:
        # The change is inside (or just after) a stored interval: start the search at its begin
        # rather than growing towards it.
        span_b += max(dirty_begin - hint["begin"], 0.0)
    span_f = 2 * reach + 600.0
    forward_floor = -math.inf
    greedy = False
    read = 0
    have: tuple[float, float] | None = None  # the time range already read into ``raw``
    raw = None

    for _ in range(_MAX_ROUNDS * 6):
        read_from = dirty_begin - span_b if math.isfinite(dirty_begin) and span_b < 1e11 else -math.inf
        read_to = dirty_end + span_f if math.isfinite(dirty_end) and span_f < 1e11 else math.inf
        from_start = read_from == -math.inf or (messages_begin is not None and read_from < messages_begin)
        to_end = read_to == math.inf or (newest is not None and read_to > newest)
        if have is None:
            raw = Messages.coerce(read_messages(read_from, read_to))
            read += len(raw)
        else:
            assert raw is not None  # read together with ``have``
            parts = []
            if read_from < have[0]:
                parts.append(Messages.coerce(read_messages(read_from, have[0])))
            parts.append(raw)
            if read_to > have[1]:
                parts.append(Messages.coerce(read_messages(have[1], read_to)))
            read += sum(len(part) for part in parts) - len(raw)
            raw = Messages.concat(parts) if len(parts) > 1 else raw
        have = (min(read_from, have[0]) if have else read_from, max(read_to, have[1]) if have else read_to)
        accepted = validated(calc, raw)
        stamps = accepted.timestamps
        accepted_count = len(accepted)
        first_usable = _first_known(calc, raw, accepted, from_start)
        clean, need = (
            _cut_info(calc, accepted, from_start, chain)
            if accepted_count
            else (np.zeros(0, bool), np.zeros(0, np.int64))
        )

        # The cut before the dirty range: the latest clean one, or the start of the history.
        back = np.flatnonzero(clean & (stamps < dirty_begin) & (need - 1 >= first_usable))
        if len(back):
            cut = int(back[-1])
            window_start = int(need[cut]) - 1
        elif from_start:
            cut = 0
            window_start = 0
        else:
            span_b *= 4
            continue

        # The cut after it: the first clean one whose whole context lies after the range.
        ok_f = clean & (np.arange(accepted_count) > cut) & (need >= 2)
        ctx = np.where(need >= 2, need - 2, 0)
        ok_f &= stamps[ctx] > dirty_end
        settled = _validity_settled(calc, raw, stamps[ctx], dirty_end) if accepted_count else None
        if settled is not None:
            ok_f &= settled
        ok_f &= stamps > forward_floor
        fwd = np.flatnonzero(ok_f)
        if len(fwd):
            cut_after = int(fwd[-1] if greedy else fwd[0])
            end_reached = False
        elif to_end:
            cut_after = accepted_count
            end_reached = True
        else:
            span_f *= 4
            continue

        keep_from = float(stamps[cut]) if (cut > 0 or not from_start) and accepted_count else None
        previous = interval_before(keep_from) if keep_from is not None else None
        window = accepted.slice(window_start, cut_after)
        hi = float(stamps[cut_after]) if cut_after < accepted_count else math.inf
        lo = keep_from if keep_from is not None else -math.inf
        old = read_intervals(lo, hi)
        new = compute(calc, window, now=now, reached_end=end_reached, keep_from=keep_from, previous=previous,
                      sources=chain, user_fields=_user_fields(calc, old) if calc.crosses_intervals else None)
        if calc.crosses_intervals and not end_reached:
            stored_last = interval_before(hi)
            new_last = new[-1] if new else previous
            if stored_last is None or new_last is None:
                moved = (stored_last is None) != (new_last is None)
            else:
                moved = not same_interval(calc, new_last, stored_last)
            if moved:
                # A counter carries the change further: look further ahead, in bigger steps.
                forward_floor = hi
                greedy = True
                span_f *= 4
                continue
        diff = _diff(calc, new, old, frozen_before, messages_begin)
        diff.reached_end = end_reached
        diff.active_id = new.active_id if end_reached else None
        diff.window = (lo, hi)
        diff.messages_read = read
        diff.engine_keys = calc.engine_keys
        if end_reached and new.active_id is not None and extendable(calc):
            diff.tail = _tail_of(calc, window, new[-1], raw, frozen_before, messages_begin)
        return diff
    raise RuntimeError("recalculation window did not settle")  # pragma: no cover


def _unchanged_since(tail: Tail, read_messages: Callable[[float, float], Messages | list], moment: float) -> bool:
    """Whether the device's messages from ``moment`` to the tail's newest are still the tail's: a
    changed range that reaches back into the interval may name messages the tail already holds
    (a range kept pending while the run that made the tail was under way)."""
    stamps = tail.messages.timestamps
    start = int(np.searchsorted(stamps, moment, "left"))
    now = Messages.coerce(read_messages(moment, float(np.nextafter(tail.newest, math.inf))))
    if len(now) != len(stamps) - start or not np.array_equal(now.timestamps, stamps[start:]):
        return False
    return now.to_dicts() == tail.messages.slice(start, len(stamps)).to_dicts()


def _user_fields(calc: Calculator, stored: list[dict]) -> dict[int, dict]:
    """The fields of stored intervals the engine does not write (user fields), by id."""
    engine = {*calc.engine_keys, *INTERVAL_FIELDS}
    found = {}
    for interval in stored:
        user = {key: value for key, value in interval.items() if key not in engine}
        if user:
            found[interval["id"]] = user
    return found


def _tail_of(
    calc: Calculator, window: Messages, active: dict, raw: Messages, frozen_before: float, messages_begin: float | None
) -> Tail | None:
    """The tail of a window recalculation that reached the newest message with ``active`` open:
    only when that message is the interval's last (the calculator's ``validate_message`` kept it)."""
    stamps = window.timestamps
    if not len(raw) or raw.timestamps[-1] != active["end"] or stamps[-1] != active["end"]:
        return None
    if _frozen(active, frozen_before, messages_begin):
        return None
    start = int(np.searchsorted(stamps, active["begin"], "left"))
    if start >= len(stamps) or stamps[start] != active["begin"]:
        return None
    messages = window.take(np.arange(start, len(stamps)))  # a copy: the window's arrays are let go
    carried = counters_carried(calc, None, messages)
    if carried is None:
        return None
    for counter, values in carried_values(calc, carried):
        # The counters carried over the interval's messages give what its calculation gave, or
        # there is nothing to carry on from.
        if values is not None and not _same_value(values[0], active.get(counter.name, OMIT)):
            return None
    return Tail(calc=calc, interval=dict(active), messages=_last_messages(messages), newest=float(active["end"]),
                counters=carried)


def _same_value(first, second) -> bool:
    """Equal and of the same types, in every part (1 is not 1.0: they are written apart)."""
    if type(first) is not type(second):
        return False
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same_value(first[key], second[key]) for key in first)
    if isinstance(first, list):
        return len(first) == len(second) and all(_same_value(one, other) for one, other in zip(first, second, strict=True))
    return first is second or first == second


def _frozen(interval: Mapping, frozen_before: float, messages_begin: float | None) -> bool:
    return interval["end"] < frozen_before or (
        messages_begin is not None and interval["begin"] < messages_begin
    )


def _diff(calc: Calculator, new: list[dict], old: list[dict], frozen_before, messages_begin) -> Diff:
    frozen_old = [stored for stored in old if _frozen(stored, frozen_before, messages_begin)]
    frozen_ids = {stored["id"] for stored in frozen_old}
    live_old = {stored["id"]: stored for stored in old if stored["id"] not in frozen_ids}
    diff = Diff()
    kept_ids = set()
    for computed in new:
        if _frozen(computed, frozen_before, messages_begin) or computed["id"] in frozen_ids:
            continue
        if any(
            computed["begin"] <= frozen["end"] and computed["end"] >= frozen["begin"] for frozen in frozen_old
        ):
            continue
        kept_ids.add(computed["id"])
        was = live_old.get(computed["id"])
        if was is None:
            diff.created.append(computed)
        elif not same_interval(calc, computed, was):
            diff.updated.append(computed)
    diff.deleted = [stored for identifier, stored in live_old.items() if identifier not in kept_ids]
    return diff


class MemoryStore:
    """Messages and stored intervals of one assignment in memory, with the three read functions
    ``recalculate`` needs. Used by the tests, the benchmark, and callers without a database."""

    def __init__(self, messages=(), intervals: Iterable[Mapping] = ()):
        self.messages = Messages.coerce(list(messages) if not isinstance(messages, Messages) else messages)
        self.intervals: list[dict] = sorted(
            (dict(interval) for interval in intervals),
            key=lambda interval: (interval["begin"], interval["id"]),
        )
        self._begins = [interval["begin"] for interval in self.intervals]
        self.tail: Tail | None = None  # the last recalculation's, when ``keep_tail``

    # -- messages --
    def read_messages(self, begin: float, end: float) -> Messages:
        ts = self.messages.timestamps
        i = int(np.searchsorted(ts, begin, "left"))
        j = int(np.searchsorted(ts, end, "left"))
        return self.messages.slice(i, j)

    def set_messages(self, messages) -> None:
        self.messages = Messages.coerce(messages)

    @property
    def newest(self) -> float | None:
        ts = self.messages.timestamps
        return float(ts[-1]) if len(ts) else None

    @property
    def oldest(self) -> float | None:
        ts = self.messages.timestamps
        return float(ts[0]) if len(ts) else None

    # -- intervals --
    def read_intervals(self, begin: float, end: float) -> list[dict]:
        i = bisect.bisect_left(self._begins, begin)
        j = bisect.bisect_left(self._begins, end)
        return self.intervals[i:j]

    def interval_before(self, moment: float) -> dict | None:
        i = bisect.bisect_left(self._begins, moment)
        return self.intervals[i - 1] if i else None

    def apply(self, diff: Diff) -> None:
        by_id = {stored["id"]: stored for stored in self.intervals}
        for interval in diff.deleted:
            by_id.pop(interval["id"], None)
        for interval in diff.updated:
            user = {
                key: value
                for key, value in by_id.get(interval["id"], {}).items()
                if key not in diff.engine_keys
            }
            by_id[interval["id"]] = {**user, **interval}
        for interval in diff.created:
            by_id[interval["id"]] = dict(interval)
        self.intervals = sorted(by_id.values(), key=lambda stored: (stored["begin"], stored["id"]))
        self._begins = [stored["begin"] for stored in self.intervals]

    def recalculate(
        self,
        calculator,
        *,
        dirty_begin: float,
        dirty_end: float,
        now: float | None = None,
        frozen_before: float | None = -math.inf,
        messages_begin: float | None = None,
        keep_tail: bool = False,
        sources: SourcesGiven | None = None,
    ) -> Diff:
        """``keep_tail``: pass the previous recalculation's tail (``Diff.tail``), as a calc
        worker does, so that appended messages extend the active interval. ``sources``: as
        ``recalculate`` takes them (the chained calculators' intervals)."""
        diff = recalculate(
            calculator=calculator,
            read_messages=self.read_messages,
            read_intervals=self.read_intervals,
            interval_before=self.interval_before,
            dirty_begin=dirty_begin,
            dirty_end=dirty_end,
            now=now,
            frozen_before=frozen_before,
            messages_begin=messages_begin,
            newest=self.newest,
            tail=self.tail if keep_tail else None,
            sources=sources,
        )
        self.tail = diff.tail if keep_tail else None
        return diff
