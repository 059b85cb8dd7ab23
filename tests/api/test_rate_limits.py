"""Rate limits per token: requests and ingested messages are separate budgets, an over-limit
request is a 429 with Retry-After in the envelope, an over-limit batch stores nothing, and a Redis
that is away lets requests through."""

from __future__ import annotations

import pytest
import redis
from django.db import connections

from devices import selectors
from tests.support.api import errors_of, result_of
from tests.support.concurrency import on_a_barrier
from tests.support.net import free_port

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


@pytest.fixture
def limits(settings):
    settings.RATE_LIMIT_REQUESTS = 1
    settings.RATE_LIMIT_REQUESTS_BURST = 5
    settings.RATE_LIMIT_MESSAGES = 1
    settings.RATE_LIMIT_MESSAGES_BURST = 10
    return settings


def stored(device) -> int:
    return len(selectors.messages_of(devices=[device], begin=None, end=None, count=None, reverse=False))


def messages(count: int, start: int = 1_700_000_000) -> list[dict]:
    return [{"timestamp": start + index, "n": index} for index in range(count)]


def test_reads_over_the_burst_are_refused_with_retry_after(limits, api, key, make_account, make_token):
    answers = [api.call("GET", "/gw/devices/all", key=key) for _ in range(7)]
    assert [answer.status_code for answer in answers] == [200] * 5 + [429] * 2
    error = errors_of(answers[5], 429)[0]
    assert set(error) == {"code", "reason"}
    assert "over its rate of 1 requests per second (bursts of 5)" in error["reason"]
    assert int(answers[5]["Retry-After"]) >= 1
    # Another token has its own budget.
    other = make_token(make_account("other"))
    assert api.call("GET", "/gw/devices/all", key=other).status_code == 200


def test_an_over_limit_batch_stores_nothing_and_reads_go_on(limits, api, key, device):
    path = f"/gw/devices/{device.pk}/messages"
    result_of(api.call("POST", path, key=key, body=messages(8)))
    assert stored(device) == 8
    refused = api.call("POST", path, key=key, body=messages(5, start=1_710_000_000))
    assert "over its rate of 1 messages per second (bursts of 10)" in errors_of(refused, 429)[0]["reason"]
    assert int(refused["Retry-After"]) >= 1
    assert stored(device) == 8  # nothing of the refused batch
    # Ingestion is its own budget: reading is still allowed.
    assert len(result_of(api.call("GET", path, key=key))) == 8
    # A batch larger than the whole burst can never pass (a retry would not help): a 413 saying to split it.
    huge = api.call("POST", path, key=key, body=messages(11, start=1_720_000_000))
    assert "split it into batches of at most 10" in errors_of(huge, 413)[0]["reason"]
    assert "Retry-After" not in huge
    assert stored(device) == 8


def test_racing_batches_share_the_budget_exactly(limits, api, key, device):
    """Twenty requests of one message each, released together: exactly the burst is stored."""
    # One message per 1,000 s: however long the twenty take on a loaded machine, the bucket does not
    # refill while they run (at 1/s, a race spread over more than a second let an eleventh pass).
    limits.RATE_LIMIT_MESSAGES = 0.001
    path = f"/gw/devices/{device.pk}/messages"

    def post(index: int):
        def call():
            try:
                return api.call("POST", path, key=key, body=messages(1, start=1_700_000_000 + index)).status_code
            finally:
                connections.close_all()
        return call

    codes = on_a_barrier([post(index) for index in range(20)])
    assert sorted(codes) == [200] * 10 + [429] * 10
    assert stored(device) == 10


def test_limits_off_and_redis_away_let_requests_through(limits, api, key, device, monkeypatch):
    limits.RATE_LIMIT_REQUESTS = 0
    assert all(api.call("GET", "/gw/devices/all", key=key).status_code == 200 for _ in range(8))
    # The rate limiter's Redis is down (a port nobody listens on): requests pass, nothing is a 500.
    limits.RATE_LIMIT_REQUESTS = 1
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    monkeypatch.setattr("flespi_site.api.throttling._client", lambda region: dead)
    assert all(api.call("GET", "/gw/devices/all", key=key).status_code == 200 for _ in range(8))
    result_of(api.call("POST", f"/gw/devices/{device.pk}/messages", key=key, body=messages(9)))
    result_of(api.call("POST", f"/gw/devices/{device.pk}/messages", key=key, body=messages(9, start=1_710_000_000)))
    assert stored(device) == 18
