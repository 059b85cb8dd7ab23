"""The one shape of a long-running loop, and the one place of its failure policy: the outbox
relay, the MQTT ingest consumer, the purge of expired messages, the pump, the sealer of message
blocks, the vacuuming of queue tables, the MQTT access sync.

A loop writes only its work: ``step()``, one round of it, returning the seconds to wait before
the next one (and, where it needs them, ``setup()`` before the first step and ``teardown()``
after the last). ``Loop.run()`` steps it until ``stop()`` is called, and owns what happens when
a step raises:

- the exception is logged with the loop's name (with its traceback on the first failure of a
  streak, then one line per failure, and a line when a step succeeds again);
- it is counted: ``Loop.errors``, among the counts the runner logs and returns, and
  ``flespi_loop_errors_total{loop}`` on ``/metrics``;
- the database connections the failure left unusable are closed, so that the next step
  connects again (after a database restart, say);
- the next step comes after a pause that doubles with each failure in a row, up to a cap
  (``Backoff``), and is the loop's own again once a step succeeds;
- the loop keeps running: only ``stop()`` ends it (a loop may stop itself).

A failed ``setup()`` is a failed step too: it is tried again after the pause.

``PeriodicLoop`` is a loop whose step is a function called every so many seconds. ``run_loops``
runs loops in one process, each in a thread, until SIGINT or SIGTERM (or until every loop
ended), logs their counts every ``log_every`` seconds and once at the end, and returns them. A
management command only parses its arguments, builds its loops and calls ``run_loops``.

``startup_frozen`` is the one place of the garbage collector's policy of a long-running process
(the loops', the calc worker's, the broker's, each web process's): what it started with is never
walked again.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import final

from django.db import close_old_connections

from flespi_site import health, metrics

logger = logging.getLogger(__name__)

# Loops that stop within this many seconds of being asked are joined; others are left to the
# process's exit (their threads are daemons).
JOIN_SECONDS = 15.0


def startup_frozen(name: str) -> int:
    """Called once by a long-running process when it has started (its modules, settings and
    apps loaded): what is alive then is moved out of the cyclic garbage collector's generations,
    so that no later collection walks it; returns how many objects that is.

    A full collection walks every tracked object of the process and stops every thread meanwhile.
    A calc worker starts with about 180,000 (Django, Celery, the engine's modules); its full
    collections came every 3-4 s under load and took 60-150 ms each, and those of the relay, the
    pump and the broker up to 100 ms, each a stall on the path of the messages in flight
    (docs/analytics.md, "Collections of the garbage collector"). The frozen objects are still
    freed by reference counting when they go; only a reference cycle among them is never found,
    and what a process starts with lives as long as it does."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s: %d objects of its start kept out of the garbage collector's walks", name, frozen)
    return frozen


@dataclass(frozen=True)
class Backoff:
    """The pause after a failed step: ``first`` seconds, doubling with each failure in a row, at
    most ``most`` (a broker or database that is away is asked again soon, then less often)."""

    first: float = 1.0
    most: float = 10.0

    def pause(self, failures_in_a_row: int) -> float:
        return min(self.most, self.first * 2 ** max(0, failures_in_a_row - 1))


class Loop(ABC):
    """Work that runs one step at a time until it is stopped; the runner owns its failures."""

    name: str = "loop"
    backoff: Backoff = Backoff()

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self.errors = 0
        self.failures_in_a_row = 0
        self._ready = False

    def setup(self) -> None:  # noqa: B027 - optional: most loops need none
        """Before the first step; an exception here is a failed step (tried again later)."""

    @abstractmethod
    def step(self) -> float:
        """One round of the loop's work; returns the seconds to wait before the next one."""

    def teardown(self) -> None:  # noqa: B027 - optional: most loops need none
        """After the last step, also when ``setup()`` never succeeded."""

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> threading.Event:
        """Set once ``stop()`` was called; ``stopping.wait(s)`` sleeps unless asked to stop."""
        return self._stopping

    @property
    def ready(self) -> bool:
        """Its ``setup()`` succeeded (a step ran or runs)."""
        return self._ready

    def problem(self) -> str | None:
        """What keeps this loop from its work although its steps succeed (a broker it waits for),
        for its process's readiness; None when nothing does."""
        return None

    def counts(self) -> dict[str, int]:
        """What the loop did so far, for the log (the runner adds its errors)."""
        return {}

    @final
    def run(self) -> None:
        """Step until ``stop()``, under the failure policy of the module's docstring."""
        try:
            while not self.stopping.is_set():
                self.stopping.wait(self.attempt())
        finally:
            self.teardown()

    @final
    def attempt(self) -> float:
        """One step (after ``setup()``, until it has succeeded) under the failure policy; returns
        the pause before the next. ``run`` calls it; a loop that another scheduler drives (the calc
        worker's lease balance, in Celery's consumer timer) calls it directly."""
        try:
            if not self._ready:
                self.setup()
                self._ready = True
            pause = self.step()
        except Exception as error:
            return self._failed(error)
        if self.failures_in_a_row:
            logger.info("%s: working again after %d failed step(s)", self.name, self.failures_in_a_row)
            self.failures_in_a_row = 0
        return pause

    def _failed(self, error: Exception) -> float:
        self.errors += 1
        self.failures_in_a_row += 1
        metrics.loop_failed(loop=self.name)
        pause = self.backoff.pause(self.failures_in_a_row)
        if self.failures_in_a_row == 1:
            logger.exception("%s: a step failed; trying again in %.1f s", self.name, pause)
        else:
            logger.error(
                "%s: a step failed again (%d in a row): %s: %s; trying again in %.1f s",
                self.name, self.failures_in_a_row, type(error).__name__, error, pause,
            )
        # Django's connections are per thread, and each loop has a thread of its own.
        close_old_connections()
        return pause


