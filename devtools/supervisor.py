"""One command runs the whole platform: ``python -m devtools.supervisor`` (``make run``).

1. starts the embedded services whose URLs are not in the environment (``devtools.embedded``);
2. runs ``manage.py platform_setup`` (missing databases, migrations, topology rows,
   the first superuser);
3. starts every process of ``PROCESSES`` and prefixes each line of their output with their name.

A process that dies (exits, or is killed) is restarted after a delay that doubles with each death
(``RestartPolicy``), while the others keep running. A process that dies ``deaths`` times within
``window`` seconds is a crash loop: the supervisor says which one, how it ended and its last
lines, and holds it back for ``pause`` seconds before trying it again, the others running on; only
a crash loop of an essential process (the web: the platform is unusable without it) stops
everything, with status 1. A failed start (services, setup) exits with 1 too. Ctrl-C, SIGINT or
SIGTERM (also when started in the background, where SIGINT comes ignored) stops the processes,
then the embedded services, and exits with 0.

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
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import IO

from devtools import embedded

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
    # A crash loop of an essential process stops the platform; any other is held back and retried.
    essential: bool = False

    @classmethod
    def manage(cls, name: str, command: str, *args: str) -> Process:
        """A process running ``manage.py <command> <args>``."""
        return cls(name, ("{python}", "{manage}", command, *args), command=command)

    @classmethod
    def role(cls, name: str, role: str, *args: str, essential: bool = False) -> Process:
        """A process running the deployment's command for ``role`` (``flespi <role> <args>``,
        docs/deployment.md): `make run` starts every role as production does."""
        from flespi_site.cli import ROLES

        command = ROLES[role].command[0] if role in ROLES else None
        return cls(name, ("{python}", "-m", "flespi_site.cli", role, *args), command=command, essential=essential)

    def resolve(self, context: Mapping[str, str]) -> list[str]:
        return [part.format(**context) for part in self.argv]


def _regions() -> list[str]:
    """The regions this installation serves (``REGION`` in production, else all of them)."""
    from flespi_site import topology

    served = os.environ.get("REGION")
    return [served] if served else [region.code for region in topology.current().regions]


def _calc_workers() -> int:
    return max(1, int(os.environ.get("CALC_WORKERS") or 1))


PROCESSES: list[Process] = [
    Process.role("web", "web", essential=True),
    Process.role("relay", "relay"),
    Process.role("webhooks", "webhooks"),
    Process.role("mqtt-ingest", "ingest"),
    Process.role("purge", "purge"),
    # Per region: its calc workers (CALC_WORKERS of them; shards spread over them) and its pump.
    *(
        Process.role(f"calc-{region}" + (f"-{number}" if number else ""), "calc", "--region", region)
        for region in _regions()
        for number in range(_calc_workers())
    ),
    *(Process.role(f"pump-{region}", "pump", "--region", region) for region in _regions()),
]


class ChildExited(RuntimeError):
    """A one-shot step failed, or a supervised process keeps dying (``CrashLoop``)."""


class CrashLoop(ChildExited):
    """A process died ``RestartPolicy.deaths`` times within ``RestartPolicy.window`` seconds."""


@dataclass(frozen=True)
class RestartPolicy:
    """How a process that died is restarted: after ``first_delay`` seconds, doubling with each
    death within ``window`` up to ``max_delay``; the ``deaths``-th death within ``window`` is a
    crash loop: the process is held back for ``pause`` seconds (an essential one stops the
    supervisor)."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    deaths: int = 5
    window: float = 120.0
    # How long a process in a crash loop is held back before it is tried again.
    pause: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RestartPolicy:
        """``FLESPI_RESTART_DELAY``, ``FLESPI_RESTART_MAX_DELAY``, ``FLESPI_CRASH_LOOP_PAUSE``
        (seconds) and ``FLESPI_CRASH_LOOP`` (``deaths/seconds``, e.g. ``5/120``) override the defaults."""
        policy = cls()
        deaths, window = policy.deaths, policy.window
        if crash_loop := env.get("FLESPI_CRASH_LOOP"):
            count, _, seconds = crash_loop.partition("/")
            deaths, window = int(count), float(seconds or window)
        return cls(
            first_delay=float(env.get("FLESPI_RESTART_DELAY") or policy.first_delay),
            max_delay=float(env.get("FLESPI_RESTART_MAX_DELAY") or policy.max_delay),
            deaths=max(1, deaths),
            window=window,
            pause=float(env.get("FLESPI_CRASH_LOOP_PAUSE") or policy.pause),
        )

    def delay(self, recent_deaths: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** max(0, recent_deaths - 1))


