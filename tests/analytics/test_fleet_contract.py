"""The recalculation contract (DESIGN 7.6) through the whole service, with faults caused for real.

Random batches of messages (in order, late, duplicated, deleted) go to a device through the same
write path as the API, while real calc worker, pump and relay processes run. Once the fleet has
settled, the stored intervals of every assignment equal a from-scratch calculation over the
device's messages, and replaying the MQTT interval events from the first one gives the same set.

The faults: a calc worker killed with SIGKILL at random moments of its work (and another one
started), Redis flushed (FLUSHALL: timers, leases and queued tasks gone), the shard cache file
deleted, a paused worker whose lease expired resuming (its write is refused by the fence).
`make test` runs a few rounds of each; FLESPI_SLOW=1 runs 100 kill rounds.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import redis
from django.conf import settings

from analytics.engine import calculate
from tests.support.fleet import Fleet
from tests.support.mqtt import CLEARED, PrivateBroker, Subscriber
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SLOW = bool(os.environ.get("FLESPI_SLOW"))
KILL_ROUNDS = 100 if SLOW else 3

TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 10", "max_inactive": 30, "min_duration": 5}],
    "counters": [
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "max_speed", "type": "parameter", "parameter": "position.speed", "method": "maximum"},
        {"name": "n", "type": "expression", "expression": "1", "method": "summary"},
        {"name": "route", "type": "route"},
    ],
    "update_delay": 0,
}
HOURS = {
    "name": "hours",
    "selectors": [{"type": "datetime", "split": "hour"}],
    "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}],
    "update_delay": 1,
}


def _message(rng: random.Random, t: float) -> dict:
    moving = rng.random() < 0.6
    return {
        "timestamp": round(t, 3),
        "position.speed": rng.uniform(20, 90) if moving else rng.uniform(0, 5),
        "position.latitude": 56.9 + rng.random() / 100,
        "position.longitude": 24.1 + rng.random() / 100,
    }


class Scenario:
    """A device with two assignments, and the MQTT interval events of the test from the first."""

    def __init__(self, fleet: Fleet, make_account, *, seed: int, mqtt_url: str | None = None):
        from analytics.services import assignment_create, calculator_create
        from devices.services import device_create

        self.fleet = fleet
        self.rng = random.Random(seed)
        self.account = make_account(f"contract{seed}")
        self.device = device_create(account=self.account, configuration={"ident": f"contract-{seed}"})
        self.calculators = [calculator_create(account=self.account, config=c) for c in (TRIPS, HOURS)]
        # A persistent session: what the broker queued for it while it was away is delivered.
        self.subscriber = Subscriber(mqtt_url or settings.MQTT_URL, f"{fleet.topic_root}/interval/#",
                                     client_id=f"contract-{seed}-{fleet.topic_root}", clean_session=False)
        self.subscriber.__enter__()
        self.assignments = [assignment_create(calculator=c, device=self.device)[0] for c in self.calculators]
        self.origin = time.time() - 2 * 3600

    def close(self) -> None:
        self.subscriber.__exit__(None, None, None)

    def batch(self, *, size: int | None = None) -> None:
        """Post a random batch: mostly new messages, some late ones, some resent, sometimes a
        deletion of a range."""
        from devices.services import messages_delete, messages_ingest

        rng = self.rng
        size = size or rng.randint(1, 40)
        span = time.time() - self.origin - 1
        kind = rng.random()
        if kind < 0.1:
            begin = self.origin + rng.uniform(0, span)
            end = begin + rng.uniform(1, 120)
            self._written(lambda: messages_delete(devices=[self.device], begin=begin, end=end))
            return
        stamps = sorted(self.origin + rng.uniform(0, span) for _ in range(size))
        batch = [_message(rng, t) for t in stamps]
        if kind < 0.2:
            batch = batch + batch[: rng.randint(1, len(batch))]  # duplicates in the batch
        self._written(lambda: messages_ingest(devices=[self.device], messages=batch))

    def _written(self, write) -> None:
        """Write as a client does during a live move: sent again where the device now lives."""
        from accounts.placement_guard import AccountMoving
        from devices.selectors import device_by_id

        for _ in range(50):
            try:
                write()
                return
            except AccountMoving:
                time.sleep(0.1)
                moved = device_by_id(self.device.pk)
                if moved is not None:
                    self.device = moved
        raise AssertionError("the write kept meeting a move")

    def expected(self, calculator) -> list[dict]:
        from devices.selectors import messages_of

        messages = messages_of(devices=[self.device], begin=None, end=None, count=None, reverse=False)
        return _engine_fields(calculate(messages, calculator.configuration()), calculator)

    def stored(self, assignment, calculator) -> list[dict]:
        from analytics.selectors import intervals_of

        return _engine_fields(intervals_of(assignments=[assignment]), calculator)

    def replayed(self, calculator) -> list[dict]:
        """The intervals that replaying every interval event of the calculator gives."""
        prefix = f"{self.fleet.topic_root}/interval/gw/calcs/{calculator.pk}/devices/{self.device.pk}/"
        state: dict[int, dict] = {}
        for topic, payload in list(self.subscriber.messages):
            if not topic.startswith(prefix) or payload is CLEARED:
                continue
            kind = topic[len(prefix):]
            if kind in ("created", "updated"):
                state[payload["id"]] = payload
            elif kind == "deleted":
                state.pop(payload["id"], None)
        return _engine_fields(sorted(state.values(), key=lambda iv: iv["id"]), calculator)

    def settled(self) -> bool:
        for assignment, calculator in zip(self.assignments, self.calculators, strict=True):
            expected = self.expected(calculator)
            if self.stored(assignment, calculator) != expected or self.replayed(calculator) != expected:
                return False
        return True

    def wait_settled(self, timeout: float = 90.0) -> None:
        try:
            wait_until(self.settled, timeout=timeout, every=0.5, what="the fleet settling")
        except AssertionError:
            from analytics.models import Assignment

            for alias in ("dc_eu_1", "dc_eu_2"):
                print(alias, list(Assignment.objects.using(alias).values_list(
                    "pk", "account_id", "calculator_id", "device_id", "state", "pending_begin", "enabled", "shard")))
            print("device", self.device.pk, self.device.database, self.device.shard, "account", self.account.pk,
                  self.account.datacenter_id)
            for assignment, calculator in zip(self.assignments, self.calculators, strict=True):
                print("calculator", calculator.name)
                print(" expected", self.expected(calculator))
                print(" stored  ", self.stored(assignment, calculator))
                print(" replayed", self.replayed(calculator))
            for name in list(self.fleet.processes):
                text = self.fleet.output(name).text
                dump = os.path.join(self.fleet.data_dir, f"{name}.log")
                os.makedirs(self.fleet.data_dir, exist_ok=True)
                with open(dump, "w") as handle:
                    handle.write(text)
                print(f"--- {name} (whole log in {dump})\n{text[-4000:]}")
            raise


def _engine_fields(intervals, calculator) -> list[dict]:
    keys = ("id", "begin", "end", "duration", *(c["name"] for c in calculator.counters))
    return [{k: _rounded(iv.get(k)) for k in keys} for iv in intervals]


def _rounded(value):
    return round(value, 6) if isinstance(value, float) else value


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all()
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
    path = os.path.join(fleet.data_dir, "calc", "eu", f"shard-{shard}.sqlite")
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
