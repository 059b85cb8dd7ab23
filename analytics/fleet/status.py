"""The one reader of the calculation fleet's state, for the operators' status page (docs/admin.md,
"Fleet status") and ``GET /metrics`` (``FleetStateCollector``): per served region its workers (heartbeat,
queue length) and its shards (lease holder, epoch, lease age and TTL left, debounce timers and
their lag) and per datacenter the assignments by state and the outbox backlog.

Nothing here writes. A region whose Redis or a datacenter whose database cannot be read is
reported as such, with the reason, and the others are still shown: the page is what an operator
opens when something is down.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import Count
from kombu.transport.redis import PRIORITY_STEPS
from prometheus_client.core import GaugeMetricFamily
from redis.backoff import NoBackoff
from redis.retry import Retry

from analytics.choices import AssignmentState
from analytics.fleet.debounce import DebounceTimers
from analytics.fleet.leases import leases_read
from analytics.models import Assignment
from devices.choices import OutboxKind
from flespi_site.fleet import queue_keys, unacked_key, worker_reports_key
from regions.selectors import served_datacenters

logger = logging.getLogger(__name__)

# Rows, events (a message row holds several messages, a telemetry row several values), the age of
# the oldest row.
_OUTBOX = f"""
SELECT count(*),
       coalesce(sum(CASE kind WHEN {int(OutboxKind.TELEMETRY)} THEN (SELECT count(*) FROM jsonb_object_keys(payload))
                    ELSE coalesce(cardinality(stamps), 1) END), 0),
       coalesce(extract(epoch FROM now() - min(created)), 0)
FROM outbox
"""
# The change log not yet drained by the calc workers: rows, and the age of the oldest.
_CHANGES = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(created)), 0) FROM message_changes
"""


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    worker: str | None  # the lease holder, None when the shard is free
    epoch: int | None
    held_for: float | None  # seconds since the epoch was taken (epochs are Redis's clock in ms)
    renewed_ago: float | None  # seconds since the lease was last renewed (its TTL minus what is left)
    ttl_left: float | None
    pending: int  # assignments with a recalculation range not yet claimed
    timers: int  # debounce timers armed (pending, offered or running)
    oldest_due: float | None  # unix time the most overdue pending range was due
    lag: float  # how far Redis's clock is past ``oldest_due`` (0 when none is due)


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    heartbeat_left: float | None  # None: not live (its leases, if any, are running out)
    queue: int  # messages waiting in its Celery queue
    shards: list[int]  # the shards whose lease it holds
    report: dict = field(default_factory=dict)  # what it reported at its last balance (``ShardWorker.report``)

    @property
    def filling(self) -> str:
        """Its shards whose cache is being filled, as "shard: devices/total"."""
        fills = self.report.get("filling") or {}
        return ", ".join(f"{shard}: {done}/{total}" for shard, (done, total, _messages) in sorted(
            fills.items(), key=lambda item: int(item[0])))


@dataclass(frozen=True)
class DatacenterStatus:
    code: str
    alias: str
    problem: str | None = None  # why the database could not be read
    states: dict[str, int] = field(default_factory=dict)  # assignments by state
    outbox_rows: int = 0
    outbox_events: int = 0
    outbox_oldest: float = 0.0  # age in seconds of the oldest unpublished row
    changes: int = 0  # change-log rows not yet drained
    changes_oldest: float = 0.0  # age in seconds of the oldest


@dataclass(frozen=True)
class RegionStatus:
    code: str
    datacenters: list[DatacenterStatus]
    problem: str | None = None  # why the region's Redis could not be read
    now: float | None = None  # Redis's clock
    lease_ttl: float = 0.0
    workers: dict[str, float] = field(default_factory=dict)  # live worker -> heartbeat seconds left
    queues: dict[str, int] = field(default_factory=dict)  # worker (live or holding) -> messages queued
    reports: dict[str, dict] = field(default_factory=dict)  # worker -> its last report
    shards: list[ShardStatus] = field(default_factory=list)
    unacked: int = 0  # messages delivered to a worker and not yet acknowledged (all workers)

    @property
    def queued(self) -> int:
        return sum(self.queues.values())

    @property
    def worker_rows(self) -> list[WorkerStatus]:
        """Every live worker, and every worker still named by a lease."""
        names = sorted(set(self.workers) | set(self.queues))
        return [
            WorkerStatus(name, self.workers.get(name), self.queues.get(name, 0),
                         [shard.shard for shard in self.shards if shard.worker == name], self.reports.get(name, {}))
            for name in names
        ]

    @property
    def max_lag(self) -> float:
        return max((shard.lag for shard in self.shards), default=0.0)


