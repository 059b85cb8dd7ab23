"""SQL of the ``intervals`` table (docs/analytics.md, "Interval storage").

A stored interval is one row per (calculator, device, interval id): the engine's fields as
columns (``begin``, ``end``, ``duration``), when it was last written (``timestamp``), the
counters as one JSON text (written as text, like message bodies, so that a recalculation does
not pay a jsonb conversion per row) and the user fields apart in ``user_fields`` (jsonb, merged
by ``PUT``), which no recalculation writes. Rows are written set-based (one statement per kind
of change and assignment), never through the ORM.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db import connections, transaction

from analytics.engine.interval_fields import ENGINE_FIELDS
from analytics.events import CLEAR, Event
from devices.storage import outbox_events_write
from flespi_site.jsontext import dumps_exact, loads_exact


@dataclass
class StoredChanges:
    """What a diff did to the stored intervals of one assignment, as the stored rows (user fields
    and ``timestamp`` included): what the outbox publishes."""

    created: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)
    deleted: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


def _row(calc_id: int, device_id: int, id_: int, begin, end, duration, stamp, counters: str, user: str | None) -> dict:
    interval = loads_exact(counters)
    interval.update(id=id_, begin=begin, end=end, duration=duration, timestamp=stamp)
    if user is not None:
        for key, value in loads_exact(user).items():
            interval.setdefault(key, value)
    interval["calc_id"] = calc_id
    interval["device_id"] = device_id
    return interval


_RETURNING = 'calc_id, device_id, id, "begin", "end", duration, timestamp, counters::text, user_fields::text'


def assignment_lock(*, alias: str, assignment_id: int) -> bool:
    """Lock an assignment's row against deletion until the transaction ends (FOR KEY SHARE:
    other readers and writers of its columns do not wait); False when it is gone."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1 FROM analytics_assignment WHERE id = %s FOR KEY SHARE", [assignment_id])
        return cursor.fetchone() is not None


def assignments_lock(*, alias: str, assignment_ids: Sequence[int]) -> dict[int, frozenset[str]]:
    """Lock assignment rows against deletion until the transaction ends (FOR KEY SHARE); those
    that still exist, by id, with the names their intervals have had (``interval_names``: a run
    adds to it only the names it lacks, ``AssignmentDone.new_names``)."""
    with connections[alias].cursor() as cursor:
        # In id order, as every locker of assignment rows does: no two lockers wait on each other.
        cursor.execute(
            "SELECT id, interval_names FROM analytics_assignment WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE",
            [list(assignment_ids)],
        )
        return {assignment_id: frozenset(names) for assignment_id, names in cursor.fetchall()}


def written_names(intervals: Iterable[Mapping]) -> set[str]:
    """The counter names ``intervals_write_many`` stores for these engine intervals: their keys
    but the engine's fields."""
    names: set[str] = set()
    for interval in intervals:
        names.update(interval)
    names.difference_update(ENGINE_FIELDS)
    return names


# ``interval_names`` with more names: the union, sorted in byte order (Python's ``sorted``), from
# the row as it is when the statement writes it, so that concurrent writers never lose a name.
_NAMES_UNION = """ARRAY(SELECT DISTINCT name COLLATE "C" FROM unnest({current} || {more}) AS u(name) ORDER BY 1)"""


@dataclass(frozen=True)
class PendingWidened:
    """An enabled assignment whose pending range a drain widened."""

    calc_id: int
    device_id: int
    update_delay: float


