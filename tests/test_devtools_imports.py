"""devtools (embedded services, the supervisor of `make run`, vendoring) is tooling beside the
platform: no module of it imports an app of the platform, not even inside a function body (app
code runs in child processes, through manage.py), and no package of the platform imports it."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from tests.regions.test_imports import imported_modules

REPO = Path(__file__).resolve().parents[1]
PLATFORM_PACKAGES = ("flespi_site", "regions", "accounts", "devices", "analytics", "webhooks")


def test_devtools_imports_no_app_of_the_platform():
    apps = {app for app in settings.INSTALLED_APPS if (REPO / app / "__init__.py").is_file()}
    assert {"regions", "accounts", "devices", "analytics", "webhooks"} <= apps
    modules = sorted((REPO / "devtools").rglob("*.py"))
    assert {"embedded.py", "supervisor.py", "vendor.py"} <= {path.name for path in modules}
    offending = {
        f"{path.relative_to(REPO)}: {module}"
        for path in modules
        for module in imported_modules(path)
        if module.split(".")[0] in apps
    }
    assert offending == set()


def test_no_package_of_the_platform_imports_devtools():
    offending = {
        f"{path.relative_to(REPO)}: {module}"
        for package in PLATFORM_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] == "devtools"
    }
    assert offending == set()
