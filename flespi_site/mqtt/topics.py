"""The platform's MQTT topic grammar: every topic it publishes, every filter a broker grants, the
ingest topic devices publish to, and the SQL text of the topics a database trigger queues.

No Django here: the topic root (``MQTT_TOPIC_ROOT``) and the ingest pattern (``MQTT_INGEST_TOPIC``)
are passed in. Under the root (``flespi``):

* ``message/gw/devices/{device}``: each stored message, not retained;
* ``interval/gw/calcs/{calc}/devices/{device}/{event}``: an ``IntervalEvent``, not retained;
* ``state/gw/calcs/{calc}/devices/{device}/{name}``: a ``StateName``, retained;
* ``state/gw/devices/{device}/telemetry/{parameter}``: the latest value of a parameter, retained;
* ``log/gw/devices/{device}/{event}`` and ``log/gw/calcs/{calc}/{event}``: a ``LogEvent`` of the
  device or calculator, not retained.

The builders return topics relative to the root, the form the outbox stores (the relay puts the
root in front with ``rooted``, so queued rows do not depend on it); the parsers and the filters
of the access policy take whole topics. Devices publish to the ingest pattern (``ingest/+``)
with their ident at its ``+``.
"""

from __future__ import annotations

from enum import StrEnum
from string import Formatter

WILDCARD = "+"  # one level of a filter
SHARE_PREFIX = "$share/"


class TopicKind(StrEnum):
    """The level after the root: what a topic is about."""

    MESSAGE = "message"
    INTERVAL = "interval"
    STATE = "state"


