"""Calc fleet benchmark: latency, sync and throughput of the real fleet processes.

    .venv/bin/python bench/fleet.py [--quick] [--sizes 10,100,1000] [--seconds 60] [--only latency,sync,throughput]
                                    [--workers 1] [--every 1] [--ingest-during 0] [--sync-messages 1000000] [--profile DIR]

Databases as in ``bench/ingest.py`` (``DATABASE_URL``, default ``flespi_bench``; a sibling
``<name>_bench`` when the name lacks "bench"; migrated by ``platform_setup``); Redis and MQTT of
``REDIS_URL`` / ``MQTT_URL`` (under ``make bench``, the embedded ones). The region's Redis keys
(``flespi:eu:*``) are cleared first: run it on a Redis of its own. Started as child processes,
as ``make run`` starts them (``tests/support/fleet.py``, ``tests/support/processes.py``): ``manage.py
calc_worker --region eu`` (``--workers`` of them), ``manage.py calc_pump --region eu``,
``manage.py outbox_relay`` and the web process (gunicorn, 2 workers x 4 threads), with the bench
databases in their environment, ``CALC_DATA_DIR`` in a temporary directory and a topic root of
their own (``MQTT_TOPIC_ROOT``).

1. Latency. N devices each send one moving message a second (``--every`` k: every k seconds)
   for ``--seconds``, over REST: the devices report in 10 phases a second, and each phase is one
   ``POST /gw/devices/<ids>/messages`` to the web process carrying one message (timestamp: its
   send time) for the N/10 (N/10k) devices of the phase. Runs of 2 minutes or more also print p99
   by minute: the devices never stop, so their open trips grow all along. ``--ingest-during B``
   also posts B batches of 1,000 messages to one more device (no calculator) 10 s into each run
   and prints the rate the web process held meanwhile. A trips calculator (selector on while moving, so each message extends the open
   interval: one ``updated`` per run) with ``update_delay`` 1 has every device assigned. Latency
   of a message: from its request's answer (the write committed) to the first
   ``<root>/interval/gw/calcs/<calc>/devices/<dev>/updated`` received here whose interval ``end``
   reaches the message's timestamp (equals it, unless one run took two messages of the device).
   The first 5 s of each run are left out (warm-up). Printed: p50/p90/p99/max per N, the CPU of
   each process during the run and what the calc worker's tasks took (from its log).
2. Sync. A device with ``--sync-messages`` stored messages (the bus track at 1 Hz, 16 keys),
   once the pump's sealer has put them in message blocks (its time is printed), is assigned to the trips calculator of ``bench/engine.py`` (the one of ``bench/calculate.py``;
   that of ``analytics/examples.py`` makes one trip of these 11 days): time until the assignment is
   ``synced``, with the phases from the worker's log (the run's task, the cache fill) and a
   py-spy profile of the worker during the sync (calculation, storing of the intervals).
3. Throughput. 1,000 devices (100 in each of 10 shards) assigned to a calculator with a long ``update_delay`` each get one
   message (their timers are armed, not due); then the bench sends the shard tasks the pump
   sends (``analytics.shard_run``, the pump's message) with 1, 10 or 100 of them each, and times
   the worker until every claim is released: recalculations/s, and the transactions committed
   in the datacenter database meanwhile (``pg_stat_database``; worker and relay).

4. Statements. The fleet's worker is stopped and a ``ShardWorker`` in this process runs
   ``changes`` and ``run`` (1 assignment, then every one of a shard) under Django's query
   capture: statements to PostgreSQL per task and per assignment, by kind.

``--profile DIR`` also records py-spy (``py-spy record --format raw``) of the worker and the
pump during the largest latency run and prints the functions where they spent their time.

Targets (issue 9): latency p99 <= update_delay + 250 ms (1.25 s) at 1,000 devices; sync of
1,000,000 messages <= 15 s (aim 5).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the platform and tests.support

import ingest  # bench/ingest.py: environment, databases, fixture, messages

from flespi_site.fleet import FleetTask
from tests.support.fleet import Fleet
from tests.support.mqtt import Subscriber
from tests.support.processes import WebServer

REPO = ingest.REPO
PHASES = 10  # the devices of a latency run report in this many phases a second
WARMUP = 5.0  # seconds of each latency run left out
DRAIN = 10.0  # seconds to wait for the last events of a latency run
LOGS: Path | None = None  # --logs
UPDATE_DELAY = 1
# The counters (/metrics) a latency run reads before and after: recalculations, MQTT publishes.
COUNTED = ("flespi_recalculations_total", "flespi_recalculations_extended_total", "flespi_relay_published_total")
EVERY = 1  # --every: seconds between a device's messages in a latency run
TARGET_P99 = UPDATE_DELAY + 0.25

SELECTOR = {"type": "expression", "expression": "position.speed > 5", "merge_unknown": True, "max_inactive": 60}
TASK_NAME = "|".join(re.escape(task.value) for task in FleetTask)
TASK_LINE = re.compile(rf"Task ({TASK_NAME})\[[^\]]+\] succeeded in ([0-9.e-]+)s")
RECEIVED_LINE = re.compile(rf"^(\S+ \S+) .*Task ({TASK_NAME})\[[^\]]+\] received")
FILL_LINE = re.compile(r"device (\d+) cached, (\d+) messages in ([0-9.]+) s")


def trips(update_delay: int, *, max_inactive: int = 60) -> dict:
    """The trips calculator of analytics/examples.py, with its selector on from the first moving
    message (no minimum duration), so that every message extends the open interval."""
    from analytics.examples import TRIPS

    selector = {**SELECTOR, "max_inactive": max_inactive}
    return {**TRIPS, "name": f"bench trips {update_delay}", "selectors": [selector], "update_delay": update_delay}


# --- the fleet ------------------------------------------------------------------------------


class Platform:
    """The fleet's processes and the web process, on the bench databases."""

    def __init__(self, workers: int):
        from django.conf import settings

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
        self.fleet = Fleet(self.tmp, topic_root=f"bench{uuid.uuid4().hex[:8]}", lease_ttl=settings.CALC_LEASE_TTL)
        self.fleet.env["DEBUG"] = "0"
        self.fleet.env["FLESPI_SEAL_EVERY"] = "2"  # the sync waits for the device's blocks
        self.fleet.start_all()
        for number in range(1, workers):
            self.fleet.start_worker(f"worker{number}")
        self.workers = ["worker", *(f"worker{number}" for number in range(1, workers))]
        self.fleet.wait_placed(set(self.workers))
        self.web = WebServer(DEBUG="0", LOG_LEVEL="WARNING")
        self.root = self.fleet.topic_root
        self.port = self.web.port

    def pids(self) -> dict[str, int]:
        import psutil
        from django.conf import settings

        pids = {name: process.pid for name, (process, _output) in self.fleet.processes.items()}
        web = psutil.Process(self.web.process.pid)
        pids["web"] = web.pid
        for number, child in enumerate(web.children(recursive=True)):
            pids[f"web{number + 1}"] = child.pid
        broker = broker_pid(settings.MQTT_URL)
        if broker is not None:
            pids["broker"] = broker
        pids["bench"] = os.getpid()  # the devices' client and the subscriber
        return pids

    def lines(self, name: str) -> list[str]:
        return list(self.fleet.output(name).lines)

    def stop(self) -> None:
        self.web.stop()
        self.fleet.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def post(port: int, path: str, body: bytes, key: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Host": "localhost", "Content-Type": "application/json", "Authorization": f"FlespiToken {key}"}
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status != 200 or b'"errors"' in answer:
        raise RuntimeError(f"POST {path[:60]}...: {response.status} {answer[:300]!r}")


def metric_totals(port: int) -> dict[str, float]:
    """The platform's counters (``/metrics`` of the web process, every process's counts added up),
    each summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers={"Host": "localhost"})
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    totals: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


def wait_synced(calculator, count: int, timeout: float) -> float:
    """Seconds until ``count`` assignments of ``calculator`` are synced."""
    from analytics.choices import AssignmentState
    from analytics.models import Assignment

    started = time.monotonic()
    while True:
        done = Assignment.objects.using(calculator.database).filter(
            calculator_id=calculator.pk, state=AssignmentState.SYNCED
        ).count()
        if done >= count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {done} of {count} assignments synced after {timeout:.0f} s")
        time.sleep(0.2)


def assign(account, devices, config: dict):
    from analytics.services import assignment_create, calculator_create

    calculator = calculator_create(account=account, config=config)
    for device in devices:
        assignment_create(calculator=calculator, device=device)
    return calculator


def calculator_remove(calculator) -> None:
    """Delete a calculator; again when the delete deadlocks with a run of the worker (reported
    in docs/analytics.md, "Fleet benchmarks")."""
    from django.db import OperationalError

    from analytics.services import calculator_delete

    for attempt in range(10):
        try:
            calculator_delete(calculator=calculator)
            return
        except OperationalError as exc:
            if "deadlock" not in str(exc) or attempt == 9:
                raise
            print(f"  (deleting calculator {calculator.pk} deadlocked with a run; again)", flush=True)
            time.sleep(1)


def task_times(lines: list[str]) -> dict[FleetTask, tuple[int, float]]:
    """Per fleet task of the worker's log lines: (count, seconds)."""
    out: dict[FleetTask, list] = {}
    for line in lines:
        match = TASK_LINE.search(line)
        if match:
            entry = out.setdefault(FleetTask(match.group(1)), [0, 0.0])
            entry[0] += 1
            entry[1] += float(match.group(2))
    return {name: (count, seconds) for name, (count, seconds) in out.items()}


def broker_pid(url: str) -> int | None:
    """The process listening on the broker's port, when it runs on this machine."""
    import psutil

    from flespi_site.mqtt.client import broker_address

    _host, port, _tls = broker_address(url)
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    return None


class CpuMeter:
    """CPU seconds of each named process and of the PostgreSQL backends of the bench databases."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.backends = ingest.CpuMeter([])
        self.start = {name: self._cpu(pid) for name, pid in pids.items()}
        self.started = time.monotonic()

    @staticmethod
    def _cpu(pid: int) -> float:
        return ingest.CpuMeter._cpu(pid)

    def used(self) -> tuple[float, dict[str, float]]:
        """(wall seconds, CPU seconds by process, "PostgreSQL" for the backends)."""
        out = {name: self._cpu(pid) - self.start[name] for name, pid in self.pids.items()}
        web = sum(value for name, value in out.items() if name.startswith("web"))
        out = {name: value for name, value in out.items() if not name.startswith("web")}
        out["web"] = web
        out["PostgreSQL"] = self.backends.used(1)[1]
        return time.monotonic() - self.started, out


# --- 1. latency -----------------------------------------------------------------------------


class LatencyRun:
    def __init__(self, size: int, seconds: float):
        self.size, self.seconds = size, seconds
        self.latencies: list[float] = []
        self.samples: list[tuple[float, float]] = []  # (accepted, latency)
        self.accept: list[float] = []
        self.exact = self.missing = self.messages = 0
        self.cpu: dict[str, float] = {}
        self.wall = 0.0
        self.tasks: dict[FleetTask, tuple[int, float]] = {}
        self.sync_s = 0.0
        self.counted: dict[str, float] = {}  # the platform's counters moved during the run
        self.messages_sent = 0  # every message sent (the warm-up's too), as the CPU meter saw them

    def pct(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(quantile * len(ordered)) - 1)] if ordered else math.nan


def latency(platform: Platform, fixture, devices, seconds: float, profile: Path | None, *,
            during=None) -> LatencyRun:
    """A latency run; ``during`` (a callable) runs in a thread from 5 s after the warm-up."""
    from django.conf import settings

    size = len(devices)
    run = LatencyRun(size, seconds)
    calculator = assign(fixture.account, devices, trips(UPDATE_DELAY))
    run.sync_s = wait_synced(calculator, size, timeout=120 + size)
    # EVERY seconds between a device's messages: the devices report in EVERY x PHASES groups, the
    # PHASES of one second each sending one message for their devices
    slots = PHASES * EVERY
    groups = [devices[phase::slots] for phase in range(min(slots, size))]
    paths = [f"/gw/devices/{','.join(str(device.pk) for device in group)}/messages" for group in groups]
    # Each record keeps its receive time.
    subscriber = Subscriber(settings.MQTT_URL, f"{platform.root}/interval/gw/calcs/{calculator.pk}/devices/+/updated",
                            qos=0, client_id=f"bench-{uuid.uuid4().hex[:8]}").start()
    sent: list[tuple[int, float, float]] = []  # (group, timestamp, accepted)
    lock = threading.Lock()

    def send(phase: int, second: int) -> None:
        stamp = round(time.time(), 3)
        body = json.dumps([{
            "timestamp": stamp, "position.speed": 40.0 + second % 7,
            "position.latitude": 52.6 + second * 1e-4, "position.longitude": -8.6 + phase * 1e-3,
            "position.altitude": 20.0, "engine.ignition.status": True,
        }]).encode()
        post(platform.port, paths[phase], body, fixture.key)
        accepted = time.time()
        with lock:
            sent.append((phase, stamp, accepted))

    log_start = {name: len(platform.lines(name)) for name in platform.workers}
    spies = start_profiles(platform, profile, seconds) if profile else []
    meter = CpuMeter(platform.pids())
    counters_before = metric_totals(platform.port)
    start = math.ceil(time.time()) + 0.5
    side = None
    if during is not None:
        side = threading.Timer(start + WARMUP + 5 - time.time(), during)
        side.start()
    per_second = min(PHASES, len(groups))
    with ThreadPoolExecutor(max_workers=4 * per_second) as pool:
        futures = []
        for second in range(int(seconds)):
            for step in range(per_second):
                phase = (second % EVERY) * PHASES + step
                if phase >= len(groups):
                    continue
                wait = start + second + step / per_second - time.time()
                if wait > 0:
                    time.sleep(wait)
                futures.append(pool.submit(send, phase, second))
        for future in futures:
            future.result()
    if side is not None:
        side.join()
    run.wall, run.cpu = meter.used()
    run.messages_sent = sum(len(groups[phase]) for phase, _stamp, _accepted in sent)
    counters_after = metric_totals(platform.port)
    run.counted = {name: counters_after[name] - counters_before.get(name, 0.0) for name in COUNTED}
    run.tasks = {}
    for name in platform.workers:
        for task, (count, spent) in task_times(platform.lines(name)[log_start[name]:]).items():
            before = run.tasks.get(task, (0, 0.0))
            run.tasks[task] = (before[0] + count, before[1] + spent)
    drained = time.monotonic() + DRAIN
    while True:  # until the worker caught up (it may be far behind) and the events stopped
        seen = len(subscriber.records)
        time.sleep(3)
        quiet = len(subscriber.records) == seen and not timers_busy()
        if (quiet and time.monotonic() > drained) or time.monotonic() > drained + 600:
            break
    subscriber.close()
    for spy in spies:
        spy.finish()
    if LOGS is not None:
        LOGS.mkdir(parents=True, exist_ok=True)
        for name in platform.fleet.processes:
            (LOGS / f"latency-{size}-{name}.log").write_text(
                "\n".join(platform.lines(name)[log_start.get(name, 0):]))
    calculator_remove(calculator)

    ends: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
    for record in subscriber.records:
        device_id = int(record.topic.split("/")[-2])
        ends[device_id].append((round(json.loads(record.payload)["end"] * 1e6), record.at))
    for events in ends.values():
        events.sort()
    for phase, stamp, accepted in sent:
        if stamp < start + WARMUP:
            continue
        run.accept.append(accepted - stamp)
        us = round(stamp * 1e6)
        for device in groups[phase]:
            run.messages += 1
            events = ends.get(device.pk, [])
            first = next(((end, at) for end, at in events if end >= us), None)
            if first is None:
                run.missing += 1
                continue
            # The first event that reaches it: later ones (a later message's run) may come first
            # when delivered out of order, so take the earliest receive among those reaching it.
            at = min(at for end, at in events if end >= us)
            run.exact += first[0] == us
            run.latencies.append(at - accepted)
            run.samples.append((accepted, at - accepted))
    if LOGS is not None:  # each message's (accepted, latency), to see when the slow ones happen
        (LOGS / f"latency-{size}-samples.json").write_text(json.dumps(run.samples))
    return run


def ingest_during(platform: Platform, fixture, batches: int):
    """A callable for ``latency(during=...)`` that posts ``batches`` of ``ingest.BATCH`` messages to a
    device of its own (no calculator: the fleet's load stays the latency run's) from two clients,
    and the dict where it leaves the rate it held (messages/s)."""
    [device] = fixture.new_devices(1)
    source = ingest.MessageSource(time.time() - 90 * 86400)
    bodies = [json.dumps(source.batch()).encode() for _ in range(batches)]
    path = f"/gw/devices/{device.pk}/messages"
    result: dict[str, float] = {}

    def run() -> None:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda body: post(platform.port, path, body, fixture.key), bodies))
        result["messages/s"] = batches * ingest.BATCH / (time.perf_counter() - started)

    return run, result


def print_latency(runs: list[LatencyRun]) -> None:
    print(f"\n1. latency: message accepted (REST answer) -> MQTT 'updated' received; update_delay {UPDATE_DELAY} s")
    print(f"{'devices':>7} {'s':>4} {'messages':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7}"
          f" {'exact':>6} {'missing':>7} {'accept p99 ms':>13} {'p99<=1.25s':>10}")
    print("-" * 96)
    for run in runs:
        accept = sorted(run.accept)
        accept_p99 = accept[min(len(accept) - 1, math.ceil(0.99 * len(accept)) - 1)] * 1000 if accept else math.nan
        print(f"{run.size:>7,} {run.seconds:>4.0f} {run.messages:>9,} {run.pct(0.5) * 1e3:>7.0f}"
              f" {run.pct(0.9) * 1e3:>7.0f}"
              f" {run.pct(0.99) * 1e3:>7.0f} {max(run.latencies, default=math.nan) * 1e3:>7.0f}"
              f" {run.exact / max(run.messages, 1):>6.0%} {run.missing:>7} {accept_p99:>13.0f}"
              f" {'yes' if run.pct(0.99) <= TARGET_P99 else 'no':>10}")
    print("exact: share of messages whose own run's event (interval end = its timestamp) came; the rest were"
          " covered by a run that took a later message of the device too")
    long_runs = [run for run in runs if run.seconds >= 120 and run.samples]
    if long_runs:
        print("\np99 ms by minute of the run (the devices' trips never end: a later minute's open intervals are longer)")
        for run in long_runs:
            first = min(accepted for accepted, _latency in run.samples)
            minutes: dict[int, list[float]] = collections.defaultdict(list)
            for accepted, value in run.samples:
                minutes[int((accepted - first) // 60)].append(value)
            cells = []
            for minute in sorted(minutes):
                ordered = sorted(minutes[minute])
                cells.append(f"min {minute + 1}: {ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1e3:.0f}")
            print(f"{run.size:>7,}  " + ", ".join(cells))
    print("\nCost per stage during each run: ingest (web CPU), drain and run (the workers' busy time in those"
          " tasks, run also per recalculation), relay and publish (relay and broker CPU per MQTT publish),"
          " PostgreSQL CPU; µs")
    print(f"{'devices':>7} {'messages/s':>10} {'ingest':>7} {'drain':>7} {'run':>7} {'recalcs/s':>9} {'extended':>8}"
          f" {'run/recalc':>10} {'publish/s':>9} {'relay':>6} {'publish':>7} {'PostgreSQL':>10}")
    for run in runs:
        sent = max(run.messages_sent, 1)
        recalcs = run.counted.get("flespi_recalculations_total", 0.0)
        extended = run.counted.get("flespi_recalculations_extended_total", 0.0)
        publishes = run.counted.get("flespi_relay_published_total", 0.0)
        drain = run.tasks.get(FleetTask.SHARD_CHANGES, (0, 0.0))[1]
        runs_busy = run.tasks.get(FleetTask.SHARD_RUN, (0, 0.0))[1]
        print(f"{run.size:>7,} {sent / run.wall:>10,.0f} {run.cpu.get('web', 0) / sent * 1e6:>7.0f}"
              f" {drain / sent * 1e6:>7.0f} {runs_busy / sent * 1e6:>7.0f} {recalcs / run.wall:>9,.0f}"
              f" {extended / max(recalcs, 1):>8.0%}"
              f" {runs_busy / max(recalcs, 1) * 1e6:>10.0f} {publishes / run.wall:>9,.0f}"
              f" {run.cpu.get('relay', 0) / max(publishes, 1) * 1e6:>6.1f}"
              f" {run.cpu.get('broker', 0) / max(publishes, 1) * 1e6:>7.1f}"
              f" {run.cpu.get('PostgreSQL', 0) / sent * 1e6:>10.0f}")
    print("\nCPU during each run (% of one core) and the calc worker's tasks (from its log):")
    names = sorted({name for run in runs for name in run.cpu})
    print(f"{'devices':>7} " + " ".join(f"{name:>10}" for name in names) + "   tasks: count, busy % of the run, ms each")
    for run in runs:
        tasks = ", ".join(f"{task.short} {count} {spent / run.wall:.0%} {spent / count * 1e3:.1f}"
                          for task, (count, spent) in sorted(run.tasks.items()))
        print(f"{run.size:>7,} " + " ".join(f"{run.cpu.get(name, 0) / run.wall:>10.0%}" for name in names)
              + f"   {tasks}")


# --- profiles -------------------------------------------------------------------------------


SPY_RATE = 50


class Spy:
    """``py-spy record --format raw`` of one process."""

    def __init__(self, name: str, pid: int, out: Path, seconds: float):
        self.name, self.out = name, out
        binary = REPO / ".venv" / "bin" / "py-spy"
        if not binary.exists():
            raise SystemExit(f"--profile needs py-spy: install it with `{REPO / '.venv/bin/pip'} install py-spy`")
        self.process = subprocess.Popen(
            [str(binary), "record", "--pid", str(pid), "--format", "raw", "--rate", str(SPY_RATE), "--nonblocking",
             "--duration", str(int(seconds)), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def finish(self) -> None:
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait()


def start_profiles(platform: Platform, directory: Path, seconds: float) -> list[Spy]:
    directory.mkdir(parents=True, exist_ok=True)
    pids = platform.pids()
    return [Spy(name, pids[name], directory / f"{name}.txt", seconds) for name in ("worker", "pump")]


def profile_summary(path: Path, top: int = 18, *, busy: bool = True) -> list[tuple[str, float, float]]:
    """(function, inclusive share, own share) of the samples of a raw py-spy file, by inclusive
    share; ``busy``: leaving out idle frames (waiting for a task in select/poll/sleep)."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    idle = ("select (", "poll (", "_recv", "wait (", "sleep", "epoll", "readinto (", "accept (")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if busy and any(frame.startswith(idle) for frame in frames[-2:]) and "(worker.py)" not in stack:
            continue
        samples = int(count)
        total += samples
        names = []
        for frame in frames:
            name = re.sub(r" \((.*?):\d+\)$", lambda match: f" ({Path(match.group(1)).name})", frame)
            if name not in names:
                names.append(name)
        for name in names:
            inclusive[name] += samples
        own[names[-1]] += samples
    if not total:
        return []
    return [(name, value / total, own[name] / total) for name, value in inclusive.most_common(top)]


def print_profiles(directory: Path, top: int = 30) -> None:
    for name in ("worker", "pump"):
        path = directory / f"{name}.txt"
        if not path.exists():
            continue
        # The frames every busy sample shares (the process's main loop) say nothing.
        rows = [row for row in profile_summary(path, top=1000) if row[1] < 0.9][:top]
        print(f"\npy-spy of the {name} during the largest latency run: share of its busy samples, inclusive and own")
        for function, share, own in rows:
            print(f"  {share:>6.1%} {own:>6.1%}  {function[:110]}")


# --- 2. sync --------------------------------------------------------------------------------


def log_time(line: str) -> float:
    return datetime.strptime(line.split(" ")[0] + " " + line.split(" ")[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def sync(platform: Platform, fixture, count: int, profile: Path | None) -> dict[str, float]:
    from engine import CALCULATORS  # bench/engine.py

    from analytics.models import Assignment
    from analytics.services import assignment_create, calculator_create
    from devices.services import messages_ingest

    [device] = fixture.new_devices(1)
    source = ingest.MessageSource(start=math.floor(time.time()) - count - 3600)
    started = time.perf_counter()
    stored = 0
    while stored < count:
        batch = source.batch(min(100_000, count - stored))
        result = messages_ingest(devices=[device], messages=batch, source="rest")
        assert result.accepted == len(batch) and not result.errors, result.errors[:3]
        stored += len(batch)
    print(f"\nstored {stored:,} messages on device {device.pk} in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    blocks_sealed = sealed_count(device)
    while blocks_sealed < count - count % 4096:
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"only {blocks_sealed:,} messages sealed after 600 s")
        time.sleep(0.5)
        blocks_sealed = sealed_count(device)
    print(f"the pump's sealer put {blocks_sealed:,} of them in message blocks within {time.perf_counter() - started:.0f} s",
          flush=True)
    ingest.vacuum()
    time.sleep(2)  # the worker consumes the change log of the load (nothing cached: nothing to do)
    calculator = calculator_create(account=fixture.account, config=CALCULATORS["trips (DESIGN 9)"])
    worker = platform.fleet.processes["worker"][0].pid
    log_start = {name: len(platform.lines(name)) for name in platform.workers}
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    spy = Spy("worker", worker, profile / "sync-worker.txt", 120) if profile else None
    assigned = time.time()
    assignment, _new = assignment_create(calculator=calculator, device=device)
    states = {}
    while True:
        state = Assignment.objects.using(device.database).values_list("state", flat=True).get(pk=assignment.pk)
        states.setdefault(state, time.time())
        if state == "synced":
            break
        if time.time() - assigned > 600:
            raise RuntimeError(f"not synced after 600 s (state {state})")
        time.sleep(0.02)
    synced = states["synced"]
    if spy is not None:
        spy.process.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.finish()
    phases = {"assign -> synced (wall)": synced - assigned}
    if "synchronizing" in states:
        phases["assign -> synchronizing seen"] = states["synchronizing"] - assigned
    for name in platform.workers:
        for line in platform.lines(name)[log_start[name]:]:
            received = RECEIVED_LINE.search(line)
            if received and received.group(2) == FleetTask.SHARD_RUN and "run task received" not in phases:
                phases["assign -> run task received (worker log)"] = log_time(line) - assigned
            fill = FILL_LINE.search(line)
            if fill and int(fill.group(1)) == device.pk:
                phases[f"cache fill from PostgreSQL ({int(fill.group(2)):,} messages)"] = float(fill.group(3))
            task = TASK_LINE.search(line)
            if task and task.group(1) == FleetTask.SHARD_RUN and "the run's task" not in phases:
                phases["the run's task (worker log)"] = float(task.group(2))
    intervals = stored_intervals(calculator, device)
    phases[f"({intervals} intervals stored)"] = math.nan
    if spy is not None:
        phases.update(sync_profile(profile / "sync-worker.txt", phases.get("the run's task (worker log)", math.nan)))
    return phases


def stored_intervals(calculator, device) -> int:
    from django.db import connections

    with connections[device.database].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM intervals WHERE calc_id = %s AND device_id = %s", [calculator.pk, device.pk])
        return cursor.fetchone()[0]


SYNC_PARTS = {
    "fill: PostgreSQL read + JSON decode (messages_read)": "messages_read (storage.py)",
    "  of which JSON decode (loads_exact)": "loads_exact",
    "fill: into the cache file (ShardCache.messages_put)": "ShardCache.messages_put (cache.py)",
    "calculation (engine recalculate)": "recalculate (recalculate.py)",
    "storing intervals + outbox (runs_store)": "runs_store (calculation.py)",
    "cache intervals (ShardCache.intervals_apply)": "ShardCache.intervals_apply (cache.py)",
}


def sealed_count(device) -> int:
    from django.db import connections

    with connections[device.database].cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(n), 0) FROM message_blocks WHERE device_id = %s AND name = ''", [device.pk])
        return cursor.fetchone()[0]


def sync_profile(path: Path, task_seconds: float) -> dict[str, float]:
    """Seconds of the run's task in each part of the sync: its share of the worker's py-spy
    samples (which a loaded machine thins, so shares, not counts) times the task's time."""
    rows = {name: share for name, share, _own in profile_summary(path, top=10_000, busy=False)}
    out = {}
    for label, function in SYNC_PARTS.items():
        share = next((value for name, value in rows.items() if name.startswith(function)), 0.0)
        out[f"  py-spy: {label} ({share:.0%})"] = share * task_seconds
    return out


def print_sync(phases: dict[str, float], count: int) -> None:
    print(f"\n2. sync: assigning a device with {count:,} stored messages (the trips calculator of bench/engine.py)")
    print("-" * 80)
    for label, seconds in phases.items():
        print(f"  {label:64} {'' if math.isnan(seconds) else f'{seconds:8.2f} s'}")
    print("target: <= 15 s (aim 5)")


# --- 3. throughput --------------------------------------------------------------------------


def pg_commits(alias: str) -> int:
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            [connections[alias].settings_dict["NAME"]],
        )
        return cursor.fetchone()[0]


IDLE_COMMITS: list[float] = []


def timers_busy() -> int:
    """Debounce entries of the region offered, running, or due within 30 s (the wall-clock
    timers of open intervals, due max_inactive after their last message, are not work left)."""
    from django.conf import settings

    from analytics.fleet.debounce import DebounceTimers
    from flespi_site.celery import redis_client

    timers = DebounceTimers(redis_client("eu"), region="eu")
    soon = timers.now() + 30
    return sum(
        1 for shard in range(settings.CALC_SHARDS) for entry in timers.entries(shard=shard)
        if entry.state != "pending" or entry.due is None or entry.due < soon
    )


def timers_left(timers, shards: int) -> int:
    return sum(len(timers.entries(shard=shard)) for shard in range(shards))


def shard_groups(fixture, devices, *, shards: int, per_shard: int) -> list:
    """``per_shard`` devices in each of ``shards`` shards (more devices are made when needed), so
    that one task can carry ``per_shard`` due assignments."""
    while True:
        by_shard: dict[int, list] = collections.defaultdict(list)
        for device in devices:
            by_shard[device.shard].append(device)
        full = sorted(by_shard.values(), key=len, reverse=True)[:shards]
        if len(full) == shards and len(full[-1]) >= per_shard:
            return [device for group in full for device in group[:per_shard]]
        devices = [*devices, *fixture.new_devices(per_shard)]


def throughput(platform: Platform, fixture, devices, per_task: int) -> dict[str, float]:
    from django.conf import settings

    from analytics.fleet.debounce import DebounceTimers
    from devices.services import messages_ingest
    from flespi_site.celery import celery_app, redis_client
    from flespi_site.fleet import Due, ShardRun

    timers = DebounceTimers(redis_client("eu"), region="eu")
    # No max_inactive: a run arms no wall-clock timer, so that no timer is left once all are done.
    calculator = assign(fixture.account, devices, trips(3600, max_inactive=0))
    wait_synced(calculator, len(devices), timeout=300)
    # Timers left by earlier parts (wall-clock closing of the latency runs' intervals) would add
    # runs of their own: dropped.
    redis = redis_client("eu")
    for shard in range(settings.CALC_SHARDS):
        for key in timers.keys(shard):
            redis.delete(key)
    now = time.time()
    messages_ingest(devices=devices, messages=[{"timestamp": round(now, 3), "position.speed": 44.0,
                                                "position.latitude": 52.61, "position.longitude": -8.61}])
    deadline = time.monotonic() + 120
    while timers_left(timers, settings.CALC_SHARDS) < len(devices):
        if time.monotonic() > deadline:
            raise RuntimeError("the change log of the throughput message was not consumed")
        time.sleep(0.1)
    alias = devices[0].database
    # pg_stat_database: every backend has reported its counts after 10 s idle. The idle rate (the
    # relay polling its outbox, the pump's sweeps), measured once over 11 s more, is taken off.
    time.sleep(11)
    commits = pg_commits(alias)
    if not IDLE_COMMITS:
        time.sleep(11)
        IDLE_COMMITS.append((pg_commits(alias) - commits) / 11)
        commits = pg_commits(alias)
    idle_rate = IDLE_COMMITS[0]
    log_start = {name: len(platform.lines(name)) for name in platform.workers}
    meter = CpuMeter({**{name: platform.fleet.processes[name][0].pid for name in platform.workers},
                      "relay": platform.fleet.processes["relay"][0].pid})
    holders = platform.fleet.holders()
    by_shard: dict[int, list[Due]] = collections.defaultdict(list)
    for device in devices:
        by_shard[device.shard].append(Due(calculator.pk, device.pk, device.shard))
    app = celery_app("eu")
    started = time.monotonic()
    tasks = 0
    for shard, pairs in by_shard.items():
        for start in range(0, len(pairs), per_task):
            ShardRun(region="eu", shard=shard, due=tuple(pairs[start:start + per_task])).send(app, holders[shard])
            tasks += 1
    while timers_left(timers, settings.CALC_SHARDS):
        if time.monotonic() - started > 600:
            raise RuntimeError("the runs did not finish in 600 s")
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    _wall, cpu = meter.used()
    runs = [task_times(platform.lines(name)[log_start[name]:]).get(FleetTask.SHARD_RUN, (0, 0.0))
            for name in platform.workers]
    ran = (sum(count for count, _ in runs), sum(seconds for _, seconds in runs))
    time.sleep(11)
    committed = pg_commits(alias) - commits - idle_rate * (time.monotonic() - started)
    calculator_remove(calculator)
    return {
        "per task": per_task, "tasks": tasks, "seconds": elapsed, "recalculations/s": len(devices) / elapsed,
        "workers": len(platform.workers), "task ms": ran[1] / max(ran[0], 1) * 1e3,
        "worker CPU %": sum(cpu[name] for name in platform.workers) / elapsed,
        "PostgreSQL CPU %": cpu["PostgreSQL"] / elapsed, "commits": committed,
        "commits/s": committed / elapsed, "commits per recalculation": committed / len(devices),
        "idle commits/s": idle_rate,
    }


def print_throughput(rows: list[dict], devices: int) -> None:
    workers = rows[0]["workers"] if rows else 1
    print(f"\n3. throughput: {workers} worker(s), each with a cache directory of its own, {devices:,} due assignments"
          " (one new message each), sent as tasks of k to the shards' holders")
    print(f"{'k':>4} {'tasks':>6} {'s':>7} {'recalc/s':>9} {'ms/task':>8} {'worker CPU':>10} {'PG CPU':>7}"
          f" {'commits':>8} {'commits/s':>9} {'per recalc':>10}")
    print("-" * 86)
    for row in rows:
        print(f"{row['per task']:>4} {row['tasks']:>6} {row['seconds']:>7.2f} {row['recalculations/s']:>9.0f}"
              f" {row['task ms']:>8.1f} {row['worker CPU %']:>10.0%} {row['PostgreSQL CPU %']:>7.0%}"
              f" {row['commits']:>8.0f} {row['commits/s']:>9.0f} {row['commits per recalculation']:>10.2f}")
    print("commits: transactions committed in the datacenter database during the runs (worker and relay), less the"
          f" idle rate measured before ({statistics.mean(row['idle commits/s'] for row in rows):.0f}/s:"
          " the relay's polls)")


# --- 5. a rolling restart under load ------------------------------------------------------------


class RollingRestart:
    """Restart every calc worker in turn (SIGTERM, then the same name again, once the shards are
    placed on all of them again), watching the leases: which shards changed hands, and what the
    workers filled meanwhile."""

    def __init__(self, platform: Platform):
        self.platform = platform
        self.moved: set[int] = set()  # shards that went to a worker other than their holder before
        self.unheld: dict[int, float] = {}  # shard -> seconds it had no holder
        self.window: tuple[float, float] = (0.0, 0.0)
        self.logs: list[str] = []
        self.restart_seconds: list[float] = []
        self.before = (0, 0)  # devices and messages filled before the first restart

    def _watch(self, stop: threading.Event) -> None:
        last = self.platform.fleet.holders()
        since: dict[int, float] = {}
        while not stop.is_set():
            now = time.time()
            for shard, holder in self.platform.fleet.holders().items():
                if holder is None:
                    since.setdefault(shard, now)
                    continue
                if shard in since:
                    self.unheld[shard] = max(self.unheld.get(shard, 0.0), now - since.pop(shard))
                if last.get(shard) is not None and holder != last[shard]:
                    self.moved.add(shard)
                last[shard] = holder
            time.sleep(0.1)

    def __call__(self) -> None:
        fleet, names = self.platform.fleet, self.platform.workers
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True)
        begin = time.time()
        self.before = self.filled()
        watcher.start()
        for name in names:
            self.logs += self.platform.lines(name)
            started = time.time()
            fleet.terminate(name)
            fleet.start_worker(name)
            fleet.wait_placed(set(names), timeout=120)
            self.restart_seconds.append(time.time() - started)
        time.sleep(2)
        stop.set()
        watcher.join()
        self.window = (begin, time.time())

    def filled(self) -> tuple[int, int]:
        """Devices and messages the workers filled from PostgreSQL (the old processes' logs and the
        new ones')."""
        lines = self.logs + [line for name in self.platform.workers for line in self.platform.lines(name)]
        fills = [FILL_LINE.search(line) for line in lines]
        found = [fill for fill in fills if fill]
        return len(found), sum(int(fill.group(2)) for fill in found)


def rolling(platform: Platform, fixture, devices, seconds: float) -> tuple[LatencyRun, RollingRestart]:
    restart = RollingRestart(platform)
    run = latency(platform, fixture, devices, seconds, None, during=restart)
    return run, restart


def print_rolling(run: LatencyRun, restart: RollingRestart) -> None:
    devices, messages = restart.filled()
    before = restart.before
    begin, end = restart.window
    during = sorted(latency for accepted, latency in run.samples if begin <= accepted <= end)
    outside = sorted(latency for accepted, latency in run.samples if not begin <= accepted <= end)

    def pct(values: list[float], quantile: float) -> str:
        return f"{values[min(len(values) - 1, math.ceil(quantile * len(values)) - 1)] * 1e3:.0f}" if values else "-"

    print(f"\n5. rolling restart of {len(restart.restart_seconds)} calc workers (SIGTERM, started again under its name),"
          f" {run.size} devices at 1 msg/s, update_delay {UPDATE_DELAY} s")
    print(f"{'shards moved':>12} {'longest unheld s':>16} {'devices filled':>14} {'messages filled':>15}"
          f" {'restart s':>10} {'p99 ms during':>13} {'max ms during':>13} {'p99 ms outside':>14} {'missing':>7}")
    print("-" * 125)
    print(f"{len(restart.moved):>12} {max(restart.unheld.values(), default=0.0):>16.1f} {devices - before[0]:>14}"
          f" {messages - before[1]:>15,} {' / '.join(f'{seconds:.1f}' for seconds in restart.restart_seconds):>10}"
          f" {pct(during, 0.99):>13} {pct(during, 1.0):>13} {pct(outside, 0.99):>14} {run.missing:>7}")
    print("shards moved: shards that went to a worker other than their holder before; unheld: the longest a shard had"
          " no lease during the restarts; filled: whole devices copied from PostgreSQL into a cache meanwhile")


# --- 4. queries per run (in process) ---------------------------------------------------------


def statement_kind(sql: str) -> str:
    """A short name of a statement, for counting."""
    words = sql.split()
    head = " ".join(words[:2]).upper()
    for table in ("message_changes", "analytics_assignment", "intervals", "outbox", "messages", "shard_fence",
                  "analytics_calculator"):
        if table in sql[:400]:
            break
    else:
        table = ""
    if head.startswith("SELECT 1") and "FOR KEY SHARE" in sql:
        return "SELECT .. FOR KEY SHARE (assignment lock)"
    if table == "shard_fence":
        return "fence check"
    verb = words[0].upper() if words else "?"
    if verb == "WITH":
        verb = "WITH .. " + next(
            (word.upper() for word in words if word.upper() in ("INSERT", "UPDATE", "DELETE")), "SELECT")
    return f"{verb} {table}".strip()


def query_counts(platform: Platform, fixture, devices) -> list[tuple[str, int, int, dict[str, int], float]]:
    """The fleet's worker stopped, a ``ShardWorker`` in this process takes the shards and runs
    ``changes`` and ``run`` under Django's query capture: (what, assignments, statements, by kind,
    seconds). The fleet's worker is started again afterwards."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from analytics.fleet.worker import ShardWorker
    from devices.services import messages_ingest

    by_shard: dict[int, list] = collections.defaultdict(list)
    for device in devices:
        by_shard[device.shard].append(device)
    shard, group = max(by_shard.items(), key=lambda item: len(item[1]))
    calculator = assign(fixture.account, group, trips(3600, max_inactive=0))
    wait_synced(calculator, len(group), timeout=300)
    process, _output = platform.fleet.processes.pop("worker")
    process.terminate()  # a warm shutdown: the worker releases its leases
    process.wait(30)
    worker = ShardWorker(region="eu", worker_id=f"bench-{os.getpid()}", data_dir=platform.fleet.data_dir,
                         lease_ttl=60)
    rows = []
    try:
        while shard not in worker.held:
            worker.rebalance()
            time.sleep(0.2)
        alias = group[0].database
        for label, size in (("run of 1 assignment", 1), (f"run of {len(group)} assignments", len(group))):
            messages_ingest(devices=group, messages=[{"timestamp": round(time.time(), 3), "position.speed": 44.0}])
            with CaptureQueriesContext(connections[alias]) as captured:
                started = time.perf_counter()
                worker.changes_drain(shard)
                spent = time.perf_counter() - started
            rows.append((f"changes: {len(group)} devices changed", len(group), len(captured), kinds(captured), spent))
            pairs = [(calculator.pk, device.pk) for device in group[:size]]
            with CaptureQueriesContext(connections[alias]) as captured:
                started = time.perf_counter()
                stats = worker.batch_run({shard: pairs})
                spent = time.perf_counter() - started
            assert stats.assignments == size, stats
            rows.append((label, size, len(captured), kinds(captured), spent))
            worker.batch_run({shard: [(calculator.pk, device.pk) for device in group[size:]]})  # the rest
    finally:
        worker.leave()
        platform.fleet.start_worker("worker")
        platform.fleet.wait_for("worker", "holds shards", timeout=60)
    calculator_remove(calculator)
    return rows


def kinds(captured) -> dict[str, tuple[int, float]]:
    """Statements by kind: (count, ms in PostgreSQL's round trips as Django timed them)."""
    out: dict[str, tuple[int, float]] = {}
    for query in captured:
        count, ms = out.get(statement_kind(query["sql"]), (0, 0.0))
        out[statement_kind(query["sql"])] = (count + 1, ms + float(query["time"]) * 1000)
    return out


def print_query_counts(rows) -> None:
    print("\n4. statements to PostgreSQL per task (the worker's code in this process, Django's query capture)")
    print(f"{'task':34} {'n':>4} {'statements':>10} {'per item':>8} {'ms':>7}   by kind (count, ms)")
    print("-" * 100)
    for label, assignments, count, kinds, spent in rows:
        detail = ", ".join(f"{kind} {count} ({ms:.1f} ms)" for kind, (count, ms) in sorted(kinds.items(),
                                                                                      key=lambda kv: -kv[1][1]))
        print(f"{label:34} {assignments:>4} {count:>10} {count / assignments:>8.1f} {spent * 1e3:>7.1f}"
              f"   {detail}")


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s latency runs of 10 and 100 devices, 100,000 messages")
    parser.add_argument("--sizes", default="", help="latency fleet sizes (default 10,100,1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of each latency run (default 60)")
    parser.add_argument("--only", default="latency,sync,throughput,queries", help="which parts to run")
    parser.add_argument("--search", type=int, default=2,
                        help="latency runs bisecting for the largest fleet within the target (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="calc workers (default 1)")
    parser.add_argument("--sync-messages", type=int, default=1_000_000)
    parser.add_argument("--throughput-devices", type=int, default=1000,
                        help="due assignments of the throughput runs, 100 in each of a tenth as many shards")
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy profiles into this directory")
    parser.add_argument("--logs", type=Path, default=None,
                        help="write each process's log of each latency run into this directory")
    parser.add_argument("--ingest-during", type=int, default=0,
                        help="also post this many batches of 1,000 messages during each latency run and print the rate")
    parser.add_argument("--every", type=int, default=1,
                        help="seconds between a device's messages in the latency runs (default 1; 30: a common tracker)")
    options = parser.parse_args()
    global LOGS, EVERY
    LOGS = options.logs
    EVERY = max(1, options.every)
    sizes = ([int(part) for part in options.sizes.split(",") if part]
             or ([10, 100] if options.quick else [10, 100, 1000]))
    seconds = 15.0 if options.quick else options.seconds
    sync_messages = 100_000 if options.quick else options.sync_messages
    throughput_devices = 200 if options.quick else options.throughput_devices
    parts = set(options.only.split(","))

    ingest.configure_environment()
    print(f"setting up {os.environ['DATABASE_URL']} (+ _eu_1) ...", flush=True)
    ingest.setup_databases()
    ingest.vacuum()
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}",
          flush=True)
    fixture = ingest.Fixture()
    platform = Platform(options.workers)
    try:
        devices = fixture.new_devices(max([*sizes, throughput_devices if parts & {"throughput", "queries"} else 0]))
        if "latency" in parts:
            runs = []
            for size in sizes:
                print(f"latency: {size} devices for {seconds:.0f} s ...", flush=True)
                largest = size == max(sizes)
                during, rate = ingest_during(platform, fixture, options.ingest_during) if options.ingest_during else (None, {})
                runs.append(latency(platform, fixture, devices[:size], seconds,
                                    options.profile if largest else None, during=during))
                print_latency(runs[-1:])
                if rate:
                    print(f"ingestion during the run: {rate['messages/s']:,.0f} messages/s ({options.ingest_during} batches"
                          f" of {ingest.BATCH:,} messages to one more device, two clients, the same web process)")
            search = [run for run in runs if run.pct(0.99) <= TARGET_P99]
            failing = [run.size for run in runs if run.pct(0.99) > TARGET_P99]
            low, high = max((run.size for run in search), default=0), min(failing, default=0)
            for _step in range(options.search):
                if not high or high - low <= 50:
                    break
                size = max(50, round((low + high) / 2 / 50) * 50)
                print(f"latency: {size} devices for {seconds:.0f} s (the largest fleet within the target?) ...",
                      flush=True)
                runs.append(latency(platform, fixture, devices[:size], seconds, None))
                print_latency(runs[-1:])
                low, high = (size, high) if runs[-1].pct(0.99) <= TARGET_P99 else (low, size)
            runs.sort(key=lambda run: run.size)
            print_latency(runs)
            if options.profile:
                print_profiles(options.profile)
        if "sync" in parts:
            print_sync(sync(platform, fixture, sync_messages, options.profile), sync_messages)
        if "throughput" in parts:
            rows = []
            chosen = shard_groups(fixture, devices, shards=throughput_devices // 100, per_shard=100)
            for per_task in (1, 10, 100):
                print(f"throughput: tasks of {per_task} ...", flush=True)
                rows.append(throughput(platform, fixture, chosen, per_task))
            print_throughput(rows, len(chosen))
        if "rolling" in parts:
            if len(platform.workers) < 2:
                raise SystemExit("--only rolling needs --workers 2 or more")
            size = max(sizes)
            print(f"rolling restart: {size} devices for {seconds:.0f} s ...", flush=True)
            print_rolling(*rolling(platform, fixture, devices[:size], seconds))
        if "queries" in parts:
            print_query_counts(query_counts(platform, fixture, devices[:throughput_devices]))
        print(f"\nload average now {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    finally:
        platform.stop()
        fixture.close()
        ingest.vacuum()
    return 0


if __name__ == "__main__":
    sys.exit(main())
