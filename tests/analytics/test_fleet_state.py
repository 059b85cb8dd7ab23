"""Real-time state through the calc fleet (real worker, pump and relay processes, Redis,
PostgreSQL, MQTT): an ``inactive`` interval opened by the wall clock, a device metadata change
recalculating, user fields published and read by the next interval."""

from __future__ import annotations

import time

import pytest

from analytics.engine import calculate, compile_calculator
from tests.support.fleet import Fleet
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

T0 = float(int(time.time()) - 300)


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all()
    yield running
    running.stop()


def _stored(assignment):
    from analytics.selectors import intervals_of

    return intervals_of(assignments=[assignment])


def _engine_fields(intervals, calculator):
    keys = ("id", "begin", "end", "duration", *(c["name"] for c in calculator.counters))
    return [{k: iv.get(k) for k in keys} for iv in intervals]


def _synced(assignment):
    from analytics.models import Assignment

    wait_until(lambda: Assignment.objects.using(assignment.database).get(pk=assignment.pk).synced, what="synced",
               timeout=60)


def _settled(assignment, calculator, device, device_metadata=None):
    """The stored intervals equal a from-scratch calculation over the device's messages (with
    the device's metadata ``device_metadata``)."""
    from devices.selectors import messages_of

    messages = messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)
    compiled = compile_calculator(calculator.configuration(), device_metadata=device_metadata)
    expected = _engine_fields(calculate(messages, compiled), calculator)
    return _engine_fields(_stored(assignment), calculator) == expected


def _payloads(subscriber, topic, since=0):
    return [payload for t, payload in subscriber.messages[since:] if t == topic]


def test_a_device_that_stops_reporting_becomes_inactive_by_the_wall_clock(fleet, make_account, settings):
    """No message for delay_threshold seconds of wall clock: an active inactive interval from the
    newest message, ``activated`` on MQTT; the next message closes it (``deactivated``)."""
    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = make_account("offline")
    device = device_create(account=account, configuration={"ident": "offline-1"})
    calculator = calculator_create(account=account, config={
        "name": "offline", "selectors": [{"type": "inactive", "delay_threshold": 3}],
        "counters": [{"name": "open", "type": "active"}], "update_delay": 0,
    })
    assignment, _new = assignment_create(calculator=calculator, device=device)
    _synced(assignment)
    root = fleet.topic_root
    base = f"{root}/interval/gw/calcs/{calculator.pk}/devices/{device.pk}"
    state = f"{root}/state/gw/calcs/{calculator.pk}/devices/{device.pk}/active"
    with Subscriber(settings.MQTT_URL, f"{root}/#") as subscriber:
        last = round(time.time(), 3)  # whole milliseconds: stored exactly
        messages_ingest(devices=[device], messages=[{"timestamp": last - 1, "v": 1}, {"timestamp": last, "v": 2}])
        time.sleep(1.0)
        # Within the threshold nothing is open.
        assert _payloads(subscriber, f"{base}/activated") == []
        [activated] = wait_until(lambda: _payloads(subscriber, f"{base}/activated") or None, timeout=20,
                                 what="activated")
        opened = time.time()
        assert opened - last > 3
        assert (activated["id"], activated["begin"], activated["end"], activated["open"]) == (
            round(last * 1e6), last, last, True)
        wait_until(lambda: [p and p["id"] for p in _payloads(subscriber, state)][-1:] == [activated["id"]],
                   what="the retained active interval")
        assignment.refresh_from_db()
        assert assignment.active_id == activated["id"]
        assert [(i["id"], i["open"]) for i in _stored(assignment)] == [(activated["id"], True)]

        # The device reports again: the interval closes under its id, from the last message
        # before the silence to the new one.
        since = len(subscriber.messages)
        back = round(time.time(), 3)
        messages_ingest(devices=[device], messages=[{"timestamp": back, "v": 3}])
        [deactivated] = wait_until(lambda: _payloads(subscriber, f"{base}/deactivated", since) or None,
                                   what="deactivated")
        assert (deactivated["id"], deactivated["begin"], deactivated["end"], deactivated["open"]) == (
            activated["id"], last, back, False)
        stored = _stored(assignment)
        assert [(i["id"], i["begin"], i["end"], i["open"]) for i in stored][:1] == [(activated["id"], last, back, False)]
        assert Assignment.objects.using(device.database).get(pk=assignment.pk).active_id in (
            None, round(back * 1e6))  # silent again for 3 s by now, perhaps


