"""SQL of the messages, telemetry and outbox tables of a datacenter database.

Timestamps are stored as integer microseconds (``ts``); the message body keeps its float
``timestamp``. Writes are set-based. Rows newer than everything a device has stored (new data
appended, the common case) are COPYed straight into ``messages``; the others are COPYed into a
session-local staging table and merged with one statement. Either way a device gets one outbox
row per write, and the write reports what it inserted or changed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from django.db import IntegrityError, connections, transaction
from psycopg import errors as pg_errors

from devices.choices import OutboxKind
from flespi_site.jsontext import dumps_exact, loads_exact
from flespi_site.mqtt.topics import (
    DeviceStateName,
    device_state_topic_sql,
    device_telemetry_topic_sql,
    topic_level_sql,
)

if TYPE_CHECKING:
    from devices.models import Device

STAGING = "staging_messages"

_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING} (
    device_id bigint NOT NULL,
    ts bigint NOT NULL,
    body json NOT NULL
) ON COMMIT DELETE ROWS
"""

# The newest stored message of each device: rows after it cannot meet a stored one.
_NEWEST = """
SELECT d.id, (SELECT max(ts) FROM messages WHERE device_id = d.id) FROM unnest(%s::bigint[]) AS d(id)
"""


def _same_but_reception(key: str) -> str:
    """SQL: the stored body ``m.body`` and the staged one differ only in the value of the
    reception stamp ``key``, read from their text. Both were written by the platform's encoder,
    which puts that stamp last, compact (``,"key":``), and once at the top level (a message's own
    member of that name is taken out); so equal text up to its last occurrence, and nothing after
    it but the value, mean equal content. Text written any other way (a merge, through ``jsonb``,
    is spaced) never matches, and the ``jsonb`` comparison decides. An exact resend then costs a
    few text operations instead of four ``jsonb`` conversions."""
    token = f',"{key}":'

    def before_last(body: str) -> str:
        return f"left({body}, length({body}) - length(split_part({body}, '{token}', -1)))"

    return (
        f"(strpos(m.body::text, '{token}') > 0 AND strpos(split_part(m.body::text, '{token}', -1), ',') = 0"
        f" AND {before_last('m.body::text')} = {before_last('EXCLUDED.body::text')})"
    )


# Staged rows are inserted; a row with the timestamp of a stored one is merged into it (new keys
# overwrite; bodies are ``json``, so the merge goes through ``jsonb``), and only when that
# changes something other than the reception time (``_same_but_reception`` tells it from the
# text): a resent batch changes nothing and queues nothing. What was inserted or changed, with the rows the same
# write COPYed straight into ``messages`` for these devices (``appended``), is queued for MQTT as
# one outbox row per device holding its timestamps in order, and the changed range per device
# is returned for the analytics. The statement empties the staging table as it reads it, so a
# next write in the same transaction starts from nothing.
_MERGE = f"""
WITH staged AS (
    DELETE FROM {STAGING} RETURNING device_id, ts, body
), changed AS (
    INSERT INTO messages AS m (device_id, ts, body)
    SELECT device_id, ts, body FROM staged
    ON CONFLICT (device_id, ts) DO UPDATE SET body = (m.body::jsonb || EXCLUDED.body::jsonb)::json
    WHERE NOT ({_same_but_reception("rest.timestamp")} OR {_same_but_reception("server.timestamp")})
    AND m.body::jsonb IS DISTINCT FROM
        (m.body::jsonb || (EXCLUDED.body::jsonb - ARRAY['rest.timestamp', 'server.timestamp']))
    RETURNING m.device_id, m.ts
), appended AS (
    SELECT * FROM unnest(%s::text::bigint[], %s::text::bigint[]) AS a(device_id, ts)
), per_device AS (
    SELECT device_id, array_agg(ts ORDER BY ts) AS stamps FROM (
        SELECT device_id, ts FROM changed UNION ALL SELECT device_id, ts FROM appended
    ) AS c GROUP BY device_id
), queued AS (
    INSERT INTO outbox (device_id, kind, stamps)
    SELECT device_id, {int(OutboxKind.MESSAGE)}, stamps FROM per_device ORDER BY device_id
)
SELECT device_id, stamps[1], stamps[array_length(stamps, 1)], array_length(stamps, 1) FROM per_device
"""

