"""What the debounce timers cost a calc worker's batch cycle (docs/analytics.md, "Debounce").

    .venv/bin/python bench/debounce.py [--assignments 1000] [--shards 256] [--drains 4]
                                       [--cycles 50] [--rounds 3] [--ref GIT_REF]

On the Redis named by ``REDIS_URL`` (db 9 of the machine's by default, never a platform's), in a
region of its own whose keys are deleted afterwards. Needs no database.

One cycle is what a worker holding every shard of a region does with the timers for a batch of
``--assignments`` assignments (one calculator, devices spread over ``--shards`` shards), each
changed once: the change log drained ``--drains`` times (``schedule_many`` of a share of the
changes each), the due shards found (``due_shards``), their timers pumped (``pump_many``, the
per-shard limit of a worker holding every shard), the offers claimed (``claim_many``) and the
claims released (``release_many``), everything on Redis's own clock with no delay, so that every
change is due at once. Each cycle ends with no timer left.

``--ref`` also times the ``analytics/fleet/debounce.py`` of another commit (read with ``git
show``), for a before/after table: ``--ref c521ea7`` is the last version that ran one script per
shard (in a pipeline), where the current one runs one script per call.

Printed per version: microseconds per cycle and per step (median of ``--cycles``, after 5
untimed), script calls per cycle, and what Redis spent per cycle: CPU (``INFO cpu``, the server's
user + sys, so other clients of the same Redis count too) and time in scripts (``INFO
commandstats``, ``evalsha``). The versions take turns for ``--rounds`` rounds; each one's round
with the fastest cycle is printed (on a shared machine the others are noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from analytics.fleet import debounce as current  # noqa: E402
from flespi_site.fleet import region_prefix  # noqa: E402

STEPS = ("schedule", "pump", "claim", "release")


def version_at(ref: str) -> ModuleType:
    """``analytics/fleet/debounce.py`` as it is at the commit ``ref``, imported on its own."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:analytics/fleet/debounce.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"debounce_{ref.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # the dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def redis_spent(client: redis.Redis) -> tuple[float, float, int]:
    """The server's CPU seconds (user + sys), its seconds in EVALSHA and its EVALSHA calls so far."""
    cpu = client.info("cpu")
    evalsha = client.info("commandstats").get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"], evalsha["usec"] / 1e6, int(evalsha["calls"])


def cycle(timers, module: ModuleType, drains: list[dict[int, list]], shards: int) -> dict[str, float]:
    """One batch cycle; seconds per step."""
    took = dict.fromkeys(STEPS, 0.0)
    expected = sum(len(changes) for drain in drains for changes in drain.values())
    began = time.perf_counter()
    for drain in drains:
        timers.schedule_many(drain)
    took["schedule"] = time.perf_counter() - began
    began = time.perf_counter()
    due = timers.due_shards(shards=range(shards))
    # Every due assignment in one batch: the scripts' cost per entry, whatever the fleet's batches hold.
    offers = timers.pump_many(shards=due, limit=max(1, expected), offer_timeout=15.0)
    took["pump"] = time.perf_counter() - began
    began = time.perf_counter()
    claims = timers.claim_many(
        {shard: [(offer.calc_id, offer.device_id) for offer in shard_offers] for shard, shard_offers in offers.items()},
        run_timeout=300.0,
    )
    took["claim"] = time.perf_counter() - began
    began = time.perf_counter()
    outcomes = timers.release_many(claims, ok=True)
    took["release"] = time.perf_counter() - began
    released = sum(len(shard_outcomes) for shard_outcomes in outcomes.values())
    if released != expected:
        raise SystemExit(f"{module.__name__}: {released} of {expected} assignments went round the cycle")
    return took


def measure(client: redis.Redis, module: ModuleType, args: argparse.Namespace) -> dict[str, float]:
    """Median µs per cycle and per step, script calls and Redis's CPU and script time per cycle."""
    region = f"bench{uuid.uuid4().hex[:8]}"
    timers = module.DebounceTimers(client, region=region)
    devices = list(range(1, args.assignments + 1))
    random.Random(1).shuffle(devices)
    share = -(-len(devices) // args.drains)
    drains = []
    for part in range(args.drains):
        drain: dict[int, list] = {}
        for device in devices[part * share:(part + 1) * share]:
            drain.setdefault(device % args.shards, []).append(module.Change(1, device, 1.7e9, 1.7e9 + 1, 0.0))
        drains.append(drain)
    try:
        for _ in range(5):
            cycle(timers, module, drains, args.shards)
        samples = []
        cpu_before, scripts_before, calls_before = redis_spent(client)
        for _ in range(args.cycles):
            samples.append(cycle(timers, module, drains, args.shards))
        cpu_after, scripts_after, calls_after = redis_spent(client)
    finally:
        for key in client.scan_iter(f"{region_prefix(region)}*"):
            client.delete(key)
    result = {step: statistics.median(sample[step] for sample in samples) * 1e6 for step in STEPS}
    result["cycle"] = statistics.median(sum(sample.values()) for sample in samples) * 1e6
    result["calls"] = (calls_after - calls_before) / args.cycles
    result["redis cpu"] = (cpu_after - cpu_before) / args.cycles * 1e6
    result["in scripts"] = (scripts_after - scripts_before) / args.cycles * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignments", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--drains", type=int, default=4, help="schedule_many calls a cycle")
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ref", help="also time analytics/fleet/debounce.py of this commit")
    args = parser.parse_args()
    if min(args.assignments, args.shards, args.drains, args.cycles, args.rounds) < 1:
        parser.error("--assignments, --shards, --drains, --cycles and --rounds must be at least 1")
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"))
    versions = [(args.ref, version_at(args.ref))] if args.ref else []
    versions.append(("current", current))
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, module in versions:
            result = measure(client, module, args)
            if name not in best or result["cycle"] < best[name]["cycle"]:
                best[name] = result
    print(f"{args.assignments:,} assignments over {args.shards} shards, changes in {args.drains} drains, "
          f"median of {args.cycles} cycles, best of {args.rounds} rounds; µs per cycle")
    header = "".join(f"{name:>11}" for name in (*STEPS, "cycle", "calls", "redis cpu", "in scripts"))
    print(f"{'version':<10}{header}")
    for name, result in best.items():
        print(f"{name:<10}" + "".join(f"{result[column]:>11,.0f}" for column in (*STEPS, "cycle", "calls",
                                                                                  "redis cpu", "in scripts")))


if __name__ == "__main__":
    main()
