"""Rollup benchmark: a day-by-day summary of a month for 1,000 devices from their stored intervals.

    .venv/bin/python bench/rollups.py [--devices 1000] [--days 30] [--per-day 10] [--repeat 15]

Stores, for ``--devices`` devices assigned to one calculator, ``--per-day`` intervals a day for
``--days`` days (a trip calculator's intervals: ``km``, ``max_speed``, ``avg_speed``,
``fuel``, a 200-character ``route``; written as a calc worker writes them,
``analytics.storage.intervals_write_many``), then times, ``--repeat`` times each:

- the request, ``POST /gw/calcs/{calc}/devices/all/calculate`` in process (Django's test client:
  authentication, selection of the assignments, the statement, the JSON answer), split by day in
  UTC and in Europe/Berlin, with seven counters (one of each type);
- the statement alone (``analytics.selectors.rollups_of``), with those seven counters and with
  the four numeric ones (summary, maximum, average, count);
- the other way of doing it, for those four counters: the intervals' numeric columns read in
  bulk (one ``float8send`` aggregate per column, as ``analytics.stored_columns`` reads messages)
  and reduced with numpy.

Printed: the microseconds ``intervals_write_many`` spent per stored interval; median and p95
milliseconds, rows answered. Databases as bench/ingest.py (a
``<name>_bench`` sibling unless the name holds "bench"); the bench account, its devices and
intervals are deleted at the end. Target: the request under one second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import ingest  # bench/ingest.py: databases, fixture

MONTH = 1_698_796_800.0  # 2023-11-01 00:00 UTC
CALCULATOR = {
    "name": "trips (rollup bench)",
    "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    "counters": [
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "avg_speed", "type": "expression", "expression": "position.speed", "method": "average"},
        {"name": "fuel", "type": "expression", "expression": "can.fuel.consumed", "method": "difference"},
        {"name": "route", "type": "route"},
    ],
}
SEVEN = [
    {"name": "km", "type": "summary", "field": "km"},
    {"name": "top_speed", "type": "maximum", "field": "max_speed"},
    {"name": "low_speed", "type": "minimum", "field": "avg_speed"},
    {"name": "speed", "type": "average", "field": "avg_speed"},
    {"name": "trips", "type": "count"},
    {"name": "started", "type": "first", "field": "begin"},
    {"name": "last_fuel", "type": "last", "field": "fuel"},
]
FOUR = [SEVEN[0], SEVEN[1], SEVEN[3], SEVEN[4]]


def store(fixture, calculator, days: int, per_day: int) -> tuple[int, float]:
    """Store the intervals; returns how many and the seconds spent in ``intervals_write_many``."""
    from django.db import transaction

    from analytics.storage import intervals_write_many

    rng = random.Random(7)
    alias = fixture.devices[0].database
    stored = 0
    writing = 0.0
    slot = 86400.0 / per_day
    for start in range(0, len(fixture.devices), 50):
        writes = {}
        for device in fixture.devices[start:start + 50]:
            intervals = []
            for day in range(days):
                for k in range(per_day):
                    begin = round(MONTH + day * 86400 + k * slot + rng.uniform(0, slot / 3), 3)
                    duration = round(rng.uniform(300, slot / 2), 3)
                    intervals.append({
                        "id": round(begin * 1_000_000), "begin": begin, "end": begin + duration, "duration": duration,
                        "km": round(rng.uniform(1, 60), 3), "max_speed": float(rng.randint(30, 130)),
                        "avg_speed": round(rng.uniform(20, 80), 2), "fuel": round(rng.uniform(0.5, 9), 2),
                        "route": "".join(rng.choice("abcdefghij_~?@") for _ in range(200)),
                    })
            writes[(calculator.pk, device.pk)] = (intervals, [])
            stored += len(intervals)
        with transaction.atomic(using=alias):
            started = time.perf_counter()
            intervals_write_many(alias=alias, writes=writes, stamp=time.time())
            writing += time.perf_counter() - started
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) intervals")
    return stored, writing


def numpy_rollup(*, alias: str, calc_id: int, device_ids: list[int], bounds: list[float], begin: float, end: float):
    """The four numeric counters by the other way: columns in bulk, reduced with numpy."""
    import numpy as np
    import psycopg
    from django.db import connections

    connection = connections[alias]
    connection.ensure_connection()
    sql = (
        "SELECT string_agg(int8send(device_id), ''::bytea), string_agg(float8send(\"begin\"), ''::bytea),"
        " string_agg(float8send(d), ''::bytea),"
        " string_agg(float8send(COALESCE(km, 'NaN')), ''::bytea), string_agg(float8send(COALESCE(ms, 'NaN')), ''::bytea),"
        " string_agg(float8send(COALESCE(av, 'NaN')), ''::bytea)"
        " FROM (SELECT device_id, \"begin\", duration AS d,"
        "  number_values[array_position(number_keys, 'km')] AS km,"
        "  number_values[array_position(number_keys, 'max_speed')] AS ms,"
        "  number_values[array_position(number_keys, 'avg_speed')] AS av"
        "  FROM intervals WHERE calc_id = %s AND device_id = ANY(%s)"
        "   AND id >= %s AND id <= %s AND \"begin\" >= %s AND \"begin\" < %s OFFSET 0) AS v"
    )
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, [calc_id, device_ids, int(begin * 1e6) - 1, int(end * 1e6) + 1, begin, end], binary=True)
        row = cursor.fetchone()
    assert row is not None
    devices = np.frombuffer(row[0], ">i8").astype(np.int64)
    begins, durations, km, top, speed = (np.frombuffer(part, ">f8").astype(np.float64) for part in row[1:])
    ids = np.asarray(device_ids, dtype=np.int64)
    order = np.argsort(ids)
    device_index = order[np.searchsorted(ids, devices, sorter=order)]
    periods = len(bounds) - 1
    group = device_index * periods + np.searchsorted(np.asarray(bounds), begins, side="right") - 1
    size = len(device_ids) * periods
    count = np.bincount(group, minlength=size)
    has_km = ~np.isnan(km)
    km_sum = np.bincount(group[has_km], km[has_km], minlength=size)
    top_max = np.full(size, -np.inf)
    has_top = ~np.isnan(top)
    np.maximum.at(top_max, group[has_top], top[has_top])
    has_speed = ~np.isnan(speed)
    weight = np.bincount(group[has_speed], durations[has_speed], minlength=size)
    weighted = np.bincount(group[has_speed], speed[has_speed] * durations[has_speed], minlength=size)
    mean = np.bincount(group[has_speed], speed[has_speed], minlength=size) / np.maximum(
        np.bincount(group[has_speed], minlength=size), 1)
    average = np.where(weight > 0, weighted / np.where(weight > 0, weight, 1), mean)
    rows = []
    for key in np.flatnonzero(count).tolist():
        rows.append((device_ids[key // periods], key % periods + 1, km_sum[key], top_max[key], average[key], count[key]))
    return rows


def timed(work, repeat: int) -> tuple[list[float], object]:
    result = work()  # warm-up
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    ingest.configure_environment()
    print(f"setting up {ingest.os.environ['DATABASE_URL']} (+ _eu_1) ...", flush=True)
    ingest.setup_databases()
    import orjson
    from rest_framework.test import APIClient

    from analytics.engine.rollups import ROLLUP_COLUMNS, compile_rollup, period_bounds
    from analytics.selectors import assignments_of, rollups_of
    from analytics.services import assignments_create, calculator_create

    fixture = ingest.Fixture()
    try:
        started = time.perf_counter()
        fixture.new_devices(args.devices)
        calculator = calculator_create(account=fixture.account, config=CALCULATOR)
        assignments_create(calculators=[calculator], devices=fixture.devices)
        stored, writing = store(fixture, calculator, args.days, args.per_day)
        print(f"{args.devices:,} devices, {stored:,} intervals stored in {time.perf_counter() - started:.1f} s; "
              f"intervals_write_many: {writing / stored * 1e6:.1f} µs per interval", flush=True)
        begin, end = MONTH, MONTH + args.days * 86400.0
        client = APIClient()
        rows: list[tuple[str, list[float], int]] = []

        def request(timezone: str):
            body = {"from": begin, "to": end, "selectors": [{"type": "datetime", "split": "day"}], "counters": SEVEN,
                    "timezone": timezone}

            def call():
                response = client.post(
                    f"/gw/calcs/{calculator.pk}/devices/all/calculate", orjson.dumps(body),
                    content_type="application/json", HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"FlespiToken {fixture.key}",
                )
                assert response.status_code == 200, response.content[:300]
                return len(orjson.loads(response.content)["result"])

            return call

        for timezone in ("UTC", "Europe/Berlin"):
            seconds, answered = timed(request(timezone), args.repeat)
            rows.append((f"request, 7 counters, days in {timezone}", seconds, answered))
        assignments = list(assignments_of(account=fixture.account, calculator_ids=[calculator.pk]))
        for label, counters in (("7 counters", SEVEN), ("4 numeric counters", FOUR)):
            rollup = compile_rollup({"selectors": [{"type": "datetime", "split": "day"}], "counters": counters,
                                     "timezone": "UTC"})
            seconds, answered = timed(lambda rollup=rollup: len(rollups_of(
                account=fixture.account, assignments=assignments, rollup=rollup, begin=begin, end=end)), args.repeat)
            rows.append((f"statement (GROUP BY in PostgreSQL), {label}", seconds, answered))
        bounds = period_bounds(begin=begin, end=end, timezone="UTC", split="day", limit=1000)
        assert bounds is not None and ROLLUP_COLUMNS
        device_ids = [assignment.device_id for assignment in assignments]
        seconds, answered = timed(lambda: len(numpy_rollup(
            alias=assignments[0].database, calc_id=calculator.pk, device_ids=device_ids, bounds=bounds, begin=begin,
            end=end)), args.repeat)
        rows.append(("columns in bulk + numpy, 4 numeric counters", seconds, answered))
        print()
        print(f"{args.devices:,} devices x {args.days} days x {args.per_day} intervals = {stored:,} intervals; "
              f"{args.repeat} timed runs each")
        print()
        print(f"| {'what':<52} | {'median ms':>9} | {'p95 ms':>7} | {'rows':>6} |")
        print(f"|{'-' * 54}|{'-' * 10}:|{'-' * 8}:|{'-' * 7}:|")
        for label, seconds, answered in rows:
            ordered = sorted(seconds)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            print(f"| {label:<52} | {statistics.median(seconds) * 1000:>9,.0f} | {p95 * 1000:>7,.0f} | {answered:>6,} |")
    finally:
        fixture.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
