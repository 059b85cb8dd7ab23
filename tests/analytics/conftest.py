"""Fixtures of the analytics tests: an account with a device, a calculator and an assignment, and
the fleet's Redis."""

from __future__ import annotations

import pytest

from tests.analytics.redis_helpers import scratch_region

TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5", "max_inactive": 60}],
    "counters": [
        {"name": "max_speed", "type": "expression", "expression": "position.speed", "method": "maximum"},
        {"name": "km", "type": "expression", "expression": "mileage()", "method": "summary"},
    ],
}


@pytest.fixture
def account(make_account):
    return make_account("fleet")


@pytest.fixture
def key(account, make_token):
    return make_token(account)


@pytest.fixture
def device(account):
    from devices.services import device_create

    return device_create(account=account, name="truck 1", configuration={"ident": "352625690000001"})


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
