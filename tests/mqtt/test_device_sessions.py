"""A device's own MQTT session counts as activity (docs/messages.md, "Connected and last active"):
a real paho client whose client id is a device's ident, holding an idle session on the platform's
broker (a child process), keeps the device connected for as long as the session lives, and the
device stops being connected ``DEVICE_CONNECTION_TIMEOUT`` seconds after the session ended."""

from __future__ import annotations

import time

import pytest
from django.db import connections

from devices.selectors import devices_state
from devices.services import devices_disconnect
from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker
from tests.support.waiting import poll

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

# Seconds without a message or a live session after which a device is no longer connected: the
# broker reports live sessions every TIMEOUT / 4 seconds.
TIMEOUT = 4


@pytest.fixture
def broker(settings):
    settings.MQTT_PLATFORM_USERNAME = PLATFORM_USER
    settings.MQTT_PLATFORM_PASSWORD = PLATFORM_PASSWORD
    settings.DEVICE_CONNECTION_TIMEOUT = TIMEOUT
    broker = EmbeddedBroker(extra_env={"DEVICE_CONNECTION_TIMEOUT": str(TIMEOUT)})
    broker.start()
    yield broker
    broker.cleanup()


def _activity(device) -> dict:
    return devices_state(devices=[device], names={"connected", "last_active"})[device.pk]


def _connected_events(device) -> list:
    """The payloads (JSON text) of the device's retained ``connected`` topic queued in the outbox, in
    order."""
    with connections[device.database].cursor() as cursor:
        cursor.execute(
            "SELECT payload::text FROM outbox WHERE topic = %s ORDER BY id",
            [f"state/gw/devices/{device.pk}/connected"],  # the relay puts the root before it
        )
        return [row[0] for row in cursor.fetchall()]


def test_an_idle_session_of_the_device_keeps_it_connected_until_the_timeout_after_it_ends(broker, fleet, clients):
    # A's token may publish for device a (ident-a), not for B's device b (ident-b); another
    # client id of A's names no device.
    device_session = clients(broker.url, fleet.a_master, client_id="ident-a")
    not_its_device = clients(broker.url, fleet.a_master, client_id="ident-b")
    no_device = clients(broker.url, fleet.a_master, client_id="dispatcher")
    connected_at = time.time()
    assert [device_session.connect(), not_its_device.connect(), no_device.connect()] == [True, True, True]

    assert poll(lambda: _activity(fleet.a)["connected"], timeout=10)
    assert _activity(fleet.a)["last_active"] >= connected_at - 1
    assert _connected_events(fleet.a) == ["true"]

    # Twice the timeout without a message: the live session keeps it connected through sweeps.
    for _ in range(4):
        time.sleep(TIMEOUT / 2)
        assert fleet.a.pk not in devices_disconnect(alias=fleet.a.database)
    assert _activity(fleet.a)["connected"] is True

    device_session.close()
    closed_at = time.time()
    time.sleep(1)
    assert fleet.a.pk not in devices_disconnect(alias=fleet.a.database)
    assert _activity(fleet.a)["connected"] is True

    # The timeout after the session ended (no message came): no longer connected.
    time.sleep(max(0.0, closed_at + TIMEOUT + 0.5 - time.time()))
    assert fleet.a.pk in devices_disconnect(alias=fleet.a.database)
    assert _activity(fleet.a)["connected"] is False
    assert _activity(fleet.a)["last_active"] >= closed_at - 1
    assert _connected_events(fleet.a) == ["true", "false"]

    # A session whose client id is another account's device, or no device, moved nothing.
    assert _activity(fleet.b) == {"connected": False, "last_active": None}
    assert _activity(fleet.c) == {"connected": False, "last_active": None}
    assert _connected_events(fleet.b) == []
