"""The Celery apps of the platform: one per region, on the region's Redis (docs/analytics.md,
"Processes").

No result backend, late acknowledgement, prefetch of one, a task whose worker died goes back to
its queue (``reject_on_worker_lost``; ``analytics.tasks`` caps how often), and no ETA or
countdown anywhere: delays live in the debounce timers (``analytics.debounce``), which the pump
turns into plain messages when they are due. Every key the apps write in Redis starts with
``flespi:<region>:celery:``, so that regions sharing one Redis (the embedded default) stay apart.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import redis
from celery import Celery
from django.conf import settings

logger = logging.getLogger(__name__)

# A message not acknowledged this long after delivery (its worker hangs, or the connection
# vanished without a close) is delivered again; it must exceed the longest task.
VISIBILITY_TIMEOUT = 900


def shard_queue(region: str, shard: int) -> str:
    """The queue of a calculation shard: all work on the shard's devices goes through it."""
    return f"calc.{region}.{int(shard)}"


@functools.cache
def celery_app(region: str) -> Celery:
    """The Celery app of ``region`` (its broker is the region's Redis)."""
    url = settings.TOPOLOGY.region(region).redis_url
    # No Django fixup: the processes are Django's already (``manage.py``), and the fixup closes
    # every database connection before and after each task, so that each task of a calc worker
    # opened one per datacenter again. The worker keeps Django's rule instead (``calc_process``).
    app = Celery(f"flespi-{region}", broker=url, set_as_current=False, fixups=[])
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        # A request that stores messages must not hang on a broker that is down: the change log
        # keeps the work, and the pump wakes the shard later.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "global_keyprefix": f"flespi:{region}:celery:",
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app


@functools.cache
def redis_client(region: str) -> redis.Redis:
    """A client of the region's Redis (debounce timers, leases, wake-up flags)."""
    return redis.Redis.from_url(settings.TOPOLOGY.region(region).redis_url, socket_timeout=5, socket_connect_timeout=2)


def region_of_alias(alias: str) -> str:
    """The region of a datacenter database."""
    for datacenter in settings.TOPOLOGY.datacenters:
        if datacenter.alias == alias:
            return datacenter.region
    raise LookupError(f"{alias!r} is not a datacenter database")


# A wake-up flag left by a message nobody took (its queue's shard had no holder for that long)
# lets the next change send another after this.
WAKE_TTL = 60


def wake_key(region: str, address: str | int) -> str:
    """Set while a wake-up message addressed to ``address`` waits (at most one does): a worker
    id, or the shard number of a shard nobody holds."""
    return f"flespi:{region}:wake:{address}"


def dirty_key(region: str, shard: int) -> str:
    """Set when the shard's change log got rows that no drain has taken yet."""
    return f"flespi:{region}:dirty:{int(shard)}"


def shards_wake(*, region: str, shards: Iterable[int], force: bool = False) -> None:
    """Tell the workers of ``shards`` that their devices' messages changed (the change log in the
    datacenter database says how), after the change committed.

    Each shard gets a dirty flag, which the worker clears before it reads the log. The wake-up
    messages are addressed to the shards' holders (their leases, read in the same round trip):
    one message per holder, to the queue of one of its shards, and none while one addressed to
    it still waits (a flag the consumer of the message clears). One drain takes the rows of every
    dirty shard the worker holds, so a request touching all shards costs it one task, not one per
    shard. A shard nobody holds gets a message of its own in its queue, for whoever takes it. A
    broker that cannot be reached loses nothing (the pump's reconciliation finds the change log)
    and is only logged. ``force`` sends even when a wake-up is waiting (reconciliation: the one
    waiting may be in the hands of a worker that died)."""
    from analytics.shards import lease_holders

    try:
        order = sorted(set(shards))
        if not order:
            return
        client = redis_client(region)
        pipe = client.pipeline(transaction=False)
        for shard in order:
            pipe.set(dirty_key(region, shard), 1, ex=VISIBILITY_TIMEOUT)
        holders = lease_holders(pipe, region=region, shards=order)
        targets: dict[str | int, int] = {}
        for shard in order:
            targets.setdefault(holders[shard] or shard, shard)
        pipe = client.pipeline(transaction=False)
        for address in targets:
            pipe.set(wake_key(region, address), 1, nx=not force, ex=WAKE_TTL)
        app = celery_app(region)
        for (address, shard), newly in zip(targets.items(), pipe.execute(), strict=True):
            if newly:
                app.send_task("analytics.shard_changes", args=[region, shard, address], queue=shard_queue(region, shard))
    except Exception as exc:
        logger.warning("could not wake the calc workers of region %s (%s); the pump will catch up", region, exc)


def shards_request(*, region: str, shards: Iterable[int]) -> None:
    """Tell the workers of ``shards`` that assignments of theirs have a new recalculation request
    stored (a new assignment, a calculator change, ...), so that they schedule it now rather than
    at the pump's next reconciliation. Losing this message loses nothing but that head start."""
    try:
        app = celery_app(region)
        for shard in sorted(set(shards)):
            app.send_task("analytics.shard_requests", args=[region, shard], queue=shard_queue(region, shard))
    except Exception as exc:  # the request is stored; reconciliation schedules it
        logger.warning("could not tell the calc workers of region %s of new requests (%s)", region, exc)
