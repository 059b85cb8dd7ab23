"""SQL of the webhooks' tables in a datacenter database (migration ``webhooks/0001``).

* ``webhook_feeding``: a row while the region has an enabled webhook; only then does the trigger
  on ``outbox`` copy each queued row into the feed, in the writer's transaction.
* ``webhook_feed``: those copies, in outbox order, until the delivery loop fans them out.
* ``webhook_deliveries``: one row per event and webhook, the queue (``status`` pending, in id
  order per webhook) and the log (delivered or dropped, kept ``WEBHOOK_LOG_SECONDS``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections

from devices.choices import OutboxKind
from devices.outbox import message_bodies
from flespi_site.constants import LockSpace, lock_id
from flespi_site.mqtt.topics import device_telemetry_topic, message_topic, rooted
from webhooks.choices import DeliveryStatus

_FEED = "SELECT id, device_id, kind, topic, payload::text, stamps, queued FROM webhook_feed ORDER BY id LIMIT %s"


@dataclass(frozen=True)
class FeedEvent:
    """One event of the feed as the broker would see it published: its whole topic and its
    payload (JSON text)."""

    device_id: int
    topic: str
    payload: str
    queued: float


@dataclass(frozen=True)
class Pending:
    """The head of a webhook's queue: what a request is made of."""

    id: int
    webhook_id: int
    device_id: int
    topic: str
    payload: Any
    queued: float
    attempts: int
    first_try: float | None
    next_try: float


def feeding_lock(*, alias: str) -> None:
    """Hold the feed's switch until the caller's transaction ends."""
    with connections[alias].cursor() as cursor:
        cursor.execute("LOCK TABLE webhook_feeding IN EXCLUSIVE MODE")


def feeding_set(*, alias: str, on: bool, now: float) -> None:
    """Turn the feed's copy of the outbox on or off in one datacenter database (under
    ``feeding_lock``)."""
    with connections[alias].cursor() as cursor:
        if on:
            cursor.execute(
                "INSERT INTO webhook_feeding (on_since) SELECT %s WHERE NOT EXISTS (SELECT 1 FROM webhook_feeding)", [now]
            )
        else:
            cursor.execute("DELETE FROM webhook_feeding")


def feeding(*, alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM webhook_feeding)")
        return bool(cursor.fetchone()[0])


def feed_take(*, alias: str, limit: int, root: str) -> tuple[list[int], list[FeedEvent]]:
    """Up to ``limit`` rows of the feed, oldest first, and their events in order (a message row
    is one event per message that still exists, a telemetry row one per value; a retained topic
    being cleared, which is no event, none)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(_FEED, [limit])
        rows = cursor.fetchall()
        keys = [(device_id, ts) for _id, device_id, kind, _t, _p, stamps, _q in rows
                if kind == OutboxKind.MESSAGE for ts in stamps or ()]
        bodies = message_bodies(cursor, keys)
    events: list[FeedEvent] = []
    for _id, device_id, kind, topic, payload, stamps, queued in rows:
        if kind == OutboxKind.MESSAGE:
            message = rooted(root=root, topic=message_topic(device_id=device_id))
            events.extend(FeedEvent(device_id, message, bodies[(device_id, ts)], queued)
                          for ts in stamps or () if (device_id, ts) in bodies)
        elif kind == OutboxKind.TELEMETRY:
            values = json.loads(payload) if payload else {}
            events.extend(
                FeedEvent(device_id, rooted(root=root, topic=device_telemetry_topic(device_id=device_id, parameter=name)),
                          json.dumps(value), queued)
                for name, value in sorted(values.items())
            )
        elif payload is not None:
            events.append(FeedEvent(device_id, rooted(root=root, topic=topic), payload, queued))
    return [row[0] for row in rows], events


def feed_fanned_out(*, alias: str, feed_ids: Sequence[int], deliveries: Sequence[tuple[int, FeedEvent]]) -> None:
    """Queue ``deliveries`` (webhook id, event), in order, and remove the feed rows they came
    from: in the caller's transaction."""
    with connections[alias].cursor() as cursor:
        if deliveries:
            cursor.execute(
                "INSERT INTO webhook_deliveries (webhook_id, device_id, topic, payload, queued) "
                "SELECT w, d, t, p::jsonb, q FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], "
                "%s::float8[]) WITH ORDINALITY AS r(w, d, t, p, q, n) ORDER BY n",
                [[webhook for webhook, _e in deliveries], [event.device_id for _w, event in deliveries],
                 [event.topic for _w, event in deliveries], [event.payload for _w, event in deliveries],
                 [event.queued for _w, event in deliveries]],
            )
        if feed_ids:
            cursor.execute("DELETE FROM webhook_feed WHERE id = ANY(%s)", [list(feed_ids)])


