"""Real-time state in the engine, by hand: ``inactive`` intervals opened by the wall clock,
device and calculator metadata in expressions, and user fields seen by ``previous()``."""

from __future__ import annotations

import math

import pytest

from analytics.engine import (
    ERROR,
    MemoryStore,
    calculate,
    clock_deadline,
    compile_calculator,
    compile_expression,
    validate_calculator,
)

OFFLINE = {
    "name": "offline",
    "selectors": [{"type": "inactive", "delay_threshold": 30}],
    "counters": [{"name": "open", "type": "active"}],
}


def _messages(*stamps, **values):
    return [{"timestamp": float(t), **values} for t in stamps]


# -- inactive intervals and the wall clock --------------------------------------------------------


def test_an_inactive_interval_opens_only_past_the_threshold_of_wall_clock():
    messages = _messages(0, 10, 100)
    # Without a clock, or within the threshold of the newest message: only the gap 10..100.
    for now in (None, 130.0):
        result = calculate(messages, OFFLINE, now=now)
        assert [(i["begin"], i["end"], i["open"]) for i in result] == [(10.0, 100.0, False)]
        assert result.active_id is None
    # 30 s and a bit after the newest message: the device is inactive now, from its newest message.
    result = calculate(messages, OFFLINE, now=130.5)
    assert [(i["id"], i["begin"], i["end"], i["duration"], i["open"]) for i in result] == [
        (10_000_000, 10.0, 100.0, 90.0, False),
        (100_000_000, 100.0, 100.0, 0.0, True),
    ]
    assert result.active_id == 100_000_000


def test_the_next_message_closes_the_open_inactive_interval_under_the_same_id():
    messages = _messages(0, 10)
    store = MemoryStore(messages, calculate(messages, OFFLINE, now=50.0))
    assert [(i["id"], i["open"]) for i in store.intervals] == [(10_000_000, True)]
    # A message 60 s after the last one, seen at once: the gap's interval closes, begin unchanged.
    store.set_messages(_messages(0, 10, 70))
    diff = store.recalculate(OFFLINE, dirty_begin=70.0, dirty_end=70.0, now=70.5)
    assert diff.reached_end and diff.active_id is None and not diff.created and not diff.deleted
    assert [(i["id"], i["begin"], i["end"], i["open"]) for i in diff.updated] == [(10_000_000, 10.0, 70.0, False)]
    store.apply(diff)
    assert store.intervals == list(calculate(_messages(0, 10, 70), OFFLINE, now=70.5))


def test_a_message_within_the_threshold_removes_the_open_interval():
    messages = _messages(0, 10)
    store = MemoryStore(messages, calculate(messages, OFFLINE, now=50.0))
    store.set_messages(_messages(0, 10, 20))
    diff = store.recalculate(OFFLINE, dirty_begin=20.0, dirty_end=20.0, now=55.0)
    # at 55 the newest message (20) is 35 s old: the device is inactive again, from 20
    assert [i["id"] for i in diff.deleted] == [10_000_000]
    assert [(i["id"], i["open"]) for i in diff.created] == [(20_000_000, True)]
    # seen at once, 1 s after it: nothing is open
    other = MemoryStore(messages, calculate(messages, OFFLINE, now=50.0))
    other.set_messages(_messages(0, 10, 20))
    quiet = other.recalculate(OFFLINE, dirty_begin=20.0, dirty_end=20.0, now=21.0)
    assert [i["id"] for i in quiet.deleted] == [10_000_000] and quiet.created == [] and quiet.active_id is None


@pytest.mark.parametrize("sweep", [10.0, math.nextafter(10.0, math.inf)], ids=["at the newest", "just after it"])
def test_the_wall_clock_sweep_opens_it_from_the_newest_message(sweep):
    # What a calc worker does when the timer of clock_deadline comes due: a range at the newest
    # message's timestamp or just after it (the worker's), and the clock.
    messages = _messages(0, 5, 10)
    store = MemoryStore(messages, calculate(messages, OFFLINE, now=11.0))
    assert store.intervals == []
    diff = store.recalculate(OFFLINE, dirty_begin=sweep, dirty_end=sweep, now=40.000001)
    assert [(i["id"], i["end"], i["open"]) for i in diff.created] == [(10_000_000, 10.0, True)]
    assert diff.active_id == 10_000_000


def test_a_window_that_ends_before_the_newest_message_opens_nothing():
    # A late message far in the past: the window ends at a clean cut long before the newest
    # message, whose open interval stays as it is.
    messages = _messages(0, 10, 20, 200, 210, 220)
    store = MemoryStore(messages, calculate(messages, OFFLINE, now=1000.0))
    store.set_messages(_messages(0, 10, 15, 20, 200, 210, 220))
    diff = store.recalculate(OFFLINE, dirty_begin=15.0, dirty_end=15.0, now=1000.0)
    assert not diff.reached_end and not diff
    store.apply(diff)
    assert store.intervals == list(calculate(_messages(0, 10, 15, 20, 200, 210, 220), OFFLINE, now=1000.0))


