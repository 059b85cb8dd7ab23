"""Messages of one device by column, and their binary form: what the shard caches store as chunks
(``analytics.cache``) and PostgreSQL as message blocks (``analytics.blocks``).

Values are kept as the engine sees them (``Messages.from_dicts``): numbers as float64 with a
per-row "was an int" flag, booleans, everything else (strings, lists, objects, numbers of a
parameter whose messages disagree on the type) as JSON. An integer beyond the float range makes
its parameter's column an object column and stays exact.

A block's binary form (a chunk): magic, header length, a JSON header (``n`` and per column its
name and entry), the float64 timestamps, then each column's arrays in header order. A column's
entry and arrays (``Col.encode``) are also a form of their own, so that one column can be stored
and read apart from the others.
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
from analytics.engine.messages import Column
from analytics.engine.values import is_number
from flespi_site.jsontext import dumps_exact, loads_exact

CHUNK_MAGIC = b"FCC1"


class _Missing:
    """The type of ``MISSING``, so that a set of value types tells whether a key was absent."""

    __slots__ = ()


MISSING = _Missing()


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


def _float_or_none(v, exact: bool) -> float | None:
    """The float of a JSON number (not a bool) for a numeric column; ``None`` for an integer
    beyond the float range, or (``exact``) one that a float would round."""
    if type(v) is float:
        return v
    if is_number(v):
        try:
            f = float(v)
        except OverflowError:
            return None
        return f if not exact or f == v else None
    return None


def _floats_exact(raw: Sequence, kinds: set[type], exact: bool) -> bool:
    """Whether every int among ``raw`` (values of the types ``kinds``, numbers only apart from
    missing and null) has a float (``exact``: an equal one): ints within 2**53 always do."""
    if int not in kinds:
        return True
    ints = [v for v in raw if type(v) is int]
    if min(ints) >= -(2**53) and max(ints) <= 2**53:
        return True
    return all(_float_or_none(v, exact) is not None for v in ints)


class Col:
    """A column of a block: full ``missing``/``null`` masks; ``isint`` (numeric columns) marks
    rows whose value was an int; ``pure`` (object columns) says that no value is a number or a
    boolean, so that any subset of the rows is still an object column for the engine."""

    __slots__ = ("isint", "kind", "missing", "null", "pure", "values")

    def __init__(self, kind, values, missing, null, isint=None, pure=True):
        self.kind = kind
        self.values = values
        self.missing = missing
        self.null = null
        self.isint = isint
        self.pure = pure

    @classmethod
    def from_raw(cls, raw: Sequence, *, exact: bool = True) -> Col:
        """From Python values, ``MISSING`` for an absent key, ``None`` for null; the kind
        ``Column.from_values`` gives, except that (``exact``) an integer a float would round
        makes an object column, so that the cache keeps it exact.

        Vectorized by the set of value types: a column of plain numbers (the common case)
        costs a few C-level passes over the list, no Python per value."""
        n = len(raw)
        types = set(map(type, raw))
        absent = _Missing in types
        nulls = type(None) in types
        kinds = types - {_Missing, type(None)}
        missing = np.fromiter((v is MISSING for v in raw), bool, n) if absent else np.zeros(n, bool)
        null = np.fromiter((v is None for v in raw), bool, n) if nulls else np.zeros(n, bool)
        if kinds and kinds <= {int, float} and _floats_exact(raw, kinds, exact):
            if absent or nulls:
                holder = np.array(raw, dtype=object)
                holder[missing | null] = 0.0
                values = holder.astype(np.float64)
            else:
                values = np.array(raw, dtype=np.float64)
            if int not in kinds:
                isint = np.zeros(n, bool)
            elif float not in kinds:
                isint = ~(missing | null)
            else:
                isint = np.fromiter((type(v) is int for v in raw), bool, n)
            return cls("num", values, missing, null, isint)
        if kinds == {bool}:
            return cls("bool", np.fromiter((v is True for v in raw), bool, n), missing, null)
        values = np.fromiter((None if v is MISSING else v for v in raw), object, n)
        pure = not kinds & {int, float, bool}
        return cls("obj", values, missing, null, pure=pure)

    @classmethod
    def absent(cls, n: int) -> Col:
        return cls("obj", np.full(n, None, object), np.ones(n, bool), np.zeros(n, bool))

    def raw(self) -> list:
        if self.kind == "num":
            vals = self.values.tolist()
            for i in np.flatnonzero(self.isint).tolist():
                vals[i] = int(vals[i])
        else:
            vals = self.values.tolist()
        for i in np.flatnonzero(self.null).tolist():
            vals[i] = None
        for i in np.flatnonzero(self.missing).tolist():
            vals[i] = MISSING
        return vals

    def take(self, idx) -> Col:
        return Col(
            self.kind,
            self.values[idx],
            self.missing[idx],
            self.null[idx],
            None if self.isint is None else self.isint[idx],
            self.pure,
        )

    def spread(self, pos: np.ndarray, n: int) -> Col:
        """The column on ``n`` rows, its values at ``pos`` and absent elsewhere."""
        dtype = {"num": np.float64, "bool": bool, "obj": object}[self.kind]
        values = np.zeros(n, dtype) if self.kind != "obj" else np.full(n, None, object)
        values[pos] = self.values
        missing = np.ones(n, bool)
        missing[pos] = self.missing
        null = np.zeros(n, bool)
        null[pos] = self.null
        isint = None
        if self.isint is not None:
            isint = np.zeros(n, bool)
            isint[pos] = self.isint
        return Col(self.kind, values, missing, null, isint, self.pure)

    def overlay(self, new: Col) -> Col:
        """This column with every row where ``new`` has the key replaced by ``new``'s value."""
        put = ~new.missing
        if new.kind == self.kind and self.kind != "obj":
            values = self.values.copy()
            values[put] = new.values[put]
            isint = None
            if self.isint is not None and new.isint is not None:
                isint = self.isint.copy()
                isint[put] = new.isint[put]
            return Col(self.kind, values, self.missing & ~put, np.where(put, new.null, self.null), isint)
        raw = self.raw()
        newer = new.raw()
        for i in np.flatnonzero(put).tolist():
            raw[i] = newer[i]
        return Col.from_raw(raw)

    def encode(self) -> tuple[dict[str, Any], bytes]:
        """The column's entry (kind and flags, JSON) and its arrays: the masks that are not all
        false, then the values (float64, bits, or the JSON text of an object column)."""
        entry: dict[str, Any] = {"k": self.kind}
        parts = []
        for flag, mask in (("m", self.missing), ("z", self.null)):
            if mask.any():
                entry[flag] = True
                parts.append(np.packbits(mask).tobytes())
        if self.kind == "num":
            parts.append(self.values.astype("<f8").tobytes())
            present = ~(self.missing | self.null)
            ints = self.isint[present]
            entry["i"] = "all" if ints.all() else ("none" if not ints.any() else "mask")
            if entry["i"] == "mask":
                parts.append(np.packbits(self.isint).tobytes())
        elif self.kind == "bool":
            parts.append(np.packbits(self.values).tobytes())
        else:
            text = dumps_exact(self.values.tolist())
            entry["p"] = self.pure
            entry["b"] = len(text)
            parts.append(text)
        return entry, b"".join(parts)

    @staticmethod
    def size(entry: Mapping[str, Any], n: int) -> int:
        """The length of the arrays of a column of ``n`` rows with this entry."""
        bits = (n + 7) // 8
        size = bits * (bool(entry.get("m")) + bool(entry.get("z")))
        kind = entry["k"]
        if kind == "num":
            return size + 8 * n + (bits if entry["i"] == "mask" else 0)
        if kind == "bool":
            return size + bits
        return size + entry["b"]

    @classmethod
    def decode(cls, entry: Mapping[str, Any], data: memoryview | bytes, n: int) -> Col:
        """The column of ``n`` rows from its entry and arrays (``encode``)."""
        buf = memoryview(data)
        if len(buf) != cls.size(entry, n):
            raise ValueError("column arrays have the wrong length")
        bits = (n + 7) // 8
        at = 0

        def take(size: int) -> memoryview:
            nonlocal at
            piece = buf[at : at + size]
            at += size
            return piece

        def mask(present: bool) -> np.ndarray:
            if not present:
                return np.zeros(n, bool)
            return np.unpackbits(np.frombuffer(take(bits), np.uint8), count=n).view(bool)

        missing, null = mask(entry.get("m", False)), mask(entry.get("z", False))
        kind = entry["k"]
        if kind == "num":
            values = np.frombuffer(take(8 * n), "<f8")
            flag = entry["i"]
            isint = mask(True) if flag == "mask" else np.full(n, flag == "all")
            return cls("num", values, missing, null, isint)
        if kind == "bool":
            return cls("bool", mask(True), missing, null)
        if kind != "obj":
            raise ValueError(f"unknown column kind {kind!r}")
        items = loads_exact(bytes(take(entry["b"])))
        if len(items) != n:
            raise ValueError("object column length")
        return cls("obj", np.fromiter(items, object, n), missing, null, pure=entry["p"])

    def to_engine(self) -> Column | None:
        """The engine column of these rows, as ``Column.from_values`` builds it from the same
        values; ``None`` when no row has the key."""
        missing, null = self.missing, self.null
        if missing.all():
            return None
        present = ~(missing | null)
        if not present.any():
            return Column("obj", np.full(len(missing), None, object), missing, null)
        if self.kind == "num":
            return Column("num", self.values, missing, null, ints=bool(self.isint[present].all()))
        if self.kind == "bool":
            return Column("bool", self.values, missing, null)
        if self.pure:
            return Column("obj", self.values, missing, null)
        col = Col.from_raw(self.raw(), exact=False)
        if col.kind != "obj":
            return col.to_engine()
        return Column("obj", col.values, missing, null)


