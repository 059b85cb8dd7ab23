"""The platform's Prometheus instruments, counted where the work happens and served by
``GET /metrics`` (``flespi_site.metrics_view``).

The work happens in many processes (two gunicorn workers, the MQTT consumer, the importer, the
relays, the calc workers), so the counters and histograms here use the client library's
multi-process mode: each process writes its values to a small memory-mapped file of its own in
``settings.METRICS_DIR``, and a scrape of any web worker adds up the files of every process. One
increment is a write into that map (microseconds, no system call, no network), which is what
keeps the ingest path's cost negligible. What is state rather than an event (outbox backlog,
assignments by state, debounce lag) is not counted here: the scrape reads it from the databases
and Redis through the state collectors apps register (docs/configuration.md, "Metrics").

This module imports no app of the platform: the hot paths of every app import it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from django.conf import settings

DIRECTORY = settings.METRICS_DIR
# The library picks its storage when it is imported, from this variable.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = DIRECTORY
os.makedirs(DIRECTORY, exist_ok=True)

from prometheus_client import Counter, Histogram, values  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

if not getattr(values.ValueClass, "_multiprocess", False):  # imported before the variable was set
    values.ValueClass = values.get_value_class()

# Seconds, from one small batch on an idle machine to a large one on a loaded machine.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

MESSAGES_INGESTED = Counter(
    "flespi_messages_ingested",
    "Messages stored (one per device a batch was written to), by entry point (rest, mqtt, import).",
    ["source", "region", "datacenter"],
)
INGEST_BATCH_SECONDS = Histogram(
    "flespi_ingest_batch_seconds",
    "Time one ingest call took, from validation to the commit of every datacenter written.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
RELAY_PUBLISHED = Counter(
    "flespi_relay_published",
    "Outbox events the relay published and the broker acknowledged.",
    ["region", "datacenter"],
)
WEBHOOK_REQUESTS = Counter(
    "flespi_webhook_requests",
    "Webhook requests by their outcome: delivered (2xx), failed (tried again later), dropped (out of retry time).",
    ["region", "datacenter", "outcome"],
)
RECALCULATIONS = Counter(
    "flespi_recalculations",
    "Assignments recalculated and stored by the calc workers.",
    ["region"],
)
RECALCULATIONS_EXTENDED = Counter(
    "flespi_recalculations_extended",
    "Of the recalculations, those that extended the active interval from its tail (no window).",
    ["region"],
)
RECALCULATION_SECONDS = Histogram(
    "flespi_recalculation_seconds",
    "Time one recalculation run of a calc worker took (reading its cache to committing the diff).",
    ["region"],
    buckets=LATENCY_BUCKETS,
)
SHARDS_GAINED = Counter(
    "flespi_calc_shards_gained",
    "Shard leases a calc worker took (at its start, or from a worker that left or died), by worker.",
    ["region", "worker"],
)
SHARDS_LOST = Counter(
    "flespi_calc_shards_lost",
    "Shard leases a calc worker lost to another (it was paused or cut off past its lease), by worker.",
    ["region", "worker"],
)
SHARD_HANDOVERS = Counter(
    "flespi_calc_shard_handovers",
    "Shards a calc worker took, by the state of its cache: in_step (nobody drained the shard meanwhile: "
    "a restart), caught_up (read again what another worker drained), refilled (its cache was dropped).",
    ["region", "how"],
)
CACHE_CAUGHT_UP = Counter(
    "flespi_calc_cache_caught_up_devices",
    "Devices of a cache that came back to a shard behind its change log: read again over the ranges "
    "it missed (ranged) or dropped to be refilled (dropped).",
    ["region", "how"],
)
DEVICES_FILLED = Counter(
    "flespi_calc_devices_filled",
    "Devices copied whole from PostgreSQL into a calc worker's cache.",
    ["region", "datacenter"],
)
MESSAGES_FILLED = Counter(
    "flespi_calc_messages_filled",
    "Messages copied into calc workers' caches by whole-device fills.",
    ["region", "datacenter"],
)
LOOP_ERRORS = Counter(
    "flespi_loop_errors",
    "Failed steps of the long-running loops (relay, MQTT ingest, purge, pump, sealer, vacuum), by loop.",
    ["loop"],
)


# Collectors of what is state rather than an event, read at scrape time. An app registers its own
# when it is ready (``analytics.apps``), so that this module and the view import no app.
_STATE_COLLECTORS: list[Callable[[], Collector]] = []


def state_collector_register(factory: Callable[[], Collector]) -> None:
    """Add a collector (made anew for each scrape) to what ``GET /metrics`` reads."""
    if factory not in _STATE_COLLECTORS:
        _STATE_COLLECTORS.append(factory)


def state_collectors() -> list[Collector]:
    return [factory() for factory in _STATE_COLLECTORS]


@functools.cache
def place_of(alias: str) -> tuple[str, str]:
    """(region, datacenter) codes of a datacenter database alias."""
    for datacenter in settings.TOPOLOGY.datacenters:
        if datacenter.alias == alias:
            return datacenter.region, datacenter.code
    return "", alias


@functools.cache
def _ingested(source: str, alias: str):
    return MESSAGES_INGESTED.labels(source, *place_of(alias))


@functools.cache
def _batch_seconds(source: str):
    return INGEST_BATCH_SECONDS.labels(source)


def ingest_done(*, source: str, stored: dict[str, int], seconds: float) -> None:
    """One ingest call: ``stored`` messages per datacenter alias, in ``seconds``."""
    for alias, count in stored.items():
        _ingested(source, alias).inc(count)
    _batch_seconds(source).observe(seconds)


def relay_published(*, alias: str, count: int) -> None:
    if count:
        RELAY_PUBLISHED.labels(*place_of(alias)).inc(count)


def webhook_requests(*, alias: str, delivered: int = 0, failed: int = 0, dropped: int = 0) -> None:
    """What a delivery loop's finished requests did (``webhooks.delivery``)."""
    place = place_of(alias)
    for outcome, count in (("delivered", delivered), ("failed", failed), ("dropped", dropped)):
        if count:
            WEBHOOK_REQUESTS.labels(*place, outcome).inc(count)


