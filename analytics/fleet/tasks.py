"""Celery tasks of the calc fleet: thin, idempotent, taking ids; each decodes its payload
(``flespi_site.fleet``, where its name is defined) and calls the shard worker of this process
(``analytics.fleet.worker``), which the ``calc_worker`` command sets up.

Every message goes to the queue of the worker that held its shard when it was sent. One for a shard
this worker no longer holds (it moved while the message waited) is passed on to the shard's holder
now, and dropped when nobody holds it: the next holder drains the shard's change log, schedules its
requests and takes its timers back when it takes it. A message redelivered more than
``MAX_DELIVERIES`` times (its worker keeps dying on it) is dropped with an error in the log: what it
asked for is durable (the change log, the pending ranges), and the pump's reconciliation asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from analytics.fleet.worker import NotHeld, ShardWorker
from flespi_site.celery import celery_app, redis_client
from flespi_site.fleet import (
    FleetTask,
    ShardChanges,
    ShardFill,
    ShardPayload,
    ShardPurge,
    ShardRequests,
    ShardRun,
    deliveries_key,
    lease_holders,
)

logger = logging.getLogger(__name__)

MAX_DELIVERIES = 5

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
    pipe = redis_client(region).pipeline(transaction=False)  # one round trip
    pipe.incr(key)
    pipe.expire(key, 3600)
    count, _expires = pipe.execute()
    if count > MAX_DELIVERIES:
        logger.error("calc %s: dropping %s %s after %s deliveries; reconciliation will redo its work",
                     region, task.name, task_id, count - 1)
        return True
    return False


def _passed_on(worker: ShardWorker, payload: ShardPayload) -> None:
    """A message for shards this worker does not hold, to their holders now (a batch split by
    holder); what nobody holds is dropped."""
    client = redis_client(payload.region)
    app = celery_app(payload.region)
    if isinstance(payload, ShardRun):
        by_shard = {item.shard for item in payload.due}
        holders = lease_holders(client.pipeline(transaction=False), region=payload.region, shards=sorted(by_shard))
        parts: dict[str, list] = {}
        for item in payload.due:
            holder = holders[item.shard]
            if holder is not None and holder != worker.worker_id:
                parts.setdefault(holder, []).append(item)
        for holder, items in parts.items():
            ShardRun(region=payload.region, shard=items[0].shard, due=tuple(items)).send(app, holder)
        return
    holder = lease_holders(client.pipeline(transaction=False), region=payload.region, shards=[payload.shard])[payload.shard]
    if holder is not None and holder != worker.worker_id:
        payload.send(app, holder)


def _on_shard(task, payload: ShardPayload, job: Callable[[ShardWorker], Any]) -> Any:
    worker = _current()
    if worker.region != payload.region or _delivered_too_often(task, payload.region):
        return None
    try:
        return job(worker)
    except NotHeld:
        _passed_on(worker, payload)
        return None


@shared_task(name=FleetTask.SHARD_CHANGES.value, bind=True)
def shard_changes(self, *args) -> None:
    payload = ShardChanges.from_args(*args)
    _on_shard(self, payload, lambda worker: worker.changes_drain())


@shared_task(name=FleetTask.SHARD_RUN.value, bind=True)
def shard_run(self, *args) -> None:
    payload = ShardRun.from_args(*args)
    _on_shard(self, payload, lambda worker: worker.batch_run(payload.by_shard()))


@shared_task(name=FleetTask.SHARD_REQUESTS.value, bind=True)
def shard_requests(self, *args) -> None:
    payload = ShardRequests.from_args(*args)
    _on_shard(self, payload, lambda worker: worker.requests_schedule(payload.shard))


@shared_task(name=FleetTask.SHARD_PURGE.value, bind=True)
def shard_purge(self, *args) -> None:
    payload = ShardPurge.from_args(*args)
    _on_shard(self, payload, lambda worker: worker.shard_purge(payload.shard))


@shared_task(name=FleetTask.SHARD_FILL.value, bind=True)
def shard_fill(self, *args) -> None:
    payload = ShardFill.from_args(*args)

    def fill(worker: ShardWorker) -> None:
        if worker.shard_fill(payload.shard):
            payload.send(celery_app(payload.region), worker.worker_id)  # the rest, after what waits

    _on_shard(self, payload, fill)