class PeriodicLoop(Loop):
    """Calls ``step`` (the function given) every ``every`` seconds until stopped; it returns
    how many things it did, counted under ``what``."""

    def __init__(self, *, name: str, every: float, step: Callable[[], int], what: str = "done"):
        super().__init__()
        self.name = name
        self.every = every
        self.work = step
        self.what = what
        self.steps = 0
        self.done = 0

    def step(self) -> float:
        done = self.work()
        self.steps += 1
        self.done += done
        logger.info("%s: %s %d", self.name, self.what, done)
        return self.every

    def counts(self) -> dict[str, int]:
        return {"steps": self.steps, self.what: self.done}


def loop_counts(loop: Loop) -> dict[str, int]:
    """The loop's counts and its failed steps."""
    return {**loop.counts(), "errors": loop.errors}


def loops_problems(loops: Sequence[Loop]) -> dict[str, str]:
    """Why these loops are not ready (``flespi_site.health``): one that has not started yet, or
    whose last step failed (a database or broker away), or that ended."""
    problems = {}
    for loop in loops:
        if loop.failures_in_a_row:
            problems[loop.name] = f"its last {loop.failures_in_a_row} step(s) failed; see the log"
        elif not loop.ready:
            problems[loop.name] = "not started yet"
        elif loop.stopping.is_set():
            problems[loop.name] = "stopping"
        elif (problem := loop.problem()) is not None:
            problems[loop.name] = problem
    return problems


def _log_counts(loops: Sequence[Loop], *, name: str, final: bool = False) -> None:
    for loop in loops:
        counts = ", ".join(f"{key} {value}" for key, value in loop_counts(loop).items())
        logger.info("%s: %s: %s%s", name, loop.name, counts, " (stopped)" if final else "")


def run_loops(
    loops: Sequence[Loop],
    *,
    name: str,
    log_every: float = 60.0,
) -> dict[str, dict[str, int]]:
    """Run each loop in a thread until SIGINT or SIGTERM (or until all ended), then stop and join
    them; their counts (errors included) are logged every ``log_every`` seconds and at the end,
    and returned by loop name. Call it from the main thread (signal handlers are installed there
    and restored on return)."""
    stopping = threading.Event()

    def handle(signum, frame):
        logger.info("%s: stopping (signal %s)", name, signum)
        stopping.set()

    startup_frozen(name)
    server = health.serve(role=name, problems=lambda: loops_problems(loops))
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = [
        threading.Thread(target=loop.run, name=f"{name}-{index}", daemon=True) for index, loop in enumerate(loops)
    ]
    logger.info("%s: starting %s", name, ", ".join(loop.name for loop in loops))
    for thread in threads:
        thread.start()
    next_log = time.monotonic() + log_every
    try:
        while not stopping.is_set() and any(thread.is_alive() for thread in threads):
            stopping.wait(min(0.5, log_every))
            if time.monotonic() >= next_log:
                _log_counts(loops, name=name)
                next_log = time.monotonic() + log_every
    finally:
        if server is not None:
            server.stop()
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(timeout=JOIN_SECONDS)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _log_counts(loops, name=name, final=True)
    return {loop.name: loop_counts(loop) for loop in loops}
