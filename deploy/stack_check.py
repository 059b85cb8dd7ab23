"""The README's quick start against a running deployment (deploy/stack-test.sh starts one), with a
calc worker killed in the middle.

Run on the host with the checkout's interpreter (requests and paho-mqtt, and the repository's
Django-free modules: the GPX reader, the trips calculator, the shard of a device):

    .venv/bin/python deploy/stack_check.py

configured by the environment that deploy/stack-test.sh sets (STACK_* below). What it does:

1. an account with a master token (`flespi account_create --name X --token`, in a one-off
   container of the compose file's `manage` service);
2. a device, and an MQTT subscriber with that token (the flespi login: the key as username) to the
   device's messages and the interval events and state of its calculator;
3. a trips calculator (analytics.examples.TRIPS), assigned to the device;
4. the first half of a real track (tests/data/tracks/, shifted to end ten minutes ago) over
   REST, until intervals are stored, synced and their events arrive;
5. SIGKILL of the calc container that holds the device's shard (read from its lease in Redis)
   while the next part of the track arrives over REST, for longer than a lease lasts, so that
   another worker takes the shard over; the container is started again (it takes its shard back),
   and the rest of the track is published by the "device" over MQTT (ingest/<ident>, the ingest
   role);
6. until the stored intervals equal an on-demand calculation of the same calculator over the
   same messages (POST /gw/devices/{id}/calculate) and the assignment is synced;
7. the intervals rebuilt from the MQTT interval events equal the stored ones.

Exits 0 when every step passed, else 1 with the step and what was expected; writes each step's
duration to STACK_PHASES (``name<TAB>seconds`` lines) for the stack test's table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from analytics.examples import TRIPS  # noqa: E402 - Django-free
from devices.importers import derive_motion, read_gpx  # noqa: E402 - Django-free
from flespi_site.fleet import lease_holder, lease_key, shard_of  # noqa: E402 - Django-free

WEB = os.environ.get("STACK_WEB_URL", "http://127.0.0.1:28000").rstrip("/")
MQTT_HOST = os.environ.get("STACK_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("STACK_MQTT_PORT", "21883"))
REDIS_URL = os.environ.get("STACK_REDIS_URL", "redis://127.0.0.1:26379/0")
COMPOSE = json.loads(os.environ.get("STACK_COMPOSE", '["docker-compose"]'))
CALC_SHARDS = int(os.environ.get("STACK_CALC_SHARDS", "256"))
NODE_NAME = os.environ.get("STACK_NODE_NAME", "node1")
PHASES = os.environ.get("STACK_PHASES")
TRACK = REPO / "tests" / "data" / "tracks" / "bus-304-limerick-2019-02-18.gpx"
TIMEOUT = float(os.environ.get("STACK_TIMEOUT", "180"))
# how long the killed worker stays down while messages arrive: beyond the lease TTL (15 s)
LEASE_OUTLIVED = float(os.environ.get("STACK_KILLED_FOR", "25"))
CALCULATOR = {**TRIPS, "name": "stack check trips", "update_delay": 1}
FIELDS = ("id", "begin", "end", "duration", *(counter["name"] for counter in CALCULATOR["counters"]))

START = time.monotonic()


class CheckFailed(Exception):
    """A step did not get what it expected; the message says what."""


def say(text: str) -> None:
    print(f"[check {time.monotonic() - START:6.1f}s] {text}", flush=True)


class Phase:
    """A step of the check: its duration is printed and written to STACK_PHASES."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> Phase:
        self.began = time.monotonic()
        say(f"-- {self.name}")
        return self

    def __exit__(self, kind, error, trace) -> None:
        seconds = time.monotonic() - self.began
        say(f"   {self.name}: {'done' if kind is None else 'FAILED'} in {seconds:.1f} s")
        if PHASES:
            with open(PHASES, "a", encoding="utf-8") as handle:
                handle.write(f"check: {self.name}{'' if kind is None else ' (FAILED)'}\t{seconds:.1f}\n")


