"""What holding many shards costs a calc worker, and how fast a shard taken over is filled.

    .venv/bin/python bench/shards.py [--shards 16,256,1024] [--fill-messages 1000000] [--fill-devices 10]

Databases as in ``bench/ingest.py`` (``DATABASE_URL``, default ``flespi_bench``); Redis of
``REDIS_URL`` (the region ``eu``'s keys are cleared first: run it on a Redis of its own, with no
fleet running). Everything runs in this process, on the real PostgreSQL and Redis.

1. Holding. For each number of shards per region (``CALC_SHARDS``), one ``ShardWorker`` alone in
   the region takes every shard: the first take (fences raised, cache files created, drains
   read), taking them again with the files there, and then the steady costs of one worker per
   step: a balance (heartbeat, placement, renewing every lease), the heartbeat thread's renewal,
   the drain's emptying of its dirty set, and the pump's round (due index, holders, busy marks)
   with nothing due and with one shard due. Milliseconds, mean of 20.
2. Fill. ``--fill-devices`` devices of one shard with ``--fill-messages`` messages in all (the bus
   track at 1 Hz, 16 keys), sealed in message blocks; a worker that takes the shard fills its
   cache with them through ``shard_fill`` (a slice a task), as after a handover: seconds to
   filled, messages/s.

Targets (issue 19): holding 1,024 shards costs a worker no more per step than 16 did per shard
held; a shard of 10,000,000 messages filled within 30 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the platform and tests.support

import ingest  # bench/ingest.py: environment, databases, fixture, messages


def mean_ms(step, rounds: int = 20) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.mean(times) * 1e3


def holding(shards: int) -> dict[str, float]:
    from django.conf import settings

    from analytics.fleet.debounce import Change
    from analytics.fleet.pump import Pump
    from analytics.fleet.worker import ShardWorker
    from tests.support.fleet import forget_region_state

    settings.CALC_SHARDS = shards
    forget_region_state("eu")
    directory = tempfile.mkdtemp(prefix="bench-shards-")
    worker = ShardWorker(region="eu", data_dir=directory, lease_ttl=60, worker_id="bench-holding")
    try:
        started = time.perf_counter()
        worker.rebalance()
        first = time.perf_counter() - started
        assert len(worker.held) == shards, len(worker.held)
        worker.leave()
        started = time.perf_counter()
        worker.rebalance()
        again = time.perf_counter() - started
        pump = Pump(region="eu")
        row = {
            "shards": shards,
            "first take s": first,
            "take again s": again,
            "balance ms": mean_ms(worker.rebalance),
            "renew ms": mean_ms(worker.renew),
            "dirty take ms": mean_ms(worker._dirty_take),
            "pump round idle ms": mean_ms(lambda: (pump.pump_once(), pump._pause())),
        }
        worker.timers.schedule(shard=shards - 1, changes=[Change(1, 1, 1.7e9, 1.7e9, 3600.0)])
        row["pump round, a timer ms"] = mean_ms(lambda: (pump.pump_once(), pump._pause()))
        return row
    finally:
        worker.close(keep_place=False)
        forget_region_state("eu")


def print_holding(rows: list[dict[str, float]]) -> None:
    print("\n1. holding N shards: one worker alone in the region takes all of them")
    keys = ["shards", "first take s", "take again s", "balance ms", "renew ms", "dirty take ms", "pump round idle ms",
            "pump round, a timer ms"]
    print(" ".join(f"{key:>{max(8, len(key))}}" for key in keys))
    print("-" * 120)
    for row in rows:
        print(" ".join(f"{row[key]:>{max(8, len(key))}.{0 if key == 'shards' else 3}f}" for key in keys))


def fill(fixture, messages: int, count: int) -> dict[str, float]:
    from django.conf import settings

    from analytics import blocks
    from analytics.fleet.worker import ShardWorker
    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import messages_ingest
    from tests.support.fleet import forget_region_state

    settings.CALC_SHARDS = 256
    shard, devices = None, []
    while len(devices) < count:
        [device] = fixture.new_devices(1)  # deleted at the end with the fixture's others
        if shard is None:
            shard = device.shard
        if device.shard == shard:
            devices.append(device)
    per_device = messages // count
    started = time.perf_counter()
    for device in devices:
        source = ingest.MessageSource(start=math.floor(time.time()) - per_device - 3600)
        stored = 0
        while stored < per_device:
            batch = source.batch(min(100_000, per_device - stored))
            messages_ingest(devices=[device], messages=batch, source="rest")
            stored += len(batch)
    print(f"stored {per_device * count:,} messages on {count} devices of shard {shard} in"
          f" {time.perf_counter() - started:.0f} s", flush=True)
    ingest.vacuum()  # autovacuum may be off: the sealer's reads would wade through the load's dead rows
    started = time.perf_counter()
    alias = devices[0].database
    for device in devices:
        blocks.device_seal(alias=alias, device_id=device.pk)
    print(f"sealed in message blocks in {time.perf_counter() - started:.0f} s", flush=True)
    ingest.vacuum()
    calculator = calculator_create(account=fixture.account, config={"name": "bench fill", "selectors": [
        {"type": "expression", "expression": "position.speed > 5"}], "update_delay": 3600})
    for device in devices:
        assignment_create(calculator=calculator, device=device)
    forget_region_state("eu")
    directory = tempfile.mkdtemp(prefix="bench-fill-")
    worker = ShardWorker(region="eu", data_dir=directory, lease_ttl=60, worker_id="bench-fill")
    try:
        worker.rebalance()
        started = time.perf_counter()
        slices = 1
        while worker.shard_fill(shard):
            slices += 1
        seconds = time.perf_counter() - started
        cached = sum(len(worker.held[shard].cache.messages_read(device_id=device.pk)) for device in devices)
        assert cached == per_device * count, (cached, per_device * count)
        return {"devices": count, "messages": cached, "seconds": seconds, "messages/s": cached / seconds,
                "slices": slices}
    finally:
        worker.close(keep_place=False)
        Assignment.objects.using(alias).filter(calculator=calculator).delete()
        forget_region_state("eu")


def print_fill(row: dict[str, float]) -> None:
    print(f"\n2. fill: a shard taken over, {row['devices']:.0f} devices with {row['messages']:,.0f} messages in all,"
          " filled from their message blocks a slice (1 s) a task")
    print(f"{'messages':>11} {'seconds':>8} {'messages/s':>11} {'slices':>7}")
    print(f"{row['messages']:>11,.0f} {row['seconds']:>8.1f} {row['messages/s']:>11,.0f} {row['slices']:>7.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="16,256,1024")
    parser.add_argument("--fill-messages", type=int, default=1_000_000)
    parser.add_argument("--fill-devices", type=int, default=10)
    parser.add_argument("--only", default="holding,fill")
    options = parser.parse_args()
    ingest.configure_environment()
    ingest.setup_databases()
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}", flush=True)
    parts = set(options.only.split(","))
    if "holding" in parts:
        print_holding([holding(int(count)) for count in options.shards.split(",")])
    if "fill" in parts:
        fixture = ingest.Fixture()
        try:
            print_fill(fill(fixture, options.fill_messages, options.fill_devices))
        finally:
            fixture.close()
            ingest.vacuum()
    return 0


if __name__ == "__main__":
    sys.exit(main())
