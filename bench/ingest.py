"""REST ingestion benchmark: batches of 1,000 realistic messages to committed rows.

    .venv/bin/python bench/ingest.py [--batches N] [--quick] [--devices K] [--profile]

Runs on the PostgreSQL named by ``DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/flespi_bench``) with a one-datacenter topology, so it uses
exactly two databases: ``<name>`` (control) and ``<name>_eu_1``. It creates them when missing and
migrates them with ``platform_setup``. A database whose name does not contain "bench" is never
used: ``<name>_bench`` on the same server is, so that it cannot touch anyone's data (and `make
bench` works on the embedded PostgreSQL). Its devices (and their messages) are deleted at the end.

Each message has 16 keys: a position from the real bus track in tests/data/tracks (with
derived speed and direction) and CAN, power and GSM parameters; timestamps increase by one
second, so every batch inserts new rows, after the device's newest stored one: the common case,
which COPYs straight into ``messages``. Row (c) also resends its batches, which takes the
staging-table merge (and changes nothing).

Printed: messages/s of
  (a) one web process, a real gunicorn (sync worker; then a gthread worker with 4 threads), fed
      over HTTP by this process with two connections so the worker never waits for the client,
      for one device and for ``--devices`` devices per request (each message goes to every
      selected device, so rows = messages x devices);
  (b) ``devices.services.messages_ingest`` alone, in this process (no HTTP, no JSON parse);
  (c) ``devices.storage.messages_write`` alone with prepared COPY data (COPY, outbox,
      telemetry, commit), for new rows and for the same rows resent;
with the CPU time per batch of the Python process doing the work and of the PostgreSQL backends
serving it (read from /proc: unlike wall time, it hardly moves when other work shares the
machine), and the time per batch split into JSON parse, validation, encoding, COPY and each SQL
statement, and commit (measured in separate, instrumented runs). ``--profile`` adds a cProfile
of the whole request path in process (Django test client), sorted by own time.

Target (DESIGN section 9): at least 30,000 messages/s per web process.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the platform and tests.support

from tests.support.net import free_port
from tests.support.processes import stop

REPO = Path(__file__).resolve().parent.parent
TRACK = REPO / "tests" / "data" / "tracks" / "bus-304-limerick-2019-02-18.gpx"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/flespi_bench"
TOPOLOGY = {
    "default_region": "eu",
    "domain": "localhost",
    "regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": 1}], "default_datacenter": "eu-1"}],
}
BATCH = 1000
WARMUP = 2


def configure_environment() -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        # Never the platform's own database: a sibling on the same server (so `make bench` works
        # on the embedded PostgreSQL, whose database is `flespi`).
        url = parts._replace(path=f"/{name}_bench").geturl()
    os.environ["DATABASE_URL"] = url
    os.environ["FLESPI_TOPOLOGY"] = json.dumps(TOPOLOGY)
    os.environ["DJANGO_SETTINGS_MODULE"] = "flespi_site.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")


# --- messages ------------------------------------------------------------------------------


def track_positions() -> list[dict]:
    """Positions of the real bus track with derived speed and direction, or a synthetic loop
    when the track is not there."""
    from devices import importers

    if TRACK.exists():
        with TRACK.open("rb") as handle:
            records = importers.derive_motion(importers.read(handle, format="gpx", name=TRACK.name))
            return [record.message for record in records]
    positions = []
    for point in range(2000):
        angle = point / 2000 * 2 * math.pi
        positions.append(
            {
                "position.latitude": 52.6 + 0.02 * math.sin(angle),
                "position.longitude": -8.6 + 0.03 * math.cos(angle),
                "position.altitude": 20.0,
                "position.speed": 30.0,
                "position.direction": (math.degrees(angle) + 90) % 360,
            }
        )
    return positions


class MessageSource:
    """Batches of realistic messages with timestamps that keep increasing across batches."""

    def __init__(self, start: float):
        self.positions = track_positions()
        self.clock = start
        self.odometer = 120_000.0
        self.produced = 0

    def batch(self, size: int = BATCH) -> list[dict]:
        out = []
        for _ in range(size):
            position = self.positions[self.produced % len(self.positions)]
            speed = position.get("position.speed", 0.0)
            self.odometer += speed / 3600
            out.append(
                {
                    "timestamp": self.clock,
                    "position.latitude": position["position.latitude"],
                    "position.longitude": position["position.longitude"],
                    "position.altitude": position.get("position.altitude", 0.0),
                    "position.speed": speed,
                    "position.direction": position.get("position.direction", 0.0),
                    "position.satellites": 7 + self.produced % 6,
                    "position.valid": True,
                    "position.hdop": round(0.7 + (self.produced % 7) / 10, 1),
                    "engine.ignition.status": True,
                    "can.fuel.level": round(64.0 - self.produced * 0.0005, 2),
                    "can.engine.rpm": 700 + int(speed * 28),
                    "can.vehicle.mileage": round(self.odometer, 3),
                    "external.powersource.voltage": round(27.4 + (self.produced % 5) / 10, 1),
                    "battery.voltage": 4.12,
                    "gsm.signal.level": 60 + self.produced % 30,
                }
            )
            self.clock += 1.0
            self.produced += 1
        return out


# --- setup ---------------------------------------------------------------------------------


class Fixture:
    """A bench account with a master token and its devices, deleted at the end."""

    def __init__(self):
        from accounts.choices import AccessType
        from accounts.services import account_create, token_create

        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.account = account_create(name=f"bench {tag}")
        _token, self.key = token_create(account=self.account, access_type=AccessType.MASTER, info="bench")
        self.devices = []

    def new_devices(self, count: int):
        from devices.services import device_create

        made = [
            device_create(
                account=self.account,
                name=f"bench {self.tag} {len(self.devices) + number}",
                configuration={"ident": f"bench-{self.tag}-{len(self.devices) + number}"},
            )
            for number in range(count)
        ]
        self.devices.extend(made)
        return made

    def close(self):
        from devices.services import device_delete

        for device in self.devices:
            device_delete(device=device)
        self.account.delete()


def vacuum() -> None:
    """Clean up the rows earlier runs deleted, so that autovacuum does not run during the
    measurements."""
    from django.db import connections

    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) messages, outbox, telemetry")


def setup_databases() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("platform_setup", "--no-superuser", stdout=io.StringIO(), verbosity=0)


# --- measurements --------------------------------------------------------------------------


class Row:
    def __init__(
        self,
        label: str,
        devices: int,
        seconds: list[float],
        messages_per_batch: int = BATCH,
        cpu: tuple[float, float] | None = None,
    ):
        self.label, self.devices, self.seconds = label, devices, seconds
        self.messages_per_batch = messages_per_batch
        self.cpu = cpu  # CPU seconds per batch: (Python process, its PostgreSQL backends)

    @property
    def messages_per_s(self) -> float:
        return self.messages_per_batch * len(self.seconds) / sum(self.seconds)


class CpuMeter:
    """CPU time used by some processes and by the PostgreSQL backends of the bench databases
    other than this process's own; unlike wall time, it hardly moves when something else runs
    on the machine."""

    def __init__(self, pids: list[int], *, own_backends: bool = False):
        self.pids, self.own_backends = pids, own_backends
        self.start = self._read()

    def _backends(self) -> list[int]:
        from django.db import connections

        mine = {
            connections[alias].connection.info.backend_pid
            for alias in ("default", "dc_eu_1")
            if connections[alias].connection is not None
        }
        names = [connections[alias].settings_dict["NAME"] for alias in ("default", "dc_eu_1")]
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND backend_type = 'client backend'",
                [names],
            )
            pids = {row[0] for row in cursor.fetchall()}
        return sorted(pids & mine if self.own_backends else pids - mine)

    @staticmethod
    def _cpu(pid: int) -> float:
        import psutil

        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def _read(self) -> tuple[dict[int, float], dict[int, float]]:
        return ({pid: self._cpu(pid) for pid in self.pids}, {pid: self._cpu(pid) for pid in self._backends()})

    def used(self, batches: int) -> tuple[float, float]:
        """(process CPU, backend CPU) per batch since the meter was made."""
        end = self._read()
        return tuple(
            sum(value - before.get(pid, 0.0) for pid, value in after.items()) / batches
            for before, after in zip(self.start, end, strict=True)
        )


class Gunicorn:
    def __init__(self, *extra: str):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="bench-gunicorn-", suffix=".log", delete=False)  # noqa: SIM115
        binary = REPO / ".venv" / "bin" / "gunicorn"
        command = [
            str(binary),
            "flespi_site.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            "1",
        ]
        self.process = subprocess.Popen(
            [*command, *extra], cwd=REPO, env=os.environ.copy(), stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log.name}")
            try:
                status, _ = self.request("GET", "/auth/regions")
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer within 60 s; see {self.log.name}")
            time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, key: str | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Host": "localhost", "Content-Type": "application/json", "Connection": "close"}
        if key:
            headers["Authorization"] = f"FlespiToken {key}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def worker_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children(recursive=True)]

    def stop(self):
        stop(self.process, timeout=10)


def http_run(server: Gunicorn, path: str, bodies: list[bytes], key: str, clients: int = 2) -> list[float]:
    """Send ``bodies`` from ``clients`` threads; returns the wall time per batch (total / n, as
    requests overlap) repeated n times, after checking every answer."""
    work: queue.Queue = queue.Queue()
    for body in bodies:
        work.put(body)
    failures: list[str] = []

    def client():
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            status, answer = server.request("POST", path, body, key)
            if status != 200 or b'"errors"' in answer:
                failures.append(f"{status}: {answer[:300]!r}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return [elapsed / len(bodies)] * len(bodies)


def bench_http(fixture, source, batches: int, devices_per_batch: int, label: str, *gunicorn_args: str) -> Row:
    devices = fixture.new_devices(devices_per_batch)
    path = f"/gw/devices/{','.join(str(device.pk) for device in devices)}/messages"
    bodies = [json.dumps(source.batch()).encode() for _ in range(batches + WARMUP)]
    server = Gunicorn(*gunicorn_args)
    try:
        http_run(server, path, bodies[:WARMUP], fixture.key)
        meter = CpuMeter(server.worker_pids())
        seconds = http_run(server, path, bodies[WARMUP:], fixture.key)
        cpu = meter.used(batches)
    finally:
        server.stop()
    _check_stored(devices, (batches + WARMUP) * BATCH)
    return Row(label, devices_per_batch, seconds, cpu=cpu)


def bench_service(fixture, source, batches: int, devices_per_batch: int) -> Row:
    from devices.services import messages_ingest

    devices = fixture.new_devices(devices_per_batch)
    batch_list = [source.batch() for _ in range(batches + WARMUP)]
    seconds = []
    for index, messages in enumerate(batch_list):
        if index == WARMUP:
            meter = CpuMeter([os.getpid()], own_backends=True)
        started = time.perf_counter()
        result = messages_ingest(devices=devices, messages=messages, source="rest")
        if index >= WARMUP:
            seconds.append(time.perf_counter() - started)
        assert result.accepted == BATCH and not result.errors, result.errors[:3]
    cpu = meter.used(batches)
    _check_stored(devices, (batches + WARMUP) * BATCH)
    return Row("(b) messages_ingest, in process", devices_per_batch, seconds, cpu=cpu)


def prepared_lines(devices, messages, now):
    """COPY lines and telemetry values as the service prepares them."""
    from devices.validation import message_prepare

    return copy_rows(devices, [message_prepare(message, now=now) for message in messages], now)


def copy_rows(devices, prepared, now):
    """The service's encoding of validated messages into COPY lines and telemetry values."""
    from devices import storage

    batch = storage.messages_encode(prepared=prepared, stamp_keys=storage.stamp_keys_of("rest.timestamp"))
    return storage.messages_copy_rows(devices=devices, batch=batch, reception_key="rest.timestamp", now=now)


