"""The transactional outbox and its relay.

Writers queue rows in ``outbox`` in the same transaction as the data they describe: messages
(one row per device and write, holding their timestamps) and the telemetry values a write
changed (one row per device and write, published as one retained topic per value) by the write
statements of ``devices.storage``; interval events and assignment state by ``analytics.storage.outbox_events``;
the cleared state of an unassigned assignment by the trigger of
``analytics/migrations/0003_intervals.py``. Topics are those of ``flespi_site.mqtt.topics``.

The relay of a datacenter publishes rows in id order with QoS 1 and deletes them only once the
broker acknowledged them, so a crash between commit and publish, or a broker that is down for
minutes, loses nothing: at worst a row is published twice. One relay per datacenter holds a
PostgreSQL advisory lock, which keeps the order per device. It publishes through
``flespi_site.mqtt.publisher`` (a batch written at once, its PUBACKs counted), which its steps
drive: no thread of its own.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

from django.db import connections

from devices.choices import OutboxKind
from flespi_site import metrics
from flespi_site.constants import RELAY_LOCK
from flespi_site.mqtt.publisher import BrokerRefused, Publisher
from flespi_site.mqtt.topics import device_telemetry_topic, message_topic, rooted
from flespi_site.runner import Loop

logger = logging.getLogger(__name__)

LOCK_WAIT = 2.0  # seconds between tries of a relay waiting for another one's lock

_FETCH = "SELECT id, device_id, kind, topic, payload::text, retain, stamps FROM outbox ORDER BY id LIMIT %s"
# One index lookup per (device, timestamp) whatever the planner thinks of the table (the LIMIT,
# true of a unique key, keeps the lookup from being turned into a join).
_BODIES = (
    "SELECT k.d, k.t, m.body FROM unnest(%s::bigint[], %s::bigint[]) AS k(d, t) "
    "CROSS JOIN LATERAL (SELECT body::text AS body FROM messages WHERE device_id = k.d AND ts = k.t LIMIT 1) m"
)
# The values of telemetry rows, as the stored JSON text of each (exactly what a publish carries).
_VALUES = (
    "SELECT o.id, e.key, e.value::text FROM outbox o CROSS JOIN LATERAL jsonb_each(o.payload) e "
    "WHERE o.id = ANY(%s) ORDER BY o.id, e.key"
)


def message_bodies(cursor, keys: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """The stored JSON text of each message of ``keys`` (device id, timestamp in microseconds)
    that still exists, in one statement: what the relay publishes and the webhooks' feed
    delivers (``webhooks.storage``)."""
    if not keys:
        return {}
    cursor.execute(_BODIES, [[device_id for device_id, _ts in keys], [ts for _device_id, ts in keys]])
    return {(device_id, ts): body for device_id, ts, body in cursor.fetchall()}


@dataclass
class RelayStats:
    published: int = 0
    skipped: int = 0
    batches: int = 0


class OutboxRelay(Loop):
    """Publishes the outbox of one datacenter database to one broker (a loop of
    ``flespi_site.runner``)."""

    def __init__(
        self, *, alias: str, mqtt_url: str, topic_root: str, batch: int = 1000, ack_timeout: float = 10.0,
        idle_sleep: float = 0.05, busy_sleep: float = 0.01, busy_for: float = 2.0,
    ):
        super().__init__()
        self.name = f"relay {alias}"
        self.alias = alias
        self.mqtt_url = mqtt_url
        self.topic_root = topic_root
        self.batch = batch
        self.ack_timeout = ack_timeout
        # An empty outbox is looked at again after ``idle_sleep``, or ``busy_sleep`` within
        # ``busy_for`` seconds of the last event published (events come in streams).
        self.idle_sleep = idle_sleep
        self.busy_sleep = busy_sleep
        self.busy_for = busy_for
        self.stats = RelayStats()
        self._last_published = -math.inf
        self._started = False
        self._logged_error: str | None = None  # the connection problem logged last
        # The connection (driver object) holding the relay lock: a new one must take it again.
        self._locked_on: object | None = None
        # A batch is in flight at once: the window is the batch.
        self.publisher = Publisher(
            mqtt_url, client_id=f"flespi-relay-{alias}-{int(time.time() * 1000) % 10**9}", window=batch, keepalive=30,
        )

    def counts(self) -> dict[str, int]:
        return asdict(self.stats)

    def start(self) -> None:
        """Connect to the broker (the steps connect again whenever it is lost)."""
        self._started = True
        self._connect()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the relay is connected to its broker, trying for up to ``timeout`` seconds (as
        often as the publisher's backoff lets it)."""
        deadline = time.monotonic() + timeout
        while not self._connect():
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():
                return False
            self.stopping.wait(min(left, max(self.publisher.retry_in(), 0.01)))
        return True

    def _connect(self) -> bool:
        """Whether connected, connecting first when the publisher's backoff has passed; a new
        problem is logged once."""
        was_connected = self.publisher.connected
        if self.publisher.ensure_connected():
            if not was_connected:
                logger.info("relay %s connected to %s", self.alias, self.publisher.where)
                self._logged_error = None
            return True
        error = str(self.publisher.error)
        if error != self._logged_error and not self.stopping.is_set():
            logger.warning("relay %s: %s; retrying", self.alias, error)
            self._logged_error = error
        return False

    def close(self) -> None:
        self.publisher.close()

    def step(self) -> float:
        """Publish one batch, once this relay holds the datacenter's relay lock and the broker
        is connected; returns the pause before the next."""
        if not self._holds_lock():
            logger.info("another relay holds %s; waiting", self.alias)
            return LOCK_WAIT
        if not self._started:
            self.start()
        if not self.wait_connected(0.5):
            return 0.0
        if self.relay_once():
            self._last_published = time.monotonic()
            return 0.0
        busy = time.monotonic() - self._last_published < self.busy_for
        return self.busy_sleep if busy else self.idle_sleep

    def problem(self) -> str | None:
        if not self._started or self.publisher.connected:
            return None
        if isinstance(self.publisher.error, BrokerRefused):
            return str(self.publisher.error)  # a login to fix, not a broker away
        return f"not connected to the broker at {self.publisher.where}"

    def teardown(self) -> None:
        self.close()
        connections[self.alias].close()

    def _holds_lock(self) -> bool:
        """Whether this relay holds the datacenter's lock, taking it if free. The lock lives as
        long as the database session: after a reconnect it is taken again."""
        connection = connections[self.alias]
        connection.ensure_connection()
        if connection.connection is self._locked_on:
            return True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [RELAY_LOCK])
            if not cursor.fetchone()[0]:
                return False
        self._locked_on = connection.connection
        return True

    def relay_once(self) -> int:
        """Publish up to ``batch`` events; returns how many the broker acknowledged (and so left
        the outbox). Nothing when the broker cannot be reached."""
        self.publisher.keep_alive()
        if not self._connect():
            return 0
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_FETCH, [self.batch])
            rows = cursor.fetchall()
            plan = self._plan(cursor, rows)
        if not plan:
            return 0
        acked = self.publisher.publish(
            [(item.topic, item.payload, item.retain) for entry in plan for item in entry.items],
            timeout=self.ack_timeout,
        )
        if not self.publisher.connected:
            logger.warning("relay %s: %s", self.alias, self.publisher.error)
            self._logged_error = str(self.publisher.error)
        done = self._settle(plan, acked)
        self.stats.batches += 1
        return done

    def _plan(self, cursor, rows) -> list[_Entry]:
        budget = self.batch
        taken = []
        for outbox_id, device_id, kind, topic, payload, retain, stamps in rows:
            if budget <= 0:
                break
            if kind == OutboxKind.MESSAGE:
                now, rest = stamps[:budget], stamps[budget:]
                budget -= len(now)
            else:
                # an event; a telemetry row (a few values, published whole: a retained value
                # published again is harmless)
                now, rest = [], []
                budget -= 1
            taken.append((outbox_id, device_id, kind, topic, payload, retain, now, rest))
        # The bodies of every message row of the batch in one statement, the values of every
        # telemetry row in another.
        keys = [(device_id, ts) for _id, device_id, kind, *_, now, _rest in taken if kind == OutboxKind.MESSAGE for ts in now]
        bodies = message_bodies(cursor, keys)
        values: dict[int, list[tuple[str, str]]] = {}
        telemetry = [entry[0] for entry in taken if entry[2] == OutboxKind.TELEMETRY]
        if telemetry:
            cursor.execute(_VALUES, [telemetry])
            for outbox_id, name, value in cursor.fetchall():
                values.setdefault(outbox_id, []).append((name, value))
        plan = []
        for outbox_id, device_id, kind, topic, payload, retain, now, rest in taken:
            if kind == OutboxKind.MESSAGE:
                # A message deleted before it was published is skipped.
                found = [ts for ts in now if (device_id, ts) in bodies]
                self.stats.skipped += len(now) - len(found)
                topic = rooted(root=self.topic_root, topic=message_topic(device_id=device_id))
                items = [_Item(ts, topic, bodies[(device_id, ts)], False) for ts in found]
            elif kind == OutboxKind.TELEMETRY:
                items = [
                    _Item(None, rooted(root=self.topic_root, topic=device_telemetry_topic(device_id=device_id, parameter=name)),
                          value, True)
                    for name, value in values.get(outbox_id, [])
                ]
            else:
                items = [_Item(None, rooted(root=self.topic_root, topic=topic), payload, retain)]
            plan.append(_Entry(outbox_id, items, rest))
        return plan

    def _settle(self, plan: list[_Entry], acked_items: int) -> int:
        """Remove what the broker acknowledged (the plan's first ``acked_items`` items), up to the
        first item it did not: nothing is lost and the order is kept on the retry."""
        deleted, updated, done = [], [], 0
        for entry in plan:
            acked = min(len(entry.items), acked_items - done)
            done += acked
            remaining = [item.ts for item in entry.items[acked:] if item.ts is not None] + entry.rest
            if acked == len(entry.items) and not remaining:
                deleted.append(entry.outbox_id)
            elif remaining:
                updated.append((remaining, entry.outbox_id))
            if acked < len(entry.items):
                break
        with connections[self.alias].cursor() as cursor:
            if deleted:
                cursor.execute("DELETE FROM outbox WHERE id = ANY(%s)", [deleted])
            for remaining, outbox_id in updated:
                cursor.execute("UPDATE outbox SET stamps = %s WHERE id = %s", [remaining, outbox_id])
        self.stats.published += done
        metrics.relay_published(alias=self.alias, count=done)
        return done


@dataclass
class _Item:
    ts: int | None
    topic: str
    payload: str | None  # None: empty (a retained topic cleared)
    retain: bool


@dataclass
class _Entry:
    outbox_id: int
    items: list[_Item]
    rest: list[int]
