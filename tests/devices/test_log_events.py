"""What the outbox publishes besides messages and interval events: each device's retained
telemetry topics (``flespi/state/gw/devices/{id}/telemetry/{param}``) when a value changes, and
the log events of devices and calculators (``flespi/log/gw/{devices,calcs}/{id}/{event}``)."""

from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings
from django.db import connections
from django.test.utils import CaptureQueriesContext

from accounts import placement
from devices.models import Device, DeviceIdent
from devices.outbox import OutboxRelay
from devices.services import device_create, messages_ingest
from tests.support.api import errors_of, result_of
from tests.support.mqtt import Subscriber
from tests.support.outbox import queued_events

pytestmark = pytest.mark.django_db(databases="__all__")

DC = "dc_eu_1"
T0 = 1_700_000_000.0


def events(device_id: int | None = None) -> list[tuple[str, object, bool]]:
    """The event publishes queued (topic, payload, retain), in order; of one device when named."""
    return queued_events(DC, device_id)


def queued() -> int:
    with connections[DC].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox")
        return cursor.fetchone()[0]


def clear_outbox() -> None:
    with connections[DC].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")


def test_telemetry_changes_queue_their_retained_topics(account):
    device = device_create(account=account, configuration={"ident": "tel"})
    clear_outbox()
    messages_ingest(
        devices=[device], messages=[{"timestamp": T0, "speed": 5, "a/b": 1, "on": True}], now=T0 + 1
    )
    topics = {topic: (payload, retain) for topic, payload, retain in events(device.pk)}
    base = f"state/gw/devices/{device.pk}/telemetry/"
    assert topics[base + "speed"] == (5, True) and topics[base + "on"] == (True, True)
    assert base + "a/b" not in topics  # a name that is not one topic level is not published
    assert topics[base + "ident"] == ("tel", True)
    clear_outbox()
    # An older message changes no telemetry; a newer one only what changed.
    messages_ingest(devices=[device], messages=[{"timestamp": T0 - 5, "speed": 1}], now=T0 + 2)
    assert events(device.pk) == []
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + 5, "speed": 5, "on": False}], now=T0 + 2)
    changed = {topic.rsplit("/", 1)[1]: payload for topic, payload, _ in events(device.pk)}
    assert changed["on"] is False and changed["timestamp"] == T0 + 5 and "ident" not in changed


def test_forgotten_telemetry_clears_its_topics(api, key, account):
    device = device_create(account=account, configuration={"ident": "fg"})
    messages_ingest(devices=[device], messages=[{"timestamp": T0, "speed": 5, "x": 1}], now=T0 + 1)
    clear_outbox()
    assert result_of(api.call("DELETE", f"/gw/devices/{device.pk}/telemetry/speed,x", key=key)) == []
    assert events(device.pk) == [
        (f"state/gw/devices/{device.pk}/telemetry/speed", None, True),
        (f"state/gw/devices/{device.pk}/telemetry/x", None, True),
    ]


def test_device_log_events(api, key, account, make_account):
    [created] = result_of(
        api.call("POST", "/gw/devices", key=key, body=[{"name": "t", "configuration": {"ident": "lg"}}])
    )
    pk = created["id"]
    assert events(pk) == [(f"log/gw/devices/{pk}/created", created, False)]
    clear_outbox()
    [renamed] = result_of(api.call("PUT", f"/gw/devices/{pk}", key=key, body={"name": "u"}))
    assert events(pk) == [(f"log/gw/devices/{pk}/updated", renamed, False)]
    clear_outbox()
    result_of(api.call("PUT", f"/gw/devices/{pk}", key=key, body={"name": "u"}))
    assert events(pk) == []  # nothing changed
    child = make_account("child", parent=account)
    [moved] = result_of(api.call("PUT", f"/gw/devices/{pk}", key=key, body={"cid": child.pk}))
    [(topic, payload, _)] = events(pk)
    assert topic == f"log/gw/devices/{pk}/updated" and payload["cid"] == child.pk == moved["cid"]
    clear_outbox()
    [reidented] = result_of(
        api.call("PUT", f"/gw/devices/{pk}", key=key, cid=child.pk, body={"configuration": {"ident": "lg2"}})
    )
    assert events(pk) == [(f"log/gw/devices/{pk}/updated", reidented, False)]
    messages_ingest(
        devices=[Device.objects.using(DC).get(pk=pk)], messages=[{"timestamp": T0, "v": 1}], now=T0 + 1
    )
    clear_outbox()
    result_of(api.call("DELETE", f"/gw/devices/{pk}", key=key, cid=child.pk))
    queued = events(pk)
    assert (f"state/gw/devices/{pk}/telemetry/v", None, True) in queued  # retained telemetry cleared
    assert queued[-1] == (f"log/gw/devices/{pk}/deleted", reidented, False)


