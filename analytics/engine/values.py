"""Scalar semantics of expression values: the one definition that both the per-message path and
the columnar path's fallback use, so that they cannot disagree.

Values are JSON values. Numbers are evaluated as IEEE doubles (ints are read as floats), ``None``
is ``null``, and ``ERROR`` marks an evaluation error (missing bare parameter, wrong types,
division by zero, a result that is not finite).
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import TypeGuard


class _Error:
    """The error marker. Falsy, so that a boolean context never takes it for true."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ERROR"

    def __bool__(self) -> bool:
        return False


ERROR = _Error()

# Integers beyond 2**53 are not exact in a double; bitwise operators refuse them.
_BIT_LIMIT = float(2**53)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, float | int) and not isinstance(value, bool)


def normalize(value):
    """A value read from a message, as expressions see it: ints become floats."""
    if type(value) is int:
        return float(value)
    return value


def truth(value) -> bool:
    """Boolean context: only a true value is true; errors and null are not."""
    if value is None or value is ERROR:
        return False
    if value is True or value is False:
        return value
    if is_number(value):
        return value != 0
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return False


def as_number(value):
    """Arithmetic operand: numbers and booleans (0/1); anything else is an error."""
    if value is True:
        return 1.0
    if value is False:
        return 0.0
    if is_number(value):
        return float(value)
    return ERROR


def _finite(result):
    return result if math.isfinite(result) else ERROR


def arith(op: str, left, right):
    if left is ERROR or right is ERROR:
        return ERROR
    if left is None or right is None:
        return None
    left_number = as_number(left)
    right_number = as_number(right)
    if left_number is ERROR or right_number is ERROR:
        return ERROR
    if op == "+":
        return _finite(left_number + right_number)
    if op == "-":
        return _finite(left_number - right_number)
    if op == "*":
        return _finite(left_number * right_number)
    if op == "/":
        if right_number == 0:
            return ERROR
        return _finite(left_number / right_number)
    if op == "%":
        if right_number == 0:
            return ERROR
        return _finite(math.fmod(left_number, right_number))
    if op in ("&", "|"):
        if abs(left_number) >= _BIT_LIMIT or abs(right_number) >= _BIT_LIMIT:
            return ERROR
        left_bits, right_bits = int(left_number), int(right_number)
        return float(left_bits & right_bits if op == "&" else left_bits | right_bits)
    raise ValueError(op)


def negate(operand):
    if operand is ERROR:
        return ERROR
    if operand is None:
        return None
    number = as_number(operand)
    if number is ERROR:
        return ERROR
    return -number


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def string_equal(left: str, right: str) -> bool:
    """``==`` on strings: the right operand may hold ``*`` and ``?`` wildcards (or the left one,
    when only it has them)."""
    if "*" in right or "?" in right:
        return _wildcard(right).fullmatch(left) is not None
    if "*" in left or "?" in left:
        return _wildcard(left).fullmatch(right) is not None
    return left == right


