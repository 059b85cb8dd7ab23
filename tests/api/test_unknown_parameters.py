"""Query parameters an endpoint does not take are refused with the parameter named, never
silently ignored (DESIGN 10: unknown fields); the documented ones keep working."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from accounts.models import Account, Token
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

TAKES_FIELDS = "unknown query parameter; this endpoint takes fields (plain, or in data=<JSON object>)"
TAKES_NOTHING = "unknown query parameter; this endpoint takes no query parameters"


def snapshot():
    return (
        list(Account.objects.order_by("pk").values_list("pk", "name", "metadata")),
        list(Token.objects.order_by("pk").values_list("pk", "info", "enabled")),
    )


@pytest.fixture
def device_id(root):
    from devices.services import device_create

    return device_create(account=root, configuration={"ident": "param-1"}).pk


def unknown(name: str, takes: str) -> dict:
    return {"code": 400, "reason": f"{name}: {takes}", "field": name}


@pytest.mark.parametrize(
    ("method", "path", "body", "takes"),
    [
        ("GET", "/platform/tokens/all", None, TAKES_FIELDS),
        ("GET", "/platform/tokens", None, TAKES_FIELDS),
        ("GET", "/platform/subaccounts/all", None, TAKES_FIELDS),
        ("GET", "/platform/customer", None, TAKES_FIELDS),
        ("GET", "/gw/devices/all", None, TAKES_FIELDS),
        ("HEAD", "/gw/devices/all", None, TAKES_FIELDS),
        ("POST", "/platform/tokens", [{"info": "new"}], TAKES_FIELDS),
        ("PUT", "/platform/tokens/all", {"info": "changed"}, TAKES_FIELDS),
        ("PUT", "/platform/customer", {"name": "changed"}, TAKES_NOTHING),
        ("DELETE", "/platform/tokens/all", None, TAKES_NOTHING),
        ("GET", "/auth/info", None, TAKES_NOTHING),
        ("GET", "/auth/regions", None, TAKES_NOTHING),
    ],
)
def test_an_unknown_plain_parameter_is_refused_and_nothing_is_done(api, root_key, method, path, body, takes):
    before = snapshot()
    response = api.call(method, path + "?fileds=id", key=root_key, body=body)
    assert response.status_code == 400
    if method != "HEAD":
        assert errors_of(response, 400) == [unknown("fileds", takes)]
    assert snapshot() == before


def test_an_unknown_key_of_data_is_refused(api, root_key):
    data = quote(json.dumps({"fields": "id", "count": 5}))
    assert errors_of(api.call("GET", f"/platform/tokens/all?data={data}", key=root_key), 400) == [
        unknown("count", TAKES_FIELDS)
    ]


def test_each_unknown_parameter_is_named(api, root_key):
    errors = errors_of(api.call("GET", "/platform/tokens/all?a=1&fields=id&b=2", key=root_key), 400)
    assert [error["field"] for error in errors] == ["a", "b"]


def test_a_parameter_given_twice_is_refused(api, root_key):
    assert errors_of(api.call("GET", "/platform/tokens/all?fields=id&fields=info", key=root_key), 400) == [
        {
            "code": 400,
            "reason": "fields: query parameter given more than once; give it once",
            "field": "fields",
        }
    ]


def test_a_long_unknown_name_is_cut_in_the_answer(api, root_key):
    name = "x" * 5000
    errors = errors_of(api.call("GET", f"/platform/tokens/all?{name}=1", key=root_key), 400)
    assert errors[0]["field"] == "x" * 64 + "..."


def test_messages_refuse_parameters_they_do_not_take(api, root_key, device_id):
    errors = errors_of(api.call("GET", f"/gw/devices/{device_id}/messages?limit=5", key=root_key), 400)
    assert errors == [
        unknown(
            "limit",
            "unknown query parameter; this endpoint takes begin, count, end, fields, filter, format, from, reverse, to "
            "(plain, or in data=<JSON object>)",
        )
    ]
    errors = errors_of(api.call("DELETE", f"/gw/devices/{device_id}/messages?count=1", key=root_key), 400)
    assert errors == [
        unknown(
            "count",
            "unknown query parameter; this endpoint takes begin, end, from, to (plain, or in data=<JSON object>)",
        )
    ]
    errors = errors_of(
        api.call("POST", f"/gw/devices/{device_id}/messages?x=1", key=root_key, body=[{"timestamp": 1}]), 400
    )
    assert errors == [unknown("x", TAKES_NOTHING)]
    errors = errors_of(api.call("GET", f"/gw/devices/{device_id}/telemetry?x=1", key=root_key), 400)
    assert errors == [unknown("x", TAKES_NOTHING)]


def test_documented_parameters_keep_working(api, root, root_key, device_id):
    assert result_of(api.call("GET", "/platform/tokens/all?fields=id,info", key=root_key)) == [
        {"id": Token.objects.get().pk, "info": ""}
    ]
    data = quote(json.dumps({"fields": ["id"]}))
    assert result_of(api.call("GET", f"/platform/customer?data={data}", key=root_key)) == [{"id": root.pk}]
    assert (
        result_of(api.call("GET", f"/gw/devices/{device_id}/messages?count=1&reverse=true", key=root_key))
        == []
    )
    created = result_of(api.call("POST", "/platform/tokens?fields=info", key=root_key, body=[{"info": "n"}]))
    assert created == [{"info": "n"}]
    assert result_of(api.call("GET", "/auth/regions"))


def test_a_method_the_endpoint_lacks_is_still_405(api, root_key):
    assert errors_of(api.call("PATCH", "/platform/tokens/all?x=1", key=root_key, body={}), 405)


def test_the_schema_documents_the_parameters(api, platform):
    schema = api.call("GET", "/api/schema/?format=json").json()

    def names(path, method):
        return [
            parameter["name"]
            for parameter in schema["paths"][path][method].get("parameters", [])
            if parameter["in"] == "query"
        ]

    assert names("/platform/tokens/{selector}", "get") == ["data", "fields"]
    assert names("/platform/tokens/{selector}", "delete") == []
    assert names("/gw/devices/{selector}/messages", "get") == [
        "begin",
        "count",
        "data",
        "end",
        "fields",
        "filter",
        "format",
        "from",
        "reverse",
        "to",
    ]
