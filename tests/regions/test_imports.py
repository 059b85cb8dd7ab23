"""regions knows topology, datacenters, ids and hosts, and nothing of the apps built on it: no
module of regions imports another app of the platform, not even inside a function body (where a
cycle would hide)."""

from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_regions_imports_no_other_app_of_the_platform():
    ours = {app for app in settings.INSTALLED_APPS if (REPO / app / "apps.py").is_file()}
    assert {"regions", "accounts", "devices"} <= ours
    offending = {
        f"{path.relative_to(REPO)}: {module}"
        for path in sorted((REPO / "regions").rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] in ours - {"regions"}
    }
    assert offending == set()
