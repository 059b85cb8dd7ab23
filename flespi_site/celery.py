"""The Celery apps of the platform: one per region, on the region's Redis (docs/analytics.md,
"Processes").

No result backend, late acknowledgement, prefetch of one, a task whose worker died goes back to
its queue (``reject_on_worker_lost``; ``analytics.fleet.tasks`` caps how often), and no ETA or
countdown anywhere: delays live in the debounce timers (``analytics.fleet.debounce``), which the
pump turns into plain messages when they are due. The queues, task names, payloads and Redis keys
are ``flespi_site.fleet``'s; this module binds them to a region's broker and Redis.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import redis
from celery import Celery
from django.conf import settings

from flespi_site import fleet

logger = logging.getLogger(__name__)


@functools.cache
def celery_app(region: str) -> Celery:
    """The Celery app of ``region`` (its broker is the region's Redis)."""
    url = settings.TOPOLOGY.region(region).redis_url
    # No Django fixup: the processes are Django's already (``manage.py``), and the fixup closes
    # every database connection before and after each task, so that each task of a calc worker
    # opened one per datacenter again. The worker keeps Django's rule instead (``analytics.fleet.process``).
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
            "visibility_timeout": fleet.VISIBILITY_TIMEOUT,
            "global_keyprefix": fleet.celery_prefix(region),
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


def shards_wake(*, region: str, shards: Iterable[int], force: bool = False) -> None:
    """``flespi_site.fleet.shards_wake`` with the region's app and Redis client."""
    fleet.shards_wake(app=celery_app(region), client=redis_client(region), region=region, shards=shards, force=force)


def shards_request(*, region: str, shards: Iterable[int]) -> None:
    """``flespi_site.fleet.shards_request`` with the region's app and Redis client."""
    fleet.shards_request(app=celery_app(region), client=redis_client(region), region=region, shards=shards)


def __getattr__(name: str) -> Celery:
    """A region's app for Celery's own tools (Flower, ``celery inspect``): ``celery -A
    flespi_site.celery.eu inspect ping`` names the region; ``celery -A flespi_site`` (Celery looks
    for ``flespi_site.celery.app``) is the served region's (``REGION``), else the default region's."""
    if name.startswith("__"):  # the import system's questions (``__path__``...): not an app
        raise AttributeError(name)
    import os

    import django
    from django.apps import apps

    if not apps.ready:  # Celery's command line: the first use of the platform in the process
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flespi_site.settings")
        django.setup()
    codes = [region.code for region in settings.TOPOLOGY.regions]
    if name in ("app", "celery"):
        return celery_app(settings.SERVED_REGION or settings.TOPOLOGY.default_region)
    if name in codes:
        return celery_app(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (regions: {', '.join(codes)})")
