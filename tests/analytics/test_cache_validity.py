"""A cache never computes from data it has not seen (docs/analytics.md, "Cache validity"): two
calc workers in this process, each with a data directory of its own as two hosts have, hand a
shard back and forth while messages change; the cache that comes back catches up on what the
other drained meanwhile, from the numbered drains, or drops what it can no longer vouch for."""

from __future__ import annotations

import sqlite3
import time

import pytest
from django.conf import settings
from django.db import connections

from analytics.engine import calculate
from analytics.fleet.worker import ShardWorker
from devices import storage as message_storage
from tests.support.calculators import TRIPS
from tests.support.fleet import forget_region_state

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

T0 = float(int(time.time()) - 3000)  # within the calculators' update_period


def _clear() -> None:
    for datacenter in settings.TOPOLOGY.region("eu").datacenters:
        with connections[datacenter.alias].cursor() as cursor:
            cursor.execute("DELETE FROM message_changes")
            cursor.execute("DELETE FROM shard_drains")


@pytest.fixture
def hosts(tmp_path, platform):
    """Two workers of region eu, "host-a" and "host-b", each with its own cache directory; the
    test decides which of them holds the shards."""
    forget_region_state("eu")
    _clear()
    made = {name: ShardWorker(region="eu", worker_id=name, data_dir=tmp_path / name, lease_ttl=60)
            for name in ("host-a", "host-b")}
    yield made
    for worker in made.values():
        worker.leave()
    _clear()
    forget_region_state("eu")


@pytest.fixture
def assigned(make_account):
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create

    account = make_account("validity")
    calculator = calculator_create(account=account, config={**TRIPS, "update_delay": 0})
    device = device_create(account=account, configuration={"ident": "validity-1"})
    assignment_create(calculator=calculator, device=device)
    return calculator, device


def hand_to(hosts: dict[str, ShardWorker], name: str) -> ShardWorker:
    """Every other worker leaves; ``name`` takes every shard (and its caches catch up)."""
    for other, worker in hosts.items():
        if other != name:
            worker.leave()
    taker = hosts[name]
    taker.rebalance()
    assert len(taker.held) == settings.CALC_SHARDS
    return taker


def trip(t0: float, count: int, *, speed: float = 40.0) -> list[dict]:
    return [{"timestamp": t0 + i, "position.speed": speed} for i in range(count)]


def ingest(device, messages) -> None:
    from devices.services import messages_ingest

    messages_ingest(devices=[device], messages=messages)


def run(worker: ShardWorker, calculator, device) -> None:
    """Drain the change log and recalculate the assignment, as the worker's tasks do."""
    worker.changes_drain(device.shard)
    worker.batch_run({device.shard: [(calculator.pk, device.pk)]})


def cached_stamps(worker: ShardWorker, device) -> list[float]:
    return list(worker.held[device.shard].cache.messages_read(device_id=device.pk).timestamps)


def stored_stamps(device) -> list[float]:
    from devices.selectors import messages_of

    return [m["timestamp"] for m in messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)]


def assert_from_scratch(calculator, device) -> None:
    from analytics.storage import intervals_read
    from devices.selectors import messages_of

    messages = messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)
    expected = [(iv["begin"], iv["end"]) for iv in calculate(messages, calculator.configuration())]
    stored = [(iv["begin"], iv["end"]) for iv in intervals_read(alias=device.database, pairs=[(calculator.pk, device.pk)])]
    assert stored == expected


def test_a_cache_back_on_its_shard_reads_what_another_host_drained(hosts, assigned):
    calculator, device = assigned
    a = hand_to(hosts, "host-a")
    ingest(device, trip(T0, 30))
    run(a, calculator, device)
    assert cached_stamps(a, device) == stored_stamps(device)

    # host-a goes; host-b drains new messages, a late one and a deletion of host-a's data.
    b = hand_to(hosts, "host-b")
    ingest(device, trip(T0 + 100, 30))
    ingest(device, [{"timestamp": T0 + 50, "position.speed": 60.0}])
    run(b, calculator, device)
    from devices.services import messages_delete

    messages_delete(devices=[device], begin=T0 + 10, end=T0 + 12)
    run(b, calculator, device)
    assert_from_scratch(calculator, device)

    # host-a comes back with its old file: it reads again exactly the ranges host-b drained.
    a = hand_to(hosts, "host-a")
    assert cached_stamps(a, device) == stored_stamps(device)
    positions = a.held[device.shard].cache.positions()
    assert positions[device.database] == message_storage.drains_head(alias=device.database, shard=device.shard)
    assert positions[device.database][0] == 3

    # and it computes from it: a late message splits the trip where host-b's data says so.
    ingest(device, trip(T0 + 70, 3, speed=0.0))
    run(a, calculator, device)
    assert cached_stamps(a, device) == stored_stamps(device)
    assert_from_scratch(calculator, device)


