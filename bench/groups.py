"""Device creation with groups: what selector groups cost a device create.

    .venv/bin/python bench/groups.py [--groups 0,100,1000] [--creates 200]

For each number of groups, an account gets that many selector groups, each with a calculator
assigned (the case where a create must find the groups it joins: a group without calculators
costs nothing at creation, and a row shows that too). A third of the selectors read a metadata
key (``metadata.fleet=f17``), a third a name mask (``name=truck-17-*``), a third are expressions
(``{metadata.fleet=="f17" && enabled==true}``). Then ``--creates`` devices are created one by one
through ``devices.services.device_create`` (the path of ``POST /gw/devices``), half matching one
group (so one assignment is created with the device), half matching none. Printed per row: the
median and 95th percentile of a create's wall time, and the statements it ran on the datacenter
database. The first create of a process also compiles each selector once (kept per process): its
time is printed apart.

Runs on bench/ingest.py's databases (``DATABASE_URL`` with "bench" in its name, or a sibling
``<name>_bench``), migrated when needed; the account is deleted afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _groups(account, count: int, *, with_calculator: bool) -> None:
    from analytics.models import GroupAssignment
    from analytics.services import calculator_create
    from devices.models import Group
    from regions.datacenters import allocate_ids

    alias = "dc_eu_1"
    calculator = calculator_create(account=account, config={"name": "days", "selectors": [{"type": "datetime", "split": "day"}]})
    selectors = []
    for n in range(count):
        kind = n % 3
        selectors.append(
            f"metadata.fleet=f{n}" if kind == 0 else f"name=truck-{n}-*" if kind == 1
            else f'{{metadata.fleet=="f{n}" && enabled==true}}'
        )
    ids = allocate_ids(alias=alias, count=count) if count else []
    now = time.time()
    groups = [Group(id=pk, account_id=account.pk, name=f"g{n}", selector=selector, created=now)
              for n, (pk, selector) in enumerate(zip(ids, selectors, strict=True))]
    Group.objects.using(alias).bulk_create(groups)
    if with_calculator and count:
        link_ids = allocate_ids(alias=alias, count=count)
        GroupAssignment.objects.using(alias).bulk_create([
            GroupAssignment(id=pk, account_id=account.pk, calculator_id=calculator.pk, group_id=group.pk, created=now)
            for pk, group in zip(link_ids, groups, strict=True)
        ])


def _creates(account, count: int, tag: str) -> tuple[float, list[float], list[int], int]:
    """(first create's seconds, the others' seconds, their statement counts, assignments made)."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from analytics.models import Assignment
    from devices.services import device_create

    times, statements = [], []
    for n in range(count + 1):
        # Even creates match group 0 (a metadata selector), odd ones no group.
        metadata = {"fleet": "f0"} if n % 2 == 0 else {"fleet": "none"}
        with CaptureQueriesContext(connections["dc_eu_1"]) as queries:
            started = time.perf_counter()
            device_create(account=account, name=f"device-{n}", configuration={"ident": f"bench-groups-{tag}-{n}"},
                          metadata=metadata)
            times.append(time.perf_counter() - started)
        statements.append(len(queries))
    made = Assignment.objects.using("dc_eu_1").filter(account_id=account.pk).count()
    return times[0], times[1:], statements[1:], made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="0,100,1000")
    parser.add_argument("--creates", type=int, default=200)
    args = parser.parse_args()

    from bench import ingest

    ingest.configure_environment()
    ingest.setup_databases()
    from django.conf import settings

    from accounts.services import account_create, account_delete
    from devices.selectors import _selector_sql

    settings.DEBUG = False
    rows = []
    cases = [(int(n), True) for n in args.groups.split(",")]
    cases.insert(len(cases), (max(n for n, _ in cases), False))
    for count, with_calculator in cases:
        _selector_sql.cache_clear()
        tag = uuid.uuid4().hex[:8]
        account = account_create(name=f"bench-groups-{tag}")
        try:
            _groups(account, count, with_calculator=with_calculator)
            first, times, statements, made = _creates(account, args.creates, tag)
        finally:
            account_delete(account=account)
        times.sort()
        rows.append((
            f"{count:,} selector groups" + (", each with a calculator" if with_calculator else ", no calculators"),
            first * 1000, statistics.median(times) * 1000, times[int(len(times) * 0.95) - 1] * 1000,
            statistics.median(statements), made,
        ))
    print(f"device create latency, {args.creates} creates per row (half matching one group, half none)")
    print(f"{'groups':<42} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'statements':>11} {'assigned':>9}")
    for name, first, p50, p95, count, made in rows:
        print(f"{name:<42} {first:>9.1f} {p50:>8.2f} {p95:>8.2f} {count:>11.0f} {made:>9}")


if __name__ == "__main__":
    main()