SPEEDING = {
    "name": "speeding",
    "selectors": [{"type": "expression", "expression": "position.speed > device.metadata.limit"}],
    "counters": [
        {"name": "over", "type": "expression", "expression": "position.speed - device.metadata.limit",
         "method": "maximum"},
        {"name": "count", "type": "expression", "expression": "1", "method": "summary"},
    ],
    "update_delay": 0,
}


def test_a_device_metadata_change_recalculates_its_assignments(fleet, make_account, make_token, api):
    """``device.metadata.limit`` in the selector and a counter: a PUT of the device's metadata
    recalculates the assignment with the new value, and messages appended after it extend the
    open interval as the new value says (no tail of the old one)."""
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = make_account("metadata")
    key = make_token(account)
    device = device_create(account=account, configuration={"ident": "metadata-1"}, metadata={"limit": 50})
    speeds = [40, 60, 70, 40, 55, 90, 95]
    messages_ingest(devices=[device], messages=[
        {"timestamp": T0 + t, "position.speed": float(v)} for t, v in enumerate(speeds)])
    calculator = calculator_create(account=account, config=SPEEDING)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    _synced(assignment)
    wait_until(lambda: _settled(assignment, calculator, device, {"limit": 50}), what="settled at 50")
    assert [(i["begin"] - T0, i["end"] - T0, i["over"], i["count"]) for i in _stored(assignment)] == [
        (1.0, 2.0, 20.0, 2.0), (4.0, 6.0, 45.0, 3.0)]

    response = api.call("PUT", f"/gw/devices/{device.pk}", key=key, body={"metadata": {"limit": 65}})
    assert response.status_code == 200, response.content
    wait_until(lambda: _settled(assignment, calculator, device, {"limit": 65}), what="settled at 65", timeout=30)
    assert [(i["begin"] - T0, i["end"] - T0, i["over"], i["count"]) for i in _stored(assignment)] == [
        (2.0, 2.0, 5.0, 1.0), (5.0, 6.0, 30.0, 2.0)]

    # Appended while open: the interval grows as the new limit says (66 is over 65, not over 70).
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + 7, "position.speed": 66.0}])
    wait_until(lambda: _stored(assignment)[-1]["end"] == T0 + 7, what="extended")
    assert _settled(assignment, calculator, device, {"limit": 65})
    assert _stored(assignment)[-1]["count"] == 3.0



HANDOVER = {
    "name": "handover",
    "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    "counters": [
        {"name": "count", "type": "expression", "expression": "1", "method": "summary"},
        {"name": "driver_before", "type": "interval", "expression": "previous('driver')"},
    ],
    "update_delay": 0,
}


def test_user_fields_are_published_and_read_by_the_next_interval(fleet, make_account, make_token, api, settings):
    """PUT of user fields: ``updated`` with the merged interval on MQTT, and the next interval,
    whose counter reads ``previous('driver')``, recalculated with it (``updated`` too)."""
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = make_account("drivers")
    key = make_token(account)
    device = device_create(account=account, configuration={"ident": "drivers-1"})
    speeds = [50, 50, 0, 50, 50, 0]
    messages_ingest(devices=[device], messages=[
        {"timestamp": T0 + t, "position.speed": float(v)} for t, v in enumerate(speeds)])
    calculator = calculator_create(account=account, config=HANDOVER)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    _synced(assignment)
    first, second = (round(T0 * 1e6), round((T0 + 3) * 1e6))
    assert [(i["id"], i.get("driver_before")) for i in _stored(assignment)] == [(first, None), (second, None)]
    root = fleet.topic_root
    base = f"{root}/interval/gw/calcs/{calculator.pk}/devices/{device.pk}"
    last_topic = f"{root}/state/gw/calcs/{calculator.pk}/devices/{device.pk}/last"
    path = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/{first}"
    with Subscriber(settings.MQTT_URL, f"{root}/#") as subscriber:
        response = api.call("PUT", path, key=key, body={"driver": "ann"})
        assert response.status_code == 200, response.content
        updated = wait_until(lambda: _payloads(subscriber, f"{base}/updated") or None, what="updated")
        assert updated[0]["id"] == first and updated[0]["driver"] == "ann" and updated[0]["count"] == 2.0
        # The next interval is recalculated: it reads the driver of the one before.
        wait_until(lambda: [i.get("driver_before") for i in _stored(assignment)] == [None, "ann"], what="recalculated")
        both = wait_until(lambda: (p := _payloads(subscriber, f"{base}/updated")) and len(p) >= 2 and p, what="two")
        assert (both[1]["id"], both[1]["driver_before"]) == (second, "ann")
        # The newest interval changed: the retained last says so.
        wait_until(lambda: [p.get("driver_before") for p in _payloads(subscriber, last_topic) if p][-1:] == ["ann"],
                   what="the retained last")

        # Removing the field (null) publishes the merged interval without it and recalculates again.
        response = api.call("PUT", path, key=key, body={"driver": None})
        assert response.status_code == 200, response.content
        wait_until(lambda: [i.get("driver_before") for i in _stored(assignment)] == [None, None], what="cleared")
    assert "driver" not in _stored(assignment)[0]