def assignments_pending_widen(*, alias: str, ranges: Mapping[int, tuple[int, int]]) -> list[PendingWidened]:
    """Widen the pending range of every enabled assignment of these devices (device -> changed
    range in µs) to cover the change, in the caller's transaction; returns them."""
    device_ids = list(ranges)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            UPDATE analytics_assignment AS a SET
                pending_begin = LEAST(a.pending_begin, r.b / 1e6), pending_end = GREATEST(a.pending_end, r.e / 1e6)
            FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS r(d, b, e)
            WHERE a.device_id = r.d AND a.enabled
            RETURNING a.calculator_id, a.device_id,
                (SELECT update_delay FROM analytics_calculator c WHERE c.id = a.calculator_id)
            """,
            [
                device_ids,
                [ranges[device_id][0] for device_id in device_ids],
                [ranges[device_id][1] for device_id in device_ids],
            ],
        )
        return [PendingWidened(calc_id, device_id, float(delay)) for calc_id, device_id, delay in cursor.fetchall()]


@dataclass(frozen=True)
class DependentWidened:
    """An enabled assignment chaining a calculator whose intervals of its device changed: its
    pending range widened to ``begin``..``end`` (s), to be armed on ``shard``'s timers."""

    calc_id: int
    device_id: int
    shard: int
    update_delay: float
    begin: float
    end: float


def chain_sources(*, alias: str, calc_ids: Collection[int]) -> set[int]:
    """The calculators among ``calc_ids`` that other calculators chain."""
    if not calc_ids:
        return set()
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT source_id FROM analytics_calculatorsource WHERE source_id = ANY(%s)", [list(calc_ids)]
        )
        return {row[0] for row in cursor.fetchall()}


def dependents_pending_widen(
    *, alias: str, ranges: Mapping[tuple[int, int], tuple[float, float]]
) -> list[DependentWidened]:
    """In the caller's transaction: the pending range of every enabled assignment of the device
    to a calculator chaining the source, for each changed (source calc_id, device_id) -> range
    (s), widened to cover it (a dependent of several changed sources: their union); returns them
    in id order."""
    if not ranges:
        return []
    keys = sorted(ranges)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            UPDATE analytics_assignment AS a SET
                pending_begin = LEAST(a.pending_begin, w.b), pending_end = GREATEST(a.pending_end, w.e)
            FROM (
                SELECT s.calculator_id AS c, r.d, min(r.b) AS b, max(r.e) AS e
                FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::float8[]) AS r(src, d, b, e)
                JOIN analytics_calculatorsource s ON s.source_id = r.src
                GROUP BY s.calculator_id, r.d
            ) AS w
            WHERE a.calculator_id = w.c AND a.device_id = w.d AND a.enabled
            RETURNING a.id, a.calculator_id, a.device_id, a.shard,
                (SELECT update_delay FROM analytics_calculator c WHERE c.id = a.calculator_id), w.b, w.e
            """,
            [
                [key[0] for key in keys],
                [key[1] for key in keys],
                [ranges[key][0] for key in keys],
                [ranges[key][1] for key in keys],
            ],
        )
        rows = sorted(cursor.fetchall())
    return [DependentWidened(calc_id, device_id, shard, float(delay), begin, end)
            for _id, calc_id, device_id, shard, delay, begin, end in rows]


@dataclass(frozen=True)
class AssignmentDone:
    """What a stored recalculation changes on its assignment's row."""

    id: int
    version: int
    calculated: float
    begin: float  # the range the run covered: a pending request inside it is cleared
    end: float
    active_id: int | None
    synced: bool
    # Names the run's written intervals have that the row's ``interval_names`` lacked when it was
    # locked (``assignments_lock``); None when there are none.
    new_names: Collection[str] | None = None


