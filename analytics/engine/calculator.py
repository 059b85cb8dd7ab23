"""Calculator configurations: validation with paths, normalisation (defaults of DESIGN 7.2), and
compilation into a ``Calculator`` that ``calculate`` and ``recalculate`` reuse."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .errors import CalculatorError, ExpressionError, Problem
from .expressions import LAT, LON, CompiledExpression
from .geo import Geofence
from .interval_fields import COUNTER_RESERVED, ENGINE_FIELDS
from .timeutil import zone

MAX_GEOFENCE_POINTS = 1024

CALCULATOR_DEFAULTS: dict[str, Any] = {
    "counters": [],
    "validate_message": None,
    "validate_interval": None,
    "timezone": "UTC",
    "update_delay": 30,
    "update_period": 31536000,
    "update_onchange": True,
    "intervals_ttl": 31536000,
    "intervals_rotate": 0,
    "metadata": {},
}

COMMON_OPTIONS: dict[str, Any] = {
    "invert": False,
    "merge_unknown": False,
    "max_messages_time_diff": 0,
    "min_active": 0,
    "max_inactive": 0,
    "merge_message_before": False,
    "merge_message_after": False,
    "min_duration": 0,
}

SELECTOR_TYPES = ("expression", "datetime", "geofence", "inactive")
COUNTER_TYPES = (
    "expression",
    "parameter",
    "interval",
    "route",
    "dataset",
    "datetime",
    "message",
    "specified",
    "active",
    "geofence",
    "accumulator",
)
METHOD_ALIASES = {"min": "minimum", "max": "maximum", "avg": "average", "sum": "summary"}
REDUCE_METHODS = ("first", "last", "minimum", "maximum", "average", "summary", "difference", "duration")
SPLITS = ("hour", "day", "week", "month", "year")
RESETS = ("day", "week", "month")


def _is_num(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class _Checker:
    def __init__(self):
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def number(
        self,
        obj: dict,
        key: str,
        path: str,
        *,
        default=None,
        required=False,
        minimum=0.0,
        positive=False,
        integer=False,
    ):
        if key not in obj or obj[key] is None:
            if required:
                self.add(f"{path}.{key}" if path else key, "missing field")
            return default
        v = obj[key]
        where = f"{path}.{key}" if path else key
        if not _is_num(v) or (integer and float(v) != int(v)):
            self.add(where, "must be an integer" if integer else "must be a number")
            return default
        if positive and v <= 0:
            self.add(where, "must be greater than 0")
            return default
        if minimum is not None and v < minimum:
            self.add(where, f"must be at least {minimum:g}")
            return default
        return int(v) if integer else v

    def boolean(self, obj: dict, key: str, path: str, default=False):
        if key not in obj or obj[key] is None:
            return default
        if not isinstance(obj[key], bool):
            self.add(f"{path}.{key}", "must be true or false")
            return default
        return obj[key]

    def string(self, obj: dict, key: str, path: str, *, required=False, default=None, choices=None):
        where = f"{path}.{key}" if path else key
        if key not in obj or obj[key] is None:
            if required:
                self.add(where, "missing field")
            return default
        v = obj[key]
        if not isinstance(v, str) or (required and not v):
            self.add(where, "must be a non-empty string" if required else "must be a string")
            return default
        if choices is not None and v not in choices:
            self.add(where, f"must be one of {', '.join(choices)}")
            return default
        return v

    def unknown(self, obj: dict, allowed, path: str) -> None:
        for k in obj:
            if k not in allowed:
                self.add(f"{path}.{k}" if path else str(k), "unknown field")

    def expression(self, obj: dict, key: str, path: str, *, tz: str, geofences, required=False):
        where = f"{path}.{key}" if path else key
        if key not in obj or obj[key] is None:
            if required:
                self.add(where, "missing field")
            return None
        text = obj[key]
        if not isinstance(text, str):
            self.add(where, "must be a string")
            return None
        try:
            return CompiledExpression(text, timezone=tz, geofences=geofences)
        except ExpressionError as e:
            self.add(where, e.reason)
            return None


def _check_point(c: _Checker, p, path: str) -> bool:
    if not isinstance(p, dict):
        c.add(path, "must be an object with lat and lon")
        return False
    ok = True
    for key, limit in (("lat", 90), ("lon", 180)):
        v = p.get(key)
        if not _is_num(v):
            c.add(f"{path}.{key}", "missing field" if v is None else "must be a number")
            ok = False
        elif abs(v) > limit:
            c.add(f"{path}.{key}", f"must be between -{limit} and {limit}")
            ok = False
    return ok


def _check_geofence(c: _Checker, g, path: str) -> dict | None:
    if not isinstance(g, dict):
        c.add(path, "must be an object")
        return None
    gtype = c.string(g, "type", path, required=True, choices=("circle", "polygon"))
    name = g.get("name")
    if name is not None and not isinstance(name, str):
        c.add(f"{path}.name", "must be a string")
    before = len(c.problems)
    if gtype == "circle":
        if "center" not in g:
            c.add(f"{path}.center", "missing field")
        else:
            _check_point(c, g["center"], f"{path}.center")
        c.number(g, "radius", path, required=True, positive=True)
    elif gtype == "polygon":
        pts = g.get("path")
        if not isinstance(pts, list):
            c.add(f"{path}.path", "missing field" if pts is None else "must be a list of points")
        elif len(pts) < 3:
            c.add(f"{path}.path", "needs at least 3 points")
        elif len(pts) > MAX_GEOFENCE_POINTS:
            c.add(f"{path}.path", f"has {len(pts)} points, at most {MAX_GEOFENCE_POINTS} are allowed")
        else:
            for i, p in enumerate(pts):
                if not _check_point(c, p, f"{path}.path[{i}]"):
                    break
    if gtype is None or len(c.problems) != before:
        return None
    return g


@dataclass
class SelectorSpec:
    type: str
    config: dict
    index: int
    expression: CompiledExpression | None = None
    method: str = "boolean"
    options: dict = field(default_factory=dict)
    geofences: list = field(default_factory=list)
    split: str | None = None
    delay_threshold: float = 0.0


@dataclass
class CounterSpec:
    name: str
    type: str
    config: dict
    validate: CompiledExpression | None = None
    expression: CompiledExpression | None = None
    method: str | None = None
    parameter: str | None = None
    fields: list = field(default_factory=list)
    value: Any = None


class Calculator:
    """A validated, normalised and compiled calculator. Build with ``compile_calculator``.

    ``parameters``: the dotted names of the message parameters its selectors, counters and
    expressions read (a ``frozenset``; ``timestamp`` is implied), or ``None`` when that cannot be
    known. A reader may leave every other parameter out of the messages it passes: the
    intervals are the same.
    """

    def __init__(self, config: dict, selectors, counters, validate_message, validate_interval):
        self.config = config
        self.name = config["name"]
        self.timezone = config["timezone"]
        self.tz = zone(self.timezone)
        self.selectors: list[SelectorSpec] = selectors
        self.counters: list[CounterSpec] = counters
        self.validate_message: CompiledExpression | None = validate_message
        self.validate_interval: CompiledExpression | None = validate_interval
        self.update_period = float(config["update_period"])
        self.engine_keys = (*ENGINE_FIELDS, *(c.name for c in counters))
        self.geofences = [g for s in selectors for g in s.geofences]
        interval_exprs = [c.expression for c in counters if c.type == "interval"]
        if validate_interval is not None:
            interval_exprs.append(validate_interval)
        # Fields of one interval that depend on the interval before it.
        self.crosses_intervals = any(c.type == "accumulator" for c in counters) or any(
            e.uses_prev for e in interval_exprs
        )
        self.needs_interval_pass = bool(interval_exprs) or any(c.type == "accumulator" for c in counters)
        self.parameters = _parameters(self)

    def __repr__(self) -> str:
        return f"Calculator({self.name!r})"


POSITION = frozenset({LAT, LON})


def _parameters(calc: Calculator) -> frozenset[str] | None:
    """The message parameters the calculator reads (``timestamp`` is never listed: every reader
    supplies it), or ``None`` when a part reads every parameter. Interval expressions
    (``interval`` counters, ``validate_interval``) read interval fields, not messages."""
    parts: list[frozenset[str] | None] = []

    def expr(e: CompiledExpression | None) -> None:
        if e is not None:
            parts.append(e.parameters)

    expr(calc.validate_message)
    for s in calc.selectors:
        expr(s.expression)
        if s.type == "geofence":
            parts.append(POSITION)
    for k in calc.counters:
        if k.type in ("interval", "accumulator"):
            continue  # evaluated per interval, on interval fields; validate_message is not used
        expr(k.validate)
        if k.type == "expression":
            expr(k.expression)
        elif k.type == "parameter":
            assert k.parameter is not None  # defaults to the counter's name
            parts.append(frozenset({k.parameter}))
        elif k.type == "dataset":
            for _, e in k.fields:
                expr(e)
        elif k.type == "message":
            parts.append(frozenset(k.fields))
        elif k.type in ("route", "geofence"):
            parts.append(POSITION)
    out: set[str] = set()
    for p in parts:
        if p is None:
            return None
        out |= p
    out.discard("timestamp")
    return frozenset(out)


@dataclass
class _Scope:
    """What every expression of a calculator is compiled with."""

    tz: str
    geofences: list[Geofence]


def _check(config) -> tuple[list[Problem], Calculator | None]:
    if not isinstance(config, dict):
        return [Problem("", "calculator must be a JSON object")], None
    c = _Checker()
    c.unknown(config, ("name", "selectors", *CALCULATOR_DEFAULTS), "")
    norm = _check_fields(c, config)
    # Selectors first: their geofences are what geofence() in every expression sees.
    selectors, norm["selectors"], scope = _check_selectors(c, config, norm["timezone"])
    validate_message = c.expression(config, "validate_message", "", tz=scope.tz, geofences=scope.geofences)
    validate_interval = c.expression(config, "validate_interval", "", tz=scope.tz, geofences=scope.geofences)
    norm["validate_message"] = config.get("validate_message")
    norm["validate_interval"] = config.get("validate_interval")
    counters, norm["counters"] = _check_counters(c, config, scope)
    if c.problems:
        return c.problems, None
    return [], Calculator(norm, selectors, counters, validate_message, validate_interval)


def _check_fields(c: _Checker, config: dict) -> dict[str, Any]:
    """The calculator's own fields (name, timezone, update and retention settings, metadata)."""
    norm: dict[str, Any] = {}
    norm["name"] = c.string(config, "name", "", required=True)
    tzname = c.string(config, "timezone", "", default="UTC")
    try:
        zone(tzname)
    except Exception:
        c.add("timezone", f"unknown timezone {tzname!r}")
        tzname = "UTC"
    norm["timezone"] = tzname
    norm["update_delay"] = c.number(config, "update_delay", "", default=30)
    norm["update_period"] = c.number(config, "update_period", "", default=31536000, positive=True)
    norm["update_onchange"] = c.boolean(config, "update_onchange", "", default=True)
    norm["intervals_ttl"] = c.number(config, "intervals_ttl", "", default=31536000, positive=True)
    norm["intervals_rotate"] = c.number(config, "intervals_rotate", "", default=0, integer=True)
    meta = config.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        c.add("metadata", "must be an object")
        meta = {}
    norm["metadata"] = meta
    return norm


