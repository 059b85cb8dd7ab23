"""Counters (DESIGN 7.5) reduced over all intervals at once.

The messages of every interval are gathered into one frame (``G`` = the concatenated index ranges,
``seg`` = where each interval starts in it); each row's previous row is the previous message of
the same interval, so ``#name`` and ``mileage()`` in a counter never reach outside its interval.
Reductions use ``np.*.reduceat`` over the segments, which sums each interval's values in the same
order whatever else is in the frame, so a window and a full calculation agree to the last bit.

Counters of type ``interval`` and ``accumulator`` are per interval and computed later, in order
(``calculate._interval_pass``).
"""

from __future__ import annotations

import json

import numpy as np

from . import values as V
from .calculator import Calculator, CounterSpec
from .geo import encode_polyline_segments
from .messages import _MISSING, Column, Messages
from .timeutil import strftime
from .vectors import Frame, Vec, vec_from_column

OMIT = object()  # the counter has no value for this interval: its key is left out


class Gathered:
    """The rows of ``messages`` at ``idx``, column by column on demand."""

    def __init__(self, messages: Messages, idx: np.ndarray | None):
        self._m = messages
        self._idx = idx
        self._cols: dict[str, Column | None] = {}
        self.timestamps = messages.timestamps if idx is None else messages.timestamps[idx]

    def __len__(self) -> int:
        return len(self.timestamps)

    def column(self, name: str) -> Column | None:
        if name == "timestamp":
            return Column("num", self.timestamps)
        if name not in self._cols:
            col = self._m.column(name)
            self._cols[name] = col if (col is None or self._idx is None) else col.take(self._idx)
        return self._cols[name]


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _vec_value(vec: Vec, i: int):
    if vec.kind == "num":
        return float(vec.values[i])
    if vec.kind == "bool":
        return bool(vec.values[i])
    return vec.values[i]


class Reducer:
    def __init__(self, frame: Frame, seg: np.ndarray, count: int):
        self.frame = frame
        self.seg = seg
        self.m = frame.n
        self.seg_end = np.append(seg[1:], self.m)
        self.count = count
        self.pos = np.arange(self.m)

    def first_pos(self, valid):
        fp = np.minimum.reduceat(np.where(valid, self.pos, self.m), self.seg)
        return fp, fp < self.seg_end

    def last_pos(self, valid):
        lp = np.maximum.reduceat(np.where(valid, self.pos, -1), self.seg)
        return lp, lp >= self.seg

    def numeric(self, method: str, x: np.ndarray, valid: np.ndarray) -> list:
        seg = self.seg
        cnt = np.add.reduceat(valid.astype(np.int64), seg)
        has = cnt > 0
        if method == "summary":
            r = np.add.reduceat(np.where(valid, x, 0.0), seg)
            return r.tolist()
        if method == "average":
            s = np.add.reduceat(np.where(valid, x, 0.0), seg)
            r = s / np.maximum(cnt, 1)
        elif method == "minimum":
            r = np.minimum.reduceat(np.where(valid, x, np.inf), seg)
        elif method == "maximum":
            r = np.maximum.reduceat(np.where(valid, x, -np.inf), seg)
        elif method == "difference":
            fp, _ = self.first_pos(valid)
            lp, _ = self.last_pos(valid)
            r = x[np.minimum(lp, self.m - 1)] - x[np.minimum(fp, self.m - 1)]
        else:
            raise AssertionError(method)
        return [v if h else OMIT for v, h in zip(r.tolist(), has.tolist(), strict=True)]

    def duration(self, truthy: np.ndarray) -> list:
        ts = self.frame.timestamps
        d = np.zeros(self.m)
        if self.m > 1:
            d[:-1] = ts[1:] - ts[:-1]
        d[self.seg_end - 1] = 0.0
        return np.add.reduceat(np.where(truthy, d, 0.0), self.seg).tolist()


def _numeric_of(vec: Vec, n: int):
    """Float values and where they are numbers or booleans."""
    if vec.kind == "obj":
        objs = vec.values.tolist()
        ok = np.fromiter((V.as_number(o) is not V.ERROR for o in objs), bool, n)
        x = np.fromiter(
            (V.as_number(o) if ok_ else 0.0 for o, ok_ in zip(objs, ok.tolist(), strict=True)), np.float64, n
        )
        return x, ok
    return vec.floats(), np.ones(n, bool)


