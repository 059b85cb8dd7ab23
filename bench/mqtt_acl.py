"""MQTT access control benchmark: how the check (policy + broker) scales with the devices of an
account.

    .venv/bin/python bench/mqtt_acl.py [--devices 1,1000,10000] [--messages 2000]

For each broker the platform can start (the embedded amqtt broker with the platform's plugins;
Mosquitto with dynamic security, when installed) and each number of devices of one account:

- sync: Mosquitto only, ``dynsec_reconcile`` from an empty broker (roles, ACLs, the token's client);
- connect: the median time of a token's CONNECT to CONNACK (20 connects);
- subscribe: the median time of ``flespi/message/gw/devices/+`` to SUBACK (20 subscriptions);
- delivery: messages/s from the platform's first QoS 1 publish to the subscriber's last receipt,
  ``--messages`` messages spread over the account's devices (each delivery is checked).

The devices are rows of the control database's ident index (``DeviceIdent``), which is all the
policy reads; no datacenter rows are made. Databases: as bench/ingest.py (``DATABASE_URL``, a
``<name>_bench`` sibling of a database without "bench" in its name).
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


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure(broker_url: str, key: str, password: str, device_ids: list[int], messages: int) -> tuple[float, float, float]:
    from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, Subscriber

    connects, subscribes = [], []
    for _ in range(20):
        client = Subscriber(broker_url, login=(key, password))
        began = time.perf_counter()
        assert client.connect(), f"refused: {client.connack}"
        connects.append(time.perf_counter() - began)
        began = time.perf_counter()
        assert client.subscribe("flespi/message/gw/devices/+") != 128
        subscribes.append(time.perf_counter() - began)
        client.close()
    subscriber = Subscriber(broker_url, login=(key, password))
    assert subscriber.connect() and subscriber.subscribe("flespi/message/gw/devices/+") != 128
    publisher = Subscriber(broker_url, login=(PLATFORM_USER, PLATFORM_PASSWORD))
    assert publisher.connect()
    targets = [random.choice(device_ids) for _ in range(messages)]
    began = time.perf_counter()
    infos = [
        publisher.client.publish(f"flespi/message/gw/devices/{device_id}", b"{}", qos=1) for device_id in targets
    ]
    for info in infos:
        info.wait_for_publish(60)
    received = subscriber.wait_for(messages, timeout=float(os.environ.get("BENCH_WAIT", "300")))
    elapsed = time.perf_counter() - began
    assert len(received) == messages, f"{len(received)} of {messages} delivered"
    subscriber.close()
    publisher.close()
    return median_ms(connects), median_ms(subscribes), messages / elapsed


def make_account(count: int):
    from accounts.choices import AccessType
    from accounts.services import account_create, token_create
    from devices.models import DeviceIdent

    account = account_create(name=f"bench-{count}")
    base = 10**12 + account.pk * 10**6
    DeviceIdent.objects.bulk_create(
        [DeviceIdent(region="eu", ident=f"b{account.pk}-{offset}", device_id=base + offset,
                     account_id=account.pk)
         for offset in range(count)], batch_size=5000,
    )
    _token, key = token_create(account=account, access_type=AccessType.STANDARD)
    return account, key, [base + offset for offset in range(count)]


def forget(account) -> None:
    from accounts.services import account_delete
    from devices.models import DeviceIdent

    DeviceIdent.objects.filter(account_id=account.pk).delete()
    account_delete(account=account)


def report(kind: str, count: int, sync: float | None, connect: float, subscribe: float, rate: float) -> None:
    print(f"{kind:<10} {count:>8,} {'-' if sync is None else f'{sync:.1f}':>8} {connect:>11.1f} "
          f"{subscribe:>13.1f} {rate:>15,.0f}", flush=True)


def run_embedded(counts: list[int], messages: int, report) -> None:
    from django.conf import settings

    from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, EmbeddedBroker

    settings.MQTT_PLATFORM_USERNAME, settings.MQTT_PLATFORM_PASSWORD = PLATFORM_USER, PLATFORM_PASSWORD
    broker = EmbeddedBroker()
    broker.start()
    try:
        for count in counts:
            account, key, devices = make_account(count)
            try:
                report("amqtt", count, None, *measure(broker.url, key, "", devices, messages))
            finally:
                forget(account)
    finally:
        broker.cleanup()


def run_mosquitto(counts: list[int], messages: int, report) -> None:
    import dataclasses

    from django.conf import settings

    from accounts import mqtt_dynsec
    from tests.support.mqtt import PLATFORM_PASSWORD, PLATFORM_USER, DynsecMosquitto

    if not DynsecMosquitto.available():
        return
    for count in counts:
        broker = DynsecMosquitto()
        broker.start()
        settings.MQTT_PLATFORM_USERNAME, settings.MQTT_PLATFORM_PASSWORD = PLATFORM_USER, PLATFORM_PASSWORD
        settings.MQTT_DYNSEC = True
        settings.TOPOLOGY = dataclasses.replace(settings.TOPOLOGY, regions=tuple(
            dataclasses.replace(region, mqtt_url=broker.url) for region in settings.TOPOLOGY.regions))
        try:
            account, key, devices = make_account(count)  # the token's client is made here
            try:
                began = time.perf_counter()
                mqtt_dynsec.dynsec_reconcile(url=broker.url, regions=["eu"])
                sync = time.perf_counter() - began
                report("mosquitto", count, sync, *measure(broker.url, key, key, devices, messages))
            finally:
                settings.MQTT_DYNSEC = False
                forget(account)
        finally:
            for control in mqtt_dynsec._controls.values():
                control.close()
            mqtt_dynsec._controls.clear()
            broker.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,1000,10000")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--broker", choices=["amqtt", "mosquitto", "both"], default="both")
    args = parser.parse_args()
    configure_environment()
    os.environ.setdefault("MQTT_URL", "mqtt://127.0.0.1:1")  # unused: each broker is the bench's own
    setup_databases()
    counts = [int(count) for count in args.devices.split(",")]
    from accounts.models import Account

    for leftover in Account.objects.filter(name__startswith="bench-", parent=None):  # of an interrupted run
        forget(leftover)
    print(f"{'broker':<10} {'devices':>8} {'sync s':>8} {'connect ms':>11} {'subscribe ms':>13} {'delivery msg/s':>15}",
          flush=True)
    for run in ([] if args.broker == "mosquitto" else [run_embedded]) + ([] if args.broker == "amqtt" else [run_mosquitto]):
        run(counts, args.messages, report)


if __name__ == "__main__":
    main()
