"""How a calc worker batches its work over the shards it holds, in this process against the test
databases and the Redis of REDIS_URL: wake-ups addressed to the shards' holder, one change-log
drain for every dirty shard, debounce delays counted from the change's commit, one fenced
transaction for a batch over several shards, the busy mark that makes the pump wait and the
worker send itself its next batch. The fleet tests (test_fleet*.py) run the same code in real
processes."""

from __future__ import annotations

import base64
import json
import time

import pytest
from django.conf import settings
from django.db import connections

from analytics.fleet import status
from analytics.fleet.debounce import Change
from analytics.fleet.pump import Pump
from analytics.fleet.worker import ShardWorker
from flespi_site.celery import redis_client, shards_wake
from flespi_site.fleet import FleetTask, batch_busy_key, dirty_key, lease_key, wake_key
from tests.support.calculators import TRIPS
from tests.support.fleet import forget_region_state

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

WORKER = "test-batches-1"
T0 = float(int(time.time()) - 600)  # within the calculators' update_period


@pytest.fixture
def worker(tmp_path, platform):
    forget_region_state("eu")
    _clear("eu")
    held = ShardWorker(region="eu", worker_id=WORKER, data_dir=tmp_path, lease_ttl=60)
    held.rebalance()  # the only live worker: it takes every shard
    assert len(held.held) == settings.CALC_SHARDS
    yield held
    held.leave()
    _clear("eu")
    forget_region_state("eu")


def _clear(region: str) -> None:
    """Empty the worker's queue and the region's change logs and outboxes (raw tables, which the
    flush after other tests' transactional databases leaves as they were)."""
    for datacenter in settings.TOPOLOGY.region(region).datacenters:
        with connections[datacenter.alias].cursor() as cursor:
            cursor.execute("DELETE FROM message_changes")
            cursor.execute("DELETE FROM outbox")  # nobody relays it here; a later relay test would
    client = redis_client(region)
    for key in status.queue_keys(region, WORKER):
        client.delete(key)


def queued(worker: str = WORKER) -> list[tuple[str, list]]:
    """(task name, args) of the messages waiting in a worker's queue, oldest first."""
    client = redis_client("eu")
    out = []
    for key in status.queue_keys("eu", worker):
        for raw in reversed(client.lrange(key, 0, -1)):  # kombu pushes on the left
            envelope = json.loads(raw)
            args = json.loads(base64.b64decode(envelope["body"]))[0]
            out.append((envelope["headers"]["task"], args))
    return out


def two_shards(make_account, *, count=2):
    """An account with devices on ``count`` different shards, each assigned to a trips calculator
    (update_delay 1 s)."""
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create

    account = make_account("batches")
    calculator = calculator_create(account=account, config={**TRIPS, "update_delay": 1})
    devices, shards = [], set()
    n = 0
    while len(devices) < count:
        n += 1
        device = device_create(account=account, configuration={"ident": f"batch-{n}"})
        if device.shard not in shards:
            shards.add(device.shard)
            devices.append(device)
            assignment_create(calculator=calculator, device=device)
        else:
            device.delete()
    return calculator, sorted(devices, key=lambda d: d.shard)


def ingest(devices, t):
    from devices.services import messages_ingest

    messages_ingest(devices=devices, messages=[{"timestamp": t, "position.speed": 40.0}])


def test_a_request_touching_several_shards_wakes_their_worker_once(worker, make_account):
    _calculator, (a, b) = two_shards(make_account)
    _clear("eu")
    ingest([a, b], T0)
    ingest([a, b], T0 + 1.0)  # its wake-up would be the same: the first still waits

    client = redis_client("eu")
    assert queued() == [(FleetTask.SHARD_CHANGES, ["eu", a.shard, WORKER])]  # one message, to the holder's queue
    assert {int(m) for m in client.smembers(dirty_key("eu", WORKER))} == {a.shard, b.shard}

    # The one message drains both shards' rows; the dirty set and the wake-up flag are cleared.
    assert worker.changes_drain() == 4
    assert not client.exists(dirty_key("eu", WORKER), wake_key("eu", WORKER))
    with connections[a.database].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM message_changes WHERE device_id = ANY(%s)", [[a.pk, b.pk]])
        assert cursor.fetchone()[0] == 0
    for device in (a, b):
        [entry] = worker.timers.entries(shard=device.shard)
        assert entry.device_id == device.pk and entry.state == "pending"
    # A wake-up that comes after the drain took its rows costs a Redis round trip and nothing else.
    assert worker.changes_drain() == 0

    # A shard nobody holds gets nothing (its next holder drains it when it takes it); force
    # (reconciliation) sends despite the waiting flag.
    client.delete(lease_key("eu", b.shard))
    _clear("eu")
    shards_wake(region="eu", shards=[a.shard, b.shard])
    assert queued() == [(FleetTask.SHARD_CHANGES, ["eu", a.shard, WORKER])]
    assert {int(m) for m in client.smembers(dirty_key("eu", WORKER))} == {a.shard}
    shards_wake(region="eu", shards=[a.shard, b.shard])  # one still waits: nothing more
    assert len(queued()) == 1
    shards_wake(region="eu", shards=[a.shard], force=True)
    assert len(queued()) == 2