def heads(*, alias: str, webhook_ids: Sequence[int], limit: int) -> dict[int, list[Pending]]:
    """The first ``limit`` pending events of each webhook, in order, in one statement."""
    if not webhook_ids:
        return {}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT d.id, d.webhook_id, d.device_id, d.topic, d.payload::text, d.queued, d.attempts, d.first_try, "
            "d.next_try "
            "FROM unnest(%s::bigint[]) AS w(id) CROSS JOIN LATERAL ("
            "  SELECT * FROM webhook_deliveries WHERE webhook_id = w.id AND status = %s ORDER BY id LIMIT %s"
            ") d ORDER BY d.webhook_id, d.id",
            [list(webhook_ids), int(DeliveryStatus.PENDING), limit],
        )
        rows = cursor.fetchall()
    found: dict[int, list[Pending]] = {}
    for row in rows:
        found.setdefault(row[1], []).append(Pending(row[0], row[1], row[2], row[3], json.loads(row[4]), *row[5:]))
    return found


# A sending job's hold on its events' accounts: the placement guard's locks (the key space of
# ``accounts.placement_guard``), taken shared at session level, all or none. A move's switch takes
# them exclusively, so it waits for the job's outcomes to be written, and a job waits for (is
# refused during) a switch.
_HOLD = (
    "SELECT k, pg_try_advisory_lock_shared(%s, k) FROM unnest(%s::int[]) AS k ORDER BY k"
)
_RELEASE = "SELECT pg_advisory_unlock_shared(%s, k) FROM unnest(%s::int[]) AS k"


def accounts_hold(*, alias: str, device_ids: Iterable[int]) -> list[int] | None:
    """Hold the accounts of these devices against a move's switch (the session's shared locks,
    until ``accounts_release``): the keys held, or None when a switch holds or awaits one of
    them (none is then held). Devices that are gone (and device 0, a calculator's event) have no
    account: nothing to hold for them."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT DISTINCT account_id FROM devices_device WHERE id = ANY(%s)", [sorted(set(device_ids))])
        keys = sorted({lock_id(row[0]) for row in cursor.fetchall()})
        if not keys:
            return []
        cursor.execute(_HOLD, [LockSpace.ACCOUNT_WRITE, keys])
        held = [key for key, granted in cursor.fetchall() if granted]
        if len(held) == len(keys):
            return held
        if held:
            cursor.execute(_RELEASE, [LockSpace.ACCOUNT_WRITE, held])
        return None


def accounts_release(*, alias: str, keys: Sequence[int]) -> None:
    if keys:
        with connections[alias].cursor() as cursor:
            cursor.execute(_RELEASE, [LockSpace.ACCOUNT_WRITE, list(keys)])


def pending_present(*, alias: str, delivery_ids: Sequence[int]) -> bool:
    """Whether every one of these events is still queued here (a move takes its account's events
    away with it)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE id = ANY(%s) AND status = %s",
            [list(delivery_ids), int(DeliveryStatus.PENDING)],
        )
        return cursor.fetchone()[0] == len(set(delivery_ids))