def bench_copy(fixture, source, batches: int) -> list[Row]:
    from django.db import transaction

    from devices import storage

    [device] = fixture.new_devices(1)
    alias = device._state.db
    now = time.time()
    work = [prepared_lines([device], source.batch(), now) for _ in range(batches + WARMUP)]
    seconds = []
    for index, (rows, telemetry) in enumerate(work):
        if index == WARMUP:
            meter = CpuMeter([os.getpid()], own_backends=True)
        started = time.perf_counter()
        with transaction.atomic(using=alias):
            storage.messages_write(alias=alias, rows=rows, telemetry=telemetry)
        if index >= WARMUP:
            seconds.append(time.perf_counter() - started)
    cpu = meter.used(batches)
    _check_stored([device], (batches + WARMUP) * BATCH)
    new = Row("(c) storage.messages_write: new rows, COPY + commit", 1, seconds, cpu=cpu)
    meter, seconds = CpuMeter([os.getpid()], own_backends=True), []
    for rows, telemetry in work[WARMUP:]:
        started = time.perf_counter()
        with transaction.atomic(using=alias):
            changed = storage.messages_write(alias=alias, rows=rows, telemetry=telemetry)
        seconds.append(time.perf_counter() - started)
        assert changed == [], changed
    resent = Row("(c) storage.messages_write: resent rows, staging merge", 1, seconds, cpu=meter.used(batches))
    return [new, resent]