def test_the_debounce_delay_counts_from_the_changes_commit(worker, make_account):
    """A change that waited in the log is due that much sooner (and at once when it waited past
    update_delay), so that a busy worker's lag does not lengthen the debounce."""
    _calculator, (fresh, waited) = two_shards(make_account)
    ingest([fresh, waited], T0)
    with connections[waited.database].cursor() as cursor:
        cursor.execute("UPDATE message_changes SET created = created - interval '0.7 s' WHERE device_id = %s",
                       [waited.pk])
    now = worker.timers.now()
    worker.changes_drain(fresh.shard)
    [entry_fresh] = worker.timers.entries(shard=fresh.shard)
    [entry_waited] = worker.timers.entries(shard=waited.shard)
    assert now + 0.8 <= entry_fresh.due <= worker.timers.now() + 1.0
    assert now + 0.1 <= entry_waited.due <= worker.timers.now() + 0.35

    ingest([waited], T0 + 1.0)
    with connections[waited.database].cursor() as cursor:
        cursor.execute("UPDATE message_changes SET created = created - interval '5 s'")
    worker.changes_drain(waited.shard)
    [entry] = worker.timers.entries(shard=waited.shard)
    assert entry.due <= entry_waited.due  # armed already: never later


def test_a_batch_over_several_shards_is_one_fenced_transaction(worker, make_account):
    from analytics.models import Assignment
    from analytics.storage import intervals_read

    calculator, (a, b) = two_shards(make_account)
    ingest([a, b], T0)
    ingest([a, b], T0 + 10.0)
    worker.changes_drain(a.shard)
    stats = worker.batch_run({a.shard: [(calculator.pk, a.pk)], b.shard: [(calculator.pk, b.pk)]})
    assert (stats.assignments, stats.created, stats.fenced) == (2, 2, False)
    for device in (a, b):
        [trip] = intervals_read(alias=device.database, pairs=[(calculator.pk, device.pk)])
        assert (trip["begin"], trip["end"]) == (T0, T0 + 10.0)
        assert Assignment.objects.using(device.database).get(calculator=calculator, device=device).synced

    # One shard's fence moves on (another worker took it): the whole batch is refused and both
    # claims go back, to be run again.
    ingest([a, b], T0 + 20.0)
    worker.changes_drain(a.shard)
    with connections[b.database].cursor() as cursor:
        cursor.execute("UPDATE shard_fence SET epoch = epoch + 1 WHERE shard = %s", [b.shard])
    stats = worker.batch_run({a.shard: [(calculator.pk, a.pk)], b.shard: [(calculator.pk, b.pk)]})
    assert stats.fenced and stats.assignments == 0
    [trip] = intervals_read(alias=a.database, pairs=[(calculator.pk, a.pk)])
    assert trip["end"] == T0 + 10.0  # nothing of the refused batch was written
    for device in (a, b):
        [entry] = worker.timers.entries(shard=device.shard)
        assert entry.state == "pending" and entry.end == T0 + 20.0


def test_the_pump_waits_for_a_busy_worker_which_sends_itself_what_fell_due(worker, make_account):
    calculator, (a, b, c) = two_shards(make_account, count=3)
    ingest([a, b, c], T0)
    worker.changes_drain(a.shard)
    _clear("eu")
    client = redis_client("eu")
    pump = Pump(region="eu")
    for device in (a, b):  # due now
        worker.timers.schedule(shard=device.shard, changes=[Change(calculator.pk, device.pk, 1.7e9, 1.7e9, 0.0)])

    # One message for the worker's two due assignments, in its queue, and the
    # worker marked busy.
    assert pump.pump_once() == 2
    assert queued() == [(FleetTask.SHARD_RUN, ["eu", a.shard, [[calculator.pk, a.pk, a.shard],
                                                                       [calculator.pk, b.pk, b.shard]]])]
    assert client.exists(batch_busy_key("eu", WORKER))
    worker.timers.schedule(shard=c.shard, changes=[Change(calculator.pk, c.pk, 1.7e9, 1.7e9, 0.0)])
    assert pump.pump_once() == 0  # busy: what falls due waits for the worker

    # The worker runs the batch, then sends itself what fell due meanwhile and stays busy.
    _clear("eu")
    stats = worker.batch_run({a.shard: [(calculator.pk, a.pk)], b.shard: [(calculator.pk, b.pk)]})
    assert stats.assignments == 2
    assert queued() == [(FleetTask.SHARD_RUN, ["eu", c.shard, [[calculator.pk, c.pk, c.shard]]])]
    assert client.exists(batch_busy_key("eu", WORKER))
    stats = worker.batch_run({c.shard: [(calculator.pk, c.pk)]})
    assert stats.assignments == 1
    # Nothing left due: the worker is free, and the pump sends the next batch itself.
    assert not client.exists(batch_busy_key("eu", WORKER))
    worker.timers.schedule(shard=a.shard, changes=[Change(calculator.pk, a.pk, 1.7e9, 1.7e9, 0.0)])
    assert pump.pump_once() == 1


