"""Messages of one device by column, and their binary form: what the shard caches store as chunks
(``analytics.fleet.cache``) and PostgreSQL as message blocks (``analytics.blocks``).

Values are kept as the engine sees them (``Messages.from_dicts``): numbers as float64 with a
per-row "was an int" flag, booleans, everything else (strings, lists, objects, numbers of a
parameter whose messages disagree on the type) as JSON. An integer beyond the float range makes
its parameter's column an object column and stays exact.

A block's binary form (a chunk): magic, header length, a JSON header (``n`` and per column its
name and entry), the float64 timestamps, then each column's arrays in header order. A column's
entry and arrays (``column_encode``) are also a form of their own, so that one column can be
stored and read apart from the others. The columns are the engine's ``Column`` with their per-row
``isint`` flags and ``pure`` (``analytics.engine.columns``).
"""

from __future__ import annotations

import gc
import itertools
import operator
import struct
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

from analytics.engine import Messages
from analytics.engine.columns import MISSING, Column, ColumnKind, Kind
from flespi_site.jsontext import dumps_exact, loads_exact

CHUNK_MAGIC = b"FCC1"


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector paused: building columns of many messages makes a container per
    value, and the collections that would trigger (each walking every live object of the
    process) cost more than the work."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def column_encode(column: Column) -> tuple[dict[str, Any], bytes]:
    """A stored column's entry (kind and flags, JSON) and its arrays: the masks that are not all
    false, then the values (float64, bits, or the JSON text of an object column)."""
    entry: dict[str, Any] = {"k": column.kind}
    parts = []
    for flag, mask in (("m", column.missing), ("z", column.null)):
        if mask is not None:  # a column keeps only masks that mark a row
            entry[flag] = True
            parts.append(np.packbits(mask).tobytes())
    if column.kind == ColumnKind.NUM:
        parts.append(column.values.astype("<f8").tobytes())
        isint = _int_flags(column)
        ints = isint[column.value_mask()]
        entry["i"] = "all" if ints.all() else ("none" if not ints.any() else "mask")
        if entry["i"] == "mask":
            parts.append(np.packbits(isint).tobytes())
    elif column.kind == ColumnKind.BOOL:
        parts.append(np.packbits(column.values).tobytes())
    else:
        text = dumps_exact(column.values.tolist())
        entry["p"] = column.pure
        entry["b"] = len(text)
        parts.append(text)
    return entry, b"".join(parts)


def column_size(entry: Mapping[str, Any], count: int) -> int:
    """The length of the arrays of a column of ``count`` rows with this entry."""
    bits = (count + 7) // 8
    size = bits * (bool(entry.get("m")) + bool(entry.get("z")))
    kind = entry["k"]
    if kind == ColumnKind.NUM:
        return size + 8 * count + (bits if entry["i"] == "mask" else 0)
    if kind == ColumnKind.BOOL:
        return size + bits
    return size + entry["b"]


def column_decode(entry: Mapping[str, Any], data: memoryview | bytes, count: int) -> Column:
    """The stored column of ``count`` rows from its entry and arrays (``column_encode``)."""
    buffer = memoryview(data)
    if len(buffer) != column_size(entry, count):
        raise ValueError("column arrays have the wrong length")
    bits = (count + 7) // 8
    at = 0

    def take(size: int) -> memoryview:
        nonlocal at
        piece = buffer[at : at + size]
        at += size
        return piece

    def unpack() -> np.ndarray:
        return np.unpackbits(np.frombuffer(take(bits), np.uint8), count=count).view(bool)

    def mask(present: bool) -> np.ndarray | None:
        return unpack() if present else None

    missing, null = mask(entry.get("m", False)), mask(entry.get("z", False))
    kind = entry["k"]
    if kind == ColumnKind.NUM:
        values = np.frombuffer(take(8 * count), "<f8")
        flag = entry["i"]
        isint = unpack() if flag == "mask" else np.full(count, flag == "all")
        return Column(ColumnKind.NUM, values, missing, null, isint=isint)
    if kind == ColumnKind.BOOL:
        return Column(ColumnKind.BOOL, unpack(), missing, null)
    if kind != ColumnKind.OBJ:
        raise ValueError(f"unknown column kind {kind!r}")
    items = loads_exact(bytes(take(entry["b"])))
    if len(items) != count:
        raise ValueError("object column length")
    return Column(ColumnKind.OBJ, np.fromiter(items, object, count), missing, null, pure=entry["p"])