# The outbox row of a device whose rows were all COPYed straight into ``messages``.
_QUEUE = f"INSERT INTO outbox (device_id, kind, stamps) VALUES (%s, {int(OutboxKind.MESSAGE)}, %s::text::bigint[])"

# The latest value of every parameter, kept correct when messages arrive out of order: a value
# only replaces one from an older (or the same) message. The batch's latest values are found by
# the caller; this statement only compares them with the stored ones.
# The batch's latest values, and the values that changed (not only their time) queued in the
# outbox for flespi's retained telemetry topics, one row per device holding them all (the relay
# publishes a topic for each), in one statement: every part of it sees the values from before it. Each incoming value is compared with the stored one through
# the table's key (``compared``: an index lookup each), never by joining the statement's own
# results, which PostgreSQL can only scan (a batch of 1,000 devices took 11 s so).
_TELEMETRY = f"""
WITH incoming AS (
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::jsonb[], %s::bigint[]) AS i(device_id, name, value, ts)
), compared AS (
    SELECT i.device_id, i.name, i.value, t.value IS DISTINCT FROM i.value AND (t.ts IS NULL OR t.ts <= i.ts) AS new
    FROM incoming i LEFT JOIN telemetry t USING (device_id, name)
), written AS (
    INSERT INTO telemetry AS t (device_id, name, value, ts)
    SELECT * FROM incoming
    ON CONFLICT (device_id, name) DO UPDATE SET value = EXCLUDED.value, ts = EXCLUDED.ts
    WHERE t.ts <= EXCLUDED.ts AND (t.ts <> EXCLUDED.ts OR t.value IS DISTINCT FROM EXCLUDED.value)
)
INSERT INTO outbox (device_id, kind, payload, retain)
SELECT c.device_id, {int(OutboxKind.TELEMETRY)}, jsonb_object_agg(c.name, c.value), true
FROM compared c
WHERE c.new AND {topic_level_sql("c.name")} GROUP BY c.device_id ORDER BY c.device_id
"""
# Empty retained payloads for the telemetry topics of values gone (``%s``: the condition on the
# deleted rows, ``telemetry`` aliased ``t``).
_TELEMETRY_CLEAR = f"""
WITH gone AS (DELETE FROM telemetry AS t WHERE {{where}} RETURNING device_id, name)
INSERT INTO outbox (device_id, kind, topic, payload, retain)
SELECT device_id, {int(OutboxKind.EVENT)}, {device_telemetry_topic_sql(device="device_id", parameter="name")}, NULL, true
FROM gone WHERE {topic_level_sql("name")} ORDER BY device_id, name
"""


_CONNECTED_TOPIC = device_state_topic_sql(device="device_id", name=DeviceStateName.CONNECTED)
_LAST_ACTIVE_TOPIC = device_state_topic_sql(device="device_id", name=DeviceStateName.LAST_ACTIVE)
# Devices heard from at ``at``: their activity row (``last_active`` never moves back; while
# connected, written at most once per ``ACTIVITY_RESOLUTION`` s), connected, and their retained
# state: ``connected`` true for those that were not, ``last_active`` for every row written (as
# the float's shortest exact text: a cast to numeric would keep 15 digits). Rows in device id
# order, as the connection sweep locks them. ``was`` reads the rows from before it.
_ACTIVE = f"""
WITH was AS (
    SELECT device_id, connected FROM device_activity WHERE device_id = ANY(%(ids)s)
), written AS (
    INSERT INTO device_activity AS a (device_id, last_active, connected)
    SELECT DISTINCT device_id, %(at)s::float8, true FROM unnest(%(ids)s::bigint[]) AS s(device_id) ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE SET last_active = GREATEST(a.last_active, EXCLUDED.last_active), connected = true
    WHERE NOT a.connected OR a.last_active < EXCLUDED.last_active - %(resolution)s
    RETURNING device_id, last_active
), events AS (
    SELECT w.device_id, 0 AS n, {_CONNECTED_TOPIC} AS topic, 'true'::jsonb AS payload
    FROM written w LEFT JOIN was USING (device_id) WHERE was.connected IS NOT TRUE
    UNION ALL
    SELECT device_id, 1, {_LAST_ACTIVE_TOPIC}, (last_active::text)::jsonb FROM written
)
INSERT INTO outbox (device_id, kind, topic, payload, retain)
SELECT device_id, {int(OutboxKind.EVENT)}, topic, payload, true FROM events ORDER BY device_id, n
"""
# Seconds of resolution of ``last_active`` while a device stays connected (its row and retained
# topic are not rewritten for every batch of a device reporting every second).
ACTIVITY_RESOLUTION = 1.0
# The connected devices not heard from since ``%s``: no longer connected, their retained
# ``connected`` false. Locked in device id order first.
_DISCONNECT = f"""
WITH quiet AS (
    SELECT device_id FROM device_activity WHERE connected AND last_active < %s ORDER BY device_id FOR UPDATE
), gone AS (
    UPDATE device_activity a SET connected = false FROM quiet WHERE a.device_id = quiet.device_id
    RETURNING a.device_id
)
INSERT INTO outbox (device_id, kind, topic, payload, retain)
SELECT device_id, {int(OutboxKind.EVENT)}, {_CONNECTED_TOPIC}, 'false'::jsonb, true FROM gone ORDER BY device_id
RETURNING device_id
"""


