"""Windowed recalculation (DESIGN 7.6): after any sequence of batches, late messages, duplicates
and deletions, the stored intervals equal a full calculation; diffs are exact; the past freezes;
the window stays near the change."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.engine import MemoryStore, Messages, calculate, compile_calculator, recalculate, same_interval

# `make test` runs a bounded number of examples; FLESPI_SLOW=1 (or ENGINE_EXAMPLES=N) runs more.
EXAMPLES = int(os.environ.get("ENGINE_EXAMPLES", "1000" if os.environ.get("FLESPI_SLOW") else "120"))
T0 = 1714514400.0  # 2024-04-30T22:00:00Z: hour and day boundaries fall inside the streams


# ---- calculators -------------------------------------------------------------------------

_bool = st.booleans()


@st.composite
def boolean_selector(draw):
    return {
        "type": "expression",
        "expression": draw(
            st.sampled_from(
                [
                    "v > 2",
                    "$v > 2",
                    "v > 2 && #v > 0",
                    "mileage() > 0.3",
                    "v != 3",
                    # flespi's functions: error() makes a message unknown
                    "if(v == 7, error(), v > 2)",
                    "isnumber($v) && isnumber(#v)",
                    "json_array_contains(json('[3, 7, \"x\"]'), $v)",
                ]
            )
        ),
        "invert": draw(_bool),
        "merge_unknown": draw(_bool),
        "max_messages_time_diff": draw(st.sampled_from([0, 0, 40, 100])),
        "min_active": draw(st.sampled_from([0, 0, 10, 30])),
        "max_inactive": draw(st.sampled_from([0, 0, 20, 60, 300])),
        "merge_message_before": draw(_bool),
        "merge_message_after": draw(_bool),
        "min_duration": draw(st.sampled_from([0, 0, 5, 20])),
        # flespi's options: a longest interval, and messages the selector ignores
        "max_active": draw(st.sampled_from([0, 0, 0, 40, 300])),
        "validate_message": draw(st.sampled_from([None, None, "$v != 1", "v != 7"])),
    }


@st.composite
def change_selector(draw):
    return {
        "type": "expression",
        "method": "change",
        "expression": draw(st.sampled_from(["v", "$v", "v > 2"])),
        "merge_unknown": draw(_bool),
        "max_inactive": draw(st.sampled_from([0, 50])),
        "merge_message_after": draw(_bool),
    }


GEOFENCE = {
    "type": "geofence",
    "geofences": [
        {"type": "circle", "name": "a", "center": {"lat": 50.0, "lon": 10.0}, "radius": 0.5},
        {
            "type": "polygon",
            "name": "b",
            "path": [
                {"lat": 50.004, "lon": 10.004},
                {"lat": 50.004, "lon": 10.02},
                {"lat": 50.02, "lon": 10.02},
            ],
        },
    ],
}

_selector = st.one_of(
    boolean_selector(),
    boolean_selector(),
    change_selector(),
    st.builds(
        lambda o: {**GEOFENCE, **o},
        st.fixed_dictionaries(
            {
                "merge_unknown": _bool,
                "max_inactive": st.sampled_from([0, 40]),
                "merge_message_before": _bool,
                "max_active": st.sampled_from([0, 0, 60]),
            }
        ),
    ),
    st.sampled_from(
        [
            {"type": "datetime", "split": "hour"},
            {"type": "datetime", "split": "day"},
            {"type": "datetime", "split": "hour", "merge_message_after": True},
            {"type": "datetime", "split": "day", "merge_message_before": True},
            {"type": "datetime"},
            {"type": "inactive", "delay_threshold": 60},
        ]
    ),
)

BASE_COUNTERS = [
    {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
    {"name": "top", "type": "parameter", "parameter": "v", "method": "maximum"},
    {"name": "avg", "type": "expression", "expression": "v * 1.5", "method": "average"},
    {"name": "up", "type": "expression", "expression": "v > 2", "method": "duration"},
    {"name": "route", "type": "route"},
    {"name": "seen", "type": "parameter", "parameter": "v", "method": "distinct"},
    {"name": "open", "type": "active"},
    # flespi's counter options: the message at an extremum, datasets with and without unknowns
    {"name": "jump", "type": "message", "fields": ["v", "bad"], "method": "maximum", "extremum": "v - #v"},
    {"name": "low", "type": "message", "fields": ["v"], "method": "minimum", "extremum": "$v"},
    {"name": "rows", "type": "dataset", "fields": [{"name": "x", "value": "6 / v"}]},
    {
        "name": "all_rows",
        "type": "dataset",
        "allow_unknown": True,
        "fields": [{"name": "x", "value": "6 / v"}, {"name": "s", "value": "isstring($v)"}],
    },
]
CROSS_COUNTERS = [
    {"name": "total", "type": "accumulator", "counter": "km"},
    {"name": "daily", "type": "accumulator", "counter": "km", "reset_interval": "day"},
    {
        "name": "since",
        "type": "accumulator",
        "counter": "km",
        "reset_expression": "previous('since') > 1 || up > 20",
    },
    {"name": "growth", "type": "interval", "expression": "duration - previous('duration')"},
]


@st.composite
def calculators(draw):
    selectors = draw(st.lists(_selector, min_size=1, max_size=2))
    counters = list(BASE_COUNTERS)
    if draw(_bool):
        counters += CROSS_COUNTERS
    calc = {"name": "prop", "selectors": selectors, "counters": counters}
    if draw(_bool):
        calc["validate_message"] = draw(
            st.sampled_from(["$bad != true", "!($v == #v)", "!(mileage() > 1.5)"])
        )
    if draw(_bool):
        calc["validate_interval"] = draw(st.sampled_from(["duration >= 2", "isnull(#top) || top != #top"]))
    return calc


# ---- message streams and batches ---------------------------------------------------------

_v = st.sampled_from([0, 1, 3, 7, 7, 3, ..., "x", None])
_slot = st.integers(0, 119)  # timestamp slots; gaps between slots vary (see _time)
_GAPS = np.cumsum(np.resize([1, 1, 5, 30, 2, 90, 1, 400, 3, 45, 1, 1000], 120))


def _time(slot: int) -> float:
    return T0 + float(_GAPS[slot])


@st.composite
def message(draw):
    slot = draw(_slot)
    m = {"timestamp": _time(slot)}
    v = draw(_v)
    if v is not ...:
        m["v"] = v
    if draw(st.integers(0, 9)) > 2:  # position-less messages between fixes (CAN data, events)
        m["position.latitude"] = 50.0 + draw(st.integers(0, 20)) * 0.001
        m["position.longitude"] = 10.0 + draw(st.integers(0, 20)) * 0.001
    if draw(st.integers(0, 9)) == 0:
        m["bad"] = True
    return m


_op = st.one_of(message(), message(), message(), st.tuples(st.just("delete"), _slot))
_batches = st.lists(st.lists(_op, min_size=1, max_size=12), min_size=1, max_size=8)


def _apply_batch(state: dict, batch) -> tuple[float, float]:
    touched = []
    for op in batch:
        if isinstance(op, tuple):
            t = _time(op[1])
            state.pop(t, None)
        else:
            t = op["timestamp"]
            state[t] = {**state.get(t, {}), **op}  # equal timestamps merge (DESIGN 7.1)
        touched.append(t)
    return min(touched), max(touched)


def _current(state: dict) -> list[dict]:
    return [state[t] for t in sorted(state)]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(calc_config=calculators(), batches=_batches, late_now=st.booleans())
def test_windowed_recalculation_equals_full_calculation(calc_config, batches, late_now):
    calc = compile_calculator(calc_config)
    now = T0 + 10**6 if late_now else None
    state: dict = {}
    store = MemoryStore([], [])
    active = None
    for batch in batches:
        lo, hi = _apply_batch(state, batch)
        messages = _current(state)
        old = {i["id"]: i for i in store.intervals}
        store.set_messages(messages)
        diff = store.recalculate(calc, dirty_begin=lo, dirty_end=hi, now=now)
        # The diff names only real changes (DESIGN 7.6 point 5).
        assert all(i["id"] not in old for i in diff.created)
        assert all(i["id"] in old and not same_interval(calc, i, old[i["id"]]) for i in diff.updated)
        assert all(i["id"] in old for i in diff.deleted)
        store.apply(diff)
        if diff.reached_end:
            active = diff.active_id
        full = calculate(messages, calc, now=now)
        assert store.intervals == list(full)
        assert active == full.active_id


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calc_config=calculators(),
    messages=st.lists(message(), min_size=1, max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_arrival_order_does_not_matter(calc_config, messages, seed):
    """The same messages, one by one in a random order, end where a full calculation is."""
    calc = compile_calculator(calc_config)
    order = np.random.default_rng(seed).permutation(len(messages))
    state: dict = {}
    store = MemoryStore([], [])
    for k in order.tolist():
        lo, hi = _apply_batch(state, [messages[k]])
        store.set_messages(_current(state))
        store.apply(store.recalculate(calc, dirty_begin=lo, dirty_end=hi))
    assert store.intervals == list(calculate(_current(state), calc))


# ---- deterministic cases -----------------------------------------------------------------

TRIPS = {
    "name": "trips",
    "selectors": [
        {
            "type": "expression",
            "expression": "speed > 5",
            "merge_unknown": True,
            "max_messages_time_diff": 300,
            "min_active": 30,
            "max_inactive": 120,
            "min_duration": 60,
        }
    ],
    "counters": [
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "route", "type": "route"},
        {"name": "vmax", "type": "parameter", "parameter": "speed", "method": "maximum"},
    ],
}


def synthetic(n: int, seed: int = 1) -> Messages:
    """1 Hz messages: blocks of 600 s driving or parked."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(n, dtype=float)
    driving = np.repeat(rng.random(n // 600 + 1) < 0.5, 600)[:n]
    speed = np.where(driving, rng.uniform(10, 90, n), rng.uniform(0, 3, n))
    lat = 50 + np.cumsum(rng.normal(0, 1e-4, n))
    lon = 10 + np.cumsum(rng.normal(0, 1e-4, n))
    return Messages.from_columns(ts, {"speed": speed, "position.latitude": lat, "position.longitude": lon})


def test_a_window_never_ends_inside_an_inactive_gap():
    # The inactive interval [36, 128] holds the message at 36 only because of the one at 128: a
    # window ending between them (the change selector is cut cleanly there) lost the overlap [36, 36].
    calc = compile_calculator(
        {
            "name": "gap",
            "selectors": [
                {"type": "inactive", "delay_threshold": 60},
                {"type": "expression", "method": "change", "expression": "v", "merge_message_after": True},
            ],
        }
    )
    t = T0 + 1
    messages = [
        {"timestamp": t, "v": 0},
        {"timestamp": t + 1, "v": 0},
        {"timestamp": t + 6, "v": 0},
        {"timestamp": t + 36},
        {"timestamp": t + 128},
    ]
    full = list(calculate(messages, calc))
    assert [(i["begin"] - t, i["end"] - t) for i in full] == [(36.0, 36.0)]
    store = MemoryStore(messages, full)
    diff = store.recalculate(calc, dirty_begin=t, dirty_end=t)
    assert not diff
    store.apply(diff)
    assert store.intervals == full


def test_a_window_never_ends_between_a_run_and_the_message_merge_message_before_takes():
    # The geofence run [t+1] takes t by merge_message_before; the inactive gap [0, t] makes the
    # calculator's interval [t, t]. A window ending between t and t+1 (the inactive selector is
    # cut cleanly there) did not see why t belongs to the geofence run.
    calc = compile_calculator(
        {
            "name": "visit",
            "selectors": [
                {
                    "type": "geofence",
                    "merge_message_before": True,
                    "geofences": [
                        {"type": "circle", "name": "a", "center": {"lat": 50.0, "lon": 10.0}, "radius": 0.5}
                    ],
                },
                {"type": "inactive", "delay_threshold": 60},
            ],
        }
    )
    t = T0 + 14210
    messages = [
        {"timestamp": T0 + 1},
        {"timestamp": T0 + 2},
        {"timestamp": T0 + 7},
        {"timestamp": t},
        {"timestamp": t + 1, "position.latitude": 50.0, "position.longitude": 10.0},
    ]
    full = list(calculate(messages, calc))
    assert [(i["begin"], i["end"]) for i in full] == [(t, t)]
    store = MemoryStore(messages, full)
    diff = store.recalculate(calc, dirty_begin=T0 + 1, dirty_end=T0 + 1)
    assert not diff
    store.apply(diff)
    assert store.intervals == full


def test_late_message_in_the_middle_reads_only_near_it():
    all_msgs = synthetic(20_000)
    calc = compile_calculator(TRIPS)
    store = MemoryStore(all_msgs, calculate(all_msgs, calc))
    dicts = all_msgs.to_dicts()
    t = dicts[10_000]["timestamp"] + 0.5
    dicts.insert(10_001, {"timestamp": t, "speed": 150.0})
    store.set_messages(Messages.from_dicts(dicts))
    diff = store.recalculate(calc, dirty_begin=t, dirty_end=t)
    assert diff.messages_read < 8_000  # the 3,600 s trip around it, not the 20,000 of history
    store.apply(diff)
    assert store.intervals == list(calculate(store.messages, calc))


def test_appended_message_reads_only_the_last_interval():
    all_msgs = synthetic(20_000)
    calc = compile_calculator(TRIPS)
    store = MemoryStore(all_msgs.slice(0, 19_999), calculate(all_msgs.slice(0, 19_999), calc))
    store.set_messages(all_msgs)
    t = float(all_msgs.timestamps[-1])
    diff = store.recalculate(calc, dirty_begin=t, dirty_end=t)
    assert diff.reached_end
    assert diff.messages_read < 3_000
    store.apply(diff)
    full = calculate(all_msgs, calc)
    assert store.intervals == list(full)
    assert diff.active_id == full.active_id


def test_frozen_past_is_never_changed():
    calc = {
        "name": "t",
        "selectors": [{"type": "expression", "expression": "v > 0"}],
        "counters": [{"name": "n", "type": "expression", "expression": "v", "method": "summary"}],
    }
    old = [{"timestamp": float(t), "v": v} for t, v in enumerate([1, 1, 0, 1, 1, 0, 1, 1])]
    store = MemoryStore(old, calculate(old, calc))
    before = [dict(i) for i in store.intervals]
    # Late messages: one would change the first interval, one would create an interval in the
    # frozen past, one changes the last interval.
    new = [*old, {"timestamp": -5.0, "v": 1}, {"timestamp": 0.5, "v": 5}, {"timestamp": 6.5, "v": 4}]
    store.set_messages(sorted(new, key=lambda m: m["timestamp"]))
    diff = store.recalculate(calc, dirty_begin=-5.0, dirty_end=6.5, frozen_before=2.0)
    assert [(i["id"], i["n"]) for i in diff.updated] == [(6_000_000, 6.0)]
    assert diff.created == [] and diff.deleted == []
    store.apply(diff)
    assert store.intervals[0] == before[0]  # 0..1 ended before 2: frozen, still n=2
    # Expired messages freeze the intervals that begin before the oldest available message.
    store2 = MemoryStore(old[3:], [dict(i) for i in before])
    diff = store2.recalculate(calc, dirty_begin=3.0, dirty_end=3.0, messages_begin=3.0)
    assert diff.deleted == []
    assert [i["id"] for i in store2.intervals] == [i["id"] for i in before]


def test_user_fields_survive_updates():
    calc = {
        "name": "t",
        "selectors": [{"type": "expression", "expression": "v > 0"}],
        "counters": [{"name": "n", "type": "expression", "expression": "v", "method": "summary"}],
    }
    msgs_ = [{"timestamp": float(t), "v": 1} for t in range(3)]
    store = MemoryStore(msgs_, calculate(msgs_, calc))
    store.intervals[0]["note"] = "checked"
    store.set_messages([*msgs_, {"timestamp": 3.0, "v": 2}])
    diff = store.recalculate(calc, dirty_begin=3.0, dirty_end=3.0)
    store.apply(diff)
    assert store.intervals == [
        {"id": 0, "begin": 0.0, "end": 3.0, "duration": 3.0, "n": 5.0, "note": "checked"}
    ]


def test_config_change_recalculates_everything_and_deletes_vanished():
    msgs_ = [{"timestamp": float(t), "v": v} for t, v in enumerate([1, 0, 1, 1, 0])]
    calc1 = {"name": "t", "selectors": [{"type": "expression", "expression": "v > 0"}]}
    calc2 = {"name": "t", "selectors": [{"type": "expression", "expression": "v > 0", "min_duration": 1}]}
    store = MemoryStore(msgs_, calculate(msgs_, calc1))
    diff = store.recalculate(calc2, dirty_begin=-math.inf, dirty_end=math.inf)
    assert [i["id"] for i in diff.deleted] == [0]
    store.apply(diff)
    assert store.intervals == list(calculate(msgs_, calc2))


def test_wall_clock_sweep_deactivates():
    calc = {
        "name": "t",
        "selectors": [{"type": "expression", "expression": "v > 0", "max_inactive": 60}],
        "counters": [{"name": "open", "type": "active"}],
    }
    msgs_ = [{"timestamp": float(t), "v": 1} for t in range(3)]
    store = MemoryStore(msgs_, calculate(msgs_, calc, now=10.0))
    assert store.intervals[0]["open"] is True
    diff = store.recalculate(calc, dirty_begin=2.0, dirty_end=2.0, now=100.0)
    assert diff.reached_end and diff.active_id is None
    assert [i["open"] for i in diff.updated] == [False]


def test_read_functions_contract():
    """recalculate only needs the three callables; reads are bounded and half-open."""
    msgs_ = Messages.from_dicts([{"timestamp": float(t), "v": t % 7 > 2} for t in range(200)])
    calc = {"name": "t", "selectors": [{"type": "expression", "expression": "v"}]}
    stored = list(calculate(msgs_, calc))
    calls = []

    def read_messages(a, b):
        calls.append((a, b))
        ts = msgs_.timestamps
        return msgs_.slice(int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b)))

    diff = recalculate(
        calculator=calc,
        read_messages=read_messages,
        read_intervals=lambda a, b: [i for i in stored if a <= i["begin"] < b],
        interval_before=lambda t: max(
            (i for i in stored if i["begin"] < t), key=lambda i: i["begin"], default=None
        ),
        dirty_begin=100.0,
        dirty_end=100.0,
        now=None,
        newest=199.0,
    )
    assert not diff
    assert all(math.isfinite(a) and a > 0 for a, _ in calls)


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES * 5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(calc_config=calculators(), batches=_batches, late_now=st.booleans())
def test_windowed_recalculation_equals_full_calculation_many(calc_config, batches, late_now):
    test_windowed_recalculation_equals_full_calculation.hypothesis.inner_test(calc_config, batches, late_now)