@functools.cache
def status_client(region: str) -> redis.Redis:
    """A client of the region's Redis that gives up at once: a page about an outage must not
    hang on it (the shared client retries for seconds)."""
    return redis.Redis.from_url(
        settings.TOPOLOGY.region(region).redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def datacenter_status(*, code: str, alias: str) -> DatacenterStatus:
    """Assignments by state and the outbox backlog of one datacenter database."""
    try:
        counts = dict(Assignment.objects.using(alias).order_by().values_list("state").annotate(n=Count("id")))
        with connections[alias].cursor() as cursor:
            cursor.execute(_OUTBOX)
            rows, events, oldest = cursor.fetchone()
            cursor.execute(_CHANGES)
            changes, changes_oldest = cursor.fetchone()
    except DatabaseError as exc:
        return DatacenterStatus(code, alias, problem=str(exc).strip() or type(exc).__name__)
    return DatacenterStatus(
        code,
        alias,
        states={state: counts.get(state, 0) for state in AssignmentState.values},
        outbox_rows=int(rows),
        outbox_events=int(events),
        outbox_oldest=float(oldest),
        changes=int(changes),
        changes_oldest=float(changes_oldest),
    )


def region_status(
    *,
    code: str,
    datacenters: list[DatacenterStatus],
    shards: int | None = None,
    client: redis.Redis | None = None,
) -> RegionStatus:
    """The shards of one region as its Redis (``client``, by default the region's) holds them."""
    shards = settings.CALC_SHARDS if shards is None else shards
    client = status_client(code) if client is None else client
    try:
        read = leases_read(client, region=code, shards=shards)
        names = sorted(set(read.workers) | {lease.worker for lease in read.leases if lease.worker is not None})
        pipe = client.pipeline(transaction=False)
        for name in names:
            for key in queue_keys(code, name):
                pipe.llen(key)
        pipe.hlen(unacked_key(code))
        pipe.hgetall(worker_reports_key(code))
        *lengths, raw_reports = pipe.execute()
        timers = DebounceTimers(client, region=code)
        lags = [timers.lag(shard=shard, now=read.now) for shard in range(shards)]
    except redis.RedisError as exc:
        return RegionStatus(code, datacenters, problem=str(exc) or type(exc).__name__)
    ttl = settings.CALC_LEASE_TTL
    steps = len(PRIORITY_STEPS)
    queues = {name: sum(lengths[i * steps:(i + 1) * steps]) for i, name in enumerate(names)}
    rows = []
    for lease, lag in zip(read.leases, lags, strict=True):
        held = None
        if lease.epoch is not None and lease.epoch > 10**12:  # an epoch taken from Redis's clock
            held = max(0.0, read.now - lease.epoch / 1000)
        rows.append(
            ShardStatus(
                shard=lease.shard,
                worker=lease.worker,
                epoch=lease.epoch,
                held_for=held,
                renewed_ago=None if lease.ttl_left is None else max(0.0, ttl - lease.ttl_left),
                ttl_left=lease.ttl_left,
                pending=lag.pending,
                timers=lag.timers,
                oldest_due=lag.oldest_due,
                lag=lag.lag,
            )
        )
    return RegionStatus(
        code,
        datacenters,
        now=read.now,
        lease_ttl=ttl,
        workers={worker: expiry - read.now for worker, expiry in sorted(read.workers.items())},
        queues=queues,
        reports={_text(name): _report(raw) for name, raw in raw_reports.items() if _text(name) in set(names)},
        shards=rows,
        unacked=int(lengths[-1]),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _report(raw: bytes | str) -> dict:
    try:
        report = json.loads(raw)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def fleet_status() -> list[RegionStatus]:
    """Every region this process serves, with its datacenters that have a database here."""
    regions: dict[str, list[DatacenterStatus]] = {}
    for region, dc in served_datacenters():
        found = regions.setdefault(region.code, [])
        if dc.alias in settings.DATABASES:
            found.append(datacenter_status(code=dc.code, alias=dc.alias))
    return [region_status(code=code, datacenters=datacenters) for code, datacenters in regions.items()]


class FleetStateCollector:
    """The fleet's state for ``GET /metrics`` (a prometheus_client collector, registered with
    ``flespi_site.metrics.state_collector_register`` when the app is ready): the same reads as the
    status page (``fleet_status``), read at scrape time. A source that cannot be read is reported
    as ``flespi_metrics_source_up 0`` and skipped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def gauge(name: str, text: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=list(labels))

        up = gauge("flespi_metrics_source_up", "1 when the scrape could read this source, else 0.", "source", "name")
        assignments = gauge("flespi_assignments", "Assignments by state.", "region", "datacenter", "state")
        rows = gauge("flespi_outbox_backlog_rows", "Outbox rows not yet published.", "region", "datacenter")
        events = gauge("flespi_outbox_backlog_events",
                       "Events not yet published (a row of stored messages holds one event per message).",
                       "region", "datacenter")
        oldest = gauge("flespi_outbox_oldest_seconds", "Age of the oldest unpublished outbox row (0 when empty).",
                       "region", "datacenter")
        changes = gauge("flespi_change_log_rows", "Change-log rows the calc workers have not drained yet.",
                        "region", "datacenter")
        changes_oldest = gauge("flespi_change_log_oldest_seconds",
                               "Age of the oldest change-log row not drained yet (0 when empty).", "region", "datacenter")
        lag = gauge("flespi_debounce_lag_seconds",
                    "How long the most overdue debounce timer of the region has been due (0 when none is).", "region")
        pending = gauge("flespi_debounce_pending", "Assignments with a pending recalculation range.", "region")
        shard_pending = gauge("flespi_calc_shard_pending",
                              "Assignments of the shard with a recalculation range waiting (its queue depth).",
                              "region", "shard")
        shard_lag = gauge("flespi_calc_shard_lag_seconds",
                          "How long the shard's most overdue recalculation has been due (0 when none is).",
                          "region", "shard")
        shard_held = gauge("flespi_calc_shard_held", "1 while a calc worker holds the shard's lease, else 0.",
                           "region", "shard")
        queue = gauge("flespi_calc_worker_queue", "Messages waiting in a calc worker's queue.", "region", "worker")
        worker_shards = gauge("flespi_calc_worker_shards", "Shards whose lease a calc worker holds.", "region", "worker")
        worker_live = gauge("flespi_calc_worker_live", "1 while the worker's heartbeat is current, else 0.",
                            "region", "worker")
        unacked = gauge("flespi_calc_unacked", "Messages delivered to calc workers and not acknowledged yet.", "region")
        for region in fleet_status():
            for datacenter in region.datacenters:
                if datacenter.problem is not None:
                    logger.warning("metrics: datacenter %s cannot be read (%s)", datacenter.code, datacenter.problem)
                    up.add_metric(["database", datacenter.code], 0)
                    continue
                up.add_metric(["database", datacenter.code], 1)
                labels = [region.code, datacenter.code]
                for state, count in datacenter.states.items():
                    assignments.add_metric([*labels, state], count)
                rows.add_metric(labels, datacenter.outbox_rows)
                events.add_metric(labels, datacenter.outbox_events)
                oldest.add_metric(labels, datacenter.outbox_oldest)
                changes.add_metric(labels, datacenter.changes)
                changes_oldest.add_metric(labels, datacenter.changes_oldest)
            if not region.datacenters:
                continue
            if region.problem is not None:
                logger.warning("metrics: the Redis of region %s cannot be read (%s)", region.code, region.problem)
                up.add_metric(["redis", region.code], 0)
                continue
            up.add_metric(["redis", region.code], 1)
            lag.add_metric([region.code], region.max_lag)
            pending.add_metric([region.code], sum(shard.pending for shard in region.shards))
            unacked.add_metric([region.code], region.unacked)
            for shard in region.shards:
                labels = [region.code, str(shard.shard)]
                shard_pending.add_metric(labels, shard.pending)
                shard_lag.add_metric(labels, shard.lag)
                shard_held.add_metric(labels, 0 if shard.worker is None else 1)
            for worker in region.worker_rows:
                labels = [region.code, worker.name]
                queue.add_metric(labels, worker.queue)
                worker_shards.add_metric(labels, len(worker.shards))
                worker_live.add_metric(labels, 0 if worker.heartbeat_left is None else 1)
        yield from (assignments, rows, events, oldest, changes, changes_oldest, lag, pending, shard_pending, shard_lag,
                    shard_held, queue, worker_shards, worker_live, unacked, up)
