"""The shard cache file (analytics/cache.py): merge semantics, deletes, expiry, windows equal to
``Messages.from_dicts``, intervals, ``recalculate`` through the cache equal to ``MemoryStore``,
corrupt and foreign files, and a writer killed mid-write. No database needed."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.engine import MemoryStore, Messages, calculate, compile_calculator, recalculate
from analytics.fleet import cache as cache_module
from analytics.fleet.cache import CacheCorrupt, ShardCache
from tests.engine.test_recalculate import EXAMPLES, _apply_batch, _batches, _current, calculators

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 messages and a tail of 4, so that a few dozen messages cross every path."""
    monkeypatch.setattr(cache_module, "CHUNK_SIZE", 8)
    monkeypatch.setattr(cache_module, "CHUNK_MAX", 16)
    monkeypatch.setattr(cache_module, "TAIL_MAX", 4)


@pytest.fixture
def cache(tmp_path):
    c = ShardCache(tmp_path / "eu-1.cache", shard="eu/1")
    yield c
    c.close()


def typed(values):
    return [(type(v).__name__, repr(v)) for v in values]


def assert_same(got: Messages, want: Messages):
    assert got.timestamps.tolist() == want.timestamps.tolist()
    assert sorted(got.names) == sorted(want.names)
    for name in want.names:
        a, b = got.column(name), want.column(name)
        assert (a.kind, a.ints) == (b.kind, b.ints), name
        assert typed(a.to_objects()) == typed(b.to_objects()), name


def everything(c: ShardCache, device_id: int = 1) -> list[dict]:
    return c.messages_read(device_id=device_id).to_dicts()


# ---- messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 40])  # tail only; chunks and tail
def test_equal_timestamps_merge_and_resending_changes_nothing(cache, small_chunks, count):
    first = [{"timestamp": float(t), "a": t, "b": "x"} for t in range(count)]
    cache.messages_put(device_id=1, messages=first)
    cache.messages_put(
        device_id=1, messages=[{"timestamp": 1.0, "b": None, "c": [1]}, {"timestamp": 1.5, "a": 2}]
    )
    want = {m["timestamp"]: dict(m) for m in first}
    want[1.0] = {"timestamp": 1.0, "a": 1, "b": None, "c": [1]}
    want[1.5] = {"timestamp": 1.5, "a": 2}
    assert everything(cache) == [want[t] for t in sorted(want)]
    # Within one batch, later keys overwrite earlier ones at the same timestamp.
    cache.messages_put(
        device_id=1, messages=[{"timestamp": 2.0, "a": 5}, {"timestamp": 2.0, "a": 6, "d": True}]
    )
    want[2.0] = {**want[2.0], "a": 6, "d": True}
    before = everything(cache)
    assert before == [want[t] for t in sorted(want)]
    state = cache.device_state(device_id=1)
    cache.messages_put(device_id=1, messages=[{"timestamp": 2.0, "a": 6}, *first[3:]])
    assert everything(cache) == before
    assert cache.device_state(device_id=1) == state
    # A value of another type at the same key is a change (1 == True in Python, not here).
    cache.messages_put(device_id=1, messages=[{"timestamp": 0.0, "a": False}])
    assert typed([everything(cache)[0]["a"]]) == typed([False])


def test_device_state_fill_mark_and_drop(cache, small_chunks):
    assert cache.device_state(device_id=7) is None
    cache.messages_put(device_id=7, messages=[], filled_to=100.0)
    assert cache.device_state(device_id=7) == cache_module.DeviceState(7, 100.0, 0, None, None)
    cache.messages_put(device_id=7, messages=[{"timestamp": float(t), "v": t} for t in range(30)])
    assert cache.device_state(device_id=7) == cache_module.DeviceState(7, 100.0, 30, 0.0, 29.0)
    cache.messages_put(device_id=7, messages=[{"timestamp": 30.0}], filled_to=200.0)
    assert cache.device_state(device_id=7).filled_to == 200.0
    assert (cache.oldest(device_id=7), cache.newest(device_id=7)) == (0.0, 30.0) == cache.bounds(device_id=7)
    cache.messages_put(device_id=8, messages=[{"timestamp": 1.0}])
    assert cache.devices() == [7, 8]
    cache.device_drop(device_id=7)
    assert cache.device_state(device_id=7) is None
    assert everything(cache, 7) == [] and cache.newest(device_id=7) is None
    assert cache.bounds(device_id=7) == (None, None)
    assert len(everything(cache, 8)) == 1