def test_a_cache_away_longer_than_the_kept_drains_is_refilled(hosts, assigned):
    calculator, device = assigned
    a = hand_to(hosts, "host-a")
    ingest(device, trip(T0, 30))
    run(a, calculator, device)

    b = hand_to(hosts, "host-b")
    for k in range(3):
        ingest(device, trip(T0 + 100 + 40 * k, 20))
        run(b, calculator, device)
    # The pump forgets drains older than the window; the shard's last one stays.
    pruned = message_storage.drains_prune(alias=device.database, older_than=0)
    assert pruned >= 2
    assert message_storage.drains_since(alias=device.database, shard=device.shard, after=0)[0].drain.seq > 2

    a = hand_to(hosts, "host-a")
    cache = a.held[device.shard].cache
    assert not cache.is_cached(device_id=device.pk)  # dropped: it cannot say what it missed
    ingest(device, trip(T0 + 300, 5))
    run(a, calculator, device)  # refilled whole before the run
    assert cached_stamps(a, device) == stored_stamps(device)
    assert_from_scratch(calculator, device)


def test_a_cache_whose_own_drain_was_pruned_still_reads_only_what_it_missed(hosts, assigned):
    """A quiet shard: the drain the cache applied is older than the kept window and pruned, the
    drains it missed are not. They say which drain came before them, so the cache reads them
    again instead of being refilled."""
    calculator, device = assigned
    a = hand_to(hosts, "host-a")
    ingest(device, trip(T0, 30))
    run(a, calculator, device)
    b = hand_to(hosts, "host-b")
    for k in range(2):
        ingest(device, trip(T0 + 100 + 40 * k, 20))
        run(b, calculator, device)
    with connections[device.database].cursor() as cursor:
        cursor.execute("UPDATE shard_drains SET drained = now() - interval '1 hour' WHERE shard = %s AND seq = 1",
                       [device.shard])
    assert message_storage.drains_prune(alias=device.database, older_than=900) == 1

    a = hand_to(hosts, "host-a")
    assert a.held[device.shard].cache.is_cached(device_id=device.pk)  # read again, not dropped
    assert cached_stamps(a, device) == stored_stamps(device)
    ingest(device, trip(T0 + 300, 5))
    run(a, calculator, device)
    assert_from_scratch(calculator, device)


def test_a_cache_that_cannot_say_what_it_holds_is_not_trusted(hosts, assigned, tmp_path):
    calculator, device = assigned
    a = hand_to(hosts, "host-a")
    ingest(device, trip(T0, 30))
    run(a, calculator, device)
    b = hand_to(hosts, "host-b")
    ingest(device, trip(T0 + 100, 30))
    run(b, calculator, device)
    hosts["host-b"].leave()

    # The file's positions are gone (a file of an older format, edited, or restored from a copy).
    path = hosts["host-a"].data_dir / f"shard-{device.shard}.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE key LIKE 'drained:%'")
    a = hand_to(hosts, "host-a")
    assert not a.held[device.shard].cache.is_cached(device_id=device.pk)
    ingest(device, trip(T0 + 200, 5))
    run(a, calculator, device)  # refilled whole before the run
    assert cached_stamps(a, device) == stored_stamps(device)
    assert_from_scratch(calculator, device)


def _database(alias: str) -> list[str]:
    db = settings.DATABASES[alias]
    return ["-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432), "-U", db["USER"] or "postgres",
            "-d", db["NAME"]]


