"""Columnar messages: one numpy array of timestamps and one typed column per parameter.

A column is ``num`` (float64), ``bool`` or ``obj`` (Python objects: strings, lists, objects, or a
parameter whose messages disagree on its type). Each column has a ``missing`` mask (the key is
absent from the message) and a ``null`` mask (the key holds JSON null); ``None`` for a mask means
"nowhere". Numeric columns remember whether every value was an int, so that counters that copy
raw values (``parameter`` first/last/distinct, ``message``) give back ints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .values import is_number

_MISSING = object()


class Column:
    __slots__ = ("ints", "kind", "missing", "null", "values")

    def __init__(self, kind: str, values: np.ndarray, missing=None, null=None, ints: bool = False):
        self.kind = kind
        self.values = values
        self.missing = missing if missing is not None and missing.any() else None
        self.null = null if null is not None and null.any() else None
        self.ints = ints

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def from_values(cls, raw: Sequence) -> Column:
        """From Python values, with ``_MISSING`` for an absent key and ``None`` for null."""
        n = len(raw)
        missing = np.fromiter((v is _MISSING for v in raw), bool, n)
        null = np.fromiter((v is None for v in raw), bool, n)
        present = [v for v in raw if v is not _MISSING and v is not None]
        if present and all(is_number(v) for v in present):
            values = np.fromiter((float(v) if is_number(v) else 0.0 for v in raw), np.float64, n)
            return cls("num", values, missing, null, ints=all(type(v) is int for v in present))
        if present and all(v is True or v is False for v in present):
            values = np.fromiter((v is True for v in raw), bool, n)
            return cls("bool", values, missing, null)
        values = np.empty(n, dtype=object)
        values[:] = [None if v is _MISSING else v for v in raw]
        return cls("obj", values, missing, null)

    @classmethod
    def from_array(cls, values, present=None) -> Column:
        """From an array (numbers, booleans or objects) and an optional mask of where the key
        is present."""
        arr = np.asarray(values)
        missing = None if present is None else ~np.asarray(present, dtype=bool)
        if arr.dtype == bool:
            return cls("bool", arr, missing)
        if arr.dtype.kind in "iu":
            return cls("num", arr.astype(np.float64), missing, ints=True)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float64, copy=False)
            nan = np.isnan(arr)
            if nan.any():
                # NaN in a numeric column is how callers often spell "absent".
                missing = nan if missing is None else (missing | nan)
                arr = np.where(nan, 0.0, arr)
            return cls("num", arr, missing)
        return cls.from_values(
            [_MISSING if (missing is not None and missing[i]) else v for i, v in enumerate(arr.tolist())]
        )

    def take(self, idx) -> Column:
        return Column(
            self.kind,
            self.values[idx],
            None if self.missing is None else self.missing[idx],
            None if self.null is None else self.null[idx],
            self.ints,
        )

    def present_mask(self) -> np.ndarray:
        n = len(self.values)
        return np.ones(n, bool) if self.missing is None else ~self.missing

    def value(self, i: int):
        """The raw value at row ``i``: ``_MISSING``, ``None`` or the value."""
        if self.missing is not None and self.missing[i]:
            return _MISSING
        if self.null is not None and self.null[i]:
            return None
        v = self.values[i]
        if self.kind == "num":
            v = float(v)
            return int(v) if self.ints and v.is_integer() else v
        if self.kind == "bool":
            return bool(v)
        return v

    def to_objects(self) -> list:
        """Python values of every row (``_MISSING`` where absent), ints restored."""
        if self.kind == "num":
            vals = self.values.tolist()
            if self.ints:
                vals = [int(v) if v.is_integer() else v for v in vals]
        else:
            vals = self.values.tolist()
        if self.null is not None:
            for i in np.flatnonzero(self.null).tolist():
                vals[i] = None
        if self.missing is not None:
            for i in np.flatnonzero(self.missing).tolist():
                vals[i] = _MISSING
        return vals


def concat_columns(cols: list[Column | None], lengths: list[int]) -> Column:
    kinds = {c.kind for c in cols if c is not None}
    if len(kinds) == 1:
        kind = kinds.pop()
        parts, missing, null = [], [], []
        filler = {"num": 0.0, "bool": False, "obj": None}[kind]
        dtype = {"num": np.float64, "bool": bool, "obj": object}[kind]
        for c, n in zip(cols, lengths, strict=True):
            if c is None:
                arr: np.ndarray = np.empty(n, dtype=dtype)
                arr[:] = filler
                parts.append(arr)
                missing.append(np.ones(n, bool))
                null.append(np.zeros(n, bool))
            else:
                parts.append(c.values)
                missing.append(c.missing if c.missing is not None else np.zeros(n, bool))
                null.append(c.null if c.null is not None else np.zeros(n, bool))
        ints = all(c.ints for c in cols if c is not None)
        return Column(kind, np.concatenate(parts), np.concatenate(missing), np.concatenate(null), ints)
    raw: list = []
    for c, n in zip(cols, lengths, strict=True):
        raw.extend([_MISSING] * n if c is None else c.to_objects())
    return Column.from_values(raw)


class Messages:
    """Messages of one device, sorted by timestamp, stored by column.

    Build with ``Messages.from_dicts(list_of_dicts)`` or ``Messages.from_columns(timestamps,
    {"position.speed": array, ...})``. Timestamps must be unique and increasing in the columnar
    form; ``from_dicts`` sorts and merges equal timestamps (later keys overwrite, DESIGN 7.1).
    """

    __slots__ = ("_columns", "timestamps")

    def __init__(self, timestamps: np.ndarray, columns: dict[str, Column]):
        self.timestamps = timestamps
        self._columns = columns

    # ---- construction ----

    @classmethod
    def from_dicts(cls, messages: Iterable[Mapping]) -> Messages:
        msgs = list(messages)
        ts = []
        for i, m in enumerate(msgs):
            t = m.get("timestamp")
            if not is_number(t) or not math.isfinite(t):
                raise ValueError(f"message {i}: timestamp must be a finite number")
            ts.append(float(t))
        order = sorted(range(len(msgs)), key=ts.__getitem__)
        merged: list[Mapping] = []
        times: list[float] = []
        for i in order:
            if times and times[-1] == ts[i]:
                merged[-1] = {**merged[-1], **msgs[i]}
            else:
                merged.append(msgs[i])
                times.append(ts[i])
        keys: dict[str, None] = {}
        for m in merged:
            for k in m:
                keys[k] = None
        keys.pop("timestamp", None)
        columns = {k: Column.from_values([m.get(k, _MISSING) for m in merged]) for k in keys}
        return cls(np.asarray(times, dtype=np.float64), columns)

    @classmethod
    def from_columns(cls, timestamps, columns: Mapping[str, object] | None = None) -> Messages:
        """``columns`` maps a parameter to an array (NaN = absent in a float array), a
        ``(values, present_mask)`` pair, or a ready ``Column``."""
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.ndim != 1:
            raise ValueError("timestamps must be one-dimensional")
        if len(ts) > 1 and not (np.diff(ts) > 0).all():
            raise ValueError("timestamps must be strictly increasing")
        cols: dict[str, Column] = {}
        for name, spec in (columns or {}).items():
            if isinstance(spec, Column):
                col = spec
            elif isinstance(spec, tuple):
                col = Column.from_array(spec[0], spec[1])
            else:
                col = Column.from_array(spec)
            if len(col) != len(ts):
                raise ValueError(f"column {name!r} has {len(col)} values for {len(ts)} timestamps")
            cols[name] = col
        return cls(ts, cols)

    @classmethod
    def coerce(cls, messages) -> Messages:
        if isinstance(messages, Messages):
            return messages
        return cls.from_dicts(messages)

    @classmethod
    def concat(cls, parts: list[Messages]) -> Messages:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros(0), {})
        if len(parts) == 1:
            return parts[0]
        names: dict[str, None] = {}
        for p in parts:
            for k in p._columns:
                names[k] = None
        lengths = [len(p) for p in parts]
        cols = {k: concat_columns([p._columns.get(k) for p in parts], lengths) for k in names}
        return cls(np.concatenate([p.timestamps for p in parts]), cols)

    # ---- access ----

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def names(self) -> list[str]:
        return list(self._columns)

    def column(self, name: str) -> Column | None:
        if name == "timestamp":
            return Column("num", self.timestamps)
        return self._columns.get(name)

    def take(self, idx) -> Messages:
        return Messages(self.timestamps[idx], {k: c.take(idx) for k, c in self._columns.items()})

    def slice(self, start: int, stop: int) -> Messages:
        return self.take(slice(start, stop))

    def row(self, i: int, names: Iterable[str] | None = None) -> dict:
        out = {"timestamp": float(self.timestamps[i])}
        for k in self._columns if names is None else names:
            col = self._columns.get(k)
            if col is None:
                continue
            v = col.value(i)
            if v is not _MISSING:
                out[k] = v
        return out

    def to_dicts(self) -> list[dict]:
        out = [{"timestamp": t} for t in self.timestamps.tolist()]
        for k, col in self._columns.items():
            for d, v in zip(out, col.to_objects(), strict=True):
                if v is not _MISSING:
                    d[k] = v
        return out