def wait_for(what: str, probe, *, timeout: float = TIMEOUT, every: float = 1.0, report: float = 10.0):
    """``probe()``'s first truthy answer, polling; a CheckFailed naming ``what`` after ``timeout``."""
    began = last_report = time.monotonic()
    while True:
        answer = probe()
        if answer:
            return answer
        now = time.monotonic()
        if now - began > timeout:
            raise CheckFailed(f"no {what} after {timeout:.0f} s")
        if now - last_report >= report:
            say(f"   still waiting for {what} ({now - began:.0f} s)")
            last_report = now
        time.sleep(every)


class Api:
    def __init__(self, key: str):
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"FlespiToken {key}"

    def call(self, method: str, path: str, body: Any = None, **params) -> Any:
        response = self.session.request(method, WEB + path, json=body, params=params or None, timeout=60)
        if response.status_code != 200:
            raise CheckFailed(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        answer = response.json()
        if answer.get("errors"):
            raise CheckFailed(f"{method} {path} answered errors: {answer['errors']}")
        return answer["result"]


class Subscriber:
    """An MQTT client of the account's token: what it receives, in order."""

    def __init__(self, key: str, topics: list[str]):
        self.messages: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"stack-check-{os.getpid()}")
        self.client.username_pw_set(key)  # the flespi login: the token as username, no password
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda client, userdata, mid, codes, properties: self.subscribed.set()
        self.client.on_message = self._received
        self.topics = topics

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        client.subscribe([(topic, 1) for topic in self.topics])

    def _received(self, client, userdata, message) -> None:
        payload = json.loads(message.payload) if message.payload else None
        with self.lock:
            self.messages.append((message.topic, payload))

    def start(self) -> Subscriber:
        self.client.connect(MQTT_HOST, MQTT_PORT, keepalive=30)
        self.client.loop_start()
        wait_for("SUBACK from the broker", lambda: self.subscribed.is_set() or self.refused, timeout=30, every=0.1)
        if self.refused:
            raise CheckFailed(f"the broker refused the token's connection: {self.refused}")
        return self

    def publish(self, topic: str, payload: Any) -> None:
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish(timeout=30)
        if not info.is_published():
            raise CheckFailed(f"the broker did not acknowledge a publish to {topic}")

    def received(self, prefix: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(topic, payload) for topic, payload in self.messages if topic.startswith(prefix)]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def compose(*args: str, capture: bool = True) -> str:
    result = subprocess.run([*COMPOSE, *args], capture_output=capture, text=True, timeout=300)
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(COMPOSE[-2:])} {' '.join(args)} exited {result.returncode}: "
                          f"{(result.stderr or '')[-1500:]}")
    return result.stdout


def docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def track_messages() -> list[dict]:
    """The bus track as the importer reads it (speed and direction derived), moved in time so
    that it ends ten minutes ago: recent enough to be calculated (update_period), long over."""
    with TRACK.open("rb") as stream:
        messages = [record.message for record in derive_motion(read_gpx(stream, name=TRACK.name))]
    shift = time.time() - 600 - messages[-1]["timestamp"]
    for message in messages:
        message["timestamp"] = round(message["timestamp"] + shift, 6)
    return messages


def comparable(intervals: list[dict]) -> list[dict]:
    return sorted(({key: interval.get(key) for key in FIELDS} for interval in intervals), key=lambda i: (i["begin"], i["id"]))


def replayed(events: list[tuple[str, Any]]) -> list[dict]:
    """The intervals that the interval events describe, applied in order."""
    intervals: dict[int, dict] = {}
    for topic, payload in events:
        kind = topic.rsplit("/", 1)[1]
        if kind in ("created", "updated", "activated", "deactivated"):
            intervals[payload["id"]] = payload
        elif kind == "deleted":
            intervals.pop(payload["id"], None)
    return comparable(list(intervals.values()))


def first_difference(stored: list[dict], expected: list[dict]) -> str:
    if len(stored) != len(expected):
        return f"{len(stored)} intervals stored, {len(expected)} calculated"
    for index, (mine, theirs) in enumerate(zip(stored, expected, strict=True)):
        for key in FIELDS:
            if mine.get(key) != theirs.get(key):
                return f"interval {index} (id {theirs.get('id')}): {key} is {mine.get(key)!r}, calculated {theirs.get(key)!r}"
    return "none"


