"""Liveness, readiness and metrics of every process, wherever it runs (docs/deployment.md,
"Health and metrics").

- The web answers ``GET /health/live`` (the process serves requests) and ``GET /health/ready``
  (it can reach what a request needs: the control database, the served datacenters' databases
  and the served regions' Redis), both without a token and whatever the Host header
  (``HealthMiddleware``, first of the middleware).
- Every other role (relay, ingest, purge, MQTT sync, pump, calc worker) serves the same two paths
  and ``/metrics`` on ``HEALTH_PORT`` when that is set (``serve``): a small HTTP server in a thread
  of the process. Ready means that each of its loops has started and its last step succeeded (a
  database or broker that is away makes the step fail, so the role is not ready until it is back).
  ``/metrics`` there is the process's own counters (``settings.METRICS_DIR`` is a directory of
  its own when ``HEALTH_PORT`` is set), under the same access rule as the web's.

``flespi probe URL`` asks one of these endpoints (the container image has no curl).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.conf import settings
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

# What a readiness check returns: the problems found, by what was checked ("database dc_eu_1").
Problems = dict[str, str]


def services_problems() -> Problems:
    """What the web cannot reach of what its requests need: the control database, the databases
    of the served regions' datacenters and the served regions' Redis (short timeouts: a probe must
    answer within seconds). Another region's services being down does not make this web unready.
    The answer names what failed; the details (hosts, users) go to the log only."""
    from flespi_site.celery import redis_client

    regions = (
        [settings.SERVED_REGION] if settings.SERVED_REGION else [region.code for region in settings.TOPOLOGY.regions]
    )
    aliases = ["default", *(dc.alias for code in regions for dc in settings.TOPOLOGY.region(code).datacenters)]
    problems: Problems = {}
    for alias in aliases:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError as error:
            problems[f"database {alias}"] = "cannot be reached"
            logger.warning("not ready: database %s: %s", alias, _first_line(error))
            connections[alias].close()
    for region in regions:
        try:
            redis_client(region).ping()
        except Exception as error:  # any failure of the client is "not ready", never a 500
            problems[f"redis {region}"] = "cannot be reached"
            logger.warning("not ready: the Redis of region %s: %s", region, _first_line(error))
    return problems


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _answer(problems: Problems) -> tuple[int, dict]:
    if problems:
        return 503, {"ready": False, "problems": problems}
    return 200, {"ready": True}


class HealthMiddleware:
    """``/health/live`` and ``/health/ready`` of the web, answered before anything else looks at
    the request: a probe comes by an address (a pod's, 127.0.0.1) that ``ALLOWED_HOSTS`` need not
    name, and needs no session, no token and no CSRF."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/health/live":
            return JsonResponse({"live": True})
        if request.path == "/health/ready":
            status, body = _answer(services_problems())
            return JsonResponse(body, status=status)
        return self.get_response(request)


class HealthServer:
    """``/health/live``, ``/health/ready`` and ``/metrics`` of a process on ``port``, in a daemon
    thread. ``problems`` says what keeps the process from being ready (empty: ready)."""

    def __init__(self, *, port: int, role: str, problems: Callable[[], Problems]):
        self.role = role
        self.problems = problems
        self.started = time.time()
        self.server = ThreadingHTTPServer(("0.0.0.0", port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"health-{role}", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> HealthServer:
        self.thread.start()
        logger.info("%s: health and metrics on http://0.0.0.0:%d/health/ready, /metrics", self.role, self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/health/live":
                    self._json(200, {"live": True, "role": health.role, "up_seconds": round(time.time() - health.started)})
                elif path == "/health/ready":
                    try:
                        status, body = _answer(health.problems())
                    except Exception as error:  # a check that fails is an answer, never a dead server
                        status, body = 503, {"ready": False, "problems": {"check": _first_line(error)}}
                    self._json(status, {**body, "role": health.role})
                elif path == "/metrics":
                    self._metrics()
                else:
                    self._json(404, {"errors": [{"code": 404, "reason": f"no {path} here: /health/live, /health/ready, /metrics"}]})

            def _metrics(self) -> None:
                from flespi_site.metrics_view import process_metrics, refusal_of

                problem = refusal_of(self.headers.get("Authorization", ""), self.client_address[0])
                if problem is not None:
                    self._json(problem.status, {"errors": [problem.as_error()]})
                    return
                body, content_type = process_metrics()
                self._send(200, body, content_type)

            def _json(self, status: int, body: dict) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # probes every few seconds: not logged
                pass

        return Handler


def serve(*, role: str, problems: Callable[[], Problems]) -> HealthServer | None:
    """Start the health server of this process when ``HEALTH_PORT`` is set; None otherwise. A
    port that cannot be taken stops the process with one line saying so (status 2), before its
    work starts."""
    if settings.HEALTH_PORT is None:
        return None
    try:
        server = HealthServer(port=settings.HEALTH_PORT, role=role, problems=problems)
    except OSError as error:
        print(f"{role}: HEALTH_PORT={settings.HEALTH_PORT} cannot be listened on ({error.strerror or error}): "
              "give this process a port of its own", file=sys.stderr)
        raise SystemExit(2) from None
    return server.start()
