"""Where a calc worker keeps its caches, and the stable name that goes with them (docs/analytics.md,
"Identity and placement").

A worker's caches live in a directory of its own, ``CALC_DATA_DIR/calc/<region>/<slot>``, which
one process at a time holds (an exclusive lock on a file in it). The worker's name is written
there the first time (``<host>-<slot>``) and read back at every start, so that a restarted worker
(same host, same directory, even a container with a new host name and the same volume) comes back
under the same name, and shard placement, which is by name, gives it back the shards whose caches
it holds. Without ``--name``, a worker takes the first slot no other process holds (``w0``,
``w1``, ...): several workers of one host get one each. With ``--name``, the slot is the name.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_FILE = "worker-name"
LOCK_FILE = "worker.lock"
MAX_SLOTS = 256


class HomeTaken(Exception):
    """Another process holds the directory (the same ``--name`` twice on one host)."""


@dataclass
class WorkerHome:
    """A worker's name and cache directory, held (locked) while the process lives."""

    name: str
    directory: Path
    _lock: IO[str]

    def close(self) -> None:
        self._lock.close()


def name_check(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(
            f"worker name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _locked(directory: Path) -> IO[str] | None:
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_FILE, "a+")  # noqa: SIM115 (held for the process's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _name_of(directory: Path, default: str) -> str:
    path = directory / NAME_FILE
    if path.exists():
        written = path.read_text().strip()
        if NAME.match(written):
            return written
        logger.warning("calc: %s holds no valid worker name (%r); writing %s", path, written, default)
    path.write_text(default + "\n")
    return default


def worker_home(*, data_dir: str | os.PathLike, region: str, name: str | None = None) -> WorkerHome:
    """Take a cache directory of ``region`` under ``data_dir`` and its worker name: the one named
    ``name``, or the first free slot. ``HomeTaken`` when ``name``'s directory is held by another
    process."""
    base = Path(data_dir) / "calc" / region
    _forget_old_layout(base)
    if name is not None:
        directory = base / name_check(name)
        lock = _locked(directory)
        if lock is None:
            raise HomeTaken(f"another calc worker of this host runs as {name!r} (it holds {directory})")
        return WorkerHome(_name_of(directory, name), directory, lock)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    for slot in range(MAX_SLOTS):
        directory = base / f"w{slot}"
        lock = _locked(directory)
        if lock is not None:
            return WorkerHome(_name_of(directory, f"{host}-w{slot}"), directory, lock)
    raise HomeTaken(f"all {MAX_SLOTS} worker slots under {base} are held")


def _forget_old_layout(base: Path) -> None:
    """Cache files of the layout before worker directories (one directory shared by every worker,
    a format this version rebuilds anyway) are removed."""
    if not base.is_dir():
        return
    for path in base.glob("shard-*.sqlite*"):
        path.unlink(missing_ok=True)
        logger.info("calc: removed %s (a cache of an earlier layout)", path)
