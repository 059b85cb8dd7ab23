"""Extending the active interval from the previous recalculation's tail (docs/engine.md,
"Extending the active interval"): whatever arrives, in whatever order, the intervals equal a
calculation from scratch, field by field; appended messages that keep the interval active are
read alone; anything else falls back to the window."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.engine import MemoryStore, Messages, calculate, compile_calculator
from analytics.engine.recalculate import TAIL_MESSAGES, extendable
from tests.engine.test_recalculate import (
    BASE_COUNTERS,
    CROSS_COUNTERS,
    EXAMPLES,
    GEOFENCE,
    T0,
    TRIPS,
    _apply_batch,
    _current,
    _time,
    boolean_selector,
    calculators,
    message,
    synthetic,
)

# Values that keep most selectors on for long stretches, with the odd one that does not.
_on_value = st.sampled_from([*[7] * 24, 3, 1, None, "x", ...])


@st.composite
def moving(draw):
    """A message of a moving vehicle: mostly with a fix (a step of 0 to 20 grid points from the
    start), rarely a flagged one."""
    body = {}
    value = draw(_on_value)
    if value is not ...:
        body["v"] = value
    if draw(st.integers(0, 19)) > 1:
        body["position.latitude"] = 50.0 + draw(st.integers(0, 20)) * 0.001
        body["position.longitude"] = 10.0 + draw(st.integers(0, 20)) * 0.001
    if draw(st.integers(0, 29)) == 0:
        body["bad"] = True
    return body


@st.composite
def appending(draw):
    """Messages arriving mostly in time order, in batches of one to three, with the odd late
    message, resent message or deletion among them."""
    count = draw(st.integers(2, 50))
    slots = sorted(draw(st.lists(st.integers(0, 119), min_size=count, max_size=count, unique=True)))
    ops = []
    for slot in slots:
        body = {**draw(moving()), "timestamp": _time(slot)}
        ops.append(body)
        kind = draw(st.integers(0, 29))
        if kind == 0:  # a late message before the newest
            late = draw(message())
            late["timestamp"] = _time(draw(st.integers(0, slot)))
            ops.append(late)
        elif kind == 1:  # a deletion
            ops.append(("delete", draw(st.integers(0, slot))))
        elif kind == 2:  # the newest again, changed
            ops.append({**body, "v": draw(_on_value.filter(lambda v: v is not ...))})
    batches = []
    at = 0
    while at < len(ops):
        size = draw(st.integers(1, 3))
        batches.append(ops[at: at + size])
        at += size
    return batches


@st.composite
def extendable_calculators(draw):
    selector = draw(st.one_of(
        boolean_selector(),
        st.builds(lambda options: {**GEOFENCE, **options}, st.fixed_dictionaries(
            {"merge_unknown": st.booleans(), "max_inactive": st.sampled_from([0, 40])}
        )),
    ))
    for option in ("merge_message_before", "merge_message_after", "invert"):
        selector[option] = draw(st.sampled_from([False, False, False, True]))
    if "max_active" in selector:
        selector["max_active"] = draw(st.sampled_from([0, 0, 0, 300]))
        selector["max_messages_time_diff"] = draw(st.sampled_from([0, 0, 0, 100]))
    if "validate_message" in selector:
        selector["validate_message"] = draw(st.sampled_from([None, None, None, "$v != 1"]))
    counters = list(BASE_COUNTERS)
    if draw(st.booleans()):
        counters += CROSS_COUNTERS
    if draw(st.booleans()):
        counters.append({"name": "values", "type": "dataset", "fields": [{"name": "v", "value": "v"}]})
        counters.append({"name": "last", "type": "message", "fields": ["v"], "method": "last"})
        counters.append({"name": "span", "type": "parameter", "parameter": "v", "method": "difference"})
        counters.append({"name": "began", "type": "datetime", "interval": "begin"})
        counters.append({"name": "ended", "type": "datetime", "interval": "end"})
    if draw(st.booleans()):  # every other reduction, a counter's own validate_message, constants
        counters.append({"name": "first_v", "type": "parameter", "parameter": "v", "method": "first"})
        counters.append({"name": "last_v", "type": "parameter", "parameter": "v", "method": "last"})
        counters.append({"name": "bottom", "type": "expression", "expression": "v - #v", "method": "minimum"})
        counters.append({"name": "fixes", "type": "expression", "expression": "1", "method": "summary",
                         "validate_message": "exists('position.latitude')"})
        counters.append({"name": "fast_km", "type": "expression", "expression": "mileage()", "method": "summary",
                         "validate_message": "$v > 2"})
        counters.append({"name": "fast_route", "type": "route", "validate_message": "$v > 2"})
        counters.append({"name": "start", "type": "message", "fields": ["v", "position.latitude"], "method": "first"})
        counters.append({"name": "kind", "type": "specified", "value": "drive"})
    calc = {"name": "extend", "selectors": [selector], "counters": counters}
    if draw(st.integers(0, 2)) == 0:
        calc["validate_message"] = draw(st.sampled_from(["$bad != true", "$bad != true", "!(mileage() > 1.5)"]))
    if draw(st.integers(0, 2)) == 0:
        calc["validate_interval"] = draw(st.sampled_from(["duration >= 2", "duration >= 2", "isnull(#top) || top != #top"]))
    return calc


def _follow(calc, batches, now_after: float | None) -> int:
    """Feed the batches through a store that keeps its tail; after each, the intervals and the
    active one equal a calculation from scratch. Returns how many recalculations extended."""
    state: dict = {}
    store = MemoryStore([], [])
    active = None
    extended = 0
    for batch in batches:
        lo, hi = _apply_batch(state, batch)
        messages = _current(state)
        store.set_messages(messages)
        newest = store.newest
        now = None if now_after is None or newest is None else newest + now_after
        diff = store.recalculate(calc, dirty_begin=lo, dirty_end=hi, now=now, keep_tail=True)
        extended += diff.extended
        store.apply(diff)
        if diff.reached_end:
            active = diff.active_id
        full = calculate(messages, calc, now=now)
        assert store.intervals == list(full)
        assert active == full.active_id
    return extended


_settings = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@_settings
@given(calc_config=extendable_calculators(), batches=appending(), now_after=st.sampled_from([None, 1.0, 30.0, 500.0]))
def test_extending_equals_a_calculation_from_scratch(calc_config, batches, now_after):
    _follow(compile_calculator(calc_config), batches, now_after)


@_settings
@given(calc_config=calculators(), batches=appending())
def test_any_calculator_with_a_kept_tail_equals_a_calculation_from_scratch(calc_config, batches):
    """Calculators that cannot be extended (several selectors, ``change``, ``datetime``,
    ``inactive``, merged neighbours, pieces) keep no tail and recalculate by the window."""
    _follow(compile_calculator(calc_config), batches, None)


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calc_config=extendable_calculators(),
    messages=st.lists(message(), min_size=1, max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_arrival_order_does_not_matter_with_a_kept_tail(calc_config, messages, seed):
    calc = compile_calculator(calc_config)
    order = np.random.default_rng(seed).permutation(len(messages))
    state: dict = {}
    store = MemoryStore([], [])
    for k in order.tolist():
        lo, hi = _apply_batch(state, [messages[k]])
        store.set_messages(_current(state))
        store.apply(store.recalculate(calc, dirty_begin=lo, dirty_end=hi, keep_tail=True))
    assert store.intervals == list(calculate(_current(state), calc))


# ---- deterministic cases -----------------------------------------------------------------


def _trip(seconds: int) -> list[dict]:
    """A drive at 1 Hz heading north-east, speed between 20 and 26."""
    return [
        {"timestamp": T0 + k, "speed": 20.0 + k % 7, "position.latitude": 50.0 + k * 1e-4,
         "position.longitude": 10.0 + k * 1e-4}
        for k in range(seconds)
    ]


def test_each_appended_message_extends_the_trip_reading_only_itself_and_the_last_one():
    calc = compile_calculator(TRIPS)
    messages = _trip(400)
    store = MemoryStore(messages[:100], [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    assert store.tail is not None
    for k in range(100, 400):
        store.set_messages(messages[: k + 1])
        t = messages[k]["timestamp"]
        diff = store.recalculate(calc, dirty_begin=t, dirty_end=t, now=t + 1, keep_tail=True)
        assert diff.extended and diff.messages_read == 2
        assert [interval["id"] for interval in diff.updated] == [store.intervals[-1]["id"]]
        store.apply(diff)
    full = calculate(messages, calc, now=messages[-1]["timestamp"] + 1)
    assert store.intervals == list(full)
    # The tail keeps what the last extension read (the trip's last two messages): what it costs
    # does not grow with the trip.
    assert store.tail is not None and store.tail.rows == 2


# Every counter type over messages that a trip carries on (geofence and calculator counters make a
# calculator not extendable), with values that sums round on, and a counter validating its own.
EVERY_CARRIED = {
    "name": "every counter",
    "selectors": [{"type": "expression", "expression": "speed > 5", "max_inactive": 60}],
    "counters": [
        *({"name": f"{method}_speed", "type": "parameter", "parameter": "speed", "method": method}
          for method in ("first", "last", "minimum", "maximum", "average", "summary", "difference", "distinct")),
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "tenths", "type": "expression", "expression": "speed / 10 + 0.1", "method": "summary"},
        {"name": "fast", "type": "expression", "expression": "speed > 23", "method": "duration"},
        {"name": "fast_km", "type": "expression", "expression": "mileage()", "method": "summary",
         "validate_message": "speed > 22"},
        {"name": "route", "type": "route"},
        {"name": "fast_route", "type": "route", "validate_message": "speed > 22"},
        {"name": "speeds", "type": "dataset", "fields": [{"name": "s", "value": "speed"}]},
        {"name": "began", "type": "datetime", "interval": "begin"},
        {"name": "ended", "type": "datetime", "interval": "end"},
        {"name": "start", "type": "message", "fields": ["speed"], "method": "first"},
        {"name": "finish", "type": "message", "fields": ["speed"], "method": "last"},
        {"name": "jump", "type": "message", "fields": ["speed"], "method": "maximum", "extremum": "speed - #speed"},
        {"name": "kind", "type": "specified", "value": "drive"},
        {"name": "open", "type": "active"},
        {"name": "total", "type": "accumulator", "counter": "km"},
    ],
}


def test_every_counter_type_is_carried_on_to_the_bit():
    """Each appended message extends the trip from the counters' states alone, and after each the
    trip equals a calculation from scratch in every field, floats to the last bit."""
    calc = compile_calculator(EVERY_CARRIED)
    messages = _trip(300)
    store = MemoryStore(messages[:40], [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    for k in range(40, 300):
        store.set_messages(messages[: k + 1])
        moment = messages[k]["timestamp"]
        diff = store.recalculate(calc, dirty_begin=moment, dirty_end=moment, now=moment + 1, keep_tail=True)
        assert diff.extended, k
        store.apply(diff)
        full = calculate(messages[: k + 1], calc, now=moment + 1)
        assert [json.dumps(interval, sort_keys=True) for interval in store.intervals] == [
            json.dumps(interval, sort_keys=True) for interval in full
        ]


def test_sums_are_added_in_message_order_from_zero():
    """A sum is the one a running total gives (so that carrying it on gives the same bits)."""
    calc = {"name": "sum", "selectors": [{"type": "expression", "expression": "true"}],
            "counters": [{"name": "total", "type": "parameter", "parameter": "x", "method": "summary"}]}
    rng = np.random.default_rng(5)
    for count in (3, 9, 33, 100, 1_000):
        values = (rng.random(count) * 1e3 - 100).tolist()
        running = 0.0
        for value in values:
            running += value
        messages = [{"timestamp": T0 + k, "x": value} for k, value in enumerate(values)]
        assert calculate(messages, calc)[0]["total"] == running


def test_a_tail_keeps_at_most_its_last_messages_and_a_range_reaching_further_back_takes_the_window():
    calc = compile_calculator(TRIPS)
    messages = _trip(400)
    store = MemoryStore(messages, [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    assert store.tail is not None and store.tail.rows == TAIL_MESSAGES
    messages.append(_trip(401)[-1])
    store.set_messages(messages)
    # Unchanged messages, but from before the kept ones: they cannot be compared.
    diff = store.recalculate(calc, dirty_begin=messages[10]["timestamp"], dirty_end=messages[-1]["timestamp"],
                             keep_tail=True)
    assert not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))


def test_a_late_message_inside_the_trip_falls_back_to_the_window():
    calc = compile_calculator(TRIPS)
    messages = _trip(300)
    store = MemoryStore(messages, calculate(messages, calc))
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    late = {"timestamp": T0 + 150.5, "speed": 90.0, "position.latitude": 50.2, "position.longitude": 10.2}
    messages = sorted([*messages, late], key=lambda message: message["timestamp"])
    store.set_messages(messages)
    diff = store.recalculate(calc, dirty_begin=late["timestamp"], dirty_end=late["timestamp"], keep_tail=True)
    assert not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))
    assert store.intervals[-1]["vmax"] == 90.0
    # and the tail is back: the next appended message extends again
    messages.append({**_trip(301)[-1]})
    store.set_messages(messages)
    t = messages[-1]["timestamp"]
    diff = store.recalculate(calc, dirty_begin=t, dirty_end=t, keep_tail=True)
    assert diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))


def test_a_stop_ends_the_trip_by_the_window():
    calc = compile_calculator(TRIPS)
    messages = _trip(200)
    store = MemoryStore(messages, calculate(messages, calc))
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    stopped = {**messages[-1], "timestamp": T0 + 200, "speed": 0.0}
    messages.append(stopped)
    store.set_messages(messages)
    diff = store.recalculate(calc, dirty_begin=stopped["timestamp"], dirty_end=stopped["timestamp"],
                             now=stopped["timestamp"], keep_tail=True)
    assert not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc, now=stopped["timestamp"]))


def test_a_tail_that_no_longer_matches_the_stored_intervals_is_not_used():
    """Stored intervals changed by someone else (another host, a reload): the window decides."""
    calc = compile_calculator(TRIPS)
    messages = _trip(200)
    store = MemoryStore(messages, calculate(messages, calc))
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    store.intervals[-1] = {**store.intervals[-1], "km": 0.0}
    messages.append(_trip(201)[-1])
    store.set_messages(messages)
    t = messages[-1]["timestamp"]
    diff = store.recalculate(calc, dirty_begin=t, dirty_end=t, keep_tail=True)
    assert not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))


def test_another_compilation_of_the_calculator_keeps_no_tail():
    calc = compile_calculator(TRIPS)
    messages = _trip(100)
    store = MemoryStore(messages, [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    messages.append(_trip(101)[-1])
    store.set_messages(messages)
    t = messages[-1]["timestamp"]
    diff = store.recalculate(compile_calculator(TRIPS), dirty_begin=t, dirty_end=t, keep_tail=True)
    assert not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))


def test_what_can_be_extended():
    assert extendable(compile_calculator(TRIPS))
    two = {**TRIPS, "selectors": [*TRIPS["selectors"], {"type": "datetime", "split": "day"}]}
    assert not extendable(compile_calculator(two))
    merged = {**TRIPS, "selectors": [{**TRIPS["selectors"][0], "merge_message_after": True}]}
    assert not extendable(compile_calculator(merged))
    pieces = {**TRIPS, "selectors": [{**TRIPS["selectors"][0], "max_active": 600}]}
    assert not extendable(compile_calculator(pieces))
    zones = {"name": "z", "selectors": [GEOFENCE], "counters": [{"name": "zone", "type": "geofence"}]}
    assert not extendable(compile_calculator(zones))
    assert extendable(compile_calculator({**zones, "counters": [{"name": "route", "type": "route"}]}))
    # A chained calculator's intervals depend on another calculator's, not only on its messages.
    stops_in_trips = {**TRIPS, "selectors": [{"type": "calc", "calc_id": 7}]}
    assert not extendable(compile_calculator(stops_in_trips))
    counting = {**TRIPS, "counters": [{"name": "stops", "type": "calculator", "calc_id": 7, "method": "count"}]}
    assert not extendable(compile_calculator(counting))
    daily = {**TRIPS, "messages_source": {"source": "calculator", "calculator_id": 7}}
    assert not extendable(compile_calculator(daily))


def test_a_long_history_then_appends_equal_the_full_calculation():
    """The synthetic day of drives and parkings, the last half appended one message at a time."""
    all_messages = synthetic(6_000)
    calc = compile_calculator(TRIPS)
    head = all_messages.slice(0, 3_000)
    store = MemoryStore(head, calculate(head, calc))
    extended = 0
    for k in range(3_000, 6_000):
        store.set_messages(all_messages.slice(0, k + 1))
        t = float(all_messages.timestamps[k])
        diff = store.recalculate(calc, dirty_begin=t, dirty_end=t, now=t, keep_tail=True)
        extended += diff.extended
        store.apply(diff)
    assert store.intervals == list(calculate(all_messages, calc, now=float(all_messages.timestamps[-1])))
    assert extended > 1_000  # the drives extend; the parkings recalculate their small windows
    assert isinstance(store.messages, Messages)


def test_a_changed_range_reaching_back_into_the_trip_extends_when_those_messages_are_unchanged():
    """A worker's pending range is kept whole when messages arrive during a run: the next run's
    range then starts at messages the tail already holds. Unchanged, they still extend."""
    calc = compile_calculator(TRIPS)
    messages = _trip(200)
    store = MemoryStore(messages, [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    messages.append(_trip(201)[-1])
    store.set_messages(messages)
    reaching_back = messages[-4]["timestamp"]
    diff = store.recalculate(calc, dirty_begin=reaching_back, dirty_end=messages[-1]["timestamp"], keep_tail=True)
    assert diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))


@pytest.mark.parametrize("change", ["changed", "deleted", "inserted"])
def test_a_changed_range_reaching_back_into_the_trip_with_a_change_in_it_falls_back(change):
    calc = compile_calculator(TRIPS)
    messages = _trip(200)
    store = MemoryStore(messages, [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    at = messages[-3]["timestamp"]
    if change == "changed":
        messages[-3] = {**messages[-3], "speed": 99.0}
    elif change == "deleted":
        del messages[-3]
    else:
        messages.insert(-2, {**messages[-3], "timestamp": at + 0.5, "speed": 99.0})
    messages.append(_trip(201)[-1])
    messages.sort(key=lambda message: message["timestamp"])
    store.set_messages(messages)
    diff = store.recalculate(calc, dirty_begin=at, dirty_end=messages[-1]["timestamp"], keep_tail=True)
    assert not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc))


def test_a_polyline_continued_from_its_last_point_is_the_whole_polyline():
    from analytics.engine.geo import encode_polyline_continued, encode_polyline_segments

    rng = np.random.default_rng(3)
    start = np.zeros(1, dtype=np.int64)
    for _ in range(500):
        count = int(rng.integers(1, 30))
        lat, lon = rng.uniform(-90, 90, count), rng.uniform(-180, 180, count)
        cut = int(rng.integers(0, count))
        head = encode_polyline_segments(lat[:cut], lon[:cut], start)[0] if cut else ""
        after = (float(lat[cut - 1]), float(lon[cut - 1])) if cut else None
        assert head + encode_polyline_continued(lat[cut:].tolist(), lon[cut:].tolist(), after) == (
            encode_polyline_segments(lat, lon, start)[0]
        )
    # Google's example: (38.5, -120.2), (40.7, -120.95), (43.252, -126.453)
    assert encode_polyline_continued([38.5, 40.7, 43.252], [-120.2, -120.95, -126.453], None) == "_p~iF~ps|U_ulLnnqC_mqNvxq`@"


def test_a_wall_clock_range_just_after_the_newest_extends_without_reading_the_trip_again():
    """The worker arms a trip's closing by ``max_inactive`` with a range just after its newest
    message: a message appended before that timer runs merges into it, and the run extends reading
    only the new message and the last one (the newest counts as unchanged)."""
    calc = compile_calculator(TRIPS)
    messages = _trip(200)
    store = MemoryStore(messages, [])
    store.apply(store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, keep_tail=True))
    sweep = math.nextafter(messages[-1]["timestamp"], math.inf)
    messages.append(_trip(201)[-1])
    store.set_messages(messages)
    newest = messages[-1]["timestamp"]
    diff = store.recalculate(calc, dirty_begin=sweep, dirty_end=newest, now=newest + 1, keep_tail=True)
    assert diff.extended and diff.messages_read == 2
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc, now=newest + 1))


@pytest.mark.parametrize("keep_tail", [False, True])
def test_a_wall_clock_sweep_just_after_the_newest_closes_the_trip(keep_tail):
    calc = compile_calculator(TRIPS)
    messages = _trip(200)
    store = MemoryStore(messages, [])
    first = store.recalculate(calc, dirty_begin=-np.inf, dirty_end=np.inf, now=T0 + 200, keep_tail=keep_tail)
    assert first.active_id is not None
    store.apply(first)
    sweep = math.nextafter(messages[-1]["timestamp"], math.inf)
    late = messages[-1]["timestamp"] + 3600
    diff = store.recalculate(calc, dirty_begin=sweep, dirty_end=sweep, now=late, keep_tail=keep_tail)
    assert diff.reached_end and diff.active_id is None and not diff.extended
    store.apply(diff)
    assert store.intervals == list(calculate(messages, calc, now=late))
