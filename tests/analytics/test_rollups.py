"""Rollups over stored intervals (``POST /gw/calcs/{calc}/devices/{dev}/calculate``): each counter
by hand, the period of an interval that straddles a boundary, periods in a timezone with DST,
empty periods and devices, isolation, and bad input. Intervals are stored by the path a calc
worker stores them (``diff_store``) on the real PostgreSQL."""

from __future__ import annotations

import importlib

import pytest
from django.db import connections

from analytics.engine import Diff

pytestmark = pytest.mark.django_db(databases="__all__")

D = 86400.0
T = 1_699_920_000.0  # 2023-11-14 00:00 UTC
CONFIG = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    "counters": [
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "label", "type": "specified", "value": "x"},
    ],
}
COUNTERS = [
    {"name": "km_sum", "type": "summary", "field": "km"},
    {"name": "km_sum_alias", "type": "sum", "field": "km"},
    {"name": "speed_max", "type": "max", "field": "max_speed"},
    {"name": "speed_min", "type": "minimum", "field": "max_speed"},
    {"name": "trips", "type": "count"},
    {"name": "with_km", "type": "count", "field": "km"},
    {"name": "first_km", "type": "first", "field": "km"},
    {"name": "last_km", "type": "last", "field": "km"},
    {"name": "speed_avg", "type": "average", "field": "max_speed"},
    {"name": "first_begin", "type": "first", "field": "begin"},
    {"name": "driving", "type": "summary", "field": "duration"},
    {"name": "first_label", "type": "first", "field": "label"},
    {"name": "label_sum", "type": "summary", "field": "label"},
]


def _iv(begin, end, **counters):
    return {"id": round(begin * 1_000_000), "begin": float(begin), "end": float(end), "duration": float(end - begin),
            **counters}


def _store(assignment, intervals):
    from tests.support.intervals import diff_store

    diff_store(assignment=assignment, diff=Diff(created=list(intervals), updated=[], deleted=[], active_id=None,
                                                reached_end=True), now=1000.0)


@pytest.fixture
def calc(account):
    from analytics.services import calculator_create

    return calculator_create(account=account, config=CONFIG)


@pytest.fixture
def assigned(calc, device):
    from analytics.services import assignment_create

    return assignment_create(calculator=calc, device=device)[0]


def _rollup(api, key, calc, devices, body, **extra):
    return api.call("POST", f"/gw/calcs/{calc.pk}/devices/{devices}/calculate", key=key, body=body, **extra)


def _body(begin, end, split="day", counters=COUNTERS, **more):
    return {"from": begin, "to": end, "selectors": [{"type": "datetime", "split": split}], "counters": counters,
            **more}


def test_each_counter_by_hand(api, key, calc, device, assigned):
    _store(assigned, [
        _iv(T + 3600, T + 7200, km=10, max_speed=50, label="a"),
        _iv(T + 10_000, T + 11_800, km=5, max_speed=80),
        _iv(T + 20_000, T + 20_000, max_speed=30, label="b"),  # no km; lasts 0 s
        _iv(T + D + 100, T + D + 700, km=2.5, max_speed=40),
    ])
    response = _rollup(api, key, calc, device.pk, _body(T, T + 2 * D))
    assert response.status_code == 200, response.json()
    assert response.json() == {"result": [
        {"calc_id": calc.pk, "device_id": device.pk, "begin": T, "end": T + D,
         "km_sum": 15.0, "km_sum_alias": 15.0, "speed_max": 80.0, "speed_min": 30.0, "trips": 3, "with_km": 2,
         "first_km": 10, "last_km": 5,
         # weighted by duration: (50 * 3600 + 80 * 1800 + 30 * 0) / 5400
         "speed_avg": 60.0, "first_begin": T + 3600, "driving": 5400.0},
        {"calc_id": calc.pk, "device_id": device.pk, "begin": T + D, "end": T + 2 * D,
         "km_sum": 2.5, "km_sum_alias": 2.5, "speed_max": 40.0, "speed_min": 40.0, "trips": 1, "with_km": 1,
         "first_km": 2.5, "last_km": 2.5, "speed_avg": 40.0, "first_begin": T + D + 100, "driving": 600.0},
    ]}


