"""SQL of the messages, telemetry and outbox tables of a datacenter database.

Timestamps are stored as integer microseconds (``ts``); the message body keeps its float
``timestamp``. Writes are set-based: a batch is COPYed into a session-local staging table and
merged with one statement, which also queues the outbox rows and reports what changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import connections

from devices.choices import OutboxKind

STAGING = "staging_messages"

_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING} (
    device_id bigint NOT NULL,
    ts bigint NOT NULL,
    body jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""

# New rows are inserted; a row with the timestamp of a stored one is merged into it (new keys
# overwrite), and only when that changes something other than the reception time: a resent
# batch changes nothing and queues nothing. What was inserted or changed is queued for MQTT as
# one outbox row per device holding its timestamps in order, and the changed range per device
# is returned for the analytics.
_MERGE = f"""
WITH changed AS (
    INSERT INTO messages AS m (device_id, ts, body)
    SELECT device_id, ts, body FROM {STAGING}
    ON CONFLICT (device_id, ts) DO UPDATE SET body = m.body || EXCLUDED.body
    WHERE m.body IS DISTINCT FROM (m.body || (EXCLUDED.body - ARRAY['rest.timestamp', 'server.timestamp']))
    RETURNING m.device_id, m.ts
), per_device AS (
    SELECT device_id, array_agg(ts ORDER BY ts) AS stamps FROM changed GROUP BY device_id
), queued AS (
    INSERT INTO outbox (device_id, kind, stamps)
    SELECT device_id, {int(OutboxKind.MESSAGE)}, stamps FROM per_device ORDER BY device_id
)
SELECT device_id, stamps[1], stamps[array_length(stamps, 1)], array_length(stamps, 1) FROM per_device
"""

# The latest value of every parameter, kept correct when messages arrive out of order: a value
# only replaces one from an older (or the same) message. The batch's latest values are found by
# the caller; this statement only compares them with the stored ones.
_TELEMETRY = """
INSERT INTO telemetry AS t (device_id, name, value, ts)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::jsonb[], %s::bigint[])
ON CONFLICT (device_id, name) DO UPDATE SET value = EXCLUDED.value, ts = EXCLUDED.ts
WHERE t.ts <= EXCLUDED.ts AND (t.ts <> EXCLUDED.ts OR t.value IS DISTINCT FROM EXCLUDED.value)
"""


@dataclass(frozen=True)
class ChangedRange:
    """Messages of one device inserted or changed by a write, in microseconds."""

    device_id: int
    begin: int
    end: int
    count: int


def copy_line(device_id: int, ts: int, body_json: str) -> str:
    # COPY's text format treats backslash as an escape; JSON text has no raw tabs or newlines.
    return f"{device_id}\t{ts}\t{body_json.replace(chr(92), chr(92) * 2)}\n"


@dataclass(frozen=True)
class TelemetryValue:
    device_id: int
    name: str
    value_json: str
    ts: int


def messages_write(*, alias: str, lines: Sequence[str], telemetry: Sequence[TelemetryValue] = ()) -> list[ChangedRange]:
    """Merge prepared COPY lines (see ``copy_line``) into ``messages`` and the batch's latest
    parameter values into ``telemetry``; the caller holds the transaction. Lines must be unique
    per (device, ts)."""
    connection = connections[alias]
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute(_CREATE_STAGING)
        raw = cursor.cursor
        with raw.copy(f"COPY {STAGING} (device_id, ts, body) FROM STDIN") as copy:
            copy.write("".join(lines))
        cursor.execute(_MERGE)
        changed = [ChangedRange(*row) for row in cursor.fetchall()]
        if telemetry:
            cursor.execute(
                _TELEMETRY,
                [[t.device_id for t in telemetry], [t.name for t in telemetry],
                 [t.value_json for t in telemetry], [t.ts for t in telemetry]],
            )
        cursor.execute(f"TRUNCATE {STAGING}")
    return changed


def messages_read(
    *,
    alias: str,
    device_ids: Sequence[int],
    begin: int | None = None,
    end: int | None = None,
    count: int | None = None,
    reverse: bool = False,
) -> list[dict]:
    where, params = ["device_id = ANY(%s)"], [list(device_ids)]
    if begin is not None:
        where.append("ts >= %s")
        params.append(begin)
    if end is not None:
        where.append("ts <= %s")
        params.append(end)
    order = "DESC" if reverse else "ASC"
    sql = f"SELECT body::text FROM messages WHERE {' AND '.join(where)} ORDER BY ts {order}, device_id {order}"
    if count is not None:
        sql += " LIMIT %s"
        params.append(count)
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [json.loads(row[0]) for row in cursor.fetchall()]


def messages_delete(*, alias: str, device_ids: Sequence[int], begin: int | None, end: int | None) -> list[ChangedRange]:
    where, params = ["device_id = ANY(%s)"], [list(device_ids)]
    if begin is not None:
        where.append("ts >= %s")
        params.append(begin)
    if end is not None:
        where.append("ts <= %s")
        params.append(end)
    sql = f"""
        WITH gone AS (DELETE FROM messages WHERE {' AND '.join(where)} RETURNING device_id, ts)
        SELECT device_id, min(ts), max(ts), count(*) FROM gone GROUP BY device_id
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [ChangedRange(*row) for row in cursor.fetchall()]


def messages_purge_device(*, alias: str, device_id: int, before: int, batch: int) -> int:
    """Delete up to ``batch`` of the device's messages older than ``before``; returns how many.
    Short statements keyed on the primary key, so ingestion never waits behind a purge."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            DELETE FROM messages WHERE device_id = %s AND ts IN (
                SELECT ts FROM messages WHERE device_id = %s AND ts < %s ORDER BY ts LIMIT %s
            )
            """,
            [device_id, device_id, before, batch],
        )
        return cursor.rowcount


def messages_drop_device(*, alias: str, device_id: int) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM messages WHERE device_id = %s", [device_id])
        cursor.execute("DELETE FROM telemetry WHERE device_id = %s", [device_id])
        cursor.execute("DELETE FROM outbox WHERE device_id = %s", [device_id])


def telemetry_read(*, alias: str, device_ids: Iterable[int]) -> dict[int, dict[str, dict]]:
    result: dict[int, dict[str, dict]] = {device_id: {} for device_id in device_ids}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT device_id, name, value::text, ts FROM telemetry WHERE device_id = ANY(%s) ORDER BY device_id, name",
            [list(result)],
        )
        for device_id, name, value, ts in cursor.fetchall():
            result[device_id][name] = {"value": json.loads(value), "ts": ts / 1e6}
    return result


def outbox_enqueue(*, alias: str, rows: Iterable[tuple[int, int, str, object, bool]]) -> None:
    """Queue events: (device_id, kind, topic, payload, retain). The caller's transaction makes
    them visible together with the data they describe."""
    rows = [(device_id, int(kind), topic, json.dumps(payload), retain) for device_id, kind, topic, payload, retain in rows]
    if not rows:
        return
    with connections[alias].cursor() as cursor:
        cursor.executemany(
            "INSERT INTO outbox (device_id, kind, topic, payload, retain) VALUES (%s, %s, %s, %s::jsonb, %s)", rows
        )
