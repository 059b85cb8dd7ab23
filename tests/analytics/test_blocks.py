"""Message blocks (``analytics.blocks``): sealed from the rows, removed by every change of the
messages they cover, read together with the rows no block covers, and always equal to the rows
(``Messages.from_dicts`` of ``devices.storage.messages_read``); racing writers and the sealer."""

from __future__ import annotations

import importlib
import itertools
import random
import threading
import time

import pytest
from django.db import connections, transaction

from analytics import blocks
from analytics.engine import Messages
from devices import storage
from devices.services import device_create, messages_delete, messages_ingest, messages_purge_expired
from flespi_site.constants import LockSpace
from tests.analytics.test_cache import assert_same

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

T0 = 1_700_000_000
SIZE = 32  # messages per block in these tests (the real size is thousands)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_SIZE", SIZE)


@pytest.fixture
def device(account):
    return device_create(account=account, name="blocks", configuration={"ident": "blocks-1"})


def message(t: float, rng: random.Random) -> dict:
    body = {"timestamp": t, "speed": rng.choice([0, 12.5, 40, 3]), "on": rng.random() < 0.5}
    if rng.random() < 0.3:
        body["can.rpm"] = rng.randrange(600, 3000)
    if rng.random() < 0.1:
        body["note"] = rng.choice(["a", None, [1, 2], {"k": 1}])
    return body


def ingest(device, messages):
    result = messages_ingest(devices=[device], messages=messages, source="rest")
    assert not result.errors, result.errors[:3]


def spans(device) -> list[tuple[int, int, int]]:
    with connections[device.database].cursor() as cursor:
        cursor.execute(
            "SELECT lo, hi, n FROM message_blocks WHERE device_id = %s AND name = '' ORDER BY lo", [device.pk]
        )
        return cursor.fetchall()


def assert_equal_to_rows(device, begin=0, end=2**62, names=None):
    rows = storage.messages_read(alias=device.database, device_ids=[device.pk], begin=begin, end=end)
    want = Messages.from_dicts(
        [{k: v for k, v in m.items() if names is None or k in names or k == "timestamp"} for m in rows]
    )
    got = blocks.messages_block(alias=device.database, device_id=device.pk, begin=begin, end=end, names=names)
    assert_same(got.to_messages(), want)


def assert_tiled(device):
    """Blocks never overlap, and each holds exactly the rows of its range (in one snapshot)."""
    with transaction.atomic(using=device.database), connections[device.database].cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        found = spans(device)
        for (_lo, hi, _n), (next_lo, _hi, _m) in itertools.pairwise(found):
            assert hi < next_lo
        for lo, hi, n in found:
            cursor.execute(
                "SELECT count(*) FROM messages WHERE device_id = %s AND ts BETWEEN %s AND %s",
                [device.pk, lo, hi],
            )
            assert cursor.fetchone()[0] == n, (lo, hi)


def test_sealing_builds_full_blocks_and_reads_equal_the_rows(device):
    rng = random.Random(1)
    ingest(device, [message(T0 + i, rng) for i in range(100)])
    assert spans(device) == []
    assert_equal_to_rows(device)
    assert blocks.device_seal(alias=device.database, device_id=device.pk) == 96  # 3 blocks, 4 left as rows
    assert [n for _lo, _hi, n in spans(device)] == [SIZE] * 3
    assert_tiled(device)
    assert blocks.device_seal(alias=device.database, device_id=device.pk) == 0
    for begin, end in (
        (0, 2**62),
        ((T0 + 10) * 10**6, (T0 + 70) * 10**6),
        ((T0 + 95) * 10**6, 2**62),
        ((T0 + 40) * 10**6, (T0 + 40) * 10**6),
    ):
        assert_equal_to_rows(device, begin, end)
        assert_equal_to_rows(device, begin, end, names={"speed", "can.rpm"})
        assert_equal_to_rows(device, begin, end, names={"note", "absent"})


def test_late_messages_and_deletions_remove_the_blocks_they_touch_and_resealing_restores_them(device):
    rng = random.Random(2)
    ingest(device, [message(T0 + i, rng) for i in range(0, 200, 2)])
    blocks.device_seal(alias=device.database, device_id=device.pk)
    sealed = spans(device)
    assert len(sealed) == 3
    # A late message between two sealed messages, one merged into a sealed one, one after all
    # (each write its own: a write's changed range spans all its messages of a device).
    ingest(device, [message(T0 + 71, rng)])
    ingest(device, [{"timestamp": T0 + 10, "extra": 1}])
    ingest(device, [message(T0 + 500, rng)])
    left = spans(device)
    assert len(left) == 1 and left[0] == sealed[2]  # the first two blocks covered 10 and 71
    assert_equal_to_rows(device)
    assert_equal_to_rows(device, names={"extra", "speed"})
    messages_delete(devices=[device], begin=T0 + 150, end=T0 + 160)
    assert spans(device) == []
    assert_equal_to_rows(device)
    blocks.device_seal(alias=device.database, device_id=device.pk)
    assert_tiled(device)
    assert_equal_to_rows(device)
    assert_equal_to_rows(device, names={"extra", "speed"})


