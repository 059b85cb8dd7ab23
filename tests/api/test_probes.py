"""Inputs found by fuzzing and probing the running API: each is a 4xx that names what is wrong,
never a 500."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

LATEST = (2**63 - 1) // 1_000_000


@pytest.fixture
def device_id(root):
    from devices.services import device_create

    return device_create(account=root, configuration={"ident": "probe-1"}).pk


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "query",
    [
        "begin=1e308",
        "end=1e308",
        "begin=1e308&end=1e308",
        "data=" + quote(json.dumps({"end": 1e300})),
        f"begin={LATEST + 1}",
    ],
)
def test_message_times_beyond_what_is_stored_are_refused(api, root_key, device_id, method, query):
    errors = errors_of(api.call(method, f"/gw/devices/{device_id}/messages?{query}", key=root_key), 400)
    assert [error["reason"].split(":")[0] for error in errors] == [error["field"] for error in errors]
    assert all(
        error["reason"].endswith(f"Ensure this value is less than or equal to {LATEST}.") for error in errors
    )


def test_the_latest_message_time_is_accepted(api, root_key, device_id):
    assert (
        result_of(api.call("GET", f"/gw/devices/{device_id}/messages?begin=0&end={LATEST}", key=root_key))
        == []
    )


@pytest.mark.parametrize("value", ["api", "json", "xml"])
def test_format_is_an_unknown_parameter_not_a_renderer(api, root_key, value):
    errors = errors_of(api.call("GET", f"/platform/tokens/all?format={value}", key=root_key), 400)
    assert [(error["field"], error["reason"].split(";")[0]) for error in errors] == [
        ("format", "format: unknown query parameter")
    ]


@pytest.mark.parametrize("cid", [-1, 2**63, 10**6])
def test_a_device_moved_to_an_unknown_account_names_cid(api, root_key, device_id, cid):
    errors = errors_of(api.call("PUT", f"/gw/devices/{device_id}", key=root_key, body={"cid": cid}), 404)
    assert errors == [
        {
            "code": 404,
            "reason": f"account {cid} not found",
            "field": "cid",
            "id": device_id,
        }
    ]


def test_a_message_with_a_lone_surrogate_is_refused(api, root_key, device_id):
    response = api.call(
        "POST",
        f"/gw/devices/{device_id}/messages",
        key=root_key,
        raw='[{"timestamp": 1700000000, "s": "\\ud800"}, {"timestamp": 1700000001, "s": "caf\\u00e9 \\ud83d\\ude9a"},'
        ' {"timestamp": 1700000002, "n": {"a": ["\\udfff"]}}, {"timestamp": 1700000003, "k\\ud800": 1}]',
    )
    assert response.status_code == 200, response.content
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == ["[0]", "[2]", "[3]"]
    assert "surrogate" in errors[0]["reason"] and errors[0]["reason"].startswith("s:")
    stored = result_of(api.call("GET", f"/gw/devices/{device_id}/messages", key=root_key))
    assert [message["s"] for message in stored] == ["caf\u00e9 \U0001f69a"]


def test_a_malformed_host_header_gets_the_envelope_not_html(api):
    response = api.call("GET", "/auth/regions", host="bad host!")
    assert response["Content-Type"] == "application/json"
    assert "bad host!" in errors_of(response, 400)[0]["reason"]


@pytest.mark.parametrize("query", ["version=%00", "version=" + quote("\r\nX-Injected: 1")])
def test_the_schema_ignores_a_version_parameter(api, query):
    response = api.call("GET", f"/api/schema/?{query}")
    assert response.status_code == 200
    assert "X-Injected" not in response.headers
    assert "version" not in response["Content-Disposition"] and "(" not in response["Content-Disposition"]
