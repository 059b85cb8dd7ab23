"""Ports on the loopback interface: a free one for a process of the test's own (the embedded
services' ``free_port``: a port the kernel picks, nothing listening), and waiting until something
listens on one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.embedded import free_port, port_is_open
from tests.support.waiting import wait_until

HOST = "127.0.0.1"

__all__ = ["free_port", "port_is_open", "wait_listening"]


def wait_listening(port: int, *, timeout: float = 30.0, process: subprocess.Popen | None = None,
                   log: Path | None = None) -> None:
    """Until something listens on ``port``; fails early when ``process`` (the one that should
    listen) exits, showing the end of its ``log``."""

    def listening() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process that should listen on port {port} exited")
        return port_is_open(port)

    try:
        wait_until(listening, timeout=timeout, every=0.05, what=f"a listener on port {port}")
    except AssertionError as failure:
        tail = f"; its log:\n{log.read_text()[-2000:]}" if log is not None and log.exists() else ""
        raise AssertionError(f"{failure}{tail}") from None
