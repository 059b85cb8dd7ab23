"""flespi's public Python clients against a live server, as an integrator points them at the
platform: ``flespi`` (``FlespiClient``, its base URL set by attribute), ``flespi-sdk`` (its
sessions are made with flespi's address inside ``token_login``: the test gives it a session class
that keeps the platform's) and ``flespi-gateway`` (``Device.base_url`` by attribute; its
``get_devices`` spells flespi's address in full, so its requests are sent to the platform's).

Each public method that maps to an endpoint the platform has is called with the client's own
defaults; those mapping to endpoints it does not have (realms, identity providers, MQTT over
REST, device logs, packets, connections, settings) answer a 404 in flespi's error shape, which
the clients read without failing.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import requests

from devices.models import Device, DeviceIdent
from tests.support.api import ERROR_ITEM_KEYS

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

FLESPI = "https://flespi.io"


@pytest.fixture
def server(live_server, make_account, make_token):
    account = make_account("integrator")
    child = make_account("branch", parent=account)
    return live_server.url, account, child, make_token(account)


# --- flespi (FlespiClient) -----------------------------------------------------------------


@pytest.fixture
def rest(server):
    from flespi.rest import FlespiClient

    url, account, child, key = server
    client = FlespiClient(token=key)
    client._url = url  # the client's only way to another address
    return client, account, child


def test_flespi_client_crud_messages_telemetry_and_errors(rest):
    client, account, _child = rest
    created = client.post(
        "/gw/devices", [{"name": "truck", "device_type_id": 744, "configuration": {"ident": "fc1"}}]
    )
    assert (created["error"], created["code"]) == (False, 200)
    [device] = created["message"]["result"]
    assert (device["device_type_id"], device["cid"]) == (744, account.pk)
    path = f"/gw/devices/{device['id']}"
    assert client.get("/gw/devices/all")["message"]["result"][0]["id"] == device["id"]
    assert client.put(path, {"name": "van"})["message"]["result"][0]["name"] == "van"
    now = int(time.time())
    stored = client.post(f"{path}/messages", [{"timestamp": now - 10, "position.speed": 12}])
    assert stored["code"] == 200
    messages = client.get(f"{path}/messages")["message"]["result"]
    assert [m["position.speed"] for m in messages] == [12]
    telemetry = client.get(f"{path}/telemetry/position.speed")["message"]["result"]
    assert telemetry == [{"id": device["id"], "telemetry": {"position.speed": {"value": 12, "ts": now - 10}}}]
    assert client.get("/platform/customer")["message"]["result"][0]["id"] == account.pk
    assert client.get("/auth/regions")["message"]["result"][0]["region"] == "eu"
    calcs = client.post(
        "/gw/calcs",
        [
            {
                "name": "days",
                "messages_source": {"source": "device"},
                "selectors": [{"type": "datetime", "split": "day"}],
            }
        ],
    )
    assert calcs["code"] == 200
    missing = client.get("/gw/devices/999999999")
    assert (missing["error"], missing["code"]) == (True, 404)
    assert all(set(error) <= ERROR_ITEM_KEYS for error in missing["message"]["errors"])
    assert client.delete(path)["code"] == 200
    assert not Device.objects.using("dc_eu_1").exists() and not DeviceIdent.objects.exists()


# --- flespi-sdk ----------------------------------------------------------------------------


def sdk_run(url, coroutine_function):
    import flespi_sdk

    def platform_session(base_url=None, *args, **kwargs) -> aiohttp.ClientSession:
        """The session flespi-sdk makes for flespi's address, at the platform's."""
        return aiohttp.ClientSession(url, *args, **kwargs)

    async def run():
        original = flespi_sdk.ClientSession
        flespi_sdk.ClientSession = platform_session
        try:
            return await coroutine_function(flespi_sdk)
        finally:
            flespi_sdk.ClientSession = original

    return asyncio.run(run())


def test_flespi_sdk_account_devices_subaccounts(server):
    url, account, child, key = server
    from devices.services import device_create, messages_ingest

    truck = device_create(account=account, name="truck", configuration={"ident": "sdk1"}, device_type_id=744)
    van = device_create(
        account=account, name="van", configuration={"ident": "sdk2"}, metadata={"a": {"b": 1}}
    )
    childs = device_create(account=child, name="truck", configuration={"ident": "sdk3"})
    messages_ingest(devices=[truck], messages=[{"timestamp": time.time() - 5, "battery.voltage": 12.5}])

    async def scenario(sdk):
        me = await sdk.token_login(key)
        try:
            assert (me.id, me.name) == (account.pk, "integrator")
            assert await me.get_name() == "integrator"
            await me.set_metadata_value("fleet.size", 2)
            assert await me.get_metadata_value("fleet.size", ignore_cache=True) == 2
            await me.delete_metadata_value("fleet.size")
            assert await me.get_metadata() == {"fleet": {}}
            fields = await me.get_fields(["email", "blocked", "region", "created", "enabled"])
            assert (fields["email"], fields["blocked"], fields["region"], fields["enabled"]) == (
                None,
                False,
                "eu",
                True,
            )

            devices = await me.devices.list()
            assert sorted(device.id for device in devices) == [truck.pk, van.pk]
            by_id = {device.id: device for device in devices}
            assert by_id[truck.pk].device_type_id == 744
            assert by_id[truck.pk].telemetry["battery.voltage"]["value"] == 12.5
            assert by_id[truck.pk].blocked is False and by_id[truck.pk].connected is True  # it just reported
            trucks = await me.devices.list(selector='{name=="truck"}')
            assert [device.id for device in trucks] == [truck.pk]  # the child's truck is not this account's
            one = await me.devices.get(truck.pk)
            assert one.id == truck.pk
            assert await one.get_name() == "truck"
            await one.set_metadata_value("driver.name", "Ann")
            assert await one.get_metadata() == {"driver": {"name": "Ann"}}

            subaccounts = await me.subaccounts.list()
            assert [item.id for item in subaccounts] == [child.pk]
            branch = await me.subaccounts.get(child.pk)
            assert await branch.get_name() == "branch"
            child_devices = await branch.devices.list()
            assert [device.id for device in child_devices] == [childs.pk]
            await branch.stop()
        finally:
            await me.stop()

    sdk_run(url, scenario)


def test_flespi_sdk_reads_the_platforms_errors(server):
    url, _account, _child, key = server
    from flespi_sdk.exception import FlespiException

    async def scenario(sdk):
        me = await sdk.token_login(key)
        try:
            for call in (
                lambda: me.devices.get(999999999),
                lambda: me.realms.list(),
                lambda: me.mqtt.list("a/b"),
            ):
                with pytest.raises(FlespiException) as caught:
                    await call()
                assert caught.value.status_code == 404 and caught.value.errors[0].code == 404
        finally:
            await me.stop()
        with pytest.raises(FlespiException) as caught:
            await sdk.token_login("x" * 64)
        assert caught.value.status_code == 401 and "token" in caught.value.errors[0].reason.lower()

    sdk_run(url, scenario)


# --- flespi-gateway -------------------------------------------------------------------------


@pytest.fixture
def gateway(server, monkeypatch):
    from flespi_gateway import gateway as module

    url, account, _child, key = server
    from devices.services import device_create, messages_ingest

    device = device_create(account=account, name="gw", configuration={"ident": "gw1"})
    start = time.time() - 1000
    messages_ingest(devices=[device], messages=[{"timestamp": start + n, "n": n} for n in range(25)])
    get = module.requests.get

    def to_platform(link, *args, **kwargs):
        return get(link.replace(FLESPI, url), *args, **kwargs)

    monkeypatch.setattr(module.requests, "get", to_platform)
    client = module.Device(device_number=device.pk, flespi_token=key)
    client.base_url = f"{url}/gw/devices/"
    return client, device, start


def test_flespi_gateway_device_methods(gateway):
    client, device, start = gateway
    assert [item["id"] for item in client.get_devices()["result"]] == [device.pk]
    assert [item["id"] for item in client.get_devices(all=True)["result"]] == [device.pk]
    assert len(client.get_messages()["result"]) == 25
    window = client.get_messages(data={"from": start + 3, "to": start + 5, "fields": "n"})["result"]
    assert window == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert client.get_messages(params={"count": 2})["result"] == client.get_messages()["result"][:2]
    batches = list(client.iter_messages_since(start + 10, count=4, fields="timestamp,n"))
    assert [[m["n"] for m in batch] for batch in batches] == [
        [10, 11, 12, 13],
        [14, 15, 16, 17],
        [18, 19, 20, 21],
        [22, 23, 24],
    ]
    assert client.get_telemetry()["result"][0]["telemetry"]["n"]["value"] == 24


@pytest.mark.parametrize("endpoint", ["connections/all", "logs", "packets", "settings/all"])
def test_flespi_gateway_endpoints_the_platform_lacks_answer_flespis_404(gateway, endpoint):
    client, _device, _start = gateway
    response = requests.get(client._build_url(endpoint), headers=client.headers, timeout=30)
    assert response.status_code == 404
    assert all(set(error) <= ERROR_ITEM_KEYS for error in response.json()["errors"])
