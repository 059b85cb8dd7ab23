"""Columnar values and the frame they are computed over, with the numpy operations that the
expression operators and functions share.

A columnar value is a ``Vec``: ``kind`` (a ``ColumnKind``), ``values``, and the masks
``null`` and ``err`` (``None`` = nowhere). An operation on an ``obj`` column (strings, mixed
types) falls back to the scalar functions of ``values`` element by element (``fallback``), so the
row and column evaluators share one definition of the semantics.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

from . import values as semantics
from .columns import Column, ColumnKind

LAT = "position.latitude"
LON = "position.longitude"


def any_of(*masks):
    combined = None
    for mask in masks:
        if mask is None:
            continue
        combined = mask if combined is None else (combined | mask)
    return combined


def and_not(mask, excluded):
    if mask is None:
        return None
    if excluded is None:
        return mask
    return mask & ~excluded


class Vec:
    """The value of an expression over the rows of a frame. Not a ``Column``: a Vec has an error
    mask (where evaluation failed) and no missing mask, and a constant is one row that
    ``expand`` broadcasts."""

    __slots__ = ("err", "kind", "null", "values")

    def __init__(self, kind, values, null=None, err=None):
        self.kind = kind
        self.values = values
        self.null = null
        self.err = err

    @classmethod
    def const(cls, value) -> Vec:
        if value is None:
            return cls(ColumnKind.NUM, np.zeros(1), np.ones(1, bool))
        if value is True or value is False:
            return cls(ColumnKind.BOOL, np.array([value]))
        if semantics.is_number(value):
            return cls(ColumnKind.NUM, np.array([float(value)]))
        array = np.empty(1, dtype=object)
        array[0] = value
        return cls(ColumnKind.OBJ, array)

    @classmethod
    def from_objects(cls, objects: list) -> Vec:
        count = len(objects)
        err = np.fromiter((value is semantics.ERROR for value in objects), bool, count)
        null = np.fromiter((value is None for value in objects), bool, count)
        real = [value for value in objects if value is not None and value is not semantics.ERROR]
        err_mask = err if err.any() else None
        null_mask = null if null.any() else None
        if all(semantics.is_number(value) for value in real):
            numbers = np.fromiter(
                (float(value) if semantics.is_number(value) else 0.0 for value in objects), np.float64, count
            )
            return cls(ColumnKind.NUM, numbers, null_mask, err_mask)
        if all(value is True or value is False for value in real):
            flags = np.fromiter((value is True for value in objects), bool, count)
            return cls(ColumnKind.BOOL, flags, null_mask, err_mask)
        array = np.empty(count, dtype=object)
        array[:] = [None if (value is None or value is semantics.ERROR) else value for value in objects]
        return cls(ColumnKind.OBJ, array, null_mask, err_mask)

    def expand(self, rows: int) -> Vec:
        def full(array):
            if array is None or len(array) == rows:
                return array
            return np.broadcast_to(array, (rows,)).copy()

        return Vec(self.kind, full(self.values), full(self.null), full(self.err))

    def to_objects(self, rows: int) -> list:
        expanded = self.expand(rows)
        objects = list(expanded.values) if expanded.kind == ColumnKind.OBJ else expanded.values.tolist()
        if expanded.null is not None:
            for i in np.flatnonzero(expanded.null).tolist():
                objects[i] = None
        if expanded.err is not None:
            for i in np.flatnonzero(expanded.err).tolist():
                objects[i] = semantics.ERROR
        return objects

    def floats(self) -> np.ndarray:
        return self.values.astype(np.float64) if self.kind == ColumnKind.BOOL else self.values

    def truth(self) -> np.ndarray:
        """Where the value is true (errors and nulls are not)."""
        if self.kind == ColumnKind.BOOL:
            truthy = self.values
        elif self.kind == ColumnKind.NUM:
            truthy = self.values != 0
        else:
            truthy = np.fromiter((semantics.truth(value) for value in self.values), bool, len(self.values))
        if self.null is not None:
            truthy = truthy & ~self.null
        if self.err is not None:
            truthy = truthy & ~self.err
        return truthy


def vec_from_column(column: Column | None, rows: int, missing_is: str) -> Vec:
    """``missing_is``: ``err`` for a bare name, ``null`` for ``$name``/``#name``."""
    if column is None:
        mask = np.ones(rows, bool)
        return Vec(
            ColumnKind.NUM,
            np.zeros(rows),
            None if missing_is == "err" else mask,
            mask if missing_is == "err" else None,
        )
    values = column.values
    if column.kind == ColumnKind.OBJ:
        values = np.empty(rows, dtype=object)  # not np.array(list): lists would become a 2-D array
        values[:] = [semantics.normalize(value) for value in column.values.tolist()]
    if missing_is == "err":
        return Vec(column.kind, values, column.null, column.missing)
    return Vec(column.kind, values, any_of(column.null, column.missing))