LAST_LINES = 20


@dataclass
class Child:
    """A started process, in its own session so that stopping it reaches its whole group."""

    name: str
    popen: subprocess.Popen
    reader: threading.Thread = field(repr=False)
    last_lines: deque[str] = field(repr=False, default_factory=lambda: deque(maxlen=LAST_LINES))

    terminating: bool = field(default=False, repr=False)

    def terminate(self) -> None:
        """SIGTERM to the group, once: a second one would cut short the child's orderly stop
        (its handler is gone by then)."""
        if not self.terminating and self.popen.poll() is None:
            self.terminating = True
            _signal_group(self.popen.pid, signal.SIGTERM)

    def stop(self, deadline: float) -> None:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", self.name)
        self.reap()

    def reap(self) -> None:
        """Kill what is left of the process group (gunicorn's workers outlive a killed master
        and hold its port) and collect the exit status and the last output."""
        _signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self.reader.join(timeout=2)


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def how_it_ended(status: int) -> str:
    """``exited with status 3`` or ``killed by signal SIGKILL`` (``Popen.returncode``)."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = str(-status)
    return f"killed by signal {name}"


_output_lock = threading.Lock()


def _pipe_lines(name: str, stream: IO[bytes], out: IO[str], width: int, last: deque[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        last.append(line)
        with _output_lock:
            out.write(f"{name:<{width}} | {line}\n")
            out.flush()
    stream.close()


def spawn(name: str, argv: Sequence[str], *, width: int = 12, out: IO[str] | None = None) -> Child:
    """Start ``argv`` with its output prefixed by ``name``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=embedded.REPO_DIR,
        env=env,
        start_new_session=True,
        preexec_fn=embedded._child_setup(signal.SIGTERM),
    )
    last: deque[str] = deque(maxlen=LAST_LINES)
    reader = threading.Thread(
        target=_pipe_lines,
        args=(name, popen.stdout, out or sys.stdout, width, last),
        name=f"output-{name}",
        daemon=True,
    )
    reader.start()
    log.info("%s: started (pid %d): %s", name, popen.pid, " ".join(argv))
    return Child(name, popen, reader, last)


