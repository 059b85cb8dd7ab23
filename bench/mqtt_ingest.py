"""MQTT ingestion benchmark: payloads devices publish to ``ingest/<ident>`` on the platform's broker,
to committed rows, with one ingest consumer and with two sharing the broker's ``flespi-ingest``
group.

    .venv/bin/python bench/mqtt_ingest.py [--payloads 20000] [--devices 1000] [--consumers 1,2]

Each payload is one message (a position and a few parameters) of one of ``--devices`` devices,
published QoS 1 by a raw MQTT client with the account's token (100 in flight). The consumers are
real ``manage.py mqtt_ingest --name ...`` processes; the time runs from the first publish to the
moment the datacenter holds every message. Printed: payloads/s. ``BENCH_PROFILE=<file>`` records
the first consumer with py-spy (raw stacks). Databases: as bench/ingest.py (a ``<name>_bench``
sibling).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import configure_environment, setup_databases
from mqtt_access import _connect, publish_qos1

REPO = Path(__file__).resolve().parent.parent


def stored(alias: str, device_ids: list[int]) -> int:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM messages WHERE device_id = ANY(%s)", [device_ids])
        return cursor.fetchone()[0]


def publish(url: str, key: str, topics: list[str], base: int, inflight: int = 100) -> None:
    """Publish one message to each of ``topics``, timestamps from ``base`` on (new rows)."""
    sock = _connect(url, (key, None), f"bench-devices-{os.getpid()}")
    publish_qos1(sock, [
        (topic, json.dumps({"timestamp": base + index, "position.latitude": 52.1, "position.longitude": 4.3,
                            "speed": index % 90, "din": index % 2}).encode())
        for index, topic in enumerate(topics)
    ], inflight=inflight)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payloads", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--consumers", default="1,2")
    args = parser.parse_args()
    configure_environment()
    os.environ.setdefault("MQTT_URL", "mqtt://127.0.0.1:1")
    setup_databases()
    from django.conf import settings

    from accounts.choices import AccessType
    from accounts.models import Account
    from accounts.services import account_create, account_delete, token_create
    from devices.services import device_create
    from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker
    from tests.support.processes import platform_env

    settings.MQTT_PLATFORM_USERNAME, settings.MQTT_PLATFORM_PASSWORD = PLATFORM_USER, PLATFORM_PASSWORD
    for leftover in Account.objects.filter(name="bench-mqtt-ingest", parent=None):
        account_delete(account=leftover)
    account = account_create(name="bench-mqtt-ingest")
    _token, key = token_create(account=account, access_type=AccessType.STANDARD)
    devices = [device_create(account=account, name=f"d{i}", configuration={"ident": f"bmi-{account.pk}-{i}"})
               for i in range(args.devices)]
    alias = devices[0].database
    ids = [device.pk for device in devices]
    print(f"{'consumers':>9} {'payloads':>9} {'seconds':>8} {'payloads/s':>10}", flush=True)
    try:
        for round_, count in enumerate(int(value) for value in args.consumers.split(",")):
            broker = EmbeddedBroker()
            broker.start()
            env = platform_env(MQTT_URL=broker.url, MQTT_PLATFORM_USERNAME=PLATFORM_USER,
                               MQTT_PLATFORM_PASSWORD=PLATFORM_PASSWORD, DATABASE_URL=os.environ["DATABASE_URL"],
                               FLESPI_TOPOLOGY=os.environ["FLESPI_TOPOLOGY"], LOG_LEVEL="WARNING")
            profile = os.environ.get("BENCH_PROFILE")  # py-spy's raw stacks of the first consumer
            consumers = [subprocess.Popen(
                [*(["py-spy", "record", "--format", "raw", "-o", profile, "--"] if profile and number == 0 else []),
                 sys.executable, "manage.py", "mqtt_ingest", "--name", f"c{number}", "--log-every", "3600"],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ) for number in range(count)]
            try:
                time.sleep(4)  # the consumers subscribe
                before = stored(alias, ids)
                topics = [f"ingest/{devices[i % len(devices)].ident}" for i in range(args.payloads)]
                began = time.perf_counter()
                publish(broker.url, key, topics, base=1_700_000_000 + round_ * 10_000_000)
                while stored(alias, ids) - before < args.payloads:
                    if time.perf_counter() - began > 600:
                        raise RuntimeError(f"only {stored(alias, ids) - before} of {args.payloads} stored in 600 s")
                    time.sleep(0.05)
                seconds = time.perf_counter() - began
                print(f"{count:>9} {args.payloads:>9,} {seconds:>8.1f} {args.payloads / seconds:>10,.0f}", flush=True)
            finally:
                for consumer in consumers:
                    consumer.send_signal(signal.SIGINT if profile else signal.SIGTERM)
                for consumer in consumers:
                    consumer.wait(30)
                broker.cleanup()
    finally:
        account_delete(account=account)


if __name__ == "__main__":
    main()