def _check_selectors(c: _Checker, config: dict, tz: str) -> tuple[list[SelectorSpec], list[dict], _Scope]:
    raw = config.get("selectors")
    if raw is None:
        c.add("selectors", "missing field")
        raw = []
    elif not isinstance(raw, list):
        c.add("selectors", "must be a list")
        raw = []
    elif not raw:
        c.add("selectors", "needs at least one selector")
    scope = _Scope(tz, [])
    selectors: list[SelectorSpec] = []
    norm: list[dict] = []
    for i, s in enumerate(raw):
        path = f"selectors[{i}]"
        if not isinstance(s, dict):
            c.add(path, "must be an object")
            continue
        stype = c.string(s, "type", path, required=True, choices=SELECTOR_TYPES)
        if stype is None:
            continue
        spec = SelectorSpec(type=stype, config=s, index=i)
        ns: dict[str, Any] = {"type": stype}
        if s.get("name") is not None:
            ns["name"] = c.string(s, "name", path)
        if stype in ("expression", "geofence"):
            spec.options = _check_options(c, s, path)
        _SELECTOR_CHECKS[stype](c, s, path, spec, ns)
        scope.geofences.extend(spec.geofences)
        selectors.append(spec)
        norm.append(ns)
    # Compiled once every geofence is known: an expression sees the geofences of all selectors.
    for spec in selectors:
        if spec.type == "expression" and spec.config.get("expression") is not None:
            path = f"selectors[{spec.index}]"
            spec.expression = c.expression(spec.config, "expression", path, tz=tz, geofences=scope.geofences)
    return selectors, norm, scope