def test_with_another_selector_the_inactive_interval_is_active_where_both_are():
    config = {
        "name": "parked offline",
        "selectors": [
            {"type": "inactive", "delay_threshold": 30},
            {"type": "expression", "expression": "v == 0"},
        ],
    }
    assert calculate(_messages(0, 10, v=0), config, now=100.0).active_id == 10_000_000
    assert calculate(_messages(0, 10, v=5), config, now=100.0).active_id is None


def test_clock_deadline_opening_and_closing():
    # opening: the newest message plus the threshold (just after: "longer than")
    deadline = clock_deadline(OFFLINE, newest=100.0, active=False, now=101.0)
    assert 130.0 < deadline < 130.000001
    assert calculate(_messages(100), OFFLINE, now=deadline).active_id == 100_000_000
    assert calculate(_messages(100), OFFLINE, now=130.0).active_id is None
    # passed already (the interval is open): nothing more to wait for
    assert clock_deadline(OFFLINE, newest=100.0, active=True, now=200.0) is None
    # closing by max_inactive only matters when something is active; the smallest one wins
    both = {
        "name": "b",
        "selectors": [
            {"type": "expression", "expression": "v > 0", "max_inactive": 10},
            {"type": "inactive", "delay_threshold": 30},
        ],
    }
    assert 110.0 < clock_deadline(both, newest=100.0, active=True, now=101.0) < 110.000001
    assert 130.0 < clock_deadline(both, newest=100.0, active=False, now=101.0) < 130.000001
    trips = {"name": "t", "selectors": [{"type": "expression", "expression": "v > 0"}]}
    assert clock_deadline(trips, newest=100.0, active=True, now=101.0) is None


@pytest.mark.parametrize("threshold", [0, -5, "30", None, math.inf])
def test_bad_thresholds_are_problems_with_their_path(threshold):
    config = {"name": "x", "selectors": [{"type": "inactive", "delay_threshold": threshold}]}
    [problem] = validate_calculator(config)
    assert problem.path == "selectors[0].delay_threshold"


# -- metadata in expressions -------------------------------------------------------------------------


SPEEDING = {
    "name": "speeding",
    "selectors": [{"type": "expression", "expression": "position.speed > device.metadata.limit"}],
    "counters": [
        {"name": "over", "type": "expression", "expression": "position.speed - device.metadata.limit",
         "method": "maximum"},
        {"name": "fleet", "type": "interval", "expression": "calculator.metadata.fleet"},
    ],
    "metadata": {"fleet": "north"},
}
SPEEDS = [{"timestamp": float(t), "position.speed": v} for t, v in enumerate([40, 60, 70, 40, 55, 90])]


def test_device_and_calculator_metadata_in_selectors_and_counters():
    at_50 = calculate(SPEEDS, compile_calculator(SPEEDING, device_metadata={"limit": 50}))
    assert [(i["begin"], i["end"], i["over"], i["fleet"]) for i in at_50] == [
        (1.0, 2.0, 20.0, "north"),
        (4.0, 5.0, 40.0, "north"),
    ]
    at_65 = calculate(SPEEDS, compile_calculator(SPEEDING, device_metadata={"limit": 65}))
    assert [(i["begin"], i["end"], i["over"]) for i in at_65] == [(2.0, 2.0, 5.0), (5.0, 5.0, 25.0)]
    # No limit: a bare path that is missing errors, so the selector is never on.
    assert calculate(SPEEDS, compile_calculator(SPEEDING)) == []


def test_the_spellings_and_what_a_missing_path_gives():
    metadata = {"device": {"limit": 50, "fleet.id": 7, "geo": {"lat": 50.5, "a/b": 1}}, "calculator": {"k": 2}}
    message = {"timestamp": 1.0}

    def value(text):
        return compile_expression(text, metadata=metadata).evaluate_raw(message)

    assert value("device.metadata.limit * 2") == 100.0
    assert value("metadata('limit') + calculator.metadata.k") == 52.0
    assert value("metadata('fleet.id')") == 7.0  # a root key as written
    assert value("device.metadata.geo.lat") == 50.5  # dotted: nested
    assert value("metadata('/geo/lat')") == 50.5  # flespi's JSON pointer
    assert value("metadata('/geo/a~1b')") == 1.0
    assert value("$device.metadata.nothing") is None
    assert value("metadata('nothing')") is None
    assert value("calculator.metadata.nothing") is ERROR  # bare: an error, not null
    assert compile_expression("device.metadata.limit").reads_metadata == {"device"}
    assert compile_expression("calculator.metadata.k > metadata('x')").reads_metadata == {"device", "calculator"}
    assert compile_expression("device.limit").reads_metadata == frozenset()


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("metadata('') > 1", "metadata path '' is empty at 1"),
        ("metadata('/a//b') > 1", "metadata path '/a//b' has an empty key at 1"),
        ("metadata(speed) > 1", "function 'metadata' takes a quoted name at 1"),
        ("v > device.metadata", "'device.metadata' names no metadata key at 5: write device.metadata.<key>"),
        ("#calculator.metadata.k > 1",
         "'calculator.metadata.k' has no previous value at 2: metadata is the same for every message"),
    ],
)
def test_bad_metadata_paths_are_problems_with_their_path(expression, reason):
    config = {"name": "x", "selectors": [{"type": "datetime"}],
              "counters": [{"name": "c", "type": "expression", "expression": expression, "method": "last"}]}
    [problem] = validate_calculator(config)
    assert (problem.path, problem.message) == ("counters[0].expression", reason)


