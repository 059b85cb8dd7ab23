"""``GET /metrics``: the Prometheus text format, for a scraper on an allowed network or with the
bearer token (``METRICS_ALLOW``, ``METRICS_TOKEN``; docs/configuration.md, "Metrics").

A scrape adds up the counters every process of this host wrote (``flespi_site.metrics``) and
reads the state of each served region and datacenter through the state collectors the apps
registered (the calc fleet's: ``analytics.fleet.status``). A source that cannot be reached is
reported as ``flespi_metrics_source_up 0`` and skipped, so that the scrape still answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from flespi_site import metrics
from flespi_site.errors import DomainError, NotAllowed, Unauthorized

logger = logging.getLogger(__name__)

def refusal_of(authorization: str, remote_address: str) -> DomainError | None:
    """Why a request with this ``Authorization`` header from this address may not read the
    metrics, or None when it may (the web's ``/metrics`` and the roles' health servers)."""
    scheme, _, credentials = authorization.partition(" ")
    if settings.METRICS_TOKEN and scheme.lower() == "bearer":
        if hmac.compare_digest(credentials.strip().encode(), settings.METRICS_TOKEN.encode()):
            return None
        return Unauthorized("the bearer token is not METRICS_TOKEN")
    try:
        address = ipaddress.ip_address(remote_address)
    except ValueError:
        address = None
    if address is not None and any(address in network for network in settings.METRICS_ALLOW):
        return None
    how = "send Authorization: Bearer <METRICS_TOKEN>" if settings.METRICS_TOKEN else "set METRICS_TOKEN"
    return NotAllowed(f"{address} is not in METRICS_ALLOW; scrape from an allowed network, or {how}")


def _counters() -> CollectorRegistry:
    """The counters of the processes writing into this process's ``METRICS_DIR``: a role's own
    (and its earlier runs'), or every process of a host that shares the directory."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics.DIRECTORY)
    return registry


def process_metrics() -> tuple[bytes, str]:
    """``_counters`` in the text format, and its content type (a role's health server)."""
    return generate_latest(_counters()), CONTENT_TYPE_LATEST


def metrics_view(request: HttpRequest) -> HttpResponse:
    problem = refusal_of(request.headers.get("Authorization", ""), request.META.get("REMOTE_ADDR", ""))
    if problem is not None:
        return JsonResponse({"errors": [problem.as_error()]}, status=problem.status)
    registry = _counters()
    for collector in metrics.state_collectors():
        registry.register(collector)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
