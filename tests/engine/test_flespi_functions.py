"""flespi's expression functions ``error()``, ``isnumber``, ``isstring``, ``isboolean``,
``isjson``, ``json()`` and ``json_array_contains``: values worked out by hand, what an error does
to a selector, a counter and a validation, and the compile errors of wrong calls."""

from __future__ import annotations

import pytest

from analytics.engine import ERROR, ExpressionError, Messages, calculate, compile_expression
from analytics.engine.expressions import Frame
from tests.support.engine import msgs, one_selector, spans

MESSAGE = {
    "timestamp": 0.0,
    "n": 7,
    "f": 2.5,
    "t": True,
    "s": "text",
    "empty": "",
    "nul": None,
    "arr": [1, "a", [2, 3], {"k": None}, None, True],
    "obj": {"x": 1, "y": [1, 2]},
    "doc": '{"ids": [3, 5, 8], "driver": {"name": "ann"}}',
    "ids": "[3, 5, 8]",
    "bad": "{ids: 3}",
}


def ev(text, message=MESSAGE):
    """The value per message and, to check that both evaluators agree, columnar."""
    expression = compile_expression(text)
    one = expression.evaluate_raw(message)
    [column] = expression.evaluate_frame(Frame(Messages.from_dicts([message]))).to_objects(1)
    assert (one is ERROR and column is ERROR) or (one == column and type(one) is type(column)), (one, column)
    return one


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # isnumber / isstring / isboolean / isjson: the type of the value; null is none of them
        ("isnumber(n)", True),
        ("isnumber(f)", True),
        ("isnumber(t)", False),  # a boolean is not a number (though arithmetic reads it as 0/1)
        ("isnumber(s)", False),
        ("isnumber('7')", False),
        ("isnumber(nul)", False),
        ("isnumber($missing)", False),
        ("isnumber(n + 1)", True),
        ("isstring(s)", True),
        ("isstring(empty)", True),
        ("isstring(n)", False),
        ("isstring(nul)", False),
        ("isstring(tostring(n))", True),
        ("isboolean(t)", True),
        ("isboolean(n > 1)", True),
        ("isboolean(n)", False),
        ("isboolean('true')", False),
        ("isboolean(nul)", False),
        ("isjson(arr)", True),
        ("isjson(obj)", True),
        ("isjson(doc)", False),  # a string holding JSON is a string until json() parses it
        ("isjson(json(doc))", True),
        ("isjson(json('[]'))", True),
        ("isjson(json('5'))", False),  # a JSON number is a number
        ("isjson(n)", False),
        ("isjson(nul)", False),
        # json(): parse a JSON text; what is not text is returned as it is
        ("json('5')", 5.0),
        ("json(' -2.5e1 ')", -25.0),
        ("json('\"abc\"')", "abc"),
        ("json('true')", True),
        ("json('null')", None),
        ("json(ids)", [3, 5, 8]),
        ("json(doc)", {"ids": [3, 5, 8], "driver": {"name": "ann"}}),
        ("json(n)", 7.0),
        ("json(arr)", [1, "a", [2, 3], {"k": None}, None, True]),
        ("json($missing)", None),
        ("json(bad)", ERROR),  # not JSON: unquoted key
        ("json(s)", ERROR),
        ("json(empty)", ERROR),
        ("json('NaN')", ERROR),  # not JSON, though Python's parser would take it
        ("json('[1, 2')", ERROR),
        ("json('[1] [2]')", ERROR),
        # a parsed value in expressions: compared, type-tested, printed, not computed with
        ("json(ids) == json('[3,5,8]')", True),
        ("json(ids) == json('[3,5]')", False),
        ("json(ids) == json('[3.0, 5, 8.0]')", True),  # numbers by value
        ("json('[true]') == json('[1]')", False),  # a boolean is not the number 1
        ('json(\'{"a":1,"b":2}\') == json(\'{"b":2,"a":1}\')', True),
        ("json(ids) != obj", True),
        ("json('7') == n", True),
        ("json('\"text\"') == s", True),
        ("tostring(json(ids))", "[3,5,8]"),
        ("json(ids) + 1", ERROR),
        ("json(ids) < 1", ERROR),
        ("if(json(ids), 1, 2)", 1.0),  # a non-empty array is true
        ("if(json('[]'), 1, 2)", 2.0),
        # json_array_contains(array, value): top-level elements, JSON equality
        ("json_array_contains(arr, 1)", True),
        ("json_array_contains(arr, 1.0)", True),
        ("json_array_contains(arr, 'a')", True),
        ("json_array_contains(arr, 'A')", False),  # strings exactly
        ("json_array_contains(arr, 'a*')", False),  # no wildcards
        ("json_array_contains(arr, 2)", False),  # 2 is inside a nested array, not an element
        ("json_array_contains(arr, json('[2, 3]'))", True),  # the nested array is one
        ("json_array_contains(arr, json('[3, 2]'))", False),
        ("json_array_contains(arr, json('{\"k\": null}'))", True),
        ("json_array_contains(arr, null)", True),  # the array has a null element
        ("json_array_contains(arr, $missing)", True),  # $missing is null
        ("json_array_contains(arr, true)", True),
        ("json_array_contains(json(ids), 1)", False),
        ("json_array_contains(json(ids), true)", False),  # true is not the number 1
        ("json_array_contains(json(ids), n + 1)", True),  # 7 + 1 = 8
        ("json_array_contains(json(doc), 3)", ERROR),  # an object, not an array
        ("json_array_contains(ids, 3)", ERROR),  # a string: parse it with json() first
        ("json_array_contains(n, 3)", ERROR),
        ("json_array_contains($missing, 3)", None),
        ("json_array_contains(json('[]'), 3)", False),
        ("json_array_contains(arr, missing)", ERROR),  # a bare missing name is an error
        ("json_array_contains(arr, error())", ERROR),
        # error(): always an error; boolean logic and if() treat it as everywhere else
        ("error()", ERROR),
        ("error() + 1", ERROR),
        ("isnull(error())", ERROR),
        ("isnumber(error())", ERROR),
        ("isjson(error())", ERROR),
        ("json(error())", ERROR),
        ("false && error()", False),
        ("true || error()", True),
        ("true && error()", ERROR),
        ("if(n > 5, n, error())", 7.0),
        ("if(n > 9, n, error())", ERROR),
        ("if(error(), 1, 2)", ERROR),
    ],
)
def test_values(text, value):
    result = ev(text)
    if value is ERROR:
        assert result is ERROR
    else:
        assert result == value and type(result) is type(value)


