"""The template language of a webhook's URL, headers and body: text with placeholders, nothing
else. No Django here, and nothing that runs code: a template is parsed once when the webhook is
saved (an error names the placeholder and its position) into literal parts and lookups, and
rendering an event only looks values up and joins text.

A placeholder is ``{{name}}`` (spaces inside the braces are allowed); ``{{`` always opens one.
Names:

* ``topic``: the whole topic (``flespi/interval/gw/calcs/7/devices/42/created``);
* ``topic[N]``: its level N, from 0 (``topic[6]`` is ``42`` above); missing: null;
* ``payload``: the event's payload (an interval, a message, a state value);
* ``payload.<name>``: a field of the payload: a parameter's dotted name as it is stored
  (``payload.position.speed`` reads the key ``position.speed`` of a message), else the path
  through nested objects; missing: null;
* ``timestamp``: when the event was queued (unix seconds); ``id``: the event's delivery id,
  the same on every retry; ``webhook_id``.

A value is written as JSON (a string in quotes) in the body, so that a JSON body stays JSON; a
``|text`` after the name writes a string without quotes (``{{topic[6]|text}}``). In the URL and
the headers a value is always text (null is empty), and in the URL it is percent-encoded.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flespi_site.jsontext import dumps_exact

MAX_TEMPLATE = 16_384  # characters of one template
MAX_LEVEL = 63  # the largest level index ``topic[N]`` may name

Context = Literal["body", "text", "url"]

_NAME = re.compile(
    r"\s*(?P<name>topic\[(?P<level>\d{1,3})\]|topic|payload(?:\.(?P<field>[^\s{}|]+))?|timestamp|id|webhook_id)"
    r"\s*(?P<text>\|\s*text\s*)?$"
)
NAMES = "topic, topic[N], payload, payload.<name>, timestamp, id, webhook_id"


class TemplateError(ValueError):
    """A template that does not parse: ``reason`` says what, ``position`` where (0-based)."""

    def __init__(self, reason: str, position: int):
        super().__init__(f"{reason} at position {position}")
        self.reason = reason
        self.position = position


@dataclass(frozen=True)
class Event:
    """What a template reads: the topic (rooted), the decoded payload and the delivery's facts."""

    topic: str
    payload: Any
    timestamp: float
    id: int
    webhook_id: int


@dataclass(frozen=True)
class _Lookup:
    name: str  # topic, level, payload, field, timestamp, id, webhook_id
    argument: Any = None  # the level or the field name
    text: bool = False


_MISSING = object()


def _field(payload: Any, name: str) -> Any:
    if not isinstance(payload, Mapping):
        return None
    if name in payload:
        return payload[name]
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class Template:
    """A parsed template: ``render(event, context)`` gives its text for one event."""

    def __init__(self, source: str):
        if len(source) > MAX_TEMPLATE:
            raise TemplateError(f"too long: {len(source)} characters, at most {MAX_TEMPLATE}", MAX_TEMPLATE)
        self.source = source
        self.parts: list[str | _Lookup] = []
        position = 0
        while True:
            start = source.find("{{", position)
            if start < 0:
                if position < len(source):
                    self.parts.append(source[position:])
                break
            if start > position:
                self.parts.append(source[position:start])
            end = source.find("}}", start + 2)
            if end < 0:
                raise TemplateError("'{{' without its closing '}}'", start)
            inner = source[start + 2:end]
            match = _NAME.match(inner)
            if match is None:
                raise TemplateError(f"unknown placeholder {{{{{inner}}}}} (placeholders: {NAMES})", start)
            if match["level"] is not None:
                level = int(match["level"])
                if level > MAX_LEVEL:
                    raise TemplateError(f"topic level {level} is beyond the last possible one ({MAX_LEVEL})", start)
                lookup = _Lookup("level", level, bool(match["text"]))
            elif match["field"] is not None:
                lookup = _Lookup("field", match["field"], bool(match["text"]))
            else:
                lookup = _Lookup(match["name"], None, bool(match["text"]))
            self.parts.append(lookup)
            position = end + 2
        self.constant = all(isinstance(part, str) for part in self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    @staticmethod
    def _value(lookup: _Lookup, event: Event) -> Any:
        if lookup.name == "topic":
            return event.topic
        if lookup.name == "level":
            levels = event.topic.split("/")
            return levels[lookup.argument] if lookup.argument < len(levels) else None
        if lookup.name == "payload":
            return event.payload
        if lookup.name == "field":
            return _field(event.payload, lookup.argument)
        return getattr(event, lookup.name)

    def render(self, event: Event, context: Context) -> str:
        if self.constant:
            return self.source
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = self._value(part, event)
            if context == "body" and not (part.text and isinstance(value, str)):
                out.append(dumps_exact(value).decode())
                continue
            text = "" if value is None else value if isinstance(value, str) else dumps_exact(value).decode()
            out.append(urllib.parse.quote(text, safe="") if context == "url" else text)
        return "".join(out)


def parse(source: str) -> Template:
    """The template of ``source``; ``TemplateError`` when it does not parse."""
    return Template(source)


DEFAULT_BODY = '{"id": {{id}}, "topic": {{topic}}, "timestamp": {{timestamp}}, "payload": {{payload}}}'
