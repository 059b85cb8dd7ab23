"""Running long-lived workers (relays, consumers, sweeps) in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def run_until_signalled(workers: Sequence[Stoppable], *, name: str, on_stop: Callable[[], None] | None = None) -> None:
    """Run each worker in a thread; on SIGINT or SIGTERM ask them all to stop, then join."""
    stopping = threading.Event()

    def handle(signum, frame):
        logger.info("%s: stopping (signal %s)", name, signum)
        stopping.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = [threading.Thread(target=worker.run, name=f"{name}-{index}", daemon=True) for index, worker in enumerate(workers)]
    for thread in threads:
        thread.start()
    try:
        while not stopping.is_set() and any(thread.is_alive() for thread in threads):
            stopping.wait(0.5)
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=15)
        if on_stop:
            on_stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
