"""Cost of one recalculation after one appended message, by the length of the open interval.

    .venv/bin/python bench/extend.py [--repeat N] [--lengths 10,100,1000]

The trips calculator of ``bench/fleet.py`` (selector ``position.speed > 5`` under ``merge_unknown``
and ``max_inactive`` 60, the counters of ``analytics/examples.py``: mileage, maximum and average
speed, moving time, route) over a drive at 1 Hz in memory (``MemoryStore``: the engine and its
reads, no cache, no database). For each length of the open trip, the median of ``--repeat``
recalculations of one appended message: by the window (no tail kept) and extended from the tail
(``docs/engine.md``, "Extending the active interval"). Nothing but the engine runs: the figures
are this process's CPU time (``time.process_time``), which other work on the machine hardly moves.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.engine import MemoryStore, compile_calculator
from analytics.examples import TRIPS

T0 = 1_700_000_000.0
SELECTOR = {"type": "expression", "expression": "position.speed > 5", "merge_unknown": True, "max_inactive": 60}


def drive(seconds: int) -> list[dict]:
    """A drive at 1 Hz heading north-east at 40-46 km/h."""
    return [
        {"timestamp": T0 + second, "position.speed": 40.0 + second % 7, "position.latitude": 50.0 + second * 1e-4,
         "position.longitude": 10.0 + second * 1e-4}
        for second in range(seconds)
    ]


def timed(length: int, repeat: int, *, keep_tail: bool) -> float:
    """Median µs of one recalculation that appends the message after ``length`` of them."""
    calc = compile_calculator({**TRIPS, "selectors": [SELECTOR]})
    messages = drive(length + repeat)
    store = MemoryStore(messages[:length], [])
    store.apply(store.recalculate(calc, dirty_begin=-math.inf, dirty_end=math.inf, keep_tail=True))
    samples = []
    for appended in range(length, length + repeat):
        store.set_messages(messages[: appended + 1])
        moment = messages[appended]["timestamp"]
        if not keep_tail:
            store.tail = None
        started = time.process_time()
        diff = store.recalculate(calc, dirty_begin=moment, dirty_end=moment, now=moment + 1, keep_tail=True)
        samples.append(time.process_time() - started)
        assert diff.extended == keep_tail, (length, appended)
        store.apply(diff)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--lengths", default="10,100,300,1000,3600")
    args = parser.parse_args()
    print(f"{'messages in the open trip':>25} {'window µs':>10} {'extended µs':>12}")
    for length in (int(part) for part in args.lengths.split(",")):
        window = timed(length, args.repeat, keep_tail=False)
        extended = timed(length, args.repeat, keep_tail=True)
        print(f"{length:>25,} {window:>10,.0f} {extended:>12,.0f}")


if __name__ == "__main__":
    main()
