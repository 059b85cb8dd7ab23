"""Columnar messages: one numpy array of timestamps and one typed column (``columns.Column``)
per parameter."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from .columns import MISSING, Column, ColumnKind, concat_columns
from .values import is_number


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
        columns = {k: Column.from_values([m.get(k, MISSING) for m in merged]) for k in keys}
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
            return Column(ColumnKind.NUM, self.timestamps)
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
            if v is not MISSING:
                out[k] = v
        return out

    def to_dicts(self) -> list[dict]:
        out = [{"timestamp": t} for t in self.timestamps.tolist()]
        for k, col in self._columns.items():
            for d, v in zip(out, col.to_objects(), strict=True):
                if v is not MISSING:
                    d[k] = v
        return out