def test_delete_range_is_inclusive_and_expiry_is_by_time(cache, small_chunks):
    cache.messages_put(device_id=1, messages=[{"timestamp": float(t), "v": t} for t in range(50)])
    cache.messages_put(device_id=2, messages=[{"timestamp": float(t), "v": t} for t in range(50)])
    assert cache.messages_delete(device_id=1, begin=10.0, end=30.0) == 21  # whole and part chunks
    assert cache.messages_delete(device_id=1, begin=48.0) == 2  # the tail
    assert [m["v"] for m in everything(cache)] == [*range(10), *range(31, 48)]
    assert cache.messages_delete(device_id=1, begin=100.0, end=200.0) == 0
    assert cache.messages_expire(before=5.0, device_id=1) == 5
    assert [m["v"] for m in everything(cache)][:2] == [5, 6]
    assert cache.messages_expire(before=40.0) == (5 + 9) + 40  # every device: 5..9 and 31..39 of 1
    assert [m["v"] for m in everything(cache, 2)] == list(range(40, 50))
    assert cache.messages_delete(device_id=2) == 10
    assert cache.device_state(device_id=2).messages == 0


def test_big_integers(cache):
    big = 2**70 + 1  # the engine reads it as a float; the cache keeps it exact
    huge = 10**400  # no float holds it: an object column for the engine too
    msgs = [{"timestamp": 1.0, "a": big, "b": huge}, {"timestamp": 2.0, "a": 3, "b": 1}]
    cache.messages_put(device_id=1, messages=msgs)
    got = cache.messages_read(device_id=1)
    assert_same(
        Messages(got.timestamps, {"a": got.column("a")}),
        Messages.from_dicts([{k: m[k] for k in ("timestamp", "a")} for m in msgs]),
    )
    assert got.column("b").kind == "obj" and got.column("b").to_objects() == [huge, 1]
    # Folded into a chunk, the same.
    cache.messages_put(
        device_id=1, messages=[{"timestamp": float(t)} for t in range(3, 3 + cache_module.TAIL_MAX)]
    )
    assert cache.messages_read(device_id=1, end=3.0).column("b").to_objects() == [huge, 1]


