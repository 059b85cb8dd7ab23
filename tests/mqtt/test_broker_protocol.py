"""The platform's broker as MQTT clients meet it: flespi's login forms, MQTT 3.1, 3.1.1 and 5 (paho
and the mosquitto CLI), reason codes and server references, shared subscriptions that belong to
the subscribing account, the ``cid`` user property, comma lists, QoS 2, wills, keep-alive,
client ids per account, and bytes that are not MQTT. MQTT over WebSocket is in test_websocket.py."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, mosquitto
from tests.support.waiting import poll

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


class Client:
    """A paho client of any protocol version that records CONNACK, SUBACK codes and messages."""

    def __init__(self, url_port: int, *, username=None, password=None, protocol=paho.MQTTv5,
                 client_id: str | None = None, transport="tcp", clean=True, will=None, keepalive=10):
        self.port = url_port
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol, transport=transport,
                                  clean_session=clean if protocol != paho.MQTTv5 else None)
        if username is not None or password is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(*will)
        self.protocol, self.clean, self.keepalive = protocol, clean, keepalive
        self.connack = None
        self.connack_properties = None
        self.answered = threading.Event()
        self.subacks: dict[int, list] = {}
        self.messages: list[paho.MQTTMessage] = []
        self.disconnects: list = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.__setitem__(mid, codes)
        self.client.on_message = lambda c, u, message: self.messages.append(message)
        self.client.on_disconnect = lambda c, u, flags, reason, props: self.disconnects.append(reason)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack, self.connack_properties = reason_code, properties
        self.answered.set()

    def connect(self) -> bool:
        options = {}
        if self.protocol == paho.MQTTv5:
            options["clean_start"] = self.clean
            if not self.clean:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 3600
                options["properties"] = props
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive, **options)
        self.client.loop_start()
        assert self.answered.wait(10), "no CONNACK"
        return not self.connack.is_failure

    def subscribe(self, topic_filter: str, qos: int = 1, **user_properties) -> int:
        props = None
        if user_properties:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.UserProperty = [(name, str(value)) for name, value in user_properties.items()]
        _rc, mid = self.client.subscribe(topic_filter, qos=qos, properties=props)
        poll(lambda: mid in self.subacks, timeout=10, every=0.01)
        return self.subacks[mid][0].value

    def topics(self) -> list[str]:
        return [message.topic for message in self.messages]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(embedded_broker):
    made: list[Client] = []

    def make(**options) -> Client:
        client = Client(embedded_broker.port, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def platform_client(connect):
    client = connect(username=PLATFORM_USER, password=PLATFORM_PASSWORD)
    assert client.connect()
    return client


def publish(client: Client, topic: str, payload: bytes = b"{}", qos: int = 1, retain: bool = False):
    info = client.client.publish(topic, payload, qos=qos, retain=retain)
    info.wait_for_publish(10)
    return info


def message_topic(device) -> str:
    return f"flespi/message/gw/devices/{device.pk}"


def interval_topic(device, event="created") -> str:
    return f"flespi/interval/gw/calcs/5/devices/{device.pk}/{event}"


@pytest.mark.parametrize("protocol", [paho.MQTTv31, paho.MQTTv311, paho.MQTTv5], ids=["3.1", "3.1.1", "5"])
def test_every_flespi_login_form_in_every_protocol_version(connect, fleet, platform_client, protocol):
    key = fleet.a_master
    logins = {
        "token as username, no password": (key, None),
        "token as username, empty password": (key, ""),
        "FlespiToken <key> as username": (f"FlespiToken {key}", None),
        "token as password, no username": ("", key),
        "token as username and password": (key, key),
        "FlespiToken as username, token as password": ("FlespiToken", key),
    }
    results = {}
    for name, (username, password) in logins.items():
        client = connect(username=username, password=password, protocol=protocol)
        results[name] = client.connect() and client.subscribe(message_topic(fleet.a)) == 1
        publish(platform_client, message_topic(fleet.a), name.encode())
        poll(lambda client=client: client.messages, timeout=5, every=0.02)
        results[name] = results[name] and [m.payload for m in client.messages] == [name.encode()]
        client.close()
    assert results == dict.fromkeys(logins, True)


def test_refusals_carry_mqtt5_reason_codes_and_the_right_regions_endpoint(connect, fleet, make_account, make_token):
    unknown = connect(username="no-such-token")
    assert not unknown.connect()
    assert unknown.connack.value == 0x87
    assert unknown.connack_properties.ReasonString == "unknown token"
    ru_key = make_token(make_account("RU", parent=fleet.accounts["A"], region="ru"))
    elsewhere = connect(username=ru_key)
    assert not elsewhere.connect()
    assert elsewhere.connack.value == 0x9D  # server moved
    assert elsewhere.connack_properties.ServerReference == "mqtt://ru.localhost:1883"  # the broker's topology
    v3 = connect(username="no-such-token", protocol=paho.MQTTv311)
    assert not v3.connect() and v3.connack.value == 0x87  # paho maps 3.1.1's 5 to "not authorized"


def test_the_mosquitto_cli_logs_in_the_flespi_way(embedded_broker, fleet, platform_client):
    if mosquitto() is None:
        pytest.skip("needs mosquitto_sub")
    outputs = {}
    for version, login in [("mqttv311", ["-u", fleet.a_master]), ("mqttv5", ["-u", f"FlespiToken {fleet.a_master}"]),
                           ("mqttv31", ["-u", fleet.a_master])]:
        process = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(embedded_broker.port), "-V", version, *login,
             "-t", message_topic(fleet.a), "-C", "1", "-W", "10", "-v"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        publish(platform_client, message_topic(fleet.a), version.encode())
        out, err = process.communicate(timeout=15)
        outputs[version] = (out.strip(), err.strip())
    assert outputs == {version: (f"{message_topic(fleet.a)} {version}", "") for version in outputs}


def test_shared_groups_belong_to_the_subscribing_account(connect, fleet, platform_client):
    """Account B consumes its events with $share/g/...; account A picks the same group name with
    six clients of its own. Each account's group gets all of its own events, once, and none of the
    other's, while members join and leave."""
    shared = "$share/g/flespi/interval/#"
    everyone: dict[str, list[Client]] = {"A": [], "B": []}

    def join(account: str) -> Client:
        key = fleet.a_master if account == "A" else fleet.b_token
        member = connect(username=key, protocol=random.choice([paho.MQTTv311, paho.MQTTv5]))
        assert member.connect() and member.subscribe(shared) == 1
        everyone[account].append(member)
        return member

    present = {"A": [join("A") for _ in range(6)], "B": [join("B") for _ in range(3)]}
    for round_ in range(4):
        for index in range(6):
            publish(platform_client, interval_topic(fleet.b), f"b{round_}-{index}".encode())
            publish(platform_client, interval_topic(fleet.a), f"a{round_}-{index}".encode())
        for account in ("A", "B"):  # one member leaves, another joins
            present[account].pop(0).close()
            present[account].append(join(account))

    def received(account: str) -> list[str]:
        return sorted(m.payload.decode() for member in everyone[account] for m in member.messages)

    poll(lambda: len(received("A")) >= 24 and len(received("B")) >= 24, timeout=10, every=0.05)
    time.sleep(0.3)
    assert received("B") == sorted(f"b{r}-{i}" for r in range(4) for i in range(6))
    assert received("A") == sorted(f"a{r}-{i}" for r in range(4) for i in range(6))