def assignments_done(*, alias: str, rows: Sequence[AssignmentDone]) -> None:
    """One statement for a batch: the calculator version, the run's stamp, the open interval,
    ``synced``, the pending request cleared where the run covered it, and the new names of its
    intervals added to ``interval_names``."""
    if not rows:
        return
    names_union = _NAMES_UNION.format(current="a.interval_names", more="r.n::text[]")
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE analytics_assignment AS a SET
                calc_version = r.v, calculated = r.c, active_id = r.act,
                state = CASE WHEN r.s THEN 'synced' ELSE a.state END,
                pending_begin = CASE WHEN a.pending_begin >= r.b AND a.pending_end <= r.e THEN NULL ELSE a.pending_begin END,
                pending_end = CASE WHEN a.pending_begin >= r.b AND a.pending_end <= r.e THEN NULL ELSE a.pending_end END,
                interval_names = CASE WHEN r.n IS NULL THEN a.interval_names ELSE {names_union} END
            FROM unnest(%s::bigint[], %s::int[], %s::float8[], %s::float8[], %s::float8[], %s::bigint[], %s::boolean[],
                %s::text[]) AS r(id, v, c, b, e, act, s, n)
            WHERE a.id = r.id
            """,
            [
                [row.id for row in rows],
                [row.version for row in rows],
                [row.calculated for row in rows],
                [row.begin for row in rows],
                [row.end for row in rows],
                [row.active_id for row in rows],
                [row.synced for row in rows],
                [None if not row.new_names else _text_array(sorted(row.new_names)) for row in rows],
            ],
        )


def _text_array(values: Sequence[str]) -> str:
    """The PostgreSQL literal of a ``text[]``, every element quoted."""
    return "{" + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values) + "}"


def numbers_of(counters: Mapping) -> dict[str, float]:
    """The counters whose value is a number (not a bool) that a double holds, as doubles: what
    rollups read (``number_keys``, ``number_values``). An integer beyond the range of a double is
    left out."""
    numbers = {}
    for key, value in counters.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                numbers[key] = float(value)
            except OverflowError:
                continue
    return numbers


def intervals_write_many(
    *,
    alias: str,
    writes: Mapping[tuple[int, int], tuple[Sequence[Mapping], Iterable[int]]],
    stamp: float,
) -> dict[tuple[int, int], tuple[list[dict], list[dict]]]:
    """Insert or replace the engine fields of each assignment's ``upsert`` (interval dicts from the
    engine) and delete its ``delete_ids`` ((calc_id, device_id) -> (upsert, delete_ids)), in the
    caller's transaction and in two statements whatever their number. User fields stay with their
    id. Returns (written rows, deleted rows) as stored per assignment, each by id."""
    result: dict[tuple[int, int], tuple[list[dict], list[dict]]] = {key: ([], []) for key in writes}
    gone: list[list[int]] = [[], [], []]
    # The rows to put as one JSON array of objects, in one text parameter: the counters go in as
    # the JSON text they are stored as (a ``json`` field keeps its text), and the driver does not
    # quote every element of text arrays in Python (a cost that grew with the route's length).
    put: list[dict[str, Any]] = []
    for (calc_id, device_id), (upsert, delete_ids) in writes.items():
        for interval_id in delete_ids:
            gone[0].append(calc_id)
            gone[1].append(device_id)
            gone[2].append(interval_id)
        for interval in upsert:
            counters = {key: value for key, value in interval.items() if key not in ENGINE_FIELDS}
            numbers = numbers_of(counters)
            put.append({
                "c": calc_id, "d": device_id, "i": interval["id"], "b": float(interval["begin"]),
                "e": float(interval["end"]), "u": float(interval["duration"]),
                "j": orjson.Fragment(dumps_exact(counters)), "k": list(numbers), "v": list(numbers.values()),
            })
    with connections[alias].cursor() as cursor:
        if gone[0]:
            cursor.execute(
                f"""
                DELETE FROM intervals AS i USING unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS g(c, d, id)
                WHERE i.calc_id = g.c AND i.device_id = g.d AND i.id = g.id
                RETURNING {", ".join(f"i.{column.strip()}" for column in _RETURNING.split(","))}
                """,
                gone,
            )
            for row in cursor.fetchall():
                result[(row[0], row[1])][1].append(_row(*row))
        if put:
            cursor.execute(
                f"""
                INSERT INTO intervals AS i (calc_id, device_id, id, "begin", "end", duration, timestamp, counters,
                    number_keys, number_values)
                SELECT r.c, r.d, r.i, r.b, r.e, r.u, %s, r.j, r.k, r.v
                FROM json_to_recordset(%s::json) AS r(c bigint, d bigint, i bigint, b float8, e float8, u float8,
                    j json, k text[], v float8[])
                ON CONFLICT (calc_id, device_id, id) DO UPDATE SET
                    "begin" = EXCLUDED."begin", "end" = EXCLUDED."end", duration = EXCLUDED.duration,
                    timestamp = EXCLUDED.timestamp, counters = EXCLUDED.counters, number_keys = EXCLUDED.number_keys,
                    number_values = EXCLUDED.number_values
                RETURNING {_RETURNING}
                """,
                [stamp, orjson.dumps(put).decode()],
            )
            for row in cursor.fetchall():
                result[(row[0], row[1])][0].append(_row(*row))
    for written, deleted in result.values():
        written.sort(key=lambda iv: iv["id"])
        deleted.sort(key=lambda iv: iv["id"])
    return result


def intervals_read(
    *,
    alias: str,
    pairs: Sequence[tuple[int, int]],
    ids: Sequence[int] | None = None,
    begin: float | None = None,
    end: float | None = None,
    count: int | None = None,
    reverse: bool = False,
    past_ids: Sequence[int | None] | None = None,
) -> list[dict]:
    """Stored intervals of each (calc_id, device_id) in ``pairs`` that overlap ``[begin, end]``
    (and have one of ``ids``), by begin, at most ``count`` per assignment, assignment by
    assignment in the order of ``pairs``. ``past_ids`` (one per pair, or None) pages: only ids
    after it (before it with ``reverse``)."""
    if not pairs:
        return []
    where = ["calc_id = p.c", "device_id = p.d"]
    params: list[Any] = [
        [calc_id for calc_id, _ in pairs],
        [device_id for _, device_id in pairs],
        list(past_ids or [None] * len(pairs)),
    ]
    # One comparison with a bound (never "past IS NULL OR id > past", which PostgreSQL cannot
    # answer from the index: every page would scan the assignment's intervals from the first).
    where.append(f"id < COALESCE(p.past, {2**63 - 1})" if reverse else f"id > COALESCE(p.past, {-(2**63 - 1)})")
    if ids is not None:
        where.append("id = ANY(%s)")
        params.append(list(ids))
    if begin is not None:
        where.append('"end" >= %s')
        params.append(begin)
    if end is not None:
        where.append('"begin" <= %s')
        params.append(end)
    order = "DESC" if reverse else "ASC"
    limit = ""
    if count is not None:
        limit = "LIMIT %s"
        params.append(count)
    sql = f"""
        SELECT i.* FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) WITH ORDINALITY AS p(c, d, past, n)
        CROSS JOIN LATERAL (
            SELECT {_RETURNING} FROM intervals WHERE {' AND '.join(where)} ORDER BY id {order} {limit}
        ) AS i
        ORDER BY p.n, i.id {order}
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [_row(*row) for row in cursor.fetchall()]


