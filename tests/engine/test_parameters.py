"""``Calculator.parameters``: which message parameters a compiled calculator reads, for every
selector and counter type; and that leaving every other parameter out changes no interval."""

from __future__ import annotations

import pytest

from analytics.engine import Messages, calculate, compile_calculator, compile_expression
from tests.support.engine import load_gpx

POS = {"position.latitude", "position.longitude"}
SQUARE = {
    "type": "polygon",
    "name": "square",
    "path": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 1}, {"lat": 1, "lon": 0}],
}
ON = {"type": "expression", "expression": "true"}


def params(selectors=(ON,), counters=(), **extra):
    calc = {"name": "p", "selectors": list(selectors), "counters": list(counters), **extra}
    return compile_calculator(calc).parameters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2", set()),
        ("timestamp > 5", set()),
        ("can.rpm > 900", {"can.rpm"}),
        ("$din.1 || #din.2", {"din.1", "din.2"}),
        ("previous('engine.on') != engine.off", {"engine.on", "engine.off"}),
        ("exists('ibutton.code')", {"ibutton.code"}),
        ("mileage() > 0.1", POS),
        ("geofence('name') == 'x'", POS),
        ("if(a, round(b, c), max(d, $e))", {"a", "b", "c", "d", "e"}),
        ("hour(t.local) == 3 && hour() < 5", {"t.local"}),
    ],
)
def test_expression_parameters(text, expected):
    assert compile_expression(text).parameters == frozenset(expected)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"type": "expression", "expression": "position.speed > 5 && #x"}, {"position.speed", "x"}),
        ({"type": "expression", "expression": "mileage()", "method": "change"}, POS),
        ({"type": "geofence", "geofences": [SQUARE]}, POS),
        ({"type": "datetime", "split": "day"}, set()),
        ({"type": "inactive", "delay_threshold": 60}, set()),
    ],
)
def test_selector_parameters(selector, expected):
    assert params([selector]) == frozenset(expected)


@pytest.mark.parametrize(
    ("counter", "expected"),
    [
        ({"type": "expression", "expression": "fuel.level", "method": "difference"}, {"fuel.level"}),
        ({"type": "expression", "expression": "mileage()", "method": "sum"}, POS),
        ({"type": "parameter", "parameter": "position.speed", "method": "max"}, {"position.speed"}),
        ({"type": "parameter", "method": "first"}, {"c"}),  # the parameter defaults to the name
        ({"type": "parameter", "parameter": "x", "method": "distinct"}, {"x"}),
        ({"type": "interval", "expression": "duration > 60 && previous('c') > 0"}, set()),
        ({"type": "route"}, POS),
        (
            {"type": "dataset", "fields": [{"name": "a", "value": "$a * 2"}, {"name": "b", "value": "#b"}]},
            {"a", "b"},
        ),
        ({"type": "datetime", "interval": "end"}, set()),
        ({"type": "message", "fields": ["ident", "can.vin", "timestamp"]}, {"ident", "can.vin"}),
        ({"type": "specified", "value": 7}, set()),
        ({"type": "active"}, set()),
        ({"type": "geofence"}, POS),
    ],
)
def test_counter_parameters(counter, expected):
    selectors = [ON, {"type": "geofence", "geofences": [SQUARE]}] if counter["type"] == "geofence" else [ON]
    base = set(POS) if counter["type"] == "geofence" else set()
    assert params(selectors, [{"name": "c", **counter}]) == frozenset(base | expected)


def test_counter_validate_message_counts_except_where_it_is_not_evaluated():
    assert params(
        counters=[{"name": "c", "type": "specified", "value": 1, "validate_message": "ignition"}]
    ) == frozenset({"ignition"})
    # interval counters and accumulators are computed from interval fields only
    counters = [
        {"name": "k", "type": "expression", "expression": "1", "method": "sum"},
        {"name": "i", "type": "interval", "expression": "k", "validate_message": "unused.a"},
        {"name": "acc", "type": "accumulator", "counter": "k", "validate_message": "unused.b"},
    ]
    assert params(counters=counters) == frozenset()


def test_calculator_parts_add_up():
    calc = {
        "validate_message": "$position.valid",
        "validate_interval": "duration > 10 && km > 0",
        "selectors": [
            {"type": "expression", "expression": "position.speed > 5", "merge_unknown": True},
            {"type": "datetime", "split": "day"},
        ],
        "counters": [
            {"name": "km", "type": "expression", "expression": "mileage()", "method": "sum"},
            {"name": "fuel", "type": "parameter", "parameter": "can.fuel", "method": "difference"},
            {"name": "total", "type": "accumulator", "counter": "km", "reset_interval": "day"},
        ],
    }
    got = params(calc["selectors"], calc["counters"], validate_message=calc["validate_message"])
    assert got == frozenset({"position.valid", "position.speed", "can.fuel", *POS})


def test_only_those_parameters_give_the_same_intervals():
    track = load_gpx("bus-304-limerick-2019-02-18.gpx")
    for i, m in enumerate(track):  # parameters no part of the calculator reads
        m["can.rpm"] = 800 + i % 50
        m["din"] = i % 3
    calc = compile_calculator(
        {
            "name": "trips",
            "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 60}],
            "counters": [
                {"name": "km", "type": "expression", "expression": "mileage()", "method": "sum"},
                {"name": "vmax", "type": "parameter", "parameter": "position.speed", "method": "max"},
                {"name": "route", "type": "route"},
                {"name": "last_fix", "type": "message", "fields": ["position.altitude"], "method": "last"},
            ],
        }
    )
    assert calc.parameters == frozenset({"position.speed", "position.altitude", *POS})
    full = Messages.from_dicts(track)
    cols = {name: full.column(name) for name in calc.parameters}
    reduced = Messages.from_columns(full.timestamps, cols)
    assert sorted(reduced.names) == sorted(calc.parameters)
    expected = calculate(full, calc)
    assert len(expected) > 5
    assert calculate(reduced, calc) == expected
