"""The engine tails a shard cache keeps in memory (analytics/fleet/cache.py, ``Tails``): kept while
messages are appended, let go on any other change of the device's messages or the assignment's
intervals, on a rollback and when the cache closes; the least recently used go past the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics.engine import Messages, Tail, compile_calculator, recalculate
from analytics.fleet.cache import ShardCache, Tails
from tests.support.calculators import TRIPS

T0 = 1_700_000_000.0


def _moving(start: int, stop: int) -> list[dict]:
    return [{"timestamp": T0 + k, "position.speed": 40.0, "position.latitude": 50.0 + k * 1e-4,
             "position.longitude": 10.0} for k in range(start, stop)]


def _tail(rows: int) -> Tail:
    calc = compile_calculator(TRIPS)
    messages = Messages.from_dicts(_moving(0, rows))
    return Tail(calc=calc, interval={"id": 1, "begin": T0, "end": T0 + rows - 1}, messages=messages,
                newest=T0 + rows - 1, counters=())


def test_the_least_recently_used_go_past_the_budget():
    tails = Tails(max_rows=100)
    tails.put(1, 10, 7, _tail(40))
    tails.put(1, 11, 7, _tail(40))
    assert tails.get(1, 10, 7) is not None  # 10 is now the most recently used
    tails.put(1, 12, 7, _tail(40))
    assert tails.rows == 80 and len(tails) == 2
    assert tails.get(1, 11, 7) is None and tails.get(1, 10, 7) is not None and tails.get(1, 12, 7) is not None
    tails.put(1, 12, 7, None)
    assert tails.rows == 40 and tails.get(1, 12, 7) is None
    tails.put(2, 10, 7, _tail(10))
    tails.drop_owner(1)
    assert tails.rows == 10 and tails.get(2, 10, 7) is not None


@pytest.fixture
def cache(tmp_path):
    opened = ShardCache(tmp_path / "shard.sqlite", shard="eu/0", tails=Tails())
    opened.messages_put(device_id=5, messages=_moving(0, 100), filled_to=0.0)
    yield opened
    opened.close()


def _keep(cache: ShardCache) -> None:
    cache.calc_tail_keep(calc_id=3, device_id=5, tail=_tail(100))
    assert cache.calc_tail(calc_id=3, device_id=5) is not None


def test_appended_messages_keep_the_tail(cache):
    _keep(cache)
    newer = _moving(100, 103)
    cache.messages_replace(device_id=5, begin=newer[0]["timestamp"], end=newer[-1]["timestamp"], messages=newer)
    assert cache.calc_tail(calc_id=3, device_id=5) is not None


@pytest.mark.parametrize("change", ["late", "deleted", "dropped", "refilled", "intervals", "unassigned", "rollback",
                                    "closed"])
def test_any_other_change_lets_it_go(cache, change):
    _keep(cache)
    if change == "late":
        late = [{**_moving(50, 51)[0], "timestamp": T0 + 50.5}]
        cache.messages_replace(device_id=5, begin=T0 + 50.5, end=T0 + 50.5, messages=late)
    elif change == "deleted":
        cache.messages_delete(device_id=5, begin=T0 + 99, end=T0 + 99)
    elif change == "dropped":
        cache.device_drop(device_id=5)
    elif change == "refilled":
        cache.device_drop(device_id=5)
        _keep(cache)
        cache.messages_fill(device_id=5, block=_block(_moving(0, 10)), filled_to=1.0)
    elif change == "intervals":
        cache.intervals_replace(calc_id=3, device_id=5, intervals=[], marker=1.0)
    elif change == "unassigned":
        cache.assignment_drop(calc_id=3, device_id=5)
    elif change == "rollback":
        with pytest.raises(RuntimeError), cache.batch():
            cache.messages_put(device_id=5, messages=_moving(100, 101))
            raise RuntimeError("the primary database's transaction failed")
    elif change == "closed":
        cache.close()
    assert cache.calc_tail(calc_id=3, device_id=5) is None


def _block(messages):
    from analytics.columnar import Block

    return Block.from_dicts(messages)


def test_a_recalculation_through_the_reader_keeps_and_uses_the_tail(cache):
    """What the worker does (analytics/calculation.py ``runs_calculate``): the reader hands the
    tail to the engine and keeps the one it returns."""
    calc = compile_calculator(TRIPS)
    reader = cache.reader(calc_id=3, device_id=5, names=calc.parameters)
    first = recalculate(calculator=calc, read_messages=reader.read_messages, read_intervals=reader.read_intervals,
                        interval_before=reader.interval_before, dirty_begin=-math.inf, dirty_end=math.inf,
                        now=T0 + 100, newest=reader.newest, tail=reader.tail)
    reader.tail = first.tail
    cache.intervals_apply(calc_id=3, device_id=5, diff=first, marker=1.0)
    assert first.tail is not None and not first.extended
    newer = _moving(100, 101)
    cache.messages_replace(device_id=5, begin=T0 + 100, end=T0 + 100, messages=newer)
    second = recalculate(calculator=calc, read_messages=reader.read_messages, read_intervals=reader.read_intervals,
                         interval_before=reader.interval_before, dirty_begin=T0 + 100, dirty_end=T0 + 100,
                         now=T0 + 101, newest=reader.newest, tail=reader.tail)
    assert second.extended and second.messages_read == 2
    [interval] = second.updated
    assert interval["end"] == T0 + 100 and np.isclose(interval["duration"], 100.0)
