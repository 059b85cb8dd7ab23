"""The outbox relay: QoS 1 publishes/s from a datacenter's outbox to the broker, and what they cost.

    .venv/bin/python -m devtools.embedded exec -- .venv/bin/python bench/relay.py \\
        [--devices 1000] [--messages 40] [--events 10] [--label relay]

Fills the outbox of the bench datacenter as the platform does, then lets one relay
(``devices.outbox.OutboxRelay``, run as ``manage.py outbox_relay`` runs it: its loop in a thread)
publish all of it to the broker of ``MQTT_URL``; under ``devtools.embedded exec`` with
``MQTT_URL`` unset that is the platform's own broker, which the relay logs in to as the platform
and which checks every delivery against the device's owner. The outbox holds:

- messages: ``--messages`` realistic messages (16 keys, as bench/ingest.py) stored for each of
  ``--devices`` devices with ``devices.services.messages_ingest``, which queues one message row
  per device with their timestamps, and one telemetry row per device (a retained publish for each
  value that changed);
- the devices' ``created`` log events, and ``--events`` interval events per device (as a
  recalculation queues them, through ``devices.storage.outbox_events_write``).

One subscriber in a process of its own (a raw MQTT 3.1.1 client with QoS 1, logged in with the
bench account's token, subscribed to each kind of topic the outbox publishes) counts the
deliveries. Printed: publishes, seconds from the relay's start to the subscriber's last delivery,
publishes/s, the CPU of the relay's process (its loop is all this process does meanwhile), the
broker's, and the PostgreSQL backends' of the bench databases, with the load average: other work
on the machine moves the seconds, hardly the CPU.

``--label`` names the row (to compare builds of the relay). Databases: as bench/ingest.py (a
``<name>_bench`` sibling unless the name holds "bench"); the bench account, its devices and
messages are deleted at the end, and the datacenter's outbox is emptied at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import CpuMeter, MessageSource, configure_environment, setup_databases

ALIAS = "dc_eu_1"
CHUNK = 100  # devices per messages_ingest call (each is one transaction)


def _subscriber(url: str, key: str, filters: list[str], count: int, ready, done) -> None:
    """Subscribe to ``filters`` with QoS 1 and report (deliveries, time of the last) once ``count``
    arrived or nothing came for 30 s."""
    from flespi_site.mqtt.broker import codec
    from flespi_site.mqtt.client import broker_address

    host, port, _tls = broker_address(url)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = codec.text("MQTT") + bytes((codec.MQTT311, 0x82)) + (60).to_bytes(2, "big")
    sock.sendall(codec.packet(codec.CONNECT << 4, body + codec.text(f"bench-relay-{os.getpid()}") + codec.text(key)))
    subscribe = b"".join(codec.text(topic_filter) + b"\x01" for topic_filter in filters)
    sock.sendall(codec.packet((codec.SUBSCRIBE << 4) | 0x02, (1).to_bytes(2, "big") + subscribe))
    buffer, received, last = b"", 0, 0.0
    sock.settimeout(30)
    while received < count:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not data:
            break
        buffer += data
        packets, used = codec.split_packets(buffer, 1 << 24)
        buffer = buffer[used:]
        acks = []
        for first, packet in packets:
            kind = first >> 4
            if kind == codec.CONNACK:
                assert packet[1] == codec.V3_ACCEPTED, f"the subscriber was refused: {packet!r}"
            elif kind == codec.SUBACK:
                assert codec.V3_SUBACK_FAILURE not in packet[2:], f"a subscription was refused: {packet!r}"
                ready.set()
            elif kind == codec.PUBLISH:
                received += 1
                topic_size = int.from_bytes(packet[:2], "big")
                acks.append(codec.ack(codec.PUBACK, int.from_bytes(packet[2 + topic_size:4 + topic_size], "big"),
                                      codec.MQTT311))
        if acks:
            sock.sendall(b"".join(acks))
            last = time.perf_counter()
    done.put((received, last))
    sock.close()


def fill(devices: list, messages: int, events: int) -> None:
    """Queue the outbox rows of the module's docstring."""
    import orjson
    from django.db import transaction

    from devices.services import messages_ingest
    from devices.storage import outbox_events_write
    from flespi_site.mqtt.topics import IntervalEvent, interval_topic

    source = MessageSource(start=1_700_000_000.0)
    batch = source.batch(messages)
    for first in range(0, len(devices), CHUNK):
        messages_ingest(devices=devices[first:first + CHUNK], messages=batch)
    ids, topics, payloads = [], [], []
    for number in range(events):
        begin = 1_700_000_000 + number * 60
        for device in devices:
            ids.append(device.pk)
            topics.append(interval_topic(calc_id=7, device_id=device.pk, event=IntervalEvent.CREATED))
            payloads.append(orjson.dumps({"id": number + 1, "begin": begin, "end": begin + 59, "duration": 59,
                                          "timestamp": begin + 59, "active": False, "speed.max": 42.5}).decode())
    with transaction.atomic(using=ALIAS):
        outbox_events_write(alias=ALIAS, device_ids=ids, topics=topics, payloads=payloads, retains=[False] * len(ids))


