"""Shared fixtures. Tests run on the services named in the environment (DATABASE_URL, REDIS_URL,
MQTT_URL), or on the embedded ones that `make test` starts when none is named."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import settings

ALL_DATABASES = "__all__"

# The suite's property tests draw the same examples on every run, so that a run of `make test`
# (and CI) passes or fails for the code alone. HYPOTHESIS_PROFILE=explore draws new ones each run
# (with ENGINE_EXAMPLES=3000 or so, to hunt for rare cases); what it finds is saved in .hypothesis/
# and replayed by later explore runs.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture
def platform():
    """The configured regions and datacenters mirrored into rows. Modules that use it mark
    themselves with ``pytest.mark.django_db(databases="__all__")``."""
    from regions.services import topology_sync

    topology_sync()


@pytest.fixture
def make_account(platform):
    from accounts.services import account_create

    def make(name="acme", parent=None, region=None, datacenter=None):
        return account_create(name=name, parent=parent, region_code=region, datacenter_code=datacenter)

    return make


@pytest.fixture
def make_token():
    from accounts.choices import AccessType
    from accounts.services import token_create

    def make(account, *, master=True, **fields):
        _token, key = token_create(
            account=account, access_type=AccessType.MASTER if master else AccessType.STANDARD, **fields
        )
        return key

    return make


@pytest.fixture
def api():
    """A client that talks to the central host unless told otherwise."""
    from rest_framework.test import APIClient

    class Client(APIClient):
        def call(self, method, path, *, key=None, body=None, host="localhost", cid=None, raw=None, **extra):
            headers = {"HTTP_HOST": host}
            if key is not None:
                headers["HTTP_AUTHORIZATION"] = f"FlespiToken {key}"
            if cid is not None:
                headers["HTTP_X_FLESPI_CID"] = str(cid)
            headers.update(extra)
            if raw is not None:
                return self.generic(method, path, raw, content_type="application/json", **headers)
            if body is not None:
                return self.generic(method, path, json.dumps(body), content_type="application/json", **headers)
            return self.generic(method, path, **headers)

    return Client()


@pytest.fixture
def root(make_account):
    """A root account (region eu, datacenter eu-1)."""
    return make_account("root")


@pytest.fixture
def root_key(root, make_token):
    """A master token key of ``root``."""
    return make_token(root)


@pytest.fixture
def account(make_account):
    """An account of its own (eu-1), for tests of devices and what they own."""
    return make_account("fleet")


@pytest.fixture
def key(account, make_token):
    """A master token key of ``account``."""
    return make_token(account)


@pytest.fixture
def device(account):
    from devices.services import device_create

    return device_create(account=account, name="truck 1", configuration={"ident": "352625690000001"})


@pytest.fixture
def private_broker():
    """A Mosquitto of the test's own (``tests.support.mqtt.PrivateBroker``, persistent, no queue
    limit: the shared one queues 1,000 messages for a subscriber at most), stopped and deleted
    after the test; skipped where the mosquitto binary is missing."""
    from tests.support.mqtt import PrivateBroker

    if not PrivateBroker.available():
        pytest.skip("needs the mosquitto binary")
    broker = PrivateBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()