def devices_active(*, alias: str, device_ids: Sequence[int], at: float) -> None:
    """In the caller's transaction: the devices were heard from at ``at`` (unix seconds, the
    platform's clock): ``last_active`` and ``connected``, with their retained topics."""
    if not device_ids:
        return
    with connections[alias].cursor() as cursor:
        cursor.execute(_ACTIVE, {"ids": sorted(set(device_ids)), "at": at, "resolution": ACTIVITY_RESOLUTION})


def devices_disconnect(*, alias: str, quiet_since: float) -> list[int]:
    """In the caller's transaction: the connected devices not heard from since ``quiet_since``
    are no longer connected (retained ``connected`` false); returns their ids."""
    with connections[alias].cursor() as cursor:
        cursor.execute(_DISCONNECT, [quiet_since])
        return sorted(row[0] for row in cursor.fetchall())


def activity_read(*, alias: str, device_ids: Iterable[int]) -> dict[int, tuple[float, bool]]:
    """``(last_active, connected)`` of the devices heard from, by id (as stored: ``connected``
    as of the last sweep)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT device_id, last_active, connected FROM device_activity WHERE device_id = ANY(%s)",
            [list(device_ids)],
        )
        return {device_id: (last_active, connected) for device_id, last_active, connected in cursor.fetchall()}


@dataclass(frozen=True)
class ChangedRange:
    """Messages of one device inserted or changed by a write, in microseconds."""

    device_id: int
    begin: int
    end: int
    count: int


@dataclass(frozen=True)
class DeviceRows:
    """One device's rows for ``messages_write``: ``stamps`` (microseconds, unique, increasing)
    and ``data``, their COPY text lines (``device_id``, ``ts``, ``body``) in the same order."""

    device_id: int
    stamps: Sequence[int]
    data: bytes

    def split(self, count: int) -> tuple[bytes, bytes]:
        """The COPY data of the first ``count`` rows and of the others."""
        if count <= 0:
            return b"", self.data
        if count >= len(self.stamps):
            return self.data, b""
        end = -1
        for _ in range(count):
            end = self.data.index(b"\n", end + 1)
        return self.data[: end + 1], self.data[end + 1 :]


def copy_escape(text: bytes) -> bytes:
    """JSON text as a COPY text field: COPY treats backslash as an escape; JSON text holds no raw
    tabs or newlines."""
    return text.replace(b"\\", b"\\\\")


@dataclass(frozen=True)
class TelemetryValue:
    device_id: int
    name: str
    value_json: str
    ts: int


# --- COPY text of a batch -----------------------------------------------------------------
# The byte layout that ``messages_write`` COPYs and the merge statement relies on: one line per
# row, ``device_id`` tab ``ts`` tab the body, compact JSON whose last member is the reception stamp.


@dataclass(frozen=True)
class EncodedBatch:
    """A validated batch, independent of the devices it goes to: the unique timestamps in
    increasing order, each with its body as COPY text (``ts`` tab ``{...``, the object left open
    so that the stamps can close it), and each parameter's latest value and its time."""

    stamps: list[int]
    heads: list[bytes]
    latest: dict[str, tuple[int, str]]


def stamp_keys_of(reception_key: str) -> frozenset[str]:
    """The names the platform stamps on every message it stores from a source."""
    return frozenset(("device.id", "device.name", "ident", reception_key))


def messages_encode(*, prepared: Sequence[tuple[int, dict]], stamp_keys: frozenset[str]) -> EncodedBatch:
    """The COPY text of a batch of validated messages (``(ts, body)``, as
    ``devices.validation.message_prepare`` returns them), once for all the devices it goes to."""
    # Messages of one batch with equal timestamps merge in batch order, like stored ones.
    merged: dict[int, dict] = {}
    for ts, body in prepared:
        previous = merged.get(ts)
        merged[ts] = body if previous is None else {**previous, **body}
    stamps = sorted(merged)
    bodies = [merged[ts] for ts in stamps]
    if any(not stamp_keys.isdisjoint(body) for body in bodies):
        # The platform's stamps replace what a client sent under their names; bodies are stored
        # as ``json`` text, which would keep both.
        bodies = [{key: value for key, value in body.items() if key not in stamp_keys} for body in bodies]
    heads = [b"%d\t%b" % (ts, dumps_exact(body)[:-1]) for ts, body in zip(stamps, bodies, strict=True)]
    return EncodedBatch(stamps, heads, _latest(stamps, bodies))


def _latest(stamps: list[int], bodies: list[dict]) -> dict[str, tuple[int, str]]:
    """Each parameter's latest value in the batch (as JSON) and its time."""
    values: dict[str, Any] = {}
    for body in bodies:
        values.update(body)
    # Mostly every message has every parameter and the last message has them all; the others are
    # looked for from the end.
    times = dict.fromkeys(values, stamps[-1])
    missing = values.keys() - bodies[-1].keys()
    for ts, body in zip(reversed(stamps), reversed(bodies), strict=True):
        if not missing:
            break
        found = missing & body.keys()
        times.update(dict.fromkeys(found, ts))
        missing -= found
    return {name: (times[name], dumps_exact(value).decode()) for name, value in values.items()}


def messages_copy_rows(
    *, devices: Iterable[Device], batch: EncodedBatch, reception_key: str, now: float
) -> tuple[list[DeviceRows], list[TelemetryValue]]:
    """The rows of the batch for every device, and each parameter's latest value in it.

    Every body gets the device's stamps appended as members after its own (``messages_encode`` took out
    any member of the same name), so each body is encoded once for all devices."""
    rows: list[DeviceRows] = []
    telemetry: list[TelemetryValue] = []
    last = batch.stamps[-1]
    for device in devices:
        stamps = {"device.id": device.pk, "device.name": device.name, "ident": device.ident, reception_key: now}
        tail = b"," + dumps_exact(stamps)[1:] + b"\n"
        head = b"%d\t" % device.pk
        data = head + (tail + head).join(batch.heads) + tail
        rows.append(DeviceRows(device.pk, batch.stamps, copy_escape(data)))
        latest = {**batch.latest, **{name: (last, dumps_exact(value).decode()) for name, value in stamps.items()}}
        telemetry.extend(TelemetryValue(device.pk, name, value, ts) for name, (ts, value) in latest.items())
    return rows, telemetry


def messages_write(
    *, alias: str, rows: Sequence[DeviceRows], telemetry: Sequence[TelemetryValue] = ()
) -> list[ChangedRange]:
    """Store the devices' rows into ``messages`` (inserting new ones, merging equal timestamps)
    with their outbox rows, and the batch's latest parameter values into ``telemetry``; the
    caller holds the transaction. Returns the inserted or changed range of each device.

    The rows of a device newer than its newest stored message are COPYed straight into
    ``messages``: no stored row can meet them. Should a concurrent write have stored some of
    them meanwhile, the unique violation rolls back to a savepoint and they join the others,
    which go through the staging table and the merge."""
    rows = sorted(rows, key=lambda device_rows: device_rows.device_id)  # one lock order for every writer
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise RuntimeError("messages_write runs in the caller's transaction (transaction.atomic)")
    with connection.cursor() as cursor:
        cursor.execute(_NEWEST, [[device_rows.device_id for device_rows in rows]])
        newest = dict(cursor.fetchall())
        # Per device, how many of its rows are not after its newest stored one.
        cuts = [
            0
            if newest.get(device_rows.device_id) is None
            else bisect_right(device_rows.stamps, newest[device_rows.device_id])
            for device_rows in rows
        ]
        fresh = [
            device_rows.split(cut)[1]
            for device_rows, cut in zip(rows, cuts, strict=True)
            if cut < len(device_rows.stamps)
        ]
        if fresh and not _copy_appending(connection, cursor, fresh):
            # A concurrent write got there first: merge all.
            cuts = [len(device_rows.stamps) for device_rows in rows]
        changed = []
        merging = [(device_rows, cut) for device_rows, cut in zip(rows, cuts, strict=True) if cut]
        if merging:
            cursor.execute(_CREATE_STAGING)
            with cursor.cursor.copy(f"COPY {STAGING} (device_id, ts, body) FROM STDIN") as copy:
                for device_rows, cut in merging:
                    copy.write(device_rows.split(cut)[0])
            tails = [
                (device_rows.device_id, device_rows.stamps[cut:]) for device_rows, cut in merging
            ]  # appended above
            cursor.execute(
                _MERGE,
                [_array([device_id for device_id, stamps in tails for _ in stamps]),
                 _array([ts for _, stamps in tails for ts in stamps])],
            )
            changed += [ChangedRange(*row) for row in cursor.fetchall()]
        appended = [device_rows for device_rows, cut in zip(rows, cuts, strict=True) if not cut]
        if appended:
            literals: dict[int, str] = {}  # by the list's id: the devices of a batch share one list
            for device_rows in appended:
                if id(device_rows.stamps) not in literals:
                    literals[id(device_rows.stamps)] = _array(device_rows.stamps)
            cursor.executemany(
                _QUEUE,
                [(device_rows.device_id, literals[id(device_rows.stamps)]) for device_rows in appended],
            )
            changed += [
                ChangedRange(
                    device_rows.device_id,
                    device_rows.stamps[0],
                    device_rows.stamps[-1],
                    len(device_rows.stamps),
                )
                for device_rows in appended
            ]
        if telemetry:
            cursor.execute(
                _TELEMETRY,
                [[value.device_id for value in telemetry], [value.name for value in telemetry],
                 [value.value_json for value in telemetry], [value.ts for value in telemetry]],
            )
    return changed


def _array(numbers: Iterable[int]) -> str:
    # A PostgreSQL array literal: much cheaper to build and send than a list adapted by the driver.
    return "{" + ",".join(map(str, numbers)) + "}"


def _copy_appending(connection, cursor, parts: Sequence[bytes]) -> bool:
    """COPY rows straight into ``messages`` under a savepoint; False (and rolled back) when one
    of them meets a stored row."""
    try:
        with (
            transaction.atomic(using=connection.alias),
            cursor.cursor.copy("COPY messages (device_id, ts, body) FROM STDIN") as copy,
        ):
            for data in parts:
                copy.write(data)
    except (pg_errors.UniqueViolation, IntegrityError):
        return False
    return True


def messages_read(
    *,
    alias: str,
    device_ids: Sequence[int],
    begin: int | None = None,
    end: int | None = None,
    count: int | None = None,
    reverse: bool = False,
) -> list[dict]:
    order = "DESC" if reverse else "ASC"
    params: list[int | list[int]]
    if len(device_ids) == 1:
        # One device: the primary key's order, read straight from its index. The general form's
        # ``ANY`` with a second sort key makes PostgreSQL sort the whole range (on disk when it
        # is large), seconds for a long history.
        where, params, ordering = ["device_id = %s"], [device_ids[0]], f"ts {order}"
    else:
        where, params, ordering = (
            ["device_id = ANY(%s)"],
            [list(device_ids)],
            f"ts {order}, device_id {order}",
        )
    if begin is not None:
        where.append("ts >= %s")
        params.append(begin)
    if end is not None:
        where.append("ts <= %s")
        params.append(end)
    sql = f"SELECT body::text FROM messages WHERE {' AND '.join(where)} ORDER BY {ordering}"
    if count is not None:
        sql += " LIMIT %s"
        params.append(count)
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [loads_exact(row[0]) for row in cursor.fetchall()]


def messages_keys(
    *, alias: str, device_ids: Sequence[int], begin: int | None = None, end: int | None = None, count: int | None = None,
    reverse: bool = False,
) -> set[str]:
    """The parameter names of the messages ``messages_read`` reads for the same arguments:
    PostgreSQL reads them, only the distinct names come back."""
    order = "DESC" if reverse else "ASC"
    where = ["device_id = ANY(%s)"]
    params: list[int | list[int]] = [list(device_ids)]
    if begin is not None:
        where.append("ts >= %s")
        params.append(begin)
    if end is not None:
        where.append("ts <= %s")
        params.append(end)
    limit = ""
    if count is not None:
        limit = "LIMIT %s"
        params.append(count)
    sql = (
        "SELECT DISTINCT k FROM (SELECT body FROM messages WHERE " + " AND ".join(where)
        + f" ORDER BY ts {order}, device_id {order} {limit}) AS m CROSS JOIN LATERAL json_object_keys(m.body::json) AS k"
    )
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def messages_delete(*, alias: str, device_ids: Sequence[int], begin: int | None, end: int | None) -> list[ChangedRange]:
    where = ["device_id = ANY(%s)"]
    params: list[int | list[int]] = [list(device_ids)]
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


def messages_rotate_device(*, alias: str, device_id: int, keep_bytes: int, batch: int) -> int:
    """Delete up to ``batch`` of the device's oldest messages beyond the newest ``keep_bytes``
    of them (their stored size, ``pg_column_size``); returns how many."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            DELETE FROM messages WHERE device_id = %s AND ts IN (
                SELECT ts FROM (
                    SELECT ts, sum(pg_column_size(body)) OVER (ORDER BY ts DESC) AS newer
                    FROM messages WHERE device_id = %s
                ) AS sized WHERE newer > %s ORDER BY ts LIMIT %s
            )
            """,
            [device_id, device_id, keep_bytes, batch],
        )
        return cursor.rowcount


