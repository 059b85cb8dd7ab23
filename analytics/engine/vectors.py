"""Columnar values and the frame they are computed over, with the numpy operations that the
expression operators and functions share.

A columnar value is a ``Vec``: ``kind`` (``num``/``bool``/``obj``), ``values``, and the masks
``null`` and ``err`` (``None`` = nowhere). An operation on an ``obj`` column (strings, mixed
types) falls back to the scalar functions of ``values`` element by element (``fallback``), so the
row and column evaluators share one definition of the semantics.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import values as V
from .columns import Column

LAT = "position.latitude"
LON = "position.longitude"


def any_of(*masks):
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else (out | m)
    return out


def and_not(m, k):
    if m is None:
        return None
    if k is None:
        return m
    return m & ~k


class Vec:
    __slots__ = ("err", "kind", "null", "values")

    def __init__(self, kind, values, null=None, err=None):
        self.kind = kind
        self.values = values
        self.null = null
        self.err = err

    @classmethod
    def const(cls, value) -> Vec:
        if value is None:
            return cls("num", np.zeros(1), np.ones(1, bool))
        if value is True or value is False:
            return cls("bool", np.array([value]))
        if V.is_number(value):
            return cls("num", np.array([float(value)]))
        arr = np.empty(1, dtype=object)
        arr[0] = value
        return cls("obj", arr)

    @classmethod
    def from_objects(cls, objs: list) -> Vec:
        n = len(objs)
        err = np.fromiter((o is V.ERROR for o in objs), bool, n)
        null = np.fromiter((o is None for o in objs), bool, n)
        real = [o for o in objs if o is not None and o is not V.ERROR]
        err_m = err if err.any() else None
        null_m = null if null.any() else None
        if all(V.is_number(o) for o in real):
            vals = np.fromiter((float(o) if V.is_number(o) else 0.0 for o in objs), np.float64, n)
            return cls("num", vals, null_m, err_m)
        if all(o is True or o is False for o in real):
            vals = np.fromiter((o is True for o in objs), bool, n)
            return cls("bool", vals, null_m, err_m)
        arr = np.empty(n, dtype=object)
        arr[:] = [None if (o is None or o is V.ERROR) else o for o in objs]
        return cls("obj", arr, null_m, err_m)

    def expand(self, n: int) -> Vec:
        def full(a):
            if a is None or len(a) == n:
                return a
            return np.broadcast_to(a, (n,)).copy()

        return Vec(self.kind, full(self.values), full(self.null), full(self.err))

    def to_objects(self, n: int) -> list:
        v = self.expand(n)
        out = list(v.values) if v.kind == "obj" else v.values.tolist()
        if v.null is not None:
            for i in np.flatnonzero(v.null).tolist():
                out[i] = None
        if v.err is not None:
            for i in np.flatnonzero(v.err).tolist():
                out[i] = V.ERROR
        return out

    def floats(self) -> np.ndarray:
        return self.values.astype(np.float64) if self.kind == "bool" else self.values

    def truth(self) -> np.ndarray:
        """Where the value is true (errors and nulls are not)."""
        if self.kind == "bool":
            t = self.values
        elif self.kind == "num":
            t = self.values != 0
        else:
            t = np.fromiter((V.truth(o) for o in self.values), bool, len(self.values))
        if self.null is not None:
            t = t & ~self.null
        if self.err is not None:
            t = t & ~self.err
        return t


def vec_from_column(col: Column | None, n: int, missing_is: str) -> Vec:
    """``missing_is``: ``err`` for a bare name, ``null`` for ``$name``/``#name``."""
    if col is None:
        mask = np.ones(n, bool)
        return Vec(
            "num", np.zeros(n), None if missing_is == "err" else mask, mask if missing_is == "err" else None
        )
    values = col.values
    if col.kind == "obj":
        values = np.empty(n, dtype=object)  # not np.array(list): lists would become a 2-D array
        values[:] = [V.normalize(o) for o in col.values.tolist()]
    if missing_is == "err":
        return Vec(col.kind, values, col.null, col.missing)
    return Vec(col.kind, values, any_of(col.null, col.missing))


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
        n = self.n
        if prev:
            lat, lon, valid = self.position()
            if valid.all():
                before = np.arange(-1, n - 1)
                ok = self.prev_valid
            else:
                idx = np.arange(n)
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
                res = (np.zeros(n), np.zeros(n), np.zeros(n, bool))
            else:
                lat, vlat = numeric_column(lat_c)
                lon, vlon = numeric_column(lon_c)
                res = (lat, lon, vlat & vlon)
        self._cache[key] = res
        return res