def _check_options(c: _Checker, s: dict, path: str) -> dict:
    opts = {}
    for key, default in COMMON_OPTIONS.items():
        if isinstance(default, bool):
            opts[key] = c.boolean(s, key, path, default)
        else:
            opts[key] = c.number(s, key, path, default=default)
    return opts


def _selector_expression(c: _Checker, s: dict, path: str, spec: SelectorSpec, ns: dict) -> None:
    c.unknown(s, ("type", "name", "expression", "method", *COMMON_OPTIONS), path)
    spec.method = c.string(s, "method", path, default="boolean", choices=("boolean", "change"))
    if "expression" not in s or s["expression"] is None:
        c.add(f"{path}.expression", "missing field")
    ns.update({"expression": s.get("expression"), "method": spec.method, **spec.options})


def _selector_geofence(c: _Checker, s: dict, path: str, spec: SelectorSpec, ns: dict) -> None:
    c.unknown(s, ("type", "name", "geofences", *COMMON_OPTIONS), path)
    gs = s.get("geofences")
    if not isinstance(gs, list) or not gs:
        c.add(f"{path}.geofences", "missing field" if gs is None else "must be a non-empty list")
    else:
        for j, g in enumerate(gs):
            ok = _check_geofence(c, g, f"{path}.geofences[{j}]")
            if ok is not None:
                spec.geofences.append(Geofence(ok))
    ns.update({"geofences": gs, **spec.options})


