"""MQTT ingestion: devices publish to ``ingest/<ident>`` (the pattern is configurable) on their
region's broker; each payload (one message object or an array of them) goes through the same
ingestion service as REST. A bad payload is logged with its reason and dropped; the consumer
goes on.

One consumer reads each broker, for every served region that uses it (``consumers_for``): where
regions share a broker (the development default), a payload is stored in the one region whose
device has its ident, and refused when devices of several of those regions have it (the topic
cannot say which was meant), never stored twice.

Consumers scale out: each subscribes in the shared group ``INGEST_GROUP`` with a client id of its
own (``--name``, by default the host's name), so the broker hands each payload to one of them;
a consumer's session is persistent, so what arrives while every consumer is down waits in the
broker. A consumer takes what arrived in one turn of its client (up to ``BATCH_PAYLOADS``
payloads), stores each device's payloads with one ingestion, and acknowledges them only then
(QoS 1 at least once: a consumer that dies before acknowledging gets them again, and storing a
message again changes nothing)."""

from __future__ import annotations

import bisect
import itertools
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections
from paho.mqtt.client import MQTT_ERR_SUCCESS, error_string
from rest_framework.exceptions import ParseError

from accounts.placement_guard import RETRY_AFTER_SECONDS, AccountMoving
from devices import selectors, services
from devices.constants import MAX_MESSAGES_PER_BATCH
from flespi_site.api.parsers import loads_strict
from flespi_site.errors import DomainError
from flespi_site.mqtt import client as mqtt
from flespi_site.mqtt.topics import SHARE_PREFIX, ident_of_topic
from flespi_site.runner import Loop
from flespi_site.topology import RegionConfig

logger = logging.getLogger(__name__)

# The shared subscription group of every ingest consumer of a broker.
INGEST_GROUP = "flespi-ingest"
# Payloads taken in one turn at most, stored with one ingestion.
BATCH_PAYLOADS = 1000
# How long the broker keeps a consumer's session (and what arrives for it) while it is away.
SESSION_EXPIRY = 7 * 24 * 3600


class IngestRejected(ValueError):
    """The payload cannot be ingested; the reason says why."""


def ident_from_topic(pattern: str, topic: str) -> str:
    """The ident in ``topic`` at the ``+`` level of ``pattern`` (``ingest/+``)."""
    ident = ident_of_topic(topic, pattern=pattern)
    if ident is None:
        raise IngestRejected(f"topic {topic!r} does not match {pattern!r}")
    return ident


def describe(error: DomainError, *, index: int | None = None) -> str:
    """An error of an item of a payload, for the log: which item (``index``: its position in its
    payload, when not the error's own), of what kind, why."""
    index = error.index if index is None else index
    item = f"message {index}" if index is not None else f"device {error.id}"
    return f"{item} ({error.kind}): {error.reason}"


def device_of_ident(*, regions: Sequence[str], ident: str, known: Mapping[tuple[str, str], Any] | None = None):
    """The device with ``ident`` in one of ``regions`` (those reading one broker); IngestRejected
    when none has it, or when devices of several do. ``known``: the devices of the idents at hand,
    by (region, ident), read at once (``selectors.devices_by_idents``)."""
    if known is None:
        known = selectors.devices_by_idents(regions=regions, idents=[ident])
    found = {region: device for region in regions if (device := known.get((region, ident))) is not None}
    if not found:
        raise IngestRejected(f"no device with ident {ident!r} in region {', '.join(regions)}")
    if len(found) > 1:
        raise IngestRejected(
            f"ident {ident!r} is a device's in each of regions {', '.join(found)}, which share this broker: "
            "nothing stored; give each region a broker of its own (MQTT_URL_<REGION>) or the devices distinct idents"
        )
    (device,) = found.values()
    return device


def parse_payload(
    *, regions: Sequence[str], pattern: str, topic: str, payload: bytes,
    known: Mapping[tuple[str, str], Any] | None = None,
) -> tuple[Any, list]:
    """The device and the messages of one MQTT payload published on the broker of ``regions``;
    raises IngestRejected when nothing of it can be stored."""
    ident = ident_from_topic(pattern, topic)
    device = device_of_ident(regions=regions, ident=ident, known=known)
    if not device.enabled:
        raise IngestRejected(f"device {device.pk} ({ident}) is disabled")
    if len(payload) > settings.MAX_BODY_BYTES:
        raise IngestRejected(f"payload of {len(payload)} bytes is larger than {settings.MAX_BODY_BYTES}")
    try:
        data = loads_strict(payload, what="payload")
    except ParseError as exc:
        raise IngestRejected(str(exc.detail)) from None
    return device, data if isinstance(data, list) else [data]


