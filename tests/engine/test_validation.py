"""Calculator validation: every problem with its path; normalisation; no Django import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analytics.engine import CalculatorError, compile_calculator, normalize_calculator, validate_calculator

TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 120}],
    "counters": [{"name": "km", "type": "expression", "expression": "mileage()", "method": "sum"}],
}


def problems(config):
    return [str(p) for p in validate_calculator(config)]


def test_valid_calculator_has_no_problems():
    assert validate_calculator(TRIPS) == []


def test_normalised_calculator_has_the_defaults():
    norm = normalize_calculator(TRIPS)
    assert norm["timezone"] == "UTC"
    assert norm["update_delay"] == 30
    assert norm["update_period"] == 31536000
    assert norm["update_onchange"] is True
    assert norm["intervals_ttl"] == 31536000
    assert norm["intervals_rotate"] == 0
    assert norm["metadata"] == {}
    assert norm["validate_message"] is None
    sel = norm["selectors"][0]
    assert sel["method"] == "boolean"
    assert (sel["invert"], sel["merge_unknown"], sel["min_duration"], sel["max_inactive"]) == (
        False,
        False,
        0,
        120,
    )
    assert norm["counters"][0]["method"] == "summary"  # alias resolved


def test_parse_error_with_path_and_position():
    config = {**TRIPS, "selectors": [{"type": "expression", "expression": "(speed > 5))"}]}
    assert problems(config) == ["selectors[0].expression: unexpected ')' at 12"]
    with pytest.raises(CalculatorError) as e:
        compile_calculator(config)
    assert e.value.problems[0].path == "selectors[0].expression"
    assert e.value.problems[0].message == "unexpected ')' at 12"


def test_every_problem_is_reported():
    config = {
        "selectors": [
            {"type": "bogus"},
            {"type": "expression"},
            {"type": "expression", "expression": "a +", "min_duration": -1, "invert": "yes"},
            {"type": "datetime", "split": "fortnight"},
            {"type": "inactive"},
        ],
        "counters": [
            {"name": "a", "type": "expression", "expression": "nofn(1)", "method": "sum"},
            {"name": "a", "type": "parameter", "method": "median"},
            {"type": "route"},
            {"name": "begin", "type": "specified", "value": 1},
            {"name": "t", "type": "accumulator", "counter": "later"},
            {"name": "later", "type": "interval"},
            {"name": "g", "type": "geofence"},
            {"name": "x", "type": "wat"},
        ],
        "timezone": "Mars/Olympus",
        "update_period": 0,
        "intervals_rotate": 1.5,
        "validate_interval": "duration >",
        "surprise": 1,
    }
    assert problems(config) == [
        "counters[0].expression: unknown function 'nofn' at 1",
        "counters[1].method: must be one of first, last, minimum, maximum, average, summary, difference, duration, distinct",
        "counters[1].name: duplicate counter name 'a'",
        "counters[2].name: missing field",
        "counters[3].name: 'begin' is a reserved interval field",
        "counters[4].counter: must name a counter listed before this one, not 'later'",
        "counters[5].expression: missing field",
        "counters[6]: a geofence counter needs a geofence selector",
        "counters[7].type: must be one of expression, parameter, interval, route, dataset, datetime, message, specified, active, geofence, accumulator, calculator",
        "intervals_rotate: must be an integer",
        "name: missing field",
        "selectors[0].type: must be one of expression, datetime, geofence, inactive, calc",
        "selectors[1].expression: missing field",
        "selectors[2].expression: unexpected end of expression at 4",
        "selectors[2].invert: must be true or false",
        "selectors[2].min_duration: must be at least 0",
        "selectors[3].split: must be one of hour, day, week, month, year",
        "selectors[4].delay_threshold: missing field",
        "surprise: unknown field",
        "timezone: unknown timezone 'Mars/Olympus'",
        "update_period: must be greater than 0",
        "validate_interval: unexpected end of expression at 11",
    ]


def test_geofence_problems():
    square = [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}, {"lat": 1, "lon": 1}]
    config = {
        "name": "g",
        "selectors": [
            {
                "type": "geofence",
                "geofences": [
                    {"type": "circle", "name": "c", "center": {"lat": 95, "lon": 0}, "radius": 0},
                    {"type": "polygon", "name": "p", "path": square[:2]},
                    {"type": "polygon", "name": "big", "path": square * 342},
                    {"type": "triangle"},
                    {"type": "circle", "name": "ok", "center": {"lat": 1, "lon": 2}, "radius": 1},
                ],
            }
        ],
    }
    assert problems(config) == [
        "selectors[0].geofences[0].center.lat: must be between -90 and 90",
        "selectors[0].geofences[0].radius: must be greater than 0",
        "selectors[0].geofences[1].path: needs at least 3 points",
        "selectors[0].geofences[2].path: has 1026 points, at most 1024 are allowed",
        "selectors[0].geofences[3].type: must be one of circle, polygon",
    ]
    config["selectors"][0]["geofences"] = [{"type": "polygon", "name": "max", "path": (square * 342)[:1024]}]
    assert problems(config) == []


def test_not_an_object_and_no_selectors():
    assert problems([]) == ["calculator must be a JSON object"]
    assert problems({"name": "x", "selectors": []}) == ["selectors: needs at least one selector"]
    assert problems({"name": "x", "selectors": "no"}) == ["selectors: must be a list"]
    assert problems({"name": "x", "selectors": [{"type": "inactive", "delay_threshold": float("nan")}]}) == [
        "selectors[0].delay_threshold: must be a number"
    ]


def test_importing_the_engine_does_not_import_django():
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "import analytics.engine as e\n"
        "e.calculate([{'timestamp': 1, 'v': 1}], {'name': 'x', 'selectors': [{'type': 'expression', 'expression': 'v'}]})\n"
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "[]"
