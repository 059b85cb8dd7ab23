"""Shard leases against the Redis named in REDIS_URL (on its real clock, with short TTLs) and the
fence in the datacenter test databases of region eu."""

from __future__ import annotations

import threading
import time

import pytest
from django.conf import settings
from django.db import connections, transaction

from analytics.fleet.leases import Fenced, ShardLeases, fence_check, fence_raise, fences_check, placement
from flespi_site.fleet import lease_holders, lease_key, region_prefix
from tests.support.concurrency import on_a_barrier

SHARDS = 16
TTL = 0.6  # seconds: long enough for a balancing round, short enough to wait out


@pytest.fixture
def region(region_client):
    return region_client[1]


def leases(client, region, worker, *, ttl=TTL):
    return ShardLeases(client, region=region, shards=SHARDS, worker=worker, ttl=ttl)


def lease_owners(client, region):
    """shard -> the worker its lease names, read straight from Redis."""
    owners = {}
    for shard in range(SHARDS):
        value = client.get(lease_key(region, shard))
        if value is not None:
            owners[shard] = value.decode().split(" ")[0]
    return owners


def settle(workers, rounds=6):
    """Balancing rounds in which each worker gives its extras up, as a worker loop does."""
    for _ in range(rounds):
        for worker in workers:
            for shard, epoch in worker.balance().extra.items():
                worker.release(shard, epoch)
    return {worker.worker: sorted(worker.balance().held) for worker in workers}


def test_two_workers_never_hold_one_shard(client, region):
    workers = [leases(client, region, f"w{i}") for i in range(8)]
    epochs_seen = []
    for _ in range(20):
        epochs = on_a_barrier([lambda w=w: w.acquire(3) for w in workers])
        won = [(w, e) for w, e in zip(workers, epochs, strict=True) if e is not None]
        assert len(won) == 1
        [(winner, epoch)] = won
        assert lease_owners(client, region) == {3: winner.worker}
        assert [w.renew(3, epoch) for w in workers] == [w is winner for w in workers]
        epochs_seen.append(epoch)
        assert winner.release(3, epoch)
    assert epochs_seen == sorted(set(epochs_seen))  # every acquisition a newer epoch


