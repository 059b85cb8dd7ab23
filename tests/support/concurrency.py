"""Races: callables started together, to test what holds when they overlap."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def on_a_barrier(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the callables in threads released together by a Barrier; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