_values = st.sampled_from(
    [0, 1, -3, 7, 2.5, -0.0, 1e300, 2**63, 2**70 + 1, True, False, None, "x", "", [1, 2], [], {"a": 1}, ...]
)
_key = st.sampled_from(["a", "b", "c", "position.speed"])
_ts = st.integers(0, 60).map(float) | st.integers(0, 600).map(lambda i: i / 10)
_msg = st.builds(
    lambda t, kv: {"timestamp": t, **{k: v for k, v in kv.items() if v is not ...}},
    _ts,
    st.dictionaries(_key, _values, max_size=4),
)
_op = st.one_of(
    st.tuples(st.just("put"), st.lists(_msg, min_size=1, max_size=30)),
    st.tuples(st.just("delete"), _ts, _ts),
    st.tuples(st.just("expire"), _ts),
    # a drain's changed range: what PostgreSQL now holds in it
    st.tuples(st.just("replace"), _ts, _ts, st.lists(_msg, max_size=30)),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(_op, min_size=1, max_size=10), windows=st.lists(st.tuples(_ts, _ts), min_size=1, max_size=4)
)
def test_windows_equal_from_dicts_after_any_puts_deletes_and_expiry(
    tmp_path_factory, small_chunks, ops, windows
):
    model: dict[float, dict] = {}
    path = tmp_path_factory.mktemp("c") / "s.cache"
    with ShardCache(path, shard="eu/1") as c, ShardCache(path, shard="eu/1") as fresh:
        c.messages_put(device_id=1, messages=[], filled_to=0.0)  # cached, as a drain's devices are
        for op in ops:
            if op[0] == "put":
                for m in op[1]:
                    model[m["timestamp"]] = {**model.get(m["timestamp"], {}), **m}
                c.messages_put(device_id=1, messages=op[1])
            elif op[0] == "delete":
                lo, hi = sorted(op[1:])
                for t in [t for t in model if lo <= t <= hi]:
                    del model[t]
                c.messages_delete(device_id=1, begin=lo, end=hi)
            elif op[0] == "replace":
                lo, hi = sorted(op[1:3])
                inside = [m for m in op[3] if lo <= m["timestamp"] <= hi]
                for t in [t for t in model if lo <= t <= hi]:
                    del model[t]
                for m in inside:
                    model[m["timestamp"]] = {**model.get(m["timestamp"], {}), **m}
                c.messages_replace(device_id=1, begin=lo, end=hi, messages=inside)
            else:
                for t in [t for t in model if t < op[1]]:
                    del model[t]
                c.messages_expire(before=op[1])
            current = [model[t] for t in sorted(model)]
            assert_same(c.messages_read(device_id=1), Messages.from_dicts(current))
        # The writer keeps its tails decoded in memory; another reader decodes the file: the same.
        assert_same(fresh.messages_read(device_id=1), Messages.from_dicts(current))
        for a, b in windows:
            a, b = sorted((a, b))
            for reader in (c, fresh):
                assert_same(
                    reader.messages_read(device_id=1, begin=a, end=b),
                    Messages.from_dicts([m for m in current if a <= m["timestamp"] < b]),
                )
                # only the parameters a calculator reads: as if the others were never there
                assert_same(
                    reader.messages_read(device_id=1, begin=a, end=b, names={"a", "position.speed"}),
                    Messages.from_dicts([{k: v for k, v in m.items() if k in ("timestamp", "a", "position.speed")}
                                         for m in current if a <= m["timestamp"] < b]),
                )
        state = c.device_state(device_id=1)
        assert (state.messages if state else 0) == len(model)


# ---- intervals and recalculation ---------------------------------------------------------


def test_interval_diffs_applied_then_read(cache):
    calc = {
        "name": "t",
        "selectors": [{"type": "expression", "expression": "v > 0"}],
        "counters": [{"name": "n", "type": "expression", "expression": "v", "method": "summary"}],
    }
    msgs = [{"timestamp": float(t), "v": v} for t, v in enumerate([1, 1, 0, 1, 0, 2, 2])]
    memory = MemoryStore(msgs, [])
    cache.messages_put(device_id=1, messages=msgs)
    reader = cache.reader(calc_id=5, device_id=1)
    diff = memory.recalculate(calc, dirty_begin=-math.inf, dirty_end=math.inf)
    assert len(diff.created) == 3
    memory.apply(diff)
    cache.intervals_apply(calc_id=5, device_id=1, diff=diff)
    assert reader.read_intervals(-math.inf, math.inf) == memory.intervals
    # A user field survives an update; another assignment is untouched.
    cache.intervals_replace(calc_id=6, device_id=1, intervals=memory.intervals)
    memory.intervals[0]["note"] = "checked"
    cache.intervals_replace(calc_id=5, device_id=1, intervals=memory.intervals)
    msgs[2]["v"] = 3  # joins the first two intervals
    memory.set_messages(msgs)
    cache.messages_put(device_id=1, messages=[msgs[2]])
    diff = memory.recalculate(calc, dirty_begin=2.0, dirty_end=2.0)
    assert diff.updated and diff.deleted
    memory.apply(diff)
    cache.intervals_apply(calc_id=5, device_id=1, diff=diff)
    assert reader.read_intervals(-math.inf, math.inf) == memory.intervals
    assert memory.intervals[0]["note"] == "checked"
    assert reader.read_intervals(0.0, 5.0) == memory.read_intervals(0.0, 5.0)
    assert reader.read_intervals(0.5, 5.0) == memory.read_intervals(0.5, 5.0) == []
    for t in (-1.0, 0.0, 0.5, 5.0, 9.0):
        assert reader.interval_before(t) == memory.interval_before(t)
    assert len(cache.intervals_read(calc_id=6, device_id=1)) == 3
    cache.assignment_drop(calc_id=5, device_id=1)
    assert reader.read_intervals(-math.inf, math.inf) == [] and reader.interval_before(math.inf) is None
    assert len(cache.intervals_read(calc_id=6, device_id=1)) == 3


