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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import values as semantics
from .columns import ColumnKind
from .geo import first_containing, haversine, haversine_vec
from .timeutil import MAX_TS, MIN_TS, fields, in_range, scalar_field
from .vectors import LAT, LON, Frame, Vec, and_not, any_of, errmask, fallback, is_typed, vec_unary_num
from .zones import GeofenceSet

RowFn = Callable[[Any, Any, Any], Any]


class Context(NamedTuple):
    """What an expression is compiled with: the calculator timezone, its geofences, and the
    metadata it may read (``{"device": {...}, "calculator": {...}}``)."""

    tz: Any
    geofences: GeofenceSet
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Function:
    name: str
    min_args: int
    max_args: int
    scalar: Callable | None = None
    row: Callable[[list[RowFn], Context, str | None], RowFn] | None = None
    column: Callable[[list[Vec], Frame, Context, str | None], Vec] | None = None
    literal: bool = False
    rewrite: str | None = None  # "not", "previous" or "metadata"
    reads_position: bool = False
    reads_previous_position: bool = False

    def build_row(self, fs: list[RowFn], ctx: Context, literal: str | None) -> RowFn:
        if self.row is not None:
            return self.row(fs, ctx, literal)
        fn = self.scalar
        assert fn is not None  # every function has a row builder or a scalar definition
        if len(fs) == 1:
            first = fs[0]
            return lambda message, previous, positioned: fn(first(message, previous, positioned))
        if len(fs) == 2:
            first, second = fs
            return lambda message, previous, positioned: fn(
                first(message, previous, positioned), second(message, previous, positioned)
            )
        return lambda message, previous, positioned: fn(
            *(argument(message, previous, positioned) for argument in fs)
        )


def position_of(message) -> tuple[float, float] | None:
    if message is None:
        return None
    lat = message.get(LAT)
    lon = message.get(LON)
    if semantics.is_number(lat) and semantics.is_number(lon):
        return float(lat), float(lon)
    return None


# ---- if, exists, isnull, conversions -------------------------------------------------------------


def _row_if(fs, ctx, literal):
    condition_fn, then_fn, else_fn = fs

    def if_(message, previous, positioned):
        condition = condition_fn(message, previous, positioned)
        if condition is semantics.ERROR:
            return semantics.ERROR
        return (
            then_fn(message, previous, positioned)
            if semantics.truth(condition)
            else else_fn(message, previous, positioned)
        )

    return if_


def _col_if(args, frame, ctx, literal):
    condition, then_value, else_value = args
    rows = frame.n
    if then_value.kind == else_value.kind and then_value.kind != ColumnKind.OBJ:
        chosen = np.broadcast_to(condition.truth(), (rows,))
        values = np.where(chosen, then_value.values, else_value.values)
        then_null = np.zeros(1, bool) if then_value.null is None else then_value.null
        else_null = np.zeros(1, bool) if else_value.null is None else else_value.null
        then_err = np.zeros(1, bool) if then_value.err is None else then_value.err
        else_err = np.zeros(1, bool) if else_value.err is None else else_value.err
        null = np.where(chosen, then_null, else_null)
        err = np.where(chosen, then_err, else_err)
        if condition.err is not None:
            err = err | condition.err
            null = null & ~condition.err
        return Vec(then_value.kind, values, null if null.any() else None, err if err.any() else None)
    return fallback(semantics.fn_if, args, rows)


def _row_exists(fs, ctx, key):
    return lambda message, previous, positioned: key in message


def _col_exists(args, frame, ctx, key):
    column = frame.column(key)
    return Vec(ColumnKind.BOOL, np.zeros(frame.n, bool) if column is None else column.present_mask())


def _col_isnull(args, frame, ctx, literal):
    operand = args[0]
    null = np.zeros(1, bool) if operand.null is None else operand.null
    err = operand.err
    result = null if err is None else (null & ~err)
    return Vec(ColumnKind.BOOL, result, None, err)


