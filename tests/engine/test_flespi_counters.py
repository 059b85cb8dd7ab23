"""flespi's counter options, against values worked out by hand: the ``message`` counter's
``extremum`` (the message where an expression reaches its minimum or maximum), the ``dataset``
counter's ``allow_unknown``, and the ``accumulator`` counter's ``reset_expression``; and the
check of each at save time, with its path."""

from __future__ import annotations

import pytest

from analytics.engine import calculate, compile_calculator, normalize_calculator, validate_calculator
from tests.support.engine import msgs, one_selector

ON = {"type": "expression", "expression": "v > 2"}
WHOLE = {"type": "datetime"}  # one interval over every message


def values(messages, selector, *counters, **extra):
    return [
        {name: interval.get(name) for name in (counter["name"] for counter in counters)}
        for interval in calculate(messages, one_selector(selector, counters, **extra))
    ]


# ---- message counter: extremum --------------------------------------------------------------


def _readings():
    # v:    3  9  1  9  4   (t = 0..4 s); the selector v > 2 gives intervals [0, 1] and [3, 4]
    # temp: 20 21 22 23 24
    messages = msgs([3, 9, 1, 9, 4])
    for i, message in enumerate(messages):
        message["temp"] = 20 + i
    return messages


def test_extremum_picks_the_message_where_the_expression_is_largest_or_smallest():
    peak = {"name": "peak", "type": "message", "fields": ["temp", "v"], "method": "maximum", "extremum": "v"}
    low = {**peak, "name": "low", "method": "minimum"}
    # One interval over all: v is largest (9) first at message 1, smallest (1) at message 2.
    assert values(_readings(), WHOLE, peak, low) == [
        {"peak": {"temp": 21, "v": 9}, "low": {"temp": 22, "v": 1}}
    ]
    # Per interval: [3, 9] -> max at t=1, min at t=0; [9, 4] -> max at t=3, min at t=4.
    assert values(_readings(), ON, peak, low) == [
        {"peak": {"temp": 21, "v": 9}, "low": {"temp": 20, "v": 3}},
        {"peak": {"temp": 23, "v": 9}, "low": {"temp": 24, "v": 4}},
    ]


def test_extremum_ties_take_the_earliest_message_and_validate_message_limits_the_candidates():
    peak = {"name": "peak", "type": "message", "fields": ["temp"], "method": "max", "extremum": "v"}
    # 9 at t=1 and t=3: the first one wins.
    assert values(_readings(), WHOLE, peak) == [{"peak": {"temp": 21}}]
    # Without message 1 (temp 21), the 9 at t=3 is the largest.
    checked = {**peak, "validate_message": "temp != 21"}
    assert values(_readings(), WHOLE, checked) == [{"peak": {"temp": 23}}]


def test_extremum_previous_stays_inside_the_interval():
    # v - #v per message: interval [0, 1]: null, 9-3=6; interval [3, 4]: null (message 2 is
    # outside the interval), 4-9=-5. So the biggest jump is at t=1 and t=4.
    jump = {"name": "jump", "type": "message", "fields": ["temp"], "method": "maximum", "extremum": "v - #v"}
    assert values(_readings(), ON, jump) == [{"jump": {"temp": 21}}, {"jump": {"temp": 24}}]
    # Over all messages: 6, -8, 8, -5: the largest is 8 at t=3, the smallest -8 at t=2.
    drop = {**jump, "name": "drop", "method": "minimum"}
    assert values(_readings(), WHOLE, jump, drop) == [{"jump": {"temp": 23}, "drop": {"temp": 22}}]


def test_extremum_reads_booleans_as_numbers_and_skips_everything_else():
    messages = _readings()
    messages[0]["v"] = "high"  # a string is not countable
    del messages[1]["v"]  # a missing bare name is an error: not countable
    counter = {"name": "m", "type": "message", "fields": ["temp"], "method": "maximum", "extremum": "v"}
    assert values(messages, WHOLE, counter) == [{"m": {"temp": 23}}]  # 1, 9, 4 remain
    first_true = {**counter, "extremum": "$v > 2"}  # false at t=0,1,2, true at t=3
    assert values(messages, WHOLE, first_true) == [{"m": {"temp": 23}}]
    none = {**counter, "extremum": "tostring(temp)"}  # strings only: no message, no value
    [interval] = calculate(messages, one_selector(WHOLE, [none]))
    assert "m" not in interval


