"""The expression language of DESIGN 7.3.

``parse`` turns text into a tree of named nodes (lark, LALR); ``CompiledExpression`` holds two
evaluators built from that tree once:

* a per-message one: Python closures over a message dict (``evaluate``, ``matches``, and the
  engine's per-interval evaluation of ``interval`` counters and ``validate_interval``);
* a columnar one over numpy arrays (``evaluate_frame``, ``vectors``), which the engine uses for
  selectors, counters and ``validate_message``.

Operators are defined here (their scalar semantics in ``values``, their numpy forms in
``vectors``); functions are defined once each, with both implementations, in ``functions``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import values as semantics
from .columns import ColumnKind
from .errors import EvaluationError, ExpressionError
from .functions import FUNCTIONS, Context, RowFn
from .timeutil import zone
from .vectors import (
    LAT,
    LON,
    Frame,
    Vec,
    vec_and,
    vec_arith,
    vec_compare,
    vec_from_column,
    vec_neg,
    vec_not,
    vec_or,
)
from .zones import GeofenceSet

MAX_LENGTH = 10_000

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


@dataclass(frozen=True, slots=True)
class Const:
    value: object


@dataclass(frozen=True, slots=True)
class Param:
    """A message parameter: ``name`` (bare: missing is an error), ``$name`` (``mode`` "opt":
    missing is null) or ``#name``/``previous('name')`` ("prev": of the previous message)."""

    name: str
    mode: str


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-" or "!"
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    """Arithmetic (``+ - * / % & |``), comparison (``== != < <= > >=``) or logic (``&& ||``)."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]
    position: int  # 1-based, of the name

    @property
    def literal(self) -> str | None:
        """The quoted name a ``literal`` function takes (checked by the parser)."""
        if FUNCTIONS[self.name].literal:
            arg = self.args[0]
            assert isinstance(arg, Const) and isinstance(arg.value, str)
            return arg.value
        return None


@dataclass(frozen=True, slots=True)
class Meta:
    """A value of the device's or the calculator's ``metadata`` (``source``: "device" or
    "calculator"), at ``path`` (keys from the root). ``missing``: what a path that is not there
    gives, ``"err"`` (``device.metadata.x``) or ``"null"`` (``$device.metadata.x``,
    ``metadata('x')``). The values come with the compilation (``Context.metadata``): for the
    engine they are constants."""

    source: str
    path: tuple[str, ...]
    missing: str


Node = Const | Param | Unary | Binary | Call | Meta

# Parameter names that read metadata instead of the message: ``device.metadata.speed_limit``.
METADATA_PREFIXES = {"device.metadata": "device", "calculator.metadata": "calculator"}


def metadata_path(text: str, position: int) -> tuple[str, ...]:
    """The keys of a ``metadata('...')`` path: a root key as written (``'speed_limit'``,
    ``'fleet.id'``), or a JSON pointer (``'/geofence/lat'``, ``~0`` and ``~1`` escaping ``~`` and
    ``/``); ``ExpressionError`` naming the path when it names nothing."""
    if not text:
        raise ExpressionError(f"metadata path '' is empty at {position}", position)
    if not text.startswith("/"):
        return (text,)
    keys = text[1:].split("/")
    if any(not key for key in keys):
        raise ExpressionError(f"metadata path {text!r} has an empty key at {position}", position)
    return tuple(key.replace("~1", "/").replace("~0", "~") for key in keys)


def _metadata_name(name: str, mode: str, position: int) -> Meta | None:
    """The ``Meta`` node of a parameter name under ``device.metadata``/``calculator.metadata``,
    or None for a message parameter."""
    for prefix, source in METADATA_PREFIXES.items():
        if name == prefix or name.startswith(prefix + "."):
            rest = name[len(prefix) + 1:]
            if not rest:
                raise ExpressionError(f"'{name}' names no metadata key at {position}: write {prefix}.<key>", position)
            if mode == "prev":
                raise ExpressionError(
                    f"'{name}' has no previous value at {position}: metadata is the same for every message", position
                )
            return Meta(source, tuple(rest.split(".")), "err" if mode == "bare" else "null")
    return None

COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})
LOGIC = frozenset({"&&", "||"})


def walk(node: Node):
    """Every node of the tree, parents first."""
    yield node
    if isinstance(node, Unary):
        yield from walk(node.operand)
    elif isinstance(node, Binary):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, Call):
        for argument in node.args:
            yield from walk(argument)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "/": "/", "0": "\0"}
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body

    def repl(match):
        code = match.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return _ESCAPE_RE.sub(repl, body)


class _ToAst(Transformer):
    def number(self, children):
        return Const(float(children[0]))

    def hexnumber(self, children):
        return Const(float(int(children[0], 16)))

    def string(self, children):
        return Const(_unquote(str(children[0])))

    def true(self, _):
        return Const(True)

    def false(self, _):
        return Const(False)

    def null(self, _):
        return Const(None)

    def _param(self, token: Token, mode: str) -> Param | Meta:
        name = str(token)
        meta = _metadata_name(name, mode, (token.start_pos or 0) + 1)
        return Param(name, mode) if meta is None else meta

    def name(self, children):
        return self._param(children[0], "bare")

    def optname(self, children):
        return self._param(children[0], "opt")

    def prevname(self, children):
        return self._param(children[0], "prev")

    def neg(self, children):
        operand = children[0]
        if isinstance(operand, Const) and semantics.is_number(operand.value):
            return Const(-operand.value)
        return Unary("-", operand)

    def lnot(self, children):
        return Unary("!", children[0])

    def _binary(self, children):
        return Binary(str(children[1]), children[0], children[2])

    arith = compare = _binary

    def bitand(self, children):
        return Binary("&", children[0], children[1])

    def bitor(self, children):
        return Binary("|", children[0], children[1])

    def land(self, children):
        return Binary("&&", children[0], children[1])

    def lor(self, children):
        return Binary("||", children[0], children[1])

    def call(self, children):
        name_tok: Token = children[0]
        args = [argument for argument in children[1:] if argument is not None]
        name = str(name_tok)
        pos = name_tok.start_pos + 1
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise ExpressionError(f"unknown function '{name}' at {pos}", pos)
        lo, hi = fn.min_args, fn.max_args
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ExpressionError(
                f"function '{name}' takes {want} argument{'s' if hi != 1 else ''}, got {len(args)} at {pos}",
                pos,
            )
        if fn.literal and not (isinstance(args[0], Const) and isinstance(args[0].value, str)):
            raise ExpressionError(f"function '{name}' takes a quoted name at {pos}", pos)
        if fn.rewrite == "previous":
            return Param(args[0].value, "prev")
        if fn.rewrite == "metadata":
            return Meta("device", metadata_path(args[0].value, pos), "null")
        if fn.rewrite == "not":
            return Unary("!", args[0])
        return Call(name, tuple(args), pos)


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "end of expression"
    return repr(str(tok))


def parse(text: str) -> Node:
    """The tree of ``text``; raises ``ExpressionError`` naming the position (1-based)."""
    if not isinstance(text, str):
        raise ExpressionError("expression must be a string")
    if not text.strip():
        raise ExpressionError("expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = _get_parser().parse(text)
    except UnexpectedCharacters as error:
        at = error.pos_in_stream
        assert at is not None  # the lexer always says where the character is
        pos = at + 1
        raise ExpressionError(f"unexpected character {text[at]!r} at {pos}", pos) from None
    except UnexpectedToken as error:
        if error.token.type == "$END":
            pos = len(text) + 1
            raise ExpressionError(f"unexpected end of expression at {pos}", pos) from None
        pos = (error.token.start_pos or 0) + 1
        raise ExpressionError(f"unexpected {_describe(error.token)} at {pos}", pos) from None
    except UnexpectedEOF:
        pos = len(text) + 1
        raise ExpressionError(f"unexpected end of expression at {pos}", pos) from None
    except UnexpectedInput as error:  # pragma: no cover - other lark input errors
        raise ExpressionError(f"cannot parse expression: {error}") from None
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    try:
        return _ToAst().transform(tree)
    except VisitError as error:
        if isinstance(error.orig_exc, ExpressionError):
            raise error.orig_exc from None
        raise
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None


# ---- per-message evaluation ----------------------------------------------------------------------


def _metadata_value(node: Meta, ctx: Context):
    """The value at the node's path in the metadata it was compiled with (``ERROR`` or null when
    the path is not there, by the node's ``missing``)."""
    found: object = ctx.metadata.get(node.source, {})
    for key in node.path:
        if not isinstance(found, Mapping) or key not in found:
            return semantics.ERROR if node.missing == "err" else None
        found = found[key]
    return semantics.normalize(found)


