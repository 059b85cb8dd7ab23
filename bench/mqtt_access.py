"""MQTT access control at scale: what the platform's broker costs as the platform grows, next to a
Mosquitto without any access control (the fastest a broker of this kind gets here).

    .venv/bin/python bench/mqtt_access.py [--devices 100,10000,100000] [--messages 5000] [--inflight 20]

For each number of devices of one account (rows of the control database's ident index,
``DeviceIdent``, which is all the policy reads):

- connect, subscribe: median ms of a token's CONNECT to CONNACK and of
  ``flespi/message/gw/devices/+`` to SUBACK (20 of each);
- delivery: messages/s from the platform's first QoS 1 publish to the subscriber's last receipt,
  ``--messages`` messages spread at random over the account's devices, each checked against the
  device's owner (``--inflight``: the publisher's window of unacknowledged messages). The
  publisher and the subscriber are raw MQTT 3.1.1 clients in two processes, so that the brokers
  are what is measured;
- cold: the same for one message to each of up to 20,000 devices right after the broker started
  (every owner is a cache miss: the lookups the broker batches per read);
- changes: ms for the platform to create 200 devices, to delete one, to move one to a
  subaccount, to create and to disable a token, with that many devices already there: what the broker adds to them is nothing (it asks
  when a packet needs to know).

Mosquitto (anonymous, no access control, a plain ``mosquitto`` binary) gets the same delivery
measurement when installed. Databases: as bench/ingest.py (a ``<name>_bench`` sibling).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import configure_environment, setup_databases

COLD_MAX = 20_000


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _packet(first: int, body: bytes) -> bytes:
    from flespi_site.mqtt.broker import codec

    return bytes((first,)) + codec.varint(len(body)) + body


def _connect(url: str, login: tuple[str | None, str | None] | None, client_id: str):
    """A raw MQTT 3.1.1 connection (a socket and its CONNACK read): the bench's clients must cost
    less than the brokers they measure, which paho in one Python process does not."""
    import socket

    from flespi_site.mqtt.broker import codec
    from flespi_site.mqtt.client import broker_address

    host, port, _tls = broker_address(url)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    username, password = login or (None, None)
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = codec.text("MQTT") + bytes((4, flags)) + (60).to_bytes(2, "big") + codec.text(client_id)
    body += (codec.text(username) if username else b"") + (codec.text(password) if password else b"")
    sock.sendall(_packet(0x10, body))
    answer = sock.recv(4)
    assert answer[:2] == b"\x20\x02" and answer[3] == 0, f"refused: {answer!r}"
    return sock


def _subscriber(url: str, login, count: int, ready, done) -> None:
    """Subscribe to every device's messages, acknowledge, and report when ``count`` arrived."""
    from flespi_site.mqtt.broker import codec

    sock = _connect(url, login, f"bench-sub-{os.getpid()}")
    sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + codec.text("flespi/message/gw/devices/+") + b"\x01"))
    buffer = b""
    while True:
        buffer += sock.recv(65536)
        packets, used = codec.split_packets(buffer, 1 << 24)
        buffer = buffer[used:]
        if any(first >> 4 == codec.SUBACK for first, _body in packets):
            ready.set()
            break
    received, acks = 0, []
    while received < count:
        data = sock.recv(1 << 20)
        if not data:
            break
        buffer += data
        packets, used = codec.split_packets(buffer, 1 << 24)
        buffer = buffer[used:]
        for first, body in packets:
            if first >> 4 == codec.PUBLISH:
                received += 1
                if (first >> 1) & 3:
                    topic_size = int.from_bytes(body[:2], "big")
                    acks.append(b"\x40\x02" + body[2 + topic_size:4 + topic_size])
        if acks:
            sock.sendall(b"".join(acks))
            acks = []
    done.put((received, time.perf_counter()))
    sock.close()


def publish_qos1(sock, messages: list[tuple[str, bytes]], *, inflight: int) -> None:
    """Publish ``messages`` (topic, payload) at QoS 1 on a raw connection, ``inflight`` of them
    unacknowledged at most; returns when every one is acknowledged."""
    from flespi_site.mqtt.broker import codec

    packets = [_packet(0x32, codec.text(topic) + ((index % 65535) + 1).to_bytes(2, "big") + payload)
               for index, (topic, payload) in enumerate(messages)]
    sent = acked = 0
    buffer = b""
    while acked < len(packets):
        if sent < len(packets) and sent - acked < inflight:
            upto = min(len(packets), acked + inflight)
            sock.sendall(b"".join(packets[sent:upto]))
            sent = upto
        buffer += sock.recv(1 << 20)
        acks, used = codec.split_packets(buffer, 1 << 24)
        buffer = buffer[used:]
        acked += sum(1 for first, _body in acks if first >> 4 == codec.PUBACK)


def deliver(url: str, login: tuple[str, str] | tuple[None, None], platform: tuple[str, str] | None,
            topics: list[str], inflight: int) -> float:
    """Messages/s of QoS 1 publishes of ``topics`` (``inflight`` unacknowledged at most) to a
    subscriber of every device's messages, in a process of its own."""
    import multiprocessing


    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Queue()
    subscriber = context.Process(target=_subscriber, args=(url, login, len(topics), ready, done), daemon=True)
    subscriber.start()
    assert ready.wait(20), "the subscriber did not subscribe"
    sock = _connect(url, platform, f"bench-pub-{os.getpid()}")
    began = time.perf_counter()
    publish_qos1(sock, [(topic, b"{}") for topic in topics], inflight=inflight)
    received, finished = done.get(timeout=float(os.environ.get("BENCH_WAIT", "300")))
    subscriber.join(10)
    sock.close()
    assert received == len(topics), f"{received} of {len(topics)} delivered"
    return len(topics) / (finished - began)