def intervals_user_merge(*, alias: str, calc_id: int, device_id: int, interval_id: int, fields: Mapping) -> dict | None:
    """Merge ``fields`` into the interval's user fields (a key with null removes it), and their
    names into its assignment's ``interval_names`` when it lacks one, in one statement; returns
    the interval as stored, or None when there is no such interval."""
    names_union = _NAMES_UNION.format(current="a.interval_names", more="m.names")
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"""
            WITH merged AS (
                UPDATE intervals SET user_fields = NULLIF(
                    jsonb_strip_nulls(COALESCE(user_fields, '{{}}'::jsonb) || %s::jsonb), '{{}}'::jsonb)
                WHERE calc_id = %s AND device_id = %s AND id = %s
                RETURNING calc_id, device_id, id, "begin", "end", duration, timestamp, counters, user_fields,
                    ARRAY(SELECT jsonb_object_keys(COALESCE(user_fields, '{{}}'::jsonb))) AS names
            ), named AS (
                UPDATE analytics_assignment AS a SET interval_names = {names_union}
                FROM merged AS m
                WHERE a.calculator_id = m.calc_id AND a.device_id = m.device_id AND NOT a.interval_names @> m.names
            )
            SELECT {_RETURNING} FROM merged
            """,
            [dumps_exact(dict(fields)).decode(), calc_id, device_id, interval_id],
        )
        row = cursor.fetchone()
    return None if row is None else _row(*row)