@settings(
    max_examples=EXAMPLES // 2,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(calc_config=calculators(), batches=_batches)
def test_recalculate_through_the_cache_equals_memory_store(
    tmp_path_factory, small_chunks, calc_config, batches
):
    calc = compile_calculator(calc_config)
    state: dict = {}
    memory = MemoryStore([], [])
    with ShardCache(tmp_path_factory.mktemp("c") / "s.cache", shard="eu/1") as c:
        reader = c.reader(calc_id=1, device_id=9)
        for batch in batches:
            for op in batch:
                if isinstance(op, tuple):
                    t = _apply_batch({}, [op])[0]
                    c.messages_delete(device_id=9, begin=t, end=t)
                else:
                    c.messages_put(device_id=9, messages=[op])
            lo, hi = _apply_batch(state, batch)
            memory.set_messages(_current(state))
            want = memory.recalculate(calc, dirty_begin=lo, dirty_end=hi)
            got = recalculate(
                calculator=calc,
                read_messages=reader.read_messages,
                read_intervals=reader.read_intervals,
                interval_before=reader.interval_before,
                dirty_begin=lo,
                dirty_end=hi,
                now=None,
                frozen_before=-math.inf,
                newest=reader.newest,
            )
            assert (got.created, got.updated, got.deleted) == (want.created, want.updated, want.deleted)
            assert (got.active_id, got.reached_end) == (want.active_id, want.reached_end)
            memory.apply(want)
            c.intervals_apply(calc_id=1, device_id=9, diff=got)
            assert reader.read_intervals(-math.inf, math.inf) == memory.intervals
        assert reader.read_intervals(-math.inf, math.inf) == list(calculate(_current(state), calc))


# ---- integrity ---------------------------------------------------------------------------


def _filled(path: Path, n: int = 20_000) -> None:
    with ShardCache(path, shard="eu/1") as c:
        c.messages_put(
            device_id=1, messages=[{"timestamp": float(t), "v": t, "s": "x" * (t % 5)} for t in range(n)]
        )
        c.intervals_replace(calc_id=1, device_id=1, intervals=[{"id": 0, "begin": 0.0, "end": 1.0}])


def test_a_deleted_file_is_empty_and_the_open_cache_knows(tmp_path):
    path = tmp_path / "s.cache"
    _filled(path)
    c = ShardCache(path, shard="eu/1")
    assert not c.replaced()
    path.unlink()
    assert c.replaced()
    c.close()
    with ShardCache(path, shard="eu/1") as fresh:
        assert fresh.device_state(device_id=1) is None
        assert fresh.devices() == [] and fresh.intervals_read(calc_id=1, device_id=1) == []


def test_foreign_files_raise_cache_corrupt(tmp_path):
    garbage = tmp_path / "garbage.cache"
    garbage.write_bytes(os.urandom(10_000))
    with pytest.raises(CacheCorrupt, match=r"garbage\.cache"):
        ShardCache(garbage, shard="eu/1")
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(CacheCorrupt, match="not a shard cache"):
        ShardCache(other, shard="eu/1")
    ours = tmp_path / "s.cache"
    _filled(ours, 10)
    with pytest.raises(CacheCorrupt, match="holds shard 'eu/1', not 'eu/2'"):
        ShardCache(ours, shard="eu/2")
    db = sqlite3.connect(ours)
    db.execute(f"PRAGMA user_version={cache_module.FORMAT_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(CacheCorrupt, match="format version"):
        ShardCache(ours, shard="eu/1")


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_damaged_pages_raise_cache_corrupt(tmp_path, where):
    path = tmp_path / "s.cache"
    _filled(path)
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    data[at : at + 8192] = os.urandom(8192)
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorrupt), ShardCache(path, shard="eu/1") as c:
        c.messages_read(device_id=1)


def test_a_damaged_chunk_fails_its_checksum(tmp_path):
    path = tmp_path / "s.cache"
    _filled(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"FCC1") + 200  # inside the first chunk's columns: SQLite cannot tell
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with ShardCache(path, shard="eu/1") as c:
        assert c.device_state(device_id=1).messages == 20_000
        with pytest.raises(CacheCorrupt, match="checksum"):
            c.messages_read(device_id=1)


WRITER = textwrap.dedent(
    """
    import sys
    from analytics.fleet.cache import ShardCache
    c = ShardCache(sys.argv[1], shard="eu/1")
    n = int(sys.argv[2])
    k = 0
    while True:
        k += 1
        # Each round rewrites every message (chunks and tail) and the fill mark: all or nothing.
        c.messages_put(device_id=1, messages=[{"timestamp": float(t), "v": k} for t in range(n)], filled_to=k)
        c.intervals_replace(calc_id=1, device_id=1, intervals=[{"id": i, "begin": float(i), "round": k} for i in range(50)])
        print(k, flush=True)
    """
)


def test_a_writer_killed_mid_write_leaves_a_previous_state(tmp_path):
    path = tmp_path / "s.cache"
    n = 30_000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = np.random.default_rng(3)
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(n)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            first = proc.stdout.readline()  # at least one round committed
            assert first.strip(), "the writer died before its first round"
            # Meanwhile another process reads consistent snapshots.
            with ShardCache(path, shard="eu/1") as reader:
                for _ in range(3):
                    seen = {m["v"] for m in reader.messages_read(device_id=1).to_dicts()}
                    assert len(seen) == 1
            time.sleep(float(rng.uniform(0.0, 0.4)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        rounds = [int(line) for line in [first, *out.splitlines()] if line.strip()]
        with ShardCache(path, shard="eu/1") as c:
            msgs = c.messages_read(device_id=1).to_dicts()
            state = c.device_state(device_id=1)
            assert len(msgs) == n == state.messages
            (k,) = {m["v"] for m in msgs}
            # The last printed round, or the one after it that committed before the kill.
            assert rounds[-1] <= k <= rounds[-1] + 1, (attempt, rounds[-3:], k)
            assert state.filled_to >= k - 1
            intervals = c.intervals_read(calc_id=1, device_id=1)
            assert len(intervals) == 50 and len({i["round"] for i in intervals}) == 1
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()


def test_a_batch_commits_once_and_a_failing_call_inside_it_undoes_only_itself(cache, tmp_path):
    """``batch``: every call inside is one transaction, seen by another reader only at its end;
    a call that fails inside is rolled back to its savepoint, the others kept; an exception out
    of the batch undoes all of it."""
    reader = ShardCache(tmp_path / "eu-1.cache", shard="eu/1")
    try:
        with cache.batch():
            cache.messages_put(device_id=1, messages=[{"timestamp": 1.0, "a": 1}])
            with pytest.raises(ValueError):
                cache.messages_put(device_id=2, messages=[{"timestamp": math.nan}])
            cache.messages_put(device_id=3, messages=[{"timestamp": 2.0, "a": 2}])
            assert cache.devices() == [1, 3]  # the batch sees its own writes
            assert reader.devices() == []  # another connection does not, yet
        assert reader.devices() == [1, 3]
        with pytest.raises(RuntimeError), cache.batch():
            cache.messages_put(device_id=4, messages=[{"timestamp": 3.0}])
            raise RuntimeError("the worker's batch failed")
        assert cache.devices() == reader.devices() == [1, 3]
    finally:
        reader.close()


def test_a_readers_decoded_tails_follow_another_connections_writes(tmp_path):
    """A reader keeps the tails it decoded; a write through another connection (another process's
    writer) makes it decode them again, so it never reads a stale tail."""
    path = tmp_path / "s.cache"
    with ShardCache(path, shard="eu/1") as writer, ShardCache(path, shard="eu/1") as reader:
        writer.messages_put(device_id=1, messages=[{"timestamp": 1.0, "v": 1}])
        assert_same(reader.messages_read(device_id=1), Messages.from_dicts([{"timestamp": 1.0, "v": 1}]))
        writer.messages_put(device_id=1, messages=[{"timestamp": 1.0, "v": 2}, {"timestamp": 2.0, "v": 3}])
        expected = Messages.from_dicts([{"timestamp": 1.0, "v": 2}, {"timestamp": 2.0, "v": 3}])
        assert_same(reader.messages_read(device_id=1), expected)
        assert_same(writer.messages_read(device_id=1), expected)


# ---- write-behind (how the calc worker opens its caches) ----


def _state(c: ShardCache) -> tuple:
    """Everything a worker reads of a cache: messages, device states, intervals and markers, positions."""
    devices = c.devices()
    return (
        devices,
        [c.messages_read(device_id=device).to_dicts() for device in devices],
        [c.device_state(device_id=device) for device in devices],
        [c.newest(device_id=device) for device in devices],
        [c.oldest(device_id=device) for device in devices],
        [c.bounds(device_id=device) for device in devices],
        [c.intervals_read(calc_id=1, device_id=device) for device in (1, 2, 3)],
        [c.assignment_marker(calc_id=1, device_id=device) for device in (1, 2, 3)],
        c.positions(),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["put", "replace", "replace many", "delete", "expire", "intervals",
                                           "position", "position after", "flush", "failed batch", "drop",
                                           "another writer"]),
                          st.integers(1, 3), st.integers(0, 40), st.integers(0, 12)), max_size=30))
