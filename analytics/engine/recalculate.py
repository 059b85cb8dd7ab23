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

from .calculate import compute, validated
from .calculator import Calculator, compile_calculator
from .expressions import Frame
from .messages import Messages
from .selectors import clean_cuts

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
    ``messages_read`` how many messages were read (for benchmarks and logs).
    """

    created: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)
    deleted: list[dict] = field(default_factory=list)
    active_id: int | None = None
    reached_end: bool = False
    window: tuple[float, float] = (math.inf, -math.inf)
    messages_read: int = 0
    engine_keys: tuple = ()

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


def same_interval(calc: Calculator, new: Mapping, old: Mapping) -> bool:
    """Equal in every field the engine writes (user fields and ``timestamp`` are ignored)."""
    return all(new.get(k, _MISSING) == old.get(k, _MISSING) for k in calc.engine_keys)


def _cut_info(calc: Calculator, F: Messages, from_start: bool):
    """Clean cuts of the whole calculator: strict for at least one selector (so no interval of
    the calculator spans the cut), and strict or transparent for every selector. ``need[c]``:
    the earliest message whose state the cut relies on (its previous message is the window's
    first); -1 where the cut cannot be used (what it relies on lies before ``F``)."""
    frame = Frame(F)
    n = len(F)
    any_strict = np.zeros(n, bool)
    every = np.ones(n, bool)
    need = np.arange(n) - 1
    for spec in calc.selectors:
        strict, transparent, nd = clean_cuts(spec, frame, calc.tz)
        any_strict |= strict
        every &= strict | transparent
        need = np.minimum(need, nd)
    if any(s.expression is not None and s.expression.reads_previous_position for s in calc.selectors):
        need = _reach_previous_position(frame, need, from_start)
    return any_strict & every, need


def _reach_previous_position(frame: Frame, need: np.ndarray, from_start: bool) -> np.ndarray:
    """``mileage()`` of the first positioned message at or after ``need`` measures from the last
    positioned message before it, however far back: the cut relies on that one too. Where ``F``
    holds none (and does not start at the history's start), the cut cannot be used yet."""
    n = frame.n
    valid = frame.position()[2]
    idx = np.arange(n)
    last = np.maximum.accumulate(np.where(valid, idx, -1))  # last positioned at or before i
    nxt = np.minimum.accumulate(np.where(valid, idx, n)[::-1])[::-1]  # first at or after i
    at = np.clip(need, 0, n - 1)
    before = np.where(need >= 1, last[np.clip(need - 1, 0, n - 1)], -1)
    looks_back = (need >= 0) & (nxt[at] < n)
    reached = np.where(before >= 0, np.minimum(need, before + 1), need if from_start else -1)
    return np.where(looks_back, reached, need)


def _first_known(calc: Calculator, raw: Messages, F: Messages, from_start: bool) -> int:
    """The first index of ``F`` a window may start at: the calculator's ``validate_message``
    cannot be decided here for the first raw message when it reads ``#name``, nor for the first
    positioned one when it reads ``mileage()`` (what they look back to lies before the read)."""
    vm = calc.validate_message
    if from_start or vm is None or not len(F) or not len(raw):
        return 0
    unknown = []
    if vm.reads_previous:
        unknown.append(0)
    if vm.reads_previous_position:
        valid = Frame(raw).position()[2]
        if valid.any():
            unknown.append(int(np.argmax(valid)))
    r0 = 0
    ts = F.timestamps
    for u in unknown:
        t = raw.timestamps[u]
        k = int(np.searchsorted(ts, t))
        # Present: exclude it from the window; absent: the message after it has the wrong
        # previous message.
        r0 = max(r0, k + 1 if k < len(ts) and ts[k] == t else k)
    return r0


def _validity_settled(
    calc: Calculator, raw: Messages, after: np.ndarray, dirty_end: float
) -> np.ndarray | None:
    """For the cut after the dirty range, when the calculator's ``validate_message`` reads
    ``mileage()``: whether the validity of the raw messages after each time in ``after`` looks
    back only to positions after the dirty range (``None``: it reads no position)."""
    vm = calc.validate_message
    if vm is None or not vm.reads_previous_position:
        return None
    valid = Frame(raw).position()[2]
    pos_ts = raw.timestamps[valid]
    if not len(pos_ts):
        return None
    j = np.searchsorted(pos_ts, after, "right")
    has_later = j < len(pos_ts)
    back = np.where(j > 0, pos_ts[np.maximum(j - 1, 0)], -math.inf)
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
      period ending) passes the newest message's timestamp for both.
    * ``now``: wall-clock time, for closing the active interval by ``max_inactive`` or by a
      ``datetime`` period's end.
    * ``frozen_before``: stored intervals ending before it are never changed, and no interval
      ending before it is created (defaults to ``now - update_period``; pass ``-inf`` for none).
    * ``messages_begin``: the oldest message still available (older ones expired by
      ``messages_ttl``); stored intervals beginning before it are frozen too.
    * ``newest``: the device's newest message timestamp, if the caller knows it (saves reads
      when looking forward for the end of the window).

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
    if frozen_before is None:
        frozen_before = (now - calc.update_period) if now is not None else -math.inf
    reach = max([s.options.get("max_inactive", 0) or 0 for s in calc.selectors] + [0])

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
        a = dirty_begin - span_b if math.isfinite(dirty_begin) and span_b < 1e11 else -math.inf
        b = dirty_end + span_f if math.isfinite(dirty_end) and span_f < 1e11 else math.inf
        from_start = a == -math.inf or (messages_begin is not None and a < messages_begin)
        to_end = b == math.inf or (newest is not None and b > newest)
        if have is None:
            raw = Messages.coerce(read_messages(a, b))
            read += len(raw)
        else:
            assert raw is not None  # read together with ``have``
            parts = []
            if a < have[0]:
                parts.append(Messages.coerce(read_messages(a, have[0])))
            parts.append(raw)
            if b > have[1]:
                parts.append(Messages.coerce(read_messages(have[1], b)))
            read += sum(len(p) for p in parts) - len(raw)
            raw = Messages.concat(parts) if len(parts) > 1 else raw
        have = (min(a, have[0]) if have else a, max(b, have[1]) if have else b)
        F = validated(calc, raw)
        ts = F.timestamps
        nF = len(F)
        r0 = _first_known(calc, raw, F, from_start)
        clean, need = _cut_info(calc, F, from_start) if nF else (np.zeros(0, bool), np.zeros(0, np.int64))

        # The cut before the dirty range: the latest clean one, or the start of the history.
        back = np.flatnonzero(clean & (ts < dirty_begin) & (need - 1 >= r0))
        if len(back):
            c = int(back[-1])
            w = int(need[c]) - 1
        elif from_start:
            c = 0
            w = 0
        else:
            span_b *= 4
            continue

        # The cut after it: the first clean one whose whole context lies after the range.
        ok_f = clean & (np.arange(nF) > c) & (need >= 2)
        ctx = np.where(need >= 2, need - 2, 0)
        ok_f &= ts[ctx] > dirty_end
        settled = _validity_settled(calc, raw, ts[ctx], dirty_end) if nF else None
        if settled is not None:
            ok_f &= settled
        ok_f &= ts > forward_floor
        fwd = np.flatnonzero(ok_f)
        if len(fwd):
            c2 = int(fwd[-1] if greedy else fwd[0])
            end_reached = False
        elif to_end:
            c2 = nF
            end_reached = True
        else:
            span_f *= 4
            continue

        keep_from = float(ts[c]) if (c > 0 or not from_start) and nF else None
        previous = interval_before(keep_from) if keep_from is not None else None
        window = F.slice(w, c2)
        new = compute(calc, window, now=now, reached_end=end_reached, keep_from=keep_from, previous=previous)
        hi = float(ts[c2]) if c2 < nF else math.inf
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
        lo = keep_from if keep_from is not None else -math.inf
        old = read_intervals(lo, hi)
        diff = _diff(calc, new, old, frozen_before, messages_begin)
        diff.reached_end = end_reached
        diff.active_id = new.active_id if end_reached else None
        diff.window = (lo, hi)
        diff.messages_read = read
        diff.engine_keys = calc.engine_keys
        return diff
    raise RuntimeError("recalculation window did not settle")  # pragma: no cover