def handshakes(url: str, key: str) -> tuple[float, float]:
    from tests.support.mqtt import Subscriber

    connects, subscribes = [], []
    for _ in range(20):
        client = Subscriber(url, login=(key, ""))
        began = time.perf_counter()
        assert client.connect(), f"refused: {client.connack}"
        connects.append(time.perf_counter() - began)
        began = time.perf_counter()
        assert client.subscribe("flespi/message/gw/devices/+") != 128
        subscribes.append(time.perf_counter() - began)
        client.close()
    return median_ms(connects), median_ms(subscribes)


def make_account(count: int):
    from accounts.choices import AccessType
    from accounts.services import account_create, token_create
    from devices.models import DeviceIdent

    account = account_create(name=f"bench-{count}")
    base = 10**12 + account.pk * 10**6
    DeviceIdent.objects.bulk_create(
        [DeviceIdent(region="eu", ident=f"b{account.pk}-{offset}", device_id=base + offset, account_id=account.pk)
         for offset in range(count)], batch_size=5000,
    )
    _token, key = token_create(account=account, access_type=AccessType.STANDARD)
    return account, key, [base + offset for offset in range(count)]


def forget(account) -> None:
    from accounts.services import account_delete
    from devices.models import Device, DeviceIdent

    DeviceIdent.objects.filter(account_id=account.pk).delete()
    Device.objects.using("dc_eu_1").filter(account_id=account.pk).delete()
    account_delete(account=account)


def changes(account) -> dict[str, float]:
    """ms of the platform's changes that used to be pushed to the broker."""
    from accounts.choices import AccessType
    from accounts.models import Token
    from accounts.services import account_create, token_create, token_update
    from devices.services import device_create, device_delete, device_update

    began = time.perf_counter()
    made = [device_create(account=account, name=f"n{index}", configuration={"ident": f"new-{account.pk}-{index}"})
            for index in range(200)]
    created = time.perf_counter() - began
    began = time.perf_counter()
    device_delete(device=made[0])
    deleted = time.perf_counter() - began
    child = account_create(name=f"bench-child-{account.pk}", parent=account)
    began = time.perf_counter()
    device_update(device=made[1], account=account, data={"account_id": child.pk})
    moved = time.perf_counter() - began
    began = time.perf_counter()
    token, _key = token_create(account=account, access_type=AccessType.STANDARD)
    token_made = time.perf_counter() - began
    began = time.perf_counter()
    token_update(token=Token.objects.get(pk=token.pk), data={"enabled": False})
    disabled = time.perf_counter() - began
    return {"create 200": created * 1000, "delete 1": deleted * 1000, "move 1": moved * 1000,
            "token": token_made * 1000, "disable": disabled * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="100,10000,100000")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=20)
    args = parser.parse_args()
    configure_environment()
    os.environ.setdefault("MQTT_URL", "mqtt://127.0.0.1:1")  # unused: each broker is the bench's own
    setup_databases()
    from django.conf import settings

    from accounts.models import Account
    from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker, PrivateBroker

    settings.MQTT_PLATFORM_USERNAME, settings.MQTT_PLATFORM_PASSWORD = PLATFORM_USER, PLATFORM_PASSWORD
    for leftover in Account.objects.filter(name__startswith="bench-", parent=None):  # of an interrupted run
        forget(leftover)
    counts = [int(count) for count in args.devices.split(",")]
    print(f"{'broker':<10} {'devices':>8} {'connect ms':>10} {'subscribe ms':>12} {'delivery msg/s':>14} "
          f"{'cold msg/s':>10} {'create 200 ms':>13} {'delete ms':>9} {'move ms':>7} {'token ms':>8} {'disable ms':>10}",
          flush=True)
    platform = (PLATFORM_USER, PLATFORM_PASSWORD)
    for count in counts:
        account, key, devices = make_account(count)
        try:
            broker = EmbeddedBroker()
            broker.start()
            try:
                cold = devices if len(devices) <= COLD_MAX else random.sample(devices, COLD_MAX)
                cold_rate = deliver(broker.url, (key, None), platform,
                                    [f"flespi/message/gw/devices/{device}" for device in cold], args.inflight)
                connect, subscribe = handshakes(broker.url, key)
                topics = [f"flespi/message/gw/devices/{random.choice(devices)}" for _ in range(args.messages)]
                rate = deliver(broker.url, (key, None), platform, topics, args.inflight)
            finally:
                broker.cleanup()
            changed = changes(account)
            print(f"{'platform':<10} {count:>8,} {connect:>10.1f} {subscribe:>12.1f} {rate:>14,.0f} "
                  f"{cold_rate:>10,.0f} {changed['create 200']:>13,.0f} {changed['delete 1']:>9.1f} {changed['move 1']:>7.1f} "
                  f"{changed['token']:>8.1f} {changed['disable']:>10.1f}", flush=True)
        finally:
            forget(account)
    if PrivateBroker.available():
        broker = PrivateBroker()
        broker.start()
        try:
            topics = [f"flespi/message/gw/devices/{random.randrange(1000)}" for _ in range(args.messages)]
            rate = deliver(broker.url, (None, None), None, topics, args.inflight)
        finally:
            broker.cleanup()
        print(f"{'mosquitto':<10} {'-':>8} {'-':>10} {'-':>12} {rate:>14,.0f}   (anonymous: no access control)",
              flush=True)


if __name__ == "__main__":
    main()