def ingest_messages(*, device, messages: list) -> services.IngestResult:
    """Store ``messages`` of ``device``; raises IngestRejected when none could be."""
    try:
        result = services.messages_ingest(devices=[device], messages=messages, source="mqtt")
    except AccountMoving:
        raise
    except DomainError as exc:
        raise IngestRejected(exc.reason) from None
    if result.errors and not result.accepted:
        raise IngestRejected("; ".join(describe(error) for error in result.errors))
    return result


def ingest_payload(*, regions: Sequence[str], pattern: str, topic: str, payload: bytes) -> services.IngestResult:
    """Ingest one MQTT payload published on the broker of ``regions``; raises IngestRejected when
    nothing of it can be stored."""
    device, messages = parse_payload(regions=regions, pattern=pattern, topic=topic, payload=payload)
    return ingest_messages(device=device, messages=messages)


@dataclass
class _Payload:
    """A payload as stored: its topic, its device and its messages."""

    topic: str
    device: Any
    messages: list


@dataclass
class _Received:
    mid: int
    qos: int
    topic: str
    payload: bytes


class IngestConsumer(Loop):
    """Subscribes to the ingest pattern on a broker and ingests what arrives for the regions that
    use it (a loop of ``flespi_site.runner``)."""

    def __init__(self, *, regions: Sequence[str], mqtt_url: str, pattern: str, client_id: str | None = None,
                 name: str | None = None):
        super().__init__()
        self.regions = tuple(regions)
        self.region = "+".join(self.regions)  # for the log
        self.name = f"ingest {self.region}"
        self.mqtt_url = mqtt_url
        self.pattern = pattern
        self.received = 0
        self.rejected = 0
        self.batches = 0
        self._batch: list[_Received] = []
        # Connect (again) before the next turn of the client: at the start, after a lost
        # connection, after a failure left a payload unacknowledged.
        self._reconnect = True
        # A persistent session: messages published while the consumer is down wait in the broker.
        # Its id is this consumer's own (another consumer with the same id would take it over).
        client_id = client_id or f"flespi-ingest-{'-'.join(self.regions)}-{name or socket.gethostname()}"
        self.client = mqtt.client_for(mqtt_url, client_id=client_id, mqtt5=True)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            logger.error("ingest %s: broker %s refused the connection: %s", self.region, self.mqtt_url, reason_code)
            return
        client.subscribe(self.subscription, qos=1)
        logger.info("ingest %s: subscribed to %s on %s", self.region, self.subscription, self.mqtt_url)

    @property
    def subscription(self) -> str:
        return f"{SHARE_PREFIX}{INGEST_GROUP}/{self.pattern}"

    def _on_message(self, client, userdata, message):
        self._batch.append(_Received(message.mid, message.qos, message.topic, message.payload))

    def _ingest_batch(self) -> None:
        """Store what the last turns received, in as few ingestions as a batch's limit allows
        (usually one: one transaction per datacenter), then acknowledge it. A failure (the
        database away: nothing of the batch was acknowledged) leaves it to the broker, which sends
        it again on a new connection."""
        batch, self._batch = self._batch, []
        self._reconnect = True
        idents = {ident for item in batch if (ident := ident_of_topic(item.topic, pattern=self.pattern)) is not None}
        known = selectors.devices_by_idents(regions=self.regions, idents=idents)
        by_device: dict[int, list[_Payload]] = {}
        for item in batch:
            try:
                device, messages = parse_payload(regions=self.regions, pattern=self.pattern, topic=item.topic,
                                                 payload=item.payload, known=known)
            except IngestRejected as exc:
                self.rejected += 1
                logger.warning("ingest %s: dropped payload on %s: %s", self.region, item.topic, exc)
                continue
            by_device.setdefault(device.pk, []).append(_Payload(item.topic, device, messages))
        waiting = list(by_device.values())
        while waiting:
            # each device's payloads, in order, as many as one batch of an ingestion holds
            groups, later = [], []
            for payloads in waiting:
                count, upto = 0, 0
                while upto < len(payloads) and (not upto or count + len(payloads[upto].messages) <= MAX_MESSAGES_PER_BATCH):
                    count += len(payloads[upto].messages)
                    upto += 1
                groups.append(payloads[:upto])
                if payloads[upto:]:
                    later.append(payloads[upto:])
            self._store(groups)
            waiting = later
        for item in batch:
            if item.qos:
                self.client.ack(item.mid, item.qos)
        self.received += len(batch)
        self.batches += 1
        self._reconnect = False

    def _store(self, groups: list[list[_Payload]]) -> None:
        """Store each group (a device's payloads) as one batch, all in one ingestion."""
        batches = [([group[0].device], [message for payload in group for message in payload.messages])
                   for group in groups]
        while True:
            try:
                results = services.messages_ingest_batches(batches=batches, source="mqtt")
            except AccountMoving:  # a move's switch held the account's writes: not stored yet
                time.sleep(RETRY_AFTER_SECONDS)
                continue
            except DomainError as exc:
                # refused as a whole: each device's alone, so that one cannot hold back the rest
                logger.warning("ingest %s: a batch was refused (%s); storing device by device", self.region, exc)
                results = [self._store_one(devices[0], messages) for devices, messages in batches]
            break
        for group, result in zip(groups, results, strict=True):
            self._report(group, result)

    def _store_one(self, device: Any, messages: list) -> services.IngestResult:
        while True:
            try:
                return services.messages_ingest(devices=[device], messages=messages, source="mqtt")
            except AccountMoving:
                time.sleep(RETRY_AFTER_SECONDS)
            except DomainError as exc:
                result = services.IngestResult()
                result.errors.append(exc)
                return result

    def _report(self, group: list[_Payload], result: services.IngestResult) -> None:
        """Log each refusal against the payload it came in (a message by its index there), and
        count the payloads of which nothing was stored."""
        starts = list(itertools.accumulate((len(payload.messages) for payload in group[:-1]), initial=0))
        refused = [0] * len(group)
        for error in result.errors:
            if error.index is None:  # about the device (disabled) or the whole batch: every payload
                for payload in group:
                    logger.warning("ingest %s: refused on %s: %s", self.region, payload.topic, describe(error))
                refused = [len(payload.messages) or 1 for payload in group]
                break
            position = bisect.bisect_right(starts, error.index) - 1
            logger.warning("ingest %s: refused on %s: %s", self.region, group[position].topic,
                           describe(error, index=error.index - starts[position]))
            refused[position] += 1
        self.rejected += sum(1 for payload, count in zip(group, refused, strict=True)
                             if count and count >= len(payload.messages))

    def setup(self) -> None:
        # MQTT 5: a persistent session (kept a week while no consumer of this name connects) and
        # a window of a whole batch, which the broker may send before anything is acknowledged
        self.client.connect_async(
            *mqtt.broker_address(self.mqtt_url)[:2], keepalive=30, clean_start=False,
            properties=mqtt.session_properties(expiry=SESSION_EXPIRY, receive_maximum=BATCH_PAYLOADS),
        )

    def step(self) -> float:
        """One turn of the MQTT client: what arrived is ingested on this thread, in arrival
        order. A lost connection is a failed step; the next one, like the one after a payload
        left unacknowledged by a failure, connects again first (raising while the broker is away)."""
        if self._reconnect:
            self._batch = []  # unacknowledged: the broker sends them again on the new connection
            self.client.reconnect()
            self._reconnect = False
        outcome = self.client.loop(timeout=1.0)
        # more of what is already there, up to a batch, before storing
        while outcome == MQTT_ERR_SUCCESS and self._batch and len(self._batch) < BATCH_PAYLOADS:
            before = len(self._batch)
            outcome = self.client.loop(timeout=0.0)
            if len(self._batch) == before:
                break
        if outcome != MQTT_ERR_SUCCESS and not self.stopping.is_set():
            self._reconnect = True
            raise ConnectionError(f"lost the broker {self.mqtt_url}: {error_string(outcome)}")
        if self._batch:
            self._ingest_batch()
        return 0.0

    def teardown(self) -> None:
        self.client.disconnect()  # a stop() while the step was connecting again left it connected
        connections.close_all()

    def stop(self) -> None:
        super().stop()
        self.client.disconnect()

    def counts(self) -> dict[str, int]:
        return {"received": self.received, "rejected": self.rejected, "batches": self.batches}


def consumers_for(regions: Sequence[RegionConfig], *, pattern: str, name: str | None = None) -> list[IngestConsumer]:
    """One consumer per broker of ``regions`` (the served ones), for the regions that use it;
    ``name`` tells this process's consumers from other processes' (default: the host's name)."""
    by_broker: dict[str, list[str]] = {}
    for region in regions:
        by_broker.setdefault(region.mqtt_url, []).append(region.code)
    return [IngestConsumer(regions=codes, mqtt_url=url, pattern=pattern, name=name)
            for url, codes in by_broker.items()]
