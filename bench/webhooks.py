"""Webhooks: deliveries/s from one delivery loop to a local receiver, and what they cost.

    .venv/bin/python -m devtools.embedded exec -- .venv/bin/python bench/webhooks.py \\
        [--deliveries 20000] [--webhooks 1,4,16] [--devices 100]

For each number of webhooks W, a bench account gets W webhooks (each on
``flespi/message/gw/devices/+``, the default body, signed) and ``--devices`` devices, and
``deliveries / W`` messages are stored through ``devices.services.messages_ingest`` (the outbox
rows, copied into the webhooks' feed by its trigger, as the platform writes them). Then one
delivery loop (``webhooks.delivery.WebhookDelivery``, as ``manage.py webhook_delivery`` runs it: in
a thread) fans the feed out and sends every event to each webhook, over HTTP/1.1 with kept-alive
connections, to a receiver in a process of its own (a small asyncio server that answers 200 and
counts). Printed per W: deliveries, seconds from the loop's start to the receiver's last request,
deliveries/s, the CPU of the loop's process (a share of one core, and per delivery), the
receiver's and the PostgreSQL backends'.

Each webhook sends its events one request at a time, in order (flespi's first-in-first-out), so
one webhook's rate is bounded by the round trip to its receiver; several webhooks send in
parallel, each in a sender thread. Databases: as bench/ingest.py (a ``<name>_bench`` sibling); the
bench accounts and their webhooks are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import CpuMeter, configure_environment, setup_databases

ALIAS = "dc_eu_1"
T0 = 1_700_000_000


def _receiver(port_out, counter, last, stop) -> None:
    """An HTTP/1.1 server on 127.0.0.1 answering every request 200 (kept alive), counting them."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                counter.value += 1
                last.value = time.perf_counter()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_out.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(serve())


def fill(account, devices: list, webhooks: int, events: int, url: str) -> list:
    """The webhooks, then the messages (``events`` in all, over the devices)."""
    from devices.services import messages_ingest
    from webhooks.services import webhook_create

    hooks = [
        webhook_create(account=account, data={
            "name": f"bench {number}", "triggers": [{"topic": "flespi/message/gw/devices/+"}],
            "configuration": {"uri": f"{url}/hook/{number}"},
        })
        for number in range(webhooks)
    ]
    per_device = events // len(devices)
    for first in range(0, per_device, 100):
        count = min(100, per_device - first)
        messages_ingest(devices=devices, messages=[
            {"timestamp": T0 + first + offset, "position.latitude": 54.7, "position.longitude": 25.3,
             "position.speed": 40 + offset % 30, "engine.ignition.status": True} for offset in range(count)
        ])
    return hooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--webhooks", default="1,4,16", help="numbers of webhooks, one row each")
    parser.add_argument("--devices", type=int, default=100)
    args = parser.parse_args()
    configure_environment()
    os.environ["WEBHOOK_ALLOW"] = "127.0.0.1"  # the receiver is local
    setup_databases()
    import multiprocessing

    import psutil

    from accounts.models import Account
    from accounts.services import account_create, account_delete
    from devices.services import devices_create
    from webhooks.delivery import WebhookDelivery
    from webhooks.services import webhook_delete

    context = multiprocessing.get_context("fork")
    port_out, counter, last, stop = context.Queue(), context.Value("q", 0), context.Value("d", 0.0), context.Event()
    receiver = context.Process(target=_receiver, args=(port_out, counter, last, stop), daemon=True)
    receiver.start()
    url = f"http://127.0.0.1:{port_out.get(timeout=20)}"
    for leftover in Account.objects.filter(name__startswith="bench webhooks ", parent=None):
        for hook in leftover.webhooks.all():
            webhook_delete(webhook=hook)
        account_delete(account=leftover)
    rows = []
    for webhooks in [int(part) for part in args.webhooks.split(",")]:
        account = account_create(name=f"bench webhooks {os.getpid()} {webhooks}")
        hooks = []
        try:
            devices = devices_create(account=account, items=[
                {"name": f"bench {number}", "configuration": {"ident": f"bench-hooks-{account.pk}-{number}"}}
                for number in range(args.devices)
            ])
            events = args.deliveries // webhooks
            hooks = fill(account, devices, webhooks, events, url)
            expected = webhooks * (events // args.devices) * args.devices
            counter.value = 0
            loop = WebhookDelivery(alias=ALIAS, region="eu")
            backends = CpuMeter([])
            receiver_before = sum(psutil.Process(receiver.pid).cpu_times()[:2])
            own_before = time.process_time()
            started = time.perf_counter()
            thread = threading.Thread(target=loop.run, daemon=True)
            thread.start()
            deadline = time.monotonic() + 600
            while counter.value < expected and time.monotonic() < deadline:
                time.sleep(0.01)
            seconds = last.value - started
            own = time.process_time() - own_before
            receiver_cpu = sum(psutil.Process(receiver.pid).cpu_times()[:2]) - receiver_before
            database = backends.used(1)[1]
            while loop.stats.delivered < expected and time.monotonic() < deadline:
                time.sleep(0.01)  # the last answers' marks
            loop.stop()
            thread.join(20)
            assert counter.value == expected == loop.stats.delivered, (
                f"{counter.value:,} received, {loop.stats.delivered:,} delivered of {expected:,}")
            rows.append((webhooks, expected, seconds, own, receiver_cpu, database))
        finally:
            for hook in hooks:
                webhook_delete(webhook=hook)
            account_delete(account=account)
    stop.set()
    receiver.join(5)
    print(f"\n{'webhooks':>8} {'deliveries':>11} {'seconds':>8} {'deliveries/s':>13} {'loop CPU':>9} "
          f"{'µs CPU/delivery':>16} {'receiver CPU':>13} {'PostgreSQL CPU':>15}")
    for webhooks, expected, seconds, own, receiver_cpu, database in rows:
        print(f"{webhooks:>8} {expected:>11,} {seconds:>8.2f} {expected / seconds:>13,.0f} {own / seconds:>9.0%} "
              f"{own / expected * 1e6:>16.1f} {receiver_cpu / seconds:>13.0%} {database / seconds:>15.0%}")
    print(f"\nCPU as a share of one core over the run; {os.cpu_count()} CPUs, load average now "
          f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