def _selector_datetime(c: _Checker, s: dict, path: str, spec: SelectorSpec, ns: dict) -> None:
    c.unknown(s, ("type", "name", "split"), path)
    spec.split = c.string(s, "split", path, required=True, choices=SPLITS)
    ns["split"] = spec.split


def _selector_inactive(c: _Checker, s: dict, path: str, spec: SelectorSpec, ns: dict) -> None:
    c.unknown(s, ("type", "name", "delay_threshold"), path)
    spec.delay_threshold = c.number(s, "delay_threshold", path, required=True, default=0)
    ns["delay_threshold"] = spec.delay_threshold


_SELECTOR_CHECKS = {
    "expression": _selector_expression,
    "geofence": _selector_geofence,
    "datetime": _selector_datetime,
    "inactive": _selector_inactive,
}


def _check_counters(c: _Checker, config: dict, scope: _Scope) -> tuple[list[CounterSpec], list[dict]]:
    raw = config.get("counters", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        c.add("counters", "must be a list")
        raw = []
    counters: list[CounterSpec] = []
    norm: list[dict] = []
    seen: set[str] = set()
    for i, k in enumerate(raw):
        path = f"counters[{i}]"
        if not isinstance(k, dict):
            c.add(path, "must be an object")
            continue
        name = c.string(k, "name", path, required=True)
        ctype = c.string(k, "type", path, required=True, choices=COUNTER_TYPES)
        if name is not None:
            if name in COUNTER_RESERVED:
                c.add(f"{path}.name", f"'{name}' is a reserved interval field")
            elif name in seen:
                c.add(f"{path}.name", f"duplicate counter name '{name}'")
            seen.add(name)
        if ctype is None or name is None:
            continue
        counter = CounterSpec(name=name, type=ctype, config=k)
        nk: dict[str, Any] = {"name": name, "type": ctype}
        counter.validate = c.expression(k, "validate_message", path, tz=scope.tz, geofences=scope.geofences)
        if k.get("validate_message") is not None:
            nk["validate_message"] = k["validate_message"]
        _COUNTER_CHECKS[ctype](c, k, path, counter, nk, scope, counters)
        counters.append(counter)
        norm.append(nk)
    return counters, norm


_COMMON = ("name", "type", "validate_message")


def _counter_reduce(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    """``expression`` and ``parameter`` counters: a value per message, reduced by ``method``."""
    methods = REDUCE_METHODS + (("distinct",) if counter.type == "parameter" else ())
    raw_method = k.get("method")
    if isinstance(raw_method, str):
        raw_method = METHOD_ALIASES.get(raw_method, raw_method)
    counter.method = c.string({"method": raw_method}, "method", path, required=True, choices=methods)
    nk["method"] = counter.method
    if counter.type == "expression":
        c.unknown(k, (*_COMMON, "expression", "method"), path)
        counter.expression = c.expression(
            k, "expression", path, tz=scope.tz, geofences=scope.geofences, required=True
        )
        nk["expression"] = k.get("expression")
    else:
        c.unknown(k, (*_COMMON, "parameter", "method"), path)
        counter.parameter = c.string(k, "parameter", path, default=counter.name)
        nk["parameter"] = counter.parameter


def _counter_interval(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, (*_COMMON, "expression"), path)
    counter.expression = c.expression(
        k, "expression", path, tz=scope.tz, geofences=scope.geofences, required=True
    )
    nk["expression"] = k.get("expression")


def _counter_dataset(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, (*_COMMON, "fields"), path)
    fs = k.get("fields")
    if not isinstance(fs, list) or not fs:
        c.add(f"{path}.fields", "missing field" if fs is None else "must be a non-empty list")
    else:
        for j, f in enumerate(fs):
            fp = f"{path}.fields[{j}]"
            if not isinstance(f, dict):
                c.add(fp, "must be an object with name and value")
                continue
            c.unknown(f, ("name", "value"), fp)
            fname = c.string(f, "name", fp, required=True)
            expr = c.expression(f, "value", fp, tz=scope.tz, geofences=scope.geofences, required=True)
            if fname is not None and expr is not None:
                counter.fields.append((fname, expr))
    nk["fields"] = fs


def _counter_datetime(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, (*_COMMON, "interval", "format"), path)
    counter.method = c.string(k, "interval", path, default="begin", choices=("begin", "end"))
    counter.value = c.string(k, "format", path, default="%Y-%m-%d %H:%M:%S")
    nk.update({"interval": counter.method, "format": counter.value})


def _counter_message(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, (*_COMMON, "fields", "method"), path)
    fs = k.get("fields")
    if not isinstance(fs, list) or not fs or not all(isinstance(f, str) and f for f in fs):
        c.add(f"{path}.fields", "missing field" if fs is None else "must be a non-empty list of names")
    else:
        counter.fields = list(fs)
    counter.method = c.string(k, "method", path, default="first", choices=("first", "last"))
    nk.update({"fields": fs, "method": counter.method})


def _counter_specified(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, (*_COMMON, "value"), path)
    if "value" not in k:
        c.add(f"{path}.value", "missing field")
    counter.value = k.get("value")
    nk["value"] = counter.value


def _counter_plain(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    """``route`` and ``active``: no fields of their own."""
    c.unknown(k, _COMMON, path)


def _counter_geofence(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, _COMMON, path)
    if not scope.geofences:
        c.add(path, "a geofence counter needs a geofence selector")


def _counter_accumulator(c: _Checker, k, path, counter: CounterSpec, nk, scope: _Scope, before) -> None:
    c.unknown(k, (*_COMMON, "counter", "reset_interval"), path)
    target = c.string(k, "counter", path, required=True)
    if target is not None and target not in {x.name for x in before}:
        c.add(f"{path}.counter", f"must name a counter listed before this one, not '{target}'")
    counter.parameter = target
    counter.method = c.string(k, "reset_interval", path, choices=RESETS)
    nk.update({"counter": target, "reset_interval": counter.method})


_COUNTER_CHECKS = {
    "expression": _counter_reduce,
    "parameter": _counter_reduce,
    "interval": _counter_interval,
    "dataset": _counter_dataset,
    "datetime": _counter_datetime,
    "message": _counter_message,
    "specified": _counter_specified,
    "route": _counter_plain,
    "active": _counter_plain,
    "geofence": _counter_geofence,
    "accumulator": _counter_accumulator,
}


def _path_key(problem: Problem):
    # The split puts the digit runs at the odd positions. ``str.isdigit`` would also take a key
    # like "²" (a digit to Unicode, not a decimal), which ``int`` refuses.
    parts = re.split(r"(\d+)", problem.path)
    return [int(part) if index % 2 else part for index, part in enumerate(parts)]


def validate_calculator(config) -> list[Problem]:
    """Every problem of a calculator configuration, each with its path, ordered by path;
    empty when valid."""
    return sorted(_check(config)[0], key=_path_key)


def compile_calculator(config) -> Calculator:
    """The compiled calculator; raises ``CalculatorError`` listing every problem."""
    if isinstance(config, Calculator):
        return config
    problems, calc = _check(config)
    if problems:
        raise CalculatorError(sorted(problems, key=_path_key))
    assert calc is not None
    return calc


def normalize_calculator(config) -> dict:
    """The configuration with every default of DESIGN 7.2 filled in and method aliases resolved;
    raises ``CalculatorError`` when invalid."""
    return compile_calculator(config).config