def messages_sizes(*, alias: str, device_ids: Iterable[int]) -> dict[int, int]:
    """The stored size of each device's messages, in bytes (``pg_column_size`` of the bodies)."""
    sizes = {device_id: 0 for device_id in device_ids}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT device_id, sum(pg_column_size(body)) FROM messages WHERE device_id = ANY(%s) GROUP BY device_id",
            [list(sizes)],
        )
        sizes.update({device_id: int(size) for device_id, size in cursor.fetchall()})
    return sizes


# A device's activity row gone, its retained state topics cleared (empty payloads).
_ACTIVITY_CLEAR = f"""
WITH gone AS (DELETE FROM device_activity WHERE device_id = %s RETURNING device_id)
INSERT INTO outbox (device_id, kind, topic, payload, retain)
SELECT device_id, {int(OutboxKind.EVENT)}, topic, NULL, true
FROM gone, LATERAL (VALUES ({_CONNECTED_TOPIC}), ({_LAST_ACTIVE_TOPIC})) AS t(topic)
"""


def messages_drop_device(*, alias: str, device_id: int) -> None:
    """Delete a device's messages, telemetry, activity, queued outbox rows and change log; its
    retained telemetry and state topics are queued to be cleared."""
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM messages WHERE device_id = %s", [device_id])
        cursor.execute("DELETE FROM outbox WHERE device_id = %s", [device_id])
        cursor.execute(_TELEMETRY_CLEAR.format(where="t.device_id = %s"), [device_id])
        cursor.execute("DELETE FROM message_changes WHERE device_id = %s", [device_id])
        cursor.execute(_ACTIVITY_CLEAR, [device_id])