def _check_stored(devices, expected: int) -> None:
    from django.db import connections

    alias = devices[0]._state.db
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT device_id, count(*) FROM messages WHERE device_id = ANY(%s) GROUP BY device_id",
            [[device.pk for device in devices]],
        )
        counts = dict(cursor.fetchall())
    for device in devices:
        if counts.get(device.pk) != expected:
            raise RuntimeError(
                f"device {device.pk}: {counts.get(device.pk)} rows stored, expected {expected}"
            )


def time_split(fixture, source, batches: int, devices_per_batch: int = 1) -> dict[str, float]:
    """Milliseconds per batch of each step of the write path, run step by step."""
    from django.db import connections, transaction

    from devices import storage
    from devices.validation import message_prepare
    from flespi_site.api.parsers import loads_strict

    devices = fixture.new_devices(devices_per_batch)
    alias = devices[0]._state.db
    bodies = [json.dumps(source.batch()).encode() for _ in range(batches + WARMUP)]
    totals: dict[str, float] = {}
    sql: dict[str, float] = {}

    def timed_sql(execute, statement, params, many, context):
        started = time.perf_counter()
        try:
            return execute(statement, params, many, context)
        finally:
            head = " ".join(statement.split()[:3]).upper()
            if head.startswith("WITH STAGED"):
                step = "merge (INSERT .. ON CONFLICT, outbox)"
            elif head.startswith("INSERT INTO OUTBOX"):
                step = "outbox of appended rows"
            elif "TELEMETRY" in head:
                step = "telemetry upsert"
            elif head.startswith("SELECT D.ID"):
                step = "newest stored message per device"
            else:
                step = "savepoint, staging table"
            sql[step] = sql.get(step, 0.0) + time.perf_counter() - started

    for index, body in enumerate(bodies):
        sql.clear()
        marks = [time.perf_counter()]
        data = loads_strict(body)
        marks.append(time.perf_counter())
        now = time.time()
        prepared = [message_prepare(message, now=now) for message in data]
        marks.append(time.perf_counter())
        rows, telemetry = copy_rows(devices, prepared, now)
        marks.append(time.perf_counter())
        with connections[alias].execute_wrapper(timed_sql):
            with transaction.atomic(using=alias):
                storage.messages_write(alias=alias, rows=rows, telemetry=telemetry)
                marks.append(time.perf_counter())
            marks.append(time.perf_counter())
        if index < WARMUP:
            continue
        steps = {
            "JSON parse (orjson)": marks[1] - marks[0],
            "validation (message_prepare)": marks[2] - marks[1],
            "encoding (stamps, orjson, COPY lines, telemetry)": marks[3] - marks[2],
            "COPY (and Python around the SQL)": marks[4] - marks[3] - sum(sql.values()),
            **sql,
            "commit": marks[5] - marks[4],
        }
        for step, value in steps.items():
            totals[step] = totals.get(step, 0.0) + value
    return {step: value / batches * 1000 for step, value in totals.items()}