class Rows(Protocol):
    """What a frame reads: ``Messages``, or a subset of their rows gathered column by column."""

    @property
    def timestamps(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def column(self, name: str) -> Column | None: ...


class Frame:
    """Rows for columnar evaluation: the messages, and for each row whether it has a previous row
    (``prev_valid``; the first row never has one)."""

    def __init__(self, messages: Rows, prev_valid: np.ndarray | None = None):
        self.messages = messages
        self.n = len(messages)
        if prev_valid is None:
            prev_valid = np.ones(self.n, bool)
            if self.n:
                prev_valid[0] = False
        self.prev_valid = prev_valid
        self._prev_idx = None
        self._cache: dict = {}

    @property
    def timestamps(self) -> np.ndarray:
        return self.messages.timestamps

    def column(self, name: str) -> Column | None:
        return self.messages.column(name)

    def prev_column(self, name: str) -> Column | None:
        key = ("prev", name)
        if key in self._cache:
            return self._cache[key]
        col = self.column(name)
        if col is not None and self.n:
            idx = np.arange(-1, self.n - 1)
            idx[0] = 0
            shifted = col.take(idx)
            missing = ~self.prev_valid
            if shifted.missing is not None:
                missing = missing | shifted.missing
            col = Column(shifted.kind, shifted.values, missing, shifted.null, shifted.ints)
        self._cache[key] = col
        return col

    def position(self, prev: bool = False):
        """Latitudes, longitudes and where a row has a position; with ``prev``, those of the
        last earlier row that had one (``mileage()`` measures from it), within the rows since
        the last one without a previous row."""
        key = ("pos", prev)
        if key in self._cache:
            return self._cache[key]
        rows = self.n
        if prev:
            lat, lon, valid = self.position()
            if valid.all():
                before = np.arange(-1, rows - 1)
                ok = self.prev_valid
            else:
                idx = np.arange(rows)
                last = np.maximum.accumulate(np.where(valid, idx, -1))
                before = np.concatenate(([-1], last[:-1]))
                start = np.maximum.accumulate(np.where(self.prev_valid, 0, idx))
                ok = before >= start
            pick = np.maximum(before, 0)
            res = (lat[pick], lon[pick], ok)
        else:
            lat_c = self.column(LAT)
            lon_c = self.column(LON)
            if lat_c is None or lon_c is None:
                res = (np.zeros(rows), np.zeros(rows), np.zeros(rows, bool))
            else:
                lat, vlat = numeric_column(lat_c)
                lon, vlon = numeric_column(lon_c)
                res = (lat, lon, vlat & vlon)
        self._cache[key] = res
        return res


def numeric_column(column: Column):
    """Float values and where they are real numbers (not bool, not null, present)."""
    rows = len(column)
    if column.kind == ColumnKind.NUM:
        valid = np.ones(rows, bool)
        numbers = column.values
    elif column.kind == ColumnKind.BOOL:
        return np.zeros(rows), np.zeros(rows, bool)
    else:
        objects = column.values.tolist()
        valid = np.fromiter((semantics.is_number(value) for value in objects), bool, rows)
        numbers = np.fromiter(
            (float(value) if semantics.is_number(value) else 0.0 for value in objects), np.float64, rows
        )
    if column.missing is not None:
        valid &= ~column.missing
    if column.null is not None:
        valid &= ~column.null
    return numbers, valid


def fallback(fn, vecs: list[Vec], rows: int) -> Vec:
    columns = [vec.to_objects(rows) for vec in vecs]
    return Vec.from_objects([fn(*args) for args in zip(*columns, strict=True)])


def is_typed(*vecs: Vec) -> bool:
    return all(vec.kind != ColumnKind.OBJ for vec in vecs)


_BIT_LIMIT = float(2**53)


def vec_arith(op, left: Vec, right: Vec, rows) -> Vec:
    if not is_typed(left, right):
        return fallback(functools.partial(semantics.arith, op), [left, right], rows)
    left_numbers = left.floats()
    right_numbers = right.floats()
    err = any_of(left.err, right.err)
    null = and_not(any_of(left.null, right.null), err)
    with np.errstate(all="ignore"):
        bad = None
        if op == "+":
            result = left_numbers + right_numbers
        elif op == "-":
            result = left_numbers - right_numbers
        elif op == "*":
            result = left_numbers * right_numbers
        elif op == "/":
            bad = right_numbers == 0
            result = left_numbers / np.where(bad, 1.0, right_numbers)
        elif op == "%":
            bad = right_numbers == 0
            result = np.fmod(left_numbers, np.where(bad, 1.0, right_numbers))
        else:
            bad = (np.abs(left_numbers) >= _BIT_LIMIT) | (np.abs(right_numbers) >= _BIT_LIMIT)
            xi = np.where(bad, 0.0, left_numbers).astype(np.int64)
            yi = np.where(bad, 0.0, right_numbers).astype(np.int64)
            result = (xi & yi if op == "&" else xi | yi).astype(np.float64)
        fail = ~np.isfinite(result)
        if bad is not None:
            fail = fail | bad
    fail = and_not(and_not(fail, null), err)
    if fail is not None and fail.any():
        err = fail if err is None else (err | fail)
    return Vec(ColumnKind.NUM, result, null, err)


def vec_compare(op, left: Vec, right: Vec, rows) -> Vec:
    if not is_typed(left, right):
        return fallback(functools.partial(semantics.compare, op), [left, right], rows)
    left_numbers = left.floats()
    right_numbers = right.floats()
    if left.null is not None:
        left_numbers = np.where(left.null, 0.0, left_numbers)
    if right.null is not None:
        right_numbers = np.where(right.null, 0.0, right_numbers)
    if op == "==":
        result = left_numbers == right_numbers
    elif op == "!=":
        result = left_numbers != right_numbers
    elif op == "<":
        result = left_numbers < right_numbers
    elif op == ">":
        result = left_numbers > right_numbers
    elif op == "<=":
        result = left_numbers <= right_numbers
    else:
        result = left_numbers >= right_numbers
    return Vec(ColumnKind.BOOL, result, None, any_of(left.err, right.err))


def errmask(vec: Vec, rows):
    return np.zeros(rows, bool) if vec.err is None else np.broadcast_to(vec.err, (rows,))


def vec_and(left: Vec, right: Vec, rows) -> Vec:
    left_error, right_error = errmask(left, rows), errmask(right, rows)
    false = (~np.broadcast_to(left.truth(), (rows,)) & ~left_error) | (
        ~np.broadcast_to(right.truth(), (rows,)) & ~right_error
    )
    err = ~false & (left_error | right_error)
    return Vec(ColumnKind.BOOL, ~false & ~err, None, err if err.any() else None)


def vec_or(left: Vec, right: Vec, rows) -> Vec:
    left_error, right_error = errmask(left, rows), errmask(right, rows)
    true = np.broadcast_to(left.truth(), (rows,)) | np.broadcast_to(right.truth(), (rows,))
    err = ~true & (left_error | right_error)
    return Vec(ColumnKind.BOOL, true, None, err if err.any() else None)


def vec_not(operand: Vec, rows) -> Vec:
    return Vec(ColumnKind.BOOL, ~operand.truth(), None, operand.err)


def vec_neg(operand: Vec, rows) -> Vec:
    if not is_typed(operand):
        return fallback(semantics.negate, [operand], rows)
    return Vec(ColumnKind.NUM, -operand.floats(), operand.null, operand.err)


def vec_unary_num(fn_np, fn_scalar, operand: Vec, rows, domain=None) -> Vec:
    if not is_typed(operand):
        return fallback(fn_scalar, [operand], rows)
    numbers = operand.floats()
    with np.errstate(all="ignore"):
        bad = None if domain is None else ~domain(numbers)
        result = fn_np(np.where(bad, 0.0, numbers) if bad is not None else numbers)
    err = operand.err
    if bad is not None:
        bad = and_not(and_not(bad, operand.null), operand.err)
        if bad.any():
            err = bad if err is None else (err | bad)
    return Vec(ColumnKind.NUM, result, operand.null, err)