def test_racing_balances_share_every_shard_once(client, region):
    workers = [leases(client, region, f"w{i}") for i in range(4)]
    on_a_barrier([lambda w=w: w.balance() for w in workers])  # all four are live now
    balances = on_a_barrier([lambda w=w: w.balance() for w in workers])

    held = [shard for balance in balances for shard in balance.held]
    assert sorted(held) == list(range(SHARDS))
    assert all(balance.target == 4 for balance in balances)
    assert lease_owners(client, region) == {
        s: w.worker for w, b in zip(workers, balances, strict=True) for s in b.held
    }


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_spread_evenly(client, region, count):
    workers = [leases(client, region, f"w{i}", ttl=5) for i in range(count)]
    for worker in workers:
        worker.balance()  # every worker heartbeats before the first share is taken

    held = settle(workers)

    assert held == {name: sorted(s for s, owner in placement(SHARDS, list(held)).items() if owner == name)
                    for name in held}
    assert max(len(shards) for shards in held.values()) == -(-SHARDS // count)
    assert sorted(s for shards in held.values() for s in shards) == list(range(SHARDS))
    assert len(workers[0].live_workers()) == count


def test_a_dead_workers_shards_move_to_the_live_one(client, region):
    alive = leases(client, region, "alive")
    dying = leases(client, region, "dying")
    assert len(dying.balance().held) == SHARDS  # alone at first: takes everything
    balance = alive.balance()
    assert (balance.target, balance.held) == (8, {})  # nothing free yet
    extra = dying.balance().extra
    assert len(extra) == 8
    for shard, epoch in extra.items():
        dying.release(shard, epoch)
    assert sorted(alive.balance().acquired) == sorted(extra)
    old_epochs = dying.balance().held

    # "dying" stops heartbeating and renewing: its leases lapse with the TTL while "alive" keeps
    # balancing (a third of the TTL apart) and takes them as they come free
    acquired: dict[int, int] = {}
    deadline = time.monotonic() + TTL + 0.3
    while time.monotonic() < deadline:
        balance = alive.balance()
        acquired.update(balance.acquired)
        time.sleep(TTL / 3)

    assert balance.target == SHARDS
    assert sorted(balance.held) == list(range(SHARDS))
    assert sorted(acquired) == sorted(old_epochs)
    assert all(acquired[s] > old_epochs[s] for s in old_epochs)
    assert lease_owners(client, region) == dict.fromkeys(range(SHARDS), "alive")
    assert alive.live_workers() == ["alive"]
    # back from its pause, the old holder finds out at its next step
    resumed = dying.balance()
    assert (resumed.held, sorted(resumed.lost)) == ({}, sorted(old_epochs))
    assert not dying.renew(0, old_epochs[0])


def test_a_clean_leave_frees_the_shards_at_once(client, region):
    first, second = leases(client, region, "first", ttl=30), leases(client, region, "second", ttl=30)
    first.balance()
    second.balance()
    first.leave()

    assert len(second.balance().held) == SHARDS
    assert second.live_workers() == ["second"]


def test_bad_worker_ids_and_shards_are_refused(client, region):
    with pytest.raises(ValueError, match="without spaces"):
        leases(client, region, "two words")
    with pytest.raises(ValueError, match=r"shard must be in 0\.\.15"):
        leases(client, region, "w").acquire(16)


def region_aliases():
    return [dc.alias for dc in settings.TOPOLOGY.region("eu").datacenters]


def _clear_fences():
    for alias in region_aliases():
        with connections[alias].cursor() as cursor:
            cursor.execute("DELETE FROM shard_fence")


@pytest.fixture
def clean_fence():
    """No fence row before (real calc workers of other tests leave theirs) nor after the test."""
    _clear_fences()
    yield
    _clear_fences()


def write(alias, *, shard, epoch, worker):
    """A worker's write transaction: the fence first, then its rows (a scratch table here)."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        fence_check(cursor, shard=shard, epoch=epoch)
        cursor.execute("INSERT INTO written (shard, worker) VALUES (%s, %s)", [shard, worker])


def written(alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT shard, worker FROM written ORDER BY worker")
        return cursor.fetchall()


@pytest.mark.django_db(databases="__all__")
def test_a_paused_worker_whose_lease_expired_cannot_write(client, region, clean_fence):
    aliases = region_aliases()
    assert len(aliases) >= 2  # the region's every datacenter holds a fence
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE written (shard integer, worker text)")

    paused, taker = leases(client, region, "paused"), leases(client, region, "taker")
    old = paused.acquire(5)
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            assert fence_raise(cursor, shard=5, epoch=old, worker="paused") == old
        write(alias, shard=5, epoch=old, worker="paused")

    time.sleep(TTL + 0.2)  # paused past its lease
    new = taker.acquire(5)
    assert new is not None and new > old
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            assert fence_raise(cursor, shard=5, epoch=new, worker="taker") == new
            # an old epoch never lowers the fence
            assert fence_raise(cursor, shard=5, epoch=old, worker="paused") == new

    for alias in aliases:  # resuming, it tries to commit what it computed
        with pytest.raises(Fenced) as refused:
            write(alias, shard=5, epoch=old, worker="paused-again")
        assert (refused.value.stored, refused.value.epoch) == (new, old)
        write(alias, shard=5, epoch=new, worker="taker")
        assert written(alias) == [(5, "paused"), (5, "taker")]
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT epoch, worker FROM shard_fence WHERE shard = 5")
            assert cursor.fetchone() == (new, "taker")
    assert not paused.renew(5, old)


@pytest.mark.django_db(databases="__all__")
def test_a_shard_never_fenced_in_a_database_refuses_writes(clean_fence):
    alias = region_aliases()[0]
    with connections[alias].cursor() as cursor, pytest.raises(Fenced, match="the fence holds no epoch"):
        fence_check(cursor, shard=9, epoch=1)


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_raise_waits_for_the_old_owners_open_write(clean_fence):
    # The old owner has passed its check and not committed yet; the new owner raises the fence
    # from another connection. The raise waits on the row's share lock until that commit, and from
    # then on the old owner's next transaction is fenced.
    alias = region_aliases()[0]
    with connections[alias].cursor() as cursor:
        fence_raise(cursor, shard=2, epoch=10, worker="old")
        cursor.execute("CREATE TABLE IF NOT EXISTS fence_test_written (worker text)")
        cursor.execute("TRUNCATE fence_test_written")
    raiser: dict = {}

    def raise_fence():
        connection = connections[alias]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                raiser["pid"] = cursor.fetchone()[0]
                raiser["stored"] = fence_raise(cursor, shard=2, epoch=11, worker="new")
                cursor.execute("SELECT count(*) FROM fence_test_written")
                raiser["saw_rows"] = cursor.fetchone()[0]
        finally:
            connection.close()

    try:
        thread = threading.Thread(target=raise_fence)
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            fence_check(cursor, shard=2, epoch=10)
            thread.start()
            waiting = False
            for _ in range(200):
                # statistics are a snapshot per transaction unless cleared
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [raiser.get("pid", -1)]
                )
                row = cursor.fetchone()
                if row is not None and row[0] == "Lock":
                    waiting = True
                    break
                time.sleep(0.05)
            assert waiting, "the raise did not wait for the open write's share lock"
            assert "stored" not in raiser
            cursor.execute("INSERT INTO fence_test_written VALUES ('old')")
        thread.join(timeout=10)

        assert (raiser["stored"], raiser["saw_rows"]) == (11, 1)
        with pytest.raises(Fenced), transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            fence_check(cursor, shard=2, epoch=10)
            cursor.execute("INSERT INTO fence_test_written VALUES ('old-again')")
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT worker FROM fence_test_written")
            assert cursor.fetchall() == [("old",)]
    finally:
        with connections[alias].cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS fence_test_written")


@pytest.mark.django_db(databases="__all__")
def test_one_check_fences_a_write_for_several_shards(clean_fence):
    """A batch over several shards checks all their fences in one statement: any stale or
    missing epoch refuses the whole transaction, naming the first such shard."""
    alias = region_aliases()[0]
    with connections[alias].cursor() as cursor:
        for shard, epoch in ((1, 10), (2, 20), (3, 30)):
            fence_raise(cursor, shard=shard, epoch=epoch, worker="w")
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        fences_check(cursor, epochs={1: 10, 2: 20, 3: 30})
    for epochs, refused in (({1: 10, 2: 19, 3: 30}, (2, 19, 20)), ({1: 10, 4: 1}, (4, 1, None))):
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor, \
                pytest.raises(Fenced) as caught:
            fences_check(cursor, epochs=epochs)
        assert (caught.value.shard, caught.value.epoch, caught.value.stored) == refused


def test_lease_holders_names_each_shards_worker_in_the_callers_round_trip(client, region):
    one, two = leases(client, region, "host-1-aa", ttl=30), leases(client, region, "host-2-bb", ttl=30)
    one.acquire(0)
    two.acquire(2)
    pipe = client.pipeline(transaction=False)
    pipe.set(f"{region_prefix(region)}other", 1)
    assert lease_holders(pipe, region=region, shards=[0, 1, 2]) == {0: "host-1-aa", 1: None, 2: "host-2-bb"}
    assert client.get(f"{region_prefix(region)}other") == b"1"


def test_a_worker_restarted_under_its_name_takes_its_shards_back_with_new_epochs(client, region):
    a, b = leases(client, region, "host-a", ttl=5), leases(client, region, "host-b", ttl=5)
    a.balance()
    b.balance()
    held = settle([a, b])
    before = dict(a.balance().held)
    assert sorted(before) == held["host-a"]

    again = leases(client, region, "host-a", ttl=5)  # a new process under the same name knows no epoch
    balance = again.balance()
    assert sorted(balance.held) == held["host-a"]  # its shards, at once, not after the old leases expire
    assert all(balance.held[shard] > before[shard] for shard in before)  # new epochs fence the old process out
    assert sorted(b.balance().held) == held["host-b"]  # nothing else moved
    assert a.balance().lost == before  # the earlier process, if it still runs, finds out


@pytest.mark.parametrize("shards", [16, 256, 1024])
def test_placement_is_even_stable_and_moves_about_a_joiners_share(shards):
    names = [f"host{i}-w0" for i in range(4)]
    before = placement(shards, names)
    assert placement(shards, list(reversed(names))) == before  # the same in every process
    counts = sorted(list(before.values()).count(name) for name in names)
    assert counts[-1] == -(-shards // 4) and counts[0] >= shards // 4 - 3
    joined = placement(shards, [*names, "host9-w0"])
    moved = sum(1 for shard in before if before[shard] != joined[shard])
    assert list(joined.values()).count("host9-w0") <= moved <= 2 * -(-shards // 5)
    left = placement(shards, names[1:])
    moved = sum(1 for shard in before if before[shard] != left[shard])
    assert list(before.values()).count(names[0]) <= moved <= 2 * list(before.values()).count(names[0])