def _concat_cols(cols: list[Col | None], lengths: list[int]) -> Col:
    kinds = {c.kind for c in cols if c is not None}
    if len(kinds) > 1:
        raw: list = []
        for c, n in zip(cols, lengths, strict=True):
            raw.extend([MISSING] * n if c is None else c.raw())
        return Col.from_raw(raw)
    kind = kinds.pop()
    parts = [c if c is not None else Col(kind, *_filler(kind, n)) for c, n in zip(cols, lengths, strict=True)]
    return Col(
        kind,
        np.concatenate([c.values for c in parts]),
        np.concatenate([c.missing for c in parts]),
        np.concatenate([c.null for c in parts]),
        np.concatenate([c.isint for c in parts]) if kind == "num" else None,  # type: ignore[misc]
        all(c.pure for c in parts),
    )


def _filler(kind: str, n: int):
    values = np.zeros(n, np.float64 if kind == "num" else bool) if kind != "obj" else np.full(n, None, object)
    return values, np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool) if kind == "num" else None


class Block:
    """Messages of one device in time order (unique timestamps), by column."""

    __slots__ = ("cols", "ts")

    def __init__(self, ts: np.ndarray, cols: dict[str, Col]):
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
        ts = np.fromiter((m["timestamp"] for m in msgs), np.float64, len(msgs))
        if msgs and set(map(len, msgs)) == {len(keys)}:
            # Every message has every key (a tracker's usual stream): one C-level pass takes
            # all values of a message, one transposes them into columns.
            values: dict[str, Sequence]
            if len(keys) == 1:  # itemgetter of one key gives the value, not a tuple
                values = {keys[0]: [m[keys[0]] for m in msgs]}
            else:
                rows = map(operator.itemgetter(*keys), msgs)
                values = dict(zip(keys, zip(*rows, strict=True), strict=True))
        else:
            values = {k: [m.get(k, MISSING) for m in msgs] for k in keys}
        values.pop("timestamp", None)
        return cls(ts, {k: Col.from_raw(raw) for k, raw in values.items()})

    @classmethod
    def concat(cls, blocks: list[Block]) -> Block:
        blocks = [b for b in blocks if len(b)]
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return cls(np.zeros(0), {})
        names: dict[str, None] = {}
        for b in blocks:
            names.update(dict.fromkeys(b.cols))
        lengths = [len(b) for b in blocks]
        cols = {k: _concat_cols([b.cols.get(k) for b in blocks], lengths) for k in names}
        return cls(np.concatenate([b.ts for b in blocks]), cols)

    def take(self, idx) -> Block:
        cols = {k: c.take(idx) for k, c in self.cols.items()}
        return Block(self.ts[idx], {k: c for k, c in cols.items() if not c.missing.all()})

    def merge(self, new: Block) -> Block:
        """This block with ``new``'s messages merged in: a message at an existing timestamp
        overwrites the keys it has, the other keys stay (DESIGN 7.1)."""
        if not len(self) or not len(new) or new.ts[0] > self.ts[-1]:
            return Block.concat([self, new])
        ts = np.union1d(self.ts, new.ts)
        n = len(ts)
        pos_old = np.searchsorted(ts, self.ts)
        pos_new = np.searchsorted(ts, new.ts)
        cols: dict[str, Col] = {}
        for name in {**dict.fromkeys(self.cols), **dict.fromkeys(new.cols)}:
            old_col, new_col = self.cols.get(name), new.cols.get(name)
            if new_col is None:
                cols[name] = old_col.spread(pos_old, n)  # type: ignore[union-attr]
            elif old_col is None:
                cols[name] = new_col.spread(pos_new, n)
            else:
                cols[name] = old_col.spread(pos_old, n).overlay(new_col.spread(pos_new, n))
        return Block(ts, cols)

    def to_messages(self) -> Messages:
        cols = {}
        for name, col in self.cols.items():
            engine_col = col.to_engine()
            if engine_col is not None:
                cols[name] = engine_col
        return Messages(self.ts, cols)

    # ---- the chunk blob: magic, header length, JSON header, then the arrays ----

    def encode(self) -> bytes:
        segments = [(name, *col.encode()) for name, col in self.cols.items()]
        return assemble(self.ts.astype("<f8").tobytes(), segments)

    @classmethod
    def decode(cls, data: bytes, names: Collection[str] | None = None) -> Block:
        """The block of a chunk; only the columns ``names`` (all when ``None``), the others
        skipped without decoding them."""
        if data[:4] != CHUNK_MAGIC:
            raise ValueError("not a chunk")
        (hlen,) = struct.unpack_from("<I", data, 4)
        head = orjson.loads(data[8 : 8 + hlen])
        n = head["n"]
        at = 8 + hlen
        buf = memoryview(data)
        if len(buf) < at + 8 * n:
            raise ValueError("chunk is truncated")
        ts = np.frombuffer(buf[at : at + 8 * n], "<f8")
        at += 8 * n
        cols: dict[str, Col] = {}
        for name, entry in head["c"]:
            size = Col.size(entry, n)
            if names is None or name in names:
                cols[name] = Col.decode(entry, buf[at : at + size], n)
            at += size
        if at != len(data):
            raise ValueError("chunk has trailing bytes" if at < len(data) else "chunk is truncated")
        return cls(ts, cols)


def assemble(ts: bytes, segments: Iterable[tuple[str, dict, bytes]]) -> bytes:
    """A chunk from its float64 timestamps (little-endian bytes) and its columns as
    ``Col.encode`` gives them, (name, entry, data)."""
    segments = list(segments)
    head = orjson.dumps({"n": len(ts) // 8, "c": [[name, entry] for name, entry, _ in segments]})
    return b"".join([CHUNK_MAGIC, struct.pack("<I", len(head)), head, ts, *(data for _, _, data in segments)])