def test_a_shared_group_member_that_leaves_hands_what_it_had_not_acknowledged_to_another(connect, fleet,
                                                                                      platform_client):
    """A member of a shared group takes messages and leaves (a clean session) before acknowledging
    them: they go to a member that stays, none is lost (MQTT 5, 4.8.2)."""
    shared = "$share/w/flespi/interval/#"
    leaving = connect(username=fleet.a_master)
    leaving.client.manual_ack_set(True)  # takes its share, acknowledges nothing
    staying = connect(username=fleet.a_master)
    for member in (leaving, staying):
        assert member.connect() and member.subscribe(shared) == 1
    for index in range(20):
        publish(platform_client, interval_topic(fleet.a), f"m{index}".encode())
    assert poll(lambda: len(leaving.messages) + len(staying.messages) >= 20, timeout=10, every=0.05)
    assert leaving.messages and staying.messages  # both had a share
    leaving.close()
    expected = {f"m{index}" for index in range(20)}
    assert poll(lambda: {m.payload.decode() for m in staying.messages} >= expected, timeout=10, every=0.05), (
        sorted(expected - {m.payload.decode() for m in staying.messages})
    )


def test_shared_groups_receive_every_event_of_the_outbox_of_their_own_account(connect, fleet, embedded_broker):
    """The same, through the platform's path: messages stored for a device of each account, the
    relay publishing the outbox; each account's group gets exactly its device's messages, as many
    as the outbox held for it, while members come and go."""
    from django.db import connections

    from devices.outbox import OutboxRelay
    from devices.services import messages_ingest

    alias = fleet.a._state.db
    assert fleet.b._state.db == alias
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")
    relay = OutboxRelay(alias=alias, mqtt_url=embedded_broker.url, topic_root="flespi")
    relay.start()
    shared = "$share/consumers/flespi/message/gw/devices/+"
    everyone: dict[str, list[Client]] = {"A": [], "B": []}

    def join(account: str) -> Client:
        member = connect(username=fleet.a_master if account == "A" else fleet.b_token)
        assert member.connect() and member.subscribe(shared) == 1
        everyone[account].append(member)
        return member

    def queued(device) -> int:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT coalesce(sum(array_length(stamps, 1)), 0) FROM outbox "
                           "WHERE device_id = %s AND stamps IS NOT NULL", [device.pk])
            return cursor.fetchone()[0]

    def received(account: str) -> list[tuple[str, float]]:
        return sorted((m.topic, json.loads(m.payload)["timestamp"])
                      for member in everyone[account] for m in member.messages)

    def delivered() -> bool:
        return len(received("A")) >= expected["A"] and len(received("B")) >= expected["B"]

    expected = {"A": 0, "B": 0}
    try:
        assert relay.wait_connected(10)
        present = {"A": [join("A") for _ in range(4)], "B": [join("B") for _ in range(2)]}
        for round_ in range(3):
            for account, device in (("A", fleet.a), ("B", fleet.b)):
                messages_ingest(devices=[device], messages=[{"timestamp": 1_700_000_000 + round_ * 100 + i, "n": i}
                                                            for i in range(10)])
                expected[account] += queued(device)
            while relay.relay_once():
                pass
            # Members leave while the round is on its way: what the broker had in flight to a
            # member whose clean session ends goes to another member of its group.
            for account in ("A", "B"):
                present[account].pop(0).close()
                present[account].append(join(account))
        poll(delivered, timeout=10, every=0.05)
        time.sleep(0.3)
    finally:
        relay.close()
    assert expected == {"A": 30, "B": 30}
    for account, device in (("A", fleet.a), ("B", fleet.b)):
        # every one (at least once: a member that leaves right after taking a message, before
        # its acknowledgement went out, makes its group get it again) and only its own
        assert sorted(set(received(account))) == sorted((message_topic(device), 1_700_000_000.0 + r * 100 + i)
                                                        for r in range(3) for i in range(10))


