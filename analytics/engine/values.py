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


def is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, float | int) and not isinstance(v, bool)


def normalize(v):
    """A value read from a message, as expressions see it: ints become floats."""
    if type(v) is int:
        return float(v)
    return v


def truth(v) -> bool:
    """Boolean context: only a true value is true; errors and null are not."""
    if v is None or v is ERROR:
        return False
    if v is True or v is False:
        return v
    if is_number(v):
        return v != 0
    if isinstance(v, str | list | dict):
        return len(v) > 0
    return False


def as_number(v):
    """Arithmetic operand: numbers and booleans (0/1); anything else is an error."""
    if v is True:
        return 1.0
    if v is False:
        return 0.0
    if is_number(v):
        return float(v)
    return ERROR


def _finite(r):
    return r if math.isfinite(r) else ERROR


def arith(op: str, a, b):
    if a is ERROR or b is ERROR:
        return ERROR
    if a is None or b is None:
        return None
    x = as_number(a)
    y = as_number(b)
    if x is ERROR or y is ERROR:
        return ERROR
    if op == "+":
        return _finite(x + y)
    if op == "-":
        return _finite(x - y)
    if op == "*":
        return _finite(x * y)
    if op == "/":
        if y == 0:
            return ERROR
        return _finite(x / y)
    if op == "%":
        if y == 0:
            return ERROR
        return _finite(math.fmod(x, y))
    if op in ("&", "|"):
        if abs(x) >= _BIT_LIMIT or abs(y) >= _BIT_LIMIT:
            return ERROR
        i, j = int(x), int(y)
        return float(i & j if op == "&" else i | j)
    raise ValueError(op)


def negate(a):
    if a is ERROR:
        return ERROR
    if a is None:
        return None
    x = as_number(a)
    if x is ERROR:
        return ERROR
    return -x


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


def string_equal(a: str, b: str) -> bool:
    """``==`` on strings: the right operand may hold ``*`` and ``?`` wildcards (or the left one,
    when only it has them)."""
    if "*" in b or "?" in b:
        return _wildcard(b).fullmatch(a) is not None
    if "*" in a or "?" in a:
        return _wildcard(a).fullmatch(b) is not None
    return a == b


def _comparable(v):
    """Comparison operand: null and false are 0, true is 1."""
    if v is None or v is False:
        return 0.0
    if v is True:
        return 1.0
    return float(v)


def compare(op: str, a, b):
    if a is ERROR or b is ERROR:
        return ERROR
    a_str = isinstance(a, str)
    b_str = isinstance(b, str)
    if a_str and b_str:
        if op == "==":
            return string_equal(a, b)
        if op == "!=":
            return not string_equal(a, b)
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
    if a_str or b_str or isinstance(a, list | dict) or isinstance(b, list | dict):
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        return ERROR
    x = _comparable(a)
    y = _comparable(b)
    if op == "==":
        return x == y
    if op == "!=":
        return x != y
    if op == "<":
        return x < y
    if op == ">":
        return x > y
    if op == "<=":
        return x <= y
    return x >= y


def logical_and(a, b):
    a_false = a is not ERROR and not truth(a)
    b_false = b is not ERROR and not truth(b)
    if a_false or b_false:
        return False
    if a is ERROR or b is ERROR:
        return ERROR
    return True


def logical_or(a, b):
    if truth(a) or truth(b):
        return True
    if a is ERROR or b is ERROR:
        return ERROR
    return False


def logical_not(a):
    if a is ERROR:
        return ERROR
    return not truth(a)


# ---- functions -------------------------------------------------------------------------------


def _numeric1(fn):
    def apply(x):
        if x is ERROR:
            return ERROR
        if x is None:
            return None
        v = as_number(x)
        if v is ERROR:
            return ERROR
        return fn(v)

    return apply


def _sqrt(v):
    if v < 0:
        return ERROR
    return math.sqrt(v)


fn_abs = _numeric1(abs)
fn_ceil = _numeric1(lambda v: float(math.ceil(v)))
fn_floor = _numeric1(lambda v: float(math.floor(v)))
fn_sqrt = _numeric1(_sqrt)


def fn_round(x, digits=0.0):
    if x is ERROR or digits is ERROR:
        return ERROR
    if x is None or digits is None:
        return None
    v = as_number(x)
    d = as_number(digits)
    if v is ERROR or d is ERROR or abs(d) > 15:
        return ERROR
    scale = 10.0 ** int(d)
    return _finite(math.floor(v * scale + 0.5) / scale)


def fn_pow(x, y):
    if x is ERROR or y is ERROR:
        return ERROR
    if x is None or y is None:
        return None
    a = as_number(x)
    b = as_number(y)
    if a is ERROR or b is ERROR:
        return ERROR
    try:
        r = math.pow(a, b)
    except (ValueError, OverflowError, ZeroDivisionError):
        return ERROR
    return _finite(r)


def fn_min(*args):
    return _extreme(args, min)


def fn_max(*args):
    return _extreme(args, max)


def _extreme(args, pick):
    if any(a is ERROR for a in args):
        return ERROR
    if any(a is None for a in args):
        return None
    nums = [as_number(a) for a in args]
    if any(n is ERROR for n in nums):
        return ERROR
    return pick(nums)


def fn_isnull(x):
    if x is ERROR:
        return ERROR
    return x is None


def fn_if(c, a, b):
    if c is ERROR:
        return ERROR
    return a if truth(c) else b


def fn_tonumber(x):
    if x is ERROR:
        return ERROR
    if x is None:
        return None
    if isinstance(x, str):
        s = x.strip()
        try:
            v = float(s)
        except ValueError:
            try:
                v = float(int(s, 0))
            except ValueError:
                return ERROR
        return _finite(v)
    return as_number(x)


def format_number(v: float) -> str:
    if v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


def fn_tostring(x):
    if x is ERROR:
        return ERROR
    if x is None:
        return None
    if isinstance(x, str):
        return x
    if x is True:
        return "true"
    if x is False:
        return "false"
    if is_number(x):
        return format_number(float(x))
    return json.dumps(x, separators=(",", ":"), sort_keys=True)


_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off", ""}


def fn_toboolean(x):
    if x is ERROR:
        return ERROR
    if x is None:
        return None
    if x is True or x is False:
        return x
    if is_number(x):
        return x != 0
    if isinstance(x, str):
        s = x.strip().lower()
        if s in _TRUE_WORDS:
            return True
        if s in _FALSE_WORDS:
            return False
        return ERROR
    return ERROR
