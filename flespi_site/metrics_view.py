"""``GET /metrics``: the Prometheus text format, for a scraper on an allowed network or with the
bearer token (``METRICS_ALLOW``, ``METRICS_TOKEN``; docs/configuration.md, "Metrics").

A scrape adds up the counters every process of this host wrote (``flespi_site.metrics``) and
reads the state of each served region and datacenter: assignments by state and the outbox backlog
from the datacenter databases, the debounce timers' lag from the region's Redis. A source that
cannot be reached is reported as ``flespi_metrics_source_up 0`` and skipped, so that the scrape
still answers.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Iterator

import redis
from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from analytics.choices import AssignmentState
from analytics.debounce import DebounceTimers
from analytics.models import Assignment
from flespi_site import metrics
from flespi_site.errors import DomainError, NotAllowed, Unauthorized

logger = logging.getLogger(__name__)

_OUTBOX = """
SELECT count(*), coalesce(sum(coalesce(cardinality(stamps), 1)), 0),
       coalesce(extract(epoch FROM now() - min(created)), 0)
FROM outbox
"""


def served_datacenters() -> list:
    served = settings.SERVED_REGION
    return [
        dc
        for dc in settings.TOPOLOGY.datacenters
        if dc.alias in settings.DATABASES and (not served or dc.region == served)
    ]


@functools.cache
def _timers(region: str) -> DebounceTimers:
    # Not the shared client (``flespi_site.celery.redis_client``), whose timeouts and retries
    # would hold a scrape for seconds per region when Redis is down: a scrape must answer within
    # the scraper's timeout, and one that cannot read Redis says so at once.
    client = redis.Redis.from_url(
        settings.TOPOLOGY.region(region).redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    return DebounceTimers(client, region=region)


class StateCollector(Collector):
    """What the platform holds right now, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "flespi_metrics_source_up",
            "1 when the scrape could read this source, else 0.",
            labels=["source", "name"],
        )
        assignments = GaugeMetricFamily(
            "flespi_assignments", "Assignments by state.", labels=["region", "datacenter", "state"]
        )
        rows = GaugeMetricFamily(
            "flespi_outbox_backlog_rows", "Outbox rows not yet published.", labels=["region", "datacenter"]
        )
        events = GaugeMetricFamily(
            "flespi_outbox_backlog_events",
            "Events not yet published (a row of stored messages holds one event per message).",
            labels=["region", "datacenter"],
        )
        oldest = GaugeMetricFamily(
            "flespi_outbox_oldest_seconds",
            "Age of the oldest unpublished outbox row (0 when empty).",
            labels=["region", "datacenter"],
        )
        datacenters = served_datacenters()
        for dc in datacenters:
            labels = [dc.region, dc.code]
            try:
                counts = dict(
                    Assignment.objects.using(dc.alias).order_by().values_list("state").annotate(n=Count("id"))
                )
                with connections[dc.alias].cursor() as cursor:
                    cursor.execute(_OUTBOX)
                    backlog_rows, backlog_events, age = cursor.fetchone()
            except DatabaseError as exc:
                logger.warning("metrics: datacenter %s cannot be read (%s)", dc.code, exc)
                up.add_metric(["database", dc.code], 0)
                continue
            up.add_metric(["database", dc.code], 1)
            for state in AssignmentState.values:
                assignments.add_metric([*labels, state], counts.get(state, 0))
            rows.add_metric(labels, backlog_rows)
            events.add_metric(labels, backlog_events)
            oldest.add_metric(labels, float(age))
        yield from (assignments, rows, events, oldest)
        yield from self._debounce(sorted({dc.region for dc in datacenters}), up)
        yield up

    def _debounce(self, regions: list[str], up: GaugeMetricFamily) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "flespi_debounce_lag_seconds",
            "How long the most overdue debounce timer of the region has been due (0 when none is).",
            labels=["region"],
        )
        pending = GaugeMetricFamily(
            "flespi_debounce_pending", "Assignments with a pending recalculation range.", labels=["region"]
        )
        for region in regions:
            try:
                timers = _timers(region)
                shards = [timers.lag(shard=shard) for shard in range(settings.CALC_SHARDS)]
            except RedisError as exc:
                logger.warning("metrics: the Redis of region %s cannot be read (%s)", region, exc)
                up.add_metric(["redis", region], 0)
                continue
            up.add_metric(["redis", region], 1)
            lag.add_metric([region], max(shard.lag for shard in shards))
            pending.add_metric([region], sum(shard.pending for shard in shards))
        yield from (lag, pending)


def refusal(request: HttpRequest) -> DomainError | None:
    """Why ``request`` may not read the metrics, or None when it may."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if settings.METRICS_TOKEN and scheme.lower() == "bearer":
        if hmac.compare_digest(credentials.strip().encode(), settings.METRICS_TOKEN.encode()):
            return None
        return Unauthorized("the bearer token is not METRICS_TOKEN")
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        address = None
    if address is not None and any(address in network for network in settings.METRICS_ALLOW):
        return None
    how = "send Authorization: Bearer <METRICS_TOKEN>" if settings.METRICS_TOKEN else "set METRICS_TOKEN"
    return NotAllowed(f"{address} is not in METRICS_ALLOW; scrape from an allowed network, or {how}")


def metrics_view(request: HttpRequest) -> HttpResponse:
    problem = refusal(request)
    if problem is not None:
        return JsonResponse({"errors": [problem.as_error()]}, status=problem.status)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics.DIRECTORY)
    registry.register(StateCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
