"""Exports of stored intervals over HTTP (docs/api.md, "Exports").

    DATABASE_URL=postgres://.../<db> REDIS_URL=redis://.../<n> .venv/bin/python bench/exports.py [--sizes 100000,1000000]

Stores the largest size of intervals for one device (a trips calculator: two numeric counters and
a route of 8 points, as ``intervals_write_many`` stores a calc worker's runs, and their names on
the assignment, as the run records them: ``Assignment.interval_names``), starts the web
process of ``make run`` (gunicorn, one worker, 4 threads) on the same databases, and for each
size and format streams ``GET /gw/calcs/{c}/devices/{d}/intervals/all?format=...&count=<size>``
over HTTP, reading the answer as it comes (and counting its rows). Printed: intervals per second
(first byte of the request to the last of the answer), and the web worker's resident memory
(sampled every 20 ms): before the export and the highest during it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPOLOGY = {
    "default_region": "eu",
    "domain": "localhost",
    "regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": 1}], "default_datacenter": "eu-1"}],
}
CALCULATOR = {
    "name": "bench exports",
    "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 60}],
    "counters": [
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
        {"name": "route", "type": "route"},
    ],
    "timezone": "Europe/Berlin",
}
# What one row of each format ends with: counted in the answer to check it is whole.
ROW_MARKS = {"csv": b"\n", "geojson": b'"type":"Feature"', "gpx": b"</trk>"}


def configure() -> None:
    if "DATABASE_URL" not in os.environ or "REDIS_URL" not in os.environ:
        raise SystemExit("name the databases the bench may write: DATABASE_URL and REDIS_URL")
    os.environ["FLESPI_TOPOLOGY"] = json.dumps(TOPOLOGY)
    os.environ["DJANGO_SETTINGS_MODULE"] = "flespi_site.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ["RATE_LIMIT_REQUESTS"] = "0"


def seed(assignment, count: int) -> None:
    from django.db import transaction

    from analytics import storage
    from analytics.engine.geo import encode_polyline
    from analytics.models import Assignment

    began = time.perf_counter()
    batch = 20_000
    names: set[str] = set()
    for start in range(0, count, batch):
        intervals = []
        for number in range(start, min(count, start + batch)):
            begin = 1_600_000_000 + number * 600
            route = encode_polyline([(52.5 + (number % 100) / 1e3 + i / 1e4, 13.4 + i / 1e4) for i in range(8)])
            intervals.append({"id": begin * 1_000_000, "begin": float(begin), "end": begin + 300.0, "duration": 300.0,
                              "max_speed": 40 + number % 60, "km": round(number % 97 / 7, 3), "route": route})
        with transaction.atomic(using=assignment.database):
            storage.intervals_write_many(
                alias=assignment.database, writes={(assignment.calculator_id, assignment.device_id): (intervals, [])},
                stamp=time.time(),
            )
        names |= storage.written_names(intervals)
    Assignment.objects.using(assignment.database).filter(pk=assignment.pk).update(interval_names=sorted(names))
    print(f"stored {count:,} intervals in {time.perf_counter() - began:.1f} s", file=sys.stderr)


class Sampler(threading.Thread):
    """The highest resident memory of a process while it runs."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def export(port: int, key: str, path: str, mark: bytes) -> tuple[float, int]:
    """Seconds to stream the answer, and the rows counted in it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    began = time.perf_counter()
    connection.request("GET", path, headers={"Authorization": f"FlespiToken {key}"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {response.read()[:500]!r}")
    rows, tail = 0, b""
    while True:
        chunk = response.read(1 << 16)
        if not chunk:
            break
        data = tail + chunk
        rows += data.count(mark)
        tail = data[-(len(mark) - 1):] if len(mark) > 1 else b""
        if len(mark) > 1 and mark in tail:
            rows -= 1
    elapsed = time.perf_counter() - began
    connection.close()
    return elapsed, rows


def _worker_of(pid: int):
    """The one worker process gunicorn forks (it may answer before the fork shows)."""
    import psutil

    deadline = time.monotonic() + 30
    while True:
        children = psutil.Process(pid).children(recursive=True)
        if len(children) == 1 or time.monotonic() > deadline:
            [worker] = children
            return worker
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="interval counts to export (default 100000,1000000)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    configure()
    import django

    django.setup()
    from django.core.management import call_command

    from accounts.services import account_create, token_create
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, device_delete
    from regions.services import topology_sync
    from tests.support.processes import WebServer

    call_command("platform_setup", "--no-superuser", stdout=io.StringIO(), verbosity=0)
    topology_sync()
    account = account_create(name="bench-exports")
    _token, key = token_create(account=account)
    device = device_create(account=account, configuration={"ident": f"exports-{time.time_ns()}"})
    calculator = calculator_create(account=account, config=CALCULATOR)
    assignment = assignment_create(calculator=calculator, device=device)[0]
    web = None
    rows = []
    try:
        seed(assignment, max(sizes))
        web = WebServer(DEBUG="0", LOG_LEVEL="WARNING", WEB_WORKERS="1", RATE_LIMIT_REQUESTS="0")
        worker = _worker_of(web.process.pid)
        base = f"/gw/calcs/{calculator.pk}/devices/{device.pk}/intervals/all"
        export(web.port, key, f"{base}?format=csv&count=1000", ROW_MARKS["csv"])  # warm the worker up
        for size in sizes:
            for format_name, mark in ROW_MARKS.items():
                before = worker.memory_info().rss
                sampler = Sampler(worker.pid)
                sampler.start()
                elapsed, counted = export(web.port, key, f"{base}?format={format_name}&count={size}", mark)
                peak = sampler.stop()
                if format_name == "csv":
                    counted -= 1  # the header
                if counted != size:
                    raise RuntimeError(f"{format_name}: {counted} rows where {size} were asked for")
                rows.append((size, format_name, size / elapsed, elapsed, before, peak))
    finally:
        if web is not None:
            web.stop()
        device_delete(device=device)
        account.delete()
    print(f"\n{'intervals':>10} {'format':<8} {'intervals/s':>12} {'seconds':>8} {'RSS before MB':>14} {'RSS peak MB':>12}")
    for size, format_name, rate, elapsed, before, peak in rows:
        print(f"{size:>10,} {format_name:<8} {rate:>12,.0f} {elapsed:>8.2f} {before / 2**20:>14.1f} {peak / 2**20:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
