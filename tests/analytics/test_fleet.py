"""The calc fleet end to end: real calc worker, pump and relay processes, real Redis, PostgreSQL
and MQTT broker. Messages posted to a device reach its intervals and their events on MQTT."""

from __future__ import annotations

import time

import pytest

from analytics.engine import calculate
from tests.support.fleet import Fleet
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

# Recent messages: intervals ending more than update_period ago are frozen and never stored.
T0 = float(int(time.time()) - 300)
TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    "counters": [
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "count", "type": "expression", "expression": "1", "method": "summary"},
    ],
    "update_delay": 0,
}


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all()
    yield running
    running.stop()


def _moving(t, speed=50.0):
    return {"timestamp": T0 + t, "position.speed": speed}


def _stored(assignment):
    from analytics.selectors import intervals_of

    return intervals_of(assignments=[assignment])


def _engine_fields(intervals, calculator):
    keys = ("id", "begin", "end", "duration", *(c["name"] for c in calculator.counters))
    return [{k: iv.get(k) for k in keys} for iv in intervals]


def _events(subscriber, since: int, base: str, count: int) -> list[tuple[str, int]]:
    """The interval events (kind, interval id) received since ``since``, once ``count`` arrived."""

    def found():
        events = [(t.rsplit("/", 1)[1], p["id"]) for t, p in subscriber.messages[since:] if t.startswith(base)]
        return events if len(events) >= count else None

    return wait_until(found, what=f"{count} interval events")


def _settled(assignment, calculator, device):
    """The stored intervals equal a from-scratch calculation over the device's messages."""
    from devices.selectors import messages_of

    messages = messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)
    expected = _engine_fields(calculate(messages, calculator.configuration()), calculator)
    return _engine_fields(_stored(assignment), calculator) == expected


def test_assign_sync_append_and_events(fleet, make_account, settings):
    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = make_account("fleet")
    device = device_create(account=account, configuration={"ident": "fleet-1"})
    messages_ingest(devices=[device], messages=[_moving(t) for t in range(0, 60, 10)])
    calculator = calculator_create(account=account, config=TRIPS)
    root = fleet.topic_root
    base = f"{root}/interval/gw/calcs/{calculator.pk}/devices/{device.pk}"
    with Subscriber(settings.MQTT_URL, f"{root}/#") as subscriber:
        assignment, _new = assignment_create(calculator=calculator, device=device)
        wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, what="synced",
                   timeout=60)
        assignment.refresh_from_db()
        assert _settled(assignment, calculator, device)
        [interval] = _stored(assignment)
        assert interval["count"] == 6
        # The worker's run recorded the names of the intervals it wrote (a CSV header's source).
        assert assignment.interval_names == ["count", "max_speed"]
        synced_topic = f"{root}/state/gw/calcs/{calculator.pk}/devices/{device.pk}/synced"
        # The message events of the stored messages may come before or after the interval's.
        wait_until(lambda: f"{base}/created" in [t for t, _ in subscriber.messages], what="created")
        wait_until(lambda: [p for t, p in subscriber.messages if t == synced_topic][-1:] == [True], what="synced")

        # Appended messages extend the active interval: one "updated", nothing created.
        before = len(subscriber.messages)
        messages_ingest(devices=[device], messages=[_moving(t) for t in range(60, 90, 10)])
        wait_until(lambda: any(t == f"{base}/updated" for t, _ in subscriber.messages[before:]), what="updated")
        wait_until(lambda: _settled(assignment, calculator, device), what="settled")
        [interval] = _stored(assignment)
        assert interval["count"] == 9 and interval["end"] == T0 + 80
        assert not any(t == f"{base}/created" for t, _ in subscriber.messages[before:])

        # A late stop splits the trip in two: the first is updated (it ends earlier), the second
        # created; then a late moving message in the stop joins them again: one updated, one deleted.
        before = len(subscriber.messages)
        messages_ingest(devices=[device], messages=[_moving(t, 0.0) for t in (31, 32)])
        wait_until(lambda: len(_stored(assignment)) == 2, what="the split")
        wait_until(lambda: _settled(assignment, calculator, device), what="settled after the late stop")
        events = _events(subscriber, before, base, 2)
        assert ("updated", int(T0 * 1e6)) in events and ("created", int((T0 + 40) * 1e6)) in events
        before = len(subscriber.messages)
        messages_ingest(devices=[device], messages=[_moving(t) for t in (31, 32)])
        wait_until(lambda: len(_stored(assignment)) == 1, what="the join")
        wait_until(lambda: _settled(assignment, calculator, device), what="settled after the join")
        events = _events(subscriber, before, base, 2)
        assert ("updated", int(T0 * 1e6)) in events and ("deleted", int((T0 + 40) * 1e6)) in events
        assert not [e for e in events if e[0] == "created"]