def test_extremum_reads_its_parameters():
    counter = {
        "name": "m",
        "type": "message",
        "fields": ["temp"],
        "method": "maximum",
        "extremum": "$speed * k",
    }
    assert compile_calculator(one_selector(WHOLE, [counter])).parameters == {"temp", "speed", "k"}


# ---- dataset counter: allow_unknown ---------------------------------------------------------


def test_dataset_allow_unknown():
    # x = 10 / v: v = 5 -> 2, v = 0 -> unknown (division by zero), v missing -> unknown (bare
    # name), v = null -> null (a value, not unknown).
    messages = msgs([5, 0, ..., None, 2])
    counter = {"name": "ds", "type": "dataset", "fields": [{"name": "x", "value": "10 / v"}]}
    assert values(messages, WHOLE, counter) == [{"ds": [{"x": 2.0}, {"x": None}, {"x": 5.0}]}]
    allowing = {**counter, "allow_unknown": True}
    assert values(messages, WHOLE, allowing) == [
        {"ds": [{"x": 2.0}, {"x": None}, {"x": None}, {"x": None}, {"x": 5.0}]}
    ]
    # A message is left out when any one of its fields is unknown.
    two = {
        "name": "ds",
        "type": "dataset",
        "fields": [{"name": "t", "value": "timestamp"}, {"name": "x", "value": "10 / v"}],
    }
    assert values(messages, WHOLE, two) == [
        {"ds": [{"t": 0.0, "x": 2.0}, {"t": 3.0, "x": None}, {"t": 4.0, "x": 5.0}]}
    ]


def test_dataset_allow_unknown_is_stored_only_when_true():
    counter = {"name": "ds", "type": "dataset", "fields": [{"name": "x", "value": "v"}]}
    stored = normalize_calculator(one_selector(WHOLE, [{**counter, "allow_unknown": False}]))["counters"]
    assert stored == [counter]
    stored = normalize_calculator(one_selector(WHOLE, [{**counter, "allow_unknown": True}]))["counters"]
    assert stored == [{**counter, "allow_unknown": True}]


# ---- accumulator: reset_expression ----------------------------------------------------------

# v: 1 0 2 0 10 0 3 0 4: the selector v > 0 gives five one-message intervals with n = v.
RESETS = msgs([1, 0, 2, 0, 10, 0, 3, 0, 4])
N = {"name": "n", "type": "expression", "expression": "v", "method": "summary"}
POSITIVE = {"type": "expression", "expression": "v > 0"}


def _totals(reset_expression, **more):
    accumulator = {"name": "total", "type": "accumulator", "counter": "n", **more}
    if reset_expression is not None:
        accumulator["reset_expression"] = reset_expression
    return [row["total"] for row in values(RESETS, POSITIVE, N, accumulator)]


def test_accumulator_reset_expression():
    assert _totals(None) == [1.0, 3.0, 13.0, 16.0, 20.0]
    # Reset at an interval whose own n is 10 or more: it starts the total again.
    assert _totals("n >= 10") == [1.0, 3.0, 10.0, 13.0, 17.0]
    # previous() reads the interval before: reset after a total of 5 or more.
    # 1; 1+2=3; 3+10=13; (13 >= 5) reset: 3; (3) 3+4=7.
    assert _totals("previous('total') >= 5") == [1.0, 3.0, 13.0, 3.0, 7.0]
    # An expression that errors (a bare missing name) or is null never resets.
    assert _totals("nope > 1") == [1.0, 3.0, 13.0, 16.0, 20.0]
    assert _totals("$nope") == [1.0, 3.0, 13.0, 16.0, 20.0]


