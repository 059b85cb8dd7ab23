"""``created`` is unix seconds on every entity, in the model and on the wire."""

from __future__ import annotations

import time

import pytest

from accounts.models import Account
from tests.support.api import result_of

pytestmark = pytest.mark.django_db(databases="__all__")


def test_created_is_unix_seconds_for_accounts_tokens_and_devices(api, root, root_key):
    before = time.time()
    account = result_of(api.call("POST", "/platform/subaccounts?fields=id,created", key=root_key, body=[{"name": "a"}]))
    token = result_of(api.call("POST", "/platform/tokens?fields=created", key=root_key, body=[{"info": "t"}]))
    device = result_of(
        api.call("POST", "/gw/devices?fields=created", key=root_key, body=[{"configuration": {"ident": "created-1"}}])
    )
    after = time.time()
    for created in (account[0]["created"], token[0]["created"], device[0]["created"]):
        assert isinstance(created, float) and before <= created <= after
    assert Account.objects.get(pk=account[0]["id"]).created == account[0]["created"]