def profile_request_path(fixture, source, batches: int) -> str:
    """cProfile of ``batches`` POSTs through the whole Django stack in this process."""
    import cProfile
    import pstats

    from django.test import Client

    [device] = fixture.new_devices(1)
    client = Client()
    bodies = [json.dumps(source.batch()) for _ in range(batches + 1)]
    headers = {"HTTP_HOST": "localhost", "HTTP_AUTHORIZATION": f"FlespiToken {fixture.key}"}
    path = f"/gw/devices/{device.pk}/messages"
    client.generic("POST", path, bodies[0], content_type="application/json", **headers)
    profiler = cProfile.Profile()
    profiler.enable()
    for body in bodies[1:]:
        response = client.generic("POST", path, body, content_type="application/json", **headers)
        assert response.status_code == 200, response.content[:300]
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


# --- report --------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'path':58} {'devices':>7} {'batches':>7} {'ms/batch':>9} {'messages/s':>11} {'rows/s':>9}"
        f" {'CPU ms/batch: Python':>21} {'PostgreSQL':>10}"
    )
    print("-" * 141)
    for row in rows:
        mean = statistics.mean(row.seconds) * 1000
        cpu = f"{row.cpu[0] * 1000:>21.1f} {row.cpu[1] * 1000:>10.1f}" if row.cpu else ""
        print(
            f"{row.label:58} {row.devices:>7} {len(row.seconds):>7} {mean:>9.1f} "
            f"{row.messages_per_s:>11,.0f} {row.messages_per_s * row.devices:>9,.0f} {cpu}"
        )
    print("target (DESIGN 9): >= 30,000 messages/s per web process; batches of 1,000 messages, 16 keys each")
    print(
        "CPU: of the web process (a) or of this one (b, c), and of the PostgreSQL backends serving it; "
        f"load average now {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement (default 30)")
    parser.add_argument("--quick", action="store_true", help="5 batches per measurement, no gthread run")
    parser.add_argument("--devices", type=int, default=5, help="devices per request in the multi-device runs")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the request path")
    options = parser.parse_args()
    batches = 5 if options.quick else options.batches

    configure_environment()
    print(f"setting up {os.environ['DATABASE_URL']} (+ _eu_1) ...", flush=True)
    setup_databases()
    from django.db import connections

    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    print(f"PostgreSQL {version}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}", flush=True)
    vacuum()

    source = MessageSource(start=math.floor(time.time()) - 20 * 86400)
    fixture = Fixture()
    rows: list[Row] = []
    try:
        sync = ("--worker-class", "sync")
        rows.append(bench_http(fixture, source, batches, 1, "(a) gunicorn, 1 sync worker, over HTTP", *sync))
        rows.append(
            bench_http(
                fixture, source, batches, options.devices, "(a) gunicorn, 1 sync worker, over HTTP", *sync
            )
        )
        if not options.quick:
            gthread = ("--worker-class", "gthread", "--threads", "4")
            rows.append(
                bench_http(
                    fixture, source, batches, 1, "(a) gunicorn, 1 gthread worker x 4 threads", *gthread
                )
            )
        rows.append(bench_service(fixture, source, batches, 1))
        rows.append(bench_service(fixture, source, batches, options.devices))
        rows.extend(bench_copy(fixture, source, batches))
        print_table(rows)

        split = time_split(fixture, source, batches)
        total = sum(split.values())
        print(
            f"\ntime per batch of 1,000 messages, 1 device, step by step in process ({total:.1f} ms in all):"
        )
        for step, ms in split.items():
            print(f"  {step:52} {ms:7.1f} ms  {ms / total:6.1%}")
        http_ms = statistics.mean(rows[0].seconds) * 1000
        print(f"  {'(a batch over HTTP, first row of the table)':52} {http_ms:7.1f} ms")

        if options.profile:
            print("\ncProfile of the request path (Django test client, in process), by own time:")
            print(profile_request_path(fixture, source, max(5, batches // 2)))
    finally:
        fixture.close()
        vacuum()
    return 0


if __name__ == "__main__":
    sys.exit(main())
