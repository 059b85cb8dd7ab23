"""The fleet's Redis in tests: a client of the Redis named in REDIS_URL and a region code of the
test's own, so that tests share one Redis without flushing it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

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