def test_type_tests_over_typed_columns_take_the_fast_path_and_agree():
    # Numeric and boolean columns with nulls, missing values and errors (n / 0 where n == 0).
    messages = [{"timestamp": float(i), "n": value} for i, value in enumerate([1, 0, None, 3])]
    messages.append({"timestamp": 4.0})
    for text in ("isnumber($n)", "isboolean($n > 0)", "isstring($n)", "isjson($n)", "isnumber(1 / $n)"):
        expression = compile_expression(text)
        column = expression.evaluate_frame(Frame(Messages.from_dicts(messages))).to_objects(len(messages))
        assert column == [expression.evaluate_raw(message) for message in messages], text
    assert compile_expression("isnumber(1 / $n)").evaluate_frame(
        Frame(Messages.from_dicts(messages))
    ).to_objects(5) == [True, ERROR, False, True, False]


def test_json_refuses_nesting_deeper_than_64():
    assert ev(f"isjson(json('{'[' * 64}{']' * 64}'))") is True
    assert ev(f"json('{'[' * 65}{']' * 65}')") is ERROR
    assert ev(f"json('{'[' * 5000}')") is ERROR  # not even parsed far


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("error(1)", "function 'error' takes 0 arguments, got 1 at 1"),
        ("isnumber()", "function 'isnumber' takes 1 argument, got 0 at 1"),
        ("isstring(a, b)", "function 'isstring' takes 1 argument, got 2 at 1"),
        ("isboolean()", "function 'isboolean' takes 1 argument, got 0 at 1"),
        ("isjson(1, 2)", "function 'isjson' takes 1 argument, got 2 at 1"),
        ("x + json()", "function 'json' takes 1 argument, got 0 at 5"),
        ("json_array_contains(a)", "function 'json_array_contains' takes 2 arguments, got 1 at 1"),
        ("json_array_contains(a, 1, 2)", "function 'json_array_contains' takes 2 arguments, got 3 at 1"),
        ("is_number(a)", "unknown function 'is_number' at 1"),
    ],
)
def test_wrong_calls_are_compile_errors(text, reason):
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert caught.value.reason == reason


def test_error_in_a_selector_is_an_unknown_state():
    # v: 5 5 9 5 0; the selector is on for v > 2 but errs for v > 8 (error()).
    # Unknown is off without merge_unknown (two runs), joins the run with it (one).
    messages = msgs([5, 5, 9, 5, 0])
    selector = {"type": "expression", "expression": "if(v > 8, error(), v > 2)"}
    assert spans(messages, one_selector(selector)) == [(0.0, 1.0), (3.0, 3.0)]
    assert spans(messages, one_selector({**selector, "merge_unknown": True})) == [(0.0, 3.0)]


def test_error_in_a_counter_skips_the_message_and_in_a_validation_rejects_it():
    # v: 1 2 50 3 (50 is a glitch); one datetime interval over all four messages.
    messages = msgs([1, 2, 50, 3])
    counters = [
        {"name": "sum", "type": "expression", "expression": "if(v < 10, v, error())", "method": "summary"},
        {"name": "n", "type": "expression", "expression": "if(v < 10, 1, error())", "method": "summary"},
        {"name": "last", "type": "expression", "expression": "if(v < 10, v, error())", "method": "last"},
    ]
    [interval] = calculate(messages, one_selector({"type": "datetime"}, counters))
    assert (interval["sum"], interval["n"], interval["last"]) == (6.0, 3.0, 3.0)
    # validate_message: the glitch is not a message of the calculator at all
    calc = one_selector(
        {"type": "expression", "expression": "v > 1"},
        validate_message="if(v < 10, true, error())",
    )
    assert spans(messages, calc) == [(1.0, 3.0)]


def test_selector_on_an_array_parameter():
    # A tracker reporting the ids of the tags it sees: on while tag 42 is among them.
    tags = [[1, 42], [42], [], ..., "[42]", [7, [42]], [42.0]]
    messages = msgs(tags, key="tags")
    selector = {"type": "expression", "expression": "json_array_contains($tags, 42)"}
    # 0 on, 1 on, 2 off, 3 null (off), 4 error (a string: off), 5 off (nested), 6 on
    assert spans(messages, one_selector(selector)) == [(0.0, 1.0), (6.0, 6.0)]
    parsing = {"type": "expression", "expression": "json_array_contains(json($tags), 42)"}
    assert spans(messages, one_selector(parsing)) == [(0.0, 1.0), (4.0, 4.0), (6.0, 6.0)]