def test_cid_delivers_only_that_accounts_entities(connect, fleet, platform_client):
    master = connect(username=fleet.a_master)
    assert master.connect()
    assert master.subscribe("flespi/message/gw/devices/+", cid=fleet.accounts["C"].pk) == 1
    assert master.subscribe("flespi/interval/#", cid=fleet.accounts["B"].pk) == 0x87  # not in A's subtree
    assert master.subscribe("flespi/interval/#", cid="x") == 0x87
    for device in (fleet.a, fleet.b, fleet.c):
        publish(platform_client, message_topic(device))
    poll(lambda: master.messages, timeout=5, every=0.02)
    time.sleep(0.3)
    assert master.topics() == [message_topic(fleet.c)]


def test_comma_lists_in_a_filter_level(connect, fleet, platform_client):
    client = connect(username=fleet.a_master, protocol=paho.MQTTv311)
    assert client.connect()
    assert client.subscribe(f"flespi/message/gw/devices/{fleet.a.pk},{fleet.c.pk}") == 1
    assert client.subscribe(f"flespi/message/gw/devices/{fleet.a.pk},{fleet.b.pk}") == 0x80  # b is not A's
    for device in (fleet.a, fleet.b, fleet.c, fleet.a):
        publish(platform_client, message_topic(device))
    poll(lambda: len(client.messages) >= 3, timeout=5, every=0.02)
    time.sleep(0.3)
    assert client.topics() == [message_topic(fleet.a), message_topic(fleet.c), message_topic(fleet.a)]


