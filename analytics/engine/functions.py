"""The functions of the expression language (DESIGN 7.3), each defined once: its name, how many
arguments it takes, and its row and column implementations.

* ``row(fs, ctx, literal)`` builds the per-message closure ``(message, previous, positioned) ->
  value`` from the closures of the arguments; ``None`` means "apply ``scalar`` to the argument
  values".
* ``column(args, frame, ctx, literal)`` computes the columnar value from the arguments' ``Vec``s.
* ``literal``: the function takes a quoted name as its first argument (``exists('din.1')``) and
  the implementations receive it.
* ``rewrite``: the parser replaces the call by another node (``not(x)`` is ``!x``,
  ``previous('x')`` is ``#x``); such a function has no implementations of its own.
* ``reads_position`` / ``reads_previous_position``: what ``Calculator.parameters`` and the
  windowed recalculation need to know.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import values as V
from .geo import Geofence, first_containing, haversine, haversine_vec
from .timeutil import MAX_TS, MIN_TS, fields, in_range, scalar_field
from .vectors import LAT, LON, Frame, Vec, and_not, any_of, errmask, fallback, is_typed, vec_unary_num

RowFn = Callable[[Any, Any, Any], Any]


class Context(NamedTuple):
    """What an expression is compiled with: the calculator timezone and its geofences."""

    tz: Any
    geofences: Sequence[Geofence]


@dataclass(frozen=True)
class Function:
    name: str
    min_args: int
    max_args: int
    scalar: Callable | None = None
    row: Callable[[list[RowFn], Context, str | None], RowFn] | None = None
    column: Callable[[list[Vec], Frame, Context, str | None], Vec] | None = None
    literal: bool = False
    rewrite: str | None = None  # "not" or "previous"
    reads_position: bool = False
    reads_previous_position: bool = False

    def build_row(self, fs: list[RowFn], ctx: Context, literal: str | None) -> RowFn:
        if self.row is not None:
            return self.row(fs, ctx, literal)
        fn = self.scalar
        assert fn is not None  # every function has a row builder or a scalar definition
        if len(fs) == 1:
            f0 = fs[0]
            return lambda c, p, q: fn(f0(c, p, q))
        if len(fs) == 2:
            f0, f1 = fs
            return lambda c, p, q: fn(f0(c, p, q), f1(c, p, q))
        return lambda c, p, q: fn(*(f(c, p, q) for f in fs))


def position_of(d) -> tuple[float, float] | None:
    if d is None:
        return None
    lat = d.get(LAT)
    lon = d.get(LON)
    if V.is_number(lat) and V.is_number(lon):
        return float(lat), float(lon)
    return None


# ---- if, exists, isnull, conversions -------------------------------------------------------------


def _row_if(fs, ctx, literal):
    fc, fa, fb = fs

    def if_(c, p, q):
        cond = fc(c, p, q)
        if cond is V.ERROR:
            return V.ERROR
        return fa(c, p, q) if V.truth(cond) else fb(c, p, q)

    return if_


def _col_if(args, frame, ctx, literal):
    c, a, b = args
    n = frame.n
    if a.kind == b.kind and a.kind != "obj":
        cond = np.broadcast_to(c.truth(), (n,))
        vals = np.where(cond, a.values, b.values)
        an = np.zeros(1, bool) if a.null is None else a.null
        bn = np.zeros(1, bool) if b.null is None else b.null
        ae = np.zeros(1, bool) if a.err is None else a.err
        be = np.zeros(1, bool) if b.err is None else b.err
        null = np.where(cond, an, bn)
        err = np.where(cond, ae, be)
        if c.err is not None:
            err = err | c.err
            null = null & ~c.err
        return Vec(a.kind, vals, null if null.any() else None, err if err.any() else None)
    return fallback(V.fn_if, args, n)


def _row_exists(fs, ctx, key):
    return lambda c, p, q: key in c


def _col_exists(args, frame, ctx, key):
    col = frame.column(key)
    return Vec("bool", np.zeros(frame.n, bool) if col is None else col.present_mask())


def _col_isnull(args, frame, ctx, literal):
    a = args[0]
    null = np.zeros(1, bool) if a.null is None else a.null
    err = a.err
    r = null if err is None else (null & ~err)
    return Vec("bool", r, None, err)


def _col_tonumber(args, frame, ctx, literal):
    a = args[0]
    if is_typed(a):
        return Vec("num", a.floats(), a.null, a.err)
    return fallback(V.fn_tonumber, args, frame.n)


def _col_toboolean(args, frame, ctx, literal):
    a = args[0]
    if a.kind == "bool":
        return a
    if a.kind == "num":
        return Vec("bool", a.values != 0, a.null, a.err)
    return fallback(V.fn_toboolean, args, frame.n)


def _col_tostring(args, frame, ctx, literal):
    return fallback(V.fn_tostring, args, frame.n)


# ---- numbers -------------------------------------------------------------------------------------


def _col_unary(fn_np, fn_scalar, domain=None):
    def column(args, frame, ctx, literal):
        return vec_unary_num(fn_np, fn_scalar, args[0], frame.n, domain=domain)

    return column


def _col_round(args, frame, ctx, literal):
    n = frame.n
    a = args[0]
    d = args[1] if len(args) > 1 else Vec.const(0.0)
    if not (
        is_typed(a, d)
        and len(d.values) == 1
        and d.null is None
        and d.err is None
        and abs(float(d.values[0])) <= 15
    ):
        return fallback(V.fn_round, [a, d], n)
    scale = 10.0 ** int(float(d.values[0]))
    return vec_unary_num(
        lambda x: np.floor(x * scale + 0.5) / scale,
        None,
        a,
        n,
        domain=lambda x: np.isfinite(np.floor(x * scale + 0.5) / scale),
    )


def _col_pow(args, frame, ctx, literal):
    a, b = args
    if not is_typed(a, b):
        return fallback(V.fn_pow, args, frame.n)
    with np.errstate(all="ignore"):
        r = np.power(a.floats(), b.floats())
    err = any_of(a.err, b.err)
    null = and_not(any_of(a.null, b.null), err)
    bad = and_not(and_not(~np.isfinite(r), null), err)
    if bad is not None and bad.any():
        err = bad if err is None else (err | bad)
    return Vec("num", r, null, err)


def _col_extreme(red, fn_scalar):
    def column(args, frame, ctx, literal):
        if not is_typed(*args):
            return fallback(fn_scalar, args, frame.n)
        r = args[0].floats()
        for a in args[1:]:
            r = red(r, a.floats())
        err = any_of(*(a.err for a in args))
        null = and_not(any_of(*(a.null for a in args)), err)
        return Vec("num", r, null, err)

    return column


# ---- positions -----------------------------------------------------------------------------------


def _row_mileage(fs, ctx, literal):
    def mileage(c, p, q):
        a = position_of(q)
        b = position_of(c)
        if a is None or b is None:
            return None
        return haversine(a[0], a[1], b[0], b[1])

    return mileage


def _col_mileage(args, frame, ctx, literal):
    lat, lon, valid = frame.position()
    plat, plon, pvalid = frame.position(prev=True)
    ok = valid & pvalid
    dist = haversine_vec(
        np.where(ok, plat, 0.0), np.where(ok, plon, 0.0), np.where(ok, lat, 0.0), np.where(ok, lon, 0.0)
    )
    return Vec("num", dist, ~ok if not ok.all() else None)


def _row_geofence(fs, ctx, field):
    geofences = ctx.geofences

    def geofence_(c, p, q):
        pos = position_of(c)
        if pos is None:
            return None
        for g in geofences:
            if g.contains(pos[0], pos[1]):
                return V.normalize(g.config.get(field))
        return None

    return geofence_


def _col_geofence(args, frame, ctx, field):
    geofences = ctx.geofences
    lat, lon, valid = frame.position()
    idx = first_containing(geofences, lat, lon, valid)
    table = Vec.from_objects([V.normalize(g.config.get(field)) for g in geofences] + [None])
    pick = np.where(idx < 0, len(geofences), idx)
    return Vec(
        table.kind,
        table.values[pick],
        None if table.null is None else table.null[pick],
        None if table.err is None else table.err[pick],
    )


# ---- time ----------------------------------------------------------------------------------------


def _time_scalar(name, t, tz):
    if t is V.ERROR:
        return V.ERROR
    if t is None:
        return None
    if not V.is_number(t) or not in_range(float(t)):
        return V.ERROR
    return scalar_field(name, float(t), tz)


def _row_time(name):
    def row(fs, ctx, literal):
        ft = fs[0] if fs else (lambda c, p, q: c.get("timestamp"))
        tz = ctx.tz
        return lambda c, p, q: _time_scalar(name, ft(c, p, q), tz)

    return row


def _col_time(name):
    def column(args, frame, ctx, literal):
        n = frame.n
        t = args[0] if args else Vec("num", frame.timestamps)
        if t.kind != "num":
            if t.kind == "bool":
                t = t.expand(n)
                err = np.ones(n, bool) if t.null is None else ~(t.null & ~errmask(t, n))
                return Vec("num", np.zeros(n), and_not(t.null, err), err)
            return fallback(lambda x: _time_scalar(name, x, ctx.tz), [t], n)
        t = t.expand(n)
        x = t.values
        err = t.err
        out_of = and_not(and_not((x < MIN_TS) | (x > MAX_TS), t.null), t.err)
        if out_of.any():
            err = out_of if err is None else (err | out_of)
        bad = any_of(err, t.null)
        safe = x if bad is None else np.where(bad, 0.0, x)
        r = fields(safe, ctx.tz)[name]
        return Vec("num", r, and_not(t.null, t.err), err)

    return column


# ---- the registry --------------------------------------------------------------------------------

_TIME = ("hour", "minute", "day", "weekday", "month", "year")

FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in [
        Function("not", 1, 1, rewrite="not"),
        Function("previous", 1, 1, literal=True, rewrite="previous"),
        Function("if", 3, 3, row=_row_if, column=_col_if),
        Function("exists", 1, 1, row=_row_exists, column=_col_exists, literal=True),
        Function("isnull", 1, 1, V.fn_isnull, column=_col_isnull),
        Function("tonumber", 1, 1, V.fn_tonumber, column=_col_tonumber),
        Function("tostring", 1, 1, V.fn_tostring, column=_col_tostring),
        Function("toboolean", 1, 1, V.fn_toboolean, column=_col_toboolean),
        Function("abs", 1, 1, V.fn_abs, column=_col_unary(np.abs, V.fn_abs)),
        Function("round", 1, 2, V.fn_round, column=_col_round),
        Function("ceil", 1, 1, V.fn_ceil, column=_col_unary(np.ceil, V.fn_ceil)),
        Function("floor", 1, 1, V.fn_floor, column=_col_unary(np.floor, V.fn_floor)),
        Function("min", 1, 64, V.fn_min, column=_col_extreme(np.minimum, V.fn_min)),
        Function("max", 1, 64, V.fn_max, column=_col_extreme(np.maximum, V.fn_max)),
        Function("sqrt", 1, 1, V.fn_sqrt, column=_col_unary(np.sqrt, V.fn_sqrt, domain=lambda x: x >= 0)),
        Function("pow", 2, 2, V.fn_pow, column=_col_pow),
        Function(
            "mileage",
            0,
            0,
            row=_row_mileage,
            column=_col_mileage,
            reads_position=True,
            reads_previous_position=True,
        ),
        *(Function(name, 0, 1, row=_row_time(name), column=_col_time(name)) for name in _TIME),
        Function(
            "geofence", 1, 1, row=_row_geofence, column=_col_geofence, literal=True, reads_position=True
        ),
    ]
}
