"""Device creation with groups: what selector groups cost a device create.

    .venv/bin/python bench/groups.py [--groups 0,100,1000] [--creates 200]

For each number of groups, an account gets that many selector groups, each with a calculator
assigned (the case where a create must find the groups it joins: a group without calculators
costs nothing at creation, and a row shows that too). A third of the selectors read a metadata
key (``metadata.fleet=f17``), a third a name mask (``name=truck-17-*``), a third are expressions
(``{metadata.fleet=="f17" && enabled==true}``); a row has name masks only, whose wildcards imply
no condition to search by (``devices.selectors.selector_hint``), so that every one of them is
evaluated for every new device. Then ``--creates`` devices are created one by one through
``devices.services.device_create`` (the path of ``POST /gw/devices``), half joining one group (so
one assignment is created with the device), half joining none. Printed per row: the median wall
time of a create of each half, the 95th percentile of all, and the statements a create joining
none ran on the datacenter database. The first create of a process also compiles each selector it
evaluates once (kept per process): its time is printed apart.

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


def _groups(account, count: int, *, with_calculator: bool, masks_only: bool = False) -> None:
    from analytics.models import GroupAssignment
    from analytics.services import calculator_create
    from devices.models import Group
    from devices.services import group_selector_fields
    from regions.datacenters import allocate_ids

    alias = "dc_eu_1"
    calculator = calculator_create(account=account, config={"name": "days", "selectors": [{"type": "datetime", "split": "day"}]})
    selectors = []
    for number in range(count):
        kind = 1 if masks_only else number % 3
        selectors.append(
            f"metadata.fleet=f{number}" if kind == 0 else f"name=truck-{number}-*" if kind == 1
            else f'{{metadata.fleet=="f{number}" && enabled==true}}'
        )
    ids = allocate_ids(alias=alias, count=count) if count else []
    now = time.time()
    groups = [Group(id=pk, account_id=account.pk, name=f"g{number}", created=now, **group_selector_fields(selector))
              for number, (pk, selector) in enumerate(zip(ids, selectors, strict=True))]
    Group.objects.using(alias).bulk_create(groups)
    if with_calculator and count:
        link_ids = allocate_ids(alias=alias, count=count)
        GroupAssignment.objects.using(alias).bulk_create([
            GroupAssignment(id=pk, account_id=account.pk, calculator_id=calculator.pk, group_id=group.pk, created=now)
            for pk, group in zip(link_ids, groups, strict=True)
        ])


def _creates(account, count: int, tag: str) -> tuple[float, list[float], list[float], list[int], int]:
    """(first create's seconds, the others' seconds (joining a group, joining none), the statement
    counts of those joining none, assignments made)."""
    from django.db import connections

    from analytics.models import Assignment
    from devices.services import device_create

    times, statements, joining, alone = [], [], [], []
    for number in range(count + 1):
        # Even creates join group 0 (metadata.fleet=f0, or name=truck-0-* among name masks), odd
        # ones no group.
        metadata = {"fleet": "f0"} if number % 2 == 0 else {"fleet": "none"}
        name = f"truck-0-{number}" if number % 2 == 0 else f"device-{number}"
        executed = []

        def counted(execute, sql, params, many, context, executed=executed):
            executed.append(sql)
            return execute(sql, params, many, context)

        with connections["dc_eu_1"].execute_wrapper(counted):
            started = time.perf_counter()
            device_create(account=account, name=name, configuration={"ident": f"bench-groups-{tag}-{number}"},
                          metadata=metadata)
            times.append(time.perf_counter() - started)
        if number:
            (joining if number % 2 == 0 else alone).append(times[-1])
            if number % 2:
                statements.append(len(executed))
    made = Assignment.objects.using("dc_eu_1").filter(account_id=account.pk).count()
    return times[0], joining, alone, statements, made


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
    counts = [int(size) for size in args.groups.split(",")]
    # (groups, with a calculator each, name masks only)
    cases = [(size, True, False) for size in counts] + [(max(counts), True, True), (max(counts), False, False)]
    for count, with_calculator, masks_only in cases:
        _selector_sql.cache_clear()
        tag = uuid.uuid4().hex[:8]
        account = account_create(name=f"bench-groups-{tag}")
        try:
            _groups(account, count, with_calculator=with_calculator, masks_only=masks_only)
            first, joining, alone, statements, made = _creates(account, args.creates, tag)
        finally:
            account_delete(account=account)
        both = sorted(joining + alone)
        what = "name masks" if masks_only else "mixed"
        name = f"{count:,} groups ({what}), " + ("a calculator each" if with_calculator else "no calculators")
        rows.append((name, first * 1000, statistics.median(joining) * 1000, statistics.median(alone) * 1000,
                     both[int(len(both) * 0.95) - 1] * 1000, statistics.median(statements), made))
    print(f"device create latency, {args.creates} creates per row (half joining one group, half none)")
    print(f"{'selector groups':<44} {'first ms':>9} {'p50 join':>9} {'p50 none':>9} {'p95 ms':>8} "
          f"{'statements':>11} {'assigned':>9}")
    for name, first, p50_join, p50_none, p95, count, made in rows:
        print(f"{name:<44} {first:>9.1f} {p50_join:>9.2f} {p50_none:>9.2f} {p95:>8.2f} {count:>11.0f} {made:>9}")


if __name__ == "__main__":
    main()
