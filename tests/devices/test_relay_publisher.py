"""The relay's publisher (``flespi_site.mqtt.publisher``) and the relay on it, on real brokers: the
platform's own (a child process, killed with SIGKILL) and the shared Mosquitto."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import pytest
from django.db import connections

from devices.outbox import OutboxRelay
from devices.services import device_create, messages_ingest
from flespi_site.mqtt.publisher import BrokerRefused, Publisher
from flespi_site.mqtt.topics import device_log_topic, message_topic, rooted
from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker, Subscriber
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def platform_broker(settings):
    """The platform's broker in a child process; this process's clients log in as the platform."""
    settings.MQTT_PLATFORM_USERNAME = PLATFORM_USER
    settings.MQTT_PLATFORM_PASSWORD = PLATFORM_PASSWORD
    broker = EmbeddedBroker()
    broker.start()
    yield broker
    broker.cleanup()


def outbox_rows(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox")
        return cursor.fetchone()[0]


def by_topic(received: list[tuple[str, bytes]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for topic, payload in received:
        found.setdefault(topic, []).append(json.loads(payload)["n"])
    return found


@pytest.mark.parametrize("broker", ["platform_broker", "private_broker"])
def test_thousands_of_publishes_arrive_complete_and_in_order(broker, request):
    """3,000 publishes to five topics, 100 in flight at most: every one is acknowledged, and each
    topic receives its own in order."""
    url = request.getfixturevalue(broker).url
    root = f"test{uuid.uuid4().hex[:8]}"
    topics = [rooted(root=root, topic=message_topic(device_id=device)) for device in range(1, 6)]
    publishes = [(topics[n % 5], json.dumps({"n": n}), False) for n in range(3000)]
    publisher = Publisher(url, client_id=f"test-{uuid.uuid4().hex[:8]}", window=100)
    with Subscriber(url, rooted(root=root, topic=message_topic(device_id="+"))) as subscriber:
        try:
            assert publisher.publish(publishes, timeout=30) == 3000
            received = subscriber.wait_for(3000, timeout=30)
        finally:
            publisher.close()
    assert by_topic(received) == {topic: list(range(index, 3000, 5)) for index, topic in enumerate(topics)}


def test_a_refused_login_is_a_clear_error_and_the_relays_problem(platform_broker, device):
    alias = device._state.db
    queued = outbox_rows(alias)
    refused = platform_broker.url.replace("mqtt://", "mqtt://nobody:wrong@")
    expected = (f"the broker at 127.0.0.1:{platform_broker.port} refused the connection of user 'nobody': "
                "not authorized (return code 5)")
    publisher = Publisher(refused, client_id=f"test-{uuid.uuid4().hex[:8]}")
    with pytest.raises(BrokerRefused) as raised:
        publisher.connect()
    assert (str(raised.value), raised.value.code, publisher.connected) == (expected, 5, False)

    relay = OutboxRelay(alias=alias, mqtt_url=refused, topic_root="flespi")
    relay.start()
    try:
        assert not relay.wait_connected(1)
        assert relay.relay_once() == 0
    finally:
        relay.close()
    assert relay.problem() == expected
    assert (relay.stats.published, outbox_rows(alias)) == (0, queued)  # nothing published, nothing deleted


def test_an_idle_connection_is_kept_alive_with_pings(platform_broker):
    """With a keepalive of 1 s the broker closes a connection silent for 1.5 s; ``keep_alive``
    pings it after half a second without a publish."""
    root = f"test{uuid.uuid4().hex[:8]}"
    topic = rooted(root=root, topic=message_topic(device_id=1))
    publisher = Publisher(platform_broker.url, client_id=f"test-{uuid.uuid4().hex[:8]}", keepalive=1)
    with Subscriber(platform_broker.url, topic) as subscriber:
        try:
            assert publisher.ensure_connected()
            until = time.monotonic() + 3
            while time.monotonic() < until:
                publisher.keep_alive()
                time.sleep(0.1)
            assert publisher.connected, publisher.error
            assert publisher.publish([(topic, '{"n": 1}', False)], timeout=10) == 1
            assert by_topic(subscriber.wait_for(1)) == {topic: [1]}
        finally:
            publisher.close()


@pytest.mark.django_db(databases="__all__", transaction=True)  # the broker reads the token
def test_publishes_after_a_devices_log_event_in_the_same_write_reach_its_owner(platform_broker, account, key):
    """The broker forgets a device's owner at its log event (so that a move takes effect at once);
    the device's publishes that came in the same read as the event are delivered by the owner it
    then reads again."""
    device = device_create(account=account, configuration={"ident": "logged"})
    client = Subscriber(platform_broker.url, login=(key, ""))
    publisher = Publisher(platform_broker.url, client_id=f"test-{uuid.uuid4().hex[:8]}")
    try:
        assert client.connect()
        assert client.subscribe(rooted(root="flespi", topic=message_topic(device_id="+"))) == 1
        assert client.subscribe(rooted(root="flespi", topic=device_log_topic(device_id="+", event="+"))) == 1
        assert publisher.publish([
            (rooted(root="flespi", topic=device_log_topic(device_id=device.pk, event="updated")), '{"n": 0}', False),
            *((rooted(root="flespi", topic=message_topic(device_id=device.pk)), json.dumps({"n": n}), False)
              for n in range(1, 11)),
        ], timeout=10) == 11
        received = client.wait_for(11)
    finally:
        publisher.close()
        client.close()
    assert [json.loads(payload)["n"] for _topic, payload in received] == list(range(11))


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_relay_resumes_after_its_broker_is_killed_mid_batch_and_loses_nothing(platform_broker, account):
    """15,000 messages of three devices for a persistent session that is away; the broker is
    killed with SIGKILL while the relay's loop publishes them, then started again. The relay
    reports the broker away, reconnects by itself, and the session gets every message, in order
    per device (one the broker took but did not acknowledge comes again), with the outbox empty
    at the end.

    The session is away because the broker stores what it queues for an absent session before
    it acknowledges the publish; what it has in memory for a connected client that lags is lost
    with the process."""
    devices = [device_create(account=account, configuration={"ident": f"kill-{n}"}) for n in range(3)]
    alias = devices[0]._state.db
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")  # what earlier tests left unpublished is not this test's
    session = {"url": platform_broker.url, "topic": rooted(root="flespi", topic=message_topic(device_id="+")),
               "client_id": f"keep-{uuid.uuid4().hex[:8]}", "clean_session": False}
    Subscriber(**session).start().close()
    messages_ingest(devices=devices, messages=[{"timestamp": 1_700_000_000 + n, "n": n} for n in range(5000)])
    relay = OutboxRelay(alias=alias, mqtt_url=platform_broker.url, topic_root="flespi", batch=500)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: relay.stats.published >= 1000, every=0.01, what="the first batches")
        platform_broker.stop(signal.SIGKILL)
        assert outbox_rows(alias) > 0, "the relay was done before the broker died"
        wait_until(lambda: relay.problem() is not None, what="the relay noticing its broker gone")
        assert relay.problem() == f"not connected to the broker at 127.0.0.1:{platform_broker.port}"
        platform_broker.start()
        wait_until(lambda: outbox_rows(alias) == 0, timeout=60, what="the outbox emptied")
        with Subscriber(**session) as subscriber:
            subscriber.wait_for_distinct(15_000, timeout=60)
            received = subscriber.received()
        assert (relay.problem(), relay.errors) == (None, 0)  # a broker away is a problem, not a failed step
    finally:
        relay.stop()
        thread.join(15)
    numbers = by_topic(received)
    assert {topic: sorted(set(found)) for topic, found in numbers.items()} == {
        rooted(root="flespi", topic=message_topic(device_id=device.pk)): list(range(5000)) for device in devices
    }
    for found in numbers.values():  # in order: a message comes again only after those before it
        firsts = list(dict.fromkeys(found))
        assert firsts == sorted(firsts)


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_cleared_retained_topic_is_relayed_as_an_empty_publish_and_the_events_after_it_too(platform_broker, account, key):
    """An outbox row without a payload (a retained state cleared: an assignment gone, telemetry
    deleted) is published empty, which clears the topic on the broker; the rows after it follow."""
    from devices.storage import outbox_events_write

    device = device_create(account=account, configuration={"ident": "cleared"})
    alias = device.database
    root = f"clr{uuid.uuid4().hex[:6]}"
    state = f"state/gw/calcs/1/devices/{device.pk}/last"
    outbox_events_write(alias=alias, device_ids=[device.pk], topics=[state], payloads=['{"n": 1}'], retains=[True])
    relay = OutboxRelay(alias=alias, mqtt_url=platform_broker.url, topic_root=root)
    try:
        relay.start()
        wait_until(lambda: relay.relay_once() or not outbox_rows(alias), timeout=20, what="the state relayed")
        wait_until(lambda: outbox_rows(alias) == 0, timeout=20, what="the outbox emptied")
        outbox_events_write(alias=alias, device_ids=[device.pk, device.pk],
                            topics=[state, device_log_topic(device_id=device.pk, event="updated")],
                            payloads=[None, '{"n": 2}'], retains=[True, False])
        wait_until(lambda: relay.relay_once() or not outbox_rows(alias), timeout=20, what="the clearing relayed")
        assert outbox_rows(alias) == 0
    finally:
        relay.close()
    fresh = Subscriber(platform_broker.url, login=(key, ""))
    try:
        assert fresh.connect()
        assert fresh.subscribe(f"{root}/state/gw/calcs/+/devices/+/+") == 1
        time.sleep(1.0)
        assert fresh.received() == []  # nothing retained any more
    finally:
        fresh.close()