def reduce_values(red: Reducer, method: str, vec: Vec, valid: np.ndarray, raw: Column | None = None) -> list:
    """One counter's values per interval; ``raw`` (a parameter's column) gives first/last/distinct
    their original JSON values."""
    n = red.m
    if method in ("first", "last"):
        p, has = red.first_pos(valid) if method == "first" else red.last_pos(valid)
        out = []
        for i, h in zip(p.tolist(), has.tolist(), strict=True):
            if not h:
                out.append(OMIT)
            elif raw is not None:
                out.append(raw.value(i))
            else:
                out.append(_vec_value(vec, i))
        return out
    if method == "duration":
        return red.duration(valid & vec.truth())
    if method == "distinct":
        objs = raw.to_objects() if raw is not None else vec.to_objects(n)
        out = []
        valid_l = valid.tolist()
        for s, e in zip(red.seg.tolist(), red.seg_end.tolist(), strict=True):
            seen: dict = {}
            for i in range(s, e):
                if not valid_l[i]:
                    continue
                o = objs[i]
                try:
                    key = json.dumps(o, sort_keys=True)
                except (TypeError, ValueError):
                    key = repr(o)
                if isinstance(o, bool):
                    key = "b:" + key
                seen.setdefault(key, o)
            out.append(list(seen.values()))
        return out
    x, ok = _numeric_of(vec, n)
    return red.numeric(method, x, valid & ok)


def message_counters(
    calc: Calculator,
    messages: Messages,
    S: np.ndarray,
    E: np.ndarray,
    active: np.ndarray,
    geofence_idx: np.ndarray | None,
) -> list[tuple[CounterSpec, list | None]]:
    """Values of every counter that depends only on the interval's own messages, in counter order
    (``None`` for interval/accumulator counters, filled later)."""
    k = len(S)
    out: list[tuple[CounterSpec, list | None]] = []
    if not calc.counters:
        return out
    L = E - S + 1
    total = int(L.sum())
    seg = np.cumsum(L) - L
    n = len(messages)
    contiguous = k > 0 and S[0] == 0 and E[-1] == n - 1 and (k == 1 or (S[1:] == E[:-1] + 1).all())
    G = None if contiguous else np.repeat(S - seg, L) + np.arange(total)
    prev_valid = np.ones(total, bool)
    prev_valid[seg] = False
    frame = Frame(Gathered(messages, G), prev_valid)
    red = Reducer(frame, seg, k)
    ts = messages.timestamps
    for spec in calc.counters:
        t = spec.type
        if k == 0:
            out.append((spec, []))
            continue
        if t in ("interval", "accumulator"):
            out.append((spec, None))
            continue
        vm = np.ones(total, bool) if spec.validate is None else spec.validate.evaluate_frame(frame).truth()
        if t == "expression":
            # compile_calculator requires the expression and the method of this counter type
            assert spec.expression is not None and spec.method is not None
            vec = spec.expression.evaluate_frame(frame)
            valid = vm & _present(vec, total)
            out.append((spec, reduce_values(red, spec.method, vec, valid)))
        elif t == "parameter":
            # compile_calculator requires the method and defaults the parameter to the name
            assert spec.parameter is not None and spec.method is not None
            col = frame.column(spec.parameter)
            vec = vec_from_column(col, total, "null")
            valid = vm & _present(vec, total)
            out.append((spec, reduce_values(red, spec.method, vec, valid, raw=col)))
        elif t == "route":
            lat, lon, ok = frame.position()
            ok = ok & vm
            pts = np.flatnonzero(ok)
            starts = np.searchsorted(pts, seg)
            out.append((spec, encode_polyline_segments(lat[pts], lon[pts], starts)))
        elif t == "dataset":
            cols = [(name, expr.evaluate_frame(frame).to_objects(total)) for name, expr in spec.fields]
            rows = []
            vml = vm.tolist()
            for s, e in zip(seg.tolist(), red.seg_end.tolist(), strict=True):
                rows.append(
                    [
                        {name: (None if vals[i] is V.ERROR else vals[i]) for name, vals in cols}
                        for i in range(s, e)
                        if vml[i]
                    ]
                )
            out.append((spec, rows))
        elif t == "message":
            p, has = red.first_pos(vm) if spec.method == "first" else red.last_pos(vm)
            fcols = [(f, frame.column(f)) for f in spec.fields]
            vals = []
            for i, h in zip(p.tolist(), has.tolist(), strict=True):
                if not h:
                    vals.append(OMIT)
                    continue
                d = {}
                for f, col in fcols:
                    if col is not None:
                        v = col.value(i)
                        if v is not _MISSING:
                            d[f] = v
                vals.append(d)
            out.append((spec, vals))
        elif t == "datetime":
            at = ts[S] if spec.method == "begin" else ts[E]
            out.append((spec, [strftime(x, calc.tz, spec.value) for x in at.tolist()]))
        elif t == "specified":
            out.append((spec, [spec.value] * k))
        elif t == "active":
            out.append((spec, active.tolist()))
        elif t == "geofence":
            names = [g.name for g in calc.geofences]
            if geofence_idx is None:
                out.append((spec, [OMIT] * k))
                continue
            gi = geofence_idx if G is None else geofence_idx[G]
            hit = gi >= 0
            p, has = red.first_pos(hit)
            out.append(
                (spec, [names[gi[i]] if h else OMIT for i, h in zip(p.tolist(), has.tolist(), strict=True)])
            )
        else:
            raise AssertionError(t)
    return out


def _present(vec: Vec, n: int) -> np.ndarray:
    m = np.ones(n, bool)
    if vec.null is not None:
        m &= ~vec.null
    if vec.err is not None:
        m &= ~vec.err
    return m