def test_rows_written_before_the_number_arrays_are_filled_by_their_migration(api, key, calc, device, assigned):
    """Migration 0009 fills ``number_keys``/``number_values`` from ``numbers``, or, on a row
    written before that column (NULL), from its counters' text: run backwards and forwards here."""
    migration = importlib.import_module("analytics.migrations.0009_interval_number_arrays")
    _store(assigned, [_iv(T + 10, T + 20, km=1.5, max_speed=40), _iv(T + 30, T + 40, km=2, label="a")])
    with connections[device.database].cursor() as cursor:
        cursor.execute(migration.DROP)
        cursor.execute("UPDATE intervals SET numbers = NULL WHERE calc_id = %s AND id = %s", [calc.pk, round((T + 10) * 1e6)])
        assert cursor.rowcount == 1
        cursor.execute(migration.CREATE)
        cursor.execute("SELECT number_keys, number_values FROM intervals WHERE calc_id = %s ORDER BY id", [calc.pk])
        assert cursor.fetchall() == [(["km", "max_speed"], [1.5, 40.0]), (["km"], [2.0])]
    counters = [{"name": "km", "type": "summary", "field": "km"}, {"name": "last_km", "type": "last", "field": "km"},
                {"name": "top", "type": "maximum", "field": "max_speed"}, {"name": "labels", "type": "count", "field": "label"}]
    [row] = response_ok(_rollup(api, key, calc, device.pk, _body(T, T + D, counters=counters)))
    assert (row["km"], row["last_km"], row["top"], row["labels"]) == (3.5, 2, 40.0, 0)


def test_number_arrays_hold_any_counter_name_and_skip_what_a_double_cannot(calc, device, assigned):
    """``number_keys`` is written as a text[] literal: a name with quotes, commas, braces and
    backslashes reads back as itself; an integer beyond a double's range is no number to reduce
    (left out, the write succeeds), one beyond 64 bits but within it is read as a double."""
    from analytics import storage

    odd = 'a "b", {c}\\d'
    _store(assigned, [_iv(T + 10, T + 20, **{odd: 2, "big": 10**400, "wide": 2**64}),
                      _iv(T + 30, T + 40, **{odd: 3.5, "big": 1})])
    rows = storage.intervals_rollup(
        alias=device.database, calc_id=calc.pk, device_ids=[device.pk], bounds=[T, T + D], begin=T, end=T + D,
        counters=[("summary", odd), ("count", "big"), ("summary", "wide"), ("last", odd)], columns=("begin",),
    )
    assert rows == [(device.pk, 1, 5.5, 1, float(2**64), 3.5)]


def test_a_rewritten_or_deleted_interval_counts_as_it_is_now(api, key, calc, device, assigned):
    from tests.support.intervals import diff_store

    first, second = _iv(T + 10, T + 20, km=1), _iv(T + 30, T + 40, km=2)
    _store(assigned, [first, second])
    body = _body(T, T + D, counters=[{"name": "km", "type": "sum", "field": "km"}, {"name": "last", "type": "last", "field": "km"}])
    assert [(row["km"], row["last"]) for row in response_ok(_rollup(api, key, calc, device.pk, body))] == [(3, 2)]
    diff_store(assignment=assigned, diff=Diff(created=[], updated=[{**second, "km": 20}], deleted=[first], active_id=None,
                                              reached_end=True), now=1001.0)
    assert [(row["km"], row["last"]) for row in response_ok(_rollup(api, key, calc, device.pk, body))] == [(20, 20)]


def test_average_of_instants_is_their_mean(api, key, calc, device, assigned):
    _store(assigned, [_iv(T + 10, T + 10, max_speed=10), _iv(T + 20, T + 20, max_speed=20),
                      _iv(T + 30, T + 40, km=1)])  # lasts 10 s but has no speed: weighs nothing
    body = _body(T, T + D, counters=[{"name": "avg", "type": "avg", "field": "max_speed"}])
    assert _rollup(api, key, calc, device.pk, body).json()["result"][0]["avg"] == 15.0


def test_straddling_interval_counts_in_the_period_of_its_begin(api, key, calc, device, assigned):
    _store(assigned, [
        _iv(T - 60, T + 60, km=7),  # begins before from: not counted
        _iv(T, T + 10, km=1),  # begins at from: counted
        _iv(T + D - 3600, T + D + 3600, km=2),  # 23:00 to 01:00: wholly in the first day
        _iv(T + D + 5, T + D + 6, km=4),
        _iv(T + 2 * D, T + 2 * D + 5, km=100),  # begins at to: not counted
    ])
    counters = [{"name": "km", "type": "summary", "field": "km"}, {"name": "n", "type": "count"}]
    result = _rollup(api, key, calc, device.pk, _body(T, T + 2 * D, counters=counters)).json()["result"]
    assert [(row["begin"], row["end"], row["km"], row["n"]) for row in result] == [
        (T, T + D, 3.0, 2), (T + D, T + 2 * D, 4.0, 1)
    ]
    # A range that does not start at a boundary: the first and last periods are clipped to it.
    result = _rollup(api, key, calc, device.pk, _body(T + 5, T + D + 5.5, counters=counters)).json()["result"]
    assert [(row["begin"], row["end"], row["km"], row["n"]) for row in result] == [
        (T + 5, T + D, 2.0, 1), (T + D, T + D + 5.5, 4.0, 1)
    ]


