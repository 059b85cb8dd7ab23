"""The transactional outbox and its relay.

Writers queue rows in ``outbox`` in the same transaction as the data they describe
(``devices.storage``: messages are queued by the merge statement itself; other parts call
``storage.outbox_enqueue``). The relay of a datacenter publishes rows in id order with QoS 1 and
deletes them only once the broker acknowledged them, so a crash between commit and publish, or
a broker that is down for minutes, loses nothing: at worst a row is published twice. One relay
per datacenter holds a PostgreSQL advisory lock, which keeps the order per device.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.db import connections

from devices.choices import OutboxKind
from flespi_site import mqtt

logger = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x0F1E5B1  # advisory lock id of the relay of a datacenter database

_FETCH = f"""
SELECT o.id, o.device_id, o.kind, o.topic, COALESCE(o.payload, m.body)::text, o.retain
FROM outbox o
LEFT JOIN messages m ON o.kind = {int(OutboxKind.MESSAGE)} AND m.device_id = o.device_id AND m.ts = o.ts
ORDER BY o.id
LIMIT %s
"""


def message_topic(root: str, device_id: int) -> str:
    return f"{root}/message/gw/devices/{device_id}"


@dataclass
class RelayStats:
    published: int = 0
    skipped: int = 0
    batches: int = 0


class OutboxRelay:
    """Publishes the outbox of one datacenter database to one broker."""

    def __init__(self, *, alias: str, mqtt_url: str, topic_root: str, batch: int = 1000, ack_timeout: float = 10.0):
        self.alias = alias
        self.mqtt_url = mqtt_url
        self.topic_root = topic_root
        self.batch = batch
        self.ack_timeout = ack_timeout
        self.stats = RelayStats()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.client_for(mqtt_url, client_id=f"flespi-relay-{alias}-{int(time.time() * 1000) % 10**9}")
        self.client.max_inflight_messages_set(batch)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self._connected.set()
            logger.info("relay %s connected to %s", self.alias, self.mqtt_url)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected.clear()
        if not self._stop.is_set():
            logger.warning("relay %s lost the broker %s (%s); retrying", self.alias, self.mqtt_url, reason_code)

    def stop(self) -> None:
        self._stop.set()

    def start(self) -> None:
        """Connect to the broker in the background (and reconnect whenever it is lost)."""
        self.client.connect_async(*mqtt.broker_address(self.mqtt_url)[:2], keepalive=30)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def run(self, *, idle_sleep: float = 0.05) -> None:
        """Publish until ``stop()``; waits for the datacenter's relay lock first."""
        connection = connections[self.alias]
        self._lock(connection)
        self.start()
        try:
            while not self._stop.is_set():
                if not self._connected.wait(timeout=0.5):
                    continue
                if self.relay_once() == 0:
                    self._stop.wait(idle_sleep)
        finally:
            self.close()
            connection.close()

    def _lock(self, connection) -> None:
        with connection.cursor() as cursor:
            while not self._stop.is_set():
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [RELAY_LOCK_KEY])
                if cursor.fetchone()[0]:
                    return
                logger.info("another relay holds %s; waiting", self.alias)
                self._stop.wait(2.0)

    def relay_once(self) -> int:
        """Publish one batch; returns how many rows it removed from the outbox."""
        if not self._connected.is_set():
            return 0
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_FETCH, [self.batch])
            rows = cursor.fetchall()
        if not rows:
            return 0
        sent: list[tuple[int, object]] = []
        skipped: list[int] = []
        for outbox_id, device_id, kind, topic, payload, retain in rows:
            if payload is None:  # the message was deleted before it was published
                skipped.append(outbox_id)
                continue
            full_topic = message_topic(self.topic_root, device_id) if kind == OutboxKind.MESSAGE else f"{self.topic_root}/{topic}"
            info = self.client.publish(full_topic, payload, qos=1, retain=retain)
            if info.rc != 0:
                break
            sent.append((outbox_id, info))
        done = list(skipped)
        deadline = time.monotonic() + self.ack_timeout
        for outbox_id, info in sent:
            # Rows are removed only up to the first one the broker has not acknowledged, so
            # nothing is lost and the order is kept on the retry.
            while not info.is_published() and time.monotonic() < deadline and self._connected.is_set():
                info.wait_for_publish(timeout=0.1)
            if not info.is_published():
                break
            done.append(outbox_id)
        if done:
            with connections[self.alias].cursor() as cursor:
                cursor.execute("DELETE FROM outbox WHERE id = ANY(%s)", [done])
        self.stats.published += len(done) - len(skipped)
        self.stats.skipped += len(skipped)
        self.stats.batches += 1
        return len(done)
