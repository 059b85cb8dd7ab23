"""Benchmark of the shard caches as a calc worker writes them at fleet scale (docs/analytics.md,
"Write-behind"): 1,000 devices spread over 256 shard files, each reporting one message a second;
the change log is drained four times a second (250 devices, about 160 files, one ``batch`` per
file, each file's devices written in one ``messages_replace_many``) and each drained device's
recent messages are read back, as its run does. ``--devices N`` for another fleet size.

Two ways, each for 20 simulated seconds, best of three:

* ``commit each``: every drain commits each file it touched (a cache opened without write-behind);
* ``write-behind``: drains write into the files' open transactions, flushed every 2 s (8 drains).

Prints the cache part of one drain (ms), the flushing per drain (ms) and SQLite commits per
simulated second. Run: ``.venv/bin/python bench/cache_drains.py``. Needs no service.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.fleet.cache import FLUSH_EVERY, ShardCache

SHARDS = 256
DEVICES = 1000
DRAINS_PER_SECOND = 4
SECONDS = 20
START = 1.7e9


def message(stamp: float, second: int) -> dict:
    return {"timestamp": stamp, "position.speed": 40.0 + second % 7, "position.latitude": 52.6 + second * 1e-4,
            "position.longitude": -8.6, "position.altitude": 20.0, "engine.ignition.status": True}


def run(directory: Path, *, write_behind: bool) -> tuple[float, float, float]:
    """(ms per drain, ms of flushing per drain, commits per simulated second)."""
    caches = [ShardCache(directory / f"shard-{shard}.sqlite", shard=f"bench/{shard}", write_behind=write_behind)
              for shard in range(SHARDS)]
    try:
        for device in range(DEVICES):
            caches[device % SHARDS].messages_put(device_id=device, messages=[message(START, 0)])
        for cache in caches:
            cache.flush()
        order = list(range(DEVICES))
        random.Random(1).shuffle(order)
        share = DEVICES // DRAINS_PER_SECOND
        drains, flushing, commits = [], 0.0, 0
        flush_every = round(FLUSH_EVERY * DRAINS_PER_SECOND)
        for second in range(1, SECONDS + 1):
            for part in range(DRAINS_PER_SECOND):
                devices = order[part * share:(part + 1) * share]
                shards = sorted({device % SHARDS for device in devices})
                started = time.perf_counter()
                with contextlib.ExitStack() as stack:
                    for shard in shards:
                        stack.enter_context(caches[shard].batch())
                    stamp = START + second + part / DRAINS_PER_SECOND
                    by_shard: dict[int, dict[int, tuple[float, float, list[dict]]]] = {}
                    for device in devices:  # as a drain writes them: per cache, in one write
                        by_shard.setdefault(device % SHARDS, {})[device] = (stamp, stamp, [message(stamp, second)])
                    for shard, ranges in by_shard.items():
                        caches[shard].messages_replace_many(ranges)
                        caches[shard].position_set(alias="dc", seq=second * DRAINS_PER_SECOND + part, stamp=second)
                drains.append(time.perf_counter() - started)
                if not write_behind:
                    commits += len(shards)
                for device in devices:  # the runs read what was drained
                    caches[device % SHARDS].messages_read(device_id=device, begin=START + second - 5, end=math.inf)
                if write_behind and (second * DRAINS_PER_SECOND + part) % flush_every == 0:
                    started = time.perf_counter()
                    commits += sum(cache.flush() for cache in caches)
                    flushing += time.perf_counter() - started
        return (sum(drains) / len(drains) * 1e3, flushing / len(drains) * 1e3, commits / SECONDS)
    finally:
        for cache in caches:
            cache.close()


def main() -> None:
    global DEVICES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=DEVICES)
    DEVICES = parser.parse_args().devices
    print(f"{DEVICES:,} devices over {SHARDS} shard files, {DRAINS_PER_SECOND} drains a second of "
          f"{DEVICES // DRAINS_PER_SECOND} devices each, {SECONDS} simulated seconds (best of 3)")
    print(f"{'way':<14} {'drain ms':>9} {'flush ms/drain':>15} {'commits/s':>10}")
    for write_behind in (False, True):
        results = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as directory:
                results.append(run(Path(directory), write_behind=write_behind))
        drain, flushing, commits = min(results, key=lambda result: result[0] + result[1])
        print(f"{'write-behind' if write_behind else 'commit each':<14} {drain:>9.1f} {flushing:>15.1f} {commits:>10,.0f}")


if __name__ == "__main__":
    main()