def test_window_reaches_back_to_the_last_position():
    """``mileage()`` in a selector and in ``validate_message`` measures from the last fix, which
    lies far before the window a late or appended message would otherwise read."""
    fix = {"position.latitude": 50.0, "position.longitude": 10.0}
    messages = [{"timestamp": T0, **fix}]
    messages += [{"timestamp": T0 + t, "can.rpm": 900} for t in range(10, 3000, 10)]
    messages += [{"timestamp": T0 + 3000, "position.latitude": 50.01, "position.longitude": 10.0}]
    messages += [{"timestamp": T0 + 3000 + t, "can.rpm": 800} for t in range(10, 200, 10)]
    selector = {"type": "expression", "expression": "mileage() > 0.3"}
    calcs = [
        one_selector_calc(selector),
        one_selector_calc(
            {"type": "expression", "expression": "true"}, validate_message="!(mileage() > 0.3)"
        ),
    ]
    for calc in calcs:
        full = calculate(messages, calc)
        store = MemoryStore([], [])
        for k in range(len(messages)):
            store.set_messages(messages[: k + 1])
            t = messages[k]["timestamp"]
            store.apply(store.recalculate(calc, dirty_begin=t, dirty_end=t))
        assert store.intervals == list(full)
        # and a late change in the middle of the position-less stretch
        store.set_messages(messages)
        t = T0 + 1500
        store.apply(store.recalculate(calc, dirty_begin=t, dirty_end=t))
        assert store.intervals == list(full)
    assert [(i["begin"], i["end"]) for i in calculate(messages, calcs[0])] == [(T0 + 3000, T0 + 3000)]


def one_selector_calc(selector, **extra):
    km = {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"}
    return {"name": "fixes", "selectors": [selector], "counters": [km], **extra}