class IntervalEvent(StrEnum):
    """What a recalculation did to an interval: the last level of an interval topic."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"


class StateName(StrEnum):
    """A retained state of an assignment: the last level of a state topic."""

    SYNCED = "synced"
    LAST = "last"
    ACTIVE = "active"


class DeviceStateName(StrEnum):
    """A retained state of a device (flespi's ``state/gw/devices/{id}/{name}``)."""

    CONNECTED = "connected"
    LAST_ACTIVE = "last_active"


class LogEvent(StrEnum):
    """What a write did to a device or a calculator: the last level of a log topic."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


# The first levels of the topics about a device's own state and log (flespi's), apart from the
# kinds above: their shapes differ from the assignments' under the same first level.
TELEMETRY_PREFIX = "state/gw/devices"
TELEMETRY_LEVEL = "telemetry"
DEVICE_LOG_PREFIX = "log/gw/devices"
CALC_LOG_PREFIX = "log/gw/calcs"
# Characters a parameter name cannot have to be one topic level: its telemetry is not published
# (the REST API still serves it).
TOPIC_LEVEL_FORBIDDEN = "/+#"

# The levels after ``<root>/<kind>``; ``{device}`` and ``{calc}`` are ids, ``{name}`` the event or
# state name.
DEVICE, CALC, NAME = "{device}", "{calc}", "{name}"
LEVELS: dict[TopicKind, tuple[str, ...]] = {
    TopicKind.MESSAGE: ("gw", "devices", DEVICE),
    TopicKind.INTERVAL: ("gw", "calcs", CALC, "devices", DEVICE, NAME),
    TopicKind.STATE: ("gw", "calcs", CALC, "devices", DEVICE, NAME),
}

# Every topic the platform publishes, by its levels after the root, as the access policy reads
# them: each is about a device (``{device}``: whoever may see the device may see the topic; an
# assignment is always of a device of the calculator's account) or, for a calculator's own log,
# the calculator (``{entity}``). ``{calc}`` and ``{name}`` are any one level.
ENTITY = "{entity}"
LOG_KIND = "log"
SHAPES: tuple[tuple[str, ...], ...] = (
    *((str(kind), *levels) for kind, levels in LEVELS.items()),
    (*TELEMETRY_PREFIX.split("/"), DEVICE, TELEMETRY_LEVEL, NAME),
    (*TELEMETRY_PREFIX.split("/"), DEVICE, NAME),
    (*DEVICE_LOG_PREFIX.split("/"), DEVICE, NAME),
    (*CALC_LOG_PREFIX.split("/"), ENTITY, NAME),
)
# The kinds of topics a subscription names (its level after the root).
KINDS = tuple(dict.fromkeys(shape[0] for shape in SHAPES))
_TEMPLATES = {kind: "/".join((kind, *levels)) for kind, levels in LEVELS.items()}


# --- builders (relative to the root; a level may be ``WILDCARD`` to build a filter) ----------


def message_topic(*, device_id: int | str) -> str:
    return _TEMPLATES[TopicKind.MESSAGE].format(device=device_id)


def interval_topic(*, calc_id: int | str, device_id: int | str, event: str) -> str:
    return _TEMPLATES[TopicKind.INTERVAL].format(calc=calc_id, device=device_id, name=event)


def state_topic(*, calc_id: int | str, device_id: int | str, name: str) -> str:
    return _TEMPLATES[TopicKind.STATE].format(calc=calc_id, device=device_id, name=name)


def device_telemetry_topic(*, device_id: int | str, parameter: str) -> str:
    return f"{TELEMETRY_PREFIX}/{device_id}/{TELEMETRY_LEVEL}/{parameter}"


def device_state_topic(*, device_id: int | str, name: str) -> str:
    return f"{TELEMETRY_PREFIX}/{device_id}/{name}"


def is_topic_level(text: str) -> bool:
    """Whether ``text`` can be one level of a published topic."""
    return bool(text) and not any(ch in text for ch in TOPIC_LEVEL_FORBIDDEN) and "\x00" not in text


def device_log_topic(*, device_id: int | str, event: str) -> str:
    return f"{DEVICE_LOG_PREFIX}/{device_id}/{event}"


def calc_log_topic(*, calc_id: int | str, event: str) -> str:
    return f"{CALC_LOG_PREFIX}/{calc_id}/{event}"


def rooted(*, root: str, topic: str) -> str:
    """A topic relative to the root as published."""
    return f"{root}/{topic}"


def device_ingest_topic(*, ingest_pattern: str, ident: str) -> str:
    return ingest_pattern.replace(WILDCARD, ident, 1)


# --- parsers -------------------------------------------------------------------------------


def is_id_level(level: str) -> bool:
    """Whether a topic level can be an id (a bigint's decimal digits)."""
    return level.isascii() and level.isdigit() and len(level) <= 19


def entity_of_topic(topic: str, *, root: str) -> tuple[str, int] | None:
    """What a platform topic is about, ``("device", id)`` or ``("calc", id)`` (a calculator's
    log), or None when ``topic`` is no topic the platform publishes."""
    levels = topic.split("/")
    if len(levels) < 2 or levels[0] != root:
        return None
    rest = levels[1:]
    for shape in SHAPES:
        if len(shape) != len(rest):
            continue
        found = None
        for expected, actual in zip(shape, rest, strict=True):
            if expected in (DEVICE, ENTITY):
                if not is_id_level(actual):
                    break
                found = ("device" if expected == DEVICE else "calc", int(actual))
            elif expected in (CALC, NAME):
                if not actual:
                    break
            elif actual != expected:
                break
        else:
            return found
    return None


def device_of_topic(topic: str, *, root: str) -> int | None:
    """The device a platform topic is about, or None (not a platform topic, or a calculator's)."""
    entity = entity_of_topic(topic, root=root)
    return entity[1] if entity is not None and entity[0] == "device" else None


def filter_entities(levels: list[str]) -> tuple[bool, list[tuple[str, int]]]:
    """Of a filter's levels after the root: whether it can match a platform topic at all, and the
    entities it names by id (``("device", 42)``) in the shapes it can match."""
    fits, named = False, list[tuple[str, int]]()
    for shape in SHAPES:
        entities = _fits(levels, shape)
        if entities is not None:
            fits = True
            named.extend(entity for entity in entities if entity not in named)
    return fits, named


def _fits(levels: list[str], shape: tuple[str, ...]) -> list[tuple[str, int]] | None:
    entities: list[tuple[str, int]] = []
    for index, actual in enumerate(levels):
        if actual == "#":
            return entities if index == len(levels) - 1 else None
        if index >= len(shape):
            return None
        expected = shape[index]
        if actual == WILDCARD:
            continue
        if expected in (DEVICE, ENTITY):
            if not is_id_level(actual):
                return None
            entities.append(("device" if expected == DEVICE else "calc", int(actual)))
        elif expected not in (CALC, NAME) and actual != expected:
            return None
    return entities if len(levels) == len(shape) else None


def ident_of_topic(topic: str, *, pattern: str) -> str | None:
    """The ident at the ``+`` level of the ingest ``pattern`` (``ingest/+``), or None."""
    levels, actual = pattern.split("/"), topic.split("/")
    if len(levels) != len(actual) or WILDCARD not in levels:
        return None
    for expected, level in zip(levels, actual, strict=True):
        if expected not in (WILDCARD, level):
            return None
    ident = actual[levels.index(WILDCARD)]
    return ident or None


def ingest_topic(ident: str, *, pattern: str) -> str | None:
    """The ingest topic of ``ident`` (at the ``+`` level of ``pattern``), or None when ``ident``
    cannot be a level of a topic."""
    levels = pattern.split("/")
    if not ident or WILDCARD not in levels or any(char in ident for char in "/+#\x00"):
        return None
    levels[levels.index(WILDCARD)] = ident
    return "/".join(levels)


def entity_of_log_topic(topic: str, *, root: str) -> tuple[str, int] | None:
    """The device or calculator whose log event ``topic`` is, or None."""
    if not topic.startswith(f"{root}/{LOG_KIND}/"):
        return None
    return entity_of_topic(topic, root=root)


def strip_share(topic_filter: str) -> str | None:
    """The filter of a shared subscription (``$share/<group>/<filter>``) without its prefix;
    the filter itself when not shared; None for a malformed share."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return topic_filter
    group, _, rest = topic_filter[len(SHARE_PREFIX):].partition("/")
    if not group or "+" in group or "#" in group or not rest:
        return None
    return rest


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    levels, actual = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(actual) or level not in (WILDCARD, actual[index]):
            return False
    return len(levels) == len(actual)


# --- SQL (the topics a trigger queues) ------------------------------------------------------


def topic_sql(kind: TopicKind, **expressions: str) -> str:
    """The SQL text expression of a topic of ``kind`` relative to the root, with the SQL
    expression given for each level named (``calc``, ``device``, ``name``). It stops before the
    first level not given: a prefix ending in ``/`` that the SQL appends the rest to."""
    parts = []
    for literal, field, _spec, _conversion in Formatter().parse(_TEMPLATES[kind]):
        if literal:
            parts.append(sql_literal(literal))
        if field is None:
            continue
        if field not in expressions:
            break
        parts.append(expressions[field])
    return " || ".join(parts)


def device_telemetry_topic_sql(*, device: str, parameter: str) -> str:
    """The SQL text expression of ``device_telemetry_topic`` from the SQL expressions of the
    device id and the parameter name."""
    return f"{sql_literal(TELEMETRY_PREFIX + '/')} || {device} || {sql_literal('/' + TELEMETRY_LEVEL + '/')} || {parameter}"


def device_state_topic_sql(*, device: str, name: str) -> str:
    """The SQL text expression of ``device_state_topic`` from the SQL expression of the device id
    and a state name."""
    return f"{sql_literal(TELEMETRY_PREFIX + '/')} || {device} || {sql_literal('/' + name)}"


def topic_level_sql(expression: str) -> str:
    """The SQL condition that the text ``expression`` can be one topic level (``is_topic_level``)."""
    return f"({expression} <> '' AND {expression} !~ '[{TOPIC_LEVEL_FORBIDDEN}]')"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def state_names_sql() -> str:
    """Every ``StateName`` as a SQL text array, in the order of the enum."""
    return "ARRAY[" + ", ".join(sql_literal(name) for name in StateName) + "]"
