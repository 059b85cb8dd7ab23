"""On-demand calculation benchmark: stored rows to intervals (``analytics.calculation``).

    .venv/bin/python bench/calculate.py [--quick] [--repeat N]

Stores 10^6 realistic messages on one device (20 keys each, as the platform stores them: the
real bus track of tests/data/tracks at 1 Hz with CAN, power and GSM parameters, the device and
reception stamps; the messages of ``bench/ingest.py``), then calculates the trips calculator of
``bench/engine.py`` (an expression selector with merge and gap rules, 5 counters including
``mileage()`` and ``route``) over the first 10^4, 10^5 and 10^6 of them.

Printed per size, first over the rows as stored (no message blocks yet), then after the
device's message blocks are sealed (``analytics.blocks``, as the pump's sealer does; its time is
printed): messages/s end to end (``calculate_stored``: count, read by column, engine), the read
by column alone (blocks, or the parameters cut out of the rows by PostgreSQL), the engine; the
CPU time of this process and of its PostgreSQL backend (from /proc: unlike wall time it hardly
moves when other work shares the machine) and messages per CPU second of both together (the
per-core figure); and, over the rows, the path without the columnar reader (whole bodies decoded
into dicts by ``devices.storage.messages_read``, then ``calculate`` over the dicts). Best of
``--repeat`` runs.

Databases as in ``bench/ingest.py``: ``DATABASE_URL`` (default ``flespi_bench``), a sibling
``<name>_bench`` when the name lacks "bench"; its device is deleted at the end.

Target (issue 8): at least 1,000,000 messages/s per core end to end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ingest  # bench/ingest.py: databases, fixture, messages, CPU meter
from engine import CALCULATORS  # bench/engine.py

SIZES = (10**4, 10**5, 10**6)
CALCULATOR = CALCULATORS["trips (DESIGN 9)"]


def store(device, count: int) -> list[float]:
    """``count`` messages stored on ``device``; returns their timestamps."""
    from devices.services import messages_ingest

    source = ingest.MessageSource(start=1_600_000_000.0)
    stamps: list[float] = []
    while len(stamps) < count:
        batch = source.batch(min(100_000, count - len(stamps)))
        result = messages_ingest(devices=[device], messages=batch, source="rest")
        assert result.accepted == len(batch) and not result.errors, result.errors[:3]
        stamps.extend(message["timestamp"] for message in batch)
    return stamps


class Clock:
    """Wall time, CPU time of this process and of its PostgreSQL backend."""

    def __init__(self, backend_pid: int):
        import psutil

        self.backend = psutil.Process(backend_pid)

    def read(self) -> tuple[float, float, float]:
        times = self.backend.cpu_times()
        return time.perf_counter(), time.process_time(), times.user + times.system

    def measure(self, work, repeat: int):
        """(result, best wall s, its process CPU s, its backend CPU s)."""
        best = None
        for _ in range(repeat):
            before = self.read()
            result = work()
            spent = tuple(ended - started for started, ended in zip(before, self.read(), strict=True))
            if best is None or spent[0] < best[1][0]:
                best = (result, spent)
        assert best is not None
        return best[0], *best[1]


def run(device, calculator, begin: float, end: float, repeat: int, sealed: bool) -> dict[str, tuple]:
    from analytics.calculation import calculate_stored, messages_stored
    from analytics.engine import calculate
    from devices import storage

    alias = device.database
    connection = connections_of(alias)
    clock = Clock(connection.connection.info.backend_pid)
    low, high = round(begin * 1e6), round(end * 1e6)
    where = "blocks" if sealed else "rows"
    rows = {}
    rows[f"end to end ({where})"] = clock.measure(
        lambda: calculate_stored(device=device, calculator=calculator, begin=begin, end=end), repeat
    )
    rows[f"read by column ({where})"] = clock.measure(
        lambda: messages_stored(device=device, begin=low, end=high, parameters=calculator.parameters), repeat
    )
    messages = rows[f"read by column ({where})"][0]
    rows["engine"] = clock.measure(lambda: calculate(messages, calculator), repeat)
    assert rows["engine"][0] == rows[f"end to end ({where})"][0]
    if not sealed:
        dicts = clock.measure(
            lambda: storage.messages_read(alias=alias, device_ids=[device.pk], begin=low, end=high), 1
        )
        engine_on_dicts = clock.measure(lambda: calculate(dicts[0], calculator), 1)
        assert engine_on_dicts[0] == rows[f"end to end ({where})"][0]
        rows["dicts: messages_read + calculate"] = (
            None,
            *(
                reading + calculating
                for reading, calculating in zip(dicts[1:], engine_on_dicts[1:], strict=True)
            ),
        )
    return rows


def connections_of(alias: str):
    from django.db import connections

    connection = connections[alias]
    connection.ensure_connection()
    return connection


def seal(device) -> tuple[int, float, float]:
    """The device's message blocks built (``analytics.blocks.device_seal``, as the pump's sealer
    builds them): (messages sealed, wall s, process CPU s)."""
    from analytics.blocks import device_seal

    wall, cpu = time.perf_counter(), time.process_time()
    sealed = device_seal(alias=device.database, device_id=device.pk)
    return sealed, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="stop at 10^5 messages")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept (default 3)")
    options = parser.parse_args()
    sizes = SIZES[:2] if options.quick else SIZES

    ingest.configure_environment()
    print(f"setting up {os.environ['DATABASE_URL']} (+ _eu_1) ...", flush=True)
    ingest.setup_databases()
    ingest.vacuum()
    from analytics.engine import compile_calculator

    calculator = compile_calculator(CALCULATOR)
    fixture = ingest.Fixture()
    try:
        [device] = fixture.new_devices(1)
        started = time.perf_counter()
        stamps = store(device, max(sizes))
        print(f"stored {len(stamps):,} messages in {time.perf_counter() - started:.0f} s", flush=True)
        ingest.vacuum()  # the visibility map, for the index-only count
        for sealed in (False, True):
            if sealed:
                count, wall, cpu = seal(device)
                print(f"\nsealed {count:,} messages in message blocks in {wall:.1f} s ({cpu:.1f} s CPU of this process)")
            print(
                f"\n{'size':>9} {'part':34} {'wall ms':>9} {'msg/s':>11} {'CPU ms: process':>16} {'PostgreSQL':>11}"
                f" {'msg/s per CPU s':>16}"
            )
            print("-" * 112)
            for size in sizes:
                rows = run(device, calculator, stamps[0], stamps[size - 1], options.repeat, sealed)
                intervals = len(next(iter(rows.values()))[0])
                for label, (_, wall, cpu, backend) in rows.items():
                    print(
                        f"{size:>9,} {label:34} {wall * 1e3:>9.1f} {size / max(wall, 1e-9):>11,.0f}"
                        f" {cpu * 1e3:>16.1f}"
                        f" {backend * 1e3:>11.1f} {size / max(cpu + backend, 1e-9):>16,.0f}",
                        flush=True,
                    )
                print(f"{'':>9} ({intervals} trips; parameters read: {', '.join(sorted(calculator.parameters))})")
        print(
            "target (issue 8): >= 1,000,000 messages/s per core end to end; "
            f"load average now {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
        )
    finally:
        fixture.close()
        ingest.vacuum()
    return 0


if __name__ == "__main__":
    sys.exit(main())
