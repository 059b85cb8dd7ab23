"""The column: one parameter of a device's messages over their rows, the one shape of that datum
in the engine (``Messages``), in the shard cache's chunks and message blocks
(``analytics.columnar``) and as the columnar reader of stored rows returns it
(``analytics.stored_columns``).

A column has a kind (``ColumnKind``): ``num`` (float64 values), ``bool``, or ``obj`` (Python
objects: strings, lists, objects, or the values of a parameter whose messages disagree on its
type). Its ``missing`` mask marks rows where the key is absent, its ``null`` mask rows where it
holds JSON null; ``None`` for a mask means "nowhere". Numeric columns remember ints, so that
what copies raw values (``parameter`` first/last/distinct, ``message``) gives back ints:
``ints`` says that every value was an int (what the engine reads); a stored column also keeps
``isint``, the flag per row, so that a parameter whose messages mix 1 and 1.5 is stored exactly.

Expressions compute over ``vectors.Vec``, not columns: a Vec is the value of an expression
(with an error mask, and possibly one broadcast row), a column is data that was stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import numpy as np

from .values import is_number

Kind = Literal["num", "bool", "obj"]


class ColumnKind:
    """The kinds of a column (and of an expression's value, ``Vec``). Their spelling is part of
    the stored formats (a chunk's header names each column's kind)."""

    NUM: Final = "num"
    BOOL: Final = "bool"
    OBJ: Final = "obj"


class _Missing:
    """The type of ``MISSING``, so that a set of value types tells whether a key was absent."""

    __slots__ = ()


MISSING = _Missing()  # a row without the key, among a column's Python values


class Column:
    """A column (see the module's docstring). ``pure`` (object columns) says that no value is a
    number or a boolean, so that any subset of the rows is still an object column for the
    engine; it is false when not known."""

    __slots__ = ("ints", "isint", "kind", "missing", "null", "pure", "values")

    def __init__(
        self,
        kind: Kind,
        values: np.ndarray,
        missing: np.ndarray | None = None,
        null: np.ndarray | None = None,
        ints: bool | None = None,
        *,
        isint: np.ndarray | None = None,
        pure: bool = True,
    ):
        self.kind = kind
        self.values = values
        # (``count_nonzero`` rather than ``any``/``all``: columns are made on every read, and the
        # ufunc reductions cost more than the counting on these short masks)
        self.missing = missing if missing is not None and np.count_nonzero(missing) else None
        self.null = null if null is not None and np.count_nonzero(null) else None
        self.isint = isint
        if ints is None:
            if isint is None:
                ints = False
            elif self.missing is None and self.null is None:
                ints = np.count_nonzero(isint) == len(isint)
            else:
                flags = isint[self.value_mask()]
                ints = np.count_nonzero(flags) == len(flags)
        self.ints = bool(ints)
        self.pure = pure

    def __len__(self) -> int:
        return len(self.values)

    # ---- construction ----

    @classmethod
    def from_values(cls, raw: Sequence) -> Column:
        """From Python values, with ``MISSING`` for an absent key and ``None`` for null, as the
        engine types them."""
        count = len(raw)
        missing = np.fromiter((value is MISSING for value in raw), bool, count)
        null = np.fromiter((value is None for value in raw), bool, count)
        present = [value for value in raw if value is not MISSING and value is not None]
        if present and all(is_number(value) for value in present):
            values = np.fromiter(
                (float(value) if is_number(value) else 0.0 for value in raw), np.float64, count
            )
            return cls(
                ColumnKind.NUM, values, missing, null, ints=all(type(value) is int for value in present)
            )
        if present and all(value is True or value is False for value in present):
            values = np.fromiter((value is True for value in raw), bool, count)
            return cls(ColumnKind.BOOL, values, missing, null)
        values = np.empty(count, dtype=object)
        values[:] = [None if value is MISSING else value for value in raw]
        return cls(ColumnKind.OBJ, values, missing, null, pure=False)

    @classmethod
    def from_array(cls, values, present=None) -> Column:
        """From an array (numbers, booleans or objects) and an optional mask of where the key
        is present."""
        array = np.asarray(values)
        missing = None if present is None else ~np.asarray(present, dtype=bool)
        if array.dtype == bool:
            return cls(ColumnKind.BOOL, array, missing)
        if array.dtype.kind in "iu":
            return cls(ColumnKind.NUM, array.astype(np.float64), missing, ints=True)
        if array.dtype.kind == "f":
            array = array.astype(np.float64, copy=False)
            nan = np.isnan(array)
            if nan.any():
                # NaN in a numeric column is how callers often spell "absent".
                missing = nan if missing is None else (missing | nan)
                array = np.where(nan, 0.0, array)
            return cls(ColumnKind.NUM, array, missing, ints=False)
        return cls.from_values(
            [
                MISSING if (missing is not None and missing[i]) else value
                for i, value in enumerate(array.tolist())
            ]
        )

    @classmethod
    def from_raw(cls, raw: Sequence, *, exact: bool = True) -> Column:
        """A stored column from Python values (``MISSING`` for an absent key, ``None`` for
        null), with ``isint`` and ``pure``: the kind ``from_values`` gives, except that
        (``exact``) an integer a float would round makes an object column, so that it stays
        exact.

        Vectorized by the set of value types: a column of plain numbers (the common case)
        costs a few C-level passes over the list, no Python per value."""
        count = len(raw)
        types = set(map(type, raw))
        absent = _Missing in types
        nulls = type(None) in types
        kinds = types - {_Missing, type(None)}
        missing = (
            np.fromiter((value is MISSING for value in raw), bool, count) if absent else np.zeros(count, bool)
        )
        null = np.fromiter((value is None for value in raw), bool, count) if nulls else np.zeros(count, bool)
        if kinds and kinds <= {int, float} and _floats_exact(raw, kinds, exact):
            if absent or nulls:
                holder = np.array(raw, dtype=object)
                holder[missing | null] = 0.0
                values = holder.astype(np.float64)
            else:
                values = np.array(raw, dtype=np.float64)
            if int not in kinds:
                isint = np.zeros(count, bool)
            elif float not in kinds:
                isint = ~(missing | null)
            else:
                isint = np.fromiter((type(value) is int for value in raw), bool, count)
            return cls(ColumnKind.NUM, values, missing, null, isint=isint)
        if kinds == {bool}:
            return cls(
                ColumnKind.BOOL, np.fromiter((value is True for value in raw), bool, count), missing, null
            )
        values = np.fromiter((None if value is MISSING else value for value in raw), object, count)
        return cls(ColumnKind.OBJ, values, missing, null, pure=not kinds & {int, float, bool})

    @classmethod
    def absent(cls, count: int) -> Column:
        """A stored column of ``count`` rows none of which has the key."""
        return cls(ColumnKind.OBJ, np.full(count, None, object), np.ones(count, bool))

    # ---- masks ----

    def present_mask(self) -> np.ndarray:
        """Where the key is present (with a value or null)."""
        return np.ones(len(self.values), bool) if self.missing is None else ~self.missing

    def value_mask(self) -> np.ndarray:
        """Where the key holds a value (neither absent nor null)."""
        if self.missing is None and self.null is None:
            return np.ones(len(self.values), bool)
        return ~(_full(self.missing, len(self.values)) | _full(self.null, len(self.values)))

    def missing_mask(self) -> np.ndarray:
        return _full(self.missing, len(self.values))

    def null_mask(self) -> np.ndarray:
        return _full(self.null, len(self.values))

    def absent_everywhere(self) -> bool:
        """Whether no row has the key (true of a column of no rows)."""
        return bool(self.missing.all()) if self.missing is not None else len(self.values) == 0

    # ---- rows ----

    def take(self, index) -> Column:
        """The rows at ``index``. A stored column's ``ints`` is that of the rows taken; an engine
        column keeps its own."""
        return Column(
            self.kind,
            self.values[index],
            None if self.missing is None else self.missing[index],
            None if self.null is None else self.null[index],
            self.ints if self.isint is None else None,
            isint=None if self.isint is None else self.isint[index],
            pure=self.pure,
        )

    def value(self, i: int):
        """The raw value at row ``i``: ``MISSING``, ``None`` or the value."""
        if self.missing is not None and self.missing[i]:
            return MISSING
        if self.null is not None and self.null[i]:
            return None
        value = self.values[i]
        if self.kind == ColumnKind.NUM:
            value = float(value)
            return int(value) if self.ints and value.is_integer() else value
        if self.kind == ColumnKind.BOOL:
            return bool(value)
        return value

    def to_objects(self) -> list:
        """Python values of every row (``MISSING`` where absent), ints restored (per row where
        the column keeps ``isint``)."""
        values = self.values.tolist()
        if self.kind == ColumnKind.NUM:
            if self.isint is not None:
                for i in np.flatnonzero(self.isint).tolist():
                    values[i] = int(values[i])
            elif self.ints:
                values = [int(value) if value.is_integer() else value for value in values]
        if self.null is not None:
            for i in np.flatnonzero(self.null).tolist():
                values[i] = None
        if self.missing is not None:
            for i in np.flatnonzero(self.missing).tolist():
                values[i] = MISSING
        return values

    # ---- stored columns ----

    def spread(self, positions: np.ndarray, count: int) -> Column:
        """The column on ``count`` rows, its values at ``positions`` and absent elsewhere."""
        dtype = {ColumnKind.NUM: np.float64, ColumnKind.BOOL: bool, ColumnKind.OBJ: object}[self.kind]
        values = np.zeros(count, dtype) if self.kind != ColumnKind.OBJ else np.full(count, None, object)
        values[positions] = self.values
        missing = np.ones(count, bool)
        missing[positions] = self.missing_mask()
        null = np.zeros(count, bool)
        null[positions] = self.null_mask()
        isint = None
        if self.isint is not None:
            isint = np.zeros(count, bool)
            isint[positions] = self.isint
        return Column(self.kind, values, missing, null, isint=isint, pure=self.pure)

    def overlay(self, new: Column) -> Column:
        """This column with every row where ``new`` has the key replaced by ``new``'s value."""
        put = new.present_mask()
        if new.kind == self.kind and self.kind != ColumnKind.OBJ:
            values = self.values.copy()
            values[put] = new.values[put]
            isint = None
            if self.isint is not None and new.isint is not None:
                isint = self.isint.copy()
                isint[put] = new.isint[put]
            null = np.where(put, new.null_mask(), self.null_mask())
            return Column(self.kind, values, self.missing_mask() & ~put, null, isint=isint)
        raw = self.to_objects()
        newer = new.to_objects()
        for i in np.flatnonzero(put).tolist():
            raw[i] = newer[i]
        return Column.from_raw(raw)

    def for_engine(self) -> Column | None:
        """The column as the engine reads it: what ``from_values`` builds from the same values
        (``ints`` for the whole column, no flag per row); ``None`` when no row has the key."""
        if self.absent_everywhere():
            return None
        missing, null = self.missing, self.null
        present = self.value_mask()
        if not present.any():
            return Column(ColumnKind.OBJ, np.full(len(self.values), None, object), missing, null)
        if self.kind == ColumnKind.NUM:
            return Column(ColumnKind.NUM, self.values, missing, null, ints=self.ints)
        if self.kind == ColumnKind.BOOL:
            return Column(ColumnKind.BOOL, self.values, missing, null)
        if self.pure:
            return Column(ColumnKind.OBJ, self.values, missing, null)
        column = Column.from_raw(self.to_objects(), exact=False)
        if column.kind != ColumnKind.OBJ:
            return column.for_engine()
        return Column(ColumnKind.OBJ, column.values, missing, null)


def concat_columns(columns: list[Column | None], lengths: list[int]) -> Column:
    """Engine columns one after the other (``None``: that many rows without the key)."""
    kinds = {column.kind for column in columns if column is not None}
    if len(kinds) == 1:
        kind = kinds.pop()
        parts, missing, null = [], [], []
        for column, count in zip(columns, lengths, strict=True):
            if column is None:
                parts.append(_filler(kind, count))
                missing.append(np.ones(count, bool))
                null.append(np.zeros(count, bool))
            else:
                parts.append(column.values)
                missing.append(column.missing_mask())
                null.append(column.null_mask())
        ints = all(column.ints for column in columns if column is not None)
        return Column(kind, np.concatenate(parts), np.concatenate(missing), np.concatenate(null), ints)
    raw: list = []
    for column, count in zip(columns, lengths, strict=True):
        raw.extend([MISSING] * count if column is None else column.to_objects())
    return Column.from_values(raw)


def _filler(kind: Kind, count: int) -> np.ndarray:
    """The values of ``count`` rows without the key."""
    if kind == ColumnKind.OBJ:
        return np.full(count, None, object)
    return np.zeros(count, np.float64 if kind == ColumnKind.NUM else bool)


def _full(mask: np.ndarray | None, count: int) -> np.ndarray:
    return np.zeros(count, bool) if mask is None else mask


def _float_or_none(value, exact: bool) -> float | None:
    """The float of a JSON number (not a bool) for a numeric column; ``None`` for an integer
    beyond the float range, or (``exact``) one that a float would round."""
    if type(value) is float:
        return value
    if is_number(value):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if not exact or number == value else None
    return None


def _floats_exact(raw: Sequence, kinds: set[type], exact: bool) -> bool:
    """Whether every int among ``raw`` (values of the types ``kinds``, numbers only apart from
    missing and null) has a float (``exact``: an equal one): ints within 2**53 always do."""
    if int not in kinds:
        return True
    ints = [value for value in raw if type(value) is int]
    if min(ints) >= -(2**53) and max(ints) <= 2**53:
        return True
    return all(_float_or_none(value, exact) is not None for value in ints)
