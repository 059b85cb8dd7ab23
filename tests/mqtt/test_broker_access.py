"""Access control on the platform's broker, with real paho clients and tokens in the database."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from accounts.models import Token
from accounts.services import token_delete, token_update
from flespi_site.mqtt.broker.server import Limits
from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

REFUSED = 128


def message_topic(device) -> str:
    return f"flespi/message/gw/devices/{device.pk}"


def state_topic(device, name="last") -> str:
    return f"flespi/state/gw/calcs/7/devices/{device.pk}/{name}"


def publish_as_platform(clients, broker, items):
    """Publish ``(topic, payload, retain)`` items as the platform, each acknowledged."""
    platform = clients(broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
    assert platform.connect()
    for topic, payload, retain in items:
        platform.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def test_bad_credentials_are_refused(embedded_broker, fleet, clients, make_token):
    expired = make_token(fleet.accounts["A"], expire=int(time.time()) - 1)
    disabled = make_token(fleet.accounts["A"])
    Token.objects.filter(key_prefix=disabled[:8]).update(enabled=False)
    deleted = make_token(fleet.accounts["A"])
    token_delete(token=Token.objects.get(key_prefix=deleted[:8]))
    attempts = {
        "anonymous": (None, None), "unknown": ("no-such-token", ""), "wrong password": (fleet.a_master, "x"),
        "expired": (expired, ""), "disabled": (disabled, ""), "deleted": (deleted, ""),
        "platform, wrong password": (PLATFORM_USER, "guess"),
    }
    results = {name: clients(embedded_broker.url, user, password).connect() for name, (user, password) in attempts.items()}
    assert results == dict.fromkeys(attempts, False)
    accepted = [clients(embedded_broker.url, key, password).connect()
                for key, password in [(fleet.a_master, ""), (fleet.a_standard, ""), (fleet.a_master, fleet.a_master)]]
    assert accepted == [True, True, True]


WIDE_FILTERS = ["flespi/#", "$share/g/flespi/#",
                "flespi/+/gw/devices/+", "$SYS/#"]


def test_another_accounts_topics_are_never_delivered(embedded_broker, fleet, clients):
    # retained state of both accounts exists before anyone subscribes
    publish_as_platform(clients, embedded_broker, [
        (state_topic(fleet.a), b'"a-last"', True), (state_topic(fleet.b), b'"b-last"', True),
    ])
    a = clients(embedded_broker.url, fleet.a_standard)
    b = clients(embedded_broker.url, fleet.b_token)
    assert a.connect() and b.connect()
    assert {f: a.subscribe(f) for f in WIDE_FILTERS} == dict.fromkeys(WIDE_FILTERS, REFUSED)
    # filters outside the root are the account's own namespace: allowed, and none of the platform's
    # topics (nor another account's) ever match them
    own = ["#", "+/+/+/+/+", "+/message/gw/devices/+", "$share/g/#", "ingest/+"]
    assert {f: a.subscribe(f) for f in own} == dict.fromkeys(own, 1)
    assert a.subscribe(message_topic(fleet.b)) == REFUSED
    for narrowed in ["flespi/message/gw/devices/+", "flespi/state/gw/calcs/+/devices/+/+", "flespi/interval/#"]:
        assert a.subscribe(narrowed) == 1 and b.subscribe(narrowed) == 1
    publish_as_platform(clients, embedded_broker, [
        (message_topic(device), json.dumps({"ident": device.ident}).encode(), False)
        for device in (fleet.a, fleet.b, fleet.c)
    ] + [(f"flespi/interval/gw/calcs/7/devices/{fleet.b.pk}/created", b"{}", False)])
    a.wait_for(3)
    b.wait_for(3)
    time.sleep(0.5)
    assert sorted(topic for topic, _ in a.received()) == sorted(
        [state_topic(fleet.a), message_topic(fleet.a), message_topic(fleet.c)]
    )
    assert sorted(topic for topic, _ in b.received()) == sorted([
        state_topic(fleet.b), message_topic(fleet.b), f"flespi/interval/gw/calcs/7/devices/{fleet.b.pk}/created"
    ])


def test_a_subaccounts_token_does_not_see_its_parent(embedded_broker, fleet, clients):
    c = clients(embedded_broker.url, fleet.c_token)
    assert c.connect()
    assert c.subscribe(message_topic(fleet.a)) == REFUSED
    assert c.subscribe("flespi/message/gw/devices/+") == 1
    publish_as_platform(clients, embedded_broker, [(message_topic(d), b"{}", False) for d in (fleet.a, fleet.c)])
    c.wait_for(1)
    time.sleep(0.5)
    assert [topic for topic, _ in c.received()] == [message_topic(fleet.c)]


def test_a_token_disabled_while_connected_loses_access_within_the_bound(embedded_broker, fleet, clients):
    a = clients(embedded_broker.url, fleet.a_master)
    assert a.connect() and a.subscribe("flespi/message/gw/devices/+") == 1
    stop = threading.Event()

    def keep_publishing():
        platform = clients(embedded_broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
        assert platform.connect()
        while not stop.is_set():
            platform.client.publish(message_topic(fleet.a), json.dumps(time.time()), qos=1).wait_for_publish(5)
            time.sleep(0.05)

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    try:
        assert a.wait_for(3)
        disabled_at = time.time()
        token_update(token=Token.objects.get(key_prefix=fleet.a_master[:8]), data={"enabled": False})
        assert a.disconnected.wait(Limits.recheck_seconds + 3), "the connection was not closed"
        closed_after = time.time() - disabled_at
        time.sleep(0.5)
    finally:
        stop.set()
        publisher.join(5)
    last_delivered = max(json.loads(payload) for _, payload in a.received())
    assert closed_after <= Limits.recheck_seconds + 1.5
    assert last_delivered - disabled_at <= Limits.recheck_seconds + 1.5
    # and it cannot come back
    assert not clients(embedded_broker.url, fleet.a_master).connect()


def test_clients_publish_only_to_their_own_devices_ingest_topics(embedded_broker, fleet, clients):
    watcher = clients(embedded_broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
    assert watcher.connect() and watcher.subscribe("#") == 1
    a = clients(embedded_broker.url, fleet.a_standard)
    assert a.connect()
    for topic in [f"ingest/{fleet.b.ident}", message_topic(fleet.a), "flespi/state/x", "other/topic",
                  f"ingest/{fleet.a.ident}", f"ingest/{fleet.c.ident}"]:
        a.client.publish(topic, b"{}", qos=1).wait_for_publish(5)
    watcher.wait_for(2)
    time.sleep(0.5)
    assert [topic for topic, _ in watcher.received()] == [f"ingest/{fleet.a.ident}", f"ingest/{fleet.c.ident}"]


def test_a_foreign_devices_ingest_topic_stores_nothing(embedded_broker, fleet, clients, api):
    from devices.ingest_mqtt import IngestConsumer

    consumer = IngestConsumer(regions=["eu"], mqtt_url=embedded_broker.url, pattern="ingest/+",
                              client_id=f"test-ingest-{uuid.uuid4().hex[:8]}")
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        a = clients(embedded_broker.url, fleet.a_standard)
        assert a.connect()
        time.sleep(0.5)  # the consumer subscribes
        a.client.publish(f"ingest/{fleet.b.ident}", json.dumps({"timestamp": 1_700_000_000, "x": 1}), qos=1).wait_for_publish(5)
        a.client.publish(f"ingest/{fleet.a.ident}", json.dumps({"timestamp": 1_700_000_000, "x": 2}), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while consumer.received < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        consumer.stop()
        thread.join(10)
    assert consumer.received == 1
    stored = {name: api.call("GET", f"/gw/devices/{device.pk}/messages", key=key).json()["result"]
              for name, device, key in [("a", fleet.a, fleet.a_master), ("b", fleet.b, fleet.b_token)]}
    assert [m["x"] for m in stored["a"]] == [2]
    assert stored["b"] == []


def test_the_relay_keeps_publishing_and_a_token_receives_its_own(embedded_broker, fleet, clients):
    from django.db import connections

    from devices.outbox import OutboxRelay
    from devices.services import messages_ingest

    alias = fleet.a._state.db
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")  # what earlier tests left unpublished is not this test's
    relay = OutboxRelay(alias=alias, mqtt_url=embedded_broker.url, topic_root="flespi")
    relay.start()
    try:
        assert relay.wait_connected(10), "the relay did not log in as the platform"
        a = clients(embedded_broker.url, fleet.a_master)
        assert a.connect() and a.subscribe("flespi/message/gw/devices/+") == 1
        for device in (fleet.a, fleet.b):
            messages_ingest(devices=[device], messages=[{"timestamp": 1_700_000_000 + i, "n": i} for i in range(50)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if relay.relay_once() == 0:
                if len(a.received()) >= 50:
                    break
                time.sleep(0.05)
        time.sleep(0.3)
    finally:
        relay.close()
    assert relay.stats.published >= 100  # the messages of both devices (and their telemetry)
    received = a.received()
    assert {topic for topic, _ in received} == {message_topic(fleet.a)} and len(received) == 50


def test_a_token_of_another_region_is_told_where_to_go(embedded_broker, make_account, make_token, clients, api):
    root = make_account("R")
    ru = make_account("RU", parent=root, region="ru")
    key = make_token(ru)
    client = clients(embedded_broker.url, key)
    assert not client.connect()
    info = api.call("GET", "/auth/info", key=key, host="ru.localhost").json()["result"][0]
    from django.conf import settings

    assert info["mqtt"] == settings.TOPOLOGY.region("ru").mqtt_url


def test_every_message_arrives_while_other_sessions_leave(embedded_broker, fleet, clients):
    """Sessions of the same filter leaving while messages are routed skip no subscriber."""
    for _ in range(20):
        passing = clients(embedded_broker.url, fleet.a_master)
        assert passing.connect() and passing.subscribe("flespi/message/gw/devices/+") == 1
        passing.close()
    staying = clients(embedded_broker.url, fleet.a_master)
    assert staying.connect() and staying.subscribe("flespi/message/gw/devices/+") == 1
    platform = clients(embedded_broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
    assert platform.connect()
    infos = [platform.client.publish(message_topic(fleet.a), str(i).encode(), qos=1) for i in range(2000)]
    for info in infos:
        info.wait_for_publish(30)
    received = staying.wait_for(2000, timeout=30)
    assert sorted(int(payload) for _, payload in received) == list(range(2000))


def test_a_moved_device_leaves_its_old_accounts_view_at_its_log_event(embedded_broker, fleet, clients):
    """The broker caches a device's owner for a minute; the device's own log event (the outbox
    publishes it before any later message of the device) makes a move take effect at once. The
    new owner's token sees the device's telemetry and log topics too."""
    from django.db import connections

    from accounts.models import Account
    from devices.outbox import OutboxRelay
    from devices.services import device_update, messages_ingest

    alias = fleet.c._state.db
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")
    relay = OutboxRelay(alias=alias, mqtt_url=embedded_broker.url, topic_root="flespi")
    relay.start()

    def relay_all() -> None:
        while relay.relay_once():
            pass

    try:
        assert relay.wait_connected(10)
        child = clients(embedded_broker.url, fleet.c_token)
        assert child.connect() and child.subscribe("flespi/message/gw/devices/+") == 1
        parent = clients(embedded_broker.url, fleet.a_master)
        assert parent.connect()
        assert parent.subscribe(f"flespi/log/gw/devices/{fleet.c.pk}/+") == 1
        assert parent.subscribe("flespi/state/gw/devices/+/telemetry/speed") == 1
        messages_ingest(devices=[fleet.c], messages=[{"timestamp": 1_700_000_000, "speed": 1}])
        relay_all()
        child.wait_for(1)
        device_update(device=fleet.c, account=Account.objects.get(pk=fleet.accounts["A"].pk),
                      data={"account_id": fleet.accounts["A"].pk})
        messages_ingest(devices=[fleet.c], messages=[{"timestamp": 1_700_000_001, "speed": 2}])
        relay_all()
        parent.wait_for(3)
        time.sleep(0.5)
    finally:
        relay.close()
    assert [json.loads(payload)["speed"] for _, payload in child.received()] == [1]
    assert sorted(topic for topic, _ in parent.received()) == sorted([
        f"flespi/log/gw/devices/{fleet.c.pk}/updated",
        f"flespi/state/gw/devices/{fleet.c.pk}/telemetry/speed",
        f"flespi/state/gw/devices/{fleet.c.pk}/telemetry/speed",
    ])
