"""The expression language of DESIGN 7.3.

``parse`` turns text into a small tree (lark, LALR); ``CompiledExpression`` holds two evaluators
built from that tree once:

* a per-message one: Python closures over a message dict (``evaluate``, ``matches``, and the
  engine's per-interval evaluation of ``interval`` counters and ``validate_interval``);
* a columnar one over numpy arrays (``evaluate_frame``), which the engine uses for selectors,
  counters and ``validate_message``. Typed columns (numbers, booleans) are computed with numpy;
  an operation on an ``obj`` column (strings, mixed types) falls back to the scalar functions of
  ``values`` element by element, so both paths share one definition of the semantics.

A columnar value is a ``Vec``: ``kind`` (``num``/``bool``/``obj``), ``values``, and the masks
``null`` and ``err`` (``None`` = nowhere).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import values as V
from .errors import EvaluationError, ExpressionError
from .geo import Geofence, first_containing, haversine, haversine_vec
from .messages import Column
from .timeutil import MAX_TS, MIN_TS, fields, in_range, scalar_field, zone

MAX_LENGTH = 10_000
LAT = "position.latitude"
LON = "position.longitude"

GRAMMAR = r"""
?start: lor
?lor: land | lor "||" land -> lor
?land: bor | land "&&" bor -> land
?bor: band | bor "|" band -> bitor
?band: equality | band "&" equality -> bitand
?equality: relation | equality EQOP relation -> compare
?relation: additive | relation RELOP additive -> compare
?additive: multiplicative | additive ADDOP multiplicative -> arith
?multiplicative: unary | multiplicative MULOP unary -> arith
?unary: primary | "-" unary -> neg | "!" unary -> lnot
?primary: NUMBER -> number
    | HEXNUMBER -> hexnumber
    | STRING -> string
    | "true" -> true
    | "false" -> false
    | "null" -> null
    | NAME -> name
    | "$" NAME -> optname
    | "#" NAME -> prevname
    | NAME "(" [lor ("," lor)*] ")" -> call
    | "(" lor ")"
