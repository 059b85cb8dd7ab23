"""One command runs the whole platform: ``python -m flespi_site.supervisor`` (``make run``).

1. starts the embedded services whose URLs are not in the environment (``flespi_site.embedded``);
2. creates missing databases and runs ``manage.py platform_setup`` (migrations, topology rows,
   the first superuser);
3. starts every process of ``PROCESSES`` and prefixes each line of their output with their name.

A process that exits stops everything with a nonzero status: nothing runs half-started. Ctrl-C
(or SIGTERM) stops the processes, then the embedded services, and exits with 0.

Later parts plug in by adding one entry to ``PROCESSES``. An entry that runs a management
command is skipped, with a log line, while that command is not installed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import IO

from flespi_site import embedded

log = logging.getLogger("flespi.supervisor")

MANAGE_PY = str(embedded.REPO_DIR / "manage.py")
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Process:
    """A long-running child of the supervisor.

    ``argv`` may use ``{python}`` (this interpreter), ``{manage}`` (the path of manage.py) and
    ``{port}`` (the web port, ``PORT``, default 8000). ``command`` names the management command
    the process runs, if any: the process is skipped while that command is not installed.
    """

    name: str
    argv: tuple[str, ...]
    command: str | None = None

    @classmethod
    def manage(cls, name: str, command: str, *args: str) -> Process:
        """A process running ``manage.py <command> <args>``."""
        return cls(name, ("{python}", "{manage}", command, *args), command=command)

    def resolve(self, context: Mapping[str, str]) -> list[str]:
        return [part.format(**context) for part in self.argv]


PROCESSES: list[Process] = [
    Process(
        "web",
        ("{python}", "-m", "gunicorn", "flespi_site.wsgi:application", "--bind", "0.0.0.0:{port}",
         "--workers", "2", "--threads", "4", "--graceful-timeout", "10", "--access-logfile", "-",
         # gunicorn's largest request line (default 4094): room for a selector of many ids
         "--limit-request-line", "8190",
         # the default control socket is one path per user: two checkouts running would collide
         "--no-control-socket"),
    ),
    Process.manage("relay", "outbox_relay"),
    Process.manage("mqtt-ingest", "mqtt_ingest"),
    Process.manage("purge", "purge_messages", "--every", "3600"),
    # Later parts add one line each, e.g.:
    #   Process.manage("calc", "calc_worker"),
    #   Process.manage("pump", "pump"),
]


class ChildExited(RuntimeError):
    """A supervised process exited while the platform was running."""


@dataclass
class Child:
    """A started process, in its own session so that stopping it reaches its whole group."""

    name: str
    popen: subprocess.Popen
    reader: threading.Thread = field(repr=False)

    def stop(self, deadline: float) -> None:
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", self.name)
        _signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self.reader.join(timeout=2)


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


_output_lock = threading.Lock()


def _pipe_lines(name: str, stream: IO[bytes], out: IO[str], width: int) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with _output_lock:
            out.write(f"{name:<{width}} | {line}\n")
            out.flush()
    stream.close()


def spawn(name: str, argv: Sequence[str], *, width: int = 12, out: IO[str] | None = None) -> Child:
    """Start ``argv`` with its output prefixed by ``name``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=embedded.REPO_DIR, env=env, start_new_session=True,
        preexec_fn=embedded._child_setup(signal.SIGTERM),
    )
    reader = threading.Thread(target=_pipe_lines, args=(name, popen.stdout, out or sys.stdout, width),
                              name=f"output-{name}", daemon=True)
    reader.start()
    log.info("%s: started (pid %d): %s", name, popen.pid, " ".join(argv))
    return Child(name, popen, reader)


def installed_commands() -> set[str]:
    """The management commands ``manage.py`` knows, asked in a child so Django stays out of here."""
    result = subprocess.run([sys.executable, MANAGE_PY, "help", "--commands"], cwd=embedded.REPO_DIR,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ChildExited(f"manage.py help --commands failed:\n{result.stderr.strip()}")
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def runnable(processes: Iterable[Process], commands: set[str]) -> list[Process]:
    """The processes whose management command is installed; logs the ones skipped."""
    selected = []
    for process in processes:
        if process.command is not None and process.command not in commands:
            log.info("%s: skipped, management command %r is not installed", process.name, process.command)
            continue
        selected.append(process)
    return selected


class Supervisor:
    def __init__(self, processes: Sequence[Process], *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.processes = list(processes)
        self.context = {"python": sys.executable, "manage": MANAGE_PY, "port": env.get("PORT") or "8000"}
        self.children: list[Child] = []
        self.width = max([len(process.name) for process in self.processes] + [len("setup")])

    def run_once(self, name: str, argv: Sequence[str]) -> None:
        """Run a one-shot step (like platform_setup) to completion; raise if it fails."""
        child = spawn(name, argv, width=self.width)
        self.children.append(child)
        status = child.popen.wait()
        child.reader.join(timeout=2)
        self.children.remove(child)
        if status != 0:
            raise ChildExited(f"{name} failed with status {status}")

    def start(self, processes: Sequence[Process]) -> None:
        for process in processes:
            self.children.append(spawn(process.name, process.resolve(self.context), width=self.width))

    def watch(self, poll: float = 0.2) -> None:
        """Return never; raise ``ChildExited`` when a child exits."""
        while True:
            for child in self.children:
                status = child.popen.poll()
                if status is not None:
                    raise ChildExited(f"{child.name} exited with status {status}")
            time.sleep(poll)

    def stop(self) -> None:
        """Stop the children, newest first, within ``STOP_TIMEOUT`` in all."""
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.children:
            if child.popen.poll() is None:
                _signal_group(child.popen.pid, signal.SIGTERM)
        while self.children:
            child = self.children.pop()
            child.stop(deadline)
            log.info("%s: stopped (status %s)", child.name, child.popen.returncode)


def _create_databases() -> None:
    """Create the topology's missing databases, on external servers too (a fresh local PostgreSQL
    works without manual steps); without the right to, platform_setup will say what is missing."""
    import psycopg

    try:
        embedded.create_missing_databases(os.environ)
    except psycopg.Error as error:
        log.warning("could not create missing databases: %s", str(error).strip())


def main() -> int:
    embedded.configure_logging()
    services = embedded.EmbeddedServices(
        data_dir=embedded.data_dir_from_env(), prefer_fixed_ports=True, publish=True
    )
    supervisor = Supervisor(PROCESSES)
    status = 0
    with embedded.terminating_signals_raise():
        try:
            services.start()
            _create_databases()
            supervisor.run_once("setup", [sys.executable, MANAGE_PY, "platform_setup"])
            supervisor.start(runnable(PROCESSES, installed_commands()))
            log.info("platform running on http://localhost:%s/ (Ctrl-C stops it)", supervisor.context["port"])
            supervisor.watch()
        except KeyboardInterrupt:
            log.info("stopping")
        except (ChildExited, embedded.EmbeddedError) as error:
            log.error("%s; stopping everything", error)
            status = 1
        finally:
            # a second Ctrl-C must not cut the orderly stop short; the timeouts bound it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            supervisor.stop()
            services.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
