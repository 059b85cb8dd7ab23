"""Calculator chaining through the fleet (docs/analytics.md, "Calculator chaining"): real calc
workers, pump and relay, real PostgreSQL, Redis and MQTT broker. A device assigned to trips, to
stops inside trips (a ``calc`` selector) and to an hourly summary of trips (``messages_source``
trips, with a ``calculator`` counter of the stops) gets random and late batches; once the fleet
has settled, every assignment's stored intervals, and what replaying its MQTT events gives, equal
the chain calculated from scratch (trips over the messages, stops over the messages and those
trips, the summary over those trips and stops). Also with a calc worker killed by SIGKILL."""

from __future__ import annotations

import random
import time

import pytest
from django.conf import settings

from analytics.engine import calculate
from tests.support.contract import TRIPS, Scenario, _engine_fields
from tests.support.fleet import Fleet
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def _stops(trips_id: int) -> dict:
    return {
        "name": "stops",
        "selectors": [{"type": "calc", "calc_id": trips_id},
                      {"type": "expression", "expression": "position.speed < 15"}],
        "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"},
                     {"name": "trip", "type": "calculator", "calc_id": trips_id, "fields": ["id"], "method": "first",
                      "allow_start_before": True, "allow_finish_after": True}],
        "update_delay": 1,
    }


def _summary(trips_id: int, stops_id: int) -> dict:
    return {
        "name": "hourly",
        "messages_source": {"source": "calculator", "calculator_id": trips_id},
        "selectors": [{"type": "datetime", "split": "hour"}],
        "counters": [
            {"name": "trips", "type": "expression", "expression": "1", "method": "summary"},
            {"name": "km", "type": "parameter", "parameter": "km", "method": "summary"},
            {"name": "longest", "type": "parameter", "parameter": "duration", "method": "maximum"},
            {"name": "stops", "type": "calculator", "calc_id": stops_id, "method": "count",
             "allow_start_before": True, "allow_finish_after": True},
        ],
        "update_delay": 1,
    }


class ChainScenario(Scenario):
    """``Scenario``'s batches and checks over the chain trips -> stops -> hourly summary."""

    def __init__(self, fleet: Fleet, make_account, *, seed: int):
        from analytics.services import assignment_create, calculator_create
        from devices.services import device_create

        self.fleet = fleet
        self.rng = random.Random(seed)
        self.account = make_account(f"chain{seed}")
        self.device = device_create(account=self.account, configuration={"ident": f"chain-{seed}"})
        trips = calculator_create(account=self.account, config=TRIPS)
        stops = calculator_create(account=self.account, config=_stops(trips.pk))
        summary = calculator_create(account=self.account, config=_summary(trips.pk, stops.pk))
        self.calculators = [trips, stops, summary]
        self.subscriber = Subscriber(settings.MQTT_URL, f"{fleet.topic_root}/interval/#",
                                     client_id=f"chain-{seed}-{fleet.topic_root}", clean_session=False)
        self.subscriber.__enter__()
        # The dependents first: their first runs see no trips yet, and must follow them.
        self.assignments = [assignment_create(calculator=c, device=self.device)[0] for c in reversed(self.calculators)]
        self.assignments.reverse()
        self.origin = time.time() - 2 * 3600

    def chain(self) -> dict[int, list[dict]]:
        """Each calculator's intervals from scratch: the source first, then what chains it."""
        from devices.selectors import messages_of

        trips, stops, summary = self.calculators
        messages = messages_of(devices=[self.device], begin=None, end=None, count=None, reverse=False)
        trip_intervals = list(calculate(messages, trips.configuration()))
        stop_intervals = list(calculate(messages, stops.configuration(), sources={trips.pk: trip_intervals}))
        summary_intervals = calculate(None, summary.configuration(),
                                      sources={trips.pk: trip_intervals, stops.pk: stop_intervals})
        return {trips.pk: trip_intervals, stops.pk: stop_intervals, summary.pk: list(summary_intervals)}

    def expected(self, calculator) -> list[dict]:
        return _engine_fields(self.chain()[calculator.pk], calculator)

    def settled(self) -> bool:
        chain = self.chain()
        for assignment, calculator in zip(self.assignments, self.calculators, strict=True):
            expected = _engine_fields(chain[calculator.pk], calculator)
            if self.stored(assignment, calculator) != expected or self.replayed(calculator) != expected:
                return False
        return True


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all(("worker", "worker2"))
    yield running
    running.stop()


@pytest.fixture
def scenario(fleet, make_account):
    running = ChainScenario(fleet, make_account, seed=23)
    yield running
    running.close()


def test_a_chain_settles_to_the_chain_from_scratch_under_late_data(scenario):
    for _ in range(12):
        scenario.batch()
        time.sleep(scenario.rng.uniform(0, 0.1))
    scenario.wait_settled(timeout=120)
    trips, _stops, summary = (scenario.chain()[calculator.pk] for calculator in scenario.calculators)
    assert trips and summary  # the summary has trips to count: each one, once
    assert sum(interval["trips"] for interval in summary) == len(trips)
    for _ in range(6):
        scenario.late_batch(size=scenario.rng.randint(5, 30))
        scenario.batch(size=5)
    scenario.wait_settled(timeout=120)


def test_a_chain_settles_after_a_worker_killed_mid_run(scenario, fleet):
    for _ in range(2):
        for _ in range(3):
            scenario.batch(size=scenario.rng.randint(50, 300))
        scenario.late_batch(size=20)
        time.sleep(scenario.rng.uniform(0, 0.5))
        fleet.kill("worker")
        for _ in range(2):
            scenario.batch()
        fleet.start_worker()
        scenario.wait_settled(timeout=150)