def test_the_ttl_purge_hides_the_blocks_it_outdates_and_sealing_drops_them(device):
    rng = random.Random(3)
    ingest(device, [message(T0 + i, rng) for i in range(100)])
    blocks.device_seal(alias=device.database, device_id=device.pk)
    device.messages_ttl = 1000
    device.save(update_fields=["messages_ttl"])
    assert messages_purge_expired(alias=device.database, now=T0 + 1000 + 50) == 50
    assert_equal_to_rows(device)  # the first block still holds purged messages: not read
    blocks.device_seal(alias=device.database, device_id=device.pk)
    assert spans(device)[0][0] > (T0 + 31) * 10**6  # the block wholly before the oldest row is gone
    assert_equal_to_rows(device)


def work(*devices) -> dict[int, float]:
    with connections[devices[0].database].cursor() as cursor:
        cursor.execute("SELECT device_id, due FROM message_block_work WHERE device_id = ANY(%s)", [[d.pk for d in devices]])
        return dict(cursor.fetchall())


def test_the_trigger_notes_devices_and_seal_pending_looks_again_only_when_due(device, account):
    other = device_create(account=account, name="other", configuration={"ident": "blocks-2"})
    rng = random.Random(4)
    ingest(device, [message(T0 + i, rng) for i in range(40)])
    ingest(other, [message(T0 + i, rng) for i in range(SIZE)])
    assert work(device, other) == {device.pk: 0, other.pk: 0}
    now = time.time()
    assert blocks.seal_pending(alias=device.database, now=now) >= 2 * SIZE
    # 8 messages of the first device are not a block's worth: looked at again later; the other
    # is sealed whole and taken off.
    assert work(device, other) == {device.pk: now + blocks.TAIL_RECHECK}
    assert blocks.seal_pending(alias=device.database, now=now + 1) == 0
    ingest(device, [message(T0 + 40 + i, rng) for i in range(30)])  # appended: nothing written
    assert work(device, other) == {device.pk: now + blocks.TAIL_RECHECK}
    ingest(other, [message(T0 + 100, rng)])  # noted again
    ingest(device, [message(T0 + 5.5, rng)])  # a sealed block removed: due at once
    assert work(device, other) == {device.pk: 0, other.pk: 0}
    assert blocks.seal_pending(alias=device.database, now=now + 2) == 64  # the first device's two blocks
    assert len(spans(device)) == 2 and len(spans(other)) == 1
    assert_equal_to_rows(device)
    # The sweep notes every device, due at once.
    assert blocks.seal_sweep(alias=device.database) >= 2
    assert work(device, other) == {device.pk: 0, other.pk: 0}


def test_writers_racing_the_sealer_never_leave_a_block_that_differs_from_the_rows(device):
    """Late messages, merges and deletions from two threads while a third seals without pause:
    whenever the sealer holds a block, it holds exactly the rows of its range."""
    rng = random.Random(5)
    ingest(device, [message(T0 + i, rng) for i in range(0, 600, 3)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed):
        r = random.Random(seed)
        try:
            while not stop.is_set():
                if r.random() < 0.2:
                    start = T0 + r.randrange(600)
                    messages_delete(devices=[device], begin=start, end=start + r.randrange(5))
                else:
                    ingest(
                        device,
                        [message(T0 + r.randrange(600) + r.random(), r) for _ in range(r.randrange(1, 6))],
                    )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def sealer():
        try:
            while not stop.is_set():
                blocks.device_seal(alias=device.database, device_id=device.pk)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (6, 7)] + [
        threading.Thread(target=sealer)
    ]
    for thread in threads:
        thread.start()
    for _ in range(15):
        stop.wait(0.2)
        assert_tiled(device)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert_tiled(device)
    assert_equal_to_rows(device)
    blocks.device_seal(alias=device.database, device_id=device.pk)
    assert_tiled(device)
    assert_equal_to_rows(device)


def test_blocks_of_deleted_devices_are_dropped(device):
    rng = random.Random(8)
    ingest(device, [message(T0 + i, rng) for i in range(40)])
    blocks.device_seal(alias=device.database, device_id=device.pk)
    assert spans(device)
    storage.messages_drop_device(alias=device.database, device_id=device.pk)
    device.delete()
    blocks.blocks_orphaned_drop(alias=device.database)
    assert spans(device) == []


def test_the_lock_space_is_one_value_everywhere():
    migration = importlib.import_module("analytics.migrations.0004_message_blocks")
    assert migration.LOCK_SPACE == LockSpace.DEVICE_BLOCKS


def test_a_shard_cache_fill_in_parts_from_blocks_and_rows_holds_the_rows(device, monkeypatch, tmp_path):
    from analytics.fleet import changes
    from analytics.fleet.cache import ShardCache

    rng = random.Random(9)
    ingest(device, [message(T0 + i, rng) for i in range(150)])
    blocks.device_seal(alias=device.database, device_id=device.pk)
    ingest(device, [message(T0 + 40.5, rng)])  # a block gone again: its range is read from rows
    monkeypatch.setattr(changes, "FILL_CHUNK", 50)
    rows = storage.messages_read(alias=device.database, device_ids=[device.pk])
    with ShardCache(tmp_path / "shard.sqlite", shard="eu/0") as cache:
        cache.messages_put(device_id=device.pk, messages=[{"timestamp": 1.0, "stale": True}])  # a fill cut short
        changes.device_fill(cache=cache, device=device)
        assert cache.device_state(device_id=device.pk).messages == len(rows)
        assert_same(cache.messages_read(device_id=device.pk), Messages.from_dicts(rows))
