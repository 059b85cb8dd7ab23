"""flespi's expression functions and counter options through the API: bad values are a 400
naming the path and store nothing (POST and PUT), good ones are stored in their normal form, and
an on-demand calculation over stored messages gives the values worked out by hand."""

from __future__ import annotations

import time

import pytest

from analytics.models import Calculator
from devices.services import messages_ingest
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

TAGS = {
    "name": "tag 42",
    "selectors": [{"type": "expression", "expression": "json_array_contains(json($tags), 42)"}],
    "counters": [
        {
            "name": "n",
            "type": "expression",
            "expression": "if(isnumber($temp), 1, error())",
            "method": "summary",
        },
        {"name": "hottest", "type": "message", "fields": ["temp"], "method": "max", "extremum": "$temp"},
        {"name": "temps", "type": "dataset", "fields": [{"name": "c", "value": "temp - 273"}]},
        {
            "name": "all_temps",
            "type": "dataset",
            "allow_unknown": True,
            "fields": [{"name": "c", "value": "temp - 273"}],
        },
        {"name": "seen", "type": "accumulator", "counter": "n", "reset_expression": "previous('seen') >= 3"},
    ],
}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({1: {"method": "maximum", "extremum": None}}, "counters[1].extremum", "missing field"),
        ({1: {"extremum": ["temp"]}}, "counters[1].extremum", "must be a string"),
        ({1: {"extremum": "temp >"}}, "counters[1].extremum", "unexpected end of expression"),
        ({1: {"method": "first"}}, "counters[1].extremum", "only with method minimum or maximum"),
        ({1: {"method": "mode"}}, "counters[1].method", "must be one of first, last, minimum, maximum"),
        ({2: {"allow_unknown": "true"}}, "counters[2].allow_unknown", "must be true or false"),
        ({4: {"reset_expression": 3}}, "counters[4].reset_expression", "must be a string"),
        ({4: {"reset_expression": "n >= )"}}, "counters[4].reset_expression", "unexpected ')' at 6"),
        ({0: {"expression": "error(1)"}}, "counters[0].expression", "'error' takes 0 arguments, got 1"),
        ({0: {"expression": "isjson()"}}, "counters[0].expression", "'isjson' takes 1 argument, got 0"),
    ],
)
def test_bad_counter_options_store_nothing(api, key, account, change, field, reason):
    counters = [dict(counter) for counter in TAGS["counters"]]
    for index, fields in change.items():
        counters[index].update(fields)
    response = api.call("POST", "/gw/calcs", key=key, body=[{**TAGS, "counters": counters}])
    errors = errors_of(response, 400)
    matching = [error for error in errors if error["field"] == f"[0].{field}"]
    assert matching and reason in matching[0]["reason"], errors
    assert not Calculator.objects.using("dc_eu_1").exists()


def test_bad_function_call_in_a_selector_is_a_400_on_put_and_changes_nothing(api, key, account):
    [calc] = result_of(api.call("POST", "/gw/calcs", key=key, body=[TAGS]))
    bad = {"selectors": [{"type": "expression", "expression": "json_array_contains($tags)"}]}
    response = api.call("PUT", f"/gw/calcs/{calc['id']}", key=key, body=bad)
    [error] = errors_of(response, 400)
    assert error["field"] == "selectors[0].expression"
    assert "'json_array_contains' takes 2 arguments, got 1" in error["reason"]
    stored = Calculator.objects.using("dc_eu_1").get(pk=calc["id"])
    assert stored.selectors[0]["expression"] == "json_array_contains(json($tags), 42)"


def test_options_are_stored_in_their_normal_form(api, key, account):
    [calc] = result_of(api.call("POST", "/gw/calcs", key=key, body=[TAGS]))
    counters = calc["counters"]
    assert counters[1] == {
        "name": "hottest",
        "type": "message",
        "fields": ["temp"],
        "method": "maximum",
        "extremum": "$temp",
    }
    assert "allow_unknown" not in counters[2] and counters[3]["allow_unknown"] is True
    assert counters[4]["reset_expression"] == "previous('seen') >= 3"
    [read] = result_of(api.call("GET", f"/gw/calcs/{calc['id']}?fields=counters", key=key))
    assert read["counters"] == counters


def test_on_demand_calculation_gives_the_values_worked_out_by_hand(api, key, device):
    t0 = float(int(time.time()) - 3600)  # whole seconds: stored timestamps keep them exactly
    # (tags, temp) every 10 s; "tag 42" is on while 42 is among the tags (a JSON text).
    readings = [
        ("[42]", 280),  # interval 1: temps 280, "n/a", 290; n counts the numeric ones: 2
        ("[1, 42]", "n/a"),
        ("[42, 7]", 290),
        ("[]", 300),  # off
        ("[42]", 275),  # interval 2: 275, 279; n = 2
        ("[42]", 279),
        ("not json", 500),  # json() errs: unknown, off
        ("[42]", None),  # interval 3: temp null; n = 0 (isnumber(null) is false: error())
        ("[42]", 285),  # ... and 285: n = 1
    ]
    messages = [
        {"timestamp": t0 + 10 * i, "tags": tags, "temp": temp} for i, (tags, temp) in enumerate(readings)
    ]
    messages_ingest(devices=[device], messages=messages)
    body = {**{k: v for k, v in TAGS.items() if k != "name"}, "from": t0, "to": t0 + 100}
    [row] = result_of(api.call("POST", f"/gw/devices/{device.pk}/calculate", key=key, body=body))
    got = [
        (i["begin"] - t0, i["end"] - t0, i["n"], i["hottest"], i["temps"], i["all_temps"], i["seen"])
        for i in row["intervals"]
    ]
    assert got == [
        # "n/a" - 273 is unknown: no row without allow_unknown, a null one with it
        (
            0.0,
            20.0,
            2.0,
            {"temp": 290},
            [{"c": 7.0}, {"c": 17.0}],
            [{"c": 7.0}, {"c": None}, {"c": 17.0}],
            2.0,
        ),
        # seen: 2 + 2 = 4 (the previous total, 2, is under 3: no reset)
        (40.0, 50.0, 2.0, {"temp": 279}, [{"c": 2.0}, {"c": 6.0}], [{"c": 2.0}, {"c": 6.0}], 4.0),
        # seen: the previous total is 4 >= 3: reset to this interval's 1; null - 273 is null
        (70.0, 80.0, 1.0, {"temp": 285}, [{"c": None}, {"c": 12.0}], [{"c": None}, {"c": 12.0}], 1.0),
    ]