def test_a_cache_ahead_of_a_restored_database_is_refilled(hosts, assigned, tmp_path):
    """A datacenter database restored from a backup (pg_dump, then pg_restore) goes back to an
    earlier point: what was drained after the backup is gone from it, and the drains numbered
    after the restore are other drains under the same numbers. A cache that saw the lost drains
    must not keep their messages: it is refilled (docs/operations.md, "Backup and restore")."""
    import subprocess

    calculator, device = assigned
    alias = device.database
    a = hand_to(hosts, "host-a")
    ingest(device, trip(T0, 30))
    run(a, calculator, device)
    backup = tmp_path / "dc.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(backup), *_database(alias)], check=True)

    ingest(device, trip(T0 + 100, 30))  # after the backup: lost by the restore
    run(a, calculator, device)
    a.leave()
    connections.close_all()
    # the restore of docs/operations.md: the database dropped, created again, the backup loaded
    name = settings.DATABASES[alias]["NAME"]
    server = [arg if arg != name else "postgres" for arg in _database(alias)]
    subprocess.run(["psql", "-q", *server, "-c", f'DROP DATABASE "{name}" WITH (FORCE)', "-c", f'CREATE DATABASE "{name}"'],
                   check=True)
    subprocess.run(["pg_restore", "--exit-on-error", *_database(alias), str(backup)], check=True)
    assert stored_stamps(device) == [T0 + i for i in range(30)]

    # The platform goes on on the restored database: another worker drains new data twice, so
    # that the shard's drains pass host-a's number with drains host-a never saw.
    b = hand_to(hosts, "host-b")
    for k in range(2):
        ingest(device, trip(T0 + 200 + 40 * k, 20))
        run(b, calculator, device)
    assert message_storage.drains_head(alias=alias, shard=device.shard).seq == 3

    a = hand_to(hosts, "host-a")
    assert not a.held[device.shard].cache.is_cached(device_id=device.pk)  # its drain 2 is not the database's
    ingest(device, trip(T0 + 400, 5))
    run(a, calculator, device)
    assert cached_stamps(a, device) == stored_stamps(device)
    assert all(not T0 + 100 <= stamp < T0 + 130 for stamp in cached_stamps(a, device))
    assert_from_scratch(calculator, device)


def test_every_drain_is_numbered_and_followed_by_the_holders_cache(hosts, assigned):
    calculator, device = assigned
    a = hand_to(hosts, "host-a")
    for k in range(3):
        ingest(device, trip(T0 + 40 * k, 10))
        run(a, calculator, device)
    drains = message_storage.drains_since(alias=device.database, shard=device.shard, after=0)
    assert [item.drain.seq for item in drains] == [1, 2, 3]
    assert all(item.ranges == [(device.pk, round((T0 + 40 * k) * 1e6), round((T0 + 40 * k + 9) * 1e6))]
               for k, item in enumerate(drains))
    # each drain keeps the time of the one before it
    assert [item.prev for item in drains] == [None, drains[0].drain.stamp, drains[1].drain.stamp]
    assert a.held[device.shard].cache.positions()[device.database] == tuple(drains[-1].drain)


def test_a_shard_taken_over_is_filled_a_slice_at_a_time(hosts, make_account, settings):
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create

    b = hand_to(hosts, "host-b")
    settings.CALC_SHARDS = 4  # new devices on shards 0-3 (of the worker's): three on one soon
    account = make_account("filling")
    calculator = calculator_create(account=account, config={**TRIPS, "update_delay": 0})
    shard = None
    devices = []
    for n in range(40):  # three devices of one shard, with an assignment each, and messages
        device = device_create(account=account, configuration={"ident": f"filling-{n}"})
        if shard is None:
            shard = device.shard
        if device.shard == shard:
            assignment_create(calculator=calculator, device=device)
            ingest(device, trip(T0 + 10 * len(devices), 50))
            devices.append(device)
        if len(devices) == 3:
            break
    assert len(devices) == 3

    assert b.shard_fill(shard, budget=0.0) == 2  # one device per slice at least
    assert b.filling()[shard].devices == 1
    assert b.shard_fill(shard, budget=60.0) == 0
    assert b.filling() == {}
    for device in devices:
        assert cached_stamps(b, device) == stored_stamps(device)
    assert b.shard_fill(shard) == 0  # nothing left to fill


def test_a_shard_whose_cache_cannot_catch_up_is_released_and_taken_again(hosts, monkeypatch):
    """A database away while a shard's cache catches up: that shard is released (the others are
    taken and handed on as gained), and the next balance takes it again."""
    from analytics.fleet import worker as worker_module

    real = worker_module.cache_catch_up
    failing = {5}

    def flaky(*, aliases, held, heads=None):
        if held.shard in failing:
            failing.discard(held.shard)
            raise ConnectionError("the datacenter database is away")
        return real(aliases=aliases, held=held, heads=heads)

    monkeypatch.setattr(worker_module, "cache_catch_up", flaky)
    a = hosts["host-a"]
    gained, _lost = a.rebalance()
    assert 5 not in gained and 5 not in a.held and len(gained) == settings.CALC_SHARDS - 1
    gained, _lost = a.rebalance()
    assert gained == [5] and len(a.held) == settings.CALC_SHARDS
