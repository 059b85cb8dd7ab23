"""Counters (DESIGN 7.5): one class per counter type, holding its check (the validation of its
configuration) and its computation, and ``COUNTER_TYPES``, the registry keyed by type name.

Counters over messages are reduced over all intervals at once. The messages of every interval
are gathered into one frame (``IntervalRows``: ``gathered`` = the concatenated index ranges,
``starts`` = where each interval starts in it); each row's previous row is the previous message
of the same interval, so ``#name`` and ``mileage()`` in a counter never reach outside its
interval. Sums add each interval's values one by one from 0.0 in message order
(``sequential_sums``), whatever else is in the frame: a window and a full calculation agree to the
last bit, and so does an interval's sum carried on from its state when messages are appended
(``CounterType.carry``: the active interval extended without reading it again).

Counters of type ``interval`` and ``accumulator`` (``per_interval``) read the interval's own
fields and the interval before it; ``calculate._interval_pass`` computes them in order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import values as semantics
from .chains import SourceSpan
from .checks import Checker, Scope
from .columns import MISSING, Column, ColumnKind
from .expressions import LAT, LON, CompiledExpression
from .geo import encode_polyline_continued, encode_polyline_segments
from .messages import Messages
from .timeutil import period_keys, strftime
from .vectors import Frame, Vec, vec_from_column

if TYPE_CHECKING:
    from .calculator import Calculator

OMIT = object()  # the counter has no value for this interval: its key is left out

METHOD_ALIASES = {"min": "minimum", "max": "maximum", "avg": "average", "sum": "summary"}
REDUCE_METHODS = ("first", "last", "minimum", "maximum", "average", "summary", "difference", "duration")
RESETS = ("day", "week", "month")
POSITION = frozenset({LAT, LON})
# The fields every counter has; each type lists its own after them.
_COMMON = ("name", "type", "validate_message")


@dataclass
class CounterSpec:
    """One counter of a compiled calculator. What ``method``, ``parameter``, ``fields`` and
    ``value`` hold depends on the type (see each type's ``check``)."""

    name: str
    type: str
    config: dict
    validate: CompiledExpression | None = None
    expression: CompiledExpression | None = None
    method: str | None = None
    parameter: str | None = None
    fields: list = field(default_factory=list)
    value: Any = None
    allow_unknown: bool = False

    def expressions(self) -> list[CompiledExpression]:
        """Its compiled expressions besides ``validate`` (``expression``, a dataset's field values)."""
        found = [] if self.expression is None else [self.expression]
        found += [item[1] for item in self.fields if isinstance(item, tuple) and isinstance(item[1], CompiledExpression)]
        return found


# Segments up to this long are summed position by position across all of them at once; longer
# ones one by one (``sequential_sums``).
_SHORT_SEGMENT = 32


def sequential_sums(values: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Each segment ``values[starts[i]:stops[i]]`` summed one value at a time from 0.0, in order:
    the sum a running total carried over appended values gives too (``np.add.reduceat`` sums in
    an order that depends on the segment's length, so a sum continued from a stored one would
    differ in the last bits)."""
    lengths = stops - starts
    sums = np.zeros(len(starts))
    short = np.flatnonzero(lengths <= _SHORT_SEGMENT)
    for offset in range(int(lengths[short].max()) if len(short) else 0):
        alive = short[lengths[short] > offset]
        sums[alive] += values[starts[alive] + offset]
    for index in np.flatnonzero(lengths > _SHORT_SEGMENT).tolist():
        # A cumulative sum is sequential; adding 0.0 makes its sign of zero that of a sum from 0.0.
        sums[index] = np.cumsum(values[starts[index] : stops[index]])[-1] + 0.0
    return sums


def carried_sum(total: float, values: np.ndarray) -> float:
    """``total`` (a ``sequential_sums`` result) with ``values`` added one at a time, in order."""
    if len(values) > _SHORT_SEGMENT:
        return float(np.cumsum(np.concatenate(([total], values)))[-1]) + 0.0
    for value in values.tolist():  # the same double additions, without numpy's cost per call
        total += value
    return total + 0.0


# ---- the gathered rows of every interval ------------------------------------------------------


class Gathered:
    """The rows of ``messages`` at ``index``, column by column on demand."""

    def __init__(self, messages: Messages, index: np.ndarray | None):
        self._messages = messages
        self._index = index
        self._columns: dict[str, Column | None] = {}
        self.timestamps = messages.timestamps if index is None else messages.timestamps[index]

    def __len__(self) -> int:
        return len(self.timestamps)

    def column(self, name: str) -> Column | None:
        if name == "timestamp":
            return Column(ColumnKind.NUM, self.timestamps)
        if name not in self._columns:
            column = self._messages.column(name)
            self._columns[name] = (
                column if (column is None or self._index is None) else column.take(self._index)
            )
        return self._columns[name]


class IntervalRows:
    """The messages of every interval gathered into one frame, and what the counters read of
    them: ``starts``/``stops`` (where each interval's rows begin and end in the frame),
    ``first``/``last`` (each interval's first and last message in ``messages``), ``active``."""

    def __init__(
        self,
        calc: Calculator,
        messages: Messages,
        first: np.ndarray,
        last: np.ndarray,
        active: np.ndarray,
        geofence_index: np.ndarray | None,
        chained: Mapping[int, SourceSpan] | None = None,
    ):
        lengths = last - first + 1
        # The source calculators' intervals over the messages (``chains``), for ``calculator`` counters.
        self.chained = chained or {}
        self.calc = calc
        self.count = len(first)
        self.rows = int(lengths.sum())
        self.starts = np.cumsum(lengths) - lengths
        self.stops = np.append(self.starts[1:], self.rows)
        self.first = first
        self.last = last
        self.active = active
        self.timestamps = messages.timestamps
        count = self.count
        contiguous = (
            count > 0
            and first[0] == 0
            and last[-1] == len(messages) - 1
            and (count == 1 or (first[1:] == last[:-1] + 1).all())
        )
        # Row r of the frame is message gathered[r]; None when the frame is the messages.
        self.gathered = None if contiguous else np.repeat(first - self.starts, lengths) + np.arange(self.rows)
        prev_valid = np.ones(self.rows, bool)
        prev_valid[self.starts] = False
        self.frame = Frame(Gathered(messages, self.gathered), prev_valid)
        self.geofence_index = geofence_index
        self.positions = np.arange(self.rows)

    def first_position(self, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per interval, its first row where ``valid``, and whether it has one."""
        found = np.minimum.reduceat(np.where(valid, self.positions, self.rows), self.starts)
        return found, found < self.stops

    def last_position(self, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per interval, its last row where ``valid``, and whether it has one."""
        found = np.maximum.reduceat(np.where(valid, self.positions, -1), self.starts)
        return found, found >= self.starts

    def extreme_position(
        self, method: str, numbers: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per interval, its first row where ``numbers`` reaches the interval's ``minimum`` or
        ``maximum`` among the ``valid`` rows, whether it has one (not when the extreme is a NaN,
        which no number equals), and the extreme."""
        if method == "minimum":
            extreme = np.minimum.reduceat(np.where(valid, numbers, np.inf), self.starts)
        else:
            extreme = np.maximum.reduceat(np.where(valid, numbers, -np.inf), self.starts)
        reached = valid & (numbers == np.repeat(extreme, self.stops - self.starts))
        return (*self.first_position(reached), extreme)

    def numeric(self, method: str, numbers: np.ndarray, valid: np.ndarray) -> list:
        starts = self.starts
        counts = np.add.reduceat(valid.astype(np.int64), starts)
        if method == "summary":
            return sequential_sums(np.where(valid, numbers, 0.0), starts, self.stops).tolist()
        if method == "average":
            sums = sequential_sums(np.where(valid, numbers, 0.0), starts, self.stops)
            result = sums / np.maximum(counts, 1)
        elif method == "minimum":
            result = np.minimum.reduceat(np.where(valid, numbers, np.inf), starts)
        elif method == "maximum":
            result = np.maximum.reduceat(np.where(valid, numbers, -np.inf), starts)
        elif method == "difference":
            first, _ = self.first_position(valid)
            last, _ = self.last_position(valid)
            result = numbers[np.minimum(last, self.rows - 1)] - numbers[np.minimum(first, self.rows - 1)]
        else:
            raise AssertionError(method)
        has_values = counts > 0
        return [
            value if has else OMIT for value, has in zip(result.tolist(), has_values.tolist(), strict=True)
        ]

    def duration(self, truthy: np.ndarray) -> list:
        timestamps = self.frame.timestamps
        steps = np.zeros(self.rows)
        if self.rows > 1:
            steps[:-1] = timestamps[1:] - timestamps[:-1]
        steps[self.stops - 1] = 0.0
        return sequential_sums(np.where(truthy, steps, 0.0), self.starts, self.stops).tolist()

    def reduce(self, method: str, vec: Vec, valid: np.ndarray, raw: Column | None = None) -> list:
        """One counter's values per interval; ``raw`` (a parameter's column) gives
        first/last/distinct their original JSON values."""
        rows = self.rows
        if method in ("first", "last"):
            found, has = self.first_position(valid) if method == "first" else self.last_position(valid)
            values = []
            for i, has_value in zip(found.tolist(), has.tolist(), strict=True):
                if not has_value:
                    values.append(OMIT)
                elif raw is not None:
                    values.append(raw.value(i))
                else:
                    values.append(_vec_value(vec, i))
            return values
        if method == "duration":
            return self.duration(valid & vec.truth())
        if method == "distinct":
            return self._distinct(raw.to_objects() if raw is not None else vec.to_objects(rows), valid)
        numbers, numeric = _numeric_of(vec, rows)
        return self.numeric(method, numbers, valid & numeric)

    def _distinct(self, objects: list, valid: np.ndarray) -> list:
        values = []
        valid_rows = valid.tolist()
        for start, stop in zip(self.starts.tolist(), self.stops.tolist(), strict=True):
            seen: dict = {}
            for i in range(start, stop):
                if not valid_rows[i]:
                    continue
                value = objects[i]
                seen.setdefault(_distinct_key(value), value)
            values.append(list(seen.values()))
        return values


def _distinct_key(value: Any) -> str:
    """What makes two values of a ``distinct`` counter the same value."""
    try:
        key = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        key = repr(value)
    return "b:" + key if isinstance(value, bool) else key


def _vec_value(vec: Vec, i: int):
    if vec.kind == ColumnKind.NUM:
        return float(vec.values[i])
    if vec.kind == ColumnKind.BOOL:
        return bool(vec.values[i])
    return vec.values[i]


def _numeric_of(vec: Vec, rows: int):
    """Float values and where they are numbers or booleans."""
    if vec.kind == ColumnKind.OBJ:
        objects = vec.values.tolist()
        numeric = np.fromiter(
            (semantics.as_number(value) is not semantics.ERROR for value in objects), bool, rows
        )
        numbers = np.fromiter(
            (
                semantics.as_number(value) if is_numeric else 0.0
                for value, is_numeric in zip(objects, numeric.tolist(), strict=True)
            ),
            np.float64,
            rows,
        )
        return numbers, numeric
    return vec.floats(), np.ones(rows, bool)


def _present(vec: Vec, rows: int) -> np.ndarray:
    present = np.ones(rows, bool)
    if vec.null is not None:
        present &= ~vec.null
    if vec.err is not None:
        present &= ~vec.err
    return present


# ---- the counter types ------------------------------------------------------------------------


@dataclass
class CheckContext:
    """What a counter type's check works with: the problems found so far (``checker``), the
    counter's path in the configuration, the normalized configuration it fills, the names an
    expression may use, and the counters before it."""

    checker: Checker
    path: str
    normalized: dict
    scope: Scope
    earlier: list[CounterSpec]


class CounterType:
    """A counter type: how its configuration is checked and how its values are computed.

    A type over messages (``per_interval`` false) implements ``compute``: its values for every
    interval at once. A ``per_interval`` type implements ``interval_value``: its value for one
    interval from the interval's fields and the interval before it.
    """

    name: ClassVar[str]
    per_interval: ClassVar[bool] = False
    # Whether ``compute`` reads ``IntervalRows.geofence_index`` (which geofence holds each message).
    reads_geofences: ClassVar[bool] = False
    # Whether ``carry`` carries the counter on over messages appended to its interval.
    carries: ClassVar[bool] = False

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        """Check the type's own fields of ``counter.config`` (the common ones are checked), fill
        ``counter`` and the normalized configuration ``normalized``."""
        raise NotImplementedError

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        """The message parameters the counter reads besides its ``validate_message`` (``None``:
        every parameter)."""
        return ()

    def crosses_intervals(self, counter: CounterSpec) -> bool:
        """Whether the counter's value depends on the interval before."""
        return False

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        """The counter's value (or ``OMIT``) for every interval; ``valid``: the rows that pass
        the counter's ``validate_message``."""
        raise NotImplementedError

    def interval_value(
        self, counter: CounterSpec, interval: dict, previous: Mapping | None, calc: Calculator
    ) -> Any:
        """The counter's value (or ``OMIT``) for ``interval``, which holds the fields of the
        counters before this one."""
        raise NotImplementedError

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        """The counter's state once the messages of ``rows`` (one interval) are appended to an
        interval whose state is ``state`` (``None`` and no ``lead``: ``rows`` is all of it). With
        ``lead``, the first row is the interval's last message so far, there only as the previous
        message of the next (``valid`` is false there). ``carried(state)`` is then what
        ``compute`` gives over all of the interval's messages, to the last bit."""
        raise NotImplementedError

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        """The counter's value (or ``OMIT``) from its ``carry`` state."""
        raise NotImplementedError


def _combined(method: str, old: Any, new: Any) -> Any:
    """A minimum or maximum of two parts of an interval (either may be ``OMIT``), as one
    reduction over the whole gives it (a NaN wins)."""
    if old is OMIT:
        return new
    if new is OMIT:
        return old
    return float(np.minimum(old, new) if method == "minimum" else np.maximum(old, new))


class _ReducedCounter(CounterType):
    """A value per message, reduced over each interval by ``method``."""

    methods: ClassVar[tuple[str, ...]] = REDUCE_METHODS
    carries = True

    def values(self, counter: CounterSpec, rows: IntervalRows) -> tuple[Vec, Column | None]:
        """The counter's value at each row, and the raw column it comes from (a parameter's)."""
        raise NotImplementedError

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        assert counter.method is not None  # required by check
        vec, raw = self.values(counter, rows)
        return rows.reduce(counter.method, vec, valid & _present(vec, rows.rows), raw=raw)

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        method = counter.method
        assert method is not None  # required by check
        vec, raw = self.values(counter, rows)
        valid = valid & _present(vec, rows.rows)
        if method == "duration":
            # (sum of the steps so far, whether the last message is true): the last message's step
            # to the next one counts once that one comes.
            total, last_true = (0.0, False) if state is None else state
            truthy = valid & vec.truth()
            if lead:
                truthy[0] = last_true
            steps = np.zeros(rows.rows)
            steps[:-1] = np.diff(rows.frame.timestamps)
            return carried_sum(total, np.where(truthy, steps, 0.0)), bool(truthy[-1])
        if method in ("summary", "average", "difference"):
            numbers, numeric = _numeric_of(vec, rows.rows)
            if len(numbers) != rows.rows:  # a constant
                numbers = np.full(rows.rows, numbers[0])
            taken = numbers[valid & numeric]
            if method == "difference":  # (first number, last number)
                if not len(taken):
                    return state
                return (float(taken[0]) if state is None else state[0]), float(taken[-1])
            total, count = (0.0, 0) if state is None else state  # (sum, how many)
            return carried_sum(total, taken), count + len(taken)
        found = rows.reduce(method, vec, valid, raw=raw)[0]
        if method == "distinct":
            merged = {_distinct_key(value): value for value in state or ()}
            for value in found:
                merged.setdefault(_distinct_key(value), value)
            return list(merged.values())
        if state is None:
            return found
        if method == "first":
            return state if state is not OMIT else found
        if method == "last":
            return found if found is not OMIT else state
        return _combined(method, state, found)

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        method = counter.method
        if method == "duration":
            return state[0]
        if method == "summary":
            return state[0]
        if method == "average":
            return state[0] / state[1] if state[1] else OMIT
        if method == "difference":
            return OMIT if state is None else state[1] - state[0]
        if method == "distinct":
            return list(state)
        return state

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized = context.checker, context.path, context.normalized
        raw_method = counter.config.get("method")
        if isinstance(raw_method, str):
            raw_method = METHOD_ALIASES.get(raw_method, raw_method)
        counter.method = checker.string(
            {"method": raw_method}, "method", path, required=True, choices=self.methods
        )
        normalized["method"] = counter.method
        self.check_source(counter, context)

    def check_source(self, counter: CounterSpec, context: CheckContext) -> None:
        """Check where the values come from."""
        raise NotImplementedError


class ExpressionCounter(_ReducedCounter):
    name = "expression"

    def check_source(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized, scope = context.checker, context.path, context.normalized, context.scope
        config = counter.config
        checker.unknown(config, (*_COMMON, "expression", "method"), path)
        counter.expression = checker.expression(config, "expression", path, scope=scope, required=True)
        normalized["expression"] = config.get("expression")

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        assert counter.expression is not None  # required by check
        return (counter.expression.parameters,)

    def values(self, counter: CounterSpec, rows: IntervalRows) -> tuple[Vec, Column | None]:
        assert counter.expression is not None  # required by check
        return counter.expression.evaluate_frame(rows.frame), None


class ParameterCounter(_ReducedCounter):
    name = "parameter"
    methods = (*REDUCE_METHODS, "distinct")

    def check_source(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized = context.checker, context.path, context.normalized
        checker.unknown(counter.config, (*_COMMON, "parameter", "method"), path)
        counter.parameter = checker.string(counter.config, "parameter", path, default=counter.name)
        normalized["parameter"] = counter.parameter

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        assert counter.parameter is not None  # defaults to the counter's name
        return (frozenset({counter.parameter}),)

    def values(self, counter: CounterSpec, rows: IntervalRows) -> tuple[Vec, Column | None]:
        assert counter.parameter is not None  # defaults to the counter's name
        column = rows.frame.column(counter.parameter)
        return vec_from_column(column, rows.rows, "null"), column


class IntervalCounter(CounterType):
    """An expression over the interval's fields (and ``previous()``: the interval before)."""

    name = "interval"
    per_interval = True

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized, scope = context.checker, context.path, context.normalized, context.scope
        config = counter.config
        checker.unknown(config, (*_COMMON, "expression"), path)
        counter.expression = checker.expression(config, "expression", path, scope=scope, required=True)
        normalized["expression"] = config.get("expression")

    def crosses_intervals(self, counter: CounterSpec) -> bool:
        assert counter.expression is not None  # required by check
        return counter.expression.uses_prev

    def interval_value(
        self, counter: CounterSpec, interval: dict, previous: Mapping | None, calc: Calculator
    ) -> Any:
        assert counter.expression is not None  # required by check
        value = counter.expression.evaluate_raw(interval, previous)
        return OMIT if value is None or value is semantics.ERROR else value


class RouteCounter(CounterType):
    """The interval's positions as an encoded polyline."""

    name = "route"

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path = context.checker, context.path
        checker.unknown(counter.config, _COMMON, path)

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        return (POSITION,)

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        lat, lon, positioned = rows.frame.position()
        points = np.flatnonzero(positioned & valid)
        point_starts = np.searchsorted(points, rows.starts)
        return encode_polyline_segments(lat[points], lon[points], point_starts)

    carries = True

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        # (the line so far, its last point): a polyline is its first point, then each point's
        # offset from the one before, so the appended points continue the text.
        line, after = ("", None) if state is None else state
        lat, lon, positioned = rows.frame.position()
        points = np.flatnonzero(positioned & valid)
        if not len(points):
            return line, after
        lats, lons = lat[points].tolist(), lon[points].tolist()
        return line + encode_polyline_continued(lats, lons, after), (lats[-1], lons[-1])

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        return state[0]


class DatasetCounter(CounterType):
    """A row of named expression values per message."""

    name = "dataset"

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized, scope = context.checker, context.path, context.normalized, context.scope
        config = counter.config
        checker.unknown(config, (*_COMMON, "fields", "allow_unknown"), path)
        # flespi's ``allow_unknown``: whether a message with a field that cannot be computed
        # still gives a row (that field null). Kept in the stored form only when true.
        counter.allow_unknown = checker.boolean(config, "allow_unknown", path, False)
        if counter.allow_unknown:
            normalized["allow_unknown"] = True
        fields = config.get("fields")
        if not isinstance(fields, list) or not fields:
            checker.add(f"{path}.fields", "missing field" if fields is None else "must be a non-empty list")
        else:
            for i, field_config in enumerate(fields):
                field_path = f"{path}.fields[{i}]"
                if not isinstance(field_config, dict):
                    checker.add(field_path, "must be an object with name and value")
                    continue
                checker.unknown(field_config, ("name", "value"), field_path)
                field_name = checker.string(field_config, "name", field_path, required=True)
                expression = checker.expression(field_config, "value", field_path, scope=scope, required=True)
                if field_name is not None and expression is not None:
                    counter.fields.append((field_name, expression))
        normalized["fields"] = fields

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        return [expression.parameters for _, expression in counter.fields]

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        vecs = [(name, expression.evaluate_frame(rows.frame)) for name, expression in counter.fields]
        if not counter.allow_unknown:  # without it, a message with an unknown field gives no row
            for _, vec in vecs:
                if vec.err is not None:
                    valid = valid & ~np.broadcast_to(vec.err, (rows.rows,))
        columns = [(name, vec.to_objects(rows.rows)) for name, vec in vecs]
        valid_rows = valid.tolist()
        return [
            [
                {name: (None if values[i] is semantics.ERROR else values[i]) for name, values in columns}
                for i in range(start, stop)
                if valid_rows[i]
            ]
            for start, stop in zip(rows.starts.tolist(), rows.stops.tolist(), strict=True)
        ]

    carries = True

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        return [*(state or ()), *self.compute(counter, rows, valid)[0]]

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        return list(state)


class DatetimeCounter(CounterType):
    """The interval's begin or end, formatted in the calculator's time zone."""

    name = "datetime"

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized = context.checker, context.path, context.normalized
        config = counter.config
        checker.unknown(config, (*_COMMON, "interval", "format"), path)
        counter.method = checker.string(config, "interval", path, default="begin", choices=("begin", "end"))
        counter.value = checker.string(config, "format", path, default="%Y-%m-%d %H:%M:%S")
        normalized.update({"interval": counter.method, "format": counter.value})

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        moments = rows.timestamps[rows.first] if counter.method == "begin" else rows.timestamps[rows.last]
        return [strftime(moment, rows.calc.tz, counter.value) for moment in moments.tolist()]

    carries = True

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        # The formatted moment: the interval's first message's stays; its last one is the newest.
        if state is not None and counter.method == "begin":
            return state
        return self.compute(counter, rows, valid)[0]

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        return state


class MessageCounter(CounterType):
    """Named parameters of one message of the interval: its first or last, or (flespi's
    ``extremum``) the first one where the ``extremum`` expression reaches its ``minimum`` or
    ``maximum`` over the interval."""

    name = "message"
    methods: ClassVar[tuple[str, ...]] = ("first", "last", "minimum", "maximum")

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized = context.checker, context.path, context.normalized
        config = counter.config
        checker.unknown(config, (*_COMMON, "fields", "method", "extremum"), path)
        fields = config.get("fields")
        if (
            not isinstance(fields, list)
            or not fields
            or not all(isinstance(name, str) and name for name in fields)
        ):
            checker.add(
                f"{path}.fields", "missing field" if fields is None else "must be a non-empty list of names"
            )
        else:
            counter.fields = list(fields)
        raw_method = config.get("method")
        if isinstance(raw_method, str):
            raw_method = METHOD_ALIASES.get(raw_method, raw_method)
        method = checker.string({"method": raw_method}, "method", path, choices=self.methods)
        counter.method = method or "first"
        normalized.update({"fields": fields, "method": counter.method})
        if method is None and raw_method is not None:
            return  # a bad method: whether extremum belongs is not known
        if counter.method in ("minimum", "maximum"):
            counter.expression = checker.expression(
                config, "extremum", path, scope=context.scope, required=True
            )
            normalized["extremum"] = config.get("extremum")
        elif config.get("extremum") is not None:
            checker.add(f"{path}.extremum", "is used only with method minimum or maximum")

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        if counter.expression is not None:
            return (frozenset(counter.fields), counter.expression.parameters)
        return (frozenset(counter.fields),)

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        return self._found(counter, rows, valid)[0]

    def _found(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> tuple[list, np.ndarray | None]:
        """Each interval's message (or ``OMIT``), and with ``extremum`` the extreme it reaches."""
        extreme = None
        if counter.method in ("minimum", "maximum"):
            assert counter.expression is not None  # required by check for these methods
            vec = counter.expression.evaluate_frame(rows.frame)
            numbers, numeric = _numeric_of(vec, rows.rows)
            found, has, extreme = rows.extreme_position(
                counter.method, numbers, valid & numeric & _present(vec, rows.rows)
            )
        elif counter.method == "first":
            found, has = rows.first_position(valid)
        else:
            found, has = rows.last_position(valid)
        columns = [(name, rows.frame.column(name)) for name in counter.fields]
        values: list = []
        for i, has_message in zip(found.tolist(), has.tolist(), strict=True):
            if not has_message:
                values.append(OMIT)
                continue
            message = {}
            for name, column in columns:
                if column is not None:
                    value = column.value(i)
                    if value is not MISSING:
                        message[name] = value
            values.append(message)
        return values, extreme

    carries = True

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        # (the message or OMIT, the extreme so far: extremum only)
        values, extreme = self._found(counter, rows, valid)
        found = (values[0], None if extreme is None else float(extreme[0]))
        if state is None:
            return found
        if extreme is not None and (math.isnan(state[1]) or math.isnan(float(extreme[0]))):
            return OMIT, math.nan  # a NaN is the extreme, which no message equals
        if state[0] is OMIT:
            return found
        if found[0] is OMIT or counter.method == "first":
            return state
        if counter.method == "last":
            return found
        better = found[1] < state[1] if counter.method == "minimum" else found[1] > state[1]
        return found if better else state  # the first message to reach it

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        return dict(state[0]) if isinstance(state[0], dict) else state[0]


class SpecifiedCounter(CounterType):
    """A constant."""

    name = "specified"

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized = context.checker, context.path, context.normalized
        config = counter.config
        checker.unknown(config, (*_COMMON, "value"), path)
        if "value" not in config:
            checker.add(f"{path}.value", "missing field")
        counter.value = config.get("value")
        normalized["value"] = counter.value

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        return [counter.value] * rows.count

    carries = True

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        return None

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        return counter.value


class ActiveCounter(CounterType):
    """Whether the interval is the active one."""

    name = "active"

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path = context.checker, context.path
        checker.unknown(counter.config, _COMMON, path)

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        return rows.active.tolist()

    carries = True

    def carry(self, counter: CounterSpec, state: Any, rows: IntervalRows, valid: np.ndarray, lead: bool) -> Any:
        return None

    def carried(self, counter: CounterSpec, state: Any) -> Any:
        return True  # only the active interval is carried on


class GeofenceCounter(CounterType):
    """The name of the first geofence (of the calculator's selectors) that the interval enters."""

    name = "geofence"
    reads_geofences = True

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, scope = context.checker, context.path, context.scope
        checker.unknown(counter.config, _COMMON, path)
        if not scope.geofence_selector:
            checker.add(path, "a geofence counter needs a geofence selector")

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        return (POSITION,)

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        if rows.geofence_index is None:
            return [OMIT] * rows.count
        names = [geofence.name for geofence in rows.calc.geofences]
        index = rows.geofence_index if rows.gathered is None else rows.geofence_index[rows.gathered]
        found, has = rows.first_position(index >= 0)
        return [
            names[index[i]] if has_one else OMIT
            for i, has_one in zip(found.tolist(), has.tolist(), strict=True)
        ]


class AccumulatorCounter(CounterType):
    """An earlier counter summed over the intervals, reset at the start of each ``reset_interval``
    and at every interval for which ``reset_expression`` is true (evaluated like an ``interval``
    counter: on the interval's fields so far, ``previous()`` reading the interval before)."""

    name = "accumulator"
    per_interval = True

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path = context.checker, context.path
        normalized, earlier = context.normalized, context.earlier
        config = counter.config
        checker.unknown(config, (*_COMMON, "counter", "reset_interval", "reset_expression"), path)
        target = checker.string(config, "counter", path, required=True)
        if target is not None and target not in {other.name for other in earlier}:
            checker.add(f"{path}.counter", f"must name a counter listed before this one, not '{target}'")
        counter.parameter = target
        counter.method = checker.string(config, "reset_interval", path, choices=RESETS)
        normalized.update({"counter": target, "reset_interval": counter.method})
        # Kept in the stored form only when given, so that no stored accumulator changed.
        counter.expression = checker.expression(config, "reset_expression", path, scope=context.scope)
        if config.get("reset_expression") is not None:
            normalized["reset_expression"] = config["reset_expression"]

    def crosses_intervals(self, counter: CounterSpec) -> bool:
        return True

    def interval_value(
        self, counter: CounterSpec, interval: dict, previous: Mapping | None, calc: Calculator
    ) -> Any:
        raw_own = interval.get(counter.parameter)
        own = semantics.as_number(raw_own) if raw_own is not None else semantics.ERROR
        carry = None
        if (
            previous is not None
            and semantics.is_number(previous.get(counter.name))
            and (
                counter.method is None
                or _same_period(calc, previous["begin"], interval["begin"], counter.method)
            )
            and not (counter.expression is not None and counter.expression.matches(interval, previous))
        ):
            carry = float(previous[counter.name])
        if isinstance(own, float):  # as_number gives a float or ERROR
            return (carry or 0.0) + own
        return OMIT if carry is None else carry


def _same_period(calc: Calculator, first: float, second: float, split: str) -> bool:
    keys = period_keys(np.array([float(first), float(second)]), calc.tz, split)
    return keys[0] == keys[1]


class CalculatorCounter(CounterType):
    """Another calculator's intervals of the device inside this interval (``chains``): by
    ``method``, a list of their ``fields`` (``list``, every field when none are named), how many
    (``count``), the fields of the first or last, or one field reduced (``summary``, ``minimum``,
    ``maximum``, ``average`` over the intervals where it is a number). ``allow_start_before`` /
    ``allow_finish_after`` also take the intervals that begin before this one / end after it."""

    name = "calculator"
    methods: ClassVar[tuple[str, ...]] = ("list", "count", "first", "last", "summary", "minimum", "maximum", "average")
    _REDUCED: ClassVar[tuple[str, ...]] = ("summary", "minimum", "maximum", "average")

    def check(self, counter: CounterSpec, context: CheckContext) -> None:
        checker, path, normalized = context.checker, context.path, context.normalized
        config = counter.config
        checker.unknown(config, ("name", "type", "calc_id", "fields", "method", "allow_start_before",
                                 "allow_finish_after"), path)
        calc_id = checker.calc_id(config, "calc_id", path)
        fields = config.get("fields", [])
        if fields is None:
            fields = []
        if not isinstance(fields, list) or not all(isinstance(name, str) and name for name in fields):
            checker.add(f"{path}.fields", "must be a list of field names")
            fields = []
        raw_method = config.get("method")
        if isinstance(raw_method, str):
            raw_method = METHOD_ALIASES.get(raw_method, raw_method)
        method = checker.string({"method": raw_method}, "method", path, choices=self.methods) or "list"
        if method in self._REDUCED and len(fields) != 1:
            checker.add(f"{path}.fields", f"method {method} reduces one field: name exactly one")
        elif method == "count" and fields:
            checker.add(f"{path}.fields", "method count reads no field")
        counter.method = method
        counter.fields = list(fields)
        counter.value = {
            "calc_id": calc_id,
            "allow_start_before": checker.boolean(config, "allow_start_before", path, False),
            "allow_finish_after": checker.boolean(config, "allow_finish_after", path, False),
        }
        normalized.update({"calc_id": calc_id, "fields": counter.fields, "method": method,
                           "allow_start_before": counter.value["allow_start_before"],
                           "allow_finish_after": counter.value["allow_finish_after"]})

    def parameters(self, counter: CounterSpec) -> Iterable[frozenset[str] | None]:
        return (frozenset(),)  # the interval's bounds only

    def compute(self, counter: CounterSpec, rows: IntervalRows, valid: np.ndarray) -> list:
        settings = counter.value
        span = rows.chained.get(settings["calc_id"]) or SourceSpan.of([])
        begins = rows.timestamps[rows.first].tolist()
        ends = rows.timestamps[rows.last].tolist()
        values = []
        for begin, end in zip(begins, ends, strict=True):
            inside = span.within(begin, end, start_before=settings["allow_start_before"],
                                 finish_after=settings["allow_finish_after"])
            values.append(self._value(counter, inside))
        return values

    def _value(self, counter: CounterSpec, inside: list[dict]):
        method, fields = counter.method, counter.fields
        if method == "count":
            return len(inside)
        if method == "list":
            return [self._fields(interval, fields) for interval in inside]
        if method in ("first", "last"):
            return self._fields(inside[0 if method == "first" else -1], fields) if inside else OMIT
        numbers = [value for interval in inside if semantics.is_number(value := interval.get(fields[0]))]
        if not numbers:
            return OMIT
        if method == "summary":
            return sum(numbers)
        if method == "average":
            return sum(numbers) / len(numbers)
        return min(numbers) if method == "minimum" else max(numbers)

    @staticmethod
    def _fields(interval: Mapping, fields: list[str]) -> dict:
        if not fields:
            return dict(interval)
        return {name: interval[name] for name in fields if name in interval}


# In the order the validation's "must be one of" lists them.
COUNTER_TYPES: dict[str, CounterType] = {
    counter_type.name: counter_type()
    for counter_type in (
        ExpressionCounter,
        ParameterCounter,
        IntervalCounter,
        RouteCounter,
        DatasetCounter,
        DatetimeCounter,
        MessageCounter,
        SpecifiedCounter,
        ActiveCounter,
        GeofenceCounter,
        AccumulatorCounter,
        CalculatorCounter,
    )
}


def message_counters(
    calc: Calculator,
    messages: Messages,
    first: np.ndarray,
    last: np.ndarray,
    active: np.ndarray,
    geofence_index: np.ndarray | None,
    skip: Collection[str] = (),
    chained: Mapping[int, SourceSpan] | None = None,
) -> list[tuple[CounterSpec, list | None]]:
    """Values of every counter that depends only on the interval's own messages, in counter order
    (``None`` for ``per_interval`` counters, filled later, and for the counters named in
    ``skip``, which the caller computes); the intervals run from message ``first[i]`` to
    ``last[i]``."""
    values: list[tuple[CounterSpec, list | None]] = []
    if not calc.counters:
        return values
    rows = IntervalRows(calc, messages, first, last, active, geofence_index, chained)
    for counter in calc.counters:
        counter_type = COUNTER_TYPES[counter.type]
        if rows.count == 0:
            values.append((counter, []))
            continue
        if counter_type.per_interval or counter.name in skip:
            values.append((counter, None))
            continue
        valid = (
            np.ones(rows.rows, bool)
            if counter.validate is None
            else counter.validate.evaluate_frame(rows.frame).truth()
        )
        values.append((counter, counter_type.compute(counter, rows, valid)))
    return values


def counters_carried(calc: Calculator, states: Sequence[Any] | None, messages: Messages) -> tuple | None:
    """The ``carry`` state of each counter of ``calc`` (in counter order; ``None`` for the
    ``per_interval`` ones) once ``messages`` are appended to an interval whose counters' states
    are ``states``; ``states`` None: ``messages`` are all of the interval's. With ``states``,
    ``messages`` begin with the interval's last message so far (the previous message of the next,
    not counted again). ``None`` when a counter is not carried."""
    rows = IntervalRows(
        calc, messages, np.zeros(1, np.int64), np.full(1, len(messages) - 1, np.int64), np.ones(1, bool), None
    )
    lead = states is not None
    added = np.ones(rows.rows, bool)
    added[0] = not lead
    carried: list[Any] = []
    for index, counter in enumerate(calc.counters):
        counter_type = COUNTER_TYPES[counter.type]
        if counter_type.per_interval:
            carried.append(None)
            continue
        if not counter_type.carries:
            return None
        valid = added if counter.validate is None else added & counter.validate.evaluate_frame(rows.frame).truth()
        carried.append(counter_type.carry(counter, None if states is None else states[index], rows, valid, lead))
    return tuple(carried)


def carried_values(calc: Calculator, states: Sequence[Any]) -> list[tuple[CounterSpec, list | None]]:
    """``message_counters`` of one interval from its counters' ``carry`` states."""
    values: list[tuple[CounterSpec, list | None]] = []
    for counter, state in zip(calc.counters, states, strict=True):
        counter_type = COUNTER_TYPES[counter.type]
        values.append((counter, None if counter_type.per_interval else [counter_type.carried(counter, state)]))
    return values
