"""Counters (DESIGN 7.5), by hand: every type and method, errors, missing parameters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from analytics.engine import calculate
from analytics.engine.geo import encode_polyline, encode_polyline_segments
from tests.support.engine import msgs, one_selector

ALL = {"type": "expression", "expression": "true"}


def counters(messages, *cs, selector=ALL, **extra):
    return calculate(messages, one_selector(selector, counters=list(cs), **extra))


def one(messages, counter, **kw):
    (interval,) = counters(messages, counter, **kw)
    return interval.get(counter["name"], "<absent>")


VALUES = [4, 2, None, 8, "x", 6]  # None: null, "x": not a number


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("first", 4.0),
        ("last", 6.0),
        ("minimum", 2.0),
        ("min", 2.0),
        ("maximum", 8.0),
        ("max", 8.0),
        ("average", 5.0),
        ("avg", 5.0),
        ("summary", 20.0),
        ("sum", 20.0),
        ("difference", 2.0),
    ],
)
def test_expression_methods_skip_errors_and_nulls(method, expected):
    # v * 1 errors on "x" and is null on null: both are skipped.
    assert (
        one(msgs(VALUES), {"name": "c", "type": "expression", "expression": "v * 1", "method": method})
        == expected
    )


def test_expression_duration_counts_each_true_message_until_the_next():
    times = [0, 10, 15, 40, 41]
    values = [1, 1, 0, 1, 1]
    c = {"name": "on", "type": "expression", "expression": "v > 0", "method": "duration"}
    assert one(msgs(values, times=times), c) == 10 + 5 + 1  # last message counts 0


def test_parameter_methods_keep_raw_values():
    c = {"name": "v", "type": "parameter", "method": "first"}
    assert one(msgs([3, 4]), c) == 3 and isinstance(one(msgs([3, 4]), c), int)
    assert one(msgs(["a", "b"]), {**c, "method": "last"}) == "b"
    assert one(msgs([1, "a", 1, None, "b", "a", True]), {**c, "method": "distinct"}) == [1, "a", "b", True]
    assert (
        one(msgs([5, 1, 3]), {"name": "m", "type": "parameter", "parameter": "v", "method": "maximum"}) == 5.0
    )


def test_missing_parameter_and_division_by_zero_leave_the_counter_out():
    assert (
        one(msgs([1, 2]), {"name": "c", "type": "parameter", "parameter": "nope", "method": "last"})
        == "<absent>"
    )
    assert (
        one(msgs([1, 2]), {"name": "c", "type": "expression", "expression": "v / 0", "method": "maximum"})
        == "<absent>"
    )
    # The sum of nothing is 0, and so is a duration.
    assert (
        one(msgs([1, 2]), {"name": "c", "type": "expression", "expression": "v / 0", "method": "summary"})
        == 0.0
    )
    assert (
        one(msgs([1, 2]), {"name": "c", "type": "expression", "expression": "nope", "method": "duration"})
        == 0.0
    )


def test_counter_validate_message():
    c = {
        "name": "c",
        "type": "expression",
        "expression": "v",
        "method": "summary",
        "validate_message": "v > 2",
    }
    assert one(msgs([1, 3, 5]), c) == 8.0


def test_single_message_interval():
    c = [
        {"name": "sum", "type": "expression", "expression": "v", "method": "summary"},
        {"name": "diff", "type": "expression", "expression": "v", "method": "difference"},
        {"name": "dur", "type": "expression", "expression": "v > 0", "method": "duration"},
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
    ]
    (i,) = counters(msgs([7]), *c)
    assert (i["duration"], i["sum"], i["diff"], i["dur"], i["km"]) == (0.0, 7.0, 0.0, 0.0, 0.0)


def test_previous_and_mileage_stay_inside_the_interval():
    sel = {"type": "expression", "expression": "v > 0"}
    m = msgs([1, 1, 0, 1, 1])
    for i, lat in enumerate([50.0, 50.01, 50.02, 50.03, 50.04]):
        m[i]["position.latitude"] = lat
        m[i]["position.longitude"] = 0.0
    c = [
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "jumps", "type": "expression", "expression": "isnull(#v)", "method": "summary"},
    ]
    a, b = counters(m, *c, selector=sel)
    assert a["km"] == pytest.approx(1.1119, abs=1e-4)
    assert b["km"] == pytest.approx(1.1119, abs=1e-4)  # not 2.22: 50.02 is outside the interval
    assert a["jumps"] == b["jumps"] == 1.0  # the first message of each has no previous


def test_mileage_measures_from_the_last_message_with_a_position():
    fix = [{"position.latitude": 50.0 + 0.001 * i, "position.longitude": 10.0} for i in range(3)]
    m = [
        {"timestamp": 0.0, **fix[0]},
        {"timestamp": 0.5, "can.rpm": 900},
        {"timestamp": 1.0, **fix[1]},
        {"timestamp": 1.2, "can.rpm": 950},
        {"timestamp": 1.4, "event": 3},
        {"timestamp": 2.0, **fix[2]},
    ]
    km = {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"}
    (i,) = calculate(m, one_selector({"type": "expression", "expression": "true"}, [km]))
    assert i["km"] == pytest.approx(0.2224, abs=1e-4)
    # the reproducer: one position-less message between two fixes
    (j,) = calculate(m[:3], one_selector({"type": "expression", "expression": "true"}, [km]))
    assert j["km"] == pytest.approx(0.1112, abs=1e-4)
    # inside the interval only: the interval starting at the CAN message has no earlier position
    sel = {"type": "expression", "expression": "timestamp > 0.2"}
    (k,) = calculate(m, one_selector(sel, [km]))
    assert k["km"] == pytest.approx(0.1112, abs=1e-4)


def test_previous_name_is_the_message_just_before():
    m = [{"timestamp": 0.0, "ign": True}, {"timestamp": 1.0, "can.rpm": 900}, {"timestamp": 2.0, "ign": True}]
    c = {"name": "edges", "type": "expression", "expression": "$ign && !#ign", "method": "summary"}
    (i,) = calculate(m, one_selector({"type": "expression", "expression": "true"}, [c]))
    assert i["edges"] == 2.0  # the first message, and the one after the message without ign


def test_interval_counter_sees_fields_and_previous_interval():
    sel = {"type": "expression", "expression": "v > 0"}
    c = [
        {"name": "sum", "type": "expression", "expression": "v", "method": "summary"},
        {"name": "rate", "type": "interval", "expression": "sum / duration"},
        {"name": "growth", "type": "interval", "expression": "sum - previous('sum')"},
        {"name": "gap", "type": "interval", "expression": "begin - #end"},
    ]
    a, b = counters(msgs([2, 4, 0, 5, 5, 5]), *c, selector=sel)
    assert a == {"id": 0, "begin": 0.0, "end": 1.0, "duration": 1.0, "sum": 6.0, "rate": 6.0}
    assert b["rate"] == 7.5 and b["growth"] == 9.0 and b["gap"] == 2.0


def test_interval_counter_division_by_zero_is_left_out():
    c = {"name": "rate", "type": "interval", "expression": "1 / duration"}
    assert one(msgs([1]), c) == "<absent>"


def test_route_is_a_google_encoded_polyline():
    pts = [(38.5, -120.2), (40.7, -120.95), (43.252, -126.453)]
    m = [
        {"timestamp": float(i), "position.latitude": a, "position.longitude": b}
        for i, (a, b) in enumerate(pts)
    ]
    m.insert(1, {"timestamp": 0.5})  # no position: not in the route
    assert one(m, {"name": "route", "type": "route"}) == "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    assert encode_polyline(pts) == "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    assert one(msgs([1]), {"name": "route", "type": "route"}) == ""


def test_route_vectorised_matches_reference():
    import numpy as np

    rng = np.random.default_rng(7)
    lat = rng.uniform(-89, 89, 500)
    lon = rng.uniform(-179, 179, 500)
    seg = np.array([0, 0, 3, 100, 499])
    got = encode_polyline_segments(lat, lon, seg)
    ends = [*seg[1:].tolist(), 500]
    want = [
        encode_polyline(list(zip(lat[s:e], lon[s:e], strict=True)))
        for s, e in zip(seg.tolist(), ends, strict=True)
    ]
    assert got == want


def test_dataset_one_object_per_message():
    c = {
        "name": "ds",
        "type": "dataset",
        "fields": [{"name": "t", "value": "timestamp"}, {"name": "x", "value": "v * 2"}],
    }
    # "a" * 2 cannot be computed: that message gives no row, unless allow_unknown (then x is null).
    assert one(msgs([1, "a", 3]), c) == [{"t": 0.0, "x": 2.0}, {"t": 2.0, "x": 6.0}]
    assert one(msgs([1, "a", 3]), {**c, "allow_unknown": True}) == [
        {"t": 0.0, "x": 2.0},
        {"t": 1.0, "x": None},
        {"t": 2.0, "x": 6.0},
    ]


def test_datetime_counter_formats_in_the_calculator_timezone():
    t0 = datetime(2024, 7, 1, 22, 30, tzinfo=UTC).timestamp()
    m = msgs([1, 1], times=[t0, t0 + 3600])
    c = [
        {"name": "from", "type": "datetime", "interval": "begin", "format": "%Y-%m-%d %H:%M"},
        {"name": "to", "type": "datetime", "interval": "end", "format": "%H:%M"},
    ]
    (i,) = counters(m, *c, timezone="Europe/Berlin")
    assert (i["from"], i["to"]) == ("2024-07-02 00:30", "01:30")


def test_message_counter_copies_fields():
    m = msgs([1, 2, 3])
    m[0]["driver"] = "ann"
    m[2]["driver"] = "bob"
    c = {"name": "start", "type": "message", "fields": ["v", "driver", "nope"], "method": "first"}
    assert one(m, c) == {"v": 1, "driver": "ann"}
    assert one(m, {**c, "method": "last"}) == {"v": 3, "driver": "bob"}


def test_specified_active_and_geofence_counters():
    c = [
        {"name": "kind", "type": "specified", "value": {"a": [1, 2]}},
        {"name": "open", "type": "active"},
    ]
    sel = {"type": "expression", "expression": "v > 0"}
    a, b = counters(msgs([1, 0, 1]), *c, selector=sel)
    assert a["kind"] == {"a": [1, 2]} and a["open"] is False and b["open"] is True


def test_accumulator_running_total_with_daily_reset():
    day = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    times = [day - 30, day - 20, day - 10, day + 5, day + 10, day + 20]
    values = [1, 0, 1, 0, 1, 1]
    sel = {"type": "expression", "expression": "v > 0"}
    c = [
        {"name": "n", "type": "expression", "expression": "v", "method": "summary"},
        {"name": "total", "type": "accumulator", "counter": "n"},
        {"name": "today", "type": "accumulator", "counter": "n", "reset_interval": "day"},
    ]
    result = counters(msgs(values, times=times), *c, selector=sel)
    assert [(i["n"], i["total"], i["today"]) for i in result] == [
        (1.0, 1.0, 1.0),
        (1.0, 2.0, 2.0),
        (2.0, 4.0, 2.0),
    ]


def test_validate_interval_sees_counters_and_previous():
    sel = {"type": "expression", "expression": "v > 0"}
    c = [{"name": "n", "type": "expression", "expression": "v", "method": "summary"}]
    calc = one_selector(sel, counters=c, validate_interval="n > 1")
    result = calculate(msgs([1, 0, 2, 0, 3]), calc)
    assert [i["n"] for i in result] == [2.0, 3.0]
    # previous() in validate_interval is the previous kept interval.
    calc = one_selector(sel, counters=c, validate_interval="isnull(#n) || n > #n")
    assert [i["n"] for i in calculate(msgs([3, 0, 2, 0, 4, 0, 1]), calc)] == [3.0, 4.0]


def test_counter_names_with_dots_stay_flat():
    c = {"name": "fuel.used", "type": "expression", "expression": "v", "method": "summary"}
    (i,) = counters(msgs([1, 2]), c)
    assert i["fuel.used"] == 3.0