def test_accumulator_reset_expression_with_reset_interval():
    # Intervals on two days; either rule resets.
    day = 1714521600.0  # 2024-05-01T00:00:00Z
    messages = msgs(
        [1, 0, 2, 0, 10, 0, 3], times=[day - 40, day - 30, day - 20, day - 10, day + 1, day + 2, day + 3]
    )
    accumulator = {
        "name": "total",
        "type": "accumulator",
        "counter": "n",
        "reset_interval": "day",
        "reset_expression": "n == 3",
    }
    # day 1: 1, 3; day 2: 10 (new day), 3 (n == 3 resets)
    assert [row["total"] for row in values(messages, POSITIVE, N, accumulator)] == [1.0, 3.0, 10.0, 3.0]


def test_accumulator_reset_expression_is_stored_only_when_given():
    accumulator = {"name": "total", "type": "accumulator", "counter": "n"}
    [_, stored] = normalize_calculator(one_selector(POSITIVE, [N, accumulator]))["counters"]
    assert "reset_expression" not in stored
    given = {**accumulator, "reset_expression": "n > 1"}
    [_, stored] = normalize_calculator(one_selector(POSITIVE, [N, given]))["counters"]
    assert stored["reset_expression"] == "n > 1"
    # It reads interval fields, not messages.
    assert compile_calculator(one_selector(POSITIVE, [N, given])).parameters == {"v"}


# ---- checks --------------------------------------------------------------------------------

MESSAGE_COUNTER = {"name": "m", "type": "message", "fields": ["v"]}
DATASET = {"name": "ds", "type": "dataset", "fields": [{"name": "x", "value": "v"}]}
ACCUMULATOR = {"name": "total", "type": "accumulator", "counter": "n"}


@pytest.mark.parametrize(
    ("counter", "path", "message"),
    [
        ({**MESSAGE_COUNTER, "method": "maximum"}, "counters[1].extremum", "missing field"),
        ({**MESSAGE_COUNTER, "method": "min", "extremum": None}, "counters[1].extremum", "missing field"),
        ({**MESSAGE_COUNTER, "method": "maximum", "extremum": 5}, "counters[1].extremum", "must be a string"),
        (
            {**MESSAGE_COUNTER, "method": "maximum", "extremum": "v >"},
            "counters[1].extremum",
            "unexpected end of expression at 4",
        ),
        (
            {**MESSAGE_COUNTER, "method": "maximum", "extremum": "top(v)"},
            "counters[1].extremum",
            "unknown function 'top' at 1",
        ),
        (
            {**MESSAGE_COUNTER, "extremum": "v"},
            "counters[1].extremum",
            "is used only with method minimum or maximum",
        ),
        (
            {**MESSAGE_COUNTER, "method": "median", "extremum": "v"},
            "counters[1].method",
            "must be one of first, last, minimum, maximum",
        ),
        ({**DATASET, "allow_unknown": "yes"}, "counters[1].allow_unknown", "must be true or false"),
        ({**DATASET, "allow_unknown": 1}, "counters[1].allow_unknown", "must be true or false"),
        ({**ACCUMULATOR, "reset_expression": 1}, "counters[1].reset_expression", "must be a string"),
        ({**ACCUMULATOR, "reset_expression": ""}, "counters[1].reset_expression", "expression is empty"),
        (
            {**ACCUMULATOR, "reset_expression": "json_array_contains(n)"},
            "counters[1].reset_expression",
            "function 'json_array_contains' takes 2 arguments, got 1 at 1",
        ),
        ({**ACCUMULATOR, "reset": "n > 1"}, "counters[1].reset", "unknown field"),
    ],
)
def test_bad_options_name_their_path(counter, path, message):
    problems = validate_calculator(one_selector(POSITIVE, [N, counter]))
    assert [(problem.path, problem.message) for problem in problems] == [(path, message)]


def test_message_counter_methods_are_stored_by_their_full_name():
    counter = {**MESSAGE_COUNTER, "method": "max", "extremum": "v * 2"}
    [_, stored] = normalize_calculator(one_selector(POSITIVE, [N, counter]))["counters"]
    assert stored == {**MESSAGE_COUNTER, "method": "maximum", "extremum": "v * 2"}
    [_, stored] = normalize_calculator(one_selector(POSITIVE, [N, MESSAGE_COUNTER]))["counters"]
    assert stored == {**MESSAGE_COUNTER, "method": "first"}
