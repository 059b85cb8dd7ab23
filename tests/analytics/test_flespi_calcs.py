"""Calculators as flespi exports them (``messages_source``, flespi's selector options) and
on-demand calculation with flespi's body."""

from __future__ import annotations

import time

import pytest

from analytics.engine import calculate
from analytics.models import Calculator
from devices.selectors import messages_of
from devices.services import messages_ingest
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

# A trips calculator as flespi's documentation and its export write one: every field present,
# flespi's defaults included, with messages_source and the selector options flespi has.
FLESPI_TRIPS = {
    "name": "trips",
    "messages_source": {"source": "device"},
    "update_delay": 30,
    "update_period": 31536000,
    "update_onchange": True,
    "intervals_ttl": 31536000,
    "intervals_rotate": 0,
    "timezone": "UTC",
    "validate_interval": None,
    "validate_message": None,
    "metadata": {},
    "selectors": [
        {
            "name": "moving",
            "type": "expression",
            "expression": "position.speed > 5",
            "validate_message": "position.valid == true",
            "invert": False,
            "merge_unknown": False,
            "merge_message_before": False,
            "merge_message_after": True,
            "max_messages_time_diff": 0,
            "max_inactive": 120,
            "max_active": 86400,
            "min_active": 0,
            "min_duration": 10,
        }
    ],
    "counters": [
        {"name": "distance", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "avg.speed", "type": "parameter", "parameter": "position.speed", "method": "average"},
        {"name": "max.speed", "type": "parameter", "parameter": "position.speed", "method": "maximum"},
    ],
}
DAILY = {
    "name": "daily",
    "messages_source": {"source": "device"},
    "selectors": [{"type": "datetime", "split": "day", "merge_message_after": True}],
}


def test_a_calculator_exported_by_flespi_is_accepted_unchanged(api, key, account):
    [created] = result_of(api.call("POST", "/gw/calcs", key=key, body=[FLESPI_TRIPS, DAILY]))[:1]
    assert created["messages_source"] == {"source": "device"}
    # Every field as sent; the engine adds its defaults (the selector's method).
    [selector] = created["selectors"]
    assert selector == {**FLESPI_TRIPS["selectors"][0], "method": "boolean"}
    for name in ("name", "counters", "update_delay", "timezone", "intervals_ttl", "validate_message"):
        assert created[name] == FLESPI_TRIPS[name], name
    [read] = result_of(
        api.call("GET", f"/gw/calcs/{created['id']}?fields=messages_source,selectors", key=key)
    )
    assert read == {"messages_source": {"source": "device"}, "selectors": [selector]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages_source": {"source": "calc", "calc_id": 1}}, "messages_source"),
        ({"messages_source": {"source": "device", "extra": 1}}, "messages_source.extra"),
        ({"messages_source": "device"}, "messages_source"),
        ({"selectors": [{**FLESPI_TRIPS["selectors"][0], "max_active": -5}]}, "selectors[0].max_active"),
        (
            {"selectors": [{**FLESPI_TRIPS["selectors"][0], "validate_message": "x >"}]},
            "selectors[0].validate_message",
        ),
        (
            {"selectors": [{"type": "datetime", "merge_message_before": "yes"}]},
            "selectors[0].merge_message_before",
        ),
    ],
)
def test_bad_flespi_calculator_fields_store_nothing(api, key, account, change, field):
    response = api.call("POST", "/gw/calcs", key=key, body=[{**FLESPI_TRIPS, **change}])
    errors = errors_of(response, 400)
    assert any(error["field"].startswith(f"[0].{field}") for error in errors), errors
    assert not Calculator.objects.using("dc_eu_1").exists()
    if field == "messages_source" and "calc_id" in str(change):
        # flespi's spelling is "calculator" with "calculator_id" (docs/analytics.md, "Calculator chaining")
        assert any("must be one of device, calculator" in error["reason"] for error in errors), errors


@pytest.fixture
def recent(device):
    now = time.time()
    t0 = now - 3600
    messages = [
        {
            "timestamp": t0 + i * 10,
            "position.speed": 40 if i % 20 < 8 else 0,
            "position.valid": True,
            "position.latitude": 56.9 + i / 1e4,
            "position.longitude": 24.1,
        }
        for i in range(60)
    ]
    messages_ingest(devices=[device], messages=messages)
    return device, t0


def test_on_demand_takes_flespis_body(api, key, recent):
    device, t0 = recent
    path = f"/gw/devices/{device.pk}/calculate"
    body = {key_: value for key_, value in FLESPI_TRIPS.items() if key_ != "name"}
    [row] = result_of(api.call("POST", path, key=key, body={**body, "from": t0, "to": t0 + 1000}))
    stored = messages_of(devices=[device], begin=t0, end=t0 + 1000, count=None, reverse=False)
    expected = [dict(interval) for interval in calculate(stored, {**FLESPI_TRIPS, "name": "on-demand"})]
    assert row == {"id": device.pk, "intervals": expected} and len(expected) == 3
    # The old envelope answers the same.
    [same] = result_of(
        api.call("POST", path, key=key, body={"calculator": FLESPI_TRIPS, "from": t0, "to": t0 + 1000})
    )
    assert same["intervals"] == expected


def test_on_demand_of_a_stored_calculator_without_a_range(api, key, recent):
    device, _t0 = recent
    [calc] = result_of(api.call("POST", "/gw/calcs", key=key, body=[{**FLESPI_TRIPS, "update_period": 7200}]))
    [row] = result_of(
        api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body={"calc_id": calc["id"]})
    )
    assert len(row["intervals"]) == 3
    # The default range is the calculator's update_period up to now: an hour old history is out
    # of a half-hour period.
    Calculator.objects.using("dc_eu_1").filter(pk=calc["id"]).update(update_period=1800)
    [row] = result_of(
        api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body={"calc_id": calc["id"]})
    )
    assert [interval["begin"] >= time.time() - 1800 - 5 for interval in row["intervals"]] == [True] * len(
        row["intervals"]
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"selectors": [{"type": "nope"}], "from": 1, "to": 2}, "selectors[0].type"),
        (
            {"selectors": [{"type": "datetime"}], "messages_source": {"source": "calc"}, "from": 1, "to": 2},
            "messages_source.source",
        ),
        ({"selectors": [{"type": "datetime"}], "from": 1}, "end"),
        ({"selectors": [{"type": "datetime"}], "from": 5, "to": 2}, "begin"),
        ({"calc_id": 1, "selectors": []}, "selectors"),
    ],
)
def test_on_demand_refuses_bad_flespi_bodies(api, key, device, body, field):
    response = api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body=body)
    assert field in {error.get("field") for error in errors_of(response, 400)}
