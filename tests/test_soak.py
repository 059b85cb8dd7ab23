"""A bounded fault soak of the whole platform as `make run` runs it (`make soak` runs the long one).

The real supervisor runs every process (web, relay, MQTT ingest, purge, calc workers, pumps) on
the test databases, Redis, and a platform broker of the test's own (``manage.py mqtt_broker``, as
a deployment runs it). Writers post messages over REST and publish them to the ingest topic with
QoS 1 while each process in turn is killed with SIGKILL, and then the broker too. Afterwards:

- every message acknowledged (an HTTP 200, a broker's PUBACK) is stored, exactly once, and
  nothing that was not sent is stored;
- every stored message was published on its message topic at least once (QoS 1: a duplicate is
  allowed and counted);
- the device's intervals equal a from-scratch calculation over its stored messages.

`make test` runs one pass of kills; FLESPI_SLOW=1 (`make soak`) runs five, with a longer outage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

import pytest

from analytics.engine import calculate
from flespi_site.mqtt import client as mqtt
from tests.support.fleet import forget_region_state
from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker, Subscriber
from tests.support.net import free_port
from tests.support.processes import RunningSupervisor
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SLOW = bool(os.environ.get("FLESPI_SLOW"))
PASSES = 5 if SLOW else 1
OUTAGE = 20.0 if SLOW else 2.0

TRIPS = {
    "name": "soak trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 10", "max_inactive": 20}],
    "counters": [
        {"name": "n", "type": "expression", "expression": "1", "method": "summary"},
        {"name": "max_speed", "type": "parameter", "parameter": "position.speed", "method": "maximum"},
    ],
    "update_delay": 1,
}


class Writers:
    """REST and MQTT writers of unique timestamps; they remember what was acknowledged."""

    def __init__(self, *, port: int, key: str, device_id: int, ident: str, broker_url: str, ingest_prefix: str):
        self.port, self.key, self.device_id, self.ident = port, key, device_id, ident
        self.broker_url, self.ingest_prefix = broker_url, ingest_prefix
        self.base = time.time() - 600
        self._next = 0
        self._lock = threading.Lock()
        self.sent: set[float] = set()
        self.acknowledged: set[float] = set()
        self.by_mqtt: set[float] = set()
        self.restarts: list[float] = []
        self.refused: Counter = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._rest, daemon=True) for _ in range(2)]
        self.threads.append(threading.Thread(target=self._mqtt, daemon=True))

    def _stamps(self, count: int) -> list[float]:
        with self._lock:
            first = self._next
            self._next += count
        stamps = [round(self.base + (first + i) * 0.25, 3) for i in range(count)]
        with self._lock:
            self.sent.update(stamps)
        return stamps

    def _message(self, t: float) -> dict:
        return {"timestamp": t, "position.speed": 30.0 if int(t) % 90 < 60 else 0.0}

    def _rest(self) -> None:
        while not self.stop.is_set():
            stamps = self._stamps(20)
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/gw/devices/{self.device_id}/messages",
                data=json.dumps([self._message(t) for t in stamps]).encode(),
                headers={"Authorization": f"FlespiToken {self.key}", "Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    if response.status == 200:
                        with self._lock:
                            self.acknowledged.update(stamps)
            except urllib.error.HTTPError as exc:
                self.refused[exc.code] += 1
            except OSError:
                self.refused["connection"] += 1  # the web is restarting: not acknowledged
            time.sleep(0.05)

    def _mqtt(self) -> None:
        # a device's login: its account's token as the username
        client = mqtt.client_for(self.broker_url, client_id=f"soak-pub-{uuid.uuid4().hex[:8]}",
                                 credentials=(self.key, ""))
        client.connect_async(*mqtt.broker_address(self.broker_url)[:2], keepalive=10)
        client.loop_start()
        try:
            while not self.stop.is_set():
                (t,) = self._stamps(1)
                try:
                    info = client.publish(f"{self.ingest_prefix}/{self.ident}", json.dumps(self._message(t)), qos=1)
                    info.wait_for_publish(5)
                    published = info.is_published()
                except (RuntimeError, ValueError):  # the broker is away: not acknowledged
                    published = False
                if published:
                    with self._lock:
                        self.acknowledged.add(t)
                        self.by_mqtt.add(t)
                time.sleep(0.05)
        finally:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_soak(tmp_path, make_account, make_token):
    from analytics.models import Assignment
    from analytics.selectors import intervals_of
    from analytics.services import assignment_create, calculator_create
    from devices.selectors import messages_of
    from devices.services import device_create

    forget_region_state("eu")
    account = make_account("soak")
    key = make_token(account)
    ident = f"soak{uuid.uuid4().hex[:8]}"
    device = device_create(account=account, configuration={"ident": ident})
    calculator = calculator_create(account=account, config=TRIPS)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    topic_root = f"soak{uuid.uuid4().hex[:6]}"
    ingest = {"MQTT_TOPIC_ROOT": topic_root, "MQTT_INGEST_TOPIC": f"{topic_root}-in/+"}
    broker = EmbeddedBroker(extra_env=ingest)
    broker.start()
    port = free_port()
    running = RunningSupervisor(
        [sys.executable, "-m", "devtools.supervisor"],
        PORT=str(port), FLESPI_DATA_DIR=str(tmp_path), CALC_DATA_DIR=str(tmp_path / "calc"),
        FLESPI_RESTART_DELAY="0.2", FLESPI_CRASH_LOOP="100/60", CALC_LEASE_TTL="3",
        MQTT_URL=broker.url, MQTT_PLATFORM_USERNAME=PLATFORM_USER, MQTT_PLATFORM_PASSWORD=PLATFORM_PASSWORD,
        **ingest,
    )
    kills = Counter()
    subscriber = Subscriber(broker.url, f"{topic_root}/message/gw/devices/{device.pk}", login=(key, ""),
                            client_id=f"soak-sub-{topic_root}", clean_session=False)
    stack = contextlib.ExitStack()
    try:
        running.output.wait_for("platform running on", timeout=120)
        wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, timeout=60,
                   what="the assignment synced")
        # Subscribed until the end: the relay may still be catching up when the writers stop.
        stack.enter_context(subscriber)
        with Writers(port=port, key=key, device_id=device.pk, ident=ident, broker_url=broker.url,
                     ingest_prefix=f"{topic_root}-in") as writers:
            time.sleep(2)
            for _ in range(PASSES):
                names = [name for name in running.pids() if name != "setup"]
                for name in names:
                    before = running.pids()[name]
                    os.kill(before, signal.SIGKILL)
                    kills[name] += 1
                    running.wait_restarted(name, before, timeout=60)
                    time.sleep(1.0)
                writers.restarts.append(writers.base + writers._next * 0.25)
                broker.stop(signal.SIGKILL)  # what it acknowledged is written: nothing may be lost
                time.sleep(OUTAGE)
                broker.start()
                kills["broker"] += 1
                time.sleep(2)
        acknowledged, sent = set(writers.acknowledged), set(writers.sent)

        def stored() -> list[float]:
            rows = messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)
            return [row["timestamp"] for row in rows]

        try:
            wait_until(lambda: acknowledged <= set(stored()), timeout=180, what="every acknowledged message stored")
        except AssertionError:
            missing = sorted(acknowledged - set(stored()))
            print(f"missing {len(missing)} of {len(acknowledged)} acknowledged, {len(set(missing) & writers.by_mqtt)} "
                  f"sent over MQTT: {missing[:20]}")
            print(running.output.text[-6000:])
            raise
        stamps = stored()
        assert len(stamps) == len(set(stamps)), "a message is stored twice"
        assert set(stamps) <= sent, "a message that was never sent is stored"

        def published() -> Counter:
            return Counter(payload["timestamp"] for _topic, payload in list(subscriber.messages))

        try:
            wait_until(lambda: set(stamps) <= set(published()), timeout=180, what="every stored message published")
        except AssertionError:
            unpublished = sorted(set(stamps) - set(published()))
            print(f"unpublished {len(unpublished)} of {len(stamps)}: {unpublished[:10]} ... {unpublished[-10:]}")
            print(f"first stamp {min(stamps)}, broker restarts at about {[round(t, 1) for t in writers.restarts]}")
            print(running.output.text[-8000:])
            raise
        duplicates = sum(count - 1 for count in published().values() if count > 1)

        def settled() -> bool:
            rows = messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)
            keys = ("id", "begin", "end", "duration", "n", "max_speed")
            expected = [{k: iv.get(k) for k in keys} for iv in calculate(rows, TRIPS)]
            return [{k: iv.get(k) for k in keys} for iv in intervals_of(assignments=[assignment])] == expected

        wait_until(settled, timeout=120, every=0.5, what="the intervals settled")
        print(
            f"\nsoak: {PASSES} pass(es), kills {dict(kills)}; sent {len(sent)}, acknowledged {len(acknowledged)}, "
            f"stored {len(stamps)}, refused {dict(writers.refused)}; message events duplicated {duplicates}; "
            f"intervals {len(intervals_of(assignments=[assignment]))}"
        )
        assert running.process.poll() is None, "the supervisor gave up"
    finally:
        stack.close()
        running.process.send_signal(signal.SIGTERM)
        try:
            running.wait(30)
        finally:
            running.kill()
            broker.cleanup()