_MISS = object()

_ROW_BINARY = {
    "&&": semantics.logical_and,
    "||": semantics.logical_or,
}


def _row(node: Node, ctx: Context) -> RowFn:
    """The closure ``(message, previous, positioned) -> value`` of ``node``."""
    if isinstance(node, Const):
        value = node.value
        return lambda message, previous, positioned: value
    if isinstance(node, Param):
        name = node.name
        if node.mode == "bare":

            def bare(message, previous, positioned):
                found = message.get(name, _MISS)
                if found is _MISS:
                    return semantics.ERROR
                return semantics.normalize(found)

            return bare
        if node.mode == "opt":
            return lambda message, previous, positioned: semantics.normalize(message.get(name))
        return lambda message, previous, positioned: (
            None if previous is None else semantics.normalize(previous.get(name))
        )
    if isinstance(node, Meta):
        value = _metadata_value(node, ctx)
        return lambda message, previous, positioned: value
    if isinstance(node, Unary):
        operand_fn = _row(node.operand, ctx)
        if node.op == "-":
            return lambda message, previous, positioned: semantics.negate(
                operand_fn(message, previous, positioned)
            )
        return lambda message, previous, positioned: semantics.logical_not(
            operand_fn(message, previous, positioned)
        )
    if isinstance(node, Binary):
        op = node.op
        left_fn = _row(node.left, ctx)
        right_fn = _row(node.right, ctx)
        if op in LOGIC:
            logic = _ROW_BINARY[op]
            return lambda message, previous, positioned: logic(
                left_fn(message, previous, positioned), right_fn(message, previous, positioned)
            )
        if op in COMPARISONS:
            return lambda message, previous, positioned: semantics.compare(
                op, left_fn(message, previous, positioned), right_fn(message, previous, positioned)
            )
        return lambda message, previous, positioned: semantics.arith(
            op, left_fn(message, previous, positioned), right_fn(message, previous, positioned)
        )
    fs = [_row(argument, ctx) for argument in node.args]
    return FUNCTIONS[node.name].build_row(fs, ctx, node.literal)


