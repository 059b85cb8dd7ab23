"""Benchmark of the live move of an account between two datacenters of its region.

    .venv/bin/python bench/move.py [--sizes 10000,100000,1000000] [--devices 10]

For each size, an account in ``eu-1`` gets ``--devices`` devices holding that many messages in all
(16 parameters each, about 400 bytes of JSON), their telemetry, and a calculator assigned to every
device with one stored interval per 1,000 messages. Then ``manage.py account_move --to eu-2``
runs as its own process while a writer in this process stores one message per call into a
device of the account through ``devices.services.messages_ingest`` (the path of REST and MQTT),
without pause. Printed per size: the command's wall time, its time copying, the time it held
the account's writes (its own measure), and the longest write the writer saw during the move
(the pause as a client feels it: waiting for the switch, and writing again where the account
went); then the command's own summary for the largest size. The account is deleted afterwards.

Runs on the PostgreSQL named by ``DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/flespi_bench``), on databases of its own with a topology of
one region and two datacenters: ``<name>_move``, ``<name>_move_eu_1``, ``<name>_move_eu_2``,
created when missing. A database whose name does not contain "bench" is never used
(``<name>_bench_move`` on the same server is).

Target (DESIGN section 9): writes paused < 1 s for an account with 1,000,000 messages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/flespi_bench"
TOPOLOGY = {
    "default_region": "eu",
    "domain": "localhost",
    "regions": [
        {
            "code": "eu",
            "datacenters": [{"code": "eu-1", "number": 1}, {"code": "eu-2", "number": 2}],
            "default_datacenter": "eu-1",
        }
    ],
}
T0 = 1_600_000_000


def configure_environment() -> None:
    """bench/ingest.py's environment (a database whose name says "bench"), on databases of their
    own (``<name>_move``: another topology) with this benchmark's topology."""
    from bench import ingest

    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    ingest.configure_environment()
    parts = urlsplit(os.environ["DATABASE_URL"])
    if not parts.path.endswith("_move"):
        os.environ["DATABASE_URL"] = parts._replace(path=f"{parts.path}_move").geturl()
    os.environ["FLESPI_TOPOLOGY"] = json.dumps(TOPOLOGY)