def telemetry_read(*, alias: str, device_ids: Iterable[int]) -> dict[int, dict[str, dict]]:
    result: dict[int, dict[str, dict]] = {device_id: {} for device_id in device_ids}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT device_id, name, value::text, ts FROM telemetry WHERE device_id = ANY(%s) ORDER BY device_id, name",
            [list(result)],
        )
        for device_id, name, value, ts in cursor.fetchall():
            result[device_id][name] = {"value": loads_exact(value), "ts": ts / 1e6}
    return result


def telemetry_delete(*, alias: str, device_ids: Sequence[int], names: Sequence[str], patterns: Sequence[str]) -> int:
    """Delete the devices' telemetry parameters named in ``names`` or matching one of the
    regular expressions ``patterns``, and queue their retained topics to be cleared; returns how
    many values went."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s) AND (name = ANY(%s) OR name ~ ANY(%s))",
            [list(device_ids), list(names), list(patterns)],
        )
        count = cursor.fetchone()[0]
        cursor.execute(
            _TELEMETRY_CLEAR.format(where="t.device_id = ANY(%s) AND (t.name = ANY(%s) OR t.name ~ ANY(%s))"),
            [list(device_ids), list(names), list(patterns)],
        )
        return count


def outbox_events_write(
    *, alias: str, device_ids: Sequence[int], topics: Sequence[str], payloads: Sequence[str | None],
    retains: Sequence[bool],
) -> None:
    """Queue events in the outbox, in order, with one multi-row insert in the caller's
    transaction: the one writer of event rows (``analytics.storage.outbox_events`` queues through
    it). A topic is relative to the root; a payload is JSON text, or None for an empty one (a
    retained topic cleared)."""
    if not topics:
        return
    # The events as one JSON array, [device, topic, retain, has a payload, payload] each, in one
    # text parameter: the payloads go in as the JSON they are, and the driver does not quote
    # every element of four arrays in Python (that cost more than the insert).
    rows = b",".join(
        b"[%d,%s,%s,%s]" % (device_id, orjson.dumps(topic), b"true" if retain else b"false",
                            b"false,null" if payload is None else b"true," + payload.encode())
        for device_id, topic, payload, retain in zip(device_ids, topics, payloads, retains, strict=True)
    )
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO outbox (device_id, kind, topic, payload, retain) "
            "SELECT (e->>0)::bigint, %s, e->>1, CASE WHEN (e->>3)::boolean THEN e->4 END, (e->>2)::boolean "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS x(e, n) ORDER BY n",
            [int(OutboxKind.EVENT), (b"[" + rows + b"]").decode()],
        )


def changes_record(*, alias: str, changes: Sequence[ChangedRange], shards: Mapping[int, int]) -> None:
    """Log the ranges a write changed (``shards``: the shard of each device) in the caller's
    transaction, for the calc worker of each shard to consume."""
    if not changes:
        return
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO message_changes (device_id, shard, begin_ts, end_ts) "
            "SELECT * FROM unnest(%s::bigint[], %s::smallint[], %s::bigint[], %s::bigint[])",
            [[change.device_id for change in changes], [shards[change.device_id] for change in changes],
             [change.begin for change in changes], [change.end for change in changes]],
        )


@dataclass(frozen=True)
class ChangeRow:
    """A row of the change log as a drain reads it."""

    id: int
    shard: int
    device_id: int
    begin: int  # µs
    end: int  # µs
    account_id: int | None  # None: the device is gone
    age: float  # seconds since the row was written


def changes_read(*, alias: str, shards: Sequence[int], limit: int) -> list[ChangeRow]:
    """The oldest ``limit`` rows of the change log of ``shards``, in the order they were written."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            # The account by a lookup per row: a join would read the whole device table.
            "SELECT c.id, c.shard, c.device_id, c.begin_ts, c.end_ts, "
            "(SELECT d.account_id FROM devices_device d WHERE d.id = c.device_id), "
            "EXTRACT(EPOCH FROM clock_timestamp() - c.created)::float8 FROM message_changes c "
            "WHERE c.shard = ANY(%s) ORDER BY c.id LIMIT %s",
            [sorted(shards), limit],
        )
        return [
            ChangeRow(id=row_id, shard=shard, device_id=device_id, begin=begin, end=end, account_id=account_id,
                      age=age or 0.0)
            for row_id, shard, device_id, begin, end, account_id, age in cursor.fetchall()
        ]


