"""Calculator chaining in the engine (docs/engine.md, "Calculator chaining"): the ``calc``
selector, the ``calculator`` counter and ``messages_source`` of type ``calculator``, by hand;
their bad options; and the windowed recalculation of a chain against a calculation from scratch
under random messages and late data."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.engine import (
    MemoryStore,
    calculate,
    compile_calculator,
    intervals_as_messages,
    messages_of,
    validate_calculator,
)
from analytics.engine.chains import ListedIntervals
from tests.engine.test_recalculate import EXAMPLES, T0, _apply_batch, _current, message

SOURCE = 1


def _iv(begin: float, end: float, **counters) -> dict:
    return {"id": round(begin * 1_000_000), "begin": begin, "end": end, "duration": end - begin, **counters}


def spans(intervals) -> list[tuple[float, float]]:
    return [(interval["begin"], interval["end"]) for interval in intervals]


# ---- the calc selector ----------------------------------------------------------------------

# Messages every 5 s from 0 to 80; the source's intervals [10, 30], [50, 60], [65, 70].
EVERY_5 = [{"timestamp": float(t)} for t in range(0, 85, 5)]
SOURCE_INTERVALS = [_iv(10.0, 30.0), _iv(50.0, 60.0), _iv(65.0, 70.0)]


def _calc_selector(**options) -> dict:
    return {"name": "inside", "selectors": [{"type": "calc", "calc_id": SOURCE, **options}]}


def test_calc_selector_keeps_each_source_interval_apart():
    # 60 and 65 are neighbours and both inside an interval, but not the same one: two intervals.
    found = calculate(EVERY_5, _calc_selector(), sources={SOURCE: SOURCE_INTERVALS})
    assert spans(found) == [(10.0, 30.0), (50.0, 60.0), (65.0, 70.0)]
    assert found.active_id is None  # 70 is not the newest message (80)


def test_calc_selector_inverted_gives_the_gaps():
    found = calculate(EVERY_5, _calc_selector(invert=True), sources={SOURCE: SOURCE_INTERVALS})
    assert spans(found) == [(0.0, 5.0), (35.0, 45.0), (75.0, 80.0)]
    assert found.active_id == 75_000_000  # the last gap reaches the newest message


def test_calc_selector_options_join_and_drop():
    joined = calculate(EVERY_5, _calc_selector(max_inactive=5), sources={SOURCE: SOURCE_INTERVALS})
    assert spans(joined) == [(10.0, 30.0), (50.0, 70.0)]  # 65 - 60 = 5 s: joined
    long_only = calculate(EVERY_5, _calc_selector(min_duration=15), sources={SOURCE: SOURCE_INTERVALS})
    assert spans(long_only) == [(10.0, 30.0)]
    widened = calculate(EVERY_5, _calc_selector(merge_message_before=True, merge_message_after=True),
                        sources={SOURCE: SOURCE_INTERVALS})
    assert spans(widened) == [(5.0, 35.0), (45.0, 65.0), (60.0, 75.0)]


def test_calc_selector_intersected_with_an_expression_stops_inside_trips():
    messages = [{**message, "speed": 0 if message["timestamp"] in (20.0, 25.0, 55.0) else 40}
                for message in EVERY_5]
    stops = {"name": "stops", "selectors": [{"type": "calc", "calc_id": SOURCE},
                                            {"type": "expression", "expression": "speed < 5"}]}
    assert spans(calculate(messages, stops, sources={SOURCE: SOURCE_INTERVALS})) == [(20.0, 25.0), (55.0, 55.0)]


def test_without_the_source_intervals_a_calc_selector_selects_nothing():
    assert list(calculate(EVERY_5, _calc_selector())) == []
    assert spans(calculate(EVERY_5, _calc_selector(invert=True))) == [(0.0, 80.0)]


# ---- the calculator counter -----------------------------------------------------------------

# Intervals [0, 40] and [50, 80] (v is 0 at 45); the source's: A [10, 30] inside the first, B
# [35, 55] across the gap, C [60, 70] inside the second.
V_GAP = [{"timestamp": float(t), "v": 0 if t == 45 else 1} for t in range(0, 85, 5)]
A, B, C = _iv(10.0, 30.0, km=2.5, tag="a"), _iv(35.0, 55.0, km=4, tag="b"), _iv(60.0, 70.0, km=1, tag="c")


def _counted(**counter) -> list:
    calc = {"name": "c", "selectors": [{"type": "expression", "expression": "v > 0"}],
            "counters": [{"name": "x", "type": "calculator", "calc_id": SOURCE, **counter}]}
    found = calculate(V_GAP, calc, sources={SOURCE: [A, B, C]})
    assert spans(found) == [(0.0, 40.0), (50.0, 80.0)]
    return [interval.get("x", "omitted") for interval in found]


def test_calculator_counter_selection_by_its_allow_options():
    assert _counted(method="count") == [1, 1]
    assert _counted(method="count", allow_finish_after=True) == [2, 1]
    assert _counted(method="count", allow_start_before=True) == [1, 2]
    assert _counted(method="count", allow_start_before=True, allow_finish_after=True) == [2, 2]


def test_calculator_counter_methods():
    assert _counted() == [[A], [C]]  # list (the default) of every field
    assert _counted(fields=["begin", "km"]) == [[{"begin": 10.0, "km": 2.5}], [{"begin": 60.0, "km": 1}]]
    both = {"allow_start_before": True, "allow_finish_after": True}
    assert _counted(fields=["km"], method="summary", **both) == [6.5, 5]
    assert _counted(fields=["km"], method="sum", **both) == [6.5, 5]
    assert _counted(fields=["duration"], method="average", **both) == [20.0, 15.0]
    assert _counted(fields=["km"], method="maximum", **both) == [4, 4]
    assert _counted(fields=["km"], method="min", **both) == [2.5, 1]
    assert _counted(fields=["id"], method="first", **both) == [{"id": 10_000_000}, {"id": 35_000_000}]
    assert _counted(fields=["tag", "km"], method="last", **both) == [{"tag": "b", "km": 4}, {"tag": "c", "km": 1}]
    # No number to reduce, no interval to take: the counter is left out.
    assert _counted(fields=["tag"], method="summary") == ["omitted", "omitted"]
    assert _counted(fields=["nothing"], method="first") == [{}, {}]


def test_calculator_counter_without_source_intervals():
    calc = {"name": "c", "selectors": [{"type": "expression", "expression": "v > 0"}],
            "counters": [{"name": "n", "type": "calculator", "calc_id": SOURCE, "method": "count"},
                         {"name": "all", "type": "calculator", "calc_id": SOURCE},
                         {"name": "first", "type": "calculator", "calc_id": SOURCE, "method": "first"}]}
    assert [{k: iv.get(k) for k in ("n", "all", "first")} for iv in calculate(V_GAP, calc)] == [
        {"n": 0, "all": [], "first": None}, {"n": 0, "all": [], "first": None}
    ]


# ---- messages_source: another calculator's intervals as messages ----------------------------

D0 = 1714521600.0  # 2024-05-01T00:00:00Z
HOUR = 3600.0
TRIPS_OF_TWO_DAYS = [
    _iv(D0 + 8 * HOUR, D0 + 9 * HOUR, km=10.0),
    _iv(D0 + 18 * HOUR, D0 + 19 * HOUR, km=5.0),
    # Begins before midnight, ends after it: a message of the day it begins.
    _iv(D0 + 23.5 * HOUR, D0 + 24.5 * HOUR, km=2.0),
    _iv(D0 + 31 * HOUR, D0 + 32 * HOUR, km=7.0),
]
DAILY = {
    "name": "daily",
    "messages_source": {"source": "calculator", "calculator_id": SOURCE},
    "selectors": [{"type": "datetime", "split": "day"}],
    "counters": [
        {"name": "trips", "type": "expression", "expression": "1", "method": "summary"},
        {"name": "km", "type": "parameter", "parameter": "km", "method": "summary"},
        {"name": "driving", "type": "parameter", "parameter": "duration", "method": "summary"},
        {"name": "last_end", "type": "parameter", "parameter": "end", "method": "maximum"},
    ],
}


def test_a_daily_summary_of_trips():
    found = calculate(None, DAILY, sources={SOURCE: TRIPS_OF_TWO_DAYS})
    assert list(found) == [
        {"id": round((D0 + 8 * HOUR) * 1e6), "begin": D0 + 8 * HOUR, "end": D0 + 23.5 * HOUR,
         "duration": 15.5 * HOUR, "trips": 3, "km": 17.0, "driving": 3 * HOUR, "last_end": D0 + 24.5 * HOUR},
        {"id": round((D0 + 31 * HOUR) * 1e6), "begin": D0 + 31 * HOUR, "end": D0 + 31 * HOUR,
         "duration": 0.0, "trips": 1, "km": 7.0, "driving": HOUR, "last_end": D0 + 32 * HOUR},
    ]
    assert found.active_id == round((D0 + 31 * HOUR) * 1e6)
    # The same given as messages, and as a window of them.
    assert list(calculate(intervals_as_messages(TRIPS_OF_TWO_DAYS), DAILY)) == list(found)
    window = messages_of(ListedIntervals(TRIPS_OF_TWO_DAYS), D0 + 18 * HOUR, D0 + 31 * HOUR)
    assert window.timestamps.tolist() == [D0 + 18 * HOUR, D0 + 23.5 * HOUR]
    assert window.row(0) == {"timestamp": D0 + 18 * HOUR, "begin": D0 + 18 * HOUR, "end": D0 + 19 * HOUR,
                             "duration": HOUR, "km": 5.0}


def test_intervals_sharing_a_begin_are_messages_a_microsecond_apart():
    first, second = _iv(100.0, 100.0, n=1), {**_iv(100.0, 120.0, n=2), "id": 100_000_001}
    messages = intervals_as_messages([first, second])
    assert messages.timestamps.tolist() == [100.0, 100.000001]
    assert [messages.row(i)["n"] for i in range(2)] == [1, 2]


# ---- configuration --------------------------------------------------------------------------

SELECTOR = {"type": "expression", "expression": "v > 0"}


@pytest.mark.parametrize(
    ("change", "path", "text"),
    [
        ({"selectors": [{"type": "calc"}]}, "selectors[0].calc_id", "missing field"),
        ({"selectors": [{"type": "calc", "calc_id": "5"}]}, "selectors[0].calc_id",
         "must be a calculator id (a positive integer)"),
        ({"selectors": [{"type": "calc", "calc_id": True}]}, "selectors[0].calc_id",
         "must be a calculator id (a positive integer)"),
        ({"selectors": [{"type": "calc", "calc_id": 0}]}, "selectors[0].calc_id",
         "must be a calculator id (a positive integer)"),
        ({"selectors": [{"type": "calc", "calc_id": 2**63}]}, "selectors[0].calc_id",
         "must be a calculator id (a positive integer)"),
        ({"selectors": [{"type": "calc", "calc_id": 5.0}]}, "selectors[0].calc_id",
         "must be a calculator id (a positive integer)"),
        ({"selectors": [{"type": "calc", "calc_id": 5, "merge_unknown": True}]}, "selectors[0].merge_unknown",
         "unknown field"),
        ({"selectors": [{"type": "calc", "calc_id": 5, "expression": "v"}]}, "selectors[0].expression",
         "unknown field"),
        ({"selectors": [{"type": "calc", "calc_id": 5, "invert": "yes"}]}, "selectors[0].invert",
         "must be true or false"),
        ({"selectors": [{"type": "calc", "calc_id": 5, "min_duration": -1}]}, "selectors[0].min_duration",
         "must be at least 0"),
        ({"counters": [{"name": "x", "type": "calculator"}]}, "counters[0].calc_id", "missing field"),
        ({"counters": [{"name": "x", "type": "calculator", "calc_id": 5, "method": "summary"}]},
         "counters[0].fields", "method summary reduces one field: name exactly one"),
        ({"counters": [{"name": "x", "type": "calculator", "calc_id": 5, "method": "count", "fields": ["km"]}]},
         "counters[0].fields", "method count reads no field"),
        ({"counters": [{"name": "x", "type": "calculator", "calc_id": 5, "method": "median"}]},
         "counters[0].method", "must be one of list, count, first, last, summary, minimum, maximum, average"),
        ({"counters": [{"name": "x", "type": "calculator", "calc_id": 5, "fields": "km"}]}, "counters[0].fields",
         "must be a list of field names"),
        ({"counters": [{"name": "x", "type": "calculator", "calc_id": 5, "allow_start_before": 1}]},
         "counters[0].allow_start_before", "must be true or false"),
        ({"counters": [{"name": "x", "type": "calculator", "calc_id": 5, "validate_message": "v"}]},
         "counters[0].validate_message", "unknown field"),
        ({"messages_source": {"source": "calculator"}}, "messages_source.calculator_id", "missing field"),
        ({"messages_source": {"source": "calculator", "calculator_id": -2}}, "messages_source.calculator_id",
         "must be a calculator id (a positive integer)"),
        ({"messages_source": {"source": "device", "calculator_id": 3}}, "messages_source.calculator_id",
         "unknown field"),
        ({"messages_source": "calculator"}, "messages_source", 'must be an object like {"source": "device"}'),
    ],
)
def test_bad_chaining_options_name_their_path(change, path, text):
    config = {"name": "bad", "selectors": [SELECTOR], **change}
    problems = validate_calculator(config)
    assert [(problem.path, problem.message) for problem in problems] == [(path, text)]


def test_references_name_their_paths():
    calc = compile_calculator({
        "name": "chained",
        "messages_source": {"source": "calculator", "calculator_id": 3},
        "selectors": [SELECTOR, {"type": "calc", "calc_id": 4}],
        "counters": [{"name": "n", "type": "calculator", "calc_id": 5, "method": "count"}],
    })
    assert calc.references == [("messages_source.calculator_id", 3), ("selectors[1].calc_id", 4),
                                ("counters[0].calc_id", 5)]
    assert calc.chained and calc.reads_calcs == {4, 5} and calc.messages_calc == 3
    assert not compile_calculator({"name": "plain", "selectors": [SELECTOR]}).chained


# ---- a chain recalculated in windows equals a chain calculated from scratch -----------------

# Pairs: the source's configuration, and another it is changed to between batches (a change of
# a source's configuration recalculates all its history; its dependents follow the change alone).
SOURCES = [
    ({"name": "trips", "selectors": [{"type": "expression", "expression": "$v > 2", "max_inactive": 60}],
      "counters": [{"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
                   {"name": "top", "type": "parameter", "parameter": "v", "method": "maximum"}]},
     {"name": "trips", "selectors": [{"type": "expression", "expression": "$v > 6", "max_inactive": 200}],
      "counters": [{"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
                   {"name": "top", "type": "parameter", "parameter": "v", "method": "maximum"}]}),
    ({"name": "values", "selectors": [{"type": "expression", "method": "change", "expression": "$v"}],
      "counters": [{"name": "top", "type": "parameter", "parameter": "v", "method": "maximum"}]},
     {"name": "values", "selectors": [{"type": "expression", "method": "change", "expression": "$v > 2"}],
      "counters": [{"name": "top", "type": "parameter", "parameter": "v", "method": "minimum"}]}),
    ({"name": "hours", "selectors": [{"type": "datetime", "split": "hour"}],
      "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}]},
     {"name": "hours", "selectors": [{"type": "datetime", "split": "day"}],
      "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}]}),
    ({"name": "merged", "selectors": [{"type": "expression", "expression": "v != 3", "merge_message_after": True,
                                       "min_duration": 2}],
      "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}]},
     {"name": "merged", "selectors": [{"type": "expression", "expression": "v != 7", "merge_message_before": True}],
      "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}]}),
]


@st.composite
def calc_selector(draw):
    return {
        "type": "calc",
        "calc_id": SOURCE,
        "invert": draw(st.booleans()),
        "max_messages_time_diff": draw(st.sampled_from([0, 0, 100])),
        "min_active": draw(st.sampled_from([0, 0, 10])),
        "max_inactive": draw(st.sampled_from([0, 0, 40, 300])),
        "merge_message_before": draw(st.booleans()),
        "merge_message_after": draw(st.booleans()),
        "min_duration": draw(st.sampled_from([0, 0, 20])),
        "max_active": draw(st.sampled_from([0, 0, 0, 60])),
    }


@st.composite
def calculator_counter(draw, name: str):
    method = draw(st.sampled_from(["list", "count", "first", "last", "summary", "average", "maximum"]))
    fields = {"list": draw(st.sampled_from([[], ["begin", "duration"]])), "count": [],
              "first": ["id"], "last": ["end", "top"]}.get(method, ["duration"])
    return {"name": name, "type": "calculator", "calc_id": SOURCE, "method": method, "fields": fields,
            "allow_start_before": draw(st.booleans()), "allow_finish_after": draw(st.booleans())}


@st.composite
def dependents(draw):
    kind = draw(st.sampled_from(["selector", "selector", "counter", "messages"]))
    counters = [draw(calculator_counter("inside")), {"name": "n", "type": "expression", "expression": "1",
                                                     "method": "summary"}]
    if kind == "selector":
        selectors = [draw(calc_selector())]
        if draw(st.booleans()):
            selectors.append({"type": "expression", "expression": "$v < 5", "max_inactive": draw(st.sampled_from([0, 50]))})
        return {"name": "dependent", "selectors": selectors, "counters": counters}
    if kind == "counter":
        selector = draw(st.sampled_from([
            {"type": "expression", "expression": "$v != 0", "max_inactive": 30},
            {"type": "datetime", "split": "hour"},
            {"type": "inactive", "delay_threshold": 60},
        ]))
        return {"name": "dependent", "selectors": [selector], "counters": counters}
    selector = draw(st.sampled_from([
        {"type": "datetime", "split": "day"},
        {"type": "datetime", "split": "hour", "merge_message_after": True},
        {"type": "expression", "expression": "duration > 10", "max_inactive": 500},
        {"type": "inactive", "delay_threshold": 100},
    ]))
    return {"name": "dependent", "messages_source": {"source": "calculator", "calculator_id": SOURCE},
            "selectors": [selector], "counters": [
                {"name": "n", "type": "expression", "expression": "1", "method": "summary"},
                {"name": "long", "type": "parameter", "parameter": "duration", "method": "maximum"},
                draw(calculator_counter("again")),
            ]}


def changed_range(diff, before: dict[int, dict]) -> tuple[float, float] | None:
    """Where a source's intervals changed: the extent of every created, updated (old and new) and
    deleted interval, as ``analytics.calculation.runs_store`` gives it to the dependents."""
    rows = [*diff.created, *diff.updated, *diff.deleted,
            *(before[interval["id"]] for interval in diff.updated if interval["id"] in before)]
    if not rows:
        return None
    return min(row["begin"] for row in rows) - 1e-3, max(row["end"] for row in rows) + 1e-3


def _union(*ranges):
    given = [given for given in ranges if given is not None]
    return (min(lo for lo, _ in given), max(hi for _, hi in given)) if given else None


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sources=st.sampled_from(SOURCES), dependent_config=dependents(),
       batches=st.lists(st.lists(st.one_of(message(), message(), st.tuples(st.just("delete"), st.integers(0, 119))),
                                 min_size=1, max_size=12), min_size=1, max_size=8),
       switches=st.lists(st.booleans(), min_size=8, max_size=8), late_now=st.booleans())
def test_a_chain_recalculated_in_windows_equals_the_chain_from_scratch(sources, dependent_config, batches, switches,
                                                                     late_now):
    configs = [compile_calculator(config) for config in sources]
    dependent = compile_calculator(dependent_config)
    reads_messages = dependent.messages_calc is None
    now = T0 + 10**6 if late_now else None
    state: dict = {}
    source_store, dependent_store = MemoryStore([], []), MemoryStore([], [])
    current = 0

    def follow(source_calc, messages, lo, hi, changed_messages: bool) -> None:
        """The source recalculated for the change, then the dependent for the messages that
        changed (if any) and the range the source's intervals changed in."""
        source_store.set_messages(messages)
        before = {interval["id"]: interval for interval in source_store.intervals}
        source_diff = source_store.recalculate(source_calc, dirty_begin=lo, dirty_end=hi, now=now)
        source_store.apply(source_diff)
        changed = changed_range(source_diff, before)
        dirty = _union((lo, hi), changed) if reads_messages and changed_messages else changed
        if dirty is not None:
            dependent_store.set_messages(messages if reads_messages else intervals_as_messages(source_store.intervals))
            diff = dependent_store.recalculate(dependent, dirty_begin=dirty[0], dirty_end=dirty[1], now=now,
                                               sources={SOURCE: source_store})
            dependent_store.apply(diff)

    for batch, switch in zip(batches, switches, strict=False):
        if switch and state:  # the source's configuration changes: all of its history is recalculated
            current = 1 - current
            follow(configs[current], _current(state), -math.inf, math.inf, False)
        lo, hi = _apply_batch(state, batch)
        messages = _current(state)
        follow(configs[current], messages, lo, hi, True)
        source_full = calculate(messages, configs[current], now=now)
        assert source_store.intervals == list(source_full)
        dependent_full = calculate(messages if reads_messages else None, dependent, now=now,
                                   sources={SOURCE: list(source_full)})
        assert dependent_store.intervals == list(dependent_full)


