"""The one column type: what the engine reads of a stored column, and the counter registry."""

from __future__ import annotations

import numpy as np

from analytics.engine.columns import MISSING, Column, ColumnKind
from analytics.engine.counters import COUNTER_TYPES, CounterType


def test_a_stored_column_keeps_ints_per_row_and_the_engine_reads_them_for_the_whole_column():
    stored = Column.from_raw([1, 1.5, MISSING, None, 2])
    assert stored.kind == ColumnKind.NUM
    assert stored.isint is not None and stored.isint.tolist() == [True, False, False, False, True]
    assert stored.to_objects() == [1, 1.5, MISSING, None, 2]
    engine = stored.for_engine()
    assert engine is not None and engine.isint is None and engine.ints is False
    assert engine.to_objects() == [1.0, 1.5, MISSING, None, 2.0]
    # The rows taken are what a stored column's ints is about; an engine column keeps its own.
    assert stored.take(np.array([0, 4])).for_engine().to_objects() == [1, 2]  # type: ignore[union-attr]
    assert engine.take(np.array([0, 4])).to_objects() == [1.0, 2.0]


def test_masks_are_none_where_no_row_is_marked():
    column = Column.from_raw([1, 2, 3])
    assert column.missing is None and column.null is None
    assert column.missing_mask().tolist() == [False, False, False]
    assert column.value_mask().tolist() == [True, True, True]
    assert Column.absent(3).absent_everywhere() and Column.absent(3).for_engine() is None
    assert Column.from_raw([]).absent_everywhere()


def test_an_exact_stored_column_keeps_big_integers_as_objects():
    assert Column.from_raw([2**70 + 1, 1]).kind == ColumnKind.OBJ
    assert Column.from_raw([2**70 + 1, 1], exact=False).kind == ColumnKind.NUM
    mixed = Column.from_raw(["a", 1])
    assert mixed.kind == ColumnKind.OBJ and not mixed.pure
    assert mixed.take(np.array([1])).for_engine().kind == ColumnKind.NUM  # type: ignore[union-attr]


def test_every_counter_type_checks_and_computes_in_its_class():
    for name, counter_type in COUNTER_TYPES.items():
        assert counter_type.name == name
        implemented = type(counter_type).__dict__
        assert type(counter_type).check is not CounterType.check
        if counter_type.per_interval:
            assert "interval_value" in implemented and "compute" not in implemented
        else:
            assert (
                type(counter_type).compute is not CounterType.compute and "interval_value" not in implemented
            )
