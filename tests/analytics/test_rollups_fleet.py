"""A rollup of the intervals a real calc worker stored equals the rollup, by hand, of an on-demand
calculation over the same messages (``POST /gw/devices/{dev}/calculate``)."""

from __future__ import annotations

import time

import pytest

from tests.support.fleet import Fleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DAY = 86400.0
MIDNIGHT = (int(time.time()) // 86400 - 3) * DAY  # three days ago, 00:00 UTC
CONFIG = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    "counters": [
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "messages", "type": "expression", "expression": "1", "method": "summary"},
    ],
    "update_delay": 0,
}
COUNTERS = [
    {"name": "messages", "type": "summary", "field": "messages"},
    {"name": "top", "type": "maximum", "field": "max_speed"},
    {"name": "low", "type": "minimum", "field": "max_speed"},
    {"name": "speed", "type": "average", "field": "max_speed"},
    {"name": "trips", "type": "count"},
    {"name": "started", "type": "first", "field": "begin"},
    {"name": "last_top", "type": "last", "field": "max_speed"},
]


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all()
    yield running
    running.stop()


def _by_hand(intervals, begin, end):
    """The rollup of ``intervals`` by UTC day, each interval in the day of its begin."""
    days: dict[float, list[dict]] = {}
    for interval in intervals:
        if begin <= interval["begin"] < end:
            days.setdefault(interval["begin"] // DAY * DAY, []).append(interval)
    rows = []
    for day, group in sorted(days.items()):
        weight = sum(iv["duration"] for iv in group)
        rows.append({
            "begin": max(day, begin), "end": min(day + DAY, end),
            "messages": sum(iv["messages"] for iv in group),
            "top": max(iv["max_speed"] for iv in group), "low": min(iv["max_speed"] for iv in group),
            "speed": sum(iv["max_speed"] * iv["duration"] for iv in group) / weight,
            "trips": len(group), "started": group[0]["begin"], "last_top": group[-1]["max_speed"],
        })
    return rows


def test_rollup_of_stored_intervals_equals_the_rollup_of_an_on_demand_calculation(fleet, api, make_account,
                                                                                   make_token):
    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = make_account("fleet")
    key = make_token(account)
    device = device_create(account=account, configuration={"ident": "rollup-1"})
    # Every 10 minutes for three days: three messages moving, three standing, speeds varying.
    messages = [{"timestamp": MIDNIGHT + 600 * i, "position.speed": 10.0 + (i % 7) * 10 if (i // 3) % 2 == 0 else 0.0}
                for i in range(3 * 144)]
    messages_ingest(devices=[device], messages=messages)
    calculator = calculator_create(account=account, config=CONFIG)
    assignment, _new = assignment_create(calculator=calculator, device=device)
    wait_until(lambda: Assignment.objects.using(device.database).get(pk=assignment.pk).synced, timeout=60,
               what="synced")
    begin, end = MIDNIGHT + 3600, MIDNIGHT + 3 * DAY
    on_demand = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key,
                         body={"calc_id": calculator.pk, "begin": MIDNIGHT, "end": MIDNIGHT + 4 * DAY}).json()
    intervals = on_demand["result"][0]["intervals"]
    assert len(intervals) == 3 * 144 // 6
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{device.pk}/calculate", key=key,
                        body={"from": begin, "to": end, "selectors": [{"type": "datetime", "split": "day"}],
                              "counters": COUNTERS})
    assert response.status_code == 200, response.json()
    result = response.json()["result"]
    expected = _by_hand(intervals, begin, end)
    assert len(result) == 3
    assert [{k: v for k, v in row.items() if k not in ("calc_id", "device_id")} for row in result] == [
        {**row, "speed": pytest.approx(row["speed"], rel=1e-12)} for row in expected
    ]
    assert {(row["calc_id"], row["device_id"]) for row in result} == {(calculator.pk, device.pk)}
