"""The platform's own processes, run for real as children of the test (or of a benchmark) on its
databases: the environment they need, their output, the web server that `make run` starts
(gunicorn) on a port of the test's own, and `make run`'s supervisor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.support.net import free_port, wait_listening
from tests.support.waiting import poll

REPO_DIR = Path(__file__).resolve().parents[2]
MANAGE = [sys.executable, "manage.py"]


def database_url(config: Mapping) -> str:
    """The URL of a database of ``settings.DATABASES``."""
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgres://{config['USER']}{password}@{config['HOST']}{port}/{config['NAME']}"


def platform_env(**extra: str) -> dict[str, str]:
    """This process's environment with the database URLs pointing at the databases it uses (in a
    test, call it once pytest-django has created them), plus ``extra``."""
    from django.conf import settings

    env = dict(os.environ, DATABASE_URL=database_url(settings.DATABASES["default"]))
    env.setdefault("SECRET_KEY", "tests-only-secret-key")
    # the services this process uses, also where they are defaults here (a deployment's roles need them named)
    env.setdefault("REDIS_URL", settings.REDIS_URL)
    env.setdefault("MQTT_URL", settings.MQTT_URL)
    for datacenter in settings.TOPOLOGY.datacenters:
        name = f"DATABASE_URL_{datacenter.code.upper().replace('-', '_')}"
        env[name] = database_url(settings.DATABASES[datacenter.alias])
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
        """The output so far, once ``needle`` is in it."""
        def seen() -> str:
            text = self.text
            return text if needle in text else ""

        text = poll(seen, timeout=timeout)
        if not text:
            raise AssertionError(f"{needle!r} did not appear within {timeout} s; output:\n{self.text[-4000:]}")
        return text

    def finish(self, timeout: float) -> None:
        """Until the process's output has ended and is all in ``lines``."""
        self._thread.join(timeout)


def start(argv: list[str], *, preexec: Callable[[], object] | None = None, **env: str) -> tuple[subprocess.Popen, Output]:
    """``argv`` started from the repository on the platform's databases, its output collected
    (``preexec`` runs in the child before it starts, like ``Popen``'s ``preexec_fn``)."""
    process = subprocess.Popen(
        argv,
        cwd=REPO_DIR,
        env=platform_env(**env),
        preexec_fn=preexec,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, Output(process)


def stop(process: subprocess.Popen, *, timeout: float = 15.0) -> None:
    """SIGTERM, and SIGKILL when the process has not ended within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class WebServer:
    """The ``web`` process of ``make run`` (gunicorn serving ``flespi_site.wsgi``) on a free port."""

    def __init__(self, **env: str) -> None:
        from devtools import supervisor

        self.port = free_port()
        (web,) = [process for process in supervisor.PROCESSES if process.name == "web"]
        argv = web.resolve({"python": sys.executable, "manage": supervisor.MANAGE_PY, "port": str(self.port)})
        self.process, self.output = start(argv, PORT=str(self.port), **env)
        wait_listening(self.port)

    def stop(self) -> None:
        stop(self.process)


STARTED = re.compile(r"(\S+): started \(pid (\d+)\)")


class RunningSupervisor:
    """`make run`'s supervisor (or another program that supervises) as a child process."""

    def __init__(self, argv: list[str], *, preexec: Callable[[], object] | None = None, **env: str) -> None:
        self.process, self.output = start(argv, preexec=preexec, **env)

    def pids(self) -> dict[str, int]:
        """The newest pid of each child, from the supervisor's log."""
        return {name: int(pid) for name, pid in STARTED.findall(self.output.text)}

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 30.0) -> int:
        def new_pid() -> int:
            pid = self.pids()[name]
            return pid if pid != old_pid else 0

        pid = poll(new_pid, timeout=timeout)
        if not pid:
            raise AssertionError(f"{name} was not restarted; output:\n{self.output.text[-4000:]}")
        return pid

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.output.finish(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
