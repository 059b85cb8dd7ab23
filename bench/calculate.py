"""On-demand calculation benchmark: stored rows to intervals (``analytics.calculation``).

    .venv/bin/python bench/calculate.py [--quick] [--repeat N]

Stores 10^6 realistic messages on one device (20 keys each, as the platform stores them: the
real bus track of tests/data/tracks at 1 Hz with CAN, power and GSM parameters, the device and
reception stamps; the messages of ``bench/ingest.py``), then calculates the trips calculator of
``bench/engine.py`` (an expression selector with merge and gap rules, 5 counters including
``mileage()`` and ``route``) over the first 10^4, 10^5 and 10^6 of them.

Printed per size: messages/s end to end (``calculate_stored``: count, columnar read, engine),
and its parts: the PostgreSQL read (the aggregate queries, executed and fetched), the
conversion into engine columns (parsing the aggregated values, numpy), the engine; the CPU
time of this process and of its PostgreSQL backend (from /proc: unlike wall time it hardly
moves when other work shares the machine); and, for comparison, the path without the columnar
reader (whole bodies decoded into dicts by ``devices.storage.messages_read``, then
``calculate`` over the dicts). Best of ``--repeat`` runs.

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
        stamps.extend(m["timestamp"] for m in batch)
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
            spent = tuple(b - a for a, b in zip(before, self.read(), strict=True))
            if best is None or spent[0] < best[1][0]:
                best = (result, spent)
        assert best is not None
        return best[0], *best[1]


def run(device, calculator, begin: float, end: float, repeat: int) -> dict[str, tuple]:
    from django.db import connections

    from analytics.calculation import calculate_stored, messages_stored
    from analytics.engine import calculate
    from devices import columns, storage

    alias = device.database
    connection = connections[alias]
    connection.ensure_connection()
    clock = Clock(connection.connection.info.backend_pid)
    low, high = round(begin * 1e6), round(end * 1e6)
    names = sorted(calculator.parameters)
    sql, leading = columns.chunk_query(names)

    def sql_only():
        import psycopg

        with psycopg.Cursor(connection.connection) as cursor:
            start = low
            while True:
                cursor.execute(sql, [*leading, device.pk, start, high, columns.CHUNK_ROWS], binary=True)
                count, newest, *_ = cursor.fetchone()
                if count < columns.CHUNK_ROWS:
                    return
                start = newest + 1

    rows = {}
    rows["end to end"] = clock.measure(
        lambda: calculate_stored(device=device, calculator=calculator, begin=begin, end=end), repeat
    )
    rows["PostgreSQL read"] = clock.measure(sql_only, repeat)
    rows["read + conversion"] = clock.measure(
        lambda: messages_stored(device=device, begin=low, end=high, parameters=calculator.parameters), repeat
    )
    messages = rows["read + conversion"][0]
    rows["engine"] = clock.measure(lambda: calculate(messages, calculator), repeat)
    assert rows["engine"][0] == rows["end to end"][0]
    dicts = clock.measure(
        lambda: storage.messages_read(alias=alias, device_ids=[device.pk], begin=low, end=high), 1
    )
    engine_on_dicts = clock.measure(lambda: calculate(dicts[0], calculator), 1)
    assert engine_on_dicts[0] == rows["end to end"][0]
    rows["dicts: messages_read + calculate"] = (
        None,
        *(a + b for a, b in zip(dicts[1:], engine_on_dicts[1:], strict=True)),
    )
    read, conversion = rows["PostgreSQL read"], rows["read + conversion"]
    rows["conversion"] = (None, *(max(b - a, 0.0) for a, b in zip(read[1:], conversion[1:], strict=True)))
    order = ["end to end", "PostgreSQL read", "conversion", "engine", "dicts: messages_read + calculate"]
    return {label: rows[label] for label in order}


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
        print(
            f"\n{'size':>9} {'part':34} {'wall ms':>9} {'msg/s':>11} {'CPU ms: process':>16} {'PostgreSQL':>11}"
        )
        print("-" * 95)
        for n in sizes:
            rows = run(device, calculator, stamps[0], stamps[n - 1], options.repeat)
            intervals = len(rows["end to end"][0])
            for label, (_, wall, cpu, backend) in rows.items():
                print(
                    f"{n:>9,} {label:34} {wall * 1e3:>9.1f} {n / max(wall, 1e-9):>11,.0f} {cpu * 1e3:>16.1f} {backend * 1e3:>11.1f}",
                    flush=True,
                )
            print(f"{'':>9} ({intervals} trips; parameters read: {', '.join(sorted(calculator.parameters))})")
        print(
            "target (issue 8): >= 1,000,000 messages/s per core end to end; "
            f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
    finally:
        fixture.close()
        ingest.vacuum()
    return 0


if __name__ == "__main__":
    sys.exit(main())