def test_bad_metadata_paths_and_thresholds_are_400_naming_the_path(api, make_account, make_token):
    from accounts.placement import alias_for_account
    from analytics.models import Calculator

    account = make_account("bad")
    key = make_token(account)
    bad = {"name": "x", "selectors": [
        {"type": "expression", "expression": "position.speed > metadata('/limits//car')"},
        {"type": "inactive", "delay_threshold": 0},
    ], "validate_message": "#device.metadata.limit > 1"}
    response = api.call("POST", "/gw/calcs", key=key, body=[bad])
    assert response.status_code == 400, response.content
    errors = {error["field"].removeprefix("[0]."): error["reason"] for error in response.json()["errors"]}
    assert "metadata path '/limits//car' has an empty key" in errors["selectors[0].expression"]
    assert "must be greater than 0" in errors["selectors[1].delay_threshold"]
    assert "'device.metadata.limit' has no previous value" in errors["validate_message"]
    assert not Calculator.objects.using(alias_for_account(account.pk)).exists()
    good = {"name": "x", "selectors": [{"type": "inactive", "delay_threshold": 60}]}
    calc = api.call("POST", "/gw/calcs", key=key, body=[good]).json()["result"][0]
    response = api.call("PUT", f"/gw/calcs/{calc['id']}", key=key,
                        body={"counters": [{"name": "n", "type": "interval", "expression": "calculator.metadata"}]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("counters[0].expression")
    assert Calculator.objects.using(alias_for_account(account.pk)).get(pk=calc["id"]).counters == []


def test_a_calculator_metadata_change_read_by_its_expressions_gives_a_new_version(api, make_account, make_token):
    account = make_account("calcmeta")
    key = make_token(account)
    reading = {"name": "r", "selectors": [{"type": "expression", "expression": "position.speed > calculator.metadata.limit"}],
               "metadata": {"limit": 50}}
    plain = {"name": "p", "selectors": [{"type": "expression", "expression": "position.speed > 50"}],
             "metadata": {"limit": 50}}
    created = api.call("POST", "/gw/calcs", key=key, body=[reading, plain]).json()["result"]
    versions = []
    for calc in created:
        response = api.call("PUT", f"/gw/calcs/{calc['id']}", key=key, body={"metadata": {"limit": 60}})
        assert response.status_code == 200, response.content
        versions.append(response.json()["result"][0]["version"])
    assert versions == [2, 1]


def test_connected_flips_on_mqtt_by_the_pumps_sweep(tmp_path, platform, make_account, settings):
    """The retained ``state/gw/devices/{id}/connected`` and ``last_active``: true when a message
    arrives, false ``DEVICE_CONNECTION_TIMEOUT`` s later (the pump's sweep), true again."""
    from devices.services import device_create, messages_ingest

    running = Fleet(tmp_path)
    running.env["DEVICE_CONNECTION_TIMEOUT"] = "2"
    settings.DEVICE_CONNECTION_TIMEOUT = 2
    running.start_all()
    try:
        account = make_account("online")
        device = device_create(account=account, configuration={"ident": "online-1"})
        root = running.topic_root
        connected = f"{root}/state/gw/devices/{device.pk}/connected"
        last_active = f"{root}/state/gw/devices/{device.pk}/last_active"
        with Subscriber(settings.MQTT_URL, f"{root}/state/gw/devices/{device.pk}/+") as subscriber:
            received = time.time()
            messages_ingest(devices=[device], messages=[{"timestamp": received, "v": 1}], now=received)
            wait_until(lambda: _payloads(subscriber, connected) == [True], what="connected")
            assert _payloads(subscriber, last_active) == [received]
            wait_until(lambda: _payloads(subscriber, connected) == [True, False], timeout=10, what="disconnected")
            assert time.time() - received > 2
            again = time.time()
            messages_ingest(devices=[device], messages=[{"timestamp": again, "v": 2}], now=again)
            wait_until(lambda: _payloads(subscriber, connected) == [True, False, True], what="connected again")
            assert _payloads(subscriber, last_active) == [received, again]
    finally:
        running.stop()
