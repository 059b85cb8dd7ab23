"""Benchmark of geofence containment in the engine. Prints a table: messages/s (one core, best of
a few runs) for 10, 100 and 1,000 assigned geofences (circles and polygons of 8 to 64 points,
half each, 0.2 to 1.5 km across, over a region of about 110 x 110 km), of

* ``geofence('name')`` evaluated over a frame of messages,
* ``geofences('name')`` (every containing zone, as a list),
* a calculator whose geofence selector takes the assigned zones (``"geofences": []``), with a
  ``geofence`` counter: the whole calculation.

Half the messages are anywhere in the region, half near a zone's centre (inside or close by).

Run: ``.venv/bin/python bench/geofences.py`` (``--messages N``, default 200,000).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.engine import Messages, calculate, compile_calculator
from analytics.engine.expressions import Frame

T0 = 1_700_000_000.0
LAT0, LON0 = 50.0, 10.0


def zones(count: int, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    result = []
    for number in range(count):
        lat = LAT0 + rng.uniform(-0.5, 0.5)
        lon = LON0 + rng.uniform(-0.75, 0.75)
        if number % 2 == 0:
            geometry = {"type": "circle", "center": {"lat": lat, "lon": lon}, "radius": float(rng.uniform(0.1, 0.75))}
        else:
            points = int(rng.choice([8, 16, 32, 64]))
            angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
            # A star-ish (concave) ring: radii alternate between two lengths.
            radius_km = np.where(np.arange(points) % 2 == 0, rng.uniform(0.4, 0.75), rng.uniform(0.2, 0.4))
            geometry = {
                "type": "polygon",
                "path": [
                    {"lat": lat + radius / 111.2 * np.cos(angle), "lon": lon + radius / 71.5 * np.sin(angle)}
                    for radius, angle in zip(radius_km.tolist(), angles.tolist(), strict=True)
                ],
            }
        result.append({
            "id": number + 1, "name": f"zone {number + 1}", "enabled": True, "priority": int(rng.integers(0, 101)),
            "metadata": {"customer": f"c{number % 7}"}, "geometry": geometry,
        })
    return result


def messages(count: int, placed: list[dict], seed: int = 5) -> Messages:
    rng = np.random.default_rng(seed)
    lat = LAT0 + rng.uniform(-0.5, 0.5, count)
    lon = LON0 + rng.uniform(-0.75, 0.75, count)
    near = rng.random(count) < 0.5
    centres = np.array([
        (zone["geometry"]["center"]["lat"], zone["geometry"]["center"]["lon"]) if zone["geometry"]["type"] == "circle"
        else (zone["geometry"]["path"][0]["lat"], zone["geometry"]["path"][0]["lon"]) for zone in placed
    ])
    pick = rng.integers(0, len(placed), count)
    lat = np.where(near, centres[pick, 0] + rng.normal(0, 0.004, count), lat)
    lon = np.where(near, centres[pick, 1] + rng.normal(0, 0.006, count), lon)
    return Messages.from_columns(
        T0 + np.arange(count, dtype=np.float64), {"position.latitude": lat, "position.longitude": lon}
    )


def best_rate(run, count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    head = ["zones", "geofence() msg/s", "geofences() msg/s", "selector + counter msg/s", "hits/msg", "compile ms"]
    rows = []
    for count in (10, 100, 1000):
        placed = zones(count)
        batch = messages(args.messages, placed)
        started = time.perf_counter()
        calc = compile_calculator(
            {
                "name": "visits",
                "selectors": [{"type": "geofence", "geofences": []}],
                "counters": [{"name": "where", "type": "geofence"}],
            },
            geofences=placed,
        )
        compile_ms = (time.perf_counter() - started) * 1e3
        first = compile_calculator(
            {"name": "first", "selectors": [{"type": "expression", "expression": "geofence('name')", "method": "change"}]},
            geofences=placed,
        ).selectors[0].expression
        every = compile_calculator(
            {"name": "every", "selectors": [{"type": "expression", "expression": "geofences('name')", "method": "change"}]},
            geofences=placed,
        ).selectors[0].expression
        assert first is not None and every is not None

        def frame(batch: Messages = batch) -> Frame:
            return Frame(batch)

        rate_first = best_rate(lambda: first.evaluate_frame(frame()), len(batch), args.repeat)  # noqa: B023
        rate_every = best_rate(lambda: every.evaluate_frame(frame()), len(batch), args.repeat)  # noqa: B023
        rate_calc = best_rate(lambda: calculate(batch, calc), len(batch), args.repeat)  # noqa: B023
        lists = every.evaluate_frame(frame()).values
        hits = sum(len(item) for item in lists.tolist() if item) / len(batch)
        rows.append([
            f"{count:,}", f"{rate_first:,.0f}", f"{rate_every:,.0f}", f"{rate_calc:,.0f}", f"{hits:.2f}",
            f"{compile_ms:.1f}",
        ])
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    print(f"{args.messages:,} messages, best of {args.repeat} (process CPU time)")
    print("| " + " | ".join(name.ljust(width) for name, width in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
