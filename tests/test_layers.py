"""The floors of the platform: an app imports only the floors below it, never one above, not even
inside a function body (where a cycle would hide), and no two units of code import each other.

    ground   flespi_site (settings, API machinery, constants...), analytics.engine (pure Python)
    1        regions
    2        accounts
    3        devices
    4        analytics
    5        webhooks

An app that needs something of a floor above has it provided: ``devices`` installs the owners of
devices that ``accounts``' MQTT access reads (``accounts.mqtt_facts.DeviceOwners``), and each app
declares its regional data in its ``regional.py`` for ``accounts.regional_data`` to gather.
``analytics.engine`` is a unit of its own on the ground floor: it imports no app and no Django
(``tests/engine``), so any app may use its expressions (``devices`` filters messages with them).

Every module of every unit is read (migrations and management commands included); ``import`` and
``from ... import`` statements count wherever they stand.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Units of code, each with its floor; a module belongs to the longest unit its name starts with.
FLOORS = {
    "flespi_site": 0,
    "analytics.engine": 0,
    "regions": 1,
    "accounts": 2,
    "devices": 3,
    "analytics": 4,
    "webhooks": 5,
}

# Imports that climb, known and to be removed: (module file, imported unit) -> why it is still
# there. Each entry must still be true (a test fails for one that is not: delete it).
KNOWN_CLIMBS = {
    # flespi_site's API machinery and router sit between accounts and the apps above it
    # (docs/layout.md, "Departures"); no module of flespi_site imports devices or analytics.
    # The shared API machinery authenticates accounts' tokens and acts for their accounts.
    ("flespi_site/api/authentication.py", "accounts"): "API machinery that knows accounts' tokens",
    ("flespi_site/api/permissions.py", "accounts"): "API machinery that knows accounts' access types",
    ("flespi_site/api/regions.py", "accounts"): "API machinery that routes by the acting account",
    ("flespi_site/api/regions.py", "regions"): "API machinery that routes by the acting account's region",
    ("flespi_site/api/resources.py", "accounts"): "API machinery that selects within the acting account",
    ("flespi_site/api/views.py", "accounts"): "API machinery that resolves the acting account",
    # The database router sends a regional row to its account's datacenter.
    ("flespi_site/db_router.py", "accounts"): "the router asks accounts.placement where a row lives",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def unit_of(module: str) -> str | None:
    matching = [unit for unit in FLOORS if module == unit or module.startswith(f"{unit}.")]
    return max(matching, key=len) if matching else None


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the statement stands; relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            # ``from package import module`` imports the module
            names.update(f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}"))
    return names


def imports_between_units() -> dict[tuple[str, str, str], set[str]]:
    """(module file, its unit, imported unit) -> the imported modules, for every import from one
    unit into another."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for top in {unit.split(".")[0] for unit in FLOORS}:
        for path in sorted((REPO / top).rglob("*.py")):
            unit = unit_of(module_name(path))
            assert unit is not None
            for module in imported_modules(path):
                imported = unit_of(module)
                if imported is not None and imported != unit:
                    found.setdefault((str(path.relative_to(REPO)), unit, imported), set()).add(module)
    return found


def test_every_app_has_a_floor():
    from django.conf import settings

    apps = [app for app in settings.INSTALLED_APPS if (REPO / app / "__init__.py").is_file()]
    assert {"regions", "accounts", "devices", "analytics"} <= set(apps) <= set(FLOORS)
    # The registry of regional data takes an app to build on those installed before it.
    assert apps == sorted(apps, key=FLOORS.__getitem__)


def test_no_import_climbs_a_floor_or_stays_on_it():
    climbing = {
        f"{path} ({unit}) imports {', '.join(sorted(modules))}"
        for (path, unit, imported), modules in imports_between_units().items()
        if FLOORS[imported] >= FLOORS[unit] and (path, imported) not in KNOWN_CLIMBS
    }
    assert climbing == set()


def test_the_known_climbs_are_still_there():
    present = {(path, imported) for path, _unit, imported in imports_between_units()}
    assert set(KNOWN_CLIMBS) - present == set(), "gone: delete them from KNOWN_CLIMBS"


def test_no_two_units_import_each_other_through_any_chain():
    edges: dict[str, set[str]] = {unit: set() for unit in FLOORS}
    for path, unit, imported in imports_between_units():
        if (path, imported) not in KNOWN_CLIMBS:
            edges[unit].add(imported)

    def cycle_from(unit: str, trail: list[str]) -> list[str] | None:
        for following in sorted(edges[unit]):
            if following in trail:
                return [*trail[trail.index(following):], following]
            if (found := cycle_from(following, [*trail, following])) is not None:
                return found
        return None

    cycles = {" -> ".join(cycle) for unit in FLOORS if (cycle := cycle_from(unit, [unit])) is not None}
    assert cycles == set()
