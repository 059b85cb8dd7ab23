"""Third-party browser code of the admin pages (Leaflet for maps, uPlot for charts), fetched at
install time from the npm registry and kept out of the repository (docs/admin.md, "Maps and
charts").

``python -m devtools.vendor`` downloads each package's released tarball at its pinned version,
checks it against the pinned ``sha512`` integrity (the registry's own ``dist.integrity``), and
unpacks the few files the pages use into ``accounts/static/regional_admin/vendor/`` (git-ignored),
where Django's static files finder serves them. A second run with the files in place does nothing
and needs no network. Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
TARGET = Path(__file__).resolve().parent.parent / "accounts" / "static" / "regional_admin" / "vendor"
STAMP = TARGET / "versions.json"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry's metadata gives it
    files: tuple[str, ...]  # paths inside the tarball's ``package/``, unpacked under TARGET/<name>/

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name}-{self.version}.tgz"


PACKAGES = (
    Package(
        "leaflet",
        "1.9.4",
        "sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA==",
        (
            "dist/leaflet.js",
            "dist/leaflet.css",
            "dist/images/layers.png",
            "dist/images/layers-2x.png",
            "dist/images/marker-icon.png",
            "dist/images/marker-icon-2x.png",
            "dist/images/marker-shadow.png",
            "LICENSE",
        ),
    ),
    Package(
        "uplot",
        "1.6.32",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        ("dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"),
    ),
)


class VendorError(RuntimeError):
    pass


def wanted() -> dict[str, str]:
    return {package.name: package.version for package in PACKAGES}


def installed() -> bool:
    """Whether every pinned file is in place at its pinned version."""
    try:
        versions = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    return versions == wanted() and all(
        (TARGET / package.name / Path(name).relative_to(_prefix(name))).is_file()
        for package in PACKAGES
        for name in package.files
    )


def _prefix(name: str) -> str:
    return "dist" if name.startswith("dist/") else ""


def _download(package: Package) -> bytes:
    try:
        with urllib.request.urlopen(package.tarball, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise VendorError(f"cannot download {package.tarball}: {exc}") from None
    algorithm, _, expected = package.integrity.partition("-")
    got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected:
        raise VendorError(
            f"{package.tarball}: {algorithm} is {got}, not the pinned {expected}: refusing to unpack it"
        )
    return data


def _unpack(package: Package, data: bytes) -> None:
    destination = TARGET / package.name
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in package.files:
            try:
                member = archive.extractfile(f"package/{name}")
            except KeyError:
                member = None
            if member is None:
                raise VendorError(f"{package.tarball} has no file package/{name}")
            path = destination / Path(name).relative_to(_prefix(name))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(member.read())


def ensure(*, quiet: bool = False) -> bool:
    """Install the pinned files unless they are in place; True when something was downloaded."""
    if installed():
        return False
    for package in PACKAGES:
        if not quiet:
            print(f"vendor: {package.name} {package.version} from {package.tarball}", file=sys.stderr)
        _unpack(package, _download(package))
    STAMP.write_text(json.dumps(wanted(), indent=2) + "\n")
    return True


def main() -> int:
    try:
        ensure()
    except VendorError as exc:
        print(f"vendor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