def test_write_behind_reads_as_a_plain_cache_and_the_file_holds_it_after_a_flush(small_chunks, tmp_path_factory, steps):
    """Whatever the writes, flushes and failed batches, a write-behind cache reads exactly as a
    cache that commits every write; after a flush another connection reads the same. What it
    keeps in memory of its file while its transaction is open (devices, message bounds, drain
    positions, interval markers) follows its own writes, is dropped with a failed batch, and is
    read again once another connection wrote the file between two of its transactions."""
    directory = tmp_path_factory.mktemp("behind")
    plain = ShardCache(directory / "plain.cache", shard="eu/1")
    behind = ShardCache(directory / "behind.cache", shard="eu/1", write_behind=True)
    try:
        for number, (kind, device, start, length) in enumerate(steps):
            for target in (plain, behind):
                if kind == "flush":
                    target.flush()
                elif kind == "put":
                    target.messages_put(device_id=device, messages=[
                        {"timestamp": float(start + offset), "v": number, "w": offset} for offset in range(length)])
                elif kind == "replace":
                    target.messages_replace(device_id=device, begin=float(start), end=float(start + length),
                                            messages=[{"timestamp": float(start + offset), "v": -number}
                                                      for offset in range(0, length, 2)])
                elif kind == "delete":
                    target.messages_delete(device_id=device, begin=float(start), end=float(start + length))
                elif kind == "expire":
                    target.messages_expire(before=float(start))
                elif kind == "intervals":
                    target.intervals_replace(calc_id=1, device_id=device, marker=float(number), intervals=[
                        {"id": index, "begin": float(start + index), "n": number} for index in range(length)])
                elif kind == "position":
                    target.position_set(alias="dc1", seq=number, stamp=start)
                elif kind == "drop":
                    target.device_drop(device_id=device)
                elif kind == "replace many":  # a drain's ranges of every device at once
                    target.messages_replace_many({other: (float(start), float(start + length), [
                        {"timestamp": float(start + length), "v": number, "d": other}]) for other in (1, 2, 3)})
                elif kind == "position after":  # a drain's position, only after the one before it
                    target.position_set(alias="dc1", seq=number, stamp=start, after=length)
                elif kind == "another writer":  # between two of the worker's transactions
                    target.flush()
                    with ShardCache(target.path, shard="eu/1") as other:
                        if number % 2:
                            other.device_drop(device_id=device)
                        else:
                            other.messages_put(device_id=device, messages=[{"timestamp": float(start), "o": number}])
                        other.intervals_replace(calc_id=1, device_id=device, marker=-float(number), intervals=[])
                        other.position_set(alias="dc1", seq=length, stamp=start + 1)
                else:  # a batch whose writes fail after some of them: none of them stays
                    with pytest.raises(RuntimeError), target.batch():
                        target.messages_put(device_id=device, messages=[{"timestamp": float(start), "v": 1e9}])
                        target.position_set(alias="dc1", seq=10**6, stamp=0)
                        target.intervals_replace(calc_id=1, device_id=device, marker=1e9, intervals=[])
                        target.device_drop(device_id=device % 3 + 1)
                        assert target.assignment_marker(calc_id=1, device_id=device) == 1e9
                        raise RuntimeError("the drain failed")
            assert _state(behind) == _state(plain), (number, kind)
        behind.flush()
        assert behind.unflushed_for() == 0.0
        with ShardCache(directory / "behind.cache", shard="eu/1") as other:
            assert _state(other) == _state(plain)
    finally:
        plain.close()
        behind.close()