def test_qos2_is_delivered_exactly_once(connect, fleet, platform_client):
    client = connect(username=fleet.a_master)
    assert client.connect() and client.subscribe(message_topic(fleet.a), qos=2) == 2
    for index in range(50):
        platform_client.client.publish(message_topic(fleet.a), str(index).encode(), qos=2)
    poll(lambda: len(client.messages) >= 50, timeout=10, every=0.02)
    time.sleep(0.3)
    assert [int(m.payload) for m in client.messages] == list(range(50))
    assert {m.qos for m in client.messages} == {2}


def test_a_will_is_published_when_the_connection_is_lost(connect, fleet, platform_client):
    watcher = connect(username=PLATFORM_USER, password=PLATFORM_PASSWORD)
    assert watcher.connect() and watcher.subscribe("ingest/+") == 1
    device = connect(username=fleet.a_standard, will=(f"ingest/{fleet.a.ident}", b'{"gone": true}', 1))
    assert device.connect()
    device.client._sock.close()  # no DISCONNECT: the connection is lost
    poll(lambda: watcher.messages, timeout=10, every=0.05)
    assert [(m.topic, m.payload) for m in watcher.messages] == [(f"ingest/{fleet.a.ident}", b'{"gone": true}')]
    # a will the token may not publish is refused at CONNECT (MQTT 5 says why)
    foreign = connect(username=fleet.a_standard, will=(f"ingest/{fleet.b.ident}", b"{}", 1))
    assert not foreign.connect() and foreign.connack.value == 0x87


def test_a_silent_client_is_closed_after_its_keepalive(embedded_broker, fleet):
    sock = socket.create_connection(("127.0.0.1", embedded_broker.port))
    key = fleet.a_master.encode()
    body = b"\x00\x04MQTT\x04\x82\x00\x01" + len(b"k").to_bytes(2, "big") + b"k" + len(key).to_bytes(2, "big") + key
    sock.sendall(bytes((0x10, len(body))) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    began = time.monotonic()
    sock.settimeout(5)
    assert sock.recv(10) == b""  # closed
    assert 1.4 <= time.monotonic() - began <= 3.5


def test_two_accounts_may_use_the_same_client_id(connect, fleet, platform_client):
    a = connect(username=fleet.a_master, client_id="gateway")
    b = connect(username=fleet.b_token, client_id="gateway")
    assert a.connect() and b.connect()
    assert a.subscribe(message_topic(fleet.a)) == 1 and b.subscribe(message_topic(fleet.b)) == 1
    publish(platform_client, message_topic(fleet.a))
    publish(platform_client, message_topic(fleet.b))
    poll(lambda: a.messages and b.messages, timeout=5, every=0.02)
    assert a.topics() == [message_topic(fleet.a)] and b.topics() == [message_topic(fleet.b)]
    assert a.disconnects == [] and b.disconnects == []
    # within one account the same id takes the session over, as MQTT says
    again = connect(username=fleet.a_standard, client_id="gateway")
    assert again.connect()
    poll(lambda: a.disconnects, timeout=5, every=0.02)
    assert a.disconnects[0].value == 0x8E  # session taken over


def test_bytes_that_are_not_mqtt_close_only_their_connection(embedded_broker, connect, fleet, platform_client):
    rng = random.Random(7)
    garbage = [b"GET / HTTP/1.1\r\n\r\n", b"\x10\xff\xff\xff\xff\x7f", b"\x30\x05\x00\x09abc",
               b"\x10\x0c\x00\x04MQTT\x09\x02\x00\x3c\x00\x00"]
    garbage += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(40)]
    for data in garbage:
        with socket.create_connection(("127.0.0.1", embedded_broker.port)) as sock:
            sock.settimeout(3)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(1024):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
    client = connect(username=fleet.a_master)
    assert client.connect() and client.subscribe(message_topic(fleet.a)) == 1
    publish(platform_client, message_topic(fleet.a))
    poll(lambda: client.messages, timeout=5, every=0.02)
    assert client.topics() == [message_topic(fleet.a)]


