"""The recalculation contract (DESIGN 7.6) as the fleet tests check it: a device with two
assignments fed random batches (in order, late, duplicated, deleted) through the API's write path,
and, once the fleet has settled, the stored intervals of every assignment and the intervals that
replaying their MQTT events from the first gives, both equal to a from-scratch calculation."""

from __future__ import annotations

import os
import random
import time

from django.conf import settings

from analytics.engine import calculate
from tests.support.fleet import Fleet
from tests.support.mqtt import CLEARED, Subscriber
from tests.support.waiting import wait_until

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

    def late_batch(self, *, size: int | None = None) -> None:
        """A batch of messages from the oldest third of the device's span (late data)."""
        from devices.services import messages_ingest

        rng = self.rng
        span = (time.time() - self.origin) / 3
        stamps = sorted(self.origin + rng.uniform(0, span) for _ in range(size or rng.randint(1, 20)))
        batch = [_message(rng, t) for t in stamps]
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
