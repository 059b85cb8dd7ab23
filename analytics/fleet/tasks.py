"""Celery tasks of the calc fleet: thin, idempotent, taking ids; each decodes its payload
(``flespi_site.fleet``, where its name is defined) and calls the shard worker of this process
(``analytics.fleet.worker``), which the ``calc_worker`` command sets up.

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

from analytics.fleet.worker import NotHeld, ShardWorker
from flespi_site.celery import redis_client
from flespi_site.fleet import FleetTask, ShardChanges, ShardPurge, ShardRequests, ShardRun, deliveries_key

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
    key = deliveries_key(region, task_id)
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


@shared_task(name=FleetTask.SHARD_CHANGES.value, bind=True)
def shard_changes(self, *args) -> None:
    payload = ShardChanges.from_args(*args)
    _on_shard(self, payload.region, payload.shard,
              lambda worker: worker.changes_drain(payload.shard, address=payload.address))


@shared_task(name=FleetTask.SHARD_RUN.value, bind=True)
def shard_run(self, *args) -> None:
    payload = ShardRun.from_args(*args)
    _on_shard(self, payload.region, payload.shard, lambda worker: worker.batch_run(payload.by_shard()))


@shared_task(name=FleetTask.SHARD_REQUESTS.value, bind=True)
def shard_requests(self, *args) -> None:
    payload = ShardRequests.from_args(*args)
    _on_shard(self, payload.region, payload.shard, lambda worker: worker.requests_schedule(payload.shard))


@shared_task(name=FleetTask.SHARD_PURGE.value, bind=True)
def shard_purge(self, *args) -> None:
    payload = ShardPurge.from_args(*args)
    _on_shard(self, payload.region, payload.shard, lambda worker: worker.shard_purge(payload.shard))