def test_empty_periods_and_devices_without_intervals_are_left_out(api, key, account, calc, device, assigned):
    from analytics.services import assignment_create
    from devices.services import device_create

    idle = device_create(account=account, name="idle", configuration={"ident": "idle-1"})
    assignment_create(calculator=calc, device=idle)
    _store(assigned, [_iv(T + 100, T + 200, km=1), _iv(T + 3 * D + 100, T + 3 * D + 200, km=2)])
    counters = [{"name": "km", "type": "summary", "field": "km"}]
    result = _rollup(api, key, calc, f"{device.pk},{idle.pk}", _body(T, T + 5 * D, counters=counters)).json()["result"]
    assert [(row["device_id"], row["begin"], row["km"]) for row in result] == [
        (device.pk, T, 1.0), (device.pk, T + 3 * D, 2.0)
    ]
    result = _rollup(api, key, calc, idle.pk, _body(T, T + 5 * D, counters=counters))
    assert response_ok(result) == []


def response_ok(response):
    assert response.status_code == 200, response.json()
    return response.json()["result"]


def test_devices_then_periods_in_order(api, key, account, calc, device, assigned):
    from analytics.services import assignment_create
    from devices.services import device_create

    other = device_create(account=account, name="other", configuration={"ident": "other-1"})
    _store(assignment_create(calculator=calc, device=other)[0], [_iv(T + D + 1, T + D + 2, km=5), _iv(T + 1, T + 2, km=6)])
    _store(assigned, [_iv(T + D + 1, T + D + 2, km=7)])
    counters = [{"name": "km", "type": "summary", "field": "km"}]
    result = response_ok(_rollup(api, key, calc, "all", _body(T, T + 2 * D, counters=counters)))
    first, second = sorted([device.pk, other.pk])
    kms = {device.pk: {T + D: 7.0}, other.pk: {T: 6.0, T + D: 5.0}}
    assert [(row["device_id"], row["begin"], row["km"]) for row in result] == [
        (dev, begin, kms[dev][begin]) for dev in (first, second) for begin in sorted(kms[dev])
    ]


def test_periods_in_a_timezone_with_dst(api, key, account, device):
    """Europe/Berlin, the calculator's timezone: 2024-03-31 lasts 23 hours (clocks go from 02:00
    to 03:00 CET -> CEST), and the repeated hour of 2024-10-27 (02:00-03:00 twice) is two hour
    periods, as the datetime selector cuts them."""
    from analytics.services import assignment_create, calculator_create

    calc = calculator_create(account=account, config={**CONFIG, "timezone": "Europe/Berlin"})
    assigned = assignment_create(calculator=calc, device=device)[0]
    march_30 = 1_711_753_200.0  # 2024-03-30 00:00 CET (23:00 UTC the day before)
    march_31 = march_30 + 86400  # 2024-03-31 00:00 CET
    april_1 = march_31 + 23 * 3600  # 2024-04-01 00:00 CEST
    _store(assigned, [
        _iv(march_31 + 1800, march_31 + 1900, km=1),  # 00:30 CET
        _iv(april_1 - 1800, april_1 - 1700, km=2),  # 23:30 CEST, the same day
        _iv(april_1 + 1800, april_1 + 1900, km=4),  # 00:30 CEST, the next
    ])
    counters = [{"name": "km", "type": "summary", "field": "km"}]
    result = response_ok(_rollup(api, key, calc, device.pk, _body(march_30, april_1 + 86400, counters=counters)))
    assert [(row["begin"], row["end"], row["km"]) for row in result] == [
        (march_31, april_1, 3.0), (april_1, april_1 + 86400, 4.0)
    ]
    # The same instants in UTC (the body's timezone wins over the calculator's): other days.
    result = response_ok(_rollup(api, key, calc, device.pk,
                                 _body(march_30 + 3600, april_1 + 86400, counters=counters, timezone="UTC")))
    assert [(row["begin"], row["km"]) for row in result] == [(march_30 + 3600, 1.0), (march_31 + 3600, 6.0)]
    # Fall back: 2024-10-27 00:00 UTC is 02:00 CEST; an hour later it is 02:00 CET again.
    fall = 1_729_987_200.0
    _store(assigned, [_iv(fall + 600, fall + 700, km=8), _iv(fall + 3600 + 600, fall + 3600 + 700, km=16)])
    result = response_ok(_rollup(api, key, calc, device.pk, _body(fall - 3600, fall + 7200, split="hour",
                                                                  counters=counters)))
    assert [(row["begin"], row["end"], row["km"]) for row in result] == [
        (fall, fall + 3600, 8.0), (fall + 3600, fall + 7200, 16.0)
    ]