def installed_commands() -> set[str]:
    """The management commands ``manage.py`` knows, asked in a child so Django stays out of here."""
    result = subprocess.run(
        [sys.executable, MANAGE_PY, "help", "--commands"],
        cwd=embedded.REPO_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
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


@dataclass
class Slot:
    """One process of the platform: its running child, or when it is due to start again."""

    process: Process
    child: Child | None = None
    restart_at: float | None = None
    deaths: deque[float] = field(default_factory=deque)


class Supervisor:
    def __init__(
        self,
        processes: Sequence[Process],
        *,
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.policy = RestartPolicy.from_env(env) if policy is None else policy
        self.context = {"python": sys.executable, "manage": MANAGE_PY, "port": env.get("PORT") or "8000"}
        self.slots: list[Slot] = []
        self.stopping = threading.Event()
        self.width = max([len(process.name) for process in processes] + [len("setup")])

    @property
    def children(self) -> list[Child]:
        return [slot.child for slot in self.slots if slot.child is not None]

    def run_once(self, name: str, argv: Sequence[str]) -> None:
        """Run a one-shot step (like platform_setup) to completion; raise if it fails."""
        slot = Slot(Process(name, tuple(argv)), spawn(name, argv, width=self.width))
        self.slots.append(slot)
        assert slot.child is not None
        status = slot.child.popen.wait()
        slot.child.reader.join(timeout=2)
        self.slots.remove(slot)
        if status != 0:
            raise ChildExited(f"{name} failed: {how_it_ended(status)}")

    def start(self, processes: Sequence[Process]) -> None:
        for process in processes:
            slot = Slot(process)
            self.slots.append(slot)
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        slot.restart_at = None
        slot.child = spawn(slot.process.name, slot.process.resolve(self.context), width=self.width)

    def watch(self, poll: float = 0.1) -> None:
        """Restart the processes that die until ``stop()``; raise ``CrashLoop`` when an essential one
        keeps dying (any other is held back, ``RestartPolicy.pause``)."""
        while not self.stopping.is_set():
            now = time.monotonic()
            for slot in self.slots:
                if slot.child is not None and slot.child.popen.poll() is not None:
                    self._died(slot, now)
                elif slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
                    if self.stopping.is_set():  # stop() runs (from another thread): start nothing
                        return
                    self._start(slot)
            time.sleep(poll)

    def _died(self, slot: Slot, now: float) -> None:
        child = slot.child
        assert child is not None
        child.reap()
        slot.child = None
        how = how_it_ended(child.popen.returncode)
        slot.deaths.append(now)
        while slot.deaths and slot.deaths[0] < now - self.policy.window:
            slot.deaths.popleft()
        recent = len(slot.deaths)
        if recent >= self.policy.deaths:
            message = self._crash_loop_message(slot.process, child, how, recent)
            if slot.process.essential:
                raise CrashLoop(f"{message}\nWithout {slot.process.name} the platform cannot serve: giving up.")
            slot.deaths.clear()
            slot.restart_at = now + self.policy.pause
            log.error("%s\nHolding %s back for %.0f s, then trying again; the other processes keep running.",
                      message, slot.process.name, self.policy.pause)
            return
        delay = self.policy.delay(recent)
        slot.restart_at = now + delay
        log.error(
            "%s (pid %d) died: %s; restarting it in %.1f s (%d of %d deaths within %.0f s before giving up)",
            child.name,
            child.popen.pid,
            how,
            delay,
            recent,
            self.policy.deaths,
            self.policy.window,
        )

    def _crash_loop_message(self, process: Process, child: Child, how: str, recent: int) -> str:
        alone = " ".join(process.resolve({**self.context, "python": "python", "manage": "manage.py"}))
        last = "\n".join(f"    {line}" for line in child.last_lines) or "    (no output)"
        return (
            f"{process.name} keeps dying: {recent} deaths within {self.policy.window:.0f} s, the last one "
            f"{how}. Look at its log: the lines prefixed '{process.name} |' above, the last "
            f"ones being:\n{last}\nTo see it fail on its own, run: {alone}"
        )

    def stop(self) -> None:
        """Stop the children, newest first, within ``STOP_TIMEOUT`` in all."""
        self.stopping.set()
        deadline = time.monotonic() + STOP_TIMEOUT
        children = self.children
        for child in children:
            child.terminate()
        for child in reversed(children):
            child.stop(deadline)
            log.info("%s: stopped (%s)", child.name, how_it_ended(child.popen.returncode))
        self.slots.clear()


def main(processes: Sequence[Process] | None = None) -> int:
    """Run the platform until Ctrl-C or SIGTERM (status 0), a failed start or a crash loop (1)."""
    processes = PROCESSES if processes is None else processes
    embedded.configure_logging()
    services = embedded.EmbeddedServices(
        data_dir=embedded.data_dir_from_env(), prefer_fixed_ports=True, publish=True
    )
    supervisor = Supervisor(processes)
    status = 0
    # Started in the background by a shell or a script, a process inherits SIGINT ignored, and
    # Python then leaves it so: Ctrl-C or `kill -INT` must stop the platform however it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with embedded.terminating_signals_raise():
        try:
            services.start()
            supervisor.run_once("setup", [sys.executable, MANAGE_PY, "platform_setup"])
            supervisor.start(runnable(processes, installed_commands()))
            log.info("platform running on http://localhost:%s/ (Ctrl-C stops it)", supervisor.context["port"])
            if not (shown := embedded.data_dir_from_env() / "demo-hint-shown").exists() and shown.parent.is_dir():
                log.info("first start: `make demo` (in another terminal) loads two real tracks with calculators")
                shown.touch()
            supervisor.watch()
        except KeyboardInterrupt:
            log.info("stopping")
        except (ChildExited, embedded.EmbeddedError) as error:
            log.error("%s", error)
            log.error("stopping everything")
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