def recalculation_done(*, region: str, seconds: float, assignments: int = 1, extended: int = 0) -> None:
    """One recalculation run of a calc worker that stored ``assignments`` assignments' results,
    ``extended`` of them by extending the active interval from its tail."""
    RECALCULATIONS.labels(region).inc(assignments)
    if extended:
        RECALCULATIONS_EXTENDED.labels(region).inc(extended)
    RECALCULATION_SECONDS.labels(region).observe(seconds)


def shards_gained(*, region: str, worker: str, count: int) -> None:
    if count:
        SHARDS_GAINED.labels(region, worker).inc(count)


def shards_lost(*, region: str, worker: str, count: int) -> None:
    if count:
        SHARDS_LOST.labels(region, worker).inc(count)


def shard_handed_over(*, region: str, behind: bool, refilled: bool) -> None:
    SHARD_HANDOVERS.labels(region, "refilled" if refilled else "caught_up" if behind else "in_step").inc()


def cache_caught_up(*, region: str, ranged: int, dropped: int) -> None:
    if ranged:
        CACHE_CAUGHT_UP.labels(region, "ranged").inc(ranged)
    if dropped:
        CACHE_CAUGHT_UP.labels(region, "dropped").inc(dropped)


def device_filled(*, alias: str, messages: int) -> None:
    place = place_of(alias)
    DEVICES_FILLED.labels(*place).inc()
    MESSAGES_FILLED.labels(*place).inc(messages)


def loop_failed(*, loop: str) -> None:
    """A step of the loop named ``loop`` raised (``flespi_site.runner``)."""
    LOOP_ERRORS.labels(loop).inc()