def _concat_stored(columns: list[Column | None], lengths: list[int]) -> Column:
    """Stored columns one after the other (``None``: that many rows without the key)."""
    kinds = {column.kind for column in columns if column is not None}
    if len(kinds) > 1:
        raw: list = []
        for column, count in zip(columns, lengths, strict=True):
            raw.extend([MISSING] * count if column is None else column.to_objects())
        return Column.from_raw(raw)
    kind = kinds.pop()
    parts = [
        column if column is not None else _absent(kind, count)
        for column, count in zip(columns, lengths, strict=True)
    ]
    isint = None
    if kind == ColumnKind.NUM:
        isint = np.concatenate([_int_flags(part) for part in parts])
    return Column(
        kind,
        np.concatenate([part.values for part in parts]),
        np.concatenate([part.missing_mask() for part in parts]),
        np.concatenate([part.null_mask() for part in parts]),
        isint=isint,
        pure=all(part.pure for part in parts),
    )


def _int_flags(column: Column) -> np.ndarray:
    """Per row, whether a numeric column's value was an int (an engine column says it for all)."""
    return column.isint if column.isint is not None else np.full(len(column), column.ints)


def _absent(kind: Kind, count: int) -> Column:
    """``count`` rows without the key, as a stored column of ``kind``."""
    if kind == ColumnKind.OBJ:
        values = np.full(count, None, object)
    else:
        values = np.zeros(count, np.float64 if kind == ColumnKind.NUM else bool)
    isint = np.zeros(count, bool) if kind == ColumnKind.NUM else None
    return Column(kind, values, np.ones(count, bool), isint=isint)


class Block:
    """Messages of one device in time order (unique timestamps), by column."""

    __slots__ = ("cols", "ts")

    def __init__(self, ts: np.ndarray, cols: dict[str, Column]):
        self.ts = ts
        self.cols = cols

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_dicts(cls, msgs: Sequence[Mapping]) -> Block:
        """From messages sorted by unique timestamp."""
        with gc_paused():
            return cls._from_dicts(msgs)

    @classmethod
    def _from_dicts(cls, msgs: Sequence[Mapping]) -> Block:
        keys = list(dict.fromkeys(itertools.chain.from_iterable(msgs)))
        ts = np.fromiter((message["timestamp"] for message in msgs), np.float64, len(msgs))
        if msgs and set(map(len, msgs)) == {len(keys)}:
            # Every message has every key (a tracker's usual stream): one C-level pass takes
            # all values of a message, one transposes them into columns.
            values: dict[str, Sequence]
            if len(keys) == 1:  # itemgetter of one key gives the value, not a tuple
                values = {keys[0]: [message[keys[0]] for message in msgs]}
            else:
                rows = map(operator.itemgetter(*keys), msgs)
                values = dict(zip(keys, zip(*rows, strict=True), strict=True))
        else:
            values = {key: [message.get(key, MISSING) for message in msgs] for key in keys}
        values.pop("timestamp", None)
        return cls(ts, {key: Column.from_raw(raw) for key, raw in values.items()})

    @classmethod
    def concat(cls, blocks: list[Block]) -> Block:
        blocks = [block for block in blocks if len(block)]
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return cls(np.zeros(0), {})
        names: dict[str, None] = {}
        for block in blocks:
            names.update(dict.fromkeys(block.cols))
        lengths = [len(block) for block in blocks]
        cols = {name: _concat_stored([block.cols.get(name) for block in blocks], lengths) for name in names}
        return cls(np.concatenate([block.ts for block in blocks]), cols)

    def take(self, idx) -> Block:
        columns = {name: column.take(idx) for name, column in self.cols.items()}
        return Block(
            self.ts[idx], {name: column for name, column in columns.items() if not column.absent_everywhere()}
        )

    def merge(self, new: Block) -> Block:
        """This block with ``new``'s messages merged in: a message at an existing timestamp
        overwrites the keys it has, the other keys stay (DESIGN 7.1)."""
        if not len(self) or not len(new) or new.ts[0] > self.ts[-1]:
            return Block.concat([self, new])
        ts = np.union1d(self.ts, new.ts)
        count = len(ts)
        pos_old = np.searchsorted(ts, self.ts)
        pos_new = np.searchsorted(ts, new.ts)
        cols: dict[str, Column] = {}
        for name in {**dict.fromkeys(self.cols), **dict.fromkeys(new.cols)}:
            old_col, new_col = self.cols.get(name), new.cols.get(name)
            if new_col is None:
                cols[name] = old_col.spread(pos_old, count)  # type: ignore[union-attr]
            elif old_col is None:
                cols[name] = new_col.spread(pos_new, count)
            else:
                cols[name] = old_col.spread(pos_old, count).overlay(new_col.spread(pos_new, count))
        return Block(ts, cols)

    def to_messages(self) -> Messages:
        cols = {}
        for name, col in self.cols.items():
            engine_col = col.for_engine()
            if engine_col is not None:
                cols[name] = engine_col
        return Messages(self.ts, cols)

    # ---- the chunk blob: magic, header length, JSON header, then the arrays ----

    def encode(self) -> bytes:
        segments = [(name, *column_encode(col)) for name, col in self.cols.items()]
        return assemble(self.ts.astype("<f8").tobytes(), segments)

    @classmethod
    def decode(cls, data: bytes, names: Collection[str] | None = None) -> Block:
        """The block of a chunk; only the columns ``names`` (all when ``None``), the others
        skipped without decoding them."""
        if data[:4] != CHUNK_MAGIC:
            raise ValueError("not a chunk")
        (hlen,) = struct.unpack_from("<I", data, 4)
        head = orjson.loads(data[8 : 8 + hlen])
        count = head["n"]
        at = 8 + hlen
        buffer = memoryview(data)
        if len(buffer) < at + 8 * count:
            raise ValueError("chunk is truncated")
        ts = np.frombuffer(buffer[at : at + 8 * count], "<f8")
        at += 8 * count
        cols: dict[str, Column] = {}
        for name, entry in head["c"]:
            size = column_size(entry, count)
            if names is None or name in names:
                cols[name] = column_decode(entry, buffer[at : at + size], count)
            at += size
        if at != len(data):
            raise ValueError("chunk has trailing bytes" if at < len(data) else "chunk is truncated")
        return cls(ts, cols)