# ---- columnar evaluation -----------------------------------------------------------------------


def _column(node: Node, frame: Frame, ctx: Context) -> Vec:
    rows = frame.n
    if isinstance(node, Const):
        return Vec.const(node.value)
    if isinstance(node, Meta):
        value = _metadata_value(node, ctx)
        return Vec.from_objects([value]) if value is semantics.ERROR else Vec.const(value)
    if isinstance(node, Param):
        if node.mode == "prev":
            return vec_from_column(frame.prev_column(node.name), rows, "null")
        return vec_from_column(frame.column(node.name), rows, "err" if node.mode == "bare" else "null")
    if isinstance(node, Unary):
        operand = _column(node.operand, frame, ctx)
        return vec_neg(operand, rows) if node.op == "-" else vec_not(operand, rows)
    if isinstance(node, Binary):
        left = _column(node.left, frame, ctx)
        right = _column(node.right, frame, ctx)
        if node.op == "&&":
            return vec_and(left, right, rows)
        if node.op == "||":
            return vec_or(left, right, rows)
        if node.op in COMPARISONS:
            return vec_compare(node.op, left, right, rows)
        return vec_arith(node.op, left, right, rows)
    fn = FUNCTIONS[node.name]
    assert fn.column is not None  # only rewritten functions have none, and they never reach here
    return fn.column([_column(argument, frame, ctx) for argument in node.args], frame, ctx, node.literal)


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
    * ``parameters``: the message parameters it reads (``timestamp`` is always there).
    """

    def __init__(self, text: str, *, timezone: str = "UTC", geofences=(), metadata: Mapping | None = None):
        self.text = text
        self.timezone = timezone
        try:
            self.tz = zone(timezone)
        except Exception:
            raise ExpressionError(f"unknown timezone {timezone!r}") from None
        self.tree = parse(text)
        # A calculator's expressions share one set (and its index).
        self.geofences = geofences if isinstance(geofences, GeofenceSet) else GeofenceSet(geofences)
        self._ctx = Context(self.tz, self.geofences, metadata or {})
        nodes = list(walk(self.tree))
        # Whose metadata it reads ("device", "calculator"): a change of it changes its values.
        self.reads_metadata = frozenset(node.source for node in nodes if isinstance(node, Meta))
        params = [node for node in nodes if isinstance(node, Param)]
        calls = [FUNCTIONS[node.name] for node in nodes if isinstance(node, Call)]
        self.names = sorted({node.name for node in params if node.mode != "prev"})
        self.prev_names = sorted({node.name for node in params if node.mode == "prev"})
        # ``#name``/``previous()`` read the message before; ``mileage()`` the last earlier
        # message that had a position.
        self.reads_previous = bool(self.prev_names)
        self.reads_previous_position = any(function.reads_previous_position for function in calls)
        self.uses_prev = self.reads_previous or self.reads_previous_position
        self.uses_position = any(function.reads_position for function in calls)
        read = {node.name for node in params}
        read |= {
            key
            for node in nodes
            if isinstance(node, Call) and node.name == "exists" and (key := node.literal) is not None
        }
        if self.uses_position:
            read |= {LAT, LON}
        read.discard("timestamp")
        self.parameters: frozenset[str] | None = frozenset(read)
        self._fn = _row(self.tree, self._ctx)
        self.constant = isinstance(self.tree, Const)

    def __repr__(self) -> str:
        return f"CompiledExpression({self.text!r})"

    def evaluate_raw(self, message: Mapping, previous: Mapping | None = None, *, positioned=_MISS):
        return self._fn(message, previous, previous if positioned is _MISS else positioned)

    def evaluate(self, message: Mapping, previous: Mapping | None = None, *, positioned=_MISS):
        value = self._fn(message, previous, previous if positioned is _MISS else positioned)
        if value is semantics.ERROR:
            raise EvaluationError(f"expression {self.text!r} errors on this message")
        return value

    def matches(self, message: Mapping, previous: Mapping | None = None, *, positioned=_MISS) -> bool:
        return semantics.truth(self._fn(message, previous, previous if positioned is _MISS else positioned))

    def evaluate_frame(self, frame: Frame) -> Vec:
        if frame.n == 0:
            return Vec(ColumnKind.NUM, np.zeros(0))
        return _column(self.tree, frame, self._ctx).expand(frame.n)


def compile_expression(
    text: str, *, timezone: str = "UTC", geofences=(), metadata: Mapping | None = None
) -> CompiledExpression:
    """Parse and compile ``text``; raises ``ExpressionError`` (with ``position``) when it does not
    parse, names an unknown function, or has the wrong number of arguments. ``metadata``:
    ``{"device": {...}, "calculator": {...}}``, what ``device.metadata.x``, ``metadata('x')``
    and ``calculator.metadata.x`` read."""
    return CompiledExpression(text, timezone=timezone, geofences=geofences, metadata=metadata)


def is_true(value) -> bool:
    return semantics.truth(value)


__all__ = ["CompiledExpression", "Frame", "Node", "Vec", "compile_expression", "is_true", "parse", "walk"]
