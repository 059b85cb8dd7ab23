"""Ports on the loopback interface: a free one for a process of the test's own, and waiting
until something listens on one."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.support.waiting import wait_until

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick): for a child process, or as a service
    that is down."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
    except OSError:
        return False
    return True


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
