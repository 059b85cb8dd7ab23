"""JavaScript clients in tests: npm packages installed once from the npm registry into
``var/test-node/`` (kept between runs, never committed) and scripts run by the machine's node."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import REPO_DIR

NODE_DIR = REPO_DIR / "var" / "test-node"
# the packages the tests run, at pinned versions
PACKAGES = {"mqtt": "5.16.0"}


def node_modules() -> Path:
    """The ``node_modules`` holding ``PACKAGES``; the test is skipped, saying why, without node
    and npm or when the registry cannot be reached."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("needs node and npm")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    wanted = json.dumps({"dependencies": PACKAGES}, sort_keys=True)
    with open(NODE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = NODE_DIR / ".installed"
        if not stamp.exists() or stamp.read_text() != wanted:
            (NODE_DIR / "package.json").write_text(json.dumps({"private": True, "dependencies": PACKAGES}))
            done = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, capture_output=True,
                text=True, timeout=300, check=False,
            )
            if done.returncode != 0:
                pytest.skip(f"npm install of {PACKAGES} failed: {done.stderr.strip()[-500:]}")
            stamp.write_text(wanted)
    return NODE_DIR / "node_modules"


def start_node(script: str, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``script`` (JavaScript, CommonJS) with ``PACKAGES`` importable; its stdout is a pipe of
    text lines."""
    modules = node_modules()
    return subprocess.Popen(["node", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "NODE_PATH": str(modules), **(env or {})})
