"""Access control on a Mosquitto with dynamic security, kept in step by the platform's services
and reconcile, with real paho clients."""

from __future__ import annotations

import json
import time

import pytest

from accounts import mqtt_dynsec
from accounts.models import Token
from accounts.services import token_delete, token_update
from devices.services import device_create, device_delete, device_update
from tests.mqtt.test_embedded_access import WIDE_FILTERS, message_topic, publish_as_platform, state_topic
from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

REFUSED = 128


def login(clients, broker, key):
    """A token client on Mosquitto: the key is the username and the password."""
    client = clients(broker.url, key, key)
    assert client.connect(), f"refused: {client.connack}"
    return client


def test_credentials(dynsec_broker, fleet, clients, make_token):
    disabled = make_token(fleet.accounts["A"], enabled=False)
    deleted = make_token(fleet.accounts["A"])
    token_delete(token=Token.objects.get(key_prefix=deleted[:8]))
    attempts = {"anonymous": (None, None), "unknown": ("nope", "nope"), "wrong password": (fleet.a_master, "x"),
                "disabled": (disabled, disabled), "deleted": (deleted, deleted),
                "platform, wrong password": (PLATFORM_USER, "guess")}
    results = {name: clients(dynsec_broker.url, *login_).connect() for name, login_ in attempts.items()}
    assert results == dict.fromkeys(attempts, False)
    login(clients, dynsec_broker, fleet.a_master)
    login(clients, dynsec_broker, fleet.a_standard)


def test_another_accounts_topics_are_never_delivered(dynsec_broker, fleet, clients):
    publish_as_platform(clients, dynsec_broker, [
        (state_topic(fleet.a), b'"a-last"', True), (state_topic(fleet.b), b'"b-last"', True),
    ])
    a, b = login(clients, dynsec_broker, fleet.a_standard), login(clients, dynsec_broker, fleet.b_token)
    codes = {f: a.subscribe(f) for f in WIDE_FILTERS}
    assert codes == dict.fromkeys(WIDE_FILTERS, REFUSED)
    # a filter naming another account's device is accepted by Mosquitto and delivers nothing
    a.subscribe(message_topic(fleet.b))
    for narrowed in ["flespi/message/gw/devices/+", "flespi/state/gw/calcs/+/devices/+/+", "flespi/interval/#",
                     "$share/g/flespi/message/gw/devices/+"]:
        assert a.subscribe(narrowed) != REFUSED and b.subscribe(narrowed) != REFUSED
    publish_as_platform(clients, dynsec_broker, [
        (message_topic(device), json.dumps({"ident": device.ident}).encode(), False)
        for device in (fleet.a, fleet.b, fleet.c)
    ] + [(f"flespi/interval/gw/calcs/7/devices/{fleet.b.pk}/created", b"{}", False)])
    a.wait_for(4)
    b.wait_for(4)
    time.sleep(0.5)
    assert {topic for topic, _ in a.received()} == {state_topic(fleet.a), message_topic(fleet.a), message_topic(fleet.c)}
    assert {topic for topic, _ in b.received()} == {
        state_topic(fleet.b), message_topic(fleet.b), f"flespi/interval/gw/calcs/7/devices/{fleet.b.pk}/created"
    }


def test_devices_created_moved_and_deleted_are_followed(dynsec_broker, fleet, clients):
    a = login(clients, dynsec_broker, fleet.a_master)
    c = login(clients, dynsec_broker, fleet.c_token)
    for client in (a, c):
        assert client.subscribe("flespi/message/gw/devices/+") != REFUSED
    account_a, account_c = fleet.accounts["A"], fleet.accounts["C"]
    new = device_create(account=account_a, name="new", configuration={"ident": "ident-new"})
    publish_as_platform(clients, dynsec_broker, [(message_topic(new), b"1", False)])
    assert a.wait_for(1) == [(message_topic(new), b"1")]
    device_update(device=new, account=account_a, data={"account_id": account_c.pk})
    publish_as_platform(clients, dynsec_broker, [(message_topic(new), b"2", False)])
    assert c.wait_for(1) == [(message_topic(new), b"2")]
    device_delete(device=new)
    publish_as_platform(clients, dynsec_broker, [(message_topic(new), b"3", False)])
    time.sleep(0.5)
    assert [payload for _, payload in a.received()] == [b"1", b"2"]  # A sees its subaccount's devices
    assert [payload for _, payload in c.received()] == [b"2"]