EQOP: "==" | "!="
RELOP: "<=" | ">=" | "<" | ">"
ADDOP: "+" | "-"
MULOP: "*" | "/" | "%"
NAME: /[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*/
HEXNUMBER.2: /0[xX][0-9a-fA-F]+/
NUMBER: /(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/
STRING: /"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/
%ignore /[ \t\r\n]+/
"""

_parser: Lark | None = None


def _get_parser() -> Lark:
    global _parser
    if _parser is None:
        _parser = Lark(GRAMMAR, parser="lalr", maybe_placeholders=True)
    return _parser


# ---- the tree --------------------------------------------------------------------------------
# Nodes are tuples: ("const", value) ("param", name, mode) with mode bare/opt/prev,
# ("neg", x) ("not", x) ("arith", op, a, b) ("compare", op, a, b) ("and", a, b) ("or", a, b)
# ("call", name, args, position).

FUNCTIONS = {
    # name: (min args, max args)
    "not": (1, 1),
    "if": (3, 3),
    "exists": (1, 1),
    "isnull": (1, 1),
    "tonumber": (1, 1),
    "tostring": (1, 1),
    "toboolean": (1, 1),
    "abs": (1, 1),
    "round": (1, 2),
    "ceil": (1, 1),
    "floor": (1, 1),
    "min": (1, 64),
    "max": (1, 64),
    "sqrt": (1, 1),
    "pow": (2, 2),
    "mileage": (0, 0),
    "hour": (0, 1),
    "minute": (0, 1),
    "day": (0, 1),
    "weekday": (0, 1),
    "month": (0, 1),
    "year": (0, 1),
    "geofence": (1, 1),
    "previous": (1, 1),
}
_LITERAL_ARG = {"exists", "geofence", "previous"}
TIME_FUNCTIONS = {"hour", "minute", "day", "weekday", "month", "year"}


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "/": "/", "0": "\0"}
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body

    def repl(m):
        code = m.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return _ESCAPE_RE.sub(repl, body)


class _ToAst(Transformer):
    def number(self, t):
        return ("const", float(t[0]))

    def hexnumber(self, t):
        return ("const", float(int(t[0], 16)))

    def string(self, t):
        return ("const", _unquote(str(t[0])))

    def true(self, _):
        return ("const", True)

    def false(self, _):
        return ("const", False)

    def null(self, _):
        return ("const", None)

    def name(self, t):
        return ("param", str(t[0]), "bare")

    def optname(self, t):
        return ("param", str(t[0]), "opt")

    def prevname(self, t):
        return ("param", str(t[0]), "prev")

    def neg(self, t):
        x = t[0]
        if x[0] == "const" and V.is_number(x[1]):
            return ("const", -x[1])
        return ("neg", x)

    def lnot(self, t):
        return ("not", t[0])

    def arith(self, t):
        return ("arith", str(t[1]), t[0], t[2])

    def compare(self, t):
        return ("compare", str(t[1]), t[0], t[2])

    def bitand(self, t):
        return ("arith", "&", t[0], t[1])

    def bitor(self, t):
        return ("arith", "|", t[0], t[1])

    def land(self, t):
        return ("and", t[0], t[1])

    def lor(self, t):
        return ("or", t[0], t[1])

    def call(self, t):
        name_tok: Token = t[0]
        args = [a for a in t[1:] if a is not None]
        name = str(name_tok)
        pos = name_tok.start_pos + 1
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function '{name}' at {pos}", pos)
        lo, hi = FUNCTIONS[name]
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ExpressionError(
                f"function '{name}' takes {want} argument{'s' if hi != 1 else ''}, got {len(args)} at {pos}",
                pos,
            )
        if name in _LITERAL_ARG and not (args[0][0] == "const" and isinstance(args[0][1], str)):
            raise ExpressionError(f"function '{name}' takes a quoted name at {pos}", pos)
        if name == "previous":
            return ("param", args[0][1], "prev")
        if name == "not":
            return ("not", args[0])
        return ("call", name, args, pos)


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "end of expression"
    return repr(str(tok))


def parse(text: str):
    """The tree of ``text``; raises ``ExpressionError`` naming the position (1-based)."""
    if not isinstance(text, str):
        raise ExpressionError("expression must be a string")
    if not text.strip():
        raise ExpressionError("expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = _get_parser().parse(text)
    except UnexpectedCharacters as e:
        at = e.pos_in_stream
        assert at is not None  # the lexer always says where the character is
        pos = at + 1
        raise ExpressionError(f"unexpected character {text[at]!r} at {pos}", pos) from None
    except UnexpectedToken as e:
        if e.token.type == "$END":
            pos = len(text) + 1
            raise ExpressionError(f"unexpected end of expression at {pos}", pos) from None
        pos = (e.token.start_pos or 0) + 1
        raise ExpressionError(f"unexpected {_describe(e.token)} at {pos}", pos) from None
    except UnexpectedEOF:
        pos = len(text) + 1
        raise ExpressionError(f"unexpected end of expression at {pos}", pos) from None
    except UnexpectedInput as e:  # pragma: no cover - other lark input errors
        raise ExpressionError(f"cannot parse expression: {e}") from None
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    try:
        return _ToAst().transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, ExpressionError):
            raise e.orig_exc from None
        raise
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None


def _walk(node):
    yield node
    kind = node[0]
    if kind in ("neg", "not"):
        yield from _walk(node[1])
    elif kind in ("arith", "compare"):
        yield from _walk(node[2])
        yield from _walk(node[3])
    elif kind in ("and", "or"):
        yield from _walk(node[1])
        yield from _walk(node[2])
    elif kind == "call":
        for a in node[2]:
            yield from _walk(a)


# ---- scalar compilation ------------------------------------------------------------------------

_MISS = object()


def _position(d) -> tuple[float, float] | None:
    if d is None:
        return None
    lat = d.get(LAT)
    lon = d.get(LON)
    if V.is_number(lat) and V.is_number(lon):
        return float(lat), float(lon)
    return None


def _scalar(node, tz, geofences):
    kind = node[0]
    if kind == "const":
        value = node[1]
        return lambda c, p, q: value
    if kind == "param":
        name, mode = node[1], node[2]
        if mode == "bare":

            def bare(c, p, q):
                v = c.get(name, _MISS)
                if v is _MISS:
                    return V.ERROR
                return V.normalize(v)

            return bare
        if mode == "opt":
            return lambda c, p, q: V.normalize(c.get(name))
        return lambda c, p, q: None if p is None else V.normalize(p.get(name))
    if kind == "neg":
        f = _scalar(node[1], tz, geofences)
        return lambda c, p, q: V.negate(f(c, p, q))
    if kind == "not":
        f = _scalar(node[1], tz, geofences)
        return lambda c, p, q: V.logical_not(f(c, p, q))
    if kind == "arith":
        op = node[1]
        fa = _scalar(node[2], tz, geofences)
        fb = _scalar(node[3], tz, geofences)
        return lambda c, p, q: V.arith(op, fa(c, p, q), fb(c, p, q))
    if kind == "compare":
        op = node[1]
        fa = _scalar(node[2], tz, geofences)
        fb = _scalar(node[3], tz, geofences)
        return lambda c, p, q: V.compare(op, fa(c, p, q), fb(c, p, q))
    if kind == "and":
        fa = _scalar(node[1], tz, geofences)
        fb = _scalar(node[2], tz, geofences)
        return lambda c, p, q: V.logical_and(fa(c, p, q), fb(c, p, q))
    if kind == "or":
        fa = _scalar(node[1], tz, geofences)
        fb = _scalar(node[2], tz, geofences)
        return lambda c, p, q: V.logical_or(fa(c, p, q), fb(c, p, q))
    assert kind == "call"
    name, args = node[1], node[2]
    fs = [_scalar(a, tz, geofences) for a in args]
    if name == "if":
        fc, fa, fb = fs

        def if_(c, p, q):
            cond = fc(c, p, q)
            if cond is V.ERROR:
                return V.ERROR
            return fa(c, p, q) if V.truth(cond) else fb(c, p, q)

        return if_
    if name == "exists":
        key = args[0][1]
        return lambda c, p, q: key in c
    if name == "mileage":

        def mileage(c, p, q):
            a = _position(q)
            b = _position(c)
            if a is None or b is None:
                return None
            return haversine(a[0], a[1], b[0], b[1])

        return mileage
    if name in TIME_FUNCTIONS:
        ft = fs[0] if fs else (lambda c, p, q: c.get("timestamp"))

        def timefn(c, p, q):
            t = ft(c, p, q)
            if t is V.ERROR:
                return V.ERROR
            if t is None:
                return None
            if not V.is_number(t) or not in_range(float(t)):
                return V.ERROR
            return scalar_field(name, float(t), tz)

        return timefn
    if name == "geofence":
        field = args[0][1]

        def geofence_(c, p, q):
            pos = _position(c)
            if pos is None:
                return None
            for g in geofences:
                if g.contains(pos[0], pos[1]):
                    return V.normalize(g.config.get(field))
            return None

        return geofence_
    fn = _FUNCTIONS_SCALAR[name]
    if len(fs) == 1:
        f0 = fs[0]
        return lambda c, p, q: fn(f0(c, p, q))
    if len(fs) == 2:
        f0, f1 = fs
        return lambda c, p, q: fn(f0(c, p, q), f1(c, p, q))
    return lambda c, p, q: fn(*(f(c, p, q) for f in fs))


_FUNCTIONS_SCALAR = {
    "isnull": V.fn_isnull,
    "tonumber": V.fn_tonumber,
    "tostring": V.fn_tostring,
    "toboolean": V.fn_toboolean,
    "abs": V.fn_abs,
    "round": V.fn_round,
    "ceil": V.fn_ceil,
    "floor": V.fn_floor,
    "min": V.fn_min,
    "max": V.fn_max,
    "sqrt": V.fn_sqrt,
    "pow": V.fn_pow,
}


# ---- columnar evaluation -----------------------------------------------------------------------


def _or(*masks):
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else (out | m)
    return out


def _andnot(m, k):
    if m is None:
        return None
    if k is None:
        return m
    return m & ~k


class Vec:
    __slots__ = ("err", "kind", "null", "values")

    def __init__(self, kind, values, null=None, err=None):
        self.kind = kind
        self.values = values
        self.null = null
        self.err = err

    @classmethod
    def const(cls, value) -> Vec:
        if value is None:
            return cls("num", np.zeros(1), np.ones(1, bool))
        if value is True or value is False:
            return cls("bool", np.array([value]))
        if V.is_number(value):
            return cls("num", np.array([float(value)]))
        arr = np.empty(1, dtype=object)
        arr[0] = value
        return cls("obj", arr)

    @classmethod
    def from_objects(cls, objs: list) -> Vec:
        n = len(objs)
        err = np.fromiter((o is V.ERROR for o in objs), bool, n)
        null = np.fromiter((o is None for o in objs), bool, n)
        real = [o for o in objs if o is not None and o is not V.ERROR]
        err_m = err if err.any() else None
        null_m = null if null.any() else None
        if all(V.is_number(o) for o in real):
            vals = np.fromiter((float(o) if V.is_number(o) else 0.0 for o in objs), np.float64, n)
            return cls("num", vals, null_m, err_m)
        if all(o is True or o is False for o in real):
            vals = np.fromiter((o is True for o in objs), bool, n)
            return cls("bool", vals, null_m, err_m)
        arr = np.empty(n, dtype=object)
        arr[:] = [None if (o is None or o is V.ERROR) else o for o in objs]
        return cls("obj", arr, null_m, err_m)

    def expand(self, n: int) -> Vec:
        def full(a):
            if a is None or len(a) == n:
                return a
            return np.broadcast_to(a, (n,)).copy()

        return Vec(self.kind, full(self.values), full(self.null), full(self.err))

    def to_objects(self, n: int) -> list:
        v = self.expand(n)
        out = list(v.values) if v.kind == "obj" else v.values.tolist()
        if v.null is not None:
            for i in np.flatnonzero(v.null).tolist():
                out[i] = None
        if v.err is not None:
            for i in np.flatnonzero(v.err).tolist():
                out[i] = V.ERROR
        return out

    def floats(self) -> np.ndarray:
        return self.values.astype(np.float64) if self.kind == "bool" else self.values

    def truth(self) -> np.ndarray:
        """Where the value is true (errors and nulls are not)."""
        if self.kind == "bool":
            t = self.values
        elif self.kind == "num":
            t = self.values != 0
        else:
            t = np.fromiter((V.truth(o) for o in self.values), bool, len(self.values))
        if self.null is not None:
            t = t & ~self.null
        if self.err is not None:
            t = t & ~self.err
        return t


def _vec_from_column(col: Column | None, n: int, missing_is: str) -> Vec:
    """``missing_is``: ``err`` for a bare name, ``null`` for ``$name``/``#name``."""
    if col is None:
        mask = np.ones(n, bool)
        return Vec(
            "num", np.zeros(n), None if missing_is == "err" else mask, mask if missing_is == "err" else None
        )
    values = col.values
    if col.kind == "obj":
        values = np.empty(n, dtype=object)  # not np.array(list): lists would become a 2-D array
        values[:] = [V.normalize(o) for o in col.values.tolist()]
    if missing_is == "err":
        return Vec(col.kind, values, col.null, col.missing)
    return Vec(col.kind, values, _or(col.null, col.missing))


class Rows(Protocol):
    """What a frame reads: ``Messages``, or a subset of their rows gathered column by column."""

    @property
    def timestamps(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def column(self, name: str) -> Column | None: ...


class Frame:
    """Rows for columnar evaluation: the messages, and for each row whether it has a previous row
    (``prev_valid``; the first row never has one)."""

    def __init__(self, messages: Rows, prev_valid: np.ndarray | None = None):
        self.messages = messages
        self.n = len(messages)
        if prev_valid is None:
            prev_valid = np.ones(self.n, bool)
            if self.n:
                prev_valid[0] = False
        self.prev_valid = prev_valid
        self._prev_idx = None
        self._cache: dict = {}

    @property
    def timestamps(self) -> np.ndarray:
        return self.messages.timestamps

    def column(self, name: str) -> Column | None:
        return self.messages.column(name)

    def prev_column(self, name: str) -> Column | None:
        key = ("prev", name)
        if key in self._cache:
            return self._cache[key]
        col = self.column(name)
        if col is not None and self.n:
            idx = np.arange(-1, self.n - 1)
            idx[0] = 0
            shifted = col.take(idx)
            missing = ~self.prev_valid
            if shifted.missing is not None:
                missing = missing | shifted.missing
            col = Column(shifted.kind, shifted.values, missing, shifted.null, shifted.ints)
        self._cache[key] = col
        return col

    def position(self, prev: bool = False):
        """Latitudes, longitudes and where a row has a position; with ``prev``, those of the
        last earlier row that had one (``mileage()`` measures from it), within the rows since
        the last one without a previous row."""
        key = ("pos", prev)
        if key in self._cache:
            return self._cache[key]
        n = self.n
        if prev:
            lat, lon, valid = self.position()
            if valid.all():
                before = np.arange(-1, n - 1)
                ok = self.prev_valid
            else:
                idx = np.arange(n)
                last = np.maximum.accumulate(np.where(valid, idx, -1))
                before = np.concatenate(([-1], last[:-1]))
                start = np.maximum.accumulate(np.where(self.prev_valid, 0, idx))
                ok = before >= start
            pick = np.maximum(before, 0)
            res = (lat[pick], lon[pick], ok)
        else:
            lat_c = self.column(LAT)
            lon_c = self.column(LON)
            if lat_c is None or lon_c is None:
                res = (np.zeros(n), np.zeros(n), np.zeros(n, bool))
            else:
                lat, vlat = _numeric_column(lat_c)
                lon, vlon = _numeric_column(lon_c)
                res = (lat, lon, vlat & vlon)
        self._cache[key] = res
        return res


def _numeric_column(col: Column):
    """Float values and where they are real numbers (not bool, not null, present)."""
    n = len(col)
    if col.kind == "num":
        valid = np.ones(n, bool)
        vals = col.values
    elif col.kind == "bool":
        return np.zeros(n), np.zeros(n, bool)
    else:
        objs = col.values.tolist()
        valid = np.fromiter((V.is_number(o) for o in objs), bool, n)
        vals = np.fromiter((float(o) if V.is_number(o) else 0.0 for o in objs), np.float64, n)
    if col.missing is not None:
        valid &= ~col.missing
    if col.null is not None:
        valid &= ~col.null
    return vals, valid


def _fallback(fn, vecs: list[Vec], n: int) -> Vec:
    cols = [v.to_objects(n) for v in vecs]
    return Vec.from_objects([fn(*args) for args in zip(*cols, strict=True)])


def _is_typed(*vecs: Vec) -> bool:
    return all(v.kind != "obj" for v in vecs)


_BIT_LIMIT = float(2**53)


def _vec_arith(op, a: Vec, b: Vec, n) -> Vec:
    if not _is_typed(a, b):
        return _fallback(lambda x, y: V.arith(op, x, y), [a, b], n)
    x = a.floats()
    y = b.floats()
    err = _or(a.err, b.err)
    null = _andnot(_or(a.null, b.null), err)
    with np.errstate(all="ignore"):
        bad = None
        if op == "+":
            r = x + y
        elif op == "-":
            r = x - y
        elif op == "*":
            r = x * y
        elif op == "/":
            bad = y == 0
            r = x / np.where(bad, 1.0, y)
        elif op == "%":
            bad = y == 0
            r = np.fmod(x, np.where(bad, 1.0, y))
        else:
            bad = (np.abs(x) >= _BIT_LIMIT) | (np.abs(y) >= _BIT_LIMIT)
            xi = np.where(bad, 0.0, x).astype(np.int64)
            yi = np.where(bad, 0.0, y).astype(np.int64)
            r = (xi & yi if op == "&" else xi | yi).astype(np.float64)
        fail = ~np.isfinite(r)
        if bad is not None:
            fail = fail | bad
    fail = _andnot(_andnot(fail, null), err)
    if fail is not None and fail.any():
        err = fail if err is None else (err | fail)
    return Vec("num", r, null, err)


def _vec_compare(op, a: Vec, b: Vec, n) -> Vec:
    if not _is_typed(a, b):
        return _fallback(lambda x, y: V.compare(op, x, y), [a, b], n)
    x = a.floats()
    y = b.floats()
    if a.null is not None:
        x = np.where(a.null, 0.0, x)
    if b.null is not None:
        y = np.where(b.null, 0.0, y)
    if op == "==":
        r = x == y
    elif op == "!=":
        r = x != y
    elif op == "<":
        r = x < y
    elif op == ">":
        r = x > y
    elif op == "<=":
        r = x <= y
    else:
        r = x >= y
    return Vec("bool", r, None, _or(a.err, b.err))


def _errmask(v: Vec, n):
    return np.zeros(n, bool) if v.err is None else np.broadcast_to(v.err, (n,))


def _vec_and(a: Vec, b: Vec, n) -> Vec:
    ea, eb = _errmask(a, n), _errmask(b, n)
    false = (~np.broadcast_to(a.truth(), (n,)) & ~ea) | (~np.broadcast_to(b.truth(), (n,)) & ~eb)
    err = ~false & (ea | eb)
    return Vec("bool", ~false & ~err, None, err if err.any() else None)


def _vec_or(a: Vec, b: Vec, n) -> Vec:
    ea, eb = _errmask(a, n), _errmask(b, n)
    true = np.broadcast_to(a.truth(), (n,)) | np.broadcast_to(b.truth(), (n,))
    err = ~true & (ea | eb)
    return Vec("bool", true, None, err if err.any() else None)


def _vec_not(a: Vec, n) -> Vec:
    return Vec("bool", ~a.truth(), None, a.err)


def _vec_neg(a: Vec, n) -> Vec:
    if not _is_typed(a):
        return _fallback(V.negate, [a], n)
    return Vec("num", -a.floats(), a.null, a.err)


def _vec_unary_num(fn_np, fn_scalar, a: Vec, n, domain=None) -> Vec:
    if not _is_typed(a):
        return _fallback(fn_scalar, [a], n)
    x = a.floats()
    with np.errstate(all="ignore"):
        bad = None if domain is None else ~domain(x)
        r = fn_np(np.where(bad, 0.0, x) if bad is not None else x)
    err = a.err
    if bad is not None:
        bad = _andnot(_andnot(bad, a.null), a.err)
        if bad.any():
            err = bad if err is None else (err | bad)
    return Vec("num", r, a.null, err)


def _vec_call(node, args: list[Vec], frame: Frame, tz, geofences) -> Vec:
    name = node[1]
    n = frame.n
    if name == "if":
        c, a, b = args
        if a.kind == b.kind and a.kind != "obj":
            cond = np.broadcast_to(c.truth(), (n,))
            vals = np.where(cond, a.values, b.values)
            an = np.zeros(1, bool) if a.null is None else a.null
            bn = np.zeros(1, bool) if b.null is None else b.null
            ae = np.zeros(1, bool) if a.err is None else a.err
            be = np.zeros(1, bool) if b.err is None else b.err
            null = np.where(cond, an, bn)
            err = np.where(cond, ae, be)
            if c.err is not None:
                err = err | c.err
                null = null & ~c.err
            return Vec(a.kind, vals, null if null.any() else None, err if err.any() else None)
        return _fallback(V.fn_if, args, n)
    if name == "exists":
        col = frame.column(node[2][0][1])
        return Vec("bool", np.zeros(n, bool) if col is None else col.present_mask())
    if name == "isnull":
        a = args[0]
        null = np.zeros(1, bool) if a.null is None else a.null
        err = a.err
        r = null if err is None else (null & ~err)
        return Vec("bool", r, None, err)
    if name == "tonumber":
        a = args[0]
        if _is_typed(a):
            return Vec("num", a.floats(), a.null, a.err)
        return _fallback(V.fn_tonumber, args, n)
    if name == "toboolean":
        a = args[0]
        if a.kind == "bool":
            return a
        if a.kind == "num":
            return Vec("bool", a.values != 0, a.null, a.err)
        return _fallback(V.fn_toboolean, args, n)
    if name == "tostring":
        return _fallback(V.fn_tostring, args, n)
    if name == "abs":
        return _vec_unary_num(np.abs, V.fn_abs, args[0], n)
    if name == "ceil":
        return _vec_unary_num(np.ceil, V.fn_ceil, args[0], n)
    if name == "floor":
        return _vec_unary_num(np.floor, V.fn_floor, args[0], n)
    if name == "sqrt":
        return _vec_unary_num(np.sqrt, V.fn_sqrt, args[0], n, domain=lambda x: x >= 0)
    if name == "round":
        a = args[0]
        d = args[1] if len(args) > 1 else Vec.const(0.0)
        if not (
            _is_typed(a, d)
            and len(d.values) == 1
            and d.null is None
            and d.err is None
            and abs(float(d.values[0])) <= 15
        ):
            return _fallback(V.fn_round, [a, d], n)
        scale = 10.0 ** int(float(d.values[0]))
        return _vec_unary_num(
            lambda x: np.floor(x * scale + 0.5) / scale,
            None,
            a,
            n,
            domain=lambda x: np.isfinite(np.floor(x * scale + 0.5) / scale),
        )
    if name == "pow":
        a, b = args
        if not _is_typed(a, b):
            return _fallback(V.fn_pow, args, n)
        with np.errstate(all="ignore"):
            r = np.power(a.floats(), b.floats())
        err = _or(a.err, b.err)
        null = _andnot(_or(a.null, b.null), err)
        bad = _andnot(_andnot(~np.isfinite(r), null), err)
        if bad is not None and bad.any():
            err = bad if err is None else (err | bad)
        return Vec("num", r, null, err)
    if name in ("min", "max"):
        if not _is_typed(*args):
            return _fallback(V.fn_min if name == "min" else V.fn_max, args, n)
        red = np.minimum if name == "min" else np.maximum
        r = args[0].floats()
        for a in args[1:]:
            r = red(r, a.floats())
        err = _or(*(a.err for a in args))
        null = _andnot(_or(*(a.null for a in args)), err)
        return Vec("num", r, null, err)
    if name == "mileage":
        lat, lon, valid = frame.position()
        plat, plon, pvalid = frame.position(prev=True)
        ok = valid & pvalid
        dist = haversine_vec(
            np.where(ok, plat, 0.0), np.where(ok, plon, 0.0), np.where(ok, lat, 0.0), np.where(ok, lon, 0.0)
        )
        return Vec("num", dist, ~ok if not ok.all() else None)
    if name in TIME_FUNCTIONS:
        t = args[0] if args else Vec("num", frame.timestamps)
        if t.kind != "num":
            if t.kind == "bool":
                t = t.expand(n)
                err = np.ones(n, bool) if t.null is None else ~(t.null & ~_errmask(t, n))
                return Vec("num", np.zeros(n), _andnot(t.null, err), err)
            return _fallback(lambda x: _time_scalar(name, x, tz), [t], n)
        t = t.expand(n)
        x = t.values
        err = t.err
        out_of = _andnot(_andnot((x < MIN_TS) | (x > MAX_TS), t.null), t.err)
        if out_of.any():
            err = out_of if err is None else (err | out_of)
        bad = _or(err, t.null)
        safe = x if bad is None else np.where(bad, 0.0, x)
        r = fields(safe, tz)[name]
        return Vec("num", r, _andnot(t.null, t.err), err)
    if name == "geofence":
        field = node[2][0][1]
        lat, lon, valid = frame.position()
        idx = first_containing(geofences, lat, lon, valid)
        table = Vec.from_objects([V.normalize(g.config.get(field)) for g in geofences] + [None])
        pick = np.where(idx < 0, len(geofences), idx)
        return Vec(
            table.kind,
            table.values[pick],
            None if table.null is None else table.null[pick],
            None if table.err is None else table.err[pick],
        )
    raise AssertionError(name)


def _time_scalar(name, t, tz):
    if t is V.ERROR:
        return V.ERROR
    if t is None:
        return None
    if not V.is_number(t) or not in_range(float(t)):
        return V.ERROR
    return scalar_field(name, float(t), tz)


def _vector(node, frame: Frame, tz, geofences) -> Vec:
    kind = node[0]
    n = frame.n
    if kind == "const":
        return Vec.const(node[1])
    if kind == "param":
        name, mode = node[1], node[2]
        if mode == "prev":
            return _vec_from_column(frame.prev_column(name), n, "null")
        return _vec_from_column(frame.column(name), n, "err" if mode == "bare" else "null")
    if kind == "neg":
        return _vec_neg(_vector(node[1], frame, tz, geofences), n)
    if kind == "not":
        return _vec_not(_vector(node[1], frame, tz, geofences), n)
    if kind == "arith":
        return _vec_arith(
            node[1], _vector(node[2], frame, tz, geofences), _vector(node[3], frame, tz, geofences), n
        )
    if kind == "compare":
        return _vec_compare(
            node[1], _vector(node[2], frame, tz, geofences), _vector(node[3], frame, tz, geofences), n
        )
    if kind == "and":
        return _vec_and(_vector(node[1], frame, tz, geofences), _vector(node[2], frame, tz, geofences), n)
    if kind == "or":
        return _vec_or(_vector(node[1], frame, tz, geofences), _vector(node[2], frame, tz, geofences), n)
    args = [_vector(a, frame, tz, geofences) for a in node[2]]
    return _vec_call(node, args, frame, tz, geofences)


# ---- the compiled object -------------------------------------------------------------------------


class CompiledExpression:
    """An expression parsed once, evaluated many times.

    * ``evaluate(message, previous=None, *, positioned=previous)``: the value; raises
      ``EvaluationError`` when the expression errors on this message. ``previous`` is the
      message before (for ``#name``/``previous()``), ``positioned`` the last earlier message
      that had a position (for ``mileage()``; the same as ``previous`` unless given).
    * ``evaluate_raw(message, previous=None)``: the value or the ``ERROR`` marker.
    * ``matches(message, previous=None)``: true only when the value is true (never raises).
    * ``evaluate_frame(frame)``: the columnar value (``Vec``) over a ``Frame``.
    """

    def __init__(self, text: str, *, timezone: str = "UTC", geofences=()):
        self.text = text
        self.timezone = timezone
        try:
            self.tz = zone(timezone)
        except Exception:
            raise ExpressionError(f"unknown timezone {timezone!r}") from None
        self.tree = parse(text)
        self.geofences = [g if isinstance(g, Geofence) else Geofence(g) for g in geofences]
        nodes = list(_walk(self.tree))
        self.names = sorted({nd[1] for nd in nodes if nd[0] == "param" and nd[2] != "prev"})
        self.prev_names = sorted({nd[1] for nd in nodes if nd[0] == "param" and nd[2] == "prev"})
        calls = {nd[1] for nd in nodes if nd[0] == "call"}
        # ``#name``/``previous()`` read the message before; ``mileage()`` the last earlier
        # message that had a position.
        self.reads_previous = bool(self.prev_names)
        self.reads_previous_position = "mileage" in calls
        self.uses_prev = self.reads_previous or self.reads_previous_position
        self.uses_position = bool(calls & {"mileage", "geofence"})
        read = {nd[1] for nd in nodes if nd[0] == "param"}
        read |= {nd[2][0][1] for nd in nodes if nd[0] == "call" and nd[1] == "exists"}
        if self.uses_position:
            read |= {LAT, LON}
        read.discard("timestamp")
        # The message parameters this expression reads (``timestamp`` is always there).
        self.parameters: frozenset[str] | None = frozenset(read)
        self._fn = _scalar(self.tree, self.tz, self.geofences)
        self.constant = self.tree[0] == "const"

    def __repr__(self) -> str:
        return f"CompiledExpression({self.text!r})"

    def evaluate_raw(self, message: Mapping, previous: Mapping | None = None, *, positioned=_MISS):
        return self._fn(message, previous, previous if positioned is _MISS else positioned)

    def evaluate(self, message: Mapping, previous: Mapping | None = None, *, positioned=_MISS):
        v = self._fn(message, previous, previous if positioned is _MISS else positioned)
        if v is V.ERROR:
            raise EvaluationError(f"expression {self.text!r} errors on this message")
        return v

    def matches(self, message: Mapping, previous: Mapping | None = None, *, positioned=_MISS) -> bool:
        return V.truth(self._fn(message, previous, previous if positioned is _MISS else positioned))

    def evaluate_frame(self, frame: Frame) -> Vec:
        if frame.n == 0:
            return Vec("num", np.zeros(0))
        return _vector(self.tree, frame, self.tz, self.geofences).expand(frame.n)


def compile_expression(text: str, *, timezone: str = "UTC", geofences=()) -> CompiledExpression:
    """Parse and compile ``text``; raises ``ExpressionError`` (with ``position``) when it does not
    parse, names an unknown function, or has the wrong number of arguments."""
    return CompiledExpression(text, timezone=timezone, geofences=geofences)


def is_true(v) -> bool:
    return V.truth(v)


__all__ = ["CompiledExpression", "Frame", "Vec", "compile_expression", "is_true", "parse"]