def test_topics_outside_the_platforms_are_the_accounts_own(connect, fleet, platform_client):
    """As on flespi's broker, a token publishes and subscribes to any topic outside flespi/: each
    account has its own namespace, which no other account (nor the platform's topics) reaches."""
    a_sub = connect(username=fleet.a_standard)
    a_pub = connect(username=fleet.a_master, protocol=paho.MQTTv311)
    b_sub = connect(username=fleet.b_token)
    c_sub = connect(username=fleet.c_token)  # a subaccount has a namespace of its own too
    for client in (a_sub, a_pub, b_sub, c_sub):
        assert client.connect()
    for client in (a_sub, b_sub, c_sub):
        assert client.subscribe("#") == 0x01
    assert a_sub.subscribe("$SYS/#") == 0x87
    assert a_sub.subscribe("flespi,other/#") == 0x87  # mixes the platform's topics with its own
    publish(a_pub, "dispatch/orders", b"o1", retain=True)
    publish(b_sub, "dispatch/orders", b"b-own")
    publish(platform_client, message_topic(fleet.a))  # the platform's topics are not in '#'
    poll(lambda: a_sub.messages and b_sub.messages, timeout=5, every=0.02)
    time.sleep(0.3)
    assert [(m.topic, m.payload) for m in a_sub.messages] == [("dispatch/orders", b"o1")]
    assert [(m.topic, m.payload) for m in b_sub.messages] == [("dispatch/orders", b"b-own")]
    assert c_sub.messages == []
    # the retained message is A's alone
    late_a, late_b = connect(username=fleet.a_master), connect(username=fleet.b_token)
    assert late_a.connect() and late_b.connect()
    assert late_a.subscribe("dispatch/+") == 1 and late_b.subscribe("dispatch/+") == 1
    poll(lambda: late_a.messages, timeout=5, every=0.02)
    time.sleep(0.3)
    assert [(m.topic, m.payload, m.retain) for m in late_a.messages] == [("dispatch/orders", b"o1", True)]
    assert late_b.messages == []


def test_random_packets_after_a_connect_close_only_their_connection(embedded_broker, connect, fleet, platform_client):
    """Packets of every type with random flags and bodies, from a client that logged in (MQTT 3.1.1
    and 5): the broker closes that connection or answers, and goes on serving everyone else."""
    from flespi_site.mqtt.broker import codec

    rng = random.Random(11)
    key = fleet.a_master.encode()
    for attempt in range(60):
        version = rng.choice([4, 5])
        body = (codec.text("MQTT") + bytes((version, 0x82)) + (30).to_bytes(2, "big")
                + (b"\x00" if version == 5 else b"") + codec.text(f"fuzz-{attempt}") + codec.binary(key))
        with socket.create_connection(("127.0.0.1", embedded_broker.port)) as sock:
            sock.settimeout(3)
            sock.sendall(codec.packet(0x10, body))
            assert sock.recv(2)[:1] == b"\x20"
            for _ in range(rng.randrange(1, 6)):
                kind = rng.randrange(1, 16)
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
                if rng.random() < 0.5:  # a plausible start: a packet id, a topic, properties
                    payload = (rng.randrange(1, 5).to_bytes(2, "big") + codec.text(rng.choice(
                        ["flespi/message/gw/devices/+", "#", "a/b", "$share/g/#", "flespi/#", "x/1,2,3"]))
                        + payload)
                try:
                    sock.sendall(codec.packet((kind << 4) | rng.randrange(16), payload))
                except (BrokenPipeError, ConnectionResetError):
                    break  # closed by the broker: a bad packet
            try:
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
            except (TimeoutError, OSError):
                pass
    client = connect(username=fleet.a_master)
    assert client.connect() and client.subscribe(message_topic(fleet.a)) == 1
    publish(platform_client, message_topic(fleet.a))
    poll(lambda: client.messages, timeout=5, every=0.02)
    assert client.topics() == [message_topic(fleet.a)]
    assert "Traceback" not in embedded_broker.log.read_text()