def test_a_shortened_source_interval_is_followed_by_its_old_extent():
    """A source interval [10, 50] shortened to [10, 15] (same id): the dependent interval [20, 60]
    counted it (``allow_start_before``) and no longer does. The window of the new extent alone
    ends before [20, 60]; the old extent reaches it."""
    messages = [{"timestamp": float(t), "v": 0 if t in (16, 17, 18) else 1} for t in (0, 10, 16, 17, 18, 20, 40, 60)]
    dependent = compile_calculator({
        "name": "d", "selectors": [{"type": "expression", "expression": "v > 0"}],
        "counters": [{"name": "n", "type": "calculator", "calc_id": SOURCE, "method": "count",
                      "allow_start_before": True}]})
    old, new = _iv(10.0, 50.0), _iv(10.0, 15.0)
    stored = calculate(messages, dependent, sources={SOURCE: [old]})
    assert [(iv["begin"], iv["end"], iv["n"]) for iv in stored] == [(0.0, 10.0, 0), (20.0, 60.0, 1)]
    expected = calculate(messages, dependent, sources={SOURCE: [new]})
    assert [(iv["begin"], iv["end"], iv["n"]) for iv in expected] == [(0.0, 10.0, 0), (20.0, 60.0, 0)]
    from analytics.engine import Diff

    for before, right in (({}, False), ({old["id"]: old}, True)):
        lo, hi = changed_range(Diff(updated=[new]), before)
        store = MemoryStore(messages, stored)
        store.apply(store.recalculate(dependent, dirty_begin=lo, dirty_end=hi, sources={SOURCE: [new]}))
        assert (store.intervals == list(expected)) is right


