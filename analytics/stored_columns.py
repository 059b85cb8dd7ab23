"""Stored messages of one device read by column: timestamps and, per parameter, its values with
masks of where it is missing or null. For calculations over long ranges (on-demand analytics),
where building a dict per message costs more than the calculation.

PostgreSQL takes the named parameters out of each body (cut out of its text where that is exact,
see ``chunk_query``, else ``body -> 'name'``) and aggregates every column of a chunk of rows into
one value: the timestamps as packed 64-bit integers
(``int8send``), per parameter one state byte per row (missing, null, value) and the JSON text of
its values joined into one array. Python then parses one array per column (``orjson``; the
standard parser when the text holds a 20-digit integer, so that big integers stay exact) and
lands it in numpy. A million rows come back as a few dozen values instead of a million tuples;
reading them row by row (a cursor or ``COPY TO STDOUT``) costs 2.5-4 µs a row in the driver
alone, more than the whole calculation (docs/analytics.md, "On-demand calculation").

Each parameter comes back as a stored column (``analytics.engine.columns.Column``, with its
per-row int flags and ``pure``), as the message blocks keep it: ``num`` (float64 values), ``bool``,
or ``obj`` (strings, lists, objects, or values of mixed types, and a parameter that is only ever
missing or null).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import psycopg
from django.db import connections

from analytics.engine.columns import Column, ColumnKind
from devices.models import Device
from flespi_site.jsontext import loads_exact

# Rows aggregated per query: bounds the size of one aggregated value (PostgreSQL refuses values
# beyond 1 GB) while keeping the per-query cost negligible.
CHUNK_ROWS = 200_000

_MISSING, _NULL, _VALUE = 0, 1, 2


@dataclass(frozen=True)
class StoredColumns:
    """A device's messages in a time range, oldest first: ``ts`` (int64 microseconds, unique
    and increasing) and a column per requested parameter (every requested name is there, all
    missing when no message has it)."""

    ts: np.ndarray
    columns: dict[str, Column]

    def __len__(self) -> int:
        return len(self.ts)


def messages_count(*, device: Device, begin: int, end: int, limit: int) -> int:
    """How many messages the device has with ``begin <= ts <= end`` (microseconds), counting
    no further than ``limit``: an index-only range scan that stops early."""
    with connections[device.database].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM messages WHERE device_id = %s AND ts >= %s AND ts <= %s LIMIT %s) AS m",
            [device.pk, begin, end, limit],
        )
        return cursor.fetchone()[0]


def messages_columns(
    *, alias: str, device_id: int, begin: int, end: int, parameters: Collection[str]
) -> StoredColumns:
    """The device's messages with ``begin <= ts <= end`` (microseconds, inclusive, as the
    messages API reads them), by column, for ``parameters`` only."""
    names = sorted(set(parameters))
    sql, leading = chunk_query(names)
    ts_parts: list[bytes] = []
    states: list[list[bytes]] = [[] for _ in names]
    texts: list[list[str]] = [[] for _ in names]
    low = begin
    connection = connections[alias]
    connection.ensure_connection()
    # A server-side-binding cursor of the same connection (and transaction): Django's own binds
    # on the client, which cannot ask for binary results, and binary results bring the packed
    # timestamps and state bytes as they are.
    with psycopg.Cursor(connection.connection) as cursor:
        while low <= end:
            cursor.execute(sql, [*leading, device_id, low, end, CHUNK_ROWS], binary=True)
            row = cursor.fetchone()
            assert row is not None  # an aggregate without GROUP BY returns one row
            count, newest, packed, *columns = row
            if not count:
                break
            ts_parts.append(packed)
            for position in range(len(names)):
                states[position].append(columns[2 * position])
                if columns[2 * position + 1] is not None:
                    texts[position].append(columns[2 * position + 1])
            if count < CHUNK_ROWS:
                break
            low = newest + 1
    ts = np.frombuffer(b"".join(ts_parts), dtype=">i8").astype(np.int64)
    order = None
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        # The aggregates read the rows in the subquery's order, which PostgreSQL keeps for a plain
        # scan but does not promise; every column shares that order, so one sort restores it.
        order = np.argsort(ts, kind="stable")
        ts = ts[order]
    columns = {}
    for name, state_parts, text_parts in zip(names, states, texts, strict=True):
        column = _column(np.frombuffer(b"".join(state_parts), dtype=np.uint8), text_parts)
        if order is not None:
            column = column.take(order)
        columns[name] = column
    return StoredColumns(ts=ts, columns=columns)


def chunk_query(names: list[str]) -> tuple[str, list[str]]:
    """The query of one chunk of rows aggregated by column, and its leading parameters (the
    device, range and row limit follow). ``OFFSET 0`` keeps each subquery from being inlined,
    which would repeat its expressions for every use of their values.

    A parameter's value is cut out of the body's text where that is exact, and taken with
    ``body -> name`` (a parse of the whole body, five times dearer) where it is not. The text is
    written by the platform (``orjson``, compact, or PostgreSQL's output of a ``jsonb`` merge,
    with a space after each colon); neither writer puts space between a key and its colon. The
    cut is exact for a *flat* body: no ``[``, no ``{`` but the first and no escaped quote
    anywhere. Every quote of a flat text then opens or closes a string, none is inside one, so
    ``"name":`` (the key as the writers encode it, then the colon) occurs exactly where the body
    has that member, at its top level; its value is a scalar, and a string value runs to the
    next quote. Anything else (nested values, lists, a quote in a string) is parsed."""
    width = len(names)
    encoded = [json.dumps(name, ensure_ascii=False) for name in names]
    values = "".join(
        f", CASE WHEN NOT flat THEN (body -> %s::text)::text WHEN r{index} = '' THEN NULL"
        f" WHEN ltrim(left(r{index}, 2)) LIKE '\"%%' THEN '\"' || split_part(r{index}, '\"', 2) || '\"'"
        f" ELSE ltrim(split_part(split_part(r{index}, ',', 1), '}}', 1)) END AS v{index}"
        for index in range(width)
    )
    rests = "".join(f", CASE WHEN flat THEN split_part(t, %s, 2) END AS r{index}" for index in range(width))
    aggregates = "".join(
        f", string_agg(CASE WHEN v{index} IS NULL THEN '\\x{_MISSING:02x}'::bytea"
        f" WHEN v{index} = 'null' THEN '\\x{_NULL:02x}'::bytea ELSE '\\x{_VALUE:02x}'::bytea END, ''::bytea)"
        f", string_agg(v{index}, ',') FILTER (WHERE v{index} <> 'null')"
        for index in range(width)
    )
    sql = (
        f"SELECT count(*), max(ts), string_agg(int8send(ts), ''::bytea){aggregates}"
        f" FROM (SELECT ts{values} FROM (SELECT ts, body, flat{rests} FROM ("
        " SELECT ts, body, body::text AS t, strpos(body::text, '[') = 0 AND strpos(body::text, '\\') = 0"
        " AND split_part(body::text, '{', 3) = '' AS flat FROM messages"
        " WHERE device_id = %s AND ts >= %s AND ts <= %s ORDER BY ts LIMIT %s OFFSET 0"
        ") AS a OFFSET 0) AS b OFFSET 0) AS m"
    )
    return sql, [*names, *(f"{key}:" for key in encoded)]


def _column(state: np.ndarray, texts: list[str]) -> Column:
    count = len(state)
    missing = state == _MISSING
    null = state == _NULL
    present = state == _VALUE
    values = loads_exact("[" + ",".join(texts) + "]") if texts else []
    types = set(map(type, values))
    if values and types <= {int, float}:
        numbers = np.zeros(count, np.float64)
        numbers[present] = np.array(values, dtype=np.float64)
        isint = present if float not in types else np.zeros(count, bool)
        return Column(ColumnKind.NUM, numbers, missing, null, isint=isint)
    if values and types == {bool}:
        flags = np.zeros(count, bool)
        flags[present] = np.array(values, dtype=bool)
        return Column(ColumnKind.BOOL, flags, missing, null)
    objects = np.full(count, None, dtype=object)
    # fromiter keeps lists as elements (an array built from a list of lists would be 2-D).
    objects[present] = np.fromiter(values, dtype=object, count=len(values))
    return Column(ColumnKind.OBJ, objects, missing, null, pure=not types & {int, float, bool})
