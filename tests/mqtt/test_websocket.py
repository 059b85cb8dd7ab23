"""MQTT over WebSocket on the platform's broker: mqtt.js (run by node, as flespi's own JavaScript
library and browser dashboards use it) and paho's websocket transport, with the flespi login."""

from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, Subscriber
from tests.support.node import start_node
from tests.support.waiting import poll

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

# Connects the way flespi's JavaScript library does (username "FlespiToken <key>", MQTT 5 over
# WebSocket), subscribes, says so, and prints what arrives as JSON lines until COUNT messages.
MQTT_JS = """
const mqtt = require('mqtt');
const client = mqtt.connect(process.env.URL, {
  username: process.env.USERNAME, password: process.env.PASSWORD || undefined,
  protocolVersion: Number(process.env.VERSION), clean: true, reconnectPeriod: 0, connectTimeout: 10000,
});
let left = Number(process.env.COUNT);
client.on('connect', () => client.subscribe(process.env.FILTER, {qos: 1}, (err, granted) => {
  console.log(JSON.stringify({subscribed: granted.map(g => g.qos)}));
}));
client.on('message', (topic, payload) => {
  console.log(JSON.stringify({topic, payload: payload.toString()}));
  if (--left <= 0) client.end(false, {}, () => process.exit(0));
});
client.on('error', (error) => { console.log(JSON.stringify({error: String(error.message), code: error.code})); process.exit(0); });
setTimeout(() => { console.log(JSON.stringify({timeout: true})); process.exit(0); }, 15000);
"""


def json_lines(process) -> list[dict]:
    """The JSON lines ``process`` prints, as they come (read by a thread)."""
    lines: list[dict] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith("{"):
                lines.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return lines


def platform_publisher(url: str) -> Subscriber:
    publisher = Subscriber(url, login=(PLATFORM_USER, PLATFORM_PASSWORD))
    assert publisher.connect()
    return publisher


@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5"])
def test_mqtt_js_over_websocket_with_the_flespi_login(embedded_broker, fleet, version):
    publisher = platform_publisher(embedded_broker.url)
    node = start_node(MQTT_JS, env={"URL": embedded_broker.ws_url, "USERNAME": f"FlespiToken {fleet.a_master}",
                                    "VERSION": str(version), "FILTER": "flespi/message/gw/devices/+", "COUNT": "2"})
    lines = json_lines(node)
    try:
        poll(lambda: any("subscribed" in line for line in lines), timeout=30, every=0.05)
        for device in (fleet.b, fleet.a, fleet.c):
            publisher.client.publish(f"flespi/message/gw/devices/{device.pk}", device.name.encode(), qos=1)
        assert node.wait(20) == 0, node.stderr.read()
    finally:
        node.kill()
        publisher.close()
    assert lines == [
        {"subscribed": [1]},
        {"topic": f"flespi/message/gw/devices/{fleet.a.pk}", "payload": "a"},
        {"topic": f"flespi/message/gw/devices/{fleet.c.pk}", "payload": "c"},
    ]


def test_mqtt_js_is_refused_with_a_bad_token(embedded_broker):
    node = start_node(MQTT_JS, env={"URL": embedded_broker.ws_url, "USERNAME": "FlespiToken nope", "VERSION": "5",
                                    "FILTER": "flespi/#", "COUNT": "1"})
    node.wait(20)
    lines = [json.loads(line) for line in node.stdout.read().splitlines() if line.startswith("{")]
    assert lines[0]["code"] == 0x87 and "Not authorized" in lines[0]["error"], lines


def test_paho_over_websocket(embedded_broker, fleet):
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:6]}", transport="websockets",
                         protocol=paho.MQTTv5)
    client.ws_set_options(path="/mqtt")
    client.username_pw_set(fleet.a_master)
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("flespi/message/gw/devices/+", qos=1)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.on_message = lambda c, u, m: received.append((m.topic, m.payload))
    client.connect("127.0.0.1", embedded_broker.ws_port)
    client.loop_start()
    publisher = platform_publisher(embedded_broker.url)
    try:
        assert subscribed.wait(10)
        big = b"x" * 200_000  # spans many frames both ways
        for payload in (b"small", big):
            publisher.client.publish(f"flespi/message/gw/devices/{fleet.a.pk}", payload, qos=1).wait_for_publish(5)
        poll(lambda: len(received) >= 2, timeout=10, every=0.02)
        time.sleep(0.2)
    finally:
        client.disconnect()
        client.loop_stop()
        publisher.close()
    assert received == [(f"flespi/message/gw/devices/{fleet.a.pk}", b"small"),
                        (f"flespi/message/gw/devices/{fleet.a.pk}", big)]


def test_the_websocket_port_refuses_plain_http_saying_why(embedded_broker):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{embedded_broker.ws_port}/mqtt", timeout=5)
    assert refused.value.code == 400
    assert "MQTT over WebSocket" in refused.value.read().decode()
