"""``GrowingBlock`` (the shard cache's decoded tail): appending message by message, in batches
of any size, gives the block ``Block.from_dicts`` builds from the same messages at once, column
by column, with every stored flag (kind, per-row ints, null and missing masks, ``pure``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.columnar import Block, GrowingBlock
from analytics.engine.columns import Column

_values = st.sampled_from(
    [0, 1, -3, 7, 2.5, -0.0, 1e300, 2**53, 2**53 + 1, 2**63, 2**70 + 1, 10**400, True, False, None, "x", "",
     [1, 2], [], {"a": 1}, ...]
)
_keys = st.sampled_from(["a", "b", "c", "position.speed"])
_body = st.dictionaries(_keys, _values, max_size=4).map(lambda kv: {k: v for k, v in kv.items() if v is not ...})


def stored(column: Column) -> tuple:
    """Everything a stored column says, comparable."""
    return (column.kind, column.pure, column.ints, [(type(v).__name__, repr(v)) for v in column.to_objects()],
            None if column.isint is None else column.isint.tolist())


def assert_same_block(got: Block, want: Block) -> None:
    assert got.ts.tolist() == want.ts.tolist()
    assert list(got.cols) == list(want.cols)
    for name, column in want.cols.items():
        assert stored(got.cols[name]) == stored(column), name


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(_body, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=6), start=st.integers(0, 10))
def test_appending_in_any_batches_equals_from_dicts(bodies, cuts, start):
    messages = [{"timestamp": 100.0 + i, **body} for i, body in enumerate(bodies)]
    grown = GrowingBlock(Block.from_dicts(messages[:start]) if start else None)
    views = []
    at = min(start, len(messages))
    for cut in [*sorted(cuts), len(messages)]:
        if cut > at:
            grown.append(messages[at:cut])
            views.append((cut, grown.block()))
            at = cut
    assert_same_block(grown.block(), Block.from_dicts(messages))
    # a block taken earlier is not changed by later appends
    for count, view in views:
        assert_same_block(view, Block.from_dicts(messages[:count]))


def test_the_arrays_grow_and_old_messages_are_refused():
    grown = GrowingBlock()
    for t in range(1000):
        grown.append([{"timestamp": float(t), "v": t, "s": "x" if t % 3 else None}])
    block = grown.block()
    assert len(block) == 1000 and block.cols["v"].ints and np.array_equal(block.cols["v"].values, np.arange(1000))
    with pytest.raises(ValueError, match="newer"):
        grown.append([{"timestamp": 999.0, "v": 1}])


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(_body, max_size=30), bounds=st.tuples(st.integers(95, 135), st.integers(95, 135)))
def test_a_window_equals_take_of_from_dicts(bodies, bounds):
    messages = [{"timestamp": 100.0 + i, **body} for i, body in enumerate(bodies)]
    grown = GrowingBlock()
    grown.append(messages)
    begin, end = sorted(bounds)
    whole = Block.from_dicts(messages)
    want = whole.take(np.flatnonzero((whole.ts >= begin) & (whole.ts < end))) if messages else whole
    got = grown.window(float(begin), float(end))
    assert_same_block(got, want)
    got.ts[:] = 0.0  # a copy: its owner may change it
    assert grown.block().ts.tolist() == [m["timestamp"] for m in messages]
