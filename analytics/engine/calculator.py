"""Calculator configurations: validation with paths, normalisation (defaults of DESIGN 7.2), and
compilation into a ``Calculator`` that ``calculate`` and ``recalculate`` reuse."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import Checker, Scope, check_point
from .counters import COUNTER_TYPES, POSITION, CheckContext, CounterSpec
from .errors import CalculatorError, Problem
from .expressions import CompiledExpression
from .geo import Geofence
from .interval_fields import COUNTER_RESERVED, ENGINE_FIELDS
from .timeutil import zone
from .zones import GeofenceSet, zone_order

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

# Options of expression and geofence selectors kept in their normalised form only when given,
# so that adding them changed no stored calculator: ``max_active`` (seconds; a longer interval
# is cut into pieces of at most that long) and ``validate_message`` (an expression; a message it
# does not hold for is ignored by the selector, which keeps the state it had before it).
MAX_ACTIVE_DEFAULT = 0
# The options of a datetime selector, likewise kept only when true.
DATETIME_OPTIONS = ("merge_message_before", "merge_message_after")

SELECTOR_TYPES = ("expression", "datetime", "geofence", "inactive", "calc")
SPLITS = ("hour", "day", "week", "month", "year")
# Where a calculator's messages come from (flespi's ``messages_source``): the device's own, or
# another calculator's intervals of the device (``chains``).
MESSAGE_SOURCES = ("device", "calculator")
DEVICE_SOURCE = {"source": "device"}
# The options of a ``calc`` selector: the common ones but ``merge_unknown`` (its messages are
# never unknown).
CALC_OPTIONS = tuple(key for key in COMMON_OPTIONS if key != "merge_unknown")


def _check_point(checker: Checker, point, path: str) -> bool:
    return check_point(checker, point, path) is not None


def _check_geofence(checker: Checker, geofence, path: str) -> dict | None:
    if not isinstance(geofence, dict):
        checker.add(path, "must be an object")
        return None
    geofence_type = checker.string(geofence, "type", path, required=True, choices=("circle", "polygon"))
    name = geofence.get("name")
    if name is not None and not isinstance(name, str):
        checker.add(f"{path}.name", "must be a string")
    before = len(checker.problems)
    if geofence_type == "circle":
        if "center" not in geofence:
            checker.add(f"{path}.center", "missing field")
        else:
            _check_point(checker, geofence["center"], f"{path}.center")
        checker.number(geofence, "radius", path, required=True, positive=True)
    elif geofence_type == "polygon":
        points = geofence.get("path")
        if not isinstance(points, list):
            checker.add(f"{path}.path", "missing field" if points is None else "must be a list of points")
        elif len(points) < 3:
            checker.add(f"{path}.path", "needs at least 3 points")
        elif len(points) > MAX_GEOFENCE_POINTS:
            checker.add(
                f"{path}.path", f"has {len(points)} points, at most {MAX_GEOFENCE_POINTS} are allowed"
            )
        else:
            for i, point in enumerate(points):
                if not _check_point(checker, point, f"{path}.path[{i}]"):
                    break
    if geofence_type is None or len(checker.problems) != before:
        return None
    return geofence


@dataclass
class SelectorSpec:
    type: str
    config: dict
    index: int
    expression: CompiledExpression | None = None
    method: str = "boolean"
    options: dict = field(default_factory=dict)
    geofences: Sequence[Geofence] = field(default_factory=list)
    # A geofence selector with an empty inline list: its geofences are the calculator's assigned ones.
    assigned: bool = False
    split: str | None = None  # None: a datetime selector whose one interval is never split
    delay_threshold: float = 0.0
    validate: CompiledExpression | None = None
    calc_id: int | None = None  # a ``calc`` selector's source calculator


class Calculator:
    """A validated, normalised and compiled calculator. Build with ``compile_calculator``.

    ``parameters``: the dotted names of the message parameters its selectors, counters and
    expressions read (a ``frozenset``; ``timestamp`` is implied), or ``None`` when that cannot be
    known. A reader may leave every other parameter out of the messages it passes: the
    intervals are the same.
    """

    def __init__(
        self, config: dict, selectors, counters, validate_message, validate_interval, *, scope_geofences=(),
        assigned: Sequence[dict] = (),
    ):
        self.config = config
        # The assigned geofences (data, ordered as checked) and what every expression sees.
        self.assigned = list(assigned)
        self.scope_geofences = scope_geofences
        self.name = config["name"]
        self.timezone = config["timezone"]
        self.tz = zone(self.timezone)
        self.selectors: list[SelectorSpec] = selectors
        self.counters: list[CounterSpec] = counters
        self.validate_message: CompiledExpression | None = validate_message
        self.validate_interval: CompiledExpression | None = validate_interval
        self.update_period = float(config["update_period"])
        self.engine_keys = (*ENGINE_FIELDS, *(counter.name for counter in counters))
        with_geofences = [selector for selector in selectors if selector.geofences]
        if len(with_geofences) == 1:
            self.geofences: Sequence[Geofence] = with_geofences[0].geofences
        else:
            self.geofences = GeofenceSet(geofence for selector in with_geofences for geofence in selector.geofences)
        # Fields of one interval that depend on the interval before it.
        self.crosses_intervals = any(
            COUNTER_TYPES[counter.type].crosses_intervals(counter) for counter in counters
        ) or (validate_interval is not None and validate_interval.uses_prev)
        self.needs_interval_pass = validate_interval is not None or any(
            COUNTER_TYPES[counter.type].per_interval for counter in counters
        )
        # Calculator chaining: the source calculators whose intervals the selectors and counters
        # read, the one whose intervals are the messages (``messages_source``), and where each
        # reference is (path, calculator id), for the checks that need the stored calculators.
        self.messages_calc: int | None = config["messages_source"].get("calculator_id")
        self.references: list[tuple[str, int]] = [
            *((f"selectors[{spec.index}].calc_id", spec.calc_id) for spec in selectors if spec.calc_id is not None),
            *((f"counters[{i}].calc_id", counter.value["calc_id"]) for i, counter in enumerate(counters)
              if counter.type == "calculator"),
        ]
        self.reads_calcs = frozenset(calc_id for _path, calc_id in self.references)
        if self.messages_calc is not None:
            self.references.insert(0, ("messages_source.calculator_id", self.messages_calc))
        self.chained = bool(self.references)
        self.parameters = _parameters(self)
        # Whose metadata its expressions read ("device", "calculator"): the values are compiled
        # in, so a change of it needs a new compilation (and a recalculation).
        self.reads_metadata = frozenset(
            source for expression in _expressions(self) for source in expression.reads_metadata
        )

    def __repr__(self) -> str:
        return f"Calculator({self.name!r})"

    def for_device(self, metadata: Mapping | None) -> Calculator:
        """This calculator as it runs for a device whose metadata is ``metadata``: itself when no
        expression reads ``device.metadata``, else a new compilation with those values in."""
        if "device" not in self.reads_metadata:
            return self
        return compile_calculator(self.config, geofences=self.assigned, device_metadata=metadata or {})


def _expressions(calc: Calculator) -> list[CompiledExpression]:
    """Every compiled expression of the calculator: of its selectors, counters and validations."""
    found = [calc.validate_message, calc.validate_interval]
    for selector in calc.selectors:
        found += [selector.expression, selector.validate]
    for counter in calc.counters:
        found += [counter.validate, *counter.expressions()]
    return [expression for expression in found if expression is not None]


def _parameters(calc: Calculator) -> frozenset[str] | None:
    """The message parameters the calculator reads (``timestamp`` is never listed: every reader
    supplies it), or ``None`` when a part reads every parameter. Interval expressions
    (``interval`` counters, ``validate_interval``) read interval fields, not messages."""
    parts: list[frozenset[str] | None] = []
    if calc.validate_message is not None:
        parts.append(calc.validate_message.parameters)
    for selector in calc.selectors:
        if selector.expression is not None:
            parts.append(selector.expression.parameters)
        if selector.validate is not None:
            parts.append(selector.validate.parameters)
        if selector.type == "geofence":
            parts.append(POSITION)
    for counter in calc.counters:
        counter_type = COUNTER_TYPES[counter.type]
        if counter_type.per_interval:
            continue  # evaluated per interval, on interval fields; validate_message is not used
        if counter.validate is not None:
            parts.append(counter.validate.parameters)
        parts.extend(counter_type.parameters(counter))
    names: set[str] = set()
    for part in parts:
        if part is None:
            return None
        names |= part
    names.discard("timestamp")
    return frozenset(names)


def _check(
    config, geofences: Sequence[dict] = (), device_metadata: Mapping | None = None
) -> tuple[list[Problem], Calculator | None]:
    if not isinstance(config, dict):
        return [Problem("", "calculator must be a JSON object")], None
    checker = Checker()
    checker.unknown(config, ("name", "selectors", "messages_source", *CALCULATOR_DEFAULTS), "")
    normalized = _check_fields(checker, config)
    normalized["messages_source"] = _check_messages_source(checker, config)
    assigned_zones = zone_order(zone for zone in geofences if zone.get("enabled", True))
    assigned = GeofenceSet(assigned_zones)
    # Selectors first: their geofences are what geofence() in every expression sees.
    metadata = {"device": device_metadata or {}, "calculator": normalized["metadata"]}
    selectors, normalized["selectors"], scope = _check_selectors(
        checker, config, normalized["timezone"], assigned, metadata
    )
    validate_message = checker.expression(config, "validate_message", "", scope=scope)
    validate_interval = checker.expression(config, "validate_interval", "", scope=scope)
    normalized["validate_message"] = config.get("validate_message")
    normalized["validate_interval"] = config.get("validate_interval")
    counters, normalized["counters"] = _check_counters(checker, config, scope)
    if checker.problems:
        return checker.problems, None
    return [], Calculator(
        normalized, selectors, counters, validate_message, validate_interval, scope_geofences=scope.geofences,
        assigned=assigned_zones,
    )


def _check_messages_source(checker: Checker, config: dict) -> dict:
    """flespi's ``messages_source``: ``{"source": "device"}`` (the default: the device's own
    messages) or ``{"source": "calculator", "calculator_id": N}`` (calculator N's intervals of the
    device, each a message); the normalised form."""
    if config.get("messages_source") is None:
        return dict(DEVICE_SOURCE)
    source = config["messages_source"]
    if not isinstance(source, dict):
        checker.add("messages_source", 'must be an object like {"source": "device"}')
        return dict(DEVICE_SOURCE)
    kind = checker.string(source, "source", "messages_source", required=True, choices=MESSAGE_SOURCES)
    if kind == "calculator":
        checker.unknown(source, ("source", "calculator_id"), "messages_source")
        calc_id = checker.calc_id(source, "calculator_id", "messages_source")
        if calc_id is not None:
            return {"source": "calculator", "calculator_id": calc_id}
    else:
        checker.unknown(source, ("source",), "messages_source")
    return dict(DEVICE_SOURCE)


def _check_fields(checker: Checker, config: dict) -> dict[str, Any]:
    """The calculator's own fields (name, timezone, update and retention settings, metadata)."""
    normalized: dict[str, Any] = {}
    normalized["name"] = checker.string(config, "name", "", required=True)
    timezone = checker.string(config, "timezone", "", default="UTC")
    try:
        zone(timezone)
    except Exception:
        checker.add("timezone", f"unknown timezone {timezone!r}")
        timezone = "UTC"
    normalized["timezone"] = timezone
    normalized["update_delay"] = checker.number(config, "update_delay", "", default=30)
    normalized["update_period"] = checker.number(config, "update_period", "", default=31536000, positive=True)
    normalized["update_onchange"] = checker.boolean(config, "update_onchange", "", default=True)
    normalized["intervals_ttl"] = checker.number(config, "intervals_ttl", "", default=31536000, positive=True)
    normalized["intervals_rotate"] = checker.number(config, "intervals_rotate", "", default=0, integer=True)
    metadata = config.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        checker.add("metadata", "must be an object")
        metadata = {}
    normalized["metadata"] = metadata
    return normalized


