"""MQTT out (outbox + relay) and MQTT in, on real brokers."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.db import connections

from devices.ingest_mqtt import IngestConsumer, IngestRejected, ingest_payload
from devices.outbox import OutboxRelay
from devices.services import messages_ingest
from flespi_site.errors import ErrorKind
from flespi_site.mqtt import client as mqtt
from tests.support.mqtt import PrivateBroker, Subscriber

pytestmark = pytest.mark.django_db(databases="__all__")


def outbox_count(alias: str) -> int:
    """Messages queued (telemetry topics, queued with them, apart)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(array_length(stamps, 1)), 0) FROM outbox WHERE stamps IS NOT NULL")
        return cursor.fetchone()[0]


def drain(relay: OutboxRelay, alias: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while outbox_count(alias) and time.monotonic() < deadline:
        if relay.relay_once() == 0:
            time.sleep(0.05)
    assert outbox_count(alias) == 0, "the relay did not empty the outbox"


def make_messages(start: float, count: int) -> list[dict]:
    return [{"timestamp": start + i, "position.speed": i % 50, "n": i} for i in range(count)]


@pytest.fixture
def topic_root():
    return f"test{uuid.uuid4().hex[:8]}"


def test_every_stored_message_is_published_once_in_order(device, topic_root):
    alias = device._state.db
    relay = OutboxRelay(alias=alias, mqtt_url=settings.MQTT_URL, topic_root=topic_root)
    relay.start()
    assert relay.wait_connected(10)
    try:
        with Subscriber(settings.MQTT_URL, f"{topic_root}/message/gw/devices/+") as subscriber:
            messages_ingest(devices=[device], messages=make_messages(1_700_000_000, 300))
            # A resent batch stores nothing new and therefore publishes nothing.
            messages_ingest(devices=[device], messages=make_messages(1_700_000_000, 300))
            drain(relay, alias)
            received = subscriber.wait_for_messages(300)
            time.sleep(0.3)
            received = subscriber.messages
    finally:
        relay.close()
    assert len(received) == 300
    assert {topic for topic, _ in received} == {f"{topic_root}/message/gw/devices/{device.pk}"}
    assert [payload["n"] for _, payload in received] == list(range(300))
    assert received[0][1]["device.id"] == device.pk and received[0][1]["ident"] == device.ident


def test_relay_publishes_the_messages_of_many_devices_with_one_read_and_skips_deleted_ones(account, device, topic_root):
    """The bodies of a batch of several devices are read at once: each device's messages come in
    order on its own topic, and a message deleted before the relay ran is skipped, not sent."""
    from devices.services import device_create, messages_delete

    other = device_create(account=account, name="truck 2", configuration={"ident": "352625690000002"})
    alias = device._state.db
    relay = OutboxRelay(alias=alias, mqtt_url=settings.MQTT_URL, topic_root=topic_root)
    relay.start()
    assert relay.wait_connected(10)
    try:
        with Subscriber(settings.MQTT_URL, f"{topic_root}/message/gw/devices/+") as subscriber:
            messages_ingest(devices=[device, other], messages=make_messages(1_700_000_000, 20))
            messages_delete(devices=[other], begin=1_700_000_005, end=1_700_000_005)
            drain(relay, alias)
            subscriber.wait_for_messages(39)
            time.sleep(0.3)
            received = subscriber.messages
    finally:
        relay.close()
    by_topic: dict[str, list[int]] = {}
    for topic, payload in received:
        by_topic.setdefault(topic, []).append(payload["n"])
    assert by_topic == {
        f"{topic_root}/message/gw/devices/{device.pk}": list(range(20)),
        f"{topic_root}/message/gw/devices/{other.pk}": [n for n in range(20) if n != 5],
    }
    assert relay.stats.skipped == 1


def test_merged_message_is_published_with_its_merged_content(device, topic_root):
    alias = device._state.db
    relay = OutboxRelay(alias=alias, mqtt_url=settings.MQTT_URL, topic_root=topic_root)
    relay.start()
    assert relay.wait_connected(10)
    try:
        with Subscriber(settings.MQTT_URL, f"{topic_root}/message/gw/devices/{device.pk}") as subscriber:
            messages_ingest(devices=[device], messages=[{"timestamp": 1_700_000_000, "a": 1}])
            drain(relay, alias)
            messages_ingest(devices=[device], messages=[{"timestamp": 1_700_000_000, "b": 2}])
            drain(relay, alias)
            received = subscriber.wait_for_messages(2)
    finally:
        relay.close()
    assert [(p["a"], p.get("b")) for _, p in received] == [(1, None), (1, 2)]


@dataclass
class Outage:
    """A private broker that a test stops and restarts, with a relay and a persistent
    subscriber connected to it."""

    alias: str
    broker: PrivateBroker
    relay: OutboxRelay
    subscriber: Subscriber

    def restart_and_collect(self, expected: int) -> list:
        """Start the broker again; what the subscriber receives once the relay has caught up."""
        self.broker.start()
        assert self.relay.wait_connected(30), "the relay did not reconnect"
        assert self.subscriber.subscribed.wait(30), "the subscriber did not reconnect"
        drain(self.relay, self.alias, timeout=60)
        return self.subscriber.wait_for_distinct(expected, timeout=30)


@pytest.fixture
def outage(device, topic_root):
    if not PrivateBroker.available():
        pytest.skip("needs the mosquitto binary")
    broker = PrivateBroker()
    broker.start()
    relay = OutboxRelay(alias=device._state.db, mqtt_url=broker.url, topic_root=topic_root)
    subscriber = Subscriber(
        broker.url, f"{topic_root}/message/gw/devices/+", client_id=f"keep-{topic_root}", clean_session=False
    )
    try:
        relay.start()
        assert relay.wait_connected(10)
        with subscriber:
            yield Outage(device._state.db, broker, relay, subscriber)
    finally:
        relay.close()
        broker.cleanup()


def test_broker_down_during_ingestion_loses_nothing(device, outage):
    messages_ingest(devices=[device], messages=make_messages(1_700_000_000, 100))
    drain(outage.relay, outage.alias)
    assert len(outage.subscriber.wait_for_messages(100)) == 100

    outage.broker.stop()
    messages_ingest(devices=[device], messages=make_messages(1_700_000_100, 150))
    assert outage.relay.relay_once() == 0
    assert outbox_count(outage.alias) == 150

    received = outage.restart_and_collect(250)
    assert {payload["timestamp"] for _, payload in received} == {1_700_000_000.0 + i for i in range(250)}


# How long the broker stays down while messages keep arriving: bounded under `make test`,
# minutes with FLESPI_SLOW=1 (DESIGN: a broker down for minutes gets everything afterwards).
DOWN_SECONDS = 150.0 if os.environ.get("FLESPI_SLOW") else 3.0


@pytest.mark.slow
def test_broker_down_for_a_while_with_ingestion_going_on_loses_nothing(device, outage):
    outage.broker.stop()
    # The relay keeps trying while batches keep coming, every half second.
    sent = 0
    down_until = time.monotonic() + DOWN_SECONDS
    while time.monotonic() < down_until:
        messages_ingest(devices=[device], messages=make_messages(1_700_000_000 + sent, 20))
        sent += 20
        assert outage.relay.relay_once() == 0
        time.sleep(0.5)
    assert outbox_count(outage.alias) == sent >= 100

    received = outage.restart_and_collect(sent)
    assert {payload["timestamp"] for _, payload in received} == {1_700_000_000.0 + i for i in range(sent)}


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_mqtt_ingest_end_to_end(device, key, api, caplog):
    consumer = IngestConsumer(
        regions=[device_region(device)], mqtt_url=settings.MQTT_URL, pattern=f"ingest{uuid.uuid4().hex[:6]}/+",
        client_id=f"test-ingest-{uuid.uuid4().hex[:8]}",
    )
    import threading

    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        publisher = mqtt.client_for(settings.MQTT_URL, client_id=f"dev-{uuid.uuid4().hex[:8]}")
        mqtt.connect(publisher, settings.MQTT_URL)
        publisher.loop_start()
        time.sleep(0.5)  # the consumer subscribes
        topic = consumer.pattern.replace("+", device.ident)
        publisher.publish(topic, json.dumps({"timestamp": 1_700_000_000, "x": 1}), qos=1).wait_for_publish(5)
        publisher.publish(topic, b"{not json", qos=1).wait_for_publish(5)
        publisher.publish(topic, json.dumps([{"timestamp": 1_700_000_001, "x": 2}, {"x": 3}]), qos=1).wait_for_publish(5)
        publisher.publish(consumer.pattern.replace("+", "unknown-ident"), json.dumps({"timestamp": 1}), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while consumer.received < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        publisher.disconnect()
        publisher.loop_stop()
    finally:
        consumer.stop()
        thread.join(10)
    assert consumer.received == 4
    assert consumer.rejected == 2
    refused = [r.getMessage() for r in caplog.records if "refused on" in r.getMessage()]
    assert refused == [
        f"ingest {device_region(device)}: refused on {topic}: message 1 (invalid_message): timestamp is required"
    ]
    response = api.call("GET", f"/gw/devices/{device.pk}/messages", key=key)
    stored = response.json()["result"]
    assert [(m["timestamp"], m["x"]) for m in stored] == [(1_700_000_000.0, 1), (1_700_000_001.0, 2)]
    assert all("server.timestamp" in m and m["ident"] == device.ident for m in stored)


def device_region(device) -> str:
    from accounts.models import Account

    return Account.objects.get(pk=device.account_id).region.code


def test_ingest_payload_rejections(device):
    region = device_region(device)
    with pytest.raises(IngestRejected, match="does not match"):
        ingest_payload(regions=[region], pattern="ingest/+", topic="other/x", payload=b"{}")
    with pytest.raises(IngestRejected, match="no device with ident"):
        ingest_payload(regions=[region], pattern="ingest/+", topic="ingest/nope", payload=b"{}")
    with pytest.raises(IngestRejected, match="not valid JSON"):
        ingest_payload(regions=[region], pattern="ingest/+", topic=f"ingest/{device.ident}", payload=b"[1,")
    with pytest.raises(IngestRejected, match="NaN"):
        ingest_payload(regions=[region], pattern="ingest/+", topic=f"ingest/{device.ident}", payload=b'{"timestamp": NaN}')
    with pytest.raises(IngestRejected, match="timestamp is required"):
        ingest_payload(regions=[region], pattern="ingest/+", topic=f"ingest/{device.ident}", payload=b'{"x": 1}')
    # Refused items of a payload that was partly stored come back as domain errors with a kind.
    result = ingest_payload(
        regions=[region], pattern="ingest/+", topic=f"ingest/{device.ident}", payload=b'[{"timestamp": 1}, {"x": 1}]'
    )
    assert result.accepted == 1
    assert [(e.kind, e.index, e.reason) for e in result.errors] == [
        (ErrorKind.INVALID_MESSAGE, 1, "timestamp is required")
    ]


def test_regions_sharing_a_broker_store_each_payload_once(make_account):
    """Where regions share one broker (the development default), one consumer reads it for both:
    a payload goes to the one region whose device has its ident, and an ident that devices of both
    regions have is refused, never stored in both (one account's messages in another's device)."""
    import dataclasses

    from devices.ingest_mqtt import consumers_for
    from devices.selectors import messages_of
    from devices.services import device_create

    eu = make_account("west")
    ru = make_account("east", parent=eu, region="ru")
    shared = device_create(account=ru, configuration={"ident": "shared-ident"})
    twin = device_create(account=eu, configuration={"ident": "shared-ident"})
    only_ru = device_create(account=ru, configuration={"ident": "only-in-ru"})

    one_broker = [dataclasses.replace(region, mqtt_url="mqtt://broker.example:1883") for region in settings.TOPOLOGY.regions]
    (consumer,) = consumers_for(one_broker, pattern="ingest/+")
    assert consumer.regions == ("eu", "ru") and consumer.name == "ingest eu+ru"
    result = ingest_payload(regions=consumer.regions, pattern="ingest/+", topic="ingest/only-in-ru",
                            payload=b'{"timestamp": 1700000000, "x": 1}')
    assert result.accepted == 1
    assert [m["x"] for m in messages_of(devices=[only_ru], begin=None, end=None, count=None, reverse=False)] == [1]
    with pytest.raises(IngestRejected, match="is a device's in each of regions eu, ru, which share this broker"):
        ingest_payload(regions=consumer.regions, pattern="ingest/+", topic="ingest/shared-ident",
                       payload=b'{"timestamp": 1700000000, "x": 2}')
    for device in (shared, twin):
        assert messages_of(devices=[device], begin=None, end=None, count=None, reverse=False) == []
    # A broker per region (production): a consumer each, named after this process's consumers,
    # in the shared group of every consumer of that broker.
    own = [dataclasses.replace(region, mqtt_url=f"mqtt://{region.code}.example:1883") for region in settings.TOPOLOGY.regions]
    consumers = consumers_for(own, pattern="ingest/+", name="host1")
    assert [(c.regions, c.client._client_id, c.subscription) for c in consumers] == [
        (("eu",), b"flespi-ingest-eu-host1", "$share/flespi-ingest/ingest/+"),
        (("ru",), b"flespi-ingest-ru-host1", "$share/flespi-ingest/ingest/+"),
    ]


def test_a_batch_of_payloads_is_stored_in_one_ingestion_and_refusals_name_their_payload(make_account, caplog):
    """What one turn of a consumer brought, several payloads of two devices among them: each
    device's payloads are stored together, in order, and a refused message is named by its
    position in its own payload, on its own topic."""
    from devices.ingest_mqtt import IngestConsumer, _Received
    from devices.selectors import messages_of
    from devices.services import device_create

    account = make_account("batched")
    one = device_create(account=account, name="one", configuration={"ident": "batch-one"})
    two = device_create(account=account, name="two", configuration={"ident": "batch-two"})
    consumer = IngestConsumer(regions=[device_region(one)], mqtt_url=settings.MQTT_URL, pattern="ingest/+",
                              client_id=f"test-ingest-{uuid.uuid4().hex[:8]}")
    payloads = [
        ("ingest/batch-one", [{"timestamp": 1_700_000_000, "x": 1}]),
        ("ingest/batch-two", [{"timestamp": 1_700_000_000, "x": 10}]),
        ("ingest/batch-one", [{"timestamp": 1_700_000_001, "x": 2}, {"x": "no timestamp"}]),
        ("ingest/batch-nobody", [{"timestamp": 1_700_000_000}]),
        ("ingest/batch-one", [{"x": "none"}]),
        ("ingest/batch-one", [{"timestamp": 1_700_000_002, "x": 3}]),
    ]
    consumer._batch = [_Received(index + 1, 0, topic, json.dumps(messages).encode())
                       for index, (topic, messages) in enumerate(payloads)]
    with caplog.at_level("WARNING", logger="devices.ingest_mqtt"):
        consumer._ingest_batch()
    assert (consumer.received, consumer.rejected, consumer.batches) == (6, 2, 1)  # nobody's, and the 5th
    refused = [r.getMessage() for r in caplog.records if "refused on" in r.getMessage()]
    region = device_region(one)
    assert refused == [
        f"ingest {region}: refused on ingest/batch-one: message 1 (invalid_message): timestamp is required",
        f"ingest {region}: refused on ingest/batch-one: message 0 (invalid_message): timestamp is required",
    ]
    stored = {device.name: [m["x"] for m in messages_of(devices=[device], begin=None, end=None, count=None,
                                                         reverse=False)] for device in (one, two)}
    assert stored == {"one": [1, 2, 3], "two": [10]}