def main() -> int:
    name = f"stack check {int(time.time())}"
    with Phase("account and token"):
        output = compose("run", "--rm", "-T", "manage", "account_create", "--name", name, "--token")
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if len(lines) < 3 or not lines[0].startswith("account "):
            raise CheckFailed(f"account_create printed {output!r}, not an account and a key")
        key = lines[-1]
        say(f"   {lines[0]}; {lines[1]}")
        api = Api(key)

    with Phase("device, subscriber, calculator"):
        ident = f"stack-bus-{int(time.time())}"
        [device] = api.call("POST", "/gw/devices", [{"name": "bus 304", "configuration": {"ident": ident}}])
        device_id = device["id"]
        [calculator] = api.call("POST", "/gw/calcs", [CALCULATOR])
        calc_id = calculator["id"]
        events_prefix = f"flespi/interval/gw/calcs/{calc_id}/devices/{device_id}/"
        subscriber = Subscriber(key, [
            f"flespi/message/gw/devices/{device_id}",
            f"flespi/interval/gw/calcs/{calc_id}/devices/{device_id}/+",
            f"flespi/state/gw/calcs/{calc_id}/devices/{device_id}/+",
        ]).start()
        api.call("POST", f"/gw/calcs/{calc_id}/devices/{device_id}")
        say(f"   device {device_id} ({ident}), calculator {calc_id} assigned, subscribed as the token")

    messages = track_messages()
    first, second = len(messages) // 2, len(messages) * 85 // 100
    begin, end = int(messages[0]["timestamp"]), int(messages[-1]["timestamp"]) + 1
    say(f"track {TRACK.name}: {len(messages)} messages over {(end - begin) / 60:.0f} min, ending {time.time() - end:.0f} s ago")

    def stored() -> list[dict]:
        return api.call("GET", f"/gw/calcs/{calc_id}/devices/{device_id}/intervals/all", count=100000)

    def assignment() -> dict:
        return api.call("GET", f"/gw/calcs/{calc_id}/devices/{device_id}")[0]

    def stored_count() -> int:
        return len(api.call("GET", f"/gw/devices/{device_id}/messages", fields="timestamp", count=100000))

    with Phase("first half over REST until intervals"):
        for start in range(0, first, 500):
            api.call("POST", f"/gw/devices/{device_id}/messages", messages[start:min(start + 500, first)])
        wait_for("stored intervals, synced, with MQTT events",
                 lambda: assignment()["synced"] and stored() and subscriber.received(events_prefix))
        relayed = len(subscriber.received(f"flespi/message/gw/devices/{device_id}"))
        say(f"   {len(stored())} intervals stored, {len(subscriber.received(events_prefix))} interval events, "
            f"{relayed} messages relayed over MQTT so far")

    with Phase("kill the shard's calc worker, more messages, restart"):
        region = "eu"  # the account's region: the default region of the default topology
        client = redis.Redis.from_url(REDIS_URL)
        shard = shard_of(device_id, CALC_SHARDS)
        holder, epoch = lease_holder(client.get(lease_key(region, shard)))
        if holder is None:
            raise CheckFailed(f"shard {shard} of device {device_id} has no lease in Redis: no calc worker holds it")
        service = holder.removeprefix(f"{NODE_NAME}-")
        container = compose("ps", "-q", service).strip()
        if not container:
            raise CheckFailed(f"the holder of shard {shard}, {holder}, is no container of this stack ({service})")
        say(f"   shard {shard} is held by {holder} (epoch {epoch}): docker kill --signal KILL {service}")
        docker("kill", "--signal", "KILL", container)
        killed_at = time.monotonic()
        # the messages keep coming for longer than a lease lasts (CALC_LEASE_TTL, 15 s), so that
        # another worker takes the shard over before the killed one comes back
        batches = range(first, second, 50)
        for start in batches:
            api.call("POST", f"/gw/devices/{device_id}/messages", messages[start:min(start + 50, second)])
            time.sleep(LEASE_OUTLIVED / len(batches))
        taker, taker_epoch = lease_holder(client.get(lease_key(region, shard)))
        state = docker("inspect", "--format", "{{.State.Status}}, exit code {{.State.ExitCode}}, "
                       "{{.RestartCount}} restarts by docker", container)
        say(f"   {second - first} messages sent over REST in {time.monotonic() - killed_at:.1f} s since the kill; "
            f"shard {shard} is now held by {taker} (epoch {taker_epoch}); {service}: {state}; docker start {service}")
        if taker in (None, holder):
            raise CheckFailed(f"{time.monotonic() - killed_at:.0f} s after {holder} was killed, no other worker "
                              f"holds its shard {shard} (holder: {taker})")
        docker("start", container)
        for start in range(second, len(messages), 50):
            subscriber.publish(f"ingest/{ident}", messages[start:min(start + 50, len(messages))])
        say(f"   {len(messages) - second} messages published over MQTT to ingest/{ident}")
        wait_for(f"all {len(messages)} messages stored", lambda: stored_count() >= len(messages), timeout=60)
        wait_for(f"{holder} to take shard {shard} back",
                        lambda: lease_holder(client.get(lease_key(region, shard)))[0] == holder, timeout=60)
        say(f"   {holder} holds shard {shard} again, {time.monotonic() - killed_at:.1f} s after the kill")

    with Phase("stored intervals equal a calculation from scratch"):
        expected: list[dict] = []

        def settled() -> bool:
            nonlocal expected
            if not assignment()["synced"]:
                return False
            [row] = api.call("POST", f"/gw/devices/{device_id}/calculate", {"calc_id": calc_id, "begin": begin, "end": end})
            expected = comparable(row["intervals"])
            return bool(expected) and comparable(stored()) == expected

        try:
            wait_for("stored intervals equal to the on-demand calculation", settled)
        except CheckFailed as failure:
            raise CheckFailed(f"{failure}; first difference: {first_difference(comparable(stored()), expected)}") from None
        say(f"   {len(expected)} intervals stored, equal to POST /gw/devices/{device_id}/calculate over the same messages")
        for interval in expected:
            say(f"     trip {interval['id']}: {interval['duration']:.0f} s, {interval['mileage']:.2f} km, "
                f"max {interval['max_speed']:.0f} km/h")

    with Phase("MQTT interval events replay to the stored intervals"):
        want = comparable(stored())
        try:
            wait_for("interval events that replay to the stored intervals",
                     lambda: replayed(subscriber.received(events_prefix)) == want, timeout=30)
        except CheckFailed as failure:
            raise CheckFailed(f"{failure}; first difference: {first_difference(replayed(subscriber.received(events_prefix)), want)}") from None
        kinds: dict[str, int] = {}
        for topic, _payload in subscriber.received(events_prefix):
            kinds[topic.rsplit("/", 1)[1]] = kinds.get(topic.rsplit("/", 1)[1], 0) + 1
        states = {topic.rsplit("/", 1)[1] for topic, _ in subscriber.received(f"flespi/state/gw/calcs/{calc_id}/")}
        relayed = len(subscriber.received(f"flespi/message/gw/devices/{device_id}"))
        say(f"   interval events: {', '.join(f'{count} {kind}' for kind, count in sorted(kinds.items()))}; "
            f"state topics: {', '.join(sorted(states))}; {relayed} of {len(messages)} messages relayed")
        if "created" not in kinds:
            raise CheckFailed("no 'created' interval event arrived")
        if relayed < len(messages):
            raise CheckFailed(f"only {relayed} of {len(messages)} messages came back over MQTT (flespi/message/...)")
        subscriber.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as failure:
        say(f"FAILED: {failure}")
        sys.exit(1)
    except (requests.RequestException, redis.RedisError, OSError, subprocess.TimeoutExpired) as error:
        say(f"FAILED: a service did not answer: {type(error).__name__}: {error}")
        sys.exit(1)