def _col_tonumber(args, frame, ctx, literal):
    operand = args[0]
    if is_typed(operand):
        return Vec(ColumnKind.NUM, operand.floats(), operand.null, operand.err)
    return fallback(semantics.fn_tonumber, args, frame.n)


def _col_toboolean(args, frame, ctx, literal):
    operand = args[0]
    if operand.kind == ColumnKind.BOOL:
        return operand
    if operand.kind == ColumnKind.NUM:
        return Vec(ColumnKind.BOOL, operand.values != 0, operand.null, operand.err)
    return fallback(semantics.fn_toboolean, args, frame.n)


def _col_tostring(args, frame, ctx, literal):
    return fallback(semantics.fn_tostring, args, frame.n)


# ---- error, type tests, JSON ---------------------------------------------------------------------


def _row_error(fs, ctx, literal):
    return lambda message, previous, positioned: semantics.ERROR


def _col_error(args, frame, ctx, literal):
    return Vec(ColumnKind.NUM, np.zeros(1), None, np.ones(1, bool))


def _col_type_test(fn_scalar, kind: str | None):
    """A type test over a typed column (numbers or booleans): true where the value is present
    and of ``kind``; an ``obj`` column takes the scalar test element by element."""

    def column(args, frame, ctx, literal):
        operand = args[0]
        if operand.kind == ColumnKind.OBJ:
            return fallback(fn_scalar, args, frame.n)
        rows = len(operand.values)
        if operand.kind == kind:
            result = np.ones(rows, bool) if operand.null is None else ~operand.null
        else:
            result = np.zeros(rows, bool)
        if operand.err is not None:
            result = result & ~operand.err
        return Vec(ColumnKind.BOOL, result, None, operand.err)

    return column


def _col_json(args, frame, ctx, literal):
    operand = args[0]
    if is_typed(operand):
        return operand  # numbers, booleans and null are JSON values already
    return fallback(semantics.fn_json, args, frame.n)


def _col_json_array_contains(args, frame, ctx, literal):
    return fallback(semantics.fn_json_array_contains, args, frame.n)


# ---- numbers -------------------------------------------------------------------------------------


def _col_unary(fn_np, fn_scalar, domain=None):
    def column(args, frame, ctx, literal):
        return vec_unary_num(fn_np, fn_scalar, args[0], frame.n, domain=domain)

    return column


def _col_round(args, frame, ctx, literal):
    rows = frame.n
    operand = args[0]
    digits = args[1] if len(args) > 1 else Vec.const(0.0)
    if not (
        is_typed(operand, digits)
        and len(digits.values) == 1
        and digits.null is None
        and digits.err is None
        and abs(float(digits.values[0])) <= 15
    ):
        return fallback(semantics.fn_round, [operand, digits], rows)
    scale = 10.0 ** int(float(digits.values[0]))
    return vec_unary_num(
        lambda numbers: np.floor(numbers * scale + 0.5) / scale,
        None,
        operand,
        rows,
        domain=lambda numbers: np.isfinite(np.floor(numbers * scale + 0.5) / scale),
    )


def _col_pow(args, frame, ctx, literal):
    base, exponent = args
    if not is_typed(base, exponent):
        return fallback(semantics.fn_pow, args, frame.n)
    with np.errstate(all="ignore"):
        result = np.power(base.floats(), exponent.floats())
    err = any_of(base.err, exponent.err)
    null = and_not(any_of(base.null, exponent.null), err)
    bad = and_not(and_not(~np.isfinite(result), null), err)
    if bad is not None and bad.any():
        err = bad if err is None else (err | bad)
    return Vec(ColumnKind.NUM, result, null, err)


