"""flespi's selector options and calculator fields, against intervals worked out by hand:
``validate_message`` and ``max_active`` of a selector, a ``datetime`` selector without ``split``
and with merge options, and ``messages_source``."""

from __future__ import annotations

import pytest

from analytics.engine import calculate, normalize_calculator, validate_calculator
from tests.support.engine import msgs, one_selector, spans

DAY = 86400.0


def test_validate_message_makes_the_selector_ignore_a_message():
    # v: 5 5 0 5 5 0 0; message 2 is ignored (bad=true): the run carries over it.
    messages = msgs([5, 5, 0, 5, 5, 0, 0])
    messages[2]["bad"] = True
    plain = one_selector({"type": "expression", "expression": "v > 2"})
    checked = one_selector({"type": "expression", "expression": "v > 2", "validate_message": "$bad != true"})
    assert spans(messages, plain) == [(0.0, 1.0), (3.0, 4.0)]
    assert spans(messages, checked) == [(0.0, 4.0)]
    # An ignored first message has no state to carry: it is off.
    messages[0]["bad"] = True
    messages[0]["v"] = 0
    assert spans(messages, checked) == [(1.0, 4.0)]


def test_an_ignored_message_keeps_an_off_state_off():
    messages = msgs([0, 9, 5, 0])
    messages[1]["bad"] = True
    checked = one_selector({"type": "expression", "expression": "v > 2", "validate_message": "$bad != true"})
    assert spans(messages, checked) == [(2.0, 2.0)]


def test_max_active_cuts_long_intervals():
    messages = msgs([5] * 10, step=10.0)  # 0..90 s, all on
    selector = {"type": "expression", "expression": "v > 2", "max_active": 30}
    assert spans(messages, one_selector(selector)) == [(0.0, 30.0), (40.0, 70.0), (80.0, 90.0)]
    intervals = calculate(messages, one_selector(selector))
    assert intervals.active_id is not None  # only the last piece stays open
    with_after = {**selector, "merge_message_after": True}
    assert spans(messages, one_selector(with_after)) == [(0.0, 40.0), (40.0, 80.0), (80.0, 90.0)]


def test_datetime_without_split_is_one_interval():
    messages = msgs([1, 2, 3, 4], times=[0.0, DAY, 3 * DAY, 10 * DAY])
    assert spans(messages, one_selector({"type": "datetime"})) == [(0.0, 10 * DAY)]
    assert normalize_calculator(one_selector({"type": "datetime"}))["selectors"] == [{"type": "datetime"}]


def test_datetime_merge_options():
    messages = msgs([1, 2, 3, 4], times=[0.0, 3600.0, DAY + 10, DAY + 20])
    by_day = {"type": "datetime", "split": "day"}
    assert spans(messages, one_selector(by_day)) == [(0.0, 3600.0), (DAY + 10, DAY + 20)]
    after = {**by_day, "merge_message_after": True}
    assert spans(messages, one_selector(after)) == [(0.0, DAY + 10), (DAY + 10, DAY + 20)]
    before = {**by_day, "merge_message_before": True}
    assert spans(messages, one_selector(before)) == [(0.0, 3600.0), (3600.0, DAY + 20)]
    assert normalize_calculator(one_selector(after))["selectors"] == [after]


def test_messages_source_device_or_calculator_and_others_refused():
    calc = one_selector({"type": "datetime", "split": "day"}, messages_source={"source": "device"})
    assert validate_calculator(calc) == []
    assert normalize_calculator(calc)["messages_source"] == {"source": "device"}
    assert normalize_calculator({**calc, "messages_source": None})["messages_source"] == {"source": "device"}
    chained = {**calc, "messages_source": {"source": "calculator", "calculator_id": 5}}
    assert normalize_calculator(chained)["messages_source"] == {"source": "calculator", "calculator_id": 5}
    problems = validate_calculator({**calc, "messages_source": {"source": "calc", "calc_id": 5}})
    assert [problem.path for problem in problems] == ["messages_source.calc_id", "messages_source.source"]
    assert problems[1].message == "must be one of device, calculator"


@pytest.mark.parametrize(
    ("selector", "path"),
    [
        ({"type": "expression", "expression": "v", "max_active": -1}, "selectors[0].max_active"),
        ({"type": "expression", "expression": "v", "max_active": "x"}, "selectors[0].max_active"),
        (
            {"type": "expression", "expression": "v", "validate_message": "a >"},
            "selectors[0].validate_message",
        ),
        ({"type": "datetime", "merge_message_after": 1}, "selectors[0].merge_message_after"),
        ({"type": "datetime", "split": "fortnight"}, "selectors[0].split"),
        ({"type": "datetime", "max_inactive": 5}, "selectors[0].max_inactive"),
    ],
)
def test_bad_options_name_their_path(selector, path):
    assert [problem.path for problem in validate_calculator(one_selector(selector))] == [path]


def test_options_given_at_their_defaults_leave_the_stored_form_as_before():
    selector = {"type": "expression", "expression": "v > 2", "max_active": 0}
    normalized = normalize_calculator(one_selector(selector))["selectors"][0]
    assert "max_active" not in normalized and "validate_message" not in normalized
