"""The one shape of a long-running loop: the outbox relay, the MQTT ingest consumer, the purge of
expired messages, and whatever else runs until it is stopped.

A loop is a ``Loop``: ``run()`` works until ``stop()`` is called (it checks ``self.stopping``)
and ``counts()`` says what it did. ``PeriodicLoop`` is a loop that does one step every so many
seconds. ``run_loops`` runs loops in one process, each in a thread, until SIGINT or SIGTERM (or
until every loop ended by itself), logs their counts every ``log_every`` seconds and once at the
end, and returns them. A management command only parses its arguments, builds its loops and
calls ``run_loops``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

# Loops that stop within this many seconds of being asked are joined; others are left to the
# process's exit (their threads are daemons).
JOIN_SECONDS = 15.0


class Loop(ABC):
    """Work that runs until it is stopped."""

    name: str = "loop"

    def __init__(self) -> None:
        self._stopping = threading.Event()

    @abstractmethod
    def run(self) -> None:
        """Work until ``stop()``; return soon after it."""

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> threading.Event:
        """Set once ``stop()`` was called; ``stopping.wait(s)`` sleeps unless asked to stop."""
        return self._stopping

    def counts(self) -> dict[str, int]:
        """What the loop did so far, for the log."""
        return {}


class PeriodicLoop(Loop):
    """Calls ``step()`` every ``every`` seconds until stopped; ``step`` returns how many things
    it did, counted under ``what``."""

    def __init__(self, *, name: str, every: float, step: Callable[[], int], what: str = "done"):
        super().__init__()
        self.name = name
        self.every = every
        self.step = step
        self.what = what
        self.steps = 0
        self.done = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            done = self.step()
            self.steps += 1
            self.done += done
            logger.info("%s: %s %d", self.name, self.what, done)
            self.stopping.wait(self.every)

    def counts(self) -> dict[str, int]:
        return {"steps": self.steps, self.what: self.done}


def _log_counts(loops: Sequence[Loop], *, name: str, final: bool = False) -> None:
    for loop in loops:
        counts = ", ".join(f"{key} {value}" for key, value in loop.counts().items())
        logger.info("%s: %s%s%s", name, loop.name, ": " if counts else "", counts + (" (stopped)" if final else ""))


def run_loops(
    loops: Sequence[Loop],
    *,
    name: str,
    log_every: float = 60.0,
    on_stop: Callable[[], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Run each loop in a thread until SIGINT or SIGTERM (or until all ended), then stop and join
    them; their counts are logged every ``log_every`` seconds and at the end, and returned by
    loop name. Call it from the main thread (signal handlers are installed there and restored
    on return)."""
    stopping = threading.Event()

    def handle(signum, frame):
        logger.info("%s: stopping (signal %s)", name, signum)
        stopping.set()

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
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(timeout=JOIN_SECONDS)
        if on_stop:
            on_stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _log_counts(loops, name=name, final=True)
    return {loop.name: loop.counts() for loop in loops}