def _col_extreme(reduce, fn_scalar):
    def column(args, frame, ctx, literal):
        if not is_typed(*args):
            return fallback(fn_scalar, args, frame.n)
        result = args[0].floats()
        for argument in args[1:]:
            result = reduce(result, argument.floats())
        err = any_of(*(argument.err for argument in args))
        null = and_not(any_of(*(argument.null for argument in args)), err)
        return Vec(ColumnKind.NUM, result, null, err)

    return column


# ---- positions -----------------------------------------------------------------------------------


def _row_mileage(fs, ctx, literal):
    def mileage(message, previous, positioned):
        before = position_of(positioned)
        now = position_of(message)
        if before is None or now is None:
            return None
        return haversine(before[0], before[1], now[0], now[1])

    return mileage


def _col_mileage(args, frame, ctx, literal):
    lat, lon, valid = frame.position()
    plat, plon, pvalid = frame.position(prev=True)
    ok = valid & pvalid
    dist = haversine_vec(
        np.where(ok, plat, 0.0), np.where(ok, plon, 0.0), np.where(ok, lat, 0.0), np.where(ok, lon, 0.0)
    )
    return Vec(ColumnKind.NUM, dist, ~ok if not ok.all() else None)


def _row_geofence(fs, ctx, field):
    geofences = ctx.geofences

    def geofence_(message, previous, positioned):
        position = position_of(message)
        if position is None:
            return None
        geofence = geofences.first(position[0], position[1])
        return None if geofence is None else semantics.normalize(geofence.field(field))

    return geofence_


def _col_geofence(args, frame, ctx, field):
    geofences = ctx.geofences
    lat, lon, valid = frame.position()
    index = first_containing(geofences, lat, lon, valid)
    table = Vec.from_objects([semantics.normalize(geofence.field(field)) for geofence in geofences] + [None])
    pick = np.where(index < 0, len(geofences), index)
    return Vec(
        table.kind,
        table.values[pick],
        None if table.null is None else table.null[pick],
        None if table.err is None else table.err[pick],
    )


def _row_geofences(fs, ctx, field):
    geofences = ctx.geofences

    def geofences_(message, previous, positioned):
        position = position_of(message)
        if position is None:
            return None
        return [semantics.normalize(geofence.field(field)) for geofence in geofences.every(position[0], position[1])]

    return geofences_


def _col_geofences(args, frame, ctx, field):
    """The list of the field of every geofence containing each position (in the order they are
    checked), ``[]`` outside all, null without a position."""
    geofences = ctx.geofences
    lat, lon, valid = frame.position()
    points, numbers = geofences.hits(lat, lon, valid)
    table = [semantics.normalize(geofence.field(field)) for geofence in geofences]
    values = np.empty(frame.n, dtype=object)
    for row in np.flatnonzero(valid).tolist():
        values[row] = []
    for point, number in zip(points.tolist(), numbers.tolist(), strict=True):
        values[point].append(table[number])
    return Vec(ColumnKind.OBJ, values, None if valid.all() else ~valid)


# ---- time ----------------------------------------------------------------------------------------


def _time_scalar(name, moment, tz):
    if moment is semantics.ERROR:
        return semantics.ERROR
    if moment is None:
        return None
    if not semantics.is_number(moment) or not in_range(float(moment)):
        return semantics.ERROR
    return scalar_field(name, float(moment), tz)


def _row_time(name):
    def row(fs, ctx, literal):
        moment_fn = fs[0] if fs else (lambda message, previous, positioned: message.get("timestamp"))
        tz = ctx.tz
        return lambda message, previous, positioned: _time_scalar(
            name, moment_fn(message, previous, positioned), tz
        )

    return row