def _frozen(iv: Mapping, frozen_before: float, messages_begin: float | None) -> bool:
    return iv["end"] < frozen_before or (messages_begin is not None and iv["begin"] < messages_begin)


def _diff(calc: Calculator, new: list[dict], old: list[dict], frozen_before, messages_begin) -> Diff:
    frozen_old = [o for o in old if _frozen(o, frozen_before, messages_begin)]
    frozen_ids = {o["id"] for o in frozen_old}
    live_old = {o["id"]: o for o in old if o["id"] not in frozen_ids}
    diff = Diff()
    kept_ids = set()
    for iv in new:
        if _frozen(iv, frozen_before, messages_begin) or iv["id"] in frozen_ids:
            continue
        if any(iv["begin"] <= f["end"] and iv["end"] >= f["begin"] for f in frozen_old):
            continue
        kept_ids.add(iv["id"])
        was = live_old.get(iv["id"])
        if was is None:
            diff.created.append(iv)
        elif not same_interval(calc, iv, was):
            diff.updated.append(iv)
    diff.deleted = [o for i, o in live_old.items() if i not in kept_ids]
    return diff


class MemoryStore:
    """Messages and stored intervals of one assignment in memory, with the three read functions
    ``recalculate`` needs. Used by the tests, the benchmark, and callers without a database."""

    def __init__(self, messages=(), intervals: Iterable[Mapping] = ()):
        self.messages = Messages.coerce(list(messages) if not isinstance(messages, Messages) else messages)
        self.intervals: list[dict] = sorted((dict(i) for i in intervals), key=lambda i: (i["begin"], i["id"]))
        self._begins = [i["begin"] for i in self.intervals]

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

    def interval_before(self, t: float) -> dict | None:
        i = bisect.bisect_left(self._begins, t)
        return self.intervals[i - 1] if i else None

    def apply(self, diff: Diff) -> None:
        by_id = {i["id"]: i for i in self.intervals}
        for d in diff.deleted:
            by_id.pop(d["id"], None)
        for d in diff.updated:
            user = {k: v for k, v in by_id.get(d["id"], {}).items() if k not in diff.engine_keys}
            by_id[d["id"]] = {**user, **d}
        for d in diff.created:
            by_id[d["id"]] = dict(d)
        self.intervals = sorted(by_id.values(), key=lambda i: (i["begin"], i["id"]))
        self._begins = [i["begin"] for i in self.intervals]

    def recalculate(
        self,
        calculator,
        *,
        dirty_begin: float,
        dirty_end: float,
        now: float | None = None,
        frozen_before: float | None = -math.inf,
        messages_begin: float | None = None,
    ) -> Diff:
        return recalculate(
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
        )
