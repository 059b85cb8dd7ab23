"""The fleet status reads (``analytics.fleet.status``): shard leases, queues and timers from a real
Redis, assignments by state and the outbox backlog from the datacenter databases, and what is
reported when a region's Redis cannot be reached."""

from __future__ import annotations

import json

import pytest
import redis
from django.db import connections

from analytics.choices import AssignmentState
from analytics.fleet import status
from analytics.fleet.debounce import Change, DebounceTimers
from analytics.fleet.leases import ShardLeases
from analytics.models import Assignment
from flespi_site.celery import celery_app
from flespi_site.fleet import queue_keys, worker_queue, worker_reports_key
from tests.support.net import free_port
from tests.support.outbox import queued_events

pytestmark = pytest.mark.django_db(databases="__all__")


def test_the_queue_keys_are_the_lists_kombu_writes():
    client = status.status_client("eu")
    keys = queue_keys("eu", "calc-probe")
    before = sum(client.llen(key) for key in keys)
    app = celery_app("eu")
    try:
        app.send_task("analytics.status_probe", args=[1], queue=worker_queue("eu", "calc-probe"))
        app.send_task("analytics.status_probe", args=[2], queue=worker_queue("eu", "calc-probe"), priority=5)
        assert sum(client.llen(key) for key in keys) == before + 2
        assert [client.llen(key) > 0 for key in keys][:2] == [True, True]  # priority 0 and the step of 5
    finally:
        for key in keys:
            client.delete(key)


def test_a_region_status_reads_leases_queues_and_timers(region_client):
    client, code = region_client
    worker = ShardLeases(client, region=code, shards=4, worker="calc-a", ttl=30)
    epochs = {shard: worker.acquire(shard) for shard in (0, 1)}
    timers = DebounceTimers(client, region=code)
    now = timers.now()
    timers.schedule(shard=1, changes=[Change(7, 9, 100.0, 200.0, 0.0)], now=now - 12.0)
    client.rpush(queue_keys(code, "calc-a")[0], "a", "b", "c")

    got = status.region_status(code=code, datacenters=[], shards=4, client=client)

    assert got.problem is None
    assert got.workers == {}  # acquire takes leases without a heartbeat
    assert [(s.shard, s.worker, s.epoch) for s in got.shards] == [
        (0, "calc-a", epochs[0]),
        (1, "calc-a", epochs[1]),
        (2, None, None),
        (3, None, None),
    ]
    for shard in got.shards[:2]:
        assert 25 < shard.ttl_left <= 30
        assert shard.held_for is not None and 0 <= shard.held_for < 5  # epochs are Redis's clock
    assert got.queues == {"calc-a": 3}
    [row] = got.worker_rows
    assert (row.name, row.heartbeat_left, row.queue, row.shards) == ("calc-a", None, 3, [0, 1])

    # What a worker reports of itself at each balance: its fills in progress among the rest.
    client.hset(worker_reports_key(code), "calc-a", json.dumps({"host": "h1", "pid": 7, "filling": {"1": [2, 5, 900]}}))
    client.hset(worker_reports_key(code), "calc-gone", json.dumps({"host": "h2"}))  # no lease, no heartbeat
    [row] = status.region_status(code=code, datacenters=[], shards=4, client=client).worker_rows
    assert (row.report["host"], row.filling) == ("h1", "1: 2/5")
    assert [(s.pending, s.timers) for s in got.shards] == [(0, 0), (1, 1), (0, 0), (0, 0)]
    assert got.shards[1].oldest_due == pytest.approx(now - 12.0, abs=0.01)
    assert got.shards[1].lag == pytest.approx(12.0, abs=1.0)
    assert got.queued == 3 and got.max_lag == got.shards[1].lag

    worker.balance()  # a heartbeat
    assert list(status.region_status(code=code, datacenters=[], shards=4, client=client).workers) == [
        "calc-a"
    ]


def test_a_region_whose_redis_is_away_is_reported_not_raised():
    away = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    datacenters = [status.datacenter_status(code="eu-1", alias="dc_eu_1")]
    got = status.region_status(code="eu", datacenters=datacenters, client=away)
    assert got.problem and "Connection refused" in got.problem
    assert got.shards == [] and got.datacenters == datacenters


def test_a_datacenter_status_counts_assignments_by_state_and_the_outbox(assignment, device):
    from devices.services import messages_ingest

    alias = assignment.database
    before = status.datacenter_status(code="eu-1", alias=alias)
    assert before.problem is None
    assert before.states == {"unsynced": 1, "synchronizing": 0, "synced": 0}
    Assignment.objects.using(alias).filter(pk=assignment.pk).update(state=AssignmentState.SYNCHRONIZING)
    messages_ingest(devices=[device], messages=[{"timestamp": 1000.0 + i, "n": i} for i in range(3)])
    after = status.datacenter_status(code="eu-1", alias=alias)
    assert after.states == {"unsynced": 0, "synchronizing": 1, "synced": 0}
    telemetry_topics = sum(topic.startswith(f"state/gw/devices/{device.pk}/") for topic, _p, _r in queued_events(alias))
    assert telemetry_topics > 0
    assert after.outbox_events == before.outbox_events + 3 + telemetry_topics
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox")
        assert after.outbox_rows == cursor.fetchone()[0] > 0


def test_the_fleet_status_covers_every_served_region_and_datacenter(platform):
    got = status.fleet_status()
    assert [(r.code, [d.code for d in r.datacenters]) for r in got] == [
        ("eu", ["eu-1", "eu-2"]),
        ("ru", ["ru-1"]),
    ]
    assert all(r.problem is None and len(r.shards) > 0 for r in got)
