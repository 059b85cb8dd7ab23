"""Selectors (DESIGN 7.4) over a frame of validated messages, vectorised.

Each selector gives its intervals as inclusive index ranges ``S``/``E`` into the frame, with
``open_`` telling which of them reach the newest message without a rule having closed them.
``clean_cuts`` answers, for the windowed recalculation, where the selector's result provably
splits into "before" and "after" (see docs/engine.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .calculator import SelectorSpec
from .expressions import Frame
from .geo import first_containing
from .timeutil import period_keys


@dataclass
class Runs:
    S: np.ndarray
    E: np.ndarray
    open_: np.ndarray  # bool per run
    geofence_idx: np.ndarray | None = None  # per message, for geofence selectors


def _empty() -> Runs:
    z = np.zeros(0, dtype=np.int64)
    return Runs(z, z, np.zeros(0, bool))


def raw_state(spec: SelectorSpec, frame: Frame):
    """Per message: 1 on, 0 off, -1 unknown (after ``invert``), plus value codes for ``change``
    and the geofence index for geofence selectors."""
    n = frame.n
    codes = None
    gidx = None
    if spec.type == "expression":
        assert spec.expression is not None  # compiled for every expression selector by compile_calculator
        v = spec.expression.evaluate_frame(frame)
        err = np.zeros(n, bool) if v.err is None else v.err
        if spec.method == "change":
            null = np.zeros(n, bool) if v.null is None else v.null
            st = np.where(err, -1, np.where(null, 0, 1)).astype(np.int8)
            codes = _codes(v, n)
        else:
            st = np.where(err, -1, np.where(v.truth(), 1, 0)).astype(np.int8)
    else:
        lat, lon, valid = frame.position()
        gidx = first_containing(spec.geofences, lat, lon, valid)
        st = np.where(~valid, -1, np.where(gidx >= 0, 1, 0)).astype(np.int8)
    if spec.options.get("invert") and spec.method != "change":
        st = np.where(st == 1, 0, np.where(st == 0, 1, st)).astype(np.int8)
    return st, codes, gidx


def _codes(v, n) -> np.ndarray:
    """An integer per message, equal where the values are equal."""
    if v.kind == "num":
        _, inv = np.unique(v.values, return_inverse=True)
        return inv.astype(np.int64)
    if v.kind == "bool":
        return v.values.astype(np.int64)
    table: dict = {}
    out = np.empty(n, dtype=np.int64)
    for i, o in enumerate(v.values.tolist()):
        try:
            key = (type(o).__name__, o)
            hash(key)
        except TypeError:
            key = ("json", json.dumps(o, sort_keys=True))
        if isinstance(o, bool):
            key = ("bool", o)
        elif isinstance(o, int | float):
            key = ("num", float(o))
        out[i] = table.setdefault(key, len(table))
    return out


def _runs(on: np.ndarray, brk: np.ndarray):
    n = len(on)
    prev_on = np.zeros(n, bool)
    prev_on[1:] = on[:-1]
    next_on = np.zeros(n, bool)
    next_on[:-1] = on[1:]
    next_brk = np.zeros(n, bool)
    next_brk[:-1] = brk[1:]
    S = np.flatnonzero(on & (~prev_on | brk))
    E = np.flatnonzero(on & (~next_on | next_brk))
    return S, E


def select(spec: SelectorSpec, frame: Frame, *, now: float | None, tz) -> Runs:
    n = frame.n
    if n == 0:
        return _empty()
    ts = frame.timestamps
    if spec.type == "datetime":
        split = spec.split
        assert split is not None  # required of a datetime selector by compile_calculator
        keys = period_keys(ts, tz, split)
        brk = np.zeros(n, bool)
        brk[1:] = keys[1:] != keys[:-1]
        S, E = _runs(np.ones(n, bool), brk)
        open_ = n - 1 == E
        if now is not None and len(S):
            now_key = period_keys(np.array([float(now)]), tz, split)[0]
            if now_key != keys[-1]:
                open_ = np.zeros(len(S), bool)
        return Runs(S, E, open_)
    if spec.type == "inactive":
        gap = np.diff(ts) > spec.delay_threshold
        S = np.flatnonzero(gap)
        return Runs(S, S + 1, np.zeros(len(S), bool))

    o = spec.options
    st, codes, gidx = raw_state(spec, frame)
    idx = np.arange(n)
    if o["merge_unknown"]:
        known = st != -1
        src = np.maximum.accumulate(np.where(known, idx, -1))
        on = np.where(src >= 0, st[np.maximum(src, 0)] == 1, False)
    else:
        src = idx
        on = st == 1
    brk = np.zeros(n, bool)
    if codes is not None:
        c = codes[np.maximum(src, 0)]
        brk[1:] = c[1:] != c[:-1]
    mmtd = o["max_messages_time_diff"]
    if mmtd > 0:
        brk[1:] |= np.diff(ts) > mmtd
    S, E = _runs(on, brk)
    if o["min_active"] > 0 and len(S):
        keep = ts[E] - ts[S] >= o["min_active"]
        S, E = S[keep], E[keep]
    X = o["max_inactive"]
    if X > 0 and len(S) > 1:
        join = ts[S[1:]] - ts[E[:-1]] <= X
        if codes is not None:
            c = codes[np.maximum(src, 0)]
            join &= c[S[1:]] == c[E[:-1]]
        starts = np.concatenate(([True], ~join))
        ends = np.concatenate((~join, [True]))
        S, E = S[starts], E[ends]
    open_ = n - 1 == E
    if X > 0 and now is not None and float(now) - ts[-1] > X:
        open_ = np.zeros(len(S), bool)
    if o["merge_message_before"]:
        S = np.where(S > 0, S - 1, S)
    if o["merge_message_after"]:
        E = np.minimum(E + 1, n - 1)
    if o["min_duration"] > 0 and len(S):
        keep = ts[E] - ts[S] >= o["min_duration"]
        S, E, open_ = S[keep], E[keep], open_[keep]
    return Runs(S, E, open_, gidx)


def intersect(a: Runs, b: Runs) -> tuple[Runs, np.ndarray, np.ndarray]:
    """Overlaps of two families of runs; also the index of the run of each that gave each."""
    if not len(a.S) or not len(b.S):
        z = np.zeros(0, dtype=np.int64)
        return Runs(z, z, np.zeros(0, bool)), z, z
    run_max_e = np.maximum.accumulate(b.E)
    lo = np.searchsorted(run_max_e, a.S, "left")
    hi = np.searchsorted(b.S, a.E, "right")
    cnt = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(len(a.S)), cnt)
    offs = np.cumsum(cnt) - cnt
    ib = np.arange(cnt.sum()) - np.repeat(offs, cnt) + np.repeat(lo, cnt)
    S = np.maximum(a.S[ia], b.S[ib])
    E = np.minimum(a.E[ia], b.E[ib])
    keep = S <= E
    S, E, ia, ib = S[keep], E[keep], ia[keep], ib[keep]
    order = np.lexsort((E, S))
    S, E, ia, ib = S[order], E[order], ia[order], ib[order]
    if len(S) > 1:
        # Two runs of one selector sharing a message can give the same overlap twice.
        first = np.ones(len(S), bool)
        first[1:] = (S[1:] != S[:-1]) | (E[1:] != E[:-1])
        S, E, ia, ib = S[first], E[first], ia[first], ib[first]
    open_ = a.open_[ia] & b.open_[ib]
    return Runs(S, E, open_), ia, ib


def clean_cuts(spec: SelectorSpec, frame: Frame, tz):
    """Where the windowed recalculation may cut this selector's message stream.

    For each index c (the cut between messages c-1 and c) returns:

    * ``strict[c]``: no interval of this selector spans the cut, none can join across it, and
      nothing before c changes what the selector does from c on;
    * ``transparent[c]``: an interval of this selector may span the cut, but cutting it there
      changes nothing it contributes from c on (no rule looks at a run's length or joins runs,
      and with ``merge_unknown`` the state at c-1 is known);
    * ``need[c]``: the earliest message whose state those answers rely on (its own previous
      message must be in the window too).

    Index 0 is never reported (the caller handles the start of the history).
    """
    n = frame.n
    ts = frame.timestamps
    strict = np.zeros(n, bool)
    need = np.arange(n) - 1
    if n < 2:
        return strict, strict.copy(), need
    if spec.type == "datetime":
        split = spec.split
        assert split is not None  # required of a datetime selector by compile_calculator
        keys = period_keys(ts, tz, split)
        strict[1:] = keys[1:] != keys[:-1]
        transparent = np.ones(n, bool)
        transparent[0] = False
        return strict, transparent, need
    if spec.type == "inactive":
        # Never transparent: the gap's interval holds the message before the gap only because of
        # the message after it, so a window ending inside a gap would lose that message's interval.
        strict[1:] = np.diff(ts) <= spec.delay_threshold
        return strict, np.zeros(n, bool), need
    o = spec.options
    st, _, _ = raw_state(spec, frame)
    off = (st == 0) if o["merge_unknown"] else (st != 1)
    strict[1:] = off[:-1]
    if o["merge_message_before"] or o["merge_message_after"]:
        strict &= off
    X = o["max_inactive"]
    if X > 0:
        j0 = np.searchsorted(ts, ts - X, "left")
        not_off = np.concatenate(([0], np.cumsum(~off)))
        # every message from j0 to c-1 is off
        strict &= (not_off[np.arange(n)] - not_off[j0]) == 0
        need = np.minimum(need, j0)
    transparent = np.zeros(n, bool)
    if not (o["min_active"] > 0 or o["min_duration"] > 0 or X > 0):
        transparent[1:] = (st[:-1] != -1) if o["merge_unknown"] else True
        if o["merge_message_before"]:
            # Message c-1 joins the run that message c starts: a window ending at the cut would
            # not see why. Only where c is off can it start nothing.
            transparent &= off
    return strict, transparent, need