def intervals_purge(*, alias: str, calc_id: int, device_id: int, ended_before: float | None, keep: int) -> list[dict]:
    """Delete the intervals that ended before ``ended_before`` and, with ``keep`` > 0, all but
    the ``keep`` newest; returns the deleted rows."""
    conditions: list[str] = []
    params: list[Any] = [calc_id, device_id]
    if ended_before is not None:
        conditions.append('"end" < %s')
        params.append(ended_before)
    if keep > 0:
        conditions.append(
            "id < (SELECT min(id) FROM (SELECT id FROM intervals WHERE calc_id = %s AND device_id = %s "
            "ORDER BY id DESC LIMIT %s) AS newest)"
        )
        params += [calc_id, device_id, keep]
    if not conditions:
        return []
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"DELETE FROM intervals WHERE calc_id = %s AND device_id = %s AND ({' OR '.join(conditions)}) "
            f"RETURNING {_RETURNING}",
            params,
        )
        return sorted((_row(*row) for row in cursor.fetchall()), key=lambda iv: iv["id"])


def intervals_count(*, alias: str, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, float | None]]:
    """Per assignment: how many intervals are stored and the end of the newest."""
    if not pairs:
        return {}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT p.c, p.d, (SELECT count(*) FROM intervals WHERE calc_id = p.c AND device_id = p.d),
                   (SELECT "end" FROM intervals WHERE calc_id = p.c AND device_id = p.d ORDER BY id DESC LIMIT 1)
            FROM unnest(%s::bigint[], %s::bigint[]) AS p(c, d)
            """,
            [[calc_id for calc_id, _ in pairs], [device_id for _, device_id in pairs]],
        )
        return {
            (calc_id, device_id): (count, newest) for calc_id, device_id, count, newest in cursor.fetchall()
        }


def outbox_events(*, alias: str, events: Sequence[Event]) -> None:
    """Queue events in the outbox, in order, in the caller's transaction (a cleared retained
    topic is a NULL payload, published empty)."""
    outbox_events_write(
        alias=alias,
        device_ids=[event.device_id for event in events],
        topics=[event.topic for event in events],
        payloads=[None if event.payload is CLEAR else dumps_exact(event.payload).decode() for event in events],
        retains=[event.retain for event in events],
    )


def _rollup_aggregate(kind: str, field: str | None, slot: dict[str, int]) -> str:
    """The SQL aggregate of one rollup counter over the rows of ``_rollup_sql``'s inner query:
    ``n<k>`` the value of field ``k`` (NULL when the interval has no number for it), ``b`` the
    interval's begin, ``d`` its duration."""
    if field is None:
        return "count(*)"
    k = slot[field]
    if kind == "count":
        return f"count(n{k})"
    if kind in ("first", "last"):
        # The value at the least (greatest) begin: begins are distinct within an assignment (the
        # id is the begin in µs), and an array compares by its first element first. No ordered
        # aggregate: that sorts each period's rows apart and rules out hashing the periods.
        extremum = "min" if kind == "first" else "max"
        return f"({extremum}(ARRAY[b, n{k}]) FILTER (WHERE n{k} IS NOT NULL))[2]"
    if kind == "summary":
        return f"sum(n{k})"
    if kind == "minimum":
        return f"min(n{k})"
    if kind == "maximum":
        return f"max(n{k})"
    if kind == "average":
        # Weighted by duration; a period whose intervals with a value all last 0 s: their mean.
        weight = f"sum(d) FILTER (WHERE n{k} IS NOT NULL)"
        return f"CASE WHEN {weight} > 0 THEN sum(n{k} * d) / {weight} ELSE avg(n{k}) END"
    raise AssertionError(kind)


