"""Fixtures of the analytics tests: a calculator and an assignment of the shared account's device
(tests/conftest.py), and the fleet's Redis."""

from __future__ import annotations

import pytest

from tests.support.calculators import TRIPS
from tests.support.redis import scratch_region


@pytest.fixture
def calculator(account):
    from analytics.services import calculator_create

    return calculator_create(account=account, config=TRIPS)


@pytest.fixture
def assignment(calculator, device):
    from analytics.services import assignment_create

    return assignment_create(calculator=calculator, device=device)[0]


@pytest.fixture
def region_client():
    """(client, region code): the Redis of REDIS_URL and a region of the test's own."""
    with scratch_region() as pair:
        yield pair


@pytest.fixture
def client(region_client):
    return region_client[0]
