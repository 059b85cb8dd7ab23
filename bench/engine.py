"""Benchmark of the analytics engine (DESIGN 9). Prints a table:

* messages/s of a full calculation over columnar messages, for calculators of increasing
  complexity on 10^4, 10^5 and 10^6 messages (best of a few runs, one core);
* the cost of the windowed recalculation after one appended message, and after one late
  message in the middle, with 10^3 and 10^6 stored messages (median CPU time of repeated runs),
  and how many messages the appended one's recalculation read.

Run: ``.venv/bin/python bench/engine.py`` (``--quick`` stops at 10^5 messages).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.engine import MemoryStore, Messages, calculate, compile_calculator

T0 = 1_700_000_000.0

TRIPS_SELECTOR = {
    "type": "expression",
    "expression": "position.speed > 5",
    "merge_unknown": True,
    "max_messages_time_diff": 300,
    "min_active": 60,
    "max_inactive": 120,
    "min_duration": 60,
}
FIVE_COUNTERS = [
    {"name": "mileage", "type": "expression", "expression": "mileage()", "method": "summary"},
    {"name": "route", "type": "route"},
    {"name": "max_speed", "type": "parameter", "parameter": "position.speed", "method": "maximum"},
    {"name": "avg_speed", "type": "parameter", "parameter": "position.speed", "method": "average"},
    {"name": "moving", "type": "expression", "expression": "position.speed > 10", "method": "duration"},
]

CALCULATORS = {
    "selector only": {
        "name": "on",
        "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    },
    "trips (DESIGN 9)": {"name": "trips", "selectors": [TRIPS_SELECTOR], "counters": FIVE_COUNTERS},
    "trips x day, 9 counters": {
        "name": "daily trips",
        "timezone": "Europe/Berlin",
        "validate_message": "$position.speed < 300",
        "selectors": [TRIPS_SELECTOR, {"type": "datetime", "split": "day"}],
        "counters": [
            *FIVE_COUNTERS,
            {"name": "fuel", "type": "expression", "expression": "fuel.level", "method": "difference"},
            {"name": "km_today", "type": "accumulator", "counter": "mileage", "reset_interval": "day"},
            {
                "name": "speed_avg",
                "type": "interval",
                "expression": "if(duration > 0, mileage * 3600 / duration, 0)",
            },
            {"name": "start", "type": "datetime", "interval": "begin", "format": "%H:%M"},
        ],
    },
    "geofence (64-point polygon)": {
        "name": "visits",
        "selectors": [
            {
                "type": "geofence",
                "merge_unknown": True,
                "min_duration": 30,
                "geofences": [
                    {
                        "type": "polygon",
                        "name": "zone",
                        "path": [
                            {"lat": 50.0 + 0.02 * np.cos(angle), "lon": 10.0 + 0.03 * np.sin(angle)}
                            for angle in np.linspace(0, 2 * np.pi, 64, endpoint=False).tolist()
                        ],
                    },
                    {
                        "type": "circle",
                        "name": "depot",
                        "center": {"lat": 50.01, "lon": 10.01},
                        "radius": 0.5,
                    },
                ],
            }
        ],
        "counters": [FIVE_COUNTERS[0], FIVE_COUNTERS[2], {"name": "where", "type": "geofence"}],
    },
}


def synthetic(count: int, seed: int = 7) -> Messages:
    """A vehicle at 1 Hz: trips and parkings of 5 to 30 minutes, GPS noise, a few messages
    without speed, a fuel level."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(300, 1800, count // 300 + 2)
    driving = np.repeat(np.arange(len(lengths)) % 2 == 0, lengths)[:count]
    ts = T0 + np.arange(count, dtype=np.float64)
    speed = np.where(driving, rng.uniform(8, 90, count), rng.uniform(0, 4, count))
    speed[rng.random(count) < 0.01] = np.nan  # absent: the selector's state is unknown
    step = np.where(driving, 2e-4, 1e-6)
    lat = 50.0 + np.cumsum(rng.normal(0, 1, count) * step)
    lon = 10.0 + np.cumsum(rng.normal(0, 1, count) * step)
    fuel = 60.0 - np.cumsum(np.where(driving, 0.0005, 0.0))
    return Messages.from_columns(
        ts,
        {
            "position.speed": speed,
            "position.latitude": lat,
            "position.longitude": lon,
            "fuel.level": fuel,
        },
    )