def changes_delete(*, alias: str, ids: Sequence[int]) -> None:
    """Remove consumed rows of the change log, in the caller's transaction."""
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM message_changes WHERE id = ANY(%s)", [list(ids)])


def changes_shards(*, alias: str) -> set[int]:
    """The shards with rows in the change log."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT DISTINCT shard FROM message_changes")
        return {row[0] for row in cursor.fetchall()}


# -- drains of the change log: numbered per shard, so that a cache can tell what it missed --------


class Drain(NamedTuple):
    """One drain of a shard's change log as a cache records it: its number, and when it was taken
    (µs since the epoch). The time tells a drain from another given the same number after the
    database was restored to an earlier point (docs/operations.md, "Backup and restore")."""

    seq: int
    stamp: int


NO_DRAIN = Drain(0, 0)  # a shard never drained
_STAMP = "(extract(epoch FROM drained) * 1000000)::bigint"


def drains_record(*, alias: str, ranges: Mapping[int, Mapping[int, tuple[int, int]]]) -> dict[int, Drain]:
    """Number and keep what a drain took, in the caller's transaction (fenced by the shards'
    epochs, so one holder at a time numbers a shard's drains): ``ranges`` is shard -> device id ->
    (begin, end) µs. Returns shard -> the drain, numbered one more than the shard's last, whose
    time it keeps as its predecessor's (``prev``)."""
    if not ranges:
        return {}
    rows = [
        {"shard": shard, "ranges": [[device_id, begin, end] for device_id, (begin, end) in sorted(devices.items())]}
        for shard, devices in sorted(ranges.items())
    ]
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO shard_drains (shard, seq, ranges, prev) "
            "SELECT x.shard, coalesce(last.seq, 0) + 1, x.ranges, last.stamp "
            "FROM jsonb_to_recordset(%s::jsonb) AS x(shard integer, ranges jsonb) "
            f"LEFT JOIN LATERAL (SELECT seq, {_STAMP} AS stamp FROM shard_drains d WHERE d.shard = x.shard "
            "ORDER BY seq DESC LIMIT 1) AS last ON true "
            f"RETURNING shard, seq, {_STAMP}",
            [dumps_exact(rows).decode()],
        )
        return {int(shard): Drain(int(seq), int(stamp)) for shard, seq, stamp in cursor.fetchall()}


