"""Benchmark of calculator chaining in the engine (docs/engine.md, "Calculator chaining"). Prints
a table: for a device of 10^3, 10^4 and 10^5 stored messages (1 Hz, drives and parkings of ten
minutes) and the chain trips -> stops inside trips (a ``calc`` selector), trips -> stops per trip
(a ``calculator`` counter) and trips -> daily summary (``messages_source``), the cost of the
dependent's windowed recalculation after one appended message (the source recalculated first,
the dependent given the union of the message and the source's change), median CPU time of
repeated runs, with the messages and source intervals it read; and a full calculation of the
dependent for comparison.

Run: ``.venv/bin/python bench/chains.py`` (``--quick`` stops at 10^4 messages).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.engine import MemoryStore, Messages, calculate, compile_calculator, intervals_as_messages

T0 = 1_700_000_000.0
SOURCE = 1
TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 120,
                   "min_duration": 60}],
    "counters": [{"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"}],
}
DEPENDENTS = {
    "stops inside trips (calc selector)": {
        "name": "stops",
        "selectors": [{"type": "calc", "calc_id": SOURCE}, {"type": "expression", "expression": "position.speed < 5"}],
        "counters": [{"name": "n", "type": "expression", "expression": "1", "method": "summary"}],
    },
    "trips per hour (calculator counter)": {
        "name": "hours",
        "selectors": [{"type": "datetime", "split": "hour"}],
        "counters": [{"name": "trips", "type": "calculator", "calc_id": SOURCE, "method": "count",
                      "allow_start_before": True, "allow_finish_after": True}],
    },
    "daily summary (messages_source)": {
        "name": "daily",
        "messages_source": {"source": "calculator", "calculator_id": SOURCE},
        "selectors": [{"type": "datetime", "split": "day"}],
        "counters": [{"name": "km", "type": "parameter", "parameter": "km", "method": "summary"}],
    },
}


def synthetic(count: int, seed: int = 1) -> Messages:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(count, dtype=float)
    driving = np.repeat(rng.random(count // 600 + 1) < 0.5, 600)[:count]
    speed = np.where(driving, rng.uniform(10, 90, count), rng.uniform(0, 3, count))
    lat = 50 + np.cumsum(rng.normal(0, 1e-4, count))
    lon = 10 + np.cumsum(rng.normal(0, 1e-4, count))
    return Messages.from_columns(ts, {"position.speed": speed, "position.latitude": lat, "position.longitude": lon})


class Counting:
    """The source's intervals, counting what the dependent reads of them."""

    def __init__(self, store: MemoryStore):
        self.store = store
        self.read = 0

    def read_intervals(self, begin, end):
        found = self.store.read_intervals(begin, end)
        self.read += len(found)
        return found

    def interval_before(self, moment):
        found = self.store.interval_before(moment)
        self.read += found is not None
        return found


def _cpu(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    sizes = [1_000, 10_000] if parser.parse_args().quick else [1_000, 10_000, 100_000]
    trips = compile_calculator(TRIPS)
    print(f"{'dependent':38} {'messages':>9} {'append (ms)':>12} {'read msgs':>10} {'read src':>9} {'full (ms)':>10}")
    for name, config in DEPENDENTS.items():
        dependent = compile_calculator(config)
        for size in sizes:
            messages = synthetic(size + 1)
            head = messages.slice(0, size)
            source_store = MemoryStore(head, calculate(head, trips))
            source_store.set_messages(messages)
            newest = float(messages.timestamps[-1])
            before = {interval["id"]: interval for interval in source_store.intervals}
            diff = source_store.recalculate(trips, dirty_begin=newest, dirty_end=newest)
            source_store.apply(diff)
            rows = [*diff.created, *diff.updated, *diff.deleted,
                    *(before[iv["id"]] for iv in diff.updated if iv["id"] in before)]
            lo = min([newest, *(row["begin"] for row in rows)]) - 1e-3
            hi = max([newest, *(row["end"] for row in rows)]) + 1e-3
            reads_messages = dependent.messages_calc is None
            source_messages = intervals_as_messages(source_store.intervals)
            old_source = MemoryStore([], source_store.intervals)
            stored = calculate(head if reads_messages else intervals_as_messages(before.values()), dependent,
                               sources={SOURCE: list(before.values())})
            counting = Counting(source_store)

            def windowed(stored=stored, dependent=dependent, reads_messages=reads_messages, messages=messages,
                         source_messages=source_messages, counting=counting, lo=lo, hi=hi):
                store = MemoryStore(messages if reads_messages else source_messages, stored)
                counting.read = 0
                return store.recalculate(dependent, dirty_begin=lo, dirty_end=hi, sources={SOURCE: counting})

            cost = _cpu(windowed, 21)
            last = windowed()
            full = _cpu(lambda dependent=dependent, messages=messages, reads_messages=reads_messages,
                        old_source=old_source: calculate(messages if reads_messages else None, dependent,
                                                         sources={SOURCE: old_source}), 5)
            print(f"{name:38} {size:>9,} {cost * 1000:>12.2f} {last.messages_read:>10,} {counting.read:>9,} "
                  f"{full * 1000:>10.2f}")


if __name__ == "__main__":
    main()
