"""The template language of webhooks (no database): what parses, what it renders, and errors that
name the placeholder and its position."""

from __future__ import annotations

import pytest

from webhooks.templates import Event, TemplateError, parse

EVENT = Event(
    topic="flespi/interval/gw/calcs/7/devices/42/created",
    payload={"id": 5, "position.speed": 55.5, "name": 'say "hi"', "nested": {"a": [1, 2]}, "empty": None},
    timestamp=1700000000.25,
    id=901,
    webhook_id=3,
)


@pytest.mark.parametrize(("source", "context", "expected"), [
    ('{"t": {{topic}}, "s": {{payload.position.speed}}}', "body",
     '{"t": "flespi/interval/gw/calcs/7/devices/42/created", "s": 55.5}'),
    ("{{topic[6]}}|{{topic[6]|text}}|{{ topic[7] | text }}", "body", '"42"|42|created'),
    ("{{payload.name}}", "body", '"say \\"hi\\""'),
    ("{{payload.nested.a}} {{payload.missing}} {{topic[20]}}", "body", "[1,2] null null"),
    ("{{id}}/{{webhook_id}}/{{timestamp}}", "body", "901/3/1700000000.25"),
    ("{{payload}}", "body", '{"id":5,"position.speed":55.5,"name":"say \\"hi\\"","nested":{"a":[1,2]},"empty":null}'),
    ("http://h/x/{{topic[6]}}?n={{payload.name}}&e={{payload.empty}}", "url", "http://h/x/42?n=say%20%22hi%22&e="),
    ("Bearer {{payload.name}} {{payload.id}}", "text", 'Bearer say "hi" 5'),
    ("no placeholders {not one} }} here", "body", "no placeholders {not one} }} here"),
    ("", "body", ""),
])
def test_rendering(source, context, expected):
    assert parse(source).render(EVENT, context) == expected


@pytest.mark.parametrize(("source", "reason", "position"), [
    ("abc {{nope}}", "unknown placeholder {{nope}}", 4),
    ("{{payload.}}", "unknown placeholder {{payload.}}", 0),
    ("x {{topic", "'{{' without its closing '}}'", 2),
    ("{{topic[64]}}", "topic level 64 is beyond the last possible one (63)", 0),
    ("{{__import__('os')}}", "unknown placeholder {{__import__('os')}}", 0),
    ("{{payload|upper}}", "unknown placeholder {{payload|upper}}", 0),
])
def test_errors_name_the_placeholder_and_where(source, reason, position):
    with pytest.raises(TemplateError) as raised:
        parse(source)
    assert raised.value.reason.startswith(reason) and raised.value.position == position
