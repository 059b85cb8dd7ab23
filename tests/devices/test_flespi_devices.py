"""flespi's device API: ``from``/``to`` on messages, the device fields flespi requires or has
(``device_type_id``, ``messages_rotate``, ``media_ttl``, ``media_rotate``), flespi's field names
in ``fields=``, and ``/telemetry/{telemetry-sel}``."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from devices.models import Device, DeviceIdent
from devices.services import device_create, messages_ingest, messages_purge_expired
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

T0 = 1_700_000_000.0
DC = "dc_eu_1"


@pytest.fixture
def stored(device):
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + n, "n": n} for n in range(6)], now=T0 + 10)
    return device


def stored_ns(device) -> list[int]:
    from devices.selectors import messages_of

    return [m["n"] for m in messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)]


def test_messages_take_flespis_from_and_to(api, key, stored):
    path = f"/gw/devices/{stored.pk}/messages"
    assert [m["n"] for m in result_of(api.call("GET", f"{path}?from={T0 + 1}&to={T0 + 3}", key=key))] == [
        1,
        2,
        3,
    ]
    data = quote(json.dumps({"from": T0 + 4, "count": 1, "fields": "n"}))
    assert result_of(api.call("GET", f"{path}?data={data}", key=key)) == [{"n": 4}]
    assert result_of(api.call("DELETE", f"{path}?from={T0 + 1}&to={T0 + 2}", key=key)) == []
    assert stored_ns(stored) == [0, 3, 4, 5]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(("query", "field"), [("begin=1&from=1", "from"), ("end=1&to=2", "to")])
def test_both_names_of_a_bound_are_refused(api, key, stored, method, query, field):
    errors = errors_of(api.call(method, f"/gw/devices/{stored.pk}/messages?{query}", key=key), 400)
    ours = "begin" if field == "from" else "end"
    assert errors == [
        {"code": 400, "reason": f"{field}: {ours} and {field} name the same bound: give one of them", "field": field}
    ]
    assert stored_ns(stored) == [0, 1, 2, 3, 4, 5]


def test_a_device_keeps_flespis_fields(api, key):
    body = [
        {
            "name": "t",
            "device_type_id": 744,
            "configuration": {"ident": "d1"},
            "messages_rotate": 1000,
            "media_ttl": 86400,
            "media_rotate": 5,
        }
    ]
    [created] = result_of(api.call("POST", "/gw/devices", key=key, body=body))
    assert {k: created[k] for k in ("device_type_id", "messages_rotate", "media_ttl", "media_rotate")} == {
        "device_type_id": 744,
        "messages_rotate": 1000,
        "media_ttl": 86400,
        "media_rotate": 5,
    }
    changed = result_of(
        api.call(
            "PUT", f"/gw/devices/{created['id']}", key=key, body={"device_type_id": 7, "messages_rotate": 0}
        )
    )
    assert (changed[0]["device_type_id"], changed[0]["messages_rotate"]) == (7, 0)
    [plain] = result_of(api.call("POST", "/gw/devices", key=key, body=[{"configuration": {"ident": "d2"}}]))
    assert {k: plain[k] for k in ("device_type_id", "messages_rotate", "media_ttl", "media_rotate")} == {
        "device_type_id": None,
        "messages_rotate": 0,
        "media_ttl": None,
        "media_rotate": 0,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_type_id", 0),
        ("device_type_id", "744"),
        ("device_type_id", 2**31),
        ("device_type_id", None),
        ("messages_rotate", -1),
        ("messages_rotate", 1.5),
        ("media_ttl", 0),
        ("media_ttl", True),
        ("media_rotate", -5),
    ],
)
def test_bad_flespi_device_fields_store_nothing(api, key, field, value):
    item = {"configuration": {"ident": "bad"}, field: value}
    response = api.call("POST", "/gw/devices", key=key, body=[item])
    [error] = errors_of(response, 400)
    assert error["field"] == f"[0].{field}"
    assert not Device.objects.using(DC).exists() and not DeviceIdent.objects.exists()


def test_a_bad_flespi_field_in_a_put_changes_nothing(api, key, device):
    errors = errors_of(
        api.call("PUT", f"/gw/devices/{device.pk}", key=key, body={"messages_rotate": -1}), 400
    )
    assert errors[0]["field"] == "messages_rotate"
    assert Device.objects.using(DC).get(pk=device.pk).messages_rotate == 0


def test_messages_rotate_keeps_the_newest_bytes(account):
    device = device_create(account=account, configuration={"ident": "rot"}, messages_rotate=1)
    other = device_create(account=account, configuration={"ident": "keep"})
    batch = [{"timestamp": T0 + n, "n": n, "pad": "x" * 100} for n in range(10)]
    messages_ingest(devices=[device, other], messages=batch, now=T0 + 20)
    from devices.storage import messages_sizes

    one = messages_sizes(alias=DC, device_ids=[other.pk])[other.pk] // 10
    Device.objects.using(DC).filter(pk=device.pk).update(messages_rotate=3 * one + one // 2)
    deleted = messages_purge_expired(alias=DC, now=T0 + 20)
    assert deleted == 7
    assert stored_ns(device) == [7, 8, 9]
    assert stored_ns(other) == list(range(10))


def test_fields_takes_flespis_names(api, key, stored):
    fields = "id,telemetry,last_active,messages_size,connected,blocked,device_type_id,protocol_name,calcs"
    [item] = result_of(api.call("GET", f"/gw/devices/{stored.pk}?fields={fields}", key=key))
    assert item["telemetry"]["n"] == {"value": 5, "ts": T0 + 5}
    assert item["last_active"] == T0 + 10  # when the platform received them (its clock)
    assert item["messages_size"] > 0
    assert {k: item[k] for k in ("connected", "blocked", "device_type_id", "protocol_name", "calcs")} == {
        "connected": False,  # not heard from for years
        "blocked": False,
        "device_type_id": None,
        "protocol_name": None,
        "calcs": None,
    }
    assert list(item) == fields.split(",")
    # A name that is neither the platform's nor flespi's is still refused.
    errors = errors_of(api.call("GET", f"/gw/devices/{stored.pk}?fields=id,colour", key=key), 400)
    assert errors[0]["field"] == "fields" and "colour" in errors[0]["reason"]


def test_fields_of_a_device_without_messages(api, key, device):
    [item] = result_of(api.call("GET", "/gw/devices/all?fields=telemetry,last_active,connected,messages_size", key=key))
    assert item == {"telemetry": {}, "last_active": None, "connected": False, "messages_size": 0}


def test_connected_and_last_active(api, key, device, settings):
    """A message received makes the device connected, with ``last_active`` the time of reception
    by the platform's clock; the connection sweep, ``DEVICE_CONNECTION_TIMEOUT`` s later, makes it
    disconnected, and both are retained state topics (queued in the outbox)."""
    import time

    from django.db import connections

    from devices.services import devices_disconnect

    settings.DEVICE_CONNECTION_TIMEOUT = 30
    received = time.time()
    messages_ingest(devices=[device], messages=[{"timestamp": received - 5, "n": 1}], now=received)
    [item] = result_of(api.call("GET", f"/gw/devices/{device.pk}?fields=connected,last_active", key=key))
    assert item == {"connected": True, "last_active": received}

    def state_rows():
        with connections[DC].cursor() as cursor:
            cursor.execute("SELECT topic, payload::text, retain FROM outbox WHERE device_id = %s AND topic LIKE %s "
                           "ORDER BY id", [device.pk, f"state/gw/devices/{device.pk}/%"])
            return [(topic, json.loads(payload), retain) for topic, payload, retain in cursor.fetchall()]

    assert state_rows() == [(f"state/gw/devices/{device.pk}/connected", True, True),
                            (f"state/gw/devices/{device.pk}/last_active", received, True)]
    # Another batch within a second: nothing rewritten; the sweep before the timeout: nothing.
    messages_ingest(devices=[device], messages=[{"timestamp": received - 4, "n": 2}], now=received + 0.5)
    assert devices_disconnect(alias=DC, now=received + 29) == []
    assert len(state_rows()) == 2
    # After it: disconnected, on REST at once (the clock) and on MQTT by the sweep.
    assert devices_disconnect(alias=DC, now=received + 31) == [device.pk]
    assert devices_disconnect(alias=DC, now=received + 32) == []
    assert state_rows()[2:] == [(f"state/gw/devices/{device.pk}/connected", False, True)]
    [item] = result_of(api.call("GET", f"/gw/devices/{device.pk}?fields=connected,last_active", key=key))
    assert item == {"connected": False, "last_active": received}
    # Heard from again (an old message counts: the device is reporting now): connected again.
    messages_ingest(devices=[device], messages=[{"timestamp": received - 3600, "n": 0}], now=received + 40)
    assert state_rows()[3:] == [(f"state/gw/devices/{device.pk}/connected", True, True),
                                (f"state/gw/devices/{device.pk}/last_active", received + 40, True)]


def test_customer_fields_take_flespis_names(api, account, key):
    [item] = result_of(
        api.call("GET", "/platform/customer?fields=id,name,email,blocked,enabled,cid", key=key)
    )
    assert item == {
        "id": account.pk,
        "name": account.name,
        "email": None,
        "blocked": False,
        "enabled": True,
        "cid": None,
    }


@pytest.fixture
def telemetry_devices(account):
    a = device_create(account=account, configuration={"ident": "ta"})
    b = device_create(account=account, configuration={"ident": "tb"})
    message = {
        "timestamp": T0,
        "position.latitude": 1.5,
        "position.longitude": 2.5,
        "battery.voltage": 12,
        "x": 1,
    }
    messages_ingest(devices=[a, b], messages=[message], now=T0 + 1)
    return a, b


def telemetry_names(api, key, path):
    return {item["id"]: sorted(item["telemetry"]) for item in result_of(api.call("GET", path, key=key))}


def test_telemetry_selectors(api, key, telemetry_devices):
    a, _b = telemetry_devices
    base = f"/gw/devices/{a.pk}/telemetry"
    everything = [
        "battery.voltage",
        "device.id",
        "device.name",
        "ident",
        "position.latitude",
        "position.longitude",
    ]
    everything = sorted([*everything, "rest.timestamp", "timestamp", "x"])
    assert telemetry_names(api, key, base) == {a.pk: everything}
    assert telemetry_names(api, key, f"{base}/all") == {a.pk: everything}
    assert telemetry_names(api, key, f"{base}/x") == {a.pk: ["x"]}
    assert telemetry_names(api, key, f"{base}/position.*,x") == {
        a.pk: ["position.latitude", "position.longitude", "x"]
    }
    assert telemetry_names(api, key, f"{base}/position.l%3Ftitude,nothing") == {a.pk: ["position.latitude"]}
    [item] = result_of(api.call("GET", f"{base}/battery.voltage", key=key))
    assert item == {"id": a.pk, "telemetry": {"battery.voltage": {"value": 12, "ts": T0}}}


def test_telemetry_delete(api, key, telemetry_devices):
    a, b = telemetry_devices
    assert (
        result_of(
            api.call("DELETE", f"/gw/devices/{a.pk},{b.pk}/telemetry/position.*,device.*,ident", key=key)
        )
        == []
    )
    assert telemetry_names(api, key, f"/gw/devices/{a.pk},{b.pk}/telemetry/all") == {
        a.pk: ["battery.voltage", "rest.timestamp", "timestamp", "x"],
        b.pk: ["battery.voltage", "rest.timestamp", "timestamp", "x"],
    }
    assert result_of(api.call("DELETE", f"/gw/devices/{a.pk}/telemetry/all", key=key)) == []
    assert telemetry_names(api, key, "/gw/devices/all/telemetry/all") == {
        a.pk: [],
        b.pk: ["battery.voltage", "rest.timestamp", "timestamp", "x"],
    }
    assert len(stored_ns_all(b)) == 1  # messages stay


def stored_ns_all(device):
    from devices.selectors import messages_of

    return messages_of(devices=[device], begin=None, end=None, count=None, reverse=False)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/telemetry"),
        ("DELETE", "/telemetry/a,,b"),
        ("GET", "/telemetry/a,"),
        ("DELETE", "/telemetry/" + "x*" * 200),
        ("GET", "/telemetry/a%01b"),
    ],
)
def test_bad_telemetry_selectors_change_nothing(api, key, telemetry_devices, method, path):
    a, _b = telemetry_devices
    before = telemetry_names(api, key, "/gw/devices/all/telemetry/all")
    [error] = errors_of(api.call(method, f"/gw/devices/{a.pk}{path}", key=key), 400)
    assert error["field"] == "selector"
    assert telemetry_names(api, key, "/gw/devices/all/telemetry/all") == before
