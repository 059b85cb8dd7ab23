"""Celery tasks of the calc fleet: thin, idempotent, taking ids; each calls the shard worker of
this process (``analytics.worker``), which the ``calc_worker`` command sets up.

A task for a shard this worker does not hold (it moved while the message waited) goes back to
the queue for the shard's holder. A message redelivered more than ``MAX_DELIVERIES`` times (its
worker keeps dying on it) is dropped with an error in the log: what it asked for is durable (the
change log, the pending ranges), and the pump's reconciliation asks again.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.exceptions import Reject

from analytics.worker import NotHeld, ShardWorker
from flespi_site.celery import redis_client

logger = logging.getLogger(__name__)

MAX_DELIVERIES = 5
REQUEUE_PAUSE = 0.5

_worker: ShardWorker | None = None


def set_worker(worker: ShardWorker | None) -> None:
    global _worker
    _worker = worker


def _current() -> ShardWorker:
    if _worker is None:
        raise Reject("this process runs no shard worker", requeue=True)
    return _worker


def _delivered_too_often(task, region: str) -> bool:
    task_id = task.request.id
    if not task_id:
        return False
    key = f"flespi:{region}:deliveries:{task_id}"
    client = redis_client(region)
    count = client.incr(key)
    client.expire(key, 3600)
    if count > MAX_DELIVERIES:
        logger.error("calc %s: dropping %s %s after %s deliveries; reconciliation will redo its work",
                     region, task.name, task_id, count - 1)
        return True
    return False


def _on_shard(task, region: str, shard: int, job):
    worker = _current()
    if worker.region != region or _delivered_too_often(task, region):
        return None
    try:
        return job(worker)
    except NotHeld:
        # The shard moved while this waited (or its lease is being taken again): back to the queue
        # for its holder, after a pause so that a worker still consuming it does not spin.
        time.sleep(REQUEUE_PAUSE)
        raise Reject(f"shard {shard} is not held here", requeue=True) from None


@shared_task(name="analytics.shard_changes", bind=True)
def shard_changes(self, region: str, shard: int, address: str | int | None = None) -> None:
    """``address``: whom the wake-up was for (``flespi_site.celery.shards_wake``)."""
    _on_shard(self, region, shard, lambda worker: worker.changes(shard, address=shard if address is None else address))


@shared_task(name="analytics.shard_run", bind=True)
def shard_run(self, region: str, shard: int, assignments: list[list[int]]) -> None:
    """``assignments``: [calc_id, device_id] of ``shard``, or [calc_id, device_id, shard] of any
    shard of the worker the pump addressed (its batch over all the shards it holds)."""
    batch: dict[int, list[tuple[int, int]]] = {}
    for item in assignments:
        of = int(item[2]) if len(item) > 2 else shard
        batch.setdefault(of, []).append((int(item[0]), int(item[1])))
    _on_shard(self, region, shard, lambda worker: worker.run_batch(batch or {shard: []}))


@shared_task(name="analytics.shard_requests", bind=True)
def shard_requests(self, region: str, shard: int) -> None:
    _on_shard(self, region, shard, lambda worker: worker.requests(shard))


@shared_task(name="analytics.shard_purge", bind=True)
def shard_purge(self, region: str, shard: int) -> None:
    _on_shard(self, region, shard, lambda worker: worker.purge(shard))