def _check_selectors(
    checker: Checker, config: dict, tz: str, assigned: GeofenceSet, metadata: Mapping[str, Any]
) -> tuple[list[SelectorSpec], list[dict], Scope]:
    raw = config.get("selectors")
    if raw is None:
        checker.add("selectors", "missing field")
        raw = []
    elif not isinstance(raw, list):
        checker.add("selectors", "must be a list")
        raw = []
    elif not raw:
        checker.add("selectors", "needs at least one selector")
    scope = Scope(tz, [], metadata=metadata)
    inline: list[Geofence] = []
    selectors: list[SelectorSpec] = []
    normalized: list[dict] = []
    for i, selector_config in enumerate(raw):
        path = f"selectors[{i}]"
        if not isinstance(selector_config, dict):
            checker.add(path, "must be an object")
            continue
        selector_type = checker.string(selector_config, "type", path, required=True, choices=SELECTOR_TYPES)
        if selector_type is None:
            continue
        spec = SelectorSpec(type=selector_type, config=selector_config, index=i)
        normalized_selector: dict[str, Any] = {"type": selector_type}
        if selector_config.get("name") is not None:
            normalized_selector["name"] = checker.string(selector_config, "name", path)
        if selector_type in ("expression", "geofence", "calc"):
            spec.options = _check_options(checker, selector_config, path)
        _SELECTOR_CHECKS[selector_type](checker, selector_config, path, spec, normalized_selector)
        if selector_type == "geofence":
            scope.geofence_selector = True
        if spec.assigned:
            spec.geofences = assigned
        elif spec.geofences:
            inline.extend(spec.geofences)
        selectors.append(spec)
        normalized.append(normalized_selector)
    # Compiled once every geofence is known: an expression sees the inline geofences of all
    # selectors (in order), then the assigned ones (by priority).
    scope.geofences = GeofenceSet([*inline, *assigned]) if inline else assigned
    for spec, normalized_selector in zip(selectors, normalized, strict=True):
        path = f"selectors[{spec.index}]"
        if spec.type == "expression" and spec.config.get("expression") is not None:
            spec.expression = checker.expression(spec.config, "expression", path, scope=scope)
        if spec.type in ("expression", "geofence") and spec.config.get("validate_message") is not None:
            spec.validate = checker.expression(spec.config, "validate_message", path, scope=scope)
            normalized_selector["validate_message"] = spec.config["validate_message"]
    return selectors, normalized, scope