def test_isolation_as_the_intervals_endpoints(api, make_account, make_token, account, key, calc, device, assigned):
    from accounts.services import account_create
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create

    _store(assigned, [_iv(T + 1, T + 2, km=3)])
    body = _body(T, T + D, counters=[{"name": "km", "type": "summary", "field": "km"}])
    stranger_key = make_token(make_account("stranger"))
    assert _rollup(api, stranger_key, calc, device.pk, body).status_code == 404
    # The device is not assigned to a calculator of the stranger's either.
    stranger_calc = calculator_create(account=make_account("other"), config=CONFIG)
    assert _rollup(api, key, stranger_calc, device.pk, body).status_code == 404
    # A subaccount's calculator through x-flespi-cid; the parent's calculator is not the child's.
    child = account_create(name="child", parent=account)
    child_device = device_create(account=child, name="c", configuration={"ident": "child-1"})
    child_calc = calculator_create(account=child, config=CONFIG)
    _store(assignment_create(calculator=child_calc, device=child_device)[0], [_iv(T + 5, T + 6, km=9)])
    assert response_ok(_rollup(api, key, child_calc, child_device.pk, body, cid=child.pk)) == [
        {"calc_id": child_calc.pk, "device_id": child_device.pk, "begin": T, "end": T + D, "km": 9.0}
    ]
    assert _rollup(api, key, child_calc, child_device.pk, body).status_code == 404
    assert _rollup(api, key, calc, device.pk, body, cid=child.pk).status_code == 404


def _counts(alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT (SELECT count(*) FROM intervals), (SELECT count(*) FROM outbox),"
                       " (SELECT count(*) FROM analytics_assignment), (SELECT count(*) FROM analytics_calculator)")
        return cursor.fetchone()


BAD = [
    ({"from": T + D, "to": T}, "from"),
    ({"from": T, "to": T}, "from"),
    ({"to": T + D}, "from"),
    ({"from": T, "to": 1e12}, "to"),
    ({"from": T, "to": T + 100 * D, "selectors": [{"type": "datetime", "split": "hour"}]}, "to"),
    ({"counters": [{"name": "x", "type": "summary", "field": "fuel"}]}, "counters[0].field"),
    ({"counters": [{"name": "x", "type": "median", "field": "km"}]}, "counters[0].type"),
    ({"counters": [{"name": "x", "type": "summary"}]}, "counters[0].field"),
    ({"counters": [{"name": "x", "type": "first", "field": "id"}]}, "counters[0].field"),
    ({"counters": [{"name": "begin", "type": "count"}]}, "counters[0].name"),
    ({"counters": [{"name": "x", "type": "count"}, {"name": "x", "type": "count"}]}, "counters[1].name"),
    ({"counters": [{"name": "x", "type": "count", "method": "summary"}]}, "counters[0].method"),
    ({"counters": []}, "counters"),
    ({"counters": "km"}, "counters"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"selectors": [{"type": "datetime", "split": "fortnight"}]}, "selectors[0].split"),
    ({"selectors": [{"type": "expression", "expression": "1"}]}, "selectors[0].type"),
    ({"selectors": [{"type": "datetime", "split": "day"}, {"type": "datetime", "split": "week"}]}, "selectors"),
    ({"source": "intervals"}, "source"),
    ({"from": "yesterday"}, "from"),
    ({"from": T, "begin": T}, "from"),
]


@pytest.mark.parametrize(("change", "field"), BAD)
def test_bad_input_is_a_400_naming_the_path(api, key, calc, device, assigned, change, field):
    _store(assigned, [_iv(T + 1, T + 2, km=3)])
    before = _counts(device.database)
    body = {**_body(T, T + D, counters=[{"name": "km", "type": "summary", "field": "km"}]), **change}
    if "to" in change and "from" not in change:
        body.pop("from")
    response = _rollup(api, key, calc, device.pk, body)
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert field in [error.get("field") for error in errors], errors
    assert _counts(device.database) == before


def test_body_not_an_object(api, key, calc, device, assigned):
    response = api.call("POST", f"/gw/calcs/{calc.pk}/devices/{device.pk}/calculate", key=key, raw="[1, 2]")
    assert response.status_code == 400 and response.json()["errors"]