def test_a_refused_write_queues_nothing(api, key, device):
    clear_outbox()
    errors_of(api.call("PUT", f"/gw/devices/{device.pk}", key=key, body={"messages_rotate": -1}), 400)
    errors_of(
        api.call("POST", "/gw/devices", key=key, body=[{"configuration": {"ident": device.ident}}]), 409
    )
    assert events() == []


def test_calculator_log_events(api, key, account):
    body = [{"name": "days", "selectors": [{"type": "datetime", "split": "day"}]}]
    [created] = result_of(api.call("POST", "/gw/calcs", key=key, body=body))
    pk = created["id"]
    assert events(0) == [(f"log/gw/calcs/{pk}/created", created, False)]
    [updated] = result_of(api.call("PUT", f"/gw/calcs/{pk}", key=key, body={"name": "daily"}))
    result_of(api.call("DELETE", f"/gw/calcs/{pk}", key=key))
    assert events(0)[1:] == [
        (f"log/gw/calcs/{pk}/updated", updated, False),
        (f"log/gw/calcs/{pk}/deleted", updated, False),
    ]


def test_a_batch_of_devices_costs_the_same_statements_whatever_its_size(api, key, account, monkeypatch):
    # the placement version is read again by every request (else by time: the count would too)
    monkeypatch.setattr(placement, "RECHECK_SECONDS", 0.0)

    def statements(count: int, first: int) -> int:
        body = [{"configuration": {"ident": f"b{first + n}"}} for n in range(count)]
        with (
            CaptureQueriesContext(connections[DC]) as regional,
            CaptureQueriesContext(connections["default"]) as control,
        ):
            started = time.perf_counter()
            assert len(result_of(api.call("POST", "/gw/devices", key=key, body=body))) == count
            elapsed = time.perf_counter() - started
        print(f"\nPOST of {count} devices: {elapsed:.2f} s")
        return len(regional.captured_queries) + len(control.captured_queries)

    statements(1, 9000)  # the token's first use and the account's placement are read once
    # Two of them for groups: the account's groups lock, and the read of the groups its
    # calculators are assigned to (none here: nothing more).
    assert statements(1000, 0) == statements(2, 5000) == 12
    assert len(events()) == 1003 and DeviceIdent.objects.count() == 1003


def test_the_relay_publishes_them(account):
    root = f"test{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(alias=DC, mqtt_url=settings.MQTT_URL, topic_root=root)
    relay.start()
    assert relay.wait_connected(10)
    try:
        with Subscriber(settings.MQTT_URL, f"{root}/#") as subscriber:
            device = device_create(account=account, configuration={"ident": "pub"})
            messages_ingest(devices=[device], messages=[{"timestamp": T0, "speed": 7}], now=T0 + 1)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and queued():
                if relay.relay_once() == 0:
                    time.sleep(0.05)
            assert not queued()
            received = dict(subscriber.wait_for_messages(8))
    finally:
        relay.close()
    assert received[f"{root}/log/gw/devices/{device.pk}/created"]["id"] == device.pk
    assert received[f"{root}/state/gw/devices/{device.pk}/telemetry/speed"] == 7
    assert received[f"{root}/message/gw/devices/{device.pk}"]["speed"] == 7
