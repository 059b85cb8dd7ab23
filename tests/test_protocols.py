"""The fleet's protocols have one home each: task names and Redis keys in ``flespi_site.fleet``,
advisory-lock numbers in ``flespi_site.constants``; the modules that define them (and the fleet
modules that run without Django in tests and benchmarks) import no Django and no app."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from flespi_site import constants, fleet

REPO = Path(__file__).resolve().parent.parent
TOPS = ("accounts", "analytics", "devices", "regions", "webhooks", "flespi_site", "devtools", "deploy", "bench",
        "tests")
SOURCES = [
    path
    for top in TOPS
    for path in sorted((REPO / top).rglob("*.py"))
    if path.name != Path(__file__).name
]
TASK_NAMES = {task.value for task in fleet.FleetTask}
# Every number of constants: the spaces of the two-key locks and each single-key ``*_LOCK``.
LOCK_LIST = [int(space) for space in constants.LockSpace] + [
    value for name, value in vars(constants).items() if name.endswith("_LOCK") and type(value) is int
]
LOCK_NUMBERS = set(LOCK_LIST)
ADVISORY_WITH_NUMBER = re.compile(r"pg_(try_)?advisory\w*\(\s*\d")


def _strings(tree: ast.AST):
    """Every string literal of a module, docstrings left out (they may name a key to explain it),
    with the pieces of f-strings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_task_names_and_redis_keys_are_spelled_only_in_the_fleet_contract():
    home = {"flespi_site/fleet.py"}
    found = []
    for path in SOURCES:
        if _relative(path) in home:
            continue
        for node in _strings(ast.parse(path.read_text(), str(path))):
            if node.value in TASK_NAMES or node.value.startswith("flespi:") or ":celery:" in node.value:
                found.append(f"{_relative(path)}:{node.lineno}: {node.value!r}")
    assert found == [], "use flespi_site.fleet (FleetTask, the key builders) instead:\n" + "\n".join(found)


def test_advisory_lock_numbers_are_chosen_only_in_constants():
    found = []
    for path in SOURCES:
        if _relative(path) == "flespi_site/constants.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in LOCK_NUMBERS:
                found.append(f"{_relative(path)}:{node.lineno}: {node.value:#x}")
        for node in _strings(tree):
            if ADVISORY_WITH_NUMBER.search(node.value):
                found.append(f"{_relative(path)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert found == [], "use flespi_site.constants (LockSpace, the *_LOCK numbers) instead:\n" + "\n".join(found)


def test_lock_spaces_are_distinct_and_fit_postgresql():
    assert {constants.RELAY_LOCK, constants.WEBHOOKS_LOCK, constants.MIGRATE_LOCK} <= LOCK_NUMBERS
    assert len(LOCK_NUMBERS) == len(LOCK_LIST)
    assert all(0 < number < 2**31 for number in LOCK_LIST)
    assert constants.lock_id(2**40 + 7) == (2**40 + 7) % 2**31


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, function bodies included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


DJANGO_FREE = [
    "flespi_site/fleet.py",
    "flespi_site/constants.py",
    "analytics/fleet/leases.py",
    "analytics/fleet/debounce.py",
    "analytics/fleet/cache.py",
]
APPS = ("accounts", "analytics", "devices", "regions", "webhooks")


@pytest.mark.parametrize("module", DJANGO_FREE)
def test_the_fleet_contract_and_its_redis_and_cache_parts_need_no_django(module):
    """The contract is shared by every process and read by tests and benchmarks without Django;
    the leases, timers and cache are tested against Redis and SQLite alone."""
    allowed_apps = ("analytics.engine", "analytics.columnar", "analytics.fleet.debounce", "analytics.fleet.leases")
    bad = [
        f"{line}: {name}"
        for line, name in _imports(REPO / module)
        if name.split(".")[0] == "django"
        or (name.split(".")[0] in APPS and not name.startswith(allowed_apps))
        or (name.startswith("flespi_site") and name not in ("flespi_site.fleet", "flespi_site.jsontext"))
    ]
    assert bad == []


def test_payloads_read_back_what_they_send():
    run = fleet.ShardRun(region="eu", shard=3, due=(fleet.Due(1, 2, 3), fleet.Due(1, 5, 7)))
    assert fleet.ShardRun.from_args(*run.args()) == run
    assert run.by_shard() == {3: [(1, 2)], 7: [(1, 5)]}
    assert fleet.ShardRun.from_args("eu", 4).by_shard() == {4: []}
    changes = fleet.ShardChanges(region="eu", shard=3, address="worker-a")
    assert fleet.ShardChanges.from_args(*changes.args()) == changes
    assert fleet.ShardChanges.from_args("eu", 3).address == ""  # a message of an earlier version
    for payload in (fleet.ShardRequests(region="ru", shard=1), fleet.ShardPurge(region="ru", shard=1)):
        assert type(payload).from_args(*payload.args()) == payload


def test_every_fleet_task_is_registered_under_its_contract_name():
    from analytics.fleet import tasks
    from flespi_site.celery import celery_app

    registered = {task.name for task in (tasks.shard_changes, tasks.shard_run, tasks.shard_requests,
                                         tasks.shard_purge, tasks.shard_fill)}
    assert registered == TASK_NAMES
    assert set(celery_app("eu").tasks) >= TASK_NAMES
