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
        given = list(messages)
        stamps = []
        for i, message in enumerate(given):
            timestamp = message.get("timestamp")
            if not is_number(timestamp) or not math.isfinite(timestamp):
                raise ValueError(f"message {i}: timestamp must be a finite number")
            stamps.append(float(timestamp))
        order = sorted(range(len(given)), key=stamps.__getitem__)
        merged: list[Mapping] = []
        times: list[float] = []
        for i in order:
            if times and times[-1] == stamps[i]:
                merged[-1] = {**merged[-1], **given[i]}
            else:
                merged.append(given[i])
                times.append(stamps[i])
        keys: dict[str, None] = {}
        for message in merged:
            for key in message:
                keys[key] = None
        keys.pop("timestamp", None)
        columns = {key: Column.from_values([message.get(key, MISSING) for message in merged]) for key in keys}
        return cls(np.asarray(times, dtype=np.float64), columns)

    @classmethod
    def from_columns(cls, timestamps, columns: Mapping[str, object] | None = None) -> Messages:
        """``columns`` maps a parameter to an array (NaN = absent in a float array), a
        ``(values, present_mask)`` pair, or a ready ``Column``."""
        stamps = np.asarray(timestamps, dtype=np.float64)
        if stamps.ndim != 1:
            raise ValueError("timestamps must be one-dimensional")
        if len(stamps) > 1 and not (np.diff(stamps) > 0).all():
            raise ValueError("timestamps must be strictly increasing")
        parsed: dict[str, Column] = {}
        for name, spec in (columns or {}).items():
            if isinstance(spec, Column):
                column = spec
            elif isinstance(spec, tuple):
                column = Column.from_array(spec[0], spec[1])
            else:
                column = Column.from_array(spec)
            if len(column) != len(stamps):
                raise ValueError(f"column {name!r} has {len(column)} values for {len(stamps)} timestamps")
            parsed[name] = column
        return cls(stamps, parsed)

    @classmethod
    def coerce(cls, messages) -> Messages:
        if isinstance(messages, Messages):
            return messages
        return cls.from_dicts(messages)

    @classmethod
    def concat(cls, parts: list[Messages]) -> Messages:
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls(np.zeros(0), {})
        if len(parts) == 1:
            return parts[0]
        names: dict[str, None] = {}
        for part in parts:
            for name in part._columns:
                names[name] = None
        lengths = [len(part) for part in parts]
        columns = {
            name: concat_columns([part._columns.get(name) for part in parts], lengths) for name in names
        }
        return cls(np.concatenate([part.timestamps for part in parts]), columns)

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

    def take(self, index) -> Messages:
        return Messages(
            self.timestamps[index], {name: column.take(index) for name, column in self._columns.items()}
        )

    def slice(self, start: int, stop: int) -> Messages:
        return self.take(slice(start, stop))

    def row(self, i: int, names: Iterable[str] | None = None) -> dict:
        message = {"timestamp": float(self.timestamps[i])}
        for name in self._columns if names is None else names:
            column = self._columns.get(name)
            if column is None:
                continue
            value = column.value(i)
            if value is not MISSING:
                message[name] = value
        return message

    def to_dicts(self) -> list[dict]:
        messages = [{"timestamp": timestamp} for timestamp in self.timestamps.tolist()]
        for name, column in self._columns.items():
            for message, value in zip(messages, column.to_objects(), strict=True):
                if value is not MISSING:
                    message[name] = value
        return messages