def test_wall_clock_closes_the_active_interval(fleet, make_account, settings):
    """max_inactive: with no message for that long, the open interval is deactivated by the
    wall clock, and the retained active state becomes null."""
    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = make_account("fleet")
    device = device_create(account=account, configuration={"ident": "fleet-2"})
    config = {**TRIPS, "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 4}]}
    calculator = calculator_create(account=account, config=config)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, what="synced")
    root = fleet.topic_root
    state = f"{root}/state/gw/calcs/{calculator.pk}/devices/{device.pk}/active"
    base = f"{root}/interval/gw/calcs/{calculator.pk}/devices/{device.pk}"
    with Subscriber(settings.MQTT_URL, f"{root}/#") as subscriber:
        # Whole milliseconds: the stored timestamp (µs) is then exactly this float, which the
        # interval's end is compared with.
        now = round(time.time(), 3)
        messages_ingest(devices=[device], messages=[{"timestamp": now - 1, "position.speed": 40.0},
                                                   {"timestamp": now, "position.speed": 42.0}])
        wait_until(lambda: any(t == f"{base}/activated" for t, _ in subscriber.messages), what="activated")
        wait_until(lambda: [p["end"] for t, p in subscriber.messages if t == state and p][-1:] == [now],
                   what="the retained active interval")
        # Nothing more arrives: 4 s after the last message the sweep closes the interval.
        wait_until(lambda: any(t == f"{base}/deactivated" for t, _ in subscriber.messages), timeout=20,
                   what="deactivated")
        wait_until(lambda: [p for t, p in subscriber.messages if t == state][-1] is None, what="active null")
        assignment.refresh_from_db()
        assert assignment.active_id is None


def test_calculator_change_recalculate_and_enable_go_through_the_fleet(fleet, make_account, settings):
    """A calculator change (update_onchange), the recalculate endpoint and enabling an assignment
    again all end with the stored intervals of the current configuration and messages."""
    from analytics.models import Assignment
    from analytics.services import (
        assignment_create,
        assignment_update,
        calculator_create,
        calculator_update,
        recalculation_request,
    )
    from devices.services import device_create, messages_ingest

    account = make_account("fleet")
    device = device_create(account=account, configuration={"ident": "fleet-3"})
    messages_ingest(devices=[device], messages=[_moving(t, speed=10.0 + t) for t in range(0, 100, 5)])
    calculator = calculator_create(account=account, config=TRIPS)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, what="synced")
    wait_until(lambda: _settled(assignment, calculator, device), what="settled")
    assert len(_stored(assignment)) == 1

    # A threshold above the first half of the speeds: the trip now begins later.
    calculator = calculator_update(calculator=calculator, data={"selectors": [
        {"type": "expression", "expression": "position.speed > 60"}]})
    wait_until(lambda: _settled(assignment, calculator, device), what="settled after the change", timeout=30)
    assert _stored(assignment)[0]["begin"] == T0 + 55

    # Disabled, it misses new messages; enabled again, it catches up with its whole history.
    assignment_update(assignment=assignment, enabled=False)
    messages_ingest(devices=[device], messages=[_moving(t, speed=0.0) for t in range(60, 70, 5)])
    time.sleep(1.5)
    assert not _settled(assignment, calculator, device)
    assignment_update(assignment=assignment, enabled=True)
    wait_until(lambda: _settled(assignment, calculator, device), what="settled after enabling", timeout=30)
    assert len(_stored(assignment)) == 2

    # A recalculation asked for over a range that changed nothing stores the same intervals.
    before = _stored(assignment)
    recalculation_request(assignments=[assignment], begin=None, end=None)
    wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).pending_begin is None,
               what="the request done", timeout=30)
    assert _engine_fields(_stored(assignment), calculator) == _engine_fields(before, calculator)


def test_a_trip_in_progress_is_extended_from_its_tail(fleet, make_account):
    """Messages appended to a moving device extend its open trip from the tail the worker kept
    (no window recalculation), and the stored trip stays equal to a calculation from scratch."""
    from django.test import Client

    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest
    from tests.test_metrics import scrape, value

    client = Client()
    account = make_account("tails")
    device = device_create(account=account, configuration={"ident": "tails-1"})
    messages_ingest(devices=[device], messages=[_moving(t) for t in range(0, 30)])
    calculator = calculator_create(account=account, config=TRIPS)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, what="synced",
               timeout=60)
    before = scrape(client)
    for start in range(30, 90, 12):
        messages_ingest(devices=[device], messages=[_moving(t, 40.0 + t) for t in range(start, start + 12)])
        wait_until(lambda start=start: _stored(assignment)[-1]["end"] == T0 + start + 11, what="extended")
    after = scrape(client)
    assignment.refresh_from_db()
    assert _settled(assignment, calculator, device)
    [interval] = _stored(assignment)
    assert interval["count"] == 90 and interval["max_speed"] == 40.0 + 89
    runs = value(after, "flespi_recalculations_total", region="eu") - value(before, "flespi_recalculations_total",
                                                                            region="eu")
    extended = value(after, "flespi_recalculations_extended_total", region="eu") - value(
        before, "flespi_recalculations_extended_total", region="eu")
    assert runs >= 1 and extended == runs