def test_a_message_for_a_shard_that_moved_is_passed_on_to_its_holder(worker):
    """A task for shards this worker no longer holds goes to their holders' queues (a batch split
    by holder); what nobody holds is dropped (its next holder takes everything over)."""
    from analytics.fleet.tasks import _passed_on
    from flespi_site.fleet import Due, ShardPurge, ShardRun

    client = redis_client("eu")
    client.set(lease_key("eu", 3), "host-x 17")
    client.set(lease_key("eu", 4), "host-y 18")
    client.delete(lease_key("eu", 5))
    for name in ("host-x", "host-y"):
        for key in status.queue_keys("eu", name):
            client.delete(key)
    try:
        batch = ShardRun(region="eu", shard=3, due=(Due(1, 10, 3), Due(1, 11, 4), Due(1, 12, 5), Due(1, 13, 3)))
        _passed_on(worker, batch)
        assert queued("host-x") == [(FleetTask.SHARD_RUN, ["eu", 3, [[1, 10, 3], [1, 13, 3]]])]
        assert queued("host-y") == [(FleetTask.SHARD_RUN, ["eu", 4, [[1, 11, 4]]])]
        _passed_on(worker, ShardPurge(region="eu", shard=4))
        _passed_on(worker, ShardPurge(region="eu", shard=5))  # nobody holds it: dropped
        assert queued("host-y")[-1] == (FleetTask.SHARD_PURGE, ["eu", 4])
        assert len(queued("host-x")) == 1 and queued() == []
    finally:
        for name in ("host-x", "host-y"):
            for key in status.queue_keys("eu", name):
                client.delete(key)


def test_a_purge_sends_its_shard_tasks_spread_over_time_not_at_once(worker):
    """Hundreds of shard purges queued together would hold up the runs behind them for seconds:
    the pump sends them one after the other over ``purge_spread``, in shard order, each once."""
    _clear("eu")
    pump = Pump(region="eu", purge_spread=100.0)
    started = time.monotonic()
    pump.purge()
    first = [args[1] for name, args in queued() if name == FleetTask.SHARD_PURGE]
    assert first == [0]  # the first at once, the others later
    pump._purge_due(started + 50.0)
    half = [args[1] for name, args in queued() if name == FleetTask.SHARD_PURGE]
    assert half == list(range(len(half))) and 1 < len(half) < settings.CALC_SHARDS
    pump._purge_due(started + 100.0)
    every = [args[1] for name, args in queued() if name == FleetTask.SHARD_PURGE]
    assert every == list(range(settings.CALC_SHARDS))


def test_a_shard_purge_deletes_what_outlived_the_ttl_and_reads_nothing_for_the_rest(worker, make_account):
    """The worker's purge deletes the intervals that ended before ``intervals_ttl`` (with their
    ``deleted`` events, and from the cache); an assignment whose cache shows nothing to purge
    costs the datacenter no statement."""
    from django.test.utils import CaptureQueriesContext

    from analytics.models import Assignment
    from analytics.selectors import intervals_of
    from analytics.services import calculator_update

    calculator, (a, b) = two_shards(make_account)
    from devices.services import messages_ingest

    # two trips, a stop of 90 s between them: the first ends at T0 + 10
    moves = [(T0, 40.0), (T0 + 10.0, 40.0), (T0 + 100.0, 0.0), (T0 + 110.0, 40.0), (T0 + 120.0, 40.0)]
    messages_ingest(devices=[a, b], messages=[{"timestamp": t, "position.speed": speed} for t, speed in moves])
    worker.changes_drain(a.shard)
    worker.batch_run({a.shard: [(calculator.pk, a.pk)], b.shard: [(calculator.pk, b.pk)]})
    assignment = Assignment.objects.using(a.database).get(calculator=calculator, device=a)
    assert [trip["end"] for trip in intervals_of(assignments=[assignment])] == [T0 + 10.0, T0 + 120.0]
    _clear("eu")

    # a TTL the first trip outlived (now: T0 + 80, its end 70 s ago)
    calculator = calculator_update(calculator=calculator, data={"intervals_ttl": 60})
    assert worker.shard_purge(a.shard, now=T0 + 80.0) == 1
    assert [trip["end"] for trip in intervals_of(assignments=[assignment])] == [T0 + 120.0]
    cached = worker.held[a.shard].cache.intervals_read(calc_id=calculator.pk, device_id=a.pk)
    assert [trip["end"] for trip in cached] == [T0 + 120.0]
    with connections[a.database].cursor() as cursor:
        cursor.execute("SELECT topic FROM outbox WHERE device_id = %s", [a.pk])
        assert [row[0] for row in cursor.fetchall()] == [
            f"interval/gw/calcs/{calculator.pk}/devices/{a.pk}/deleted"]

    # nothing more to purge: the assignments' rows are read, no interval statement runs
    with CaptureQueriesContext(connections[a.database]) as regional:
        assert worker.shard_purge(a.shard, now=T0 + 80.0) == 0
    assert not [query for query in regional.captured_queries if "FROM intervals" in query["sql"]]
    assert len(regional.captured_queries) == 2  # the shard's assignments, its devices (their TTLs)