class _GrowingColumn:
    """One column of a ``GrowingBlock``: its arrays, with room for more rows than it holds."""

    __slots__ = ("has_values", "isint", "kind", "missing", "null", "pure", "values")

    def __init__(self, kind: Kind, capacity: int):
        self.kind = kind
        self.values = _empty_values(kind, capacity)
        self.missing = np.ones(capacity, bool)
        self.null = np.zeros(capacity, bool)
        self.isint = np.zeros(capacity, bool) if kind == ColumnKind.NUM else None
        self.pure = True
        self.has_values = False  # a row holds a value (not only null)

    @classmethod
    def of(cls, column: Column, capacity: int) -> _GrowingColumn:
        """Room for ``capacity`` rows, the first ``len(column)`` of them ``column``'s."""
        grown = cls(column.kind, capacity)
        count = len(column)
        grown.values[:count] = column.values
        grown.missing[:count] = column.missing_mask()
        grown.null[:count] = column.null_mask()
        if grown.isint is not None:
            grown.isint[:count] = _int_flags(column)
        grown.pure = column.pure
        grown.has_values = bool(column.value_mask().any())
        return grown

    def grow(self, capacity: int) -> None:
        count = len(self.values)
        values = _empty_values(self.kind, capacity)
        values[:count] = self.values
        missing = np.ones(capacity, bool)
        missing[:count] = self.missing
        null = np.zeros(capacity, bool)
        null[:count] = self.null
        self.values, self.missing, self.null = values, missing, null
        if self.isint is not None:
            isint = np.zeros(capacity, bool)
            isint[:count] = self.isint
            self.isint = isint

    def put(self, row: int, value: Any) -> bool:
        """Set row ``row`` (a fresh one) to ``value``; False when the value does not fit the
        column's kind as ``Column.from_raw`` would type the whole column (the caller rebuilds it)."""
        kind = type(value)
        if value is None:
            self.null[row] = True
        elif self.kind == ColumnKind.NUM:
            if kind is float:
                self.values[row] = value
            elif kind is int and -(2**53) <= value <= 2**53:
                self.values[row] = value
                self.isint[row] = True  # type: ignore[index]
            else:
                return False
        elif self.kind == ColumnKind.BOOL:
            if kind is not bool:
                return False
            self.values[row] = value
        else:
            if not self.has_values and kind in (int, float, bool):
                return False  # the first value of a column of nulls: from_raw types it by the value
            if kind in (int, float, bool):
                self.pure = False
            self.values[row] = value
        self.missing[row] = False
        self.has_values = self.has_values or value is not None
        return True

    def column(self, begin: int, end: int, *, copy: bool = False) -> Column:
        """Rows ``begin`` to ``end`` (views, or copies)."""
        rows = slice(begin, end)
        values, missing, null = self.values[rows], self.missing[rows], self.null[rows]
        isint = None if self.isint is None else self.isint[rows]
        if copy:
            values, missing, null = values.copy(), missing.copy(), null.copy()
            isint = None if isint is None else isint.copy()
        return Column(self.kind, values, missing, null, isint=isint, pure=self.pure)


