"""``GET /metrics``: the Prometheus text format, who may read it, and that it moves with the work
(messages ingested here and in another process, relay publishes, assignments, outbox backlog,
debounce lag)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from prometheus_client.parser import text_string_to_metric_families

from analytics.fleet import status
from analytics.fleet.debounce import Change, DebounceTimers
from analytics.services import assignment_create, calculator_create
from devices.outbox import OutboxRelay
from devices.services import device_create
from flespi_site import metrics
from tests.support.net import free_port
from tests.support.outbox import queued_events
from tests.support.processes import REPO_DIR, platform_env
from tests.support.redis import scratch_region

pytestmark = pytest.mark.django_db(databases="__all__")

EU1 = {"region": "eu", "datacenter": "eu-1"}


def scrape(client, **headers) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, metric, /, **labels) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


@pytest.fixture
def device(root):
    return device_create(account=root, name="bus", configuration={"ident": "metrics-bus"})


def post_messages(api, key, device, count, start=1_700_000_000):
    body = [{"timestamp": start + i, "position.speed": i} for i in range(count)]
    response = api.call("POST", f"/gw/devices/{device.pk}/messages", key=key, body=body)
    assert response.status_code == 200, response.content


def event_publishes(alias: str = "dc_eu_1") -> int:
    """The publishes the outbox holds besides messages (the device's log and telemetry topics)."""
    return len(queued_events(alias))


def event_rows(alias: str = "dc_eu_1") -> int:
    """The outbox's rows other than messages (a telemetry row holds a write's changed values)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox WHERE stamps IS NULL")
        return cursor.fetchone()[0]


def test_ingested_messages_move_the_counters_and_the_latency_histogram(client, api, root_key, device):
    with connections["dc_eu_1"].cursor() as cursor:
        cursor.execute("DELETE FROM outbox")  # the device's created event is not this test's
    before = scrape(client)
    post_messages(api, root_key, device, 25)
    after = scrape(client)
    ingested = "flespi_messages_ingested_total"
    assert value(after, ingested, source="rest", **EU1) - value(before, ingested, source="rest", **EU1) == 25
    count = "flespi_ingest_batch_seconds_count"
    assert value(after, count, source="rest") - value(before, count, source="rest") == 1
    inf = "flespi_ingest_batch_seconds_bucket"
    assert value(after, inf, source="rest", le="+Inf") - value(before, inf, source="rest", le="+Inf") == 1
    assert value(after, "flespi_ingest_batch_seconds_sum", source="rest") > value(
        before, "flespi_ingest_batch_seconds_sum", source="rest"
    )
    # Not relayed yet: one outbox row holding the 25 messages, one holding the device's telemetry
    # values (a topic each), one each for its retained connected and last_active state.
    telemetry = event_publishes()
    values = {"timestamp", "position.speed", "device.id", "device.name", "ident", "rest.timestamp"}
    assert telemetry == len(values) + len({"connected", "last_active"})
    assert event_rows() == 3
    assert value(after, "flespi_outbox_backlog_rows", **EU1) == 1 + 3
    assert value(after, "flespi_outbox_backlog_events", **EU1) == 25 + telemetry
    assert value(after, "flespi_outbox_backlog_events", region="eu", datacenter="eu-2") == 0


def test_counts_of_other_processes_are_added_up(client, platform):
    """The importer, the MQTT consumer and the relays count in processes of their own."""
    before = scrape(client)
    program = textwrap.dedent(
        """
        import django
        django.setup()
        from flespi_site import metrics
        metrics.ingest_done(source="import", stored={"dc_eu_2": 7}, seconds=0.003)
        metrics.recalculation_done(region="ru", seconds=0.2, assignments=3, extended=2)
        """
    )
    subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_DIR,
        env=platform_env(DJANGO_SETTINGS_MODULE="flespi_site.settings"),
        check=True,
        timeout=60,
    )
    after = scrape(client)
    eu2 = {"source": "import", "region": "eu", "datacenter": "eu-2"}
    ingested = "flespi_messages_ingested_total"
    assert value(after, ingested, **eu2) - value(before, ingested, **eu2) == 7
    recalculations = "flespi_recalculations_total"
    assert value(after, recalculations, region="ru") - value(before, recalculations, region="ru") == 3
    extended = "flespi_recalculations_extended_total"
    assert value(after, extended, region="ru") - value(before, extended, region="ru") == 2
    count = "flespi_recalculation_seconds_count"
    assert value(after, count, region="ru") - value(before, count, region="ru") == 1
    bucket = "flespi_recalculation_seconds_bucket"
    assert value(after, bucket, region="ru", le="0.25") - value(before, bucket, region="ru", le="0.25") == 1
    assert value(after, bucket, region="ru", le="0.1") - value(before, bucket, region="ru", le="0.1") == 0


def test_relay_publishes_are_counted(client, api, root_key, device):
    post_messages(api, root_key, device, 12)
    events = event_publishes()  # the device's created event and its telemetry topics
    before = scrape(client)
    relay = OutboxRelay(alias="dc_eu_1", mqtt_url=settings.MQTT_URL, topic_root="metrics-test")
    relay.start()
    try:
        assert relay.wait_connected(10)
        assert relay.relay_once() == 12 + events
    finally:
        relay.close()
    after = scrape(client)
    published = "flespi_relay_published_total"
    assert value(after, published, **EU1) - value(before, published, **EU1) == 12 + events
    assert value(after, "flespi_outbox_backlog_rows", **EU1) == 0


def test_assignments_by_state(client, root, device):
    calculator = calculator_create(
        account=root,
        config={"name": "moving", "selectors": [{"type": "expression", "expression": "position.speed > 5"}]},
    )
    assignment_create(calculator=calculator, device=device)
    samples = scrape(client)
    assert value(samples, "flespi_assignments", state="unsynced", **EU1) == 1
    assert value(samples, "flespi_assignments", state="synced", **EU1) == 0
    assert value(samples, "flespi_assignments", state="unsynced", region="ru", datacenter="ru-1") == 0


def test_debounce_lag_is_how_long_the_oldest_timer_is_overdue(client, platform, monkeypatch):
    with scratch_region() as (redis_client, code):
        # Region eu's fleet state read from the scratch region's keys.
        read = status.region_status
        monkeypatch.setattr(status, "region_status", lambda **kw: dataclasses.replace(
            read(**{**kw, "code": code, "client": redis_client}), code=kw["code"]))
        timers = DebounceTimers(redis_client, region=code)
        assert value(scrape(client), "flespi_debounce_lag_seconds", region="eu") == 0
        timers.schedule(shard=3, changes=[Change(1, 2, 100.0, 200.0, delay=1.0)], now=timers.now() - 100)
        samples = scrape(client)
    assert 98 <= value(samples, "flespi_debounce_lag_seconds", region="eu") < 120
    assert value(samples, "flespi_debounce_pending", region="eu") == 1
    assert value(samples, "flespi_metrics_source_up", source="redis", name="eu") == 1


def test_a_redis_that_is_down_is_reported_and_the_scrape_still_answers(client, platform, settings):
    # Region eu's Redis on a port where nothing listens.
    down = f"redis://127.0.0.1:{free_port()}/0"
    topology = settings.TOPOLOGY
    settings.TOPOLOGY = dataclasses.replace(
        topology,
        regions=tuple(
            dataclasses.replace(r, redis_url=down) if r.code == "eu" else r for r in topology.regions
        ),
    )
    status.status_client.cache_clear()
    started = time.monotonic()
    try:
        samples = scrape(client)
    finally:
        status.status_client.cache_clear()
    assert time.monotonic() - started < 3
    assert value(samples, "flespi_metrics_source_up", source="redis", name="eu") == 0
    assert value(samples, "flespi_metrics_source_up", source="database", name="eu-1") == 1
    assert ("flespi_debounce_lag_seconds", frozenset({("region", "eu")})) not in samples


def test_only_allowed_networks_or_the_token_may_scrape(client, platform, settings):
    settings.METRICS_TOKEN = ""
    outside = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert outside.status_code == 403
    (error,) = outside.json()["errors"]
    assert error["code"] == 403
    assert "192.0.2.7 is not in METRICS_ALLOW" in error["reason"]
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200

    settings.METRICS_TOKEN = "s3cret-scraper"
    assert (
        client.get(
            "/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer s3cret-scraper"
        ).status_code
        == 200
    )
    wrong = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer guess")
    assert wrong.status_code == 401
    assert wrong.json()["errors"][0]["code"] == 401
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403

    # Token only: no network is trusted.
    settings.METRICS_ALLOW = []
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scraper").status_code == 200


def test_the_metrics_files_are_in_the_configured_directory():
    assert metrics.DIRECTORY == settings.METRICS_DIR
    metrics.recalculation_done(region="eu", seconds=0.01)
    assert any(path.name.startswith("counter_") for path in Path(metrics.DIRECTORY).iterdir())
