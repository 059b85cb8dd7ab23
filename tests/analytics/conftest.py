"""Fixtures of the fleet's Redis tests."""

from __future__ import annotations

import pytest

from tests.analytics.redis_helpers import scratch_region


@pytest.fixture
def region_client():
    """(client, region code): the Redis of REDIS_URL and a region of the test's own."""
    with scratch_region() as pair:
        yield pair


@pytest.fixture
def client(region_client):
    return region_client[0]