def test_write_behind_holds_writes_until_the_flush_and_close_flushes(tmp_path):
    path = tmp_path / "s.cache"
    behind = ShardCache(path, shard="eu/1", write_behind=True)
    reader = ShardCache(path, shard="eu/1")
    try:
        assert behind.unflushed_for() == 0.0
        with behind.batch():
            behind.messages_put(device_id=1, messages=[{"timestamp": 1.0, "a": 1}])
            behind.position_set(alias="dc1", seq=7, stamp=70)
        behind.intervals_replace(calc_id=1, device_id=1, intervals=[{"id": 1, "begin": 1.0}], marker=5.0)
        assert behind.unflushed_for() > 0
        assert behind.devices() == [1] and behind.positions() == {"dc1": (7, 70)}
        assert reader.devices() == [] and reader.positions() == {}  # not in the file yet
        with behind.batch():
            assert behind.flush() is False  # never inside a batch
        assert behind.flush() is True
        assert reader.devices() == [1] and reader.positions() == {"dc1": (7, 70)}
        assert reader.assignment_marker(calc_id=1, device_id=1) == 5.0
        assert behind.flush() is False  # nothing held
        behind.messages_put(device_id=2, messages=[{"timestamp": 2.0, "a": 2}])
    finally:
        behind.close()  # flushes
        assert reader.devices() == [1, 2]
        reader.close()
    # A cache closed without its flush (its file was deleted or replaced): the writes go with it.
    dropped = ShardCache(path, shard="eu/1", write_behind=True)
    dropped.messages_put(device_id=3, messages=[{"timestamp": 3.0, "a": 3}])
    dropped.close(flush=False)
    with ShardCache(path, shard="eu/1") as again:
        assert again.devices() == [1, 2]