def test_a_window_reads_the_source_near_the_change_only():
    """Appending to a long history reads a few source intervals and messages, not all of them."""
    source_calc = compile_calculator(SOURCES[0][0])
    inside = compile_calculator({"name": "inside", "selectors": [{"type": "calc", "calc_id": SOURCE}],
                                 "counters": [{"name": "n", "type": "expression", "expression": "1",
                                               "method": "summary"}]})
    messages = [{"timestamp": T0 + t, "v": 7 if (t // 100) % 2 else 0} for t in range(0, 20_000, 10)]
    source = ListedIntervals(calculate(messages, source_calc))
    reads = []

    class Counting:
        def read_intervals(self, begin, end):
            found = source.read_intervals(begin, end)
            reads.append(len(found))
            return found

        def interval_before(self, moment):
            return source.interval_before(moment)

    store = MemoryStore(messages, calculate(messages, inside, sources={SOURCE: source}))
    late = T0 + 10_005.0
    store.set_messages([*messages, {"timestamp": late, "v": 0}])
    diff = store.recalculate(inside, dirty_begin=late, dirty_end=late, sources={SOURCE: Counting()})
    assert not diff  # the late message is off, and changes no stored interval
    assert diff.messages_read < 200 and max(reads) <= 5
    assert math.isfinite(diff.window[0]) and math.isfinite(diff.window[1])