def numeric_column(col: Column):
    """Float values and where they are real numbers (not bool, not null, present)."""
    n = len(col)
    if col.kind == "num":
        valid = np.ones(n, bool)
        vals = col.values
    elif col.kind == "bool":
        return np.zeros(n), np.zeros(n, bool)
    else:
        objs = col.values.tolist()
        valid = np.fromiter((V.is_number(o) for o in objs), bool, n)
        vals = np.fromiter((float(o) if V.is_number(o) else 0.0 for o in objs), np.float64, n)
    if col.missing is not None:
        valid &= ~col.missing
    if col.null is not None:
        valid &= ~col.null
    return vals, valid


def fallback(fn, vecs: list[Vec], n: int) -> Vec:
    cols = [v.to_objects(n) for v in vecs]
    return Vec.from_objects([fn(*args) for args in zip(*cols, strict=True)])


def is_typed(*vecs: Vec) -> bool:
    return all(v.kind != "obj" for v in vecs)


_BIT_LIMIT = float(2**53)


def vec_arith(op, a: Vec, b: Vec, n) -> Vec:
    if not is_typed(a, b):
        return fallback(lambda x, y: V.arith(op, x, y), [a, b], n)
    x = a.floats()
    y = b.floats()
    err = any_of(a.err, b.err)
    null = and_not(any_of(a.null, b.null), err)
    with np.errstate(all="ignore"):
        bad = None
        if op == "+":
            r = x + y
        elif op == "-":
            r = x - y
        elif op == "*":
            r = x * y
        elif op == "/":
            bad = y == 0
            r = x / np.where(bad, 1.0, y)
        elif op == "%":
            bad = y == 0
            r = np.fmod(x, np.where(bad, 1.0, y))
        else:
            bad = (np.abs(x) >= _BIT_LIMIT) | (np.abs(y) >= _BIT_LIMIT)
            xi = np.where(bad, 0.0, x).astype(np.int64)
            yi = np.where(bad, 0.0, y).astype(np.int64)
            r = (xi & yi if op == "&" else xi | yi).astype(np.float64)
        fail = ~np.isfinite(r)
        if bad is not None:
            fail = fail | bad
    fail = and_not(and_not(fail, null), err)
    if fail is not None and fail.any():
        err = fail if err is None else (err | fail)
    return Vec("num", r, null, err)


def vec_compare(op, a: Vec, b: Vec, n) -> Vec:
    if not is_typed(a, b):
        return fallback(lambda x, y: V.compare(op, x, y), [a, b], n)
    x = a.floats()
    y = b.floats()
    if a.null is not None:
        x = np.where(a.null, 0.0, x)
    if b.null is not None:
        y = np.where(b.null, 0.0, y)
    if op == "==":
        r = x == y
    elif op == "!=":
        r = x != y
    elif op == "<":
        r = x < y
    elif op == ">":
        r = x > y
    elif op == "<=":
        r = x <= y
    else:
        r = x >= y
    return Vec("bool", r, None, any_of(a.err, b.err))


def errmask(v: Vec, n):
    return np.zeros(n, bool) if v.err is None else np.broadcast_to(v.err, (n,))


def vec_and(a: Vec, b: Vec, n) -> Vec:
    ea, eb = errmask(a, n), errmask(b, n)
    false = (~np.broadcast_to(a.truth(), (n,)) & ~ea) | (~np.broadcast_to(b.truth(), (n,)) & ~eb)
    err = ~false & (ea | eb)
    return Vec("bool", ~false & ~err, None, err if err.any() else None)


def vec_or(a: Vec, b: Vec, n) -> Vec:
    ea, eb = errmask(a, n), errmask(b, n)
    true = np.broadcast_to(a.truth(), (n,)) | np.broadcast_to(b.truth(), (n,))
    err = ~true & (ea | eb)
    return Vec("bool", true, None, err if err.any() else None)


def vec_not(a: Vec, n) -> Vec:
    return Vec("bool", ~a.truth(), None, a.err)


def vec_neg(a: Vec, n) -> Vec:
    if not is_typed(a):
        return fallback(V.negate, [a], n)
    return Vec("num", -a.floats(), a.null, a.err)


def vec_unary_num(fn_np, fn_scalar, a: Vec, n, domain=None) -> Vec:
    if not is_typed(a):
        return fallback(fn_scalar, [a], n)
    x = a.floats()
    with np.errstate(all="ignore"):
        bad = None if domain is None else ~domain(x)
        r = fn_np(np.where(bad, 0.0, x) if bad is not None else x)
    err = a.err
    if bad is not None:
        bad = and_not(and_not(bad, a.null), a.err)
        if bad.any():
            err = bad if err is None else (err | bad)
    return Vec("num", r, a.null, err)