def _check_options(checker: Checker, selector_config: dict, path: str) -> dict:
    options = {}
    for key, default in COMMON_OPTIONS.items():
        if isinstance(default, bool):
            options[key] = checker.boolean(selector_config, key, path, default)
        else:
            options[key] = checker.number(selector_config, key, path, default=default)
    max_active = checker.number(selector_config, "max_active", path, default=MAX_ACTIVE_DEFAULT)
    if max_active:
        options["max_active"] = max_active
    return options


def _selector_expression(
    checker: Checker, config: dict, path: str, spec: SelectorSpec, normalized: dict
) -> None:
    checker.unknown(config, ("type", "name", "expression", "method", "validate_message", "max_active", *COMMON_OPTIONS), path)
    spec.method = checker.string(config, "method", path, default="boolean", choices=("boolean", "change"))
    if "expression" not in config or config["expression"] is None:
        checker.add(f"{path}.expression", "missing field")
    normalized.update({"expression": config.get("expression"), "method": spec.method, **spec.options})


def _selector_geofence(
    checker: Checker, config: dict, path: str, spec: SelectorSpec, normalized: dict
) -> None:
    checker.unknown(config, ("type", "name", "geofences", "validate_message", "max_active", *COMMON_OPTIONS), path)
    geofences = config.get("geofences")
    if not isinstance(geofences, list):
        checker.add(f"{path}.geofences", "missing field" if geofences is None else "must be a list")
    elif not geofences:
        spec.assigned = True  # the calculator's assigned geofences
    else:
        inline: list[Geofence] = []
        for i, geofence in enumerate(geofences):
            checked = _check_geofence(checker, geofence, f"{path}.geofences[{i}]")
            if checked is not None:
                inline.append(Geofence(checked))
        spec.geofences = GeofenceSet(inline)
    normalized.update({"geofences": geofences, **spec.options})


