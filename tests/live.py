"""The platform's own processes, run for real against the test databases: the environment they
need, and the web server that `make run` starts (gunicorn) on a port of the test's own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from django.conf import settings

from devtools import embedded, supervisor


def _database_url(config: Mapping) -> str:
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgres://{config['USER']}{password}@{config['HOST']}{port}/{config['NAME']}"


def platform_env(**extra: str) -> dict[str, str]:
    """This process's environment with the database URLs pointing at the test databases (call it
    once pytest-django has created them), plus ``extra``."""
    env = dict(os.environ, DATABASE_URL=_database_url(settings.DATABASES["default"]))
    for dc in settings.TOPOLOGY.datacenters:
        env[f"DATABASE_URL_{dc.code.upper().replace('-', '_')}"] = _database_url(settings.DATABASES[dc.alias])
    env.update(extra)
    return env


class Output:
    """The lines a child process prints, collected by a thread, for assertions and waits."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} did not appear within {timeout} s; output:\n{self.text[-4000:]}")


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not embedded.port_is_open(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)


def start(argv: list[str], **env: str) -> tuple[subprocess.Popen, Output]:
    """``argv`` started from the repository on the test databases, its output collected."""
    process = subprocess.Popen(
        argv,
        cwd=embedded.REPO_DIR,
        env=platform_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, Output(process)


class WebServer:
    """The ``web`` process of ``make run`` (gunicorn serving ``flespi_site.wsgi``) on a free port."""

    def __init__(self, **env: str) -> None:
        self.port = embedded.free_port()
        (web,) = [process for process in supervisor.PROCESSES if process.name == "web"]
        argv = web.resolve({"python": sys.executable, "manage": supervisor.MANAGE_PY, "port": str(self.port)})
        self.process, self.output = start(argv, **env)
        wait_listening(self.port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
