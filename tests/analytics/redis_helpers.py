"""Helpers of the fleet's Redis tests: a client of the Redis named in REDIS_URL, a region code of
the test's own (so tests share one Redis without flushing it), and callables raced on a Barrier."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from flespi_site.fleet import region_prefix


@contextmanager
def scratch_region() -> Iterator[tuple[redis.Redis, str]]:
    """A client and a fresh region code; the region's keys are deleted afterwards."""
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    code = f"t{uuid.uuid4().hex[:10]}"
    try:
        yield client, code
    finally:
        for key in client.scan_iter(f"{region_prefix(code)}*"):
            client.delete(key)
        client.close()


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