BEHIND_WRITER = textwrap.dedent(
    """
    import sys
    from analytics.fleet.cache import ShardCache
    c = ShardCache(sys.argv[1], shard="eu/1", write_behind=True)
    k = 0
    while True:
        k += 1
        with c.batch():
            c.messages_replace(device_id=1, begin=float(k), end=float(k), messages=[{"timestamp": float(k), "v": k}])
            c.position_set(alias="dc1", seq=k, stamp=k)
        c.intervals_replace(calc_id=1, device_id=1, intervals=[{"id": 1, "begin": 0.0, "round": k}], marker=float(k))
        if k % 50 == 0:
            c.flush()
            print(k, flush=True)
    """
)


def test_a_write_behind_writer_killed_leaves_its_last_flush(tmp_path):
    """SIGKILL between flushes: the file holds exactly the last flushed round (messages, drain
    position and interval marker agree), what the worker's catch-up starts from."""
    path = tmp_path / "s.cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", BEHIND_WRITER, str(path)], stdout=subprocess.PIPE, env=env,
                            text=True)
    try:
        flushed = [int(proc.stdout.readline()) for _ in range(3)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    flushed += [int(line) for line in out.splitlines() if line.strip()]
    with ShardCache(path, shard="eu/1") as c:
        (seq, _stamp), = c.positions().values()
        # the last printed flush, or the one after it that committed before the kill
        assert seq in (flushed[-1], flushed[-1] + 50)
        assert [m["v"] for m in c.messages_read(device_id=1).to_dicts()] == list(range(1, seq + 1))
        assert c.assignment_marker(calc_id=1, device_id=1) == float(seq)
        assert c.intervals_read(calc_id=1, device_id=1)[0]["round"] == seq
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_a_write_behind_transaction_sqlite_rolled_back_is_no_longer_waiting_for_a_flush(tmp_path):
    """SQLite ends a transaction on some errors (a full disk, an I/O error): its writes are gone
    (the worker's catch-up and markers repair that), and the cache no longer counts as holding any."""
    with ShardCache(tmp_path / "s.cache", shard="eu/1", write_behind=True) as cache:
        cache.messages_put(device_id=1, messages=[{"timestamp": 1.0, "a": 1}])
        assert cache.unflushed_for() > 0
        cache._conn.execute("ROLLBACK")  # as SQLite does on such an error
        assert cache.flush() is False
        assert cache.unflushed_for() == 0.0
        assert cache.devices() == []
        assert cache.bounds(device_id=1) == (None, None)
        cache.messages_put(device_id=2, messages=[{"timestamp": 2.0, "a": 2}])  # writes go on
        assert cache.devices() == [2] and cache.is_cached(device_id=1) is False  # not what it knew before
        assert cache.bounds(device_id=1) == (None, None) and cache.bounds(device_id=2) == (2.0, 2.0)
        assert cache.flush() is True and cache.devices() == [2]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(
    st.dictionaries(
        st.integers(1, 4),
        st.tuples(st.integers(0, 400), st.integers(0, 40), st.lists(st.integers(0, 40), max_size=6)),
        max_size=4,
    ),
    min_size=1, max_size=25,
))
def test_replacing_several_devices_in_one_write(tmp_path_factory, small_chunks, steps):
    """A drain's ranges of several devices written at once (``messages_replace_many``: where each
    device's messages end read for all of them) leave each device's messages in its range exactly
    the ones given, and the others as they were: appends after the tail, ranges reaching into it
    or into the chunks, empty ranges, other devices' ranges in the same write."""
    folder = tmp_path_factory.mktemp("many")
    at_once = ShardCache(folder / "at_once.db", shard="eu:1")
    want: dict[int, dict[float, dict]] = {device_id: {} for device_id in range(1, 5)}
    try:
        for step in steps:
            ranges = {}
            for device_id, (start, length, offsets) in step.items():
                begin, end = float(start), float(start + length)
                messages = [{"timestamp": begin + offset, "v": start + offset, f"k{device_id}": offset}
                            for offset in sorted(set(offsets)) if offset <= length]
                ranges[device_id] = (begin, end, messages)
                kept = want[device_id]
                for timestamp in [timestamp for timestamp in kept if begin <= timestamp <= end]:
                    del kept[timestamp]
                kept.update({message["timestamp"]: message for message in messages})
            at_once.messages_replace_many(ranges)
            for device_id, kept in want.items():
                assert everything(at_once, device_id) == [kept[timestamp] for timestamp in sorted(kept)]
    finally:
        at_once.close()
