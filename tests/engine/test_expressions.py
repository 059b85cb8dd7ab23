"""The expression language (DESIGN 7.3): parsing, semantics, errors, and the agreement of the
per-message and columnar evaluators."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.engine import ERROR, EvaluationError, ExpressionError, Messages, compile_expression
from analytics.engine.expressions import Frame


def ev(text, message=None, previous=None, **kw):
    return compile_expression(text, **kw).evaluate_raw(message or {}, previous)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("-2 * 3", -6.0),
        ("- (2 + 1)", -3.0),
        ("7 / 2", 3.5),
        ("10 % 4", 2.0),
        ("-7 % 3", -1.0),
        ("0x1F", 31.0),
        ("0x1f & 0x3", 3.0),
        ("4 | 1", 5.0),
        ("1 | 2 == 2", 1.0),  # C precedence: == binds tighter than |
        ("1 < 2 == true", True),
        ("2 > 1 && 1 > 2 || true", True),
        ("'a' + 1", ERROR),
        ("'tr\\'uck'", "tr'uck"),
        ('"line\\nbreak"', "line\nbreak"),
        ("1.5e3", 1500.0),
        (".5", 0.5),
        ("true", True),
        ("null", None),
        ("!true", False),
        ("!null", True),
    ],
)
def test_literals_and_operators(text, value):
    assert ev(text) == value


def test_parameters_bare_dollar_hash_previous():
    m = {"a.b": 5, "s": "x", "n": None}
    prev = {"a.b": 2}
    assert ev("a.b * 2", m) == 10.0
    assert ev("missing", m) is ERROR
    assert ev("$missing", m) is None
    assert ev("n", m) is None  # present with a null value is null, not an error
    assert ev("#a.b", m, prev) == 2.0
    assert ev("previous('a.b')", m, prev) == 2.0
    assert ev("#a.b", m, None) is None
    assert ev("a.b - #a.b", m, prev) == 3.0
    assert ev("din.1", {"din.1": True}) is True  # segments may start with a digit


def test_null_and_boolean_comparisons():
    assert ev("$x == 0", {}) is True
    assert ev("$x < 1", {}) is True
    assert ev("false == 0", {}) is True
    assert ev("true == 1", {}) is True
    assert ev("null == null", {}) is True
    assert ev("$x + 1", {}) is None  # null propagates through arithmetic
    assert ev("s == 5", {"s": "5"}) is False
    assert ev("s != 5", {"s": "5"}) is True
    assert ev("s < 5", {"s": "5"}) is ERROR


def test_wildcards():
    m = {"name": "truck-12"}
    assert ev("name == 'truck*'", m) is True
    assert ev("name == 'truck-1?'", m) is True
    assert ev("name == 'truck-?'", m) is False
    assert ev("name != 'car*'", m) is True
    assert ev("'tr*' == name", m) is True
    assert ev("name == 'truck.12'", m) is False  # only * and ? are special


def test_errors_and_boolean_context():
    assert ev("1 / 0") is ERROR
    assert ev("1 % 0") is ERROR
    assert ev("$x / 0") is None  # null first: null / 0 is null
    assert ev("false && missing") is False
    assert ev("missing && false") is False
    assert ev("true && missing") is ERROR
    assert ev("true || missing") is True
    assert ev("false || missing") is ERROR
    assert ev("not(missing)") is ERROR
    assert ev("if(missing, 1, 2)") is ERROR
    assert ev("if(null, 1, 2)") == 2.0
    assert ev("if(1, 'a', missing)") == "a"
    expr = compile_expression("10 / speed")
    assert expr.matches({"speed": 0}) is False
    with pytest.raises(EvaluationError):
        expr.evaluate({"speed": 0})
    assert expr.evaluate({"speed": 4}) == 2.5
    assert compile_expression("$x").matches({}) is False


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("exists('a')", True),
        ("exists('zz')", False),
        ("isnull($zz)", True),
        ("isnull(a)", False),
        ("tonumber('12.5')", 12.5),
        ("tonumber('0x10')", 16.0),
        ("tonumber('abc')", ERROR),
        ("tonumber(true)", 1.0),
        ("tostring(12)", "12"),
        ("tostring(1.5)", "1.5"),
        ("tostring(true)", "true"),
        ("toboolean('on')", True),
        ("toboolean(0)", False),
        ("toboolean('maybe')", ERROR),
        ("abs(-3)", 3.0),
        ("round(2.5)", 3.0),
        ("round(-2.5)", -2.0),
        ("round(3.14159, 2)", 3.14),
        ("ceil(1.2)", 2.0),
        ("floor(-1.2)", -2.0),
        ("min(3, 1, 2)", 1.0),
        ("max(3, 1, 2)", 3.0),
        ("max(1, $zz)", None),
        ("sqrt(16)", 4.0),
        ("sqrt(-1)", ERROR),
        ("pow(2, 10)", 1024.0),
        ("pow(-8, 0.5)", ERROR),
        ("pow(0, -1)", ERROR),
        ("pow(10, 400)", ERROR),
    ],
)
def test_functions(text, value):
    assert ev(text, {"a": 1}) == value


def test_time_functions_in_timezone():
    # 2024-03-31 00:30 UTC is 02:30? No: Berlin switches at 01:00 UTC, so it is 01:30 CET.
    t = 1711845000.0  # 2024-03-31T00:30:00Z
    m = {"timestamp": t}
    assert ev("hour()", m) == 0.0
    assert ev("hour()", m, timezone="Europe/Berlin") == 1.0
    assert ev("hour(timestamp + 3600)", m, timezone="Europe/Berlin") == 3.0  # DST jump
    assert ev("minute()", m) == 30.0
    assert ev("day()", m) == 31.0
    assert ev("month()", m) == 3.0
    assert ev("year()", m) == 2024.0
    assert ev("weekday()", m) == 7.0  # a Sunday; Monday is 1
    assert ev("hour(1e20)", m) is ERROR
    assert ev("hour($zz)", m) is None


def test_mileage_and_geofence():
    a = {"position.latitude": 52.0, "position.longitude": 0.0}
    b = {"position.latitude": 52.01, "position.longitude": 0.0}
    d = ev("mileage()", b, a)
    assert d == pytest.approx(1.1119, abs=1e-4)
    assert ev("mileage()", b, None) is None
    assert ev("mileage()", {}, a) is None
    # measured from the last earlier message with a position, not the message just before
    can = {"can.rpm": 900}
    assert compile_expression("mileage()").evaluate_raw(b, can, positioned=a) == d
    assert ev("mileage()", b, can) is None  # the caller said nothing about earlier positions
    fences = [
        {"type": "circle", "name": "depot", "center": {"lat": 52.0, "lon": 0.0}, "radius": 0.5, "zone": 7},
        {
            "type": "polygon",
            "name": "box",
            "path": [
                {"lat": 51.9, "lon": -0.1},
                {"lat": 52.1, "lon": -0.1},
                {"lat": 52.1, "lon": 0.1},
                {"lat": 51.9, "lon": 0.1},
            ],
        },
    ]
    assert ev("geofence('name')", a, geofences=fences) == "depot"
    assert ev("geofence('zone')", a, geofences=fences) == 7.0
    assert ev("geofence('name')", b, geofences=fences) == "box"
    assert (
        ev("geofence('name')", {"position.latitude": 10.0, "position.longitude": 0.0}, geofences=fences)
        is None
    )
    assert ev("geofence('name')", {}, geofences=fences) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(speed > 5))", "unexpected ')' at 12"),
        ("speed >", "unexpected end of expression at 8"),
        ("speed > > 5", "unexpected '>' at 9"),
        ("a @ b", "unexpected character '@' at 3"),
        ("foo(1)", "unknown function 'foo' at 1"),
        ("1 + round()", "function 'round' takes 1 to 2 arguments, got 0 at 5"),
        ("pow(1)", "function 'pow' takes 2 arguments, got 1 at 1"),
        ("exists(a)", "function 'exists' takes a quoted name at 1"),
        ("'unterminated", 'unexpected character "\'" at 1'),
        ("", "expression is empty"),
    ],
)
def test_parse_errors_name_position(text, message):
    with pytest.raises(ExpressionError) as e:
        compile_expression(text)
    assert str(e.value) == message


def test_no_python_evaluation():
    for text in ("__import__('os')", "open('x')", "a[0]", "a; b"):
        with pytest.raises(ExpressionError):
            compile_expression(text)
    # Names are only ever keys of the message: these are just (missing) parameters.
    assert ev("__class__", {}) is ERROR
    assert ev("a.__class__", {"a": 1}) is ERROR


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(ExpressionError):
        compile_expression("(" * 5000 + "1" + ")" * 5000)


def test_unknown_timezone():
    with pytest.raises(ExpressionError):
        compile_expression("hour()", timezone="Mars/Olympus")


# ---- columnar == per-message --------------------------------------------------------------

_leaf = st.sampled_from(
    [
        "a",
        "b",
        "$a",
        "$c",
        "#a",
        "#b",
        "s",
        "$s",
        "1",
        "0",
        "2.5",
        "-3",
        "null",
        "true",
        "false",
        "'x*'",
        "'xy'",
        "timestamp",
        "mileage()",
        "exists('c')",
        "error()",
        "j",
        "$j",
        "json('[1, \"xy\", [2]]')",
    ]
)
_binop = st.sampled_from(["+", "-", "*", "/", "%", "==", "!=", "<", ">=", "&&", "||", "&", "|"])
_fn1 = st.sampled_from(
    [
        "abs",
        "isnull",
        "tonumber",
        "toboolean",
        "tostring",
        "not",
        "ceil",
        "sqrt",
        "round",
        "hour",
        "weekday",
        "isnumber",
        "isstring",
        "isboolean",
        "isjson",
        "json",
    ]
)


def _extend(sub):
    return st.one_of(
        st.tuples(sub, _binop, sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(_fn1, sub).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(sub, sub, sub).map(lambda t: f"if({t[0]}, {t[1]}, {t[2]})"),
        st.tuples(sub, sub).map(lambda t: f"max({t[0]}, {t[1]})"),
        st.tuples(sub, sub).map(lambda t: f"pow({t[0]}, {t[1]})"),
        st.tuples(sub, sub).map(lambda t: f"json_array_contains({t[0]}, {t[1]})"),
    )


_expressions = st.recursive(_leaf, _extend, max_leaves=10)


_value = st.one_of(
    st.just(...), st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.5, -1.5, 1e300])
)
_svalue = st.one_of(st.just(...), st.sampled_from(["xy", "x", "", "3", "xyz"]), st.integers(0, 2))
# JSON values and texts: arrays (nested, mixed), an object, JSON and non-JSON strings, a number
_jvalue = st.sampled_from(
    [..., None, [1, "xy", [2]], [], [True, None], {"k": [1]}, "[1, 2]", '{"a": 1}', "{bad", 2, [2.0, 1]]
)


def _message(i, a, b, c, s, j=...):
    m = {"timestamp": 1700000000.0 + i * 1800}
    if i % 3 != 1:  # some messages between fixes have no position
        m["position.latitude"] = 50 + i * 0.001
        m["position.longitude"] = 10.0
    for k, v in (("a", a), ("b", b), ("c", c), ("s", s), ("j", j)):
        if v is not ...:
            m[k] = v
    return m


def _same(x, y):
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12)
    return x == y and type(x) is type(y)


@settings(
    max_examples=int(__import__("os").environ.get("ENGINE_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    text=_expressions,
    rows=st.lists(st.tuples(_value, _value, _value, _svalue, _jvalue), min_size=1, max_size=8),
)
def test_columnar_equals_per_message(text, rows):
    expr = compile_expression(text, timezone="Europe/Berlin")
    messages = [_message(i, *r) for i, r in enumerate(rows)]
    cols = expr.evaluate_frame(Frame(Messages.from_dicts(messages))).to_objects(len(messages))
    positioned = None
    for i, m in enumerate(messages):
        one = expr.evaluate_raw(m, messages[i - 1] if i else None, positioned=positioned)
        assert _same(one, cols[i]), (text, i, one, cols[i])
        if "position.latitude" in m:
            positioned = m


def test_columnar_typed_fast_path_matches():
    n = 1000
    rng = np.random.default_rng(3)
    speed = rng.uniform(0, 100, n)
    speed[::7] = np.nan  # absent
    m = Messages.from_columns(np.arange(n, dtype=float), {"speed": speed})
    expr = compile_expression("speed > 50 && speed / 2 < 40 || $speed == 0")
    vec = expr.evaluate_frame(Frame(m))
    dicts = m.to_dicts()
    objs = vec.to_objects(n)
    assert objs == [expr.evaluate_raw(d) for d in dicts]