def populate(size: int, devices: int):
    """An account in eu-1 with ``size`` messages over ``devices`` devices (bulk-loaded in SQL),
    telemetry, and an assigned calculator with stored intervals."""
    from django.db import connections

    from accounts.services import account_create
    from analytics.services import assignment_create, calculator_create
    from devices.services import device_create, messages_ingest

    account = account_create(name=f"bench move {size}", parent=None, region_code=None, datacenter_code="eu-1")
    created = [
        device_create(account=account, configuration={"ident": f"move-{account.pk}-{number}"})
        for number in range(devices)
    ]
    per_device = size // devices
    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO messages (device_id, ts, body)
            SELECT d, (%s::bigint + g) * 1000000, json_build_object(
                'timestamp', %s + g, 'position.latitude', 52.6 + g %% 100 / 1e4,
                'position.longitude', -8.6 + g %% 77 / 1e4, 'position.altitude', 20.0,
                'position.speed', g %% 90, 'position.direction', g %% 360, 'position.satellites', 9,
                'position.valid', true, 'position.hdop', 0.9, 'engine.ignition.status', true,
                'can.fuel.level', 64.5, 'can.engine.rpm', 700 + g %% 2000, 'can.vehicle.mileage', g / 36.0,
                'external.powersource.voltage', 27.4, 'gsm.signal.level', 70, 'device.id', d)
            FROM unnest(%s::bigint[]) AS d, generate_series(0, %s - 1) AS g
            """,
            [T0, T0, [device.pk for device in created], per_device],
        )
    messages_ingest(devices=created, messages=[{"timestamp": T0 + per_device, "can.engine.rpm": 800}])
    days = {"name": "days", "selectors": [{"type": "datetime", "split": "day"}]}
    calculator = calculator_create(account=account, config=days)
    for device in created:
        assignment_create(calculator=calculator, device=device)
        with connections["dc_eu_1"].cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO intervals (calc_id, device_id, id, "begin", "end", duration, timestamp, counters)
                SELECT %s, %s, g, %s + g * 1000, %s + g * 1000 + 999, 999, %s, '{"n": 1000}'
                FROM generate_series(0, %s - 1) AS g
                """,
                [calculator.pk, device.pk, T0, T0, time.time(), max(1, per_device // 1000)],
            )
    return account, created


class Writer(threading.Thread):
    """Stores one message per call into a device until stopped; records each call's duration."""

    def __init__(self, device, start: int):
        super().__init__(daemon=True)
        self.device, self.ts = device, start
        self.durations: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from django.db import connections

        from accounts import placement
        from devices.services import messages_ingest
        from flespi_site.errors import DomainError

        device = self.device
        try:
            while not self.stopping.is_set():
                self.ts += 1
                started = time.monotonic()
                try:
                    result = messages_ingest(devices=[device], messages=[{"timestamp": self.ts, "seq": self.ts}])
                except DomainError as exc:
                    self.errors.append(exc.reason)
                    continue
                self.durations.append(time.monotonic() - started)
                if result.accepted != 1:
                    self.errors.append(f"{self.ts} not accepted")
                (device,) = placement.rows_placed([device])  # where the account is placed now
                time.sleep(0.002)
        finally:
            connections.close_all()


def move(account, target: str) -> dict:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "account_move", "--account", str(account.pk), "--to", target],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"account_move failed:\n{done.stdout}\n{done.stderr}")
    found = re.search(r"copying ([\d.]+) s, writes paused (\d+) ms", done.stdout)
    assert found, done.stdout
    return {"wall": wall, "copy": float(found.group(1)), "pause": float(found.group(2)) / 1000, "output": done.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--devices", type=int, default=10)
    args = parser.parse_args()
    configure_environment()
    from bench import ingest

    ingest.setup_databases()
    from django.db import connections

    from accounts.services import accounts_delete

    rows = []
    for size in [int(part) for part in args.sizes.split(",")]:
        account, devices = populate(size, args.devices)
        for alias in ("dc_eu_1", "dc_eu_2"):
            with connections[alias].cursor() as cursor:
                cursor.execute("VACUUM (ANALYZE) messages, intervals")
        writer = Writer(devices[0], T0 + 10**7)
        writer.start()
        time.sleep(0.5)
        measured = move(account, "eu-2")
        time.sleep(0.5)
        writer.stopping.set()
        writer.join(30)
        if writer.errors:
            raise SystemExit(f"the writer saw errors: {writer.errors[:5]}")
        with connections["dc_eu_2"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM messages WHERE device_id = %s AND ts > %s",
                           [devices[0].pk, (T0 + 10**7) * 1_000_000])
            stored = cursor.fetchone()[0]
        if stored != len(writer.durations):
            raise SystemExit(f"{len(writer.durations)} writes accepted, {stored} stored in the target")
        rows.append((size, measured, max(writer.durations), len(writer.durations)))
        accounts_delete(accounts=[account])
    print()
    print("live move eu-1 -> eu-2 of an account (10 devices, a calculator assigned, 1 interval per 1,000 messages)")
    print(f"{'messages':>10} {'command s':>10} {'copying s':>10} {'paused ms':>10} {'longest write ms':>17} {'writes':>7}")
    for size, measured, longest, writes in rows:
        print(f"{size:>10,} {measured['wall']:>10.2f} {measured['copy']:>10.2f} {measured['pause'] * 1000:>10.0f} "
              f"{longest * 1000:>17.0f} {writes:>7}")
    print("target (DESIGN 9): writes paused < 1 s at 1,000,000 messages")
    print()
    print(f"the command's summary at {rows[-1][0]:,} messages:")
    print(rows[-1][1]["output"])


if __name__ == "__main__":
    main()
