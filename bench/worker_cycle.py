"""The calc worker's own cost per message, alone on the machine: a ``ShardWorker`` in this process.

    .venv/bin/python bench/worker_cycle.py [--devices 1000] [--phase 100] [--cycles 40] [--trip 0] [--profile FILE]

Databases and Redis as in ``bench/fleet.py`` (``DATABASE_URL``, ``REDIS_URL``; run it on a Redis of
its own: the region's keys are cleared first). No fleet process runs: this process holds every
shard of the region, its caches in a temporary directory.

``--devices`` devices are assigned to the trips calculator of ``bench/fleet.py`` (``update_delay``
1 s, every message extends the open trip), each with ``--trip`` moving messages already, one a
second up to now (its open trip's length when the cycles begin). Then, ``--cycles`` times, each
device of a phase of ``--phase`` devices gets one moving message (``devices.services.messages_ingest``,
not timed; the positions follow the real track of ``bench/ingest.py``), and
the worker does what the fleet does for it: a drain of the change log (``changes_drain``) and a
batch of the phase's runs (``batch_run``), timed each, in wall time and in this process's CPU time.
PostgreSQL and Redis are other processes: their time is in the wall time only.

Printed: µs per message of the drain and per recalculation of the run, wall and CPU, the median
over the cycles (the first message of each device, which opens its trip, left out), and of the
first and the last tenth of them (the trips grow all along: ``--devices 100 --phase 100 --cycles
320`` ends with trips of 300 messages; ``--trip 3600`` measures trips of an hour). ``--profile FILE`` writes a cProfile of the timed cycles
(``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: ingest, fleet

import ingest  # bench/ingest.py: environment, databases, fixture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--phase", type=int, default=100, help="devices per cycle (one batch)")
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--trip", type=int, default=0, help="messages in each device's open trip before the cycles")
    parser.add_argument("--profile", type=Path, default=None)
    options = parser.parse_args()

    ingest.configure_environment()
    ingest.setup_databases()
    import fleet as fleet_bench  # bench/fleet.py, once Django is set up
    from django.conf import settings

    from analytics.fleet.worker import ShardWorker
    from devices.services import messages_ingest
    from tests.support.fleet import forget_region_state

    forget_region_state("eu")
    fixture = ingest.Fixture()
    directory = Path(tempfile.mkdtemp(prefix="bench-cycle-"))
    worker = ShardWorker(region="eu", worker_id=f"cycle-{os.getpid()}", data_dir=directory, lease_ttl=120)
    positions = ingest.track_positions()

    def moving(number: int, stamp: float) -> dict:
        position = positions[number % len(positions)]
        return {"timestamp": round(stamp, 3), "position.speed": 40.0 + number % 7,
                "position.latitude": position["position.latitude"],
                "position.longitude": position["position.longitude"],
                "position.altitude": 20.0, "engine.ignition.status": True}

    try:
        devices = fixture.new_devices(options.devices)
        if options.trip:
            started = time.time() - options.trip
            trip = [moving(number, started + number) for number in range(options.trip)]
            for device in devices:
                messages_ingest(devices=[device], messages=trip)
        calculator = fleet_bench.assign(fixture.account, devices, fleet_bench.trips(1))
        while len(worker.held) < settings.CALC_SHARDS:
            worker.rebalance()
        for shard in sorted(worker.held):
            worker.requests_schedule(shard)
        pairs = {device.pk: (device.shard, (calculator.pk, device.pk)) for device in devices}
        by_shard: dict[int, list] = {}
        for shard, pair in pairs.values():
            by_shard.setdefault(shard, []).append(pair)
        worker.batch_run(by_shard)  # the first calculation of every assignment
        worker.caches_flush(older_than=0)
        phases = [devices[start:start + options.phase] for start in range(0, len(devices), options.phase)]
        # Left out of the medians: the first message of each device (its trip opens: a window
        # recalculation, not an extension) and the cycle after (the caches settle).
        warm = len(phases) + 1
        drains, runs = [], []
        profiler = cProfile.Profile() if options.profile else None
        print(f"cycles: {options.cycles} of {options.phase} devices (pid {os.getpid()})", flush=True)
        stamp = time.time()
        for cycle in range(options.cycles):
            group = phases[cycle % len(phases)]
            stamp = max(stamp + 0.001, time.time())
            messages_ingest(devices=group, messages=[moving(options.trip + cycle, stamp)])
            batch: dict[int, list] = {}
            for device in group:
                shard, pair = pairs[device.pk]
                batch.setdefault(shard, []).append(pair)
            timed = cycle >= warm
            if profiler is not None and timed:
                profiler.enable()
            wall, cpu = time.perf_counter(), time.process_time()
            taken = worker.changes_drain()
            drain_wall, drain_cpu = time.perf_counter() - wall, time.process_time() - cpu
            wall, cpu = time.perf_counter(), time.process_time()
            stats = worker.batch_run(batch)
            run_wall, run_cpu = time.perf_counter() - wall, time.process_time() - cpu
            if profiler is not None:
                profiler.disable()
            if taken < len(group) or stats.assignments != len(group):
                raise RuntimeError(f"cycle {cycle}: drained {taken}, ran {stats.assignments} of {len(group)}")
            if timed:
                drains.append((drain_wall / len(group), drain_cpu / len(group)))
                runs.append((run_wall / len(group), run_cpu / len(group)))
            if cycle % 10 == 9:
                worker.caches_flush(older_than=0)  # as the worker's flush every few seconds does
                worker.renew()  # the leases outlive a long run (writers mark the holder's shards dirty)
        if profiler is not None:
            profiler.dump_stats(options.profile)

        def median(values: list[tuple[float, float]], index: int) -> str:
            return f"{statistics.median(value[index] for value in values) * 1e6:,.0f}"

        print(f"\nthe worker alone: {options.devices:,} devices, batches of {options.phase}, "
              f"{len(runs)} cycles timed (medians), trips of {options.trip:,} messages at the start")
        print(f"{'':26} {'wall µs':>9} {'CPU µs':>9}")
        print(f"{'drain, per message':26} {median(drains, 0):>9} {median(drains, 1):>9}")
        print(f"{'run, per recalculation':26} {median(runs, 0):>9} {median(runs, 1):>9}")
        if len(runs) >= 20:  # the trips grow all along: the first and the last tenth of the cycles
            tenth = len(runs) // 10
            for label, part in (("first", slice(0, tenth)), ("last", slice(-tenth, None))):
                print(f"{f'run, {label} tenth':26} {median(runs[part], 0):>9} {median(runs[part], 1):>9}")
        fleet_bench.calculator_remove(calculator)
    finally:
        worker.close(keep_place=False)
        fixture.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