def full_rate(calc, messages: Messages, repeat: int) -> tuple[float, int]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = calculate(messages, calc)
        best = min(best, time.perf_counter() - started)
    return len(messages) / best, len(result)


def recalc_cost(calc, stream: Messages, stored: int, where: str, repeat: int) -> tuple[float, int]:
    """Median seconds of one recalculation after one message, with ``stored`` messages before,
    and how many messages it read (the cost that does not depend on the machine's load).
    Every size uses the same tail of one stream, so an appended message meets the same trip;
    late messages go to ``repeat`` places spread over the middle half of the history."""
    history = stream.slice(len(stream) - stored - 1, len(stream))
    before = history.slice(0, stored)
    store = MemoryStore(before, list(calculate(before, calc)))
    now = float(history.timestamps[-1])
    times = []
    read = 0
    places = np.linspace(stored // 4, 3 * stored // 4, repeat).astype(int).tolist()
    store.set_messages(history)  # warm-up: the first run pays for caches that later runs share
    store.recalculate(calc, dirty_begin=now, dirty_end=now, now=now)
    for attempt in range(repeat):
        if where == "append":
            after = history
            t_new = float(history.timestamps[-1])
        else:
            mid = places[attempt]
            t_new = float(before.timestamps[mid]) + 0.5
            extra = Messages.from_columns(
                [t_new],
                {"position.speed": [120.0], "position.latitude": [50.0], "position.longitude": [10.0]},
            )
            after = Messages.concat([before.slice(0, mid + 1), extra, before.slice(mid + 1, stored)])
        store.set_messages(after)
        # CPU time of this thread: a sub-millisecond run is not charged for another process's turn.
        started = time.thread_time()
        diff = store.recalculate(calc, dirty_begin=t_new, dirty_end=t_new, now=now)
        times.append(time.thread_time() - started)
        read = max(read, diff.messages_read)
    return statistics.median(times), read


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="stop at 10^5 messages, fewer repeats")
    args = parser.parse_args()
    sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6]
    stored_sizes = [10**3, 10**5] if args.quick else [10**3, 10**6]
    repeat = 2 if args.quick else 3
    big = synthetic(max(max(sizes), max(stored_sizes) + 1))

    head = ["calculator"] + [f"msg/s @10^{int(np.log10(size))}" for size in sizes]
    lab = [f"10^{int(np.log10(size))}" for size in stored_sizes]
    head += [
        f"append @{lab[0]} ms",
        f"append @{lab[1]} ms",
        "ratio",
        f"read @{lab[0]}",
        f"read @{lab[1]}",
        f"late @{lab[0]} ms",
        f"late @{lab[1]} ms",
    ]
    rows = []
    for name, config in CALCULATORS.items():
        calc = compile_calculator(config)
        row = [name]
        for size in sizes:
            rate, _ = full_rate(calc, big.slice(len(big) - size, len(big)), repeat)
            row.append(f"{rate:,.0f}")
        # Sub-millisecond runs: many repeats, so that the median is not a scheduler's hiccup.
        app = [recalc_cost(calc, big, size, "append", 41 if not args.quick else 5) for size in stored_sizes]
        late = [recalc_cost(calc, big, size, "late", 9 if not args.quick else 5) for size in stored_sizes]
        row += [
            f"{app[0][0] * 1e3:.2f}",
            f"{app[1][0] * 1e3:.2f}",
            f"{app[1][0] / app[0][0]:.2f}",
            f"{app[0][1]:,}",
            f"{app[1][1]:,}",
            f"{late[0][0] * 1e3:.2f}",
            f"{late[1][0] * 1e3:.2f}",
        ]
        rows.append(row)
        print(" | ".join(row), file=sys.stderr, flush=True)
    widths = [max(len(heading), *(len(row[column]) for row in rows)) for column, heading in enumerate(head)]
    print("| " + " | ".join(heading.ljust(width) for heading, width in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print(
            "| "
            + " | ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )


if __name__ == "__main__":
    main()
