"""List endpoints cost the same number of queries whatever the number of items: no query per
item. The counts are pinned, so a change that adds a query shows up here."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from tests.support.api import result_of

pytestmark = pytest.mark.django_db(databases="__all__")

T0 = 1_700_000_000


def queries(api, key, path) -> int:
    """Queries on every database (control and datacenters) to answer ``GET path``, but the
    placement version's check, which a process makes at most every 0.1 s whatever it serves
    (accounts.placement.recheck): how often it falls in one request depends on the clock."""
    with ExitStack() as stack:
        captured = [stack.enter_context(CaptureQueriesContext(connections[alias])) for alias in connections]
        result_of(api.call("GET", path, key=key))
    return sum(
        1 for c in captured for query in c.captured_queries if "accounts_placementversion" not in query["sql"]
    )


def make_devices(account, count, start=0):
    from devices.services import device_create, messages_ingest

    devices = [device_create(account=account, configuration={"ident": f"q-{start + i}"}) for i in range(count)]
    messages_ingest(devices=devices, messages=[{"timestamp": T0 + i, "v": i} for i in range(3)])
    return devices


@pytest.mark.parametrize(
    ("path", "pinned"),
    [
        ("/gw/devices/all", 2),
        ("/gw/devices/all/messages", 3),
        ("/gw/devices/all/telemetry", 3),
    ],
)
def test_device_lists_cost_the_same_for_2_and_20_devices(api, root, root_key, path, pinned):
    make_devices(root, 2)
    api.call("GET", path, key=root_key)  # warm the per-process caches (placement, topology)
    few = queries(api, root_key, path)
    make_devices(root, 18, start=2)
    assert queries(api, root_key, path) == few == pinned


@pytest.mark.parametrize(("path", "pinned"), [("/platform/subaccounts/all", 2), ("/platform/tokens/all", 2)])
def test_platform_lists_cost_the_same_for_2_and_20_items(api, root, root_key, make_account, make_token, path, pinned):
    def add(count):
        for i in range(count):
            child = make_account(f"child {i}", parent=root)
            make_token(child)
            make_token(root)

    add(2)
    api.call("GET", path, key=root_key)
    few = queries(api, root_key, path)
    add(18)
    assert queries(api, root_key, path) == few == pinned


@pytest.mark.parametrize(
    ("path", "pinned"),
    [
        ("/gw/calcs/all", 2),
        ("/gw/calcs/all/devices/all", 3),
        ("/gw/calcs/all/devices/all/intervals/all", 4),
        ("/gw/calcs/all/devices/configuration.ident=q-*/intervals/all?filter=n%20%3E%200", 4),
    ],
)
def test_calc_lists_cost_the_same_for_2_and_20_items(api, root, root_key, path, pinned):
    from analytics.engine import Diff
    from analytics.services import assignment_create, calculator_create
    from tests.support.intervals import diff_store

    calculator = calculator_create(account=root, config={"name": "days", "selectors": [{"type": "datetime", "split": "day"}]})

    def add(count, start):
        for device in make_devices(root, count, start=start):
            assignment, _new = assignment_create(calculator=calculator, device=device)
            diff_store(assignment=assignment, diff=Diff(created=[
                {"id": (T0 + k) * 10**6, "begin": float(T0 + k), "end": T0 + k + 0.5, "duration": 0.5, "n": 1}
                for k in range(3)
            ]))
        calculator_create(account=root, config={"name": f"more {start}", "selectors": [{"type": "datetime", "split": "day"}]})

    add(2, 0)
    api.call("GET", path, key=root_key)
    few = queries(api, root_key, path)
    add(18, 2)
    assert queries(api, root_key, path) == few == pinned


@pytest.mark.parametrize(
    ("path", "pinned"),
    [
        ("/gw/groups/all", 2),
        ("/gw/groups/all?fields=id,devices", 4),
        ("/gw/groups/all/devices", 5),
        ("/gw/calcs/all/groups/all", 3),
    ],
)
def test_group_lists_cost_the_same_for_2_and_20_groups(api, root, root_key, path, pinned):
    from analytics.services import calculator_create, group_assignment_create
    from devices.services import group_create

    devices = make_devices(root, 4)
    calculator = calculator_create(account=root, config={"name": "days", "selectors": [{"type": "datetime", "split": "day"}]})

    def add(count, start):
        for i in range(start, start + count):
            fields = {"devices": [devices[i % 4].pk]} if i % 2 else {"selector": f"name=x{i}*"}
            group = group_create(account=root, name=f"g{i}", **fields)
            group_assignment_create(calculator=calculator, group=group)

    add(2, 0)
    api.call("GET", path, key=root_key)  # warm the per-process caches (placement, topology)
    few = queries(api, root_key, path)
    add(18, 2)
    assert queries(api, root_key, path) == few == pinned