def _rollup_sql(counters: Sequence[tuple[str, str | None]], columns: Sequence[str]) -> tuple[str, list[str]]:
    """The rollup statement and its leading parameters (the counter names read): per device (a
    LATERAL subquery, an index range scan of its partition) and period (``width_bucket`` of the
    interval's begin in the periods' bounds), one aggregate per counter. ``counters`` are (type,
    field) pairs; ``columns`` the fields that are stored columns. A counter's value is
    ``number_values[array_position(number_keys, name)]``: a subscript, no JSON."""
    fields = list(dict.fromkeys(field for _, field in counters if field is not None))
    slot = {field: index for index, field in enumerate(fields)}
    keys = [field for field in fields if field not in columns]
    values = "".join(
        f', "{field}" AS n{slot[field]}' if field in columns else
        f", number_values[array_position(number_keys, %s)] AS n{slot[field]}"
        for field in fields
    )
    aggregates = "".join(f", {_rollup_aggregate(kind, field, slot)}" for kind, field in counters)
    # OFFSET 0 keeps the values taken out once per row, before the aggregates that use them.
    sql = (
        "SELECT p.device_id, r.* FROM unnest(%s::bigint[]) AS p(device_id) CROSS JOIN LATERAL ("
        f" SELECT period{aggregates} FROM ("
        f'  SELECT width_bucket("begin", %s::float8[]) AS period, "begin" AS b, duration AS d{values}'
        "  FROM intervals WHERE calc_id = %s AND device_id = p.device_id AND id >= %s AND id <= %s"
        '   AND "begin" >= %s AND "begin" < %s OFFSET 0) AS v'
        " GROUP BY period) AS r"
    )
    return sql, keys


def intervals_rollup(
    *,
    alias: str,
    calc_id: int,
    device_ids: Sequence[int],
    bounds: Sequence[float],
    begin: float,
    end: float,
    counters: Sequence[tuple[str, str | None]],
    columns: Sequence[str],
) -> list[tuple]:
    """The counters (``(type, field)`` pairs, ``analytics.engine.rollups``) over the stored
    intervals of the calculator and each device with ``begin <= interval begin < end``, per device
    and period of ``bounds`` (period ``i``, from 1, is ``[bounds[i-1], bounds[i])``): rows
    ``(device_id, i, value, ...)``, in no order, one statement; a period without an interval has
    no row. Every counter reads the field's numbers only (a value of another type is skipped);
    values are doubles (None: no value)."""
    if not device_ids:
        return []
    sql, keys = _rollup_sql(counters, columns)
    # id is the begin in µs (rounded): the key's range, a little wider, then the exact begin.
    params: list[Any] = [list(device_ids), list(bounds), *keys, calc_id, math.floor(begin * 1e6) - 1,
                         math.ceil(end * 1e6) + 1, begin, end]
    # JIT compiling the statement's expressions costs more than it saves on a month of a
    # thousand devices (measured: docs/analytics.md, "Rollups").
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, params)
        return cursor.fetchall()


def intervals_keys(
    *,
    alias: str,
    pairs: Sequence[tuple[int, int]],
    ids: Sequence[int] | None = None,
    begin: float | None = None,
    end: float | None = None,
    count: int | None = None,
    reverse: bool = False,
) -> set[str]:
    """The names of the counters and user fields the stored intervals ``intervals_read`` reads
    for the same arguments have (any of them): the columns of an export. PostgreSQL reads them;
    only the distinct names come back."""
    if not pairs:
        return set()
    where = ["calc_id = p.c", "device_id = p.d"]
    params: list[Any] = [[calc_id for calc_id, _ in pairs], [device_id for _, device_id in pairs]]
    if ids is not None:
        where.append("id = ANY(%s)")
        params.append(list(ids))
    if begin is not None:
        where.append('"end" >= %s')
        params.append(begin)
    if end is not None:
        where.append('"begin" <= %s')
        params.append(end)
    limit = ""
    if count is not None:
        limit = f"ORDER BY id {'DESC' if reverse else 'ASC'} LIMIT %s"
        params.append(count)
    sql = f"""
        SELECT DISTINCT k FROM unnest(%s::bigint[], %s::bigint[]) AS p(c, d)
        CROSS JOIN LATERAL (SELECT counters, user_fields FROM intervals WHERE {' AND '.join(where)} {limit}) AS i
        CROSS JOIN LATERAL (
            SELECT json_object_keys(i.counters) UNION ALL SELECT jsonb_object_keys(COALESCE(i.user_fields, '{{}}'))
        ) AS keys(k)
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}
