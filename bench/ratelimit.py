"""What the API's rate limits cost a request (docs/api.md, "Rate limits").

    .venv/bin/python bench/ratelimit.py [--requests N]

On the Redis named by ``REDIS_URL`` (db 5 of the machine's by default, never a platform's) and the
PostgreSQL of ``DATABASE_URL`` (``flespi_bench``, created and migrated when missing), in this
process through Django's test client (no HTTP, so that the limiter's share is not hidden by the
network):

  (a) the limiter alone: one charge of a token's budget (one Redis round trip, a script);
  (b) ``GET /gw/devices/{id}`` with the limits off, then on (far from being reached);
  (c) ``POST /gw/devices/{id}/messages`` of 1,000 messages with the limits off, then on.

Printed: microseconds per call (median and p99 of the timed calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPOLOGY = {
    "default_region": "eu",
    "domain": "localhost",
    "regions": [{"code": "eu", "datacenters": [{"code": "eu-1", "number": 1}], "default_datacenter": "eu-1"}],
}


def configure() -> None:
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flespi_bench")
    if "bench" not in os.environ["DATABASE_URL"].rsplit("/", 1)[-1]:
        raise SystemExit("DATABASE_URL must name a database whose name contains 'bench'")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/5")
    os.environ["FLESPI_TOPOLOGY"] = json.dumps(TOPOLOGY)
    os.environ["DJANGO_SETTINGS_MODULE"] = "flespi_site.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")


def timed(call, count: int) -> tuple[float, float]:
    """Median and p99 in µs of ``count`` calls (after 20 untimed ones)."""
    for _ in range(20):
        call()
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed calls per row (default 2000)")
    args = parser.parse_args()
    configure()
    import io

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from rest_framework.test import APIClient

    from accounts.services import account_create, token_create
    from devices.services import device_create, device_delete
    from flespi_site.api import throttling
    from regions.services import topology_sync

    call_command("platform_setup", "--no-superuser", stdout=io.StringIO(), verbosity=0)
    topology_sync()
    account = account_create(name="bench-ratelimit")
    token, key = token_create(account=account)
    device = device_create(account=account, configuration={"ident": f"ratelimit-{time.time_ns()}"})
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"FlespiToken {key}"}
    budget = throttling.Budget("requests", 1e9, 10**9)
    rows = [("(a) the limiter alone (one Redis script)", timed(lambda: throttling._charge(budget, token.pk, 1), args.requests))]
    stamp = [int(time.time()) - 10**6]

    def post():
        stamp[0] += 1000
        body = json.dumps([{"timestamp": stamp[0] + i, "speed": i % 90} for i in range(1000)])
        client.generic("POST", f"/gw/devices/{device.pk}/messages", body, content_type="application/json", **headers)

    try:
        for label, call, count in (
            ("(b) GET /gw/devices/{id}", lambda: client.get(f"/gw/devices/{device.pk}", **headers), args.requests),
            ("(c) POST 1,000 messages", post, max(50, args.requests // 20)),
        ):
            settings.RATE_LIMIT_REQUESTS = settings.RATE_LIMIT_MESSAGES = 0
            rows.append((f"{label}, limits off", timed(call, count)))
            settings.RATE_LIMIT_REQUESTS, settings.RATE_LIMIT_REQUESTS_BURST = 1e9, 10**9
            settings.RATE_LIMIT_MESSAGES, settings.RATE_LIMIT_MESSAGES_BURST = 1e12, 10**12
            rows.append((f"{label}, limits on", timed(call, count)))
    finally:
        device_delete(device=device)
        account.delete()
    print(f"\n{'':<48} {'median µs':>10} {'p99 µs':>10}")
    for label, (median, p99) in rows:
        print(f"{label:<48} {median:>10.0f} {p99:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