def drains_head(*, alias: str, shard: int) -> Drain:
    """The shard's last drain (``NO_DRAIN``: never drained)."""
    return drains_heads(alias=alias, shards=[shard]).get(shard, NO_DRAIN)


def drains_heads(*, alias: str, shards: Sequence[int]) -> dict[int, Drain]:
    """The last drain of each of ``shards`` that was ever drained."""
    if not shards:
        return {}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT s.shard, d.seq, {_STAMP} FROM unnest(%s::integer[]) AS s(shard) "
            "CROSS JOIN LATERAL (SELECT seq, drained FROM shard_drains WHERE shard = s.shard "
            "ORDER BY seq DESC LIMIT 1) AS d",
            [list(shards)],
        )
        return {int(shard): Drain(int(seq), int(stamp)) for shard, seq, stamp in cursor.fetchall()}


class MissedDrain(NamedTuple):
    """A drain as a cache that missed it reads it: the drain, the time of the drain before it
    (None for rows older than that column) and its ranges."""

    drain: Drain
    prev: int | None
    ranges: list[tuple[int, int, int]]


def drains_since(*, alias: str, shard: int, after: int) -> list[MissedDrain]:
    """The shard's drains numbered above ``after``, in order."""
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT seq, {_STAMP}, prev, ranges::text FROM shard_drains WHERE shard = %s AND seq > %s "
                       "ORDER BY seq", [shard, after])
        return [MissedDrain(Drain(int(seq), int(stamp)), None if prev is None else int(prev),
                            [tuple(item) for item in loads_exact(ranges)])
                for seq, stamp, prev, ranges in cursor.fetchall()]


def drains_prune(*, alias: str, older_than: float) -> int:
    """Forget drains older than ``older_than`` seconds, except each shard's last (its number must
    never be given again); returns how many went."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "DELETE FROM shard_drains d WHERE d.drained < now() - make_interval(secs => %s) "
            "AND d.seq < (SELECT max(l.seq) FROM shard_drains l WHERE l.shard = d.shard)",
            [older_than],
        )
        return cursor.rowcount
