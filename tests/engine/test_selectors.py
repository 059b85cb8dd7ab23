"""Selectors (DESIGN 7.4), by hand: every option and the edge cases at their thresholds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from analytics.engine import calculate
from tests.support.engine import msgs, one_selector, spans


def expr(**options):
    return one_selector({"type": "expression", "expression": "v > 0", **options})


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


X = ...  # the key is missing: a bare name errors, so the selector's state is unknown


def test_empty_input():
    assert calculate([], expr()) == []
    assert calculate([], one_selector({"type": "datetime", "split": "day"})) == []


def test_boolean_runs_and_single_message_interval():
    result = calculate(msgs([0, 1, 1, 0, 1]), expr())
    assert [(i["begin"], i["end"], i["duration"]) for i in result] == [(1.0, 2.0, 1.0), (4.0, 4.0, 0.0)]
    assert [i["id"] for i in result] == [1_000_000, 4_000_000]


def test_unknown_breaks_a_run_without_merge_unknown():
    assert spans(msgs([1, 1, X, 1]), expr()) == [(0, 1), (3, 3)]


def test_merge_unknown_inside_and_at_the_end():
    assert spans(msgs([1, X, 1]), expr(merge_unknown=True)) == [(0, 2)]
    assert spans(msgs([1, X, X]), expr(merge_unknown=True)) == [(0, 2)]
    assert spans(msgs([X, 1]), expr(merge_unknown=True)) == [(1, 1)]  # not before a run
    assert spans(msgs([1, X, 0, 1]), expr(merge_unknown=True)) == [(0, 1), (3, 3)]


def test_invert_swaps_on_and_off_but_not_unknown():
    assert spans(msgs([1, 0, 0, 1]), expr(invert=True)) == [(1, 2)]
    assert spans(msgs([1, X, 0]), expr(invert=True)) == [(2, 2)]
    assert spans(msgs([0, X, 1]), expr(invert=True, merge_unknown=True)) == [(0, 1)]


def test_max_messages_time_diff_splits_only_beyond_the_threshold():
    times = [0, 10, 20, 50, 60]
    assert spans(msgs([1] * 5, times=times), expr(max_messages_time_diff=10)) == [(0, 20), (50, 60)]
    assert spans(msgs([1] * 5, times=times), expr(max_messages_time_diff=30)) == [(0, 60)]
    assert spans(msgs([1] * 5, times=times), expr(max_messages_time_diff=0)) == [(0, 60)]


def test_min_active_drops_short_runs_and_keeps_the_exact_threshold():
    times = [0, 4, 5, 10, 20]
    values = [1, 1, 0, 1, 1]
    assert spans(msgs(values, times=times), expr(min_active=10)) == [(10, 20)]
    assert spans(msgs(values, times=times), expr(min_active=4)) == [(0, 4), (10, 20)]
    assert spans(msgs(values, times=times), expr(min_active=11)) == []


def test_max_inactive_joins_at_the_exact_threshold():
    times = [0, 4, 5, 10, 11]
    values = [1, 1, 0, 1, 1]
    assert spans(msgs(values, times=times), expr(max_inactive=6)) == [(0, 11)]
    assert spans(msgs(values, times=times), expr(max_inactive=5.9)) == [(0, 4), (10, 11)]


def test_min_active_applies_before_max_inactive():
    # A one-message blip at t=0 is noise; it must not pull the run at 5..20 back to 0.
    times = [0, 1, 5, 20]
    values = [1, 0, 1, 1]
    assert spans(msgs(values, times=times), expr(min_active=1, max_inactive=10)) == [(5, 20)]
    assert spans(msgs(values, times=times), expr(max_inactive=10)) == [(0, 20)]


def test_max_inactive_after_time_diff_split():
    # Option 5 comes after option 3: a split run is joined again when the gap is short enough.
    times = [0, 1, 31, 32]
    assert spans(msgs([1] * 4, times=times), expr(max_messages_time_diff=20)) == [(0, 1), (31, 32)]
    assert spans(msgs([1] * 4, times=times), expr(max_messages_time_diff=20, max_inactive=30)) == [(0, 32)]


def test_merge_message_before_and_after():
    values = [0, 1, 1, 0]
    assert spans(msgs(values), expr(merge_message_before=True)) == [(0, 2)]
    assert spans(msgs(values), expr(merge_message_after=True)) == [(1, 3)]
    assert spans(msgs(values), expr(merge_message_before=True, merge_message_after=True)) == [(0, 3)]
    # Nothing to take at the edges of the stream.
    assert spans(msgs([1, 1]), expr(merge_message_before=True, merge_message_after=True)) == [(0, 1)]


def test_min_duration_drops_short_intervals_and_keeps_the_threshold():
    values = [1, 0, 1, 1, 0]
    assert spans(msgs(values), expr(min_duration=1)) == [(2, 3)]
    assert spans(msgs(values), expr(min_duration=0)) == [(0, 0), (2, 3)]
    # min_duration sees the interval after the merge options.
    assert spans(msgs(values), expr(min_duration=1, merge_message_after=True)) == [(0, 1), (2, 4)]


def test_change_method_each_run_of_equal_values():
    calc = one_selector({"type": "expression", "expression": "$v", "method": "change"})
    values = ["a", "a", "b", "b", None, "b", 1, 1.0, True]
    assert spans(msgs(values), calc) == [(0, 1), (2, 3), (5, 5), (6, 7), (8, 8)]


def test_change_method_unknown_and_max_inactive_join_equal_values_only():
    base = {"type": "expression", "expression": "v", "method": "change"}
    values = ["a", X, "a", "b"]
    assert spans(msgs(values), one_selector(base)) == [(0, 0), (2, 2), (3, 3)]
    assert spans(msgs(values), one_selector({**base, "merge_unknown": True})) == [(0, 2), (3, 3)]
    assert spans(msgs(values), one_selector({**base, "max_inactive": 5})) == [(0, 2), (3, 3)]


def test_datetime_day_split_utc():
    times = [
        ts("2024-05-01T22:00:00"),
        ts("2024-05-01T23:59:59"),
        ts("2024-05-02T00:00:00"),
        ts("2024-05-02T08:00:00"),
    ]
    calc = one_selector({"type": "datetime", "split": "day"})
    assert spans(msgs([1] * 4, times=times), calc) == [(times[0], times[1]), (times[2], times[3])]


@pytest.mark.parametrize(
    ("day", "first_utc", "last_utc", "hours"),
    [
        # Spring forward: the local day 2024-03-31 in Berlin lasts 23 hours.
        ("2024-03-31", "2024-03-30T23:00:00", "2024-03-31T22:00:00", 23),
        # Fall back: the local day 2024-10-27 lasts 25 hours.
        ("2024-10-27", "2024-10-26T22:00:00", "2024-10-27T23:00:00", 25),
    ],
)
def test_datetime_day_split_on_dst_days(day, first_utc, last_utc, hours):
    start = ts(first_utc) - 3 * 3600
    times = [start + h * 3600 for h in range(hours + 8)]  # hourly, on the hour (UTC)
    calc = one_selector({"type": "datetime", "split": "day"}, timezone="Europe/Berlin")
    result = calculate(msgs([1] * len(times), times=times), calc)
    middle = result[1]
    assert (middle["begin"], middle["end"]) == (ts(first_utc), ts(last_utc) - 3600)
    assert middle["duration"] == (hours - 1) * 3600
    assert len(result) == 3


def test_datetime_hour_split_repeated_hour_at_fall_back():
    # 00:30Z and 01:30Z on 2024-10-27 are both 02:30 in Berlin (CEST, then CET).
    times = [ts("2024-10-27T00:30:00"), ts("2024-10-27T00:40:00"), ts("2024-10-27T01:30:00")]
    calc = one_selector({"type": "datetime", "split": "hour"}, timezone="Europe/Berlin")
    assert spans(msgs([1] * 3, times=times), calc) == [(times[0], times[1]), (times[2], times[2])]


@pytest.mark.parametrize(
    ("split", "boundary"),
    [
        ("hour", "2024-05-01T13:00:00"),
        ("week", "2024-05-06T00:00:00"),  # a Monday
        ("month", "2024-06-01T00:00:00"),
        ("year", "2025-01-01T00:00:00"),
    ],
)
def test_datetime_other_splits(split, boundary):
    b = ts(boundary)
    times = [b - 2, b - 1, b, b + 1]
    calc = one_selector({"type": "datetime", "split": split})
    assert spans(msgs([1] * 4, times=times), calc) == [(b - 2, b - 1), (b, b + 1)]


def test_datetime_active_until_the_period_ends_by_wall_clock():
    times = [ts("2024-05-01T10:00:00"), ts("2024-05-01T11:00:00")]
    calc = one_selector({"type": "datetime", "split": "day"}, counters=[{"name": "open", "type": "active"}])
    assert calculate(msgs([1, 1], times=times), calc, now=ts("2024-05-01T23:00:00"))[0]["open"] is True
    result = calculate(msgs([1, 1], times=times), calc, now=ts("2024-05-02T00:00:01"))
    assert result[0]["open"] is False
    assert result.active_id is None


CIRCLE = {"type": "circle", "name": "depot", "center": {"lat": 52.0, "lon": 0.0}, "radius": 1.0}
SQUARE = {
    "type": "polygon",
    "name": "yard",
    "path": [
        {"lat": 52.1, "lon": 0.1},
        {"lat": 52.1, "lon": 0.2},
        {"lat": 52.2, "lon": 0.2},
        {"lat": 52.2, "lon": 0.1},
    ],
}


def pos(lat, lon, t):
    m = {"timestamp": float(t)}
    if lat is not None:
        m["position.latitude"] = lat
        m["position.longitude"] = lon
    return m


def test_geofence_circle_and_polygon():
    calc = one_selector(
        {"type": "geofence", "geofences": [CIRCLE, SQUARE]}, counters=[{"name": "zone", "type": "geofence"}]
    )
    track = [
        pos(52.0, 0.0, 0),  # depot centre
        pos(52.005, 0.0, 1),  # 0.56 km from the centre: inside
        pos(52.02, 0.0, 2),  # 2.2 km: outside
        pos(52.15, 0.15, 3),  # yard
        pos(52.15, 0.25, 4),  # east of the yard
    ]
    result = calculate(track, calc)
    assert [(i["begin"], i["end"], i["zone"]) for i in result] == [(0, 1, "depot"), (3, 3, "yard")]


def test_geofence_without_position_is_unknown():
    sel = {"type": "geofence", "geofences": [CIRCLE]}
    track = [pos(52.0, 0.0, 0), pos(None, None, 1), pos(52.0, 0.0, 2)]
    assert spans(track, one_selector(sel)) == [(0, 0), (2, 2)]
    assert spans(track, one_selector({**sel, "merge_unknown": True})) == [(0, 2)]
    assert spans(track, one_selector({**sel, "invert": True})) == []


def test_inactive_gaps_longer_than_the_threshold():
    times = [0, 10, 20, 50, 51, 111]
    calc = one_selector({"type": "inactive", "delay_threshold": 30})
    assert spans(msgs([1] * 6, times=times), calc) == [(51, 111)]
    calc = one_selector({"type": "inactive", "delay_threshold": 29.5})
    assert spans(msgs([1] * 6, times=times), calc) == [(20, 50), (51, 111)]


def test_several_selectors_overlap():
    day = ts("2024-05-01T00:00:00")
    times = [day - 20, day - 10, day + 10, day + 20, day + 30]
    calc = {
        "name": "trips per day",
        "selectors": [{"type": "expression", "expression": "v > 0"}, {"type": "datetime", "split": "day"}],
    }
    # One trip across midnight becomes two intervals, one per day.
    assert spans(msgs([1, 1, 1, 1, 0], times=times), calc) == [(day - 20, day - 10), (day + 10, day + 20)]


def test_validate_message_ignores_messages_entirely():
    calc = expr(max_messages_time_diff=2)
    calc["validate_message"] = "$bad != true"
    values = msgs([1, 1, 1, 1])
    values[1]["bad"] = True
    values[2]["bad"] = True
    # Messages 1 and 2 are not there at all: the gap 0 -> 3 splits the run.
    assert spans(values, calc) == [(0, 0), (3, 3)]


def test_validate_interval_drops_intervals():
    calc = expr()
    calc["validate_interval"] = "duration >= 1"
    assert spans(msgs([1, 0, 1, 1]), calc) == [(2, 3)]


def test_active_interval_and_max_inactive_by_wall_clock():
    calc = expr(max_inactive=60)
    result = calculate(msgs([0, 1, 1]), calc)
    assert result.active_id == result[-1]["id"]
    assert calculate(msgs([0, 1, 1]), calc, now=62.0).active_id == result[-1]["id"]
    assert calculate(msgs([0, 1, 1]), calc, now=62.5).active_id is None
    # Closed by an off message, or by merge_message_after taking it.
    assert calculate(msgs([1, 1, 0]), calc).active_id is None
    assert calculate(msgs([1, 1, 0]), expr(merge_message_after=True)).active_id is None


def test_active_deadline_for_the_wall_clock_sweep():
    from analytics.engine import active_deadline

    day = one_selector({"type": "datetime", "split": "day"}, timezone="Europe/Berlin")
    newest = ts("2024-03-30T12:00:00")
    deadline = active_deadline(day, newest=newest)
    assert deadline == ts("2024-03-30T23:00:00")  # local midnight before the DST night
    assert calculate(msgs([1], times=[newest]), day, now=deadline - 0.001).active_id is not None
    assert calculate(msgs([1], times=[newest]), day, now=deadline).active_id is None
    trips = expr(max_inactive=60)
    deadline = active_deadline(trips, newest=100.0)
    assert 160.0 < deadline < 160.001
    assert calculate(msgs([1], times=[100.0]), trips, now=160.0).active_id is not None
    assert calculate(msgs([1], times=[100.0]), trips, now=deadline).active_id is None
    assert active_deadline(expr(), newest=100.0) is None