def _empty_values(kind: Kind, count: int) -> np.ndarray:
    if kind == ColumnKind.OBJ:
        return np.full(count, None, object)
    return np.zeros(count, np.float64 if kind == ColumnKind.NUM else bool)


def _kind_of(value: Any) -> Kind:
    """The kind ``Column.from_raw`` gives a column of one value."""
    kind = type(value)
    if kind is float or (kind is int and -(2**53) <= value <= 2**53):
        return ColumnKind.NUM
    return ColumnKind.BOOL if kind is bool else ColumnKind.OBJ


class GrowingBlock:
    """Messages of one device appended in time order, by column, in arrays with room to grow:
    appending costs what is appended (a value written per key), not what is already there, and
    ``block`` views what it holds. It equals ``Block.from_dicts`` of the same messages; a value
    that changes its column's kind (a string among numbers) rebuilds that column as ``from_dicts``
    would type it."""

    def __init__(self, block: Block | None = None):
        count = len(block) if block is not None else 0
        capacity = max(16, 2 * count)
        self.count = count
        self.ts = np.zeros(capacity, np.float64)
        self.cols: dict[str, _GrowingColumn] = {}
        if block is not None:
            self.ts[:count] = block.ts
            self.cols = {name: _GrowingColumn.of(column, capacity) for name, column in block.cols.items()}

    def __len__(self) -> int:
        return self.count

    @property
    def last(self) -> float:
        """The newest timestamp (-inf when empty)."""
        return float(self.ts[self.count - 1]) if self.count else -np.inf

    def append(self, messages: Sequence[Mapping]) -> None:
        """Append messages sorted by unique timestamp, each newer than ``last``."""
        if not messages:
            return
        if messages[0]["timestamp"] <= self.last:
            raise ValueError("GrowingBlock.append takes messages newer than those it holds")
        needed = self.count + len(messages)
        if needed > len(self.ts):
            capacity = max(2 * len(self.ts), needed)
            ts = np.zeros(capacity, np.float64)
            ts[: self.count] = self.ts[: self.count]
            self.ts = ts
            for grown in self.cols.values():
                grown.grow(capacity)
        capacity = len(self.ts)
        for message in messages:
            row = self.count
            self.ts[row] = message["timestamp"]
            for name, value in message.items():
                if name == "timestamp":
                    continue
                grown = self.cols.get(name) or self.cols.setdefault(name, _GrowingColumn(_kind_of(value), capacity))
                if not grown.put(row, value):
                    self._retype(name, row, value)
            self.count += 1

    def _retype(self, name: str, row: int, value: Any) -> None:
        raw = [*self.cols[name].column(0, row).to_objects(), value]
        self.cols[name] = _GrowingColumn.of(Column.from_raw(raw), len(self.ts))

    def block(self) -> Block:
        """What it holds, as a block viewing its arrays (appends do not change it)."""
        count = self.count
        return Block(self.ts[:count], {name: grown.column(0, count) for name, grown in self.cols.items()})

    def window(self, begin: float, end: float, names: Collection[str] | None = None) -> Block:
        """A copy of its messages with ``begin <= timestamp < end``, as ``Block.take`` gives them
        (columns without a row holding the key left out), of the columns ``names`` (all: None)."""
        ts = self.ts[: self.count]
        lo, hi = int(np.searchsorted(ts, begin, "left")), int(np.searchsorted(ts, end, "left"))
        columns = {name: grown.column(lo, hi, copy=True) for name, grown in self.cols.items()
                   if names is None or name in names}
        return Block(ts[lo:hi].copy(), {name: column for name, column in columns.items()
                                        if not column.absent_everywhere()})


def assemble(ts: bytes, segments: Iterable[tuple[str, dict, bytes]]) -> bytes:
    """A chunk from its float64 timestamps (little-endian bytes) and its columns as
    ``column_encode`` gives them, (name, entry, data)."""
    segments = list(segments)
    head = orjson.dumps({"n": len(ts) // 8, "c": [[name, entry] for name, entry, _ in segments]})
    return b"".join([CHUNK_MAGIC, struct.pack("<I", len(head)), head, ts, *(data for _, _, data in segments)])
