"""PATCH: flespi's deep merge of JSON fields into the stored ones; the other fields as PUT."""

from __future__ import annotations

import pytest

from accounts.models import Account
from devices.models import Device
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")


def test_patch_merges_a_devices_json_fields(api, key, account):
    [device] = result_of(
        api.call(
            "POST",
            "/gw/devices",
            key=key,
            body=[
                {
                    "name": "t",
                    "configuration": {"ident": "p1", "phone": "1"},
                    "metadata": {"a": {"b": 1, "c": 2}, "d": 3},
                }
            ],
        )
    )
    path = f"/gw/devices/{device['id']}"
    body = {"name": "u", "configuration": {"phone": "2"}, "metadata": {"a": {"b": 5, "c": None}, "e": [1]}}
    [patched] = result_of(api.call("PATCH", path, key=key, body=body))
    assert patched["name"] == "u"
    assert patched["configuration"] == {"ident": "p1", "phone": "2"}
    assert patched["metadata"] == {"a": {"b": 5}, "d": 3, "e": [1]}
    # PUT still replaces.
    [put] = result_of(api.call("PUT", path, key=key, body={"metadata": {"x": 1}}))
    assert put["metadata"] == {"x": 1}


def test_a_patch_breaking_the_ident_changes_nothing(api, key, device):
    before = Device.objects.using("dc_eu_1").get(pk=device.pk).configuration
    errors = errors_of(
        api.call("PATCH", f"/gw/devices/{device.pk}", key=key, body={"configuration": {"ident": None}}), 400
    )
    assert errors[0]["field"] == "configuration.ident" and errors[0]["id"] == device.pk
    assert Device.objects.using("dc_eu_1").get(pk=device.pk).configuration == before
    errors = errors_of(api.call("PATCH", f"/gw/devices/{device.pk}", key=key, body={"metadata": 5}), 400)
    assert errors[0]["field"] == "metadata"


def test_patch_of_subaccounts_customer_and_calcs(api, root, root_key, make_account):
    child = make_account("child", parent=root)
    Account.objects.filter(pk=child.pk).update(metadata={"k": {"a": 1}})
    [item] = result_of(
        api.call(
            "PATCH", f"/platform/subaccounts/{child.pk}", key=root_key, body={"metadata": {"k": {"b": 2}}}
        )
    )
    assert item["metadata"] == {"k": {"a": 1, "b": 2}}
    [customer] = result_of(
        api.call("PATCH", "/platform/customer", key=root_key, body={"metadata": {"x": {"y": 1}}})
    )
    assert customer["metadata"] == {"x": {"y": 1}}
    [customer] = result_of(
        api.call("PATCH", "/platform/customer", key=root_key, body={"metadata": {"x": {"z": 2}}})
    )
    assert customer["metadata"] == {"x": {"y": 1, "z": 2}}
    calc = {"name": "c", "selectors": [{"type": "datetime", "split": "day"}], "metadata": {"a": 1}}
    [created] = result_of(api.call("POST", "/gw/calcs", key=root_key, body=[calc]))
    [patched] = result_of(
        api.call("PATCH", f"/gw/calcs/{created['id']}", key=root_key, body={"metadata": {"b": 2}})
    )
    assert patched["metadata"] == {"a": 1, "b": 2}


def test_tokens_take_no_patch(api, root_key):
    errors_of(api.call("PATCH", "/platform/tokens/all", key=root_key, body={}), 405)
