"""The one runner of long-running loops: a real SIGTERM stops every loop, counts are logged
periodically and at the end, a command only builds its loops; and the runner owns every loop's
failures: a step that raises (a bug, a database or broker that went away) is logged with the
loop's name, counted, followed by a growing pause, and the loop goes on and recovers. A process
that runs loops keeps what it started with out of the garbage collector's walks."""

from __future__ import annotations

import gc
import io
import itertools
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from devices.ingest_mqtt import IngestConsumer
from devices.outbox import OutboxRelay
from devices.services import messages_ingest
from devices.storage import messages_read
from flespi_site import metrics
from flespi_site.constants import RELAY_LOCK
from flespi_site.maintenance import QueueVacuum
from flespi_site.mqtt import client as mqtt
from flespi_site.runner import Backoff, Loop, PeriodicLoop, run_loops, startup_frozen
from tests.support import waiting
from tests.support.fleet import Fleet
from tests.support.mqtt import Subscriber
from tests.support.processes import WebServer

QUICK = Backoff(first=0.02, most=0.1)


@pytest.fixture(autouse=True)
def collected_as_before():
    """``run_loops`` freezes what lives when it starts, as the processes it is made for do; the
    tests' process gets its generations back after each test."""
    yield
    gc.unfreeze()


def signal_soon(signum: int, after: float) -> threading.Timer:
    timer = threading.Timer(after, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


def wait_until(condition: Callable[[], object], timeout: float = 15.0, what: str = "the condition") -> None:
    waiting.wait_until(condition, timeout=timeout, every=0.02, what=what)


class Counting(Loop):
    def __init__(self, until: int | None = None, name: str = "counting"):
        super().__init__()
        self.counted, self.until, self.name = 0, until, name

    def step(self) -> float:
        self.counted += 1
        if self.until is not None and self.counted >= self.until:
            self.stop()
        return 0.01

    def counts(self) -> dict[str, int]:
        return {"counted": self.counted}


class Running:
    """A loop running in a thread of its own, as ``run_loops`` runs it; stopped on exit."""

    def __init__(self, loop: Loop):
        self.loop = loop
        self.thread = threading.Thread(target=loop.run, daemon=True)

    def __enter__(self) -> Loop:
        self.thread.start()
        return self.loop

    def __exit__(self, *exc: object) -> None:
        self.loop.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), f"{self.loop.name} did not stop"


def failures_logged(caplog, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage().startswith(f"{name}: a step failed")]


def loop_errors_metric(name: str) -> float:
    return metrics.LOOP_ERRORS.labels(name)._value.get()


# -- signals and counts ------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_loop_and_restores_the_handlers(signum, caplog):
    before = signal.getsignal(signum)
    periodic = PeriodicLoop(name="tick", every=0.05, step=lambda: 2, what="things")
    counting = Counting()
    signal_soon(signum, 0.5)
    with caplog.at_level(logging.INFO, logger="flespi_site.runner"):
        counts = run_loops([periodic, counting], name="test", log_every=0.2)
    assert periodic.stopping.is_set() and counting.stopping.is_set()
    assert counts["tick"]["steps"] >= 3 and counts["tick"]["things"] == 2 * counts["tick"]["steps"]
    assert counts["tick"]["errors"] == 0
    assert counts["counting"]["counted"] > 0
    assert signal.getsignal(signum) is before
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("test: stopping (signal") for line in logged)
    periodic_lines = [line for line in logged if line.startswith("test: tick: steps")]
    assert len(periodic_lines) >= 2  # at least once on the way, and once at the end
    assert periodic_lines[-1].endswith("errors 0 (stopped)")