def queued() -> tuple[int, int]:
    """(outbox rows, the publishes they make) of the datacenter."""
    from django.db import connections

    from devices.choices import OutboxKind

    with connections[ALIAS].cursor() as cursor:
        cursor.execute(
            "SELECT count(*), coalesce(sum(CASE kind WHEN %s THEN cardinality(stamps) WHEN %s THEN "
            "(SELECT count(*) FROM jsonb_object_keys(payload)) ELSE 1 END), 0) FROM outbox",
            [int(OutboxKind.MESSAGE), int(OutboxKind.TELEMETRY)],
        )
        rows, publishes = cursor.fetchone()
    return rows, int(publishes)


def empty_outbox() -> None:
    from django.db import connections

    with connections[ALIAS].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")


def broker_pid(url: str) -> int | None:
    """The platform's broker serving ``url`` on this machine (as ``devtools.embedded`` starts it)."""
    import psutil

    from flespi_site.mqtt.client import broker_address

    _host, port, _tls = broker_address(url)
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "mqtt_broker" in cmdline and str(port) in cmdline:
            return process.pid
    return None


def cpu_of(pid: int | None) -> float:
    import psutil

    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=40, help="messages stored per device")
    parser.add_argument("--events", type=int, default=10, help="interval events queued per device")
    parser.add_argument("--label", default="relay", help="the row's name")
    args = parser.parse_args()
    configure_environment()
    if not os.environ.get("MQTT_URL"):
        sys.exit("MQTT_URL is not set: run under `python -m devtools.embedded exec --` (the platform's broker)")
    setup_databases()
    import multiprocessing

    from django.conf import settings

    from accounts.choices import AccessType
    from accounts.models import Account
    from accounts.services import account_create, account_delete, token_create
    from devices.outbox import OutboxRelay
    from devices.services import devices_create
    from flespi_site.mqtt.topics import (
        WILDCARD,
        device_log_topic,
        device_telemetry_topic,
        interval_topic,
        message_topic,
        rooted,
    )

    for leftover in Account.objects.filter(name__startswith="bench relay ", parent=None):  # of an interrupted run
        account_delete(account=leftover)
    empty_outbox()
    account = account_create(name=f"bench relay {os.getpid()}")
    try:
        _token, key = token_create(account=account, access_type=AccessType.MASTER, info="bench")
        began = time.perf_counter()
        devices = devices_create(account=account, items=[
            {"name": f"bench {number}", "configuration": {"ident": f"bench-relay-{account.pk}-{number}"}}
            for number in range(args.devices)
        ])
        fill(devices, args.messages, args.events)
        rows, expected = queued()
        print(f"outbox: {rows:,} rows, {expected:,} publishes ({args.devices:,} devices x {args.messages} messages, "
              f"their telemetry and log events, {args.events} interval events each), queued in "
              f"{time.perf_counter() - began:.1f} s; broker {settings.MQTT_URL}", flush=True)

        root = settings.MQTT_TOPIC_ROOT
        filters = [rooted(root=root, topic=topic) for topic in (
            message_topic(device_id=WILDCARD), device_telemetry_topic(device_id=WILDCARD, parameter=WILDCARD),
            device_log_topic(device_id=WILDCARD, event=WILDCARD),
            interval_topic(calc_id=WILDCARD, device_id=WILDCARD, event=WILDCARD),
        )]
        context = multiprocessing.get_context("fork")
        ready, done = context.Event(), context.Queue()
        subscriber = context.Process(target=_subscriber, args=(settings.MQTT_URL, key, filters, expected, ready, done),
                                     daemon=True)
        subscriber.start()
        assert ready.wait(20), "the subscriber did not subscribe"

        relay = OutboxRelay(alias=ALIAS, mqtt_url=settings.MQTT_URL, topic_root=root)
        broker = broker_pid(settings.MQTT_URL)
        backends = CpuMeter([])
        broker_before, own_before = cpu_of(broker), time.process_time()
        started = time.perf_counter()
        loop = threading.Thread(target=relay.run, daemon=True)
        loop.start()
        received, last = done.get(timeout=600)
        relay_cpu, broker_cpu = time.process_time() - own_before, cpu_of(broker) - broker_before
        database_cpu = backends.used(1)[1]
        relay.stop()
        loop.join(20)
        subscriber.join(10)
        seconds = last - started
        left, _ = queued()
        assert received == expected == relay.stats.published, (
            f"{received:,} delivered, {relay.stats.published:,} published of {expected:,}")
        assert left == 0, f"{left} rows left in the outbox"
        print(f"\n{'':<10} {'publishes':>10} {'seconds':>8} {'publishes/s':>12} {'relay CPU':>10} "
              f"{'µs CPU/publish':>15} {'broker CPU':>11} {'PostgreSQL CPU':>15}")
        print(f"{args.label:<10} {expected:>10,} {seconds:>8.2f} {expected / seconds:>12,.0f} "
              f"{relay_cpu / seconds:>10.0%} {relay_cpu / expected * 1e6:>15.1f} "
              f"{'-' if broker is None else f'{broker_cpu / seconds:.0%}':>11} {database_cpu / seconds:>15.0%}")
        print(f"\nCPU as a share of one core over the run; {os.cpu_count()} CPUs, load average now "
              f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}", flush=True)
    finally:
        account_delete(account=account)
        empty_outbox()


if __name__ == "__main__":
    main()
