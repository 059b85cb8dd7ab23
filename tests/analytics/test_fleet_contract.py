"""The recalculation contract (DESIGN 7.6) through the whole service, with faults caused for real.

Random batches of messages (in order, late, duplicated, deleted) go to a device through the same
write path as the API, while real calc worker, pump and relay processes run. Once the fleet has
settled, the stored intervals of every assignment equal a from-scratch calculation over the
device's messages, and replaying the MQTT interval events from the first one gives the same set.

The fleet runs two calc workers, each with a data directory of its own as separate hosts have. The
faults: a calc worker killed with SIGKILL at random moments of its work (and started again under
its name, taking its shards back), Redis flushed (FLUSHALL: timers, leases and queued tasks gone), the shard cache file
deleted, a paused worker whose lease expired resuming (its write is refused by the fence).
`make test` runs a few rounds of each; FLESPI_SLOW=1 runs 100 kill rounds.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from django.conf import settings

from tests.support.contract import Scenario
from tests.support.fleet import Fleet
from tests.support.mqtt import PrivateBroker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SLOW = bool(os.environ.get("FLESPI_SLOW"))
KILL_ROUNDS = 100 if SLOW else 3

@pytest.fixture
def fleet(tmp_path, platform):
    """Two calc workers, each a host of its own ("worker" is the one the faults hit)."""
    running = Fleet(tmp_path).start_all(("worker", "worker2"))
    yield running
    running.stop()


@pytest.fixture
def scenario(fleet, make_account):
    running = Scenario(fleet, make_account, seed=7)
    yield running
    running.close()


def test_random_batches_settle_to_the_from_scratch_result(scenario):
    for _ in range(25):
        scenario.batch()
        time.sleep(scenario.rng.uniform(0, 0.1))
    scenario.wait_settled()


def test_an_idle_workers_cache_file_holds_what_it_computed_from(scenario, fleet):
    """The worker's caches hold writes back (write-behind) and flush them between tasks: once the
    fleet is idle, the file itself (read by another connection, as after a restart) holds every
    message of the device and the stored run of each assignment."""
    from analytics.fleet.cache import ShardCache
    from devices.selectors import messages_of

    for _ in range(5):
        scenario.batch()
    scenario.wait_settled()
    shard = scenario.device.shard
    path = fleet.cache_path(fleet.wait_placed({"worker", "worker2"})[shard], shard)
    stored = messages_of(devices=[scenario.device], begin=None, end=None, count=None, reverse=False)

    def flushed() -> bool:
        with ShardCache(path, shard=f"eu/{shard}") as reader:
            held = reader.messages_read(device_id=scenario.device.pk).to_dicts()
            markers = [reader.assignment_marker(calc_id=assignment.calculator_id, device_id=assignment.device_id)
                       for assignment in scenario.assignments]
        calculated = [type(assignment).objects.using(assignment.database).get(pk=assignment.pk).calculated
                      for assignment in scenario.assignments]
        return [message["timestamp"] for message in held] == [message["timestamp"] for message in stored] \
            and markers == calculated

    wait_until(flushed, timeout=30, what="the cache file flushed")


def test_a_worker_killed_mid_run_loses_nothing(scenario, fleet):
    for round_ in range(KILL_ROUNDS):
        for _ in range(3):
            scenario.batch(size=scenario.rng.randint(50, 400))
        time.sleep(scenario.rng.uniform(0, 0.5))
        fleet.kill("worker")
        for _ in range(2):
            scenario.batch()
        fleet.start_worker()
        if not SLOW or round_ % 10 == 9:
            scenario.wait_settled(timeout=120)
    scenario.wait_settled(timeout=120)


def test_redis_flushed_and_cache_deleted(scenario, fleet):
    for _ in range(5):
        scenario.batch()
    scenario.wait_settled()
    # Redis loses everything: timers, leases, queued tasks, wake-up flags.
    client = redis.Redis.from_url(settings.TOPOLOGY.region("eu").redis_url)
    for _ in range(5):
        scenario.batch(size=50)
    client.flushall()
    for _ in range(5):
        scenario.batch(size=20)
    scenario.wait_settled(timeout=120)
    # The cache file of the device's shard goes while the worker runs.
    shard = scenario.device.shard
    path = fleet.cache_path(fleet.wait_placed({"worker", "worker2"})[shard], shard)
    assert os.path.exists(path)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    for _ in range(5):
        scenario.batch(size=30)
    scenario.wait_settled(timeout=120)
    # The worker noticed and refilled a new file from PostgreSQL.
    wait_until(lambda: os.path.exists(path), what="the cache file rebuilt")


def test_a_paused_worker_whose_lease_expired_cannot_write(scenario, fleet):
    """SIGSTOP the worker past its lease; a second worker takes the shards and a higher epoch;
    the first, resumed, has its write refused by the fence and gives the shards up."""
    scenario.batch(size=20)
    scenario.wait_settled()
    process, _output = fleet.processes["worker"]
    os.kill(process.pid, signal.SIGSTOP)
    try:
        fleet.start_worker("second")
        fleet.wait_for("second", "holds shards", timeout=60)
        for _ in range(5):
            scenario.batch(size=30)
        scenario.wait_settled(timeout=120)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    # Resumed, it finds its leases gone: it stops consuming, and anything it had in hand was
    # refused by the fence (the stored intervals are still the from-scratch ones).
    fleet.wait_for("worker", "lost the lease", timeout=30)
    for _ in range(5):
        scenario.batch(size=30)
    scenario.wait_settled(timeout=120)


@pytest.mark.skipif(not PrivateBroker.available(), reason="needs the mosquitto binary for a broker of the test's own")
def test_the_broker_down_for_a_while_delays_events_and_loses_none(tmp_path, platform, make_account):
    broker = PrivateBroker()
    broker.start()
    running = Fleet(tmp_path, mqtt_url=broker.url).start_all()
    scenario = Scenario(running, make_account, seed=11, mqtt_url=broker.url)
    try:
        for _ in range(5):
            scenario.batch()
        scenario.wait_settled()
        broker.stop()
        for _ in range(10):
            scenario.batch()
            time.sleep(0.3 if SLOW else 0.1)
        time.sleep(30 if SLOW else 2)
        broker.start()
        scenario.wait_settled(timeout=120)
    finally:
        scenario.close()
        running.stop()
        broker.cleanup()


def test_a_live_move_keeps_the_intervals_and_their_events_going(scenario, fleet):
    """The account moves to another datacenter of its region while messages arrive: the fleet
    goes on from the target (ids unchanged, cache still valid), and the stored intervals and the
    replayed events end equal to a from-scratch calculation there."""
    import subprocess
    import sys

    from accounts.placement import forget_all
    from analytics.models import Assignment
    from devices.models import Device

    for _ in range(5):
        scenario.batch(size=40)
    scenario.wait_settled()
    source = scenario.device.database
    target = "eu-2" if source == "dc_eu_1" else "eu-1"
    mover = subprocess.Popen([sys.executable, "manage.py", "account_move", "--account", str(scenario.account.pk),
                              "--to", target], env=fleet_env(fleet), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while mover.poll() is None:
        scenario.batch(size=20)
        time.sleep(0.1)
    assert mover.returncode == 0, mover.stdout.read().decode()[-3000:]
    forget_all()
    target_alias = f"dc_{target.replace('-', '_')}"
    assert not Assignment.objects.using(source).filter(pk__in=[a.pk for a in scenario.assignments]).exists()
    scenario.device = Device.objects.using(target_alias).get(pk=scenario.device.pk)
    scenario.assignments = [Assignment.objects.using(target_alias).get(pk=a.pk) for a in scenario.assignments]
    for _ in range(5):
        scenario.batch(size=20)
    scenario.wait_settled(timeout=120)


def fleet_env(fleet: Fleet) -> dict:
    from tests.support.processes import platform_env

    return platform_env(**fleet.env)