def test_the_runner_returns_when_every_loop_ended_by_itself():
    counts = run_loops([Counting(until=5, name="five"), Counting(until=3, name="three")], name="test", log_every=60)
    assert counts == {"five": {"counted": 5, "errors": 0}, "three": {"counted": 3, "errors": 0}}


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_purge_command_runs_its_loops_until_sigterm(platform):
    out = io.StringIO()
    signal_soon(signal.SIGTERM, 1.0)
    call_command("purge_messages", "--every", "0.2", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines and all(" runs" in line and line.startswith("purge dc_") for line in lines), lines
    assert all(int(line.split(" in ")[1].split()[0]) >= 2 for line in lines), lines


class Cyclic:
    """An object in a reference cycle of its own: only the cyclic collector ever frees it."""

    def __init__(self):
        self.itself = self


def tracked(thing: object) -> bool:
    """Whether a collection of some generation would walk ``thing`` (frozen objects are in none)."""
    return any(other is thing for other in gc.get_objects())


def test_what_lives_at_the_start_is_kept_out_of_every_collection_and_what_comes_later_is_not(caplog):
    at_start = Cyclic()
    garbage_at_start = Cyclic()
    del garbage_at_start  # unreachable but not yet collected: the freeze's collection frees it
    with caplog.at_level(logging.INFO, logger="flespi_site.runner"):
        frozen = startup_frozen("test")
    assert frozen > 0
    assert not tracked(at_start)
    assert not any(isinstance(thing, Cyclic) for thing in gc.get_objects())
    later = Cyclic()
    assert tracked(later)
    assert f"test: {frozen} objects of its start kept out of the garbage collector's walks" in caplog.messages
    # a cycle made after the start is still collected
    reference = weakref.ref(later)
    del later
    gc.collect()
    assert reference() is None


def test_the_runner_freezes_what_lives_when_its_loops_start():
    before = Cyclic()
    run_loops([Counting(until=2)], name="test", log_every=60)
    assert gc.get_freeze_count() > 0 and not tracked(before)


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_fleets_processes_freeze_what_they_started_with(tmp_path, platform):
    fleet = Fleet(tmp_path).start_all()
    try:
        for name in ("worker", "pump", "relay"):
            fleet.output(name).wait_for("objects of its start kept out of the garbage collector's walks")
    finally:
        fleet.stop()


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_web_processes_freeze_what_they_started_with():
    server = WebServer()
    try:
        text = server.output.wait_for("objects of its start kept out of the garbage collector's walks", timeout=30)
        assert re.search(r"web: \d+ objects of its start kept out", text), text[-2000:]
    finally:
        server.stop()


# -- the failure policy --------------------------------------------------------------------------


def test_the_pause_after_failures_doubles_up_to_its_cap():
    backoff = Backoff(first=1.0, most=10.0)
    assert [backoff.pause(failures) for failures in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_step_that_raises_is_logged_counted_and_the_loop_goes_on_and_recovers(caplog):
    name = f"flaky-{uuid.uuid4().hex[:6]}"
    calls: list[float] = []

    def flaky() -> int:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise RuntimeError(f"boom {len(calls)}")
        return 1

    loop = PeriodicLoop(name=name, every=0.01, step=flaky, what="done")
    loop.backoff = Backoff(first=0.05, most=0.1)
    with caplog.at_level(logging.INFO, logger="flespi_site.runner"), Running(loop):
        wait_until(lambda: loop.steps >= 3, what="steps after the failures")
    assert loop.errors == 3 and loop.failures_in_a_row == 0
    assert loop.done >= 3
    assert loop_errors_metric(name) == 3
    # the pauses after the failures grow (0.05, 0.1, then capped at 0.1), then the loop's own
    pauses = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert pauses[0] >= 0.05 and pauses[1] >= 0.1 and pauses[2] >= 0.1
    logged = failures_logged(caplog, name)
    assert [record.levelno for record in logged] == [logging.ERROR] * 3
    assert logged[0].exc_info is not None and "boom 1" in str(logged[0].exc_info[1])  # the traceback, once
    assert "(2 in a row): RuntimeError: boom 2" in logged[1].getMessage() and logged[1].exc_info is None
    assert any(record.getMessage() == f"{name}: working again after 3 failed step(s)" for record in caplog.records)


def test_a_setup_that_fails_is_tried_again_and_teardown_runs_once():
    class Connecting(Counting):
        attempts = 0
        teardowns = 0

        def setup(self) -> None:
            self.attempts += 1
            if self.attempts < 3:
                raise ConnectionRefusedError("not yet")

        def teardown(self) -> None:
            self.teardowns += 1

    loop = Connecting(until=2, name=f"connecting-{uuid.uuid4().hex[:6]}")
    loop.backoff = QUICK
    loop.run()  # ends when it stops itself
    assert (loop.attempts, loop.errors, loop.counted, loop.teardowns) == (3, 2, 2, 1)


def terminate_other_sessions(alias: str) -> int:
    """End every other session on the database of ``alias``, as a restart of the server would
    (the test databases are this test run's own)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_loop_whose_database_session_ended_connects_again(platform, caplog):
    alias = settings.TOPOLOGY.region("eu").datacenters[0].alias
    vacuum = QueueVacuum(alias=alias, every=0.02, dead_rows=10**9)
    vacuum.backoff = QUICK
    rounds: list[int] = []
    original = vacuum.step

    def counted_step() -> float:
        rounds.append(1)
        return original()

    vacuum.step = counted_step  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="flespi_site.runner"), Running(vacuum):
        wait_until(lambda: len(rounds) >= 2, what="the first steps")
        assert terminate_other_sessions(alias) >= 1
        wait_until(lambda: vacuum.errors == 1 and vacuum.failures_in_a_row == 0, what="a failure and a recovery")
        done = len(rounds)
        wait_until(lambda: len(rounds) >= done + 3, what="steps on a new connection")
    assert vacuum.errors == 1
    assert [record.getMessage().split(";")[0] for record in failures_logged(caplog, vacuum.name)] == [
        f"{vacuum.name}: a step failed"
    ]


def outbox_rows(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox")
        return cursor.fetchone()[0]


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_relay_takes_its_lock_again_after_losing_its_database_session(device, caplog):
    alias = device._state.db
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")  # what earlier tests left unpublished is not this test's
    root = f"test{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(alias=alias, mqtt_url=settings.MQTT_URL, topic_root=root)
    relay.backoff = QUICK
    with Subscriber(settings.MQTT_URL, f"{root}/message/gw/devices/+") as subscriber, Running(relay):
        messages_ingest(devices=[device], messages=[{"timestamp": 1_700_000_000 + i} for i in range(5)])
        assert len(subscriber.wait_for(5)) == 5
        wait_until(lambda: outbox_rows(alias) == 0, what="the outbox emptied")  # nothing in flight
        published = relay.stats.published  # the messages and their telemetry
        terminate_other_sessions(alias)
        messages_ingest(devices=[device], messages=[{"timestamp": 1_700_000_100 + i} for i in range(5)])
        assert len(subscriber.wait_for(10)) == 10
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND l.objid = %s AND d.datname = current_database()",
                [RELAY_LOCK],
            )
            assert cursor.fetchone()[0] == 1  # held again, by the relay's new session
        wait_until(lambda: outbox_rows(alias) == 0, what="the outbox emptied again")
    assert relay.errors == 1
    assert relay.stats.published >= published + 5  # the new messages (and what telemetry changed)


def stored_timestamps(device) -> list[float]:
    return [message["timestamp"] for message in messages_read(alias=device._state.db, device_ids=[device.pk])]


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_ingest_consumer_goes_on_after_its_broker_stopped_and_its_database_session_ended(
    device, private_broker, caplog
):
    region = "eu"
    consumer = IngestConsumer(regions=[region], mqtt_url=private_broker.url, pattern=f"ingest{uuid.uuid4().hex[:6]}/+",
                              client_id=f"test-ingest-{uuid.uuid4().hex[:8]}")
    consumer.backoff = Backoff(first=0.1, most=0.5)
    topic = consumer.pattern.replace("+", device.ident)
    publisher = mqtt.client_for(private_broker.url, client_id=f"dev-{uuid.uuid4().hex[:8]}")

    def publish(timestamp: int) -> None:
        mqtt.connect(publisher, private_broker.url)
        publisher.loop_start()
        try:
            publisher.publish(topic, json.dumps({"timestamp": timestamp}), qos=1).wait_for_publish(5)
        finally:
            publisher.disconnect()
            publisher.loop_stop()

    with caplog.at_level(logging.INFO), Running(consumer):
        wait_until(lambda: any("subscribed to" in r.getMessage() for r in caplog.records), what="the subscription")
        publish(1_700_000_000)
        wait_until(lambda: consumer.received == 1, what="the first message")

        private_broker.stop()
        wait_until(lambda: consumer.errors >= 2, what="failed connections")
        assert consumer.failures_in_a_row >= 2
        private_broker.start()
        wait_until(lambda: consumer.failures_in_a_row == 0, timeout=20, what="a connection again")
        publish(1_700_000_001)
        wait_until(lambda: consumer.received == 2, what="a message after the broker's restart")

        # The database session ends under the consumer: the payload's ingestion fails, is not
        # acknowledged, and the broker sends it again on the consumer's next connection.
        errors = consumer.errors
        terminate_other_sessions(device._state.db)
        publish(1_700_000_002)
        wait_until(lambda: consumer.received == 3, what="the message after the lost session")
    assert consumer.errors == errors + 1
    assert consumer.rejected == 0
    assert stored_timestamps(device) == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0]
    failures = failures_logged(caplog, consumer.name)
    assert failures and failures[0].exc_info is not None


def test_a_loop_driven_by_another_scheduler_fails_under_the_same_policy(caplog):
    """The calc worker's lease balance runs one step per tick of Celery's consumer timer and its
    heartbeat in a thread: a step that raises is logged, counted and does not stop the next."""
    from analytics.fleet.process import LeaseBalance, LeaseHeartbeat

    class Worker:
        region, worker_id, held = "eu", "calc-test", {}
        failures = 2
        renewed = 0

        taken: list[list[int]] = []

        def rebalance(self):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("Redis is away")
            return [3], []

        def taken_over(self, shards):
            self.taken.append(list(shards))

        def report_publish(self):
            pass

        def renew(self):
            self.renewed += 1
            if self.renewed == 1:
                raise ConnectionError("Redis is away")
            return []

    worker = Worker()
    balance = LeaseBalance(worker)
    balance.backoff = QUICK
    pauses = [balance.attempt() for _ in range(3)]
    assert balance.errors == 2 and balance.failures_in_a_row == 0
    assert worker.taken == [[3]] and pauses[-1] == 2.0
    assert "calc eu: lease balance: working again after 2 failed step(s)" in caplog.text

    heartbeat = LeaseHeartbeat(worker, every=0.01)
    heartbeat.backoff = QUICK
    with Running(heartbeat):
        wait_until(lambda: worker.renewed >= 3, what="renewals after a failed one")
    assert heartbeat.errors == 1