def test_calculators_say_whose_metadata_they_read():
    assert compile_calculator(SPEEDING).reads_metadata == {"device", "calculator"}
    plain = compile_calculator({"name": "p", "selectors": [{"type": "datetime"}]})
    assert plain.reads_metadata == frozenset() and plain.for_device({"limit": 1}) is plain
    compiled = compile_calculator(SPEEDING)
    assert compiled.for_device({"limit": 1}) is not compiled


def test_a_tail_of_the_old_metadata_is_never_extended():
    """A calc worker compiles the calculator again when the device's metadata changes: the
    recalculation that follows does not extend the open interval from a tail computed with the
    old values, and the full one it was asked for gives what a calculation from scratch gives."""
    start = [{"timestamp": float(t), "position.speed": 70.0} for t in range(5)]
    at_50 = compile_calculator(SPEEDING, device_metadata={"limit": 50})
    store = MemoryStore(start, [])
    store.apply(store.recalculate(at_50, dirty_begin=-math.inf, dirty_end=math.inf, keep_tail=True))
    grown = [*start, {"timestamp": 5.0, "position.speed": 72.0}]
    store.set_messages(grown)
    extended = store.recalculate(at_50, dirty_begin=5.0, dirty_end=5.0, keep_tail=True)
    assert extended.extended and store.tail is not None
    store.apply(extended)
    # The limit goes up to 71: only the last message is over it.
    at_71 = compile_calculator(SPEEDING, device_metadata={"limit": 71})
    moved = [*grown, {"timestamp": 6.0, "position.speed": 75.0}]
    store.set_messages(moved)
    appended = store.recalculate(at_71, dirty_begin=6.0, dirty_end=6.0, keep_tail=True)
    assert not appended.extended
    store.apply(appended)
    store.apply(store.recalculate(at_71, dirty_begin=-math.inf, dirty_end=math.inf, keep_tail=True))
    assert store.intervals == list(calculate(moved, at_71))
    assert [(i["begin"], i["end"], i["over"]) for i in store.intervals] == [(5.0, 6.0, 4.0)]


# -- user fields seen by previous() ------------------------------------------------------------------


HANDOVER = {
    "name": "handover",
    "selectors": [{"type": "expression", "expression": "v > 0"}],
    "counters": [{"name": "driver_before", "type": "interval", "expression": "previous('driver')"}],
}


def test_previous_reads_the_user_fields_of_the_stored_interval_before():
    messages = [{"timestamp": float(t), "v": v} for t, v in enumerate([1, 1, 0, 1, 1, 0, 1])]
    store = MemoryStore(messages, calculate(messages, HANDOVER))
    assert [i.get("driver_before") for i in store.intervals] == [None, None, None]
    store.intervals[0]["driver"] = "ann"  # what PUT .../intervals/0 stores
    # What the PUT asks for: the interval and the one after it.
    diff = store.recalculate(HANDOVER, dirty_begin=0.0, dirty_end=4.0)
    assert [(i["id"], i.get("driver_before")) for i in diff.updated] == [(3_000_000, "ann")]
    store.apply(diff)
    assert [(i.get("driver"), i.get("driver_before")) for i in store.intervals] == [("ann", None), (None, "ann"), (None, None)]
    # A later recalculation of the whole history keeps it (the stored user fields are its data).
    assert not store.recalculate(HANDOVER, dirty_begin=-math.inf, dirty_end=math.inf)


def test_object_and_list_metadata_in_both_evaluators():
    config = {
        "name": "tags",
        "selectors": [{"type": "expression", "expression": "json_array_contains(device.metadata.tags, $tag)"}],
        "counters": [{"name": "tags", "type": "expression", "expression": "device.metadata.tags", "method": "last"},
                     {"name": "owner", "type": "interval", "expression": "metadata('/owner/name')"}],
    }
    compiled = compile_calculator(config, device_metadata={"tags": ["a", "b"], "owner": {"name": "Ann"}})
    messages = [{"timestamp": float(t), "tag": tag} for t, tag in enumerate(["a", "c", "b", "b"])]
    assert [(i["begin"], i["end"], i["tags"], i["owner"]) for i in calculate(messages, compiled)] == [
        (0.0, 0.0, ["a", "b"], "Ann"), (2.0, 3.0, ["a", "b"], "Ann")]