def delivered(*, alias: str, outcomes: Iterable[tuple[int, int, float]], now: float) -> None:
    """Mark events delivered: (id, the receiver's status, the time of the attempt)."""
    rows = list(outcomes)
    if not rows:
        return
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "UPDATE webhook_deliveries d SET status = %s, attempts = d.attempts + 1, last_status = r.s, "
            "last_error = '', first_try = coalesce(d.first_try, r.t), done = %s "
            "FROM unnest(%s::bigint[], %s::int[], %s::float8[]) AS r(id, s, t) WHERE d.id = r.id",
            [int(DeliveryStatus.DELIVERED), now, [row[0] for row in rows], [row[1] for row in rows],
             [row[2] for row in rows]],
        )


def failed(*, alias: str, delivery_id: int, status: int | None, error: str, tried: float, next_try: float | None) -> None:
    """An attempt that failed: tried again at ``next_try``, or dropped (None)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = %s, last_error = %s, "
            "first_try = coalesce(first_try, %s), next_try = coalesce(%s, next_try), status = %s, done = %s "
            "WHERE id = %s",
            [status, error[:1000], tried, next_try,
             int(DeliveryStatus.PENDING if next_try is not None else DeliveryStatus.DROPPED),
             None if next_try is not None else tried, delivery_id],
        )


def log_read(
    *, alias: str, webhook_ids: Sequence[int], begin: float, end: float, status: int | None, count: int,
) -> list[dict]:
    """The delivery log of ``webhook_ids``: events queued in [begin, end], oldest first."""
    condition = "" if status is None else "AND status = %(status)s"
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT id, webhook_id, topic, queued, status, attempts, first_try, last_status, last_error, done, replay_of "
            "FROM webhook_deliveries WHERE webhook_id = ANY(%(webhooks)s) AND queued >= %(begin)s "
            f"AND queued <= %(end)s {condition} ORDER BY queued, id LIMIT %(count)s",
            {"webhooks": list(webhook_ids), "begin": begin, "end": end, "status": status, "count": count},
        )
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def replay(*, alias: str, webhook_id: int, begin: float, end: float, limit: int) -> int:
    """Queue again, as new events at the end of the webhook's queue and in their order, the
    events of the log queued in [begin, end] (each once: the replays of a replay are not taken
    again); returns how many."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO webhook_deliveries (webhook_id, device_id, topic, payload, queued, replay_of) "
            "SELECT webhook_id, device_id, topic, payload, queued, coalesce(replay_of, id) FROM ("
            "  SELECT * FROM webhook_deliveries WHERE webhook_id = %s AND queued >= %s AND queued <= %s "
            "  AND status <> %s AND replay_of IS NULL ORDER BY queued, id LIMIT %s) AS logged ORDER BY queued, id",
            [webhook_id, begin, end, int(DeliveryStatus.PENDING), limit],
        )
        return cursor.rowcount


def log_purge(*, alias: str, before: float, batch: int = 10_000) -> int:
    """Delete delivered and dropped events finished before ``before``; returns how many."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries "
            "WHERE status <> %s AND done < %s LIMIT %s)",
            [int(DeliveryStatus.PENDING), before, batch],
        )
        return cursor.rowcount


def deliveries_drop_webhooks(*, alias: str, webhook_ids: Sequence[int]) -> int:
    """Delete every event of deleted webhooks."""
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ANY(%s)", [list(webhook_ids)])
        return cursor.rowcount


def webhooks_with_rows(*, alias: str) -> list[int]:
    """The webhooks that have events in this database."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "WITH RECURSIVE w AS (SELECT min(webhook_id) AS id FROM webhook_deliveries UNION ALL "
            "SELECT (SELECT min(webhook_id) FROM webhook_deliveries WHERE webhook_id > w.id) FROM w WHERE w.id IS NOT NULL) "
            "SELECT id FROM w WHERE id IS NOT NULL"
        )
        return [row[0] for row in cursor.fetchall()]