def _col_time(name):
    def column(args, frame, ctx, literal):
        rows = frame.n
        stamps = args[0] if args else Vec(ColumnKind.NUM, frame.timestamps)
        if stamps.kind != ColumnKind.NUM:
            if stamps.kind == ColumnKind.BOOL:
                stamps = stamps.expand(rows)
                err = np.ones(rows, bool) if stamps.null is None else ~(stamps.null & ~errmask(stamps, rows))
                return Vec(ColumnKind.NUM, np.zeros(rows), and_not(stamps.null, err), err)
            return fallback(lambda seconds: _time_scalar(name, seconds, ctx.tz), [stamps], rows)
        stamps = stamps.expand(rows)
        seconds = stamps.values
        err = stamps.err
        out_of = and_not(and_not((seconds < MIN_TS) | (seconds > MAX_TS), stamps.null), stamps.err)
        if out_of.any():
            err = out_of if err is None else (err | out_of)
        bad = any_of(err, stamps.null)
        safe = seconds if bad is None else np.where(bad, 0.0, seconds)
        result = fields(safe, ctx.tz)[name]
        return Vec(ColumnKind.NUM, result, and_not(stamps.null, stamps.err), err)

    return column


# ---- the registry --------------------------------------------------------------------------------

_TIME = ("hour", "minute", "day", "weekday", "month", "year")

FUNCTIONS: dict[str, Function] = {
    function.name: function
    for function in [
        Function("not", 1, 1, rewrite="not"),
        Function("previous", 1, 1, literal=True, rewrite="previous"),
        # flespi's spelling of ``$device.metadata.x``: ``metadata('x')``, ``metadata('/a/b')``.
        Function("metadata", 1, 1, literal=True, rewrite="metadata"),
        Function("if", 3, 3, row=_row_if, column=_col_if),
        Function("exists", 1, 1, row=_row_exists, column=_col_exists, literal=True),
        Function("isnull", 1, 1, semantics.fn_isnull, column=_col_isnull),
        Function("tonumber", 1, 1, semantics.fn_tonumber, column=_col_tonumber),
        Function("tostring", 1, 1, semantics.fn_tostring, column=_col_tostring),
        Function("toboolean", 1, 1, semantics.fn_toboolean, column=_col_toboolean),
        Function("error", 0, 0, row=_row_error, column=_col_error),
        Function(
            "isnumber",
            1,
            1,
            semantics.fn_isnumber,
            column=_col_type_test(semantics.fn_isnumber, ColumnKind.NUM),
        ),
        Function(
            "isboolean",
            1,
            1,
            semantics.fn_isboolean,
            column=_col_type_test(semantics.fn_isboolean, ColumnKind.BOOL),
        ),
        Function("isstring", 1, 1, semantics.fn_isstring, column=_col_type_test(semantics.fn_isstring, None)),
        Function("isjson", 1, 1, semantics.fn_isjson, column=_col_type_test(semantics.fn_isjson, None)),
        Function("json", 1, 1, semantics.fn_json, column=_col_json),
        Function(
            "json_array_contains",
            2,
            2,
            semantics.fn_json_array_contains,
            column=_col_json_array_contains,
        ),
        Function("abs", 1, 1, semantics.fn_abs, column=_col_unary(np.abs, semantics.fn_abs)),
        Function("round", 1, 2, semantics.fn_round, column=_col_round),
        Function("ceil", 1, 1, semantics.fn_ceil, column=_col_unary(np.ceil, semantics.fn_ceil)),
        Function("floor", 1, 1, semantics.fn_floor, column=_col_unary(np.floor, semantics.fn_floor)),
        Function("min", 1, 64, semantics.fn_min, column=_col_extreme(np.minimum, semantics.fn_min)),
        Function("max", 1, 64, semantics.fn_max, column=_col_extreme(np.maximum, semantics.fn_max)),
        Function(
            "sqrt",
            1,
            1,
            semantics.fn_sqrt,
            column=_col_unary(np.sqrt, semantics.fn_sqrt, domain=lambda numbers: numbers >= 0),
        ),
        Function("pow", 2, 2, semantics.fn_pow, column=_col_pow),
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
        Function(
            "geofences", 1, 1, row=_row_geofences, column=_col_geofences, literal=True, reads_position=True
        ),
    ]
}
