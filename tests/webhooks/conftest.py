"""The webhooks' tests: the tests' settings allow 127.0.0.1 (where their receivers listen) and
nothing else private; the delivery loop runs in a thread of the test, on the test's databases."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings as django_settings
from django.db import connections

from tests.support.receiver import Receiver


@pytest.fixture(autouse=True)
def webhook_allow(settings):
    settings.WEBHOOK_ALLOW = ["127.0.0.1"]
    settings.WEBHOOK_ALLOW_PUBLIC = True


def _clean() -> None:
    for dc in django_settings.TOPOLOGY.datacenters:
        with connections[dc.alias].cursor() as cursor:
            cursor.execute("TRUNCATE webhook_feed, webhook_deliveries, webhook_feeding")


@pytest.fixture
def webhook_tables():
    """The feed and the delivery log emptied after the test (they are no models: a transactional
    test's flush leaves them)."""
    yield
    _clean()


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.kill()


@pytest.fixture
def delivery(webhook_tables):
    """Starts the delivery loop of a datacenter in a thread (fast retries by default)."""
    from webhooks.delivery import WebhookDelivery

    running: list[tuple[WebhookDelivery, threading.Thread]] = []

    def start(alias: str = "dc_eu_1", region: str = "eu", **options) -> WebhookDelivery:
        options = {"retry_first": 0.1, "retry_most": 0.4, "refresh": 0.1, "rescan": 0.1, "senders": 4, **options}
        loop = WebhookDelivery(alias=alias, region=region, **options)
        thread = threading.Thread(target=loop.run, name=loop.name, daemon=True)
        thread.start()
        running.append((loop, thread))
        return loop

    yield start
    for loop, thread in running:
        loop.stop()
        thread.join(timeout=15)
