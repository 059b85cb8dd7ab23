"""The topic grammar on its own (no broker, no database)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from flespi_site.mqtt.topics import (
    WILDCARD,
    IntervalEvent,
    LogEvent,
    StateName,
    TopicKind,
    calc_log_topic,
    device_ingest_topic,
    device_log_topic,
    device_of_topic,
    device_telemetry_topic,
    entity_of_topic,
    filter_entities,
    ident_of_topic,
    interval_topic,
    message_topic,
    rooted,
    state_names_sql,
    state_topic,
    topic_sql,
)


def test_builders_spell_the_wire_topics():
    assert message_topic(device_id=42) == "message/gw/devices/42"
    assert interval_topic(calc_id=7, device_id=42, event=IntervalEvent.CREATED) == (
        "interval/gw/calcs/7/devices/42/created"
    )
    assert state_topic(calc_id=7, device_id=42, name=StateName.LAST) == "state/gw/calcs/7/devices/42/last"
    assert rooted(root="flespi", topic=message_topic(device_id=1)) == "flespi/message/gw/devices/1"
    assert [str(event) for event in IntervalEvent] == ["created", "updated", "deleted", "activated", "deactivated"]
    assert [str(name) for name in StateName] == ["synced", "last", "active"]


def test_the_parser_reads_what_the_builders_write():
    for topic in (
        message_topic(device_id=42),
        *(interval_topic(calc_id=7, device_id=42, event=event) for event in IntervalEvent),
        *(state_topic(calc_id=7, device_id=42, name=name) for name in StateName),
    ):
        assert device_of_topic(rooted(root="flespi", topic=topic), root="flespi") == 42
        assert device_of_topic(rooted(root="other", topic=topic), root="flespi") is None
        assert device_of_topic(topic, root="flespi") is None


def test_the_entity_of_every_topic_the_platform_publishes():
    rooted_topics = {
        message_topic(device_id=42): ("device", 42),
        interval_topic(calc_id=3, device_id=42, event=IntervalEvent.UPDATED): ("device", 42),
        state_topic(calc_id=3, device_id=42, name=StateName.ACTIVE): ("device", 42),
        device_telemetry_topic(device_id=42, parameter="position.speed"): ("device", 42),
        device_log_topic(device_id=42, event=LogEvent.UPDATED): ("device", 42),
        calc_log_topic(calc_id=3, event=LogEvent.CREATED): ("calc", 3),
        "message/gw/devices/x": None, "log/gw/calcs/3": None, "state/gw/devices/42/other/x": None,
    }
    assert {topic: entity_of_topic(rooted(root="flespi", topic=topic), root="flespi")
            for topic in rooted_topics} == rooted_topics
    assert filter_entities(["log", "gw", "calcs", "3", "+"]) == (True, [("calc", 3)])
    assert filter_entities(["state", "+", "+", "42", "#"]) == (True, [("device", 42)])
    assert filter_entities(["message", "gw", "devices"]) == (False, [])
    assert [str(kind) for kind in TopicKind] == ["message", "interval", "state"]
    assert message_topic(device_id=WILDCARD) == "message/gw/devices/+"

def test_ingest_topics():
    assert device_ingest_topic(ingest_pattern="ingest/+", ident="abc") == "ingest/abc"
    assert ident_of_topic("ingest/abc", pattern="ingest/+") == "abc"
    assert ident_of_topic("ingest/abc/x", pattern="ingest/+") is None
    assert ident_of_topic("other/abc", pattern="ingest/+") is None


def test_the_unassign_trigger_queues_the_grammars_state_topics():
    """The trigger of an applied migration keeps its SQL; this ties it to the grammar, so that a
    change of the state topics fails here until a new migration replaces the trigger."""
    migration = importlib.import_module("analytics.migrations.0003_intervals")
    prefix = topic_sql(TopicKind.STATE, calc="OLD.calculator_id", device="OLD.device_id")
    assert prefix == "'state/gw/calcs/' || OLD.calculator_id || '/devices/' || OLD.device_id || '/'"
    assert f"base text := {prefix};" in migration.CREATE
    assert f"base || name, NULL, true FROM unnest({state_names_sql()}) AS name;" in migration.CREATE
    assert topic_sql(TopicKind.MESSAGE, device="d.id") == "'message/gw/devices/' || d.id"


def test_no_topic_is_spelled_outside_the_grammar():
    """Code builds and parses topics with ``flespi_site.mqtt.topics`` (docstrings may show them;
    the applied migration is tied to the grammar above)."""
    root = Path(__file__).resolve().parents[2]
    spelled = re.compile(r"(^|/)(message|interval|state)/gw/")
    found = []
    for package in ("flespi_site", "accounts", "devices", "analytics", "webhooks", "regions", "devtools"):
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts or path == root / "flespi_site" / "mqtt" / "topics.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and node.body and isinstance(node.body[0], ast.Expr)
            }
            found += [
                f"{path.relative_to(root)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and spelled.search(node.value)
            ]
    assert found == []


def test_device_state_and_log_topics():
    from flespi_site.mqtt.topics import (
        LogEvent,
        calc_log_topic,
        device_log_topic,
        device_telemetry_topic,
        device_telemetry_topic_sql,
        is_topic_level,
        topic_level_sql,
    )

    assert device_telemetry_topic(device_id=42, parameter="position.speed") == (
        "state/gw/devices/42/telemetry/position.speed"
    )
    assert device_log_topic(device_id=42, event=LogEvent.UPDATED) == "log/gw/devices/42/updated"
    assert calc_log_topic(calc_id=7, event=LogEvent.DELETED) == "log/gw/calcs/7/deleted"
    assert [str(event) for event in LogEvent] == ["created", "updated", "deleted"]
    # The SQL the telemetry write queues spells the same topic.
    assert device_telemetry_topic_sql(device="d", parameter="n") == "'state/gw/devices/' || d || '/telemetry/' || n"
    assert topic_level_sql("n") == "(n <> '' AND n !~ '[/+#]')"
    assert [is_topic_level(name) for name in ("a.b", "a/b", "a+", "#", "")] == [True, False, False, False, False]