def _selector_datetime(
    checker: Checker, config: dict, path: str, spec: SelectorSpec, normalized: dict
) -> None:
    checker.unknown(config, ("type", "name", "split", *DATETIME_OPTIONS), path)
    spec.split = checker.string(config, "split", path, choices=SPLITS)
    if spec.split is not None:
        normalized["split"] = spec.split
    for key in DATETIME_OPTIONS:
        if checker.boolean(config, key, path, False):
            spec.options[key] = True
            normalized[key] = True


def _selector_inactive(
    checker: Checker, config: dict, path: str, spec: SelectorSpec, normalized: dict
) -> None:
    checker.unknown(config, ("type", "name", "delay_threshold"), path)
    # Positive: with 0 every device would be inactive the moment its newest message is past.
    spec.delay_threshold = checker.number(config, "delay_threshold", path, required=True, default=1, positive=True)
    normalized["delay_threshold"] = spec.delay_threshold


def _selector_calc(
    checker: Checker, config: dict, path: str, spec: SelectorSpec, normalized: dict
) -> None:
    """Another calculator's intervals of the device (``chains``): a message is on while it lies in
    one of them (``invert``: in none), and the messages of two of them are never one run."""
    checker.unknown(config, ("type", "name", "calc_id", "max_active", *CALC_OPTIONS), path)
    spec.calc_id = checker.calc_id(config, "calc_id", path)
    normalized.update({"calc_id": spec.calc_id, **{key: spec.options[key] for key in CALC_OPTIONS}})
    if "max_active" in spec.options:
        normalized["max_active"] = spec.options["max_active"]


