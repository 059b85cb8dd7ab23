"""A broker restart keeps persistent sessions, their queued QoS 1 messages and retained
messages: the platform's broker through its store (also after a kill -9), an external Mosquitto
through its own persistence."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, PrivateBroker

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

# messages queued for the offline subscriber: bounded under `make test`, as in the issue with
# FLESPI_SLOW=1
QUEUED = 20_000 if os.environ.get("FLESPI_SLOW") else 2_000


def publish_many(client, topic: str, count: int, *, retain: bool = False) -> None:
    infos = [client.client.publish(topic, str(i).encode(), qos=1, retain=retain) for i in range(count)]
    for info in infos:
        info.wait_for_publish(30)
    assert all(info.is_published() for info in infos)


def offline_backlog_survives(broker_url, restart, clients, *, subscriber_login, publisher_login, own, foreign):
    """A persistent subscriber goes offline, messages queue for it, the broker restarts: the
    subscriber gets every queued message and a new one gets the retained state."""
    client_id = f"keep-{uuid.uuid4().hex[:8]}"
    subscriber = clients(broker_url, *subscriber_login, client_id=client_id, clean_session=False)
    assert subscriber.connect() and subscriber.subscribe(f"{own.rsplit('/', 1)[0]}/+") == 1
    subscriber.close()
    publisher = clients(broker_url, *publisher_login)
    assert publisher.connect()
    publish_many(publisher, own, QUEUED)
    if foreign:
        publish_many(publisher, foreign, 100)
    state = own.replace("/message/gw/devices/", "/state/gw/calcs/1/devices/") + "/last"
    publisher.client.publish(state, b'"newest"', qos=1, retain=True).wait_for_publish(10)
    publisher.close()
    restart()

    back = clients(broker_url, *subscriber_login, client_id=client_id, clean_session=False)
    assert back.connect()
    back.wait_for_distinct(QUEUED, timeout=120)
    time.sleep(0.5)
    received = back.received()
    assert {topic for topic, _ in received} == {own}
    assert {int(payload) for _, payload in received} == set(range(QUEUED))
    fresh = clients(broker_url, *subscriber_login)
    assert fresh.connect() and fresh.subscribe(state.rsplit("/", 1)[0] + "/+") == 1
    assert fresh.wait_for(1) == [(state, b'"newest"')]


def killed_then_all_back(broker, clients, login: str, client_id: str, count: int, *, closing) -> None:
    """Kill the broker with SIGKILL (and close ``closing``, the clients of before), start it again:
    the session ``client_id`` gets every one of the ``count`` messages published to it."""
    broker.stop(signal.SIGKILL)
    for client in closing:
        client.close()
    broker.start()
    again = clients(broker.url, login, client_id=client_id, clean_session=False)
    assert again.connect()
    again.wait_for_distinct(count, timeout=60)
    assert {int(payload) for _, payload in again.received()} == set(range(count))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill -9"])
def test_the_embedded_broker_keeps_sessions_and_retained_messages_across_a_restart(
    embedded_broker, fleet, clients, stop_signal
):
    def restart():
        # no waiting: the broker acknowledges a message once what it changed is written, so a
        # kill -9 right after the last acknowledgement loses nothing
        embedded_broker.stop(stop_signal)
        embedded_broker.start()

    offline_backlog_survives(
        embedded_broker.url, restart, clients, subscriber_login=(fleet.a_master, ""),
        publisher_login=(PLATFORM_USER, PLATFORM_PASSWORD),
        own=f"flespi/message/gw/devices/{fleet.a.pk}", foreign=f"flespi/message/gw/devices/{fleet.b.pk}",
    )


def test_an_external_mosquitto_keeps_them_too(clients):
    if not PrivateBroker.available():
        pytest.skip("needs the mosquitto binary")
    broker = PrivateBroker()
    broker.start()

    def restart():
        broker.stop()
        broker.start()

    try:
        offline_backlog_survives(broker.url, restart, clients, subscriber_login=(None, None),
                                 publisher_login=(None, None), own="flespi/message/gw/devices/1", foreign=None)
    finally:
        broker.cleanup()


def test_a_backlog_being_delivered_survives_a_kill(embedded_broker, fleet, clients):
    """The subscriber comes back for its backlog and has not acknowledged it yet when the broker is
    killed: after the restart it gets every message still."""
    client_id = f"keep-{uuid.uuid4().hex[:8]}"
    own = f"flespi/message/gw/devices/{fleet.a.pk}"
    subscriber = clients(embedded_broker.url, fleet.a_master, client_id=client_id, clean_session=False)
    assert subscriber.connect() and subscriber.subscribe(own) == 1
    subscriber.close()
    publisher = clients(embedded_broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
    assert publisher.connect()
    publish_many(publisher, own, 300)
    publisher.close()
    back = clients(embedded_broker.url, fleet.a_master, client_id=client_id, clean_session=False)
    back.client.manual_ack_set(True)  # receives, acknowledges nothing
    assert back.connect()
    back.wait_for(100)  # the broker's in-flight window
    killed_then_all_back(embedded_broker, clients, fleet.a_master, client_id, 300, closing=[back])


def test_what_a_connected_subscriber_has_not_acknowledged_survives_a_kill(embedded_broker, fleet, clients):
    """A persistent subscriber is connected and behind (it acknowledges nothing): what the broker
    acknowledged to the publisher for it, in flight or queued, is in the store before that
    acknowledgement, so a kill -9 loses none of it."""
    client_id = f"keep-{uuid.uuid4().hex[:8]}"
    own = f"flespi/message/gw/devices/{fleet.a.pk}"
    subscriber = clients(embedded_broker.url, fleet.a_master, client_id=client_id, clean_session=False)
    subscriber.client.manual_ack_set(True)  # receives, acknowledges nothing
    assert subscriber.connect() and subscriber.subscribe(own) == 1
    publisher = clients(embedded_broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
    assert publisher.connect()
    publish_many(publisher, own, 300)  # acknowledged by the broker: more than its window holds
    subscriber.wait_for(100)
    killed_then_all_back(embedded_broker, clients, fleet.a_master, client_id, 300, closing=[subscriber, publisher])