def test_a_token_disabled_while_connected_is_disconnected(dynsec_broker, fleet, clients):
    a = login(clients, dynsec_broker, fleet.a_master)
    assert a.subscribe("flespi/message/gw/devices/+") != REFUSED
    token_update(token=Token.objects.get(key_prefix=fleet.a_master[:8]), data={"enabled": False})
    assert a.disconnected.wait(2)
    publish_as_platform(clients, dynsec_broker, [(message_topic(fleet.a), b"after", False)])
    time.sleep(0.3)
    assert a.received() == []
    assert not clients(dynsec_broker.url, fleet.a_master, fleet.a_master).connect()


def test_publish_only_to_own_ingest_topics(dynsec_broker, fleet, clients):
    watcher = clients(dynsec_broker.url, PLATFORM_USER, PLATFORM_PASSWORD)
    assert watcher.connect() and watcher.subscribe("#") == 1
    # Mosquitto 2.0 may close the connection of a client that publishes where it may not: each
    # attempt on a connection of its own
    for topic in [f"ingest/{fleet.b.ident}", message_topic(fleet.a), "other", f"ingest/{fleet.a.ident}",
                  f"ingest/{fleet.c.ident}"]:
        a = login(clients, dynsec_broker, fleet.a_standard)
        a.client.publish(topic, b"{}", qos=1)
        time.sleep(0.2)
        a.close()
    watcher.wait_for(2)
    time.sleep(0.5)
    assert [topic for topic, _ in watcher.received()] == [f"ingest/{fleet.a.ident}", f"ingest/{fleet.c.ident}"]


def test_the_reconcile_repairs_drift_disables_expired_tokens_and_is_idempotent(dynsec_broker, fleet, clients, make_token):
    soon = make_token(fleet.accounts["A"], expire=int(time.time()) + 2)
    early = login(clients, dynsec_broker, soon)
    control = mqtt_dynsec.control_for(dynsec_broker.url)
    # drift: an ACL lost, a role given away, a stray client
    role = mqtt_dynsec.account_role(fleet.a.account_id)
    control.send([
        {"command": "removeRoleACL", "rolename": role, "acltype": "publishClientReceive", "topic": message_topic(fleet.a)},
        {"command": "createClient", "username": "stray", "password": "x", "textname": "token 999999"},
    ])
    time.sleep(2.5)
    report = mqtt_dynsec.dynsec_reconcile(url=dynsec_broker.url, regions=["eu"])
    assert report.errors == [] and report.tokens_without_client == []
    assert early.disconnected.wait(2), "the expired token was not disconnected"
    again = mqtt_dynsec.dynsec_reconcile(url=dynsec_broker.url, regions=["eu"])
    assert again.commands == 1  # only the default access, which is set every time
    a = login(clients, dynsec_broker, fleet.a_master)
    assert a.subscribe(message_topic(fleet.a)) != REFUSED
    publish_as_platform(clients, dynsec_broker, [(message_topic(fleet.a), b"back", False)])
    assert a.wait_for(1) == [(message_topic(fleet.a), b"back")]
    assert not clients(dynsec_broker.url, "stray", "x").connect()


def test_mqtt_sync_reports_tokens_the_broker_lost(dynsec_broker, fleet, clients):
    import io

    from django.core.management import call_command

    control = mqtt_dynsec.control_for(dynsec_broker.url)
    control.send([{"command": "deleteClient", "username": fleet.b_token}])
    out, err = io.StringIO(), io.StringIO()
    call_command("mqtt_sync", stdout=out, stderr=err)
    token_b = Token.objects.get(key_prefix=fleet.b_token[:8])
    assert f"{dynsec_broker.url} (eu): " in out.getvalue()
    assert f"tokens [{token_b.pk}] have no client on the broker" in err.getvalue()
    assert not clients(dynsec_broker.url, fleet.b_token, fleet.b_token).connect()



def test_a_new_subaccount_does_not_disconnect_its_ancestors_tokens(dynsec_broker, fleet, clients):
    from accounts.services import account_create

    a = login(clients, dynsec_broker, fleet.a_master)
    assert a.subscribe("flespi/message/gw/devices/+") != REFUSED
    grandchild = account_create(name="D", parent=fleet.accounts["C"])
    device = device_create(account=grandchild, name="d", configuration={"ident": "ident-d"})
    assert not a.disconnected.wait(1)
    publish_as_platform(clients, dynsec_broker, [(message_topic(device), b"deep", False)])
    assert a.wait_for(1) == [(message_topic(device), b"deep")]