_SELECTOR_CHECKS = {
    "expression": _selector_expression,
    "geofence": _selector_geofence,
    "datetime": _selector_datetime,
    "inactive": _selector_inactive,
    "calc": _selector_calc,
}


def _check_counters(checker: Checker, config: dict, scope: Scope) -> tuple[list[CounterSpec], list[dict]]:
    raw = config.get("counters", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        checker.add("counters", "must be a list")
        raw = []
    counters: list[CounterSpec] = []
    normalized: list[dict] = []
    seen: set[str] = set()
    for i, counter_config in enumerate(raw):
        path = f"counters[{i}]"
        if not isinstance(counter_config, dict):
            checker.add(path, "must be an object")
            continue
        name = checker.string(counter_config, "name", path, required=True)
        counter_type = checker.string(
            counter_config, "type", path, required=True, choices=tuple(COUNTER_TYPES)
        )
        if name is not None:
            if name in COUNTER_RESERVED:
                checker.add(f"{path}.name", f"'{name}' is a reserved interval field")
            elif name in seen:
                checker.add(f"{path}.name", f"duplicate counter name '{name}'")
            seen.add(name)
        if counter_type is None or name is None:
            continue
        counter = CounterSpec(name=name, type=counter_type, config=counter_config)
        normalized_counter: dict[str, Any] = {"name": name, "type": counter_type}
        counter.validate = checker.expression(counter_config, "validate_message", path, scope=scope)
        if counter_config.get("validate_message") is not None:
            normalized_counter["validate_message"] = counter_config["validate_message"]
        context = CheckContext(
            checker=checker, path=path, normalized=normalized_counter, scope=scope, earlier=counters
        )
        COUNTER_TYPES[counter_type].check(counter, context)
        counters.append(counter)
        normalized.append(normalized_counter)
    return counters, normalized


def _path_key(problem: Problem):
    # The split puts the digit runs at the odd positions. ``str.isdigit`` would also take a key
    # like "²" (a digit to Unicode, not a decimal), which ``int`` refuses.
    parts = re.split(r"(\d+)", problem.path)
    return [int(part) if index % 2 else part for index, part in enumerate(parts)]


def validate_calculator(config) -> list[Problem]:
    """Every problem of a calculator configuration, each with its path, ordered by path;
    empty when valid."""
    return sorted(_check(config)[0], key=_path_key)


def compile_calculator(
    config, *, geofences: Sequence[dict] = (), device_metadata: Mapping | None = None
) -> Calculator:
    """The compiled calculator; raises ``CalculatorError`` listing every problem. ``geofences``:
    the geofence entities assigned to it, as data (``{"id", "name", "enabled", "priority",
    "metadata", "geometry"}``, the geometry valid): a geofence selector with an empty
    ``geofences`` list takes the enabled ones, and every expression sees them.
    ``device_metadata``: the metadata of the device it runs for, what ``device.metadata.x``
    (``metadata('x')``) reads (``{}`` without one: every such path is missing)."""
    if isinstance(config, Calculator):
        return config
    problems, calc = _check(config, geofences, device_metadata)
    if problems:
        raise CalculatorError(sorted(problems, key=_path_key))
    assert calc is not None
    return calc


def normalize_calculator(config) -> dict:
    """The configuration with every default of DESIGN 7.2 filled in and method aliases resolved;
    raises ``CalculatorError`` when invalid."""
    return compile_calculator(config).config
