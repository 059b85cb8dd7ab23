"""Full calculation: messages + calculator -> intervals (DESIGN 7.6)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import values as V
from .calculator import Calculator, compile_calculator
from .counters import OMIT, message_counters
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


def select_all(calc: Calculator, frame: Frame, now: float | None) -> Runs:
    runs = None
    for spec in calc.selectors:
        r = select(spec, frame, now=now, tz=calc.tz)
        runs = r if runs is None else intersect(runs, r)[0]
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
) -> IntervalList:
    """Intervals over validated ``messages``.

    ``keep_from``: only intervals beginning at or after it are kept (a window's lead-in).
    ``previous``: the interval before the first kept one, for ``previous()`` and accumulators.
    ``reached_end``: whether the last message is the device's newest (else nothing is active).
    """
    out = IntervalList()
    n = len(messages)
    if n == 0:
        return out
    frame = Frame(messages)
    runs = select_all(calc, frame, now)
    S, E, open_ = runs.S, runs.E, runs.open_
    ts = messages.timestamps
    if keep_from is not None and len(S):
        keep = ts[S] >= keep_from
        S, E, open_ = S[keep], E[keep], open_[keep]
    k = len(S)
    if k == 0:
        return out
    active = open_ & (n - 1 == E) & reached_end
    if k > 1:
        active[:-1] = False
    geofence_idx = None
    if any(c.type == "geofence" for c in calc.counters):
        lat, lon, ok = frame.position()
        geofence_idx = first_containing(calc.geofences, lat, lon, ok)
    cols = message_counters(calc, messages, S, E, active, geofence_idx)
    begin = ts[S]
    end = ts[E]
    raw_ids = np.round(begin * 1_000_000).astype(np.int64)
    # Intervals sharing a begin (possible when runs share a message through the merge options
    # and selectors overlap) are numbered by their end: the n-th of them adds n microseconds.
    # That depends only on intervals with that begin, so a window gives the same ids.
    ar = np.arange(k, dtype=np.int64)
    new_begin = np.ones(k, bool)
    new_begin[1:] = raw_ids[1:] != raw_ids[:-1]
    ids = raw_ids + ar - np.maximum.accumulate(np.where(new_begin, ar, 0))
    rows = zip(ids.tolist(), begin.tolist(), end.tolist(), strict=True)
    if not calc.needs_interval_pass:
        col_lists = []
        for spec, vals in cols:
            assert vals is not None  # only interval and accumulator counters need the interval pass
            col_lists.append((spec.name, vals))
        for j, (iid, b, e) in enumerate(rows):
            d = {"id": iid, "begin": b, "end": e, "duration": e - b}
            for name, vals in col_lists:
                v = vals[j]
                if v is not OMIT:
                    d[name] = v
            out.append(d)
        if active[-1]:
            out.active_id = out[-1]["id"]
        return out
    return _interval_pass(calc, rows, cols, active, previous, out)


def _interval_pass(calc, rows, cols, active, previous, out: IntervalList) -> IntervalList:
    """Counters that look at the interval itself or at the one before it, in order."""
    prev = dict(previous) if previous is not None else None
    last_kept_active = False
    for j, (iid, b, e) in enumerate(rows):
        d = {"id": iid, "begin": b, "end": e, "duration": e - b}
        for spec, vals in cols:
            if vals is not None:
                v = vals[j]
                if v is not OMIT:
                    d[spec.name] = v
                continue
            if spec.type == "interval":
                v = spec.expression.evaluate_raw(d, prev)
                if v is not None and v is not V.ERROR:
                    d[spec.name] = v
                continue
            # accumulator
            raw_own = d.get(spec.parameter)
            own = V.as_number(raw_own) if raw_own is not None else V.ERROR
            carry = None
            if (
                prev is not None
                and V.is_number(prev.get(spec.name))
                and (spec.method is None or _same_period(calc, prev["begin"], b, spec.method))
            ):
                carry = float(prev[spec.name])
            if isinstance(own, float):  # as_number gives a float or ERROR
                d[spec.name] = (carry or 0.0) + own
            elif carry is not None:
                d[spec.name] = carry
        if calc.validate_interval is not None and not calc.validate_interval.matches(d, prev):
            last_kept_active = False
            continue
        out.append(d)
        prev = d
        last_kept_active = bool(active[j])
    if out and last_kept_active:
        out.active_id = out[-1]["id"]
    return out


def _same_period(calc: Calculator, t1: float, t2: float, split: str) -> bool:
    keys = period_keys(np.array([float(t1), float(t2)]), calc.tz, split)
    return keys[0] == keys[1]


def calculate(messages, calculator, *, now: float | None = None) -> IntervalList:
    """All intervals of ``messages`` (a list of message dicts, or ``Messages``) under
    ``calculator`` (a configuration dict or a compiled ``Calculator``)."""
    calc = compile_calculator(calculator)
    msgs = Messages.coerce(messages)
    return compute(calc, validated(calc, msgs), now=now)


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
        elif spec.type == "datetime":
            assert spec.split is not None  # required of a datetime selector by compile_calculator
            deadlines.append(_next_period(calc, float(newest), spec.split))
    return min(deadlines) if deadlines else None


def _next_period(calc: Calculator, t: float, split: str) -> float:
    key = period_keys(np.array([t]), calc.tz, split)[0]
    grid = t + np.arange(1, 24 * 367 + 2, dtype=np.float64) * 3600.0
    later = np.flatnonzero(period_keys(grid, calc.tz, split) != key)
    hi = float(grid[later[0]])
    lo = hi - 3600.0 if later[0] else t
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if period_keys(np.array([mid]), calc.tz, split)[0] != key:
            hi = mid
        else:
            lo = mid
    return round(hi, 6)