def _comparable(value):
    """Comparison operand: null and false are 0, true is 1."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    return float(value)


def json_equal(left, right) -> bool:
    """Equality of JSON values: numbers by value (``1`` equals ``1.0``), a boolean only a
    boolean, strings exactly (no wildcards), arrays element by element, objects key by key."""
    if is_number(left) or is_number(right):
        return is_number(left) and is_number(right) and float(left) == float(right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            json_equal(item, other) for item, other in zip(left, right, strict=True)
        )
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(
            json_equal(value, right[key]) for key, value in left.items()
        )
    if isinstance(left, list | dict) or isinstance(right, list | dict):
        return False
    return type(left) is type(right) and left == right


def compare(op: str, left, right):
    if left is ERROR or right is ERROR:
        return ERROR
    left_is_text = isinstance(left, str)
    right_is_text = isinstance(right, str)
    if left_is_text and right_is_text:
        if op == "==":
            return string_equal(left, right)
        if op == "!=":
            return not string_equal(left, right)
        return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]
    if left_is_text or right_is_text or isinstance(left, list | dict) or isinstance(right, list | dict):
        if op == "==":
            return json_equal(left, right)
        if op == "!=":
            return not json_equal(left, right)
        return ERROR
    left_number = _comparable(left)
    right_number = _comparable(right)
    if op == "==":
        return left_number == right_number
    if op == "!=":
        return left_number != right_number
    if op == "<":
        return left_number < right_number
    if op == ">":
        return left_number > right_number
    if op == "<=":
        return left_number <= right_number
    return left_number >= right_number


def logical_and(left, right):
    left_false = left is not ERROR and not truth(left)
    right_false = right is not ERROR and not truth(right)
    if left_false or right_false:
        return False
    if left is ERROR or right is ERROR:
        return ERROR
    return True


def logical_or(left, right):
    if truth(left) or truth(right):
        return True
    if left is ERROR or right is ERROR:
        return ERROR
    return False


def logical_not(operand):
    if operand is ERROR:
        return ERROR
    return not truth(operand)


# ---- functions -------------------------------------------------------------------------------


def _numeric1(fn):
    def apply(operand):
        if operand is ERROR:
            return ERROR
        if operand is None:
            return None
        number = as_number(operand)
        if number is ERROR:
            return ERROR
        return fn(number)

    return apply


def _sqrt(number):
    if number < 0:
        return ERROR
    return math.sqrt(number)


fn_abs = _numeric1(abs)
fn_ceil = _numeric1(lambda number: float(math.ceil(number)))
fn_floor = _numeric1(lambda number: float(math.floor(number)))
fn_sqrt = _numeric1(_sqrt)


def fn_round(operand, digits=0.0):
    if operand is ERROR or digits is ERROR:
        return ERROR
    if operand is None or digits is None:
        return None
    number = as_number(operand)
    places = as_number(digits)
    if number is ERROR or places is ERROR or abs(places) > 15:
        return ERROR
    scale = 10.0 ** int(places)
    return _finite(math.floor(number * scale + 0.5) / scale)


def fn_pow(base, exponent):
    if base is ERROR or exponent is ERROR:
        return ERROR
    if base is None or exponent is None:
        return None
    base_number = as_number(base)
    exponent_number = as_number(exponent)
    if base_number is ERROR or exponent_number is ERROR:
        return ERROR
    try:
        result = math.pow(base_number, exponent_number)
    except (ValueError, OverflowError, ZeroDivisionError):
        return ERROR
    return _finite(result)


def fn_min(*args):
    return _extreme(args, min)


def fn_max(*args):
    return _extreme(args, max)


def _extreme(args, pick):
    if any(argument is ERROR for argument in args):
        return ERROR
    if any(argument is None for argument in args):
        return None
    numbers = [as_number(argument) for argument in args]
    if any(number is ERROR for number in numbers):
        return ERROR
    return pick(numbers)


def fn_isnull(operand):
    if operand is ERROR:
        return ERROR
    return operand is None


def fn_if(condition, then_value, else_value):
    if condition is ERROR:
        return ERROR
    return then_value if truth(condition) else else_value


def fn_tonumber(operand):
    if operand is ERROR:
        return ERROR
    if operand is None:
        return None
    if isinstance(operand, str):
        text = operand.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                number = float(int(text, 0))
            except ValueError:
                return ERROR
        return _finite(number)
    return as_number(operand)


def format_number(number: float) -> str:
    if number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    return repr(number)


def fn_tostring(operand):
    if operand is ERROR:
        return ERROR
    if operand is None:
        return None
    if isinstance(operand, str):
        return operand
    if operand is True:
        return "true"
    if operand is False:
        return "false"
    if is_number(operand):
        return format_number(float(operand))
    return json.dumps(operand, separators=(",", ":"), sort_keys=True)


_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off", ""}


def fn_toboolean(operand):
    if operand is ERROR:
        return ERROR
    if operand is None:
        return None
    if operand is True or operand is False:
        return operand
    if is_number(operand):
        return operand != 0
    if isinstance(operand, str):
        word = operand.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        return ERROR
    return ERROR


# ---- types and JSON ------------------------------------------------------------------------------


def fn_error():
    """``error()``: the evaluation fails on purpose. A selector takes the message as unknown, a
    counter skips it, a validation does not pass it."""
    return ERROR


def _type_test(test):
    def apply(operand):
        if operand is ERROR:
            return ERROR
        return test(operand)

    return apply


fn_isnumber = _type_test(is_number)
fn_isstring = _type_test(lambda operand: isinstance(operand, str))
fn_isboolean = _type_test(lambda operand: operand is True or operand is False)
fn_isjson = _type_test(lambda operand: isinstance(operand, list | dict))


def _refuse_constant(name: str):
    raise ValueError(name)


# JSON texts nested deeper than this are refused (an error), not parsed.
JSON_MAX_DEPTH = 64


def _depth(value, limit: int) -> int:
    """How deeply ``value`` nests arrays and objects, counting no further than ``limit + 1``."""
    if limit < 0:
        return 1
    if isinstance(value, list):
        return 1 + max((_depth(item, limit - 1) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item, limit - 1) for item in value.values()), default=0)
    return 0


def fn_json(operand):
    """``json(x)``: the JSON value of the text ``x`` (an object, an array, a number, a string, a
    boolean or null); text that is not JSON is an error. A value that is not text is already a
    JSON value and is returned as it is."""
    if operand is ERROR or not isinstance(operand, str):
        return operand
    try:
        value = json.loads(operand, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return ERROR
    if _depth(value, JSON_MAX_DEPTH) > JSON_MAX_DEPTH:
        return ERROR
    return normalize(value)


def fn_json_array_contains(array, value):
    """``json_array_contains(array, value)``: whether an element of the array (top level only)
    equals ``value`` (``json_equal``; ``null`` finds a null element). A first argument that is
    not an array is an error; null gives null."""
    if array is ERROR or value is ERROR:
        return ERROR
    if array is None:
        return None
    if not isinstance(array, list):
        return ERROR
    return any(json_equal(item, value) for item in array)
