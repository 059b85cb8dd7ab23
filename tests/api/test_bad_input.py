"""Bad input on every endpoint: a 4xx with an ``errors`` entry that says what and where, nothing
stored, never a 500."""

from __future__ import annotations

import json

import pytest

from accounts.models import Account, Token
from tests.support.api import errors_of, reasons, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

TOKENS = ("POST", "/platform/tokens")
SUBACCOUNTS = ("POST", "/platform/subaccounts")
TOKENS_PUT = ("PUT", "/platform/tokens/all")
SUBACCOUNTS_PUT = ("PUT", "/platform/subaccounts/all")
CUSTOMER_PUT = ("PUT", "/platform/customer")
BODY_ENDPOINTS = [TOKENS, SUBACCOUNTS, TOKENS_PUT, SUBACCOUNTS_PUT, CUSTOMER_PUT]
READ_ENDPOINTS = ["/platform/tokens/all", "/platform/subaccounts/all", "/platform/customer", "/auth/info"]


def endpoint_id(endpoint) -> str:
    return " ".join(endpoint)


@pytest.fixture
def state(root, root_key, make_account):
    """A root with a master token and a subaccount; ``state()`` is everything an API call could
    change (``last_used`` aside: reading is a use)."""
    make_account("child", parent=root)

    def snapshot():
        return (
            list(
                Account.objects.order_by("pk").values_list(
                    "pk", "name", "metadata", "region_id", "datacenter_id", "parent_id"
                )
            ),
            list(
                Token.objects.order_by("pk").values_list(
                    "pk", "info", "enabled", "expire", "ttl", "access_type"
                )
            ),
        )

    return snapshot


def call(api, key, endpoint, item=None, *, raw=None, **extra):
    """Send ``item`` the way the endpoint takes it: in an array for POST, as is for PUT."""
    method, path = endpoint
    if raw is not None:
        return api.call(method, path, key=key, raw=raw, **extra)
    return api.call(method, path, key=key, body=[item] if method == "POST" else item, **extra)


def assert_item_error(response, endpoint, *, field: str, message: str) -> None:
    errors = errors_of(response, 400)
    expected = {"code": 400, "reason": f"{field}: {message}", "field": field}
    if endpoint[0] == "POST":
        expected["field"] = f"[0].{field}"
        assert response.json()["result"] == []
    assert errors == [expected]


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=endpoint_id)
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"info": ', "body is not valid JSON: Expecting value: line 1 column 10 (char 9)"),
        (
            "[{'info': 'x'}]",
            "body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 3 (char 2)",
        ),
        ("", "request body is empty; send JSON"),
        ("   ", "request body is empty; send JSON"),
        ('[{"ttl": NaN}]', "body is not valid JSON: NaN is not a valid JSON number"),
        ('{"ttl": Infinity}', "body is not valid JSON: Infinity is not a valid JSON number"),
        ('{"metadata": {"a": -Infinity}}', "body is not valid JSON: -Infinity is not a valid JSON number"),
        ('{"metadata": {"a": 1e400}}', "body is not valid JSON: 1e400 is not a finite number"),
        ("[" * 100_000 + "]" * 100_000, "body is nested too deeply"),
        (b'{"info": "\xff\xfe"}', "body is not valid JSON"),
    ],
    ids=[
        "truncated",
        "single-quotes",
        "empty",
        "blank",
        "nan",
        "infinity",
        "minus-infinity",
        "overflow",
        "deep",
        "not-utf8",
    ],
)
def test_malformed_json(api, root_key, state, endpoint, raw, reason):
    before = state()
    response = call(api, root_key, endpoint, raw=raw)
    errors = errors_of(response, 400)
    assert len(errors) == 1 and errors[0]["code"] == 400
    assert errors[0]["reason"].startswith(reason), errors
    assert state() == before


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=endpoint_id)
def test_nesting_deeper_than_the_limit(api, root_key, state, endpoint, settings):
    deep: object = 1
    for _ in range(settings.MAX_JSON_DEPTH + 2):
        deep = {"a": deep}
    before = state()
    response = call(api, root_key, endpoint, {"metadata": deep})
    assert reasons(response, 400) == f"body is nested deeper than {settings.MAX_JSON_DEPTH} levels"
    assert state() == before


@pytest.mark.parametrize("endpoint", [TOKENS, SUBACCOUNTS], ids=endpoint_id)
@pytest.mark.parametrize(
    "body", [{"name": "x"}, "x", 5, None, True], ids=["object", "string", "number", "null", "true"]
)
def test_post_needs_an_array(api, root_key, state, endpoint, body):
    before = state()
    response = api.call(endpoint[0], endpoint[1], key=root_key, raw=json.dumps(body))
    name = endpoint[1].rsplit("/", 1)[1][:-1]
    assert errors_of(response, 400) == [
        {"code": 400, "reason": f"the body must be a JSON array of {name}s to create"}
    ]
    assert state() == before


@pytest.mark.parametrize("endpoint", [TOKENS_PUT, SUBACCOUNTS_PUT, CUSTOMER_PUT], ids=endpoint_id)
@pytest.mark.parametrize(
    "body", [[{"name": "x"}], [], "x", 5, None], ids=["array", "empty-array", "string", "number", "null"]
)
def test_put_needs_an_object(api, root_key, state, endpoint, body):
    before = state()
    response = api.call(endpoint[0], endpoint[1], key=root_key, raw=json.dumps(body))
    reason = reasons(response, 400)
    assert reason.startswith(("the body must be a JSON object", "must be a JSON object")), reason
    assert state() == before


@pytest.mark.parametrize("endpoint", [TOKENS, SUBACCOUNTS], ids=endpoint_id)
@pytest.mark.parametrize("item", [[], "x", 5, None], ids=["array", "string", "number", "null"])
def test_post_items_must_be_objects(api, root_key, state, endpoint, item):
    before = state()
    response = api.call(endpoint[0], endpoint[1], key=root_key, body=[item])
    errors = errors_of(response, 400)
    assert [(error["field"], error["code"]) for error in errors] == [("[0]", 400)]
    assert errors[0]["reason"] in ("must be a JSON object", "must be a JSON object, not null")
    assert state() == before


TOKEN_WRONG_TYPES = [
    ({"enabled": "yes"}, "enabled", "must be true or false"),
    ({"enabled": 1}, "enabled", "must be true or false"),
    ({"ttl": "5"}, "ttl", "must be an integer"),
    ({"ttl": 5.5}, "ttl", "must be an integer"),
    ({"ttl": True}, "ttl", "must be an integer"),
    ({"ttl": -1}, "ttl", "Ensure this value is greater than or equal to 0."),
    ({"expire": 2**63}, "expire", f"Ensure this value is less than or equal to {2**62}."),
    ({"expire": None}, "expire", "This field may not be null."),
    ({"info": 5}, "info", "must be a string"),
    ({"info": "x" * 256}, "info", "Ensure this field has no more than 255 characters."),
    ({"info": "a\x00b"}, "info", "Null characters are not allowed."),
    ({"info": "\ud800"}, "info", "Surrogate characters are not allowed: U+D800."),
    ({"access": {"type": "1"}}, "access.type", "must be an integer"),
    ({"access": {"type": 2}}, "access.type", "Ensure this value is less than or equal to 1."),
    ({"access": {"kind": 1}}, "access.kind", "unknown field"),
    ({"access": 1}, "access", "must be a JSON object"),
    ({"access": None}, "access", "must be a JSON object, not null"),
    ({"access": {}}, "access.type", "This field is required."),
    ({"foo": 1}, "foo", "unknown field"),
    ({"key": "abc"}, "key", "unknown field"),
]


@pytest.mark.parametrize("endpoint", [TOKENS, TOKENS_PUT], ids=endpoint_id)
@pytest.mark.parametrize(
    ("item", "field", "message"),
    TOKEN_WRONG_TYPES,
    ids=[case[1] + ":" + repr(case[0])[:20] for case in TOKEN_WRONG_TYPES],
)
def test_token_fields_are_checked(api, root_key, state, endpoint, item, field, message):
    before = state()
    assert_item_error(call(api, root_key, endpoint, item), endpoint, field=field, message=message)
    assert state() == before


ACCOUNT_WRONG_TYPES = [
    ({"name": 5}, "name", "must be a string"),
    ({"name": ""}, "name", "This field may not be blank."),
    ({"name": "x" * 256}, "name", "Ensure this field has no more than 255 characters."),
    ({"name": "a\x00b"}, "name", "Null characters are not allowed."),
    ({"metadata": [1]}, "metadata", "must be a JSON object"),
    ({"metadata": "x"}, "metadata", "must be a JSON object"),
    ({"metadata": {"a": "\x00"}}, "metadata", "must not contain NUL characters (\\u0000)"),
    ({"metadata": {"\x00": 1}}, "metadata", "must not contain NUL characters (\\u0000)"),
    ({"metadata": {"a": ["ok", "\ud800"]}}, "metadata", "must not contain surrogate characters (U+D800)"),
    ({"metadata": {"\udfff": 1}}, "metadata", "must not contain surrogate characters (U+DFFF)"),
    ({"name": "\ud800"}, "name", "Surrogate characters are not allowed: U+D800."),
    ({"region": 1}, "region", "must be a string"),
    ({"parent_id": "5"}, "parent_id", "must be an integer"),
    ({"foo": 1}, "foo", "unknown field"),
    ({"id": 1}, "id", "unknown field"),
]


@pytest.mark.parametrize("endpoint", [SUBACCOUNTS, SUBACCOUNTS_PUT, CUSTOMER_PUT], ids=endpoint_id)
@pytest.mark.parametrize(
    ("item", "field", "message"),
    ACCOUNT_WRONG_TYPES,
    ids=[case[1] + ":" + repr(case[0])[:20] for case in ACCOUNT_WRONG_TYPES],
)
def test_account_fields_are_checked(api, root_key, state, endpoint, item, field, message):
    if endpoint[0] == "POST":
        item = {"name": "new", **item}
    before = state()
    assert_item_error(call(api, root_key, endpoint, item), endpoint, field=field, message=message)
    assert state() == before


def test_subaccount_name_is_required(api, root_key, state):
    before = state()
    assert_item_error(
        call(api, root_key, SUBACCOUNTS, {}), SUBACCOUNTS, field="name", message="This field is required."
    )
    assert state() == before


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=endpoint_id)
def test_oversized_body_is_413(api, root_key, state, endpoint, settings):
    settings.MAX_BODY_BYTES = 1000
    item = (
        {"metadata": {"blob": "x" * 2000}}
        if endpoint in (SUBACCOUNTS, SUBACCOUNTS_PUT, CUSTOMER_PUT)
        else {"info": "x" * 2000}
    )
    before = state()
    response = call(api, root_key, endpoint, item)
    assert errors_of(response, 413) == [
        {"code": 413, "reason": "request body is larger than 1000 bytes"}
    ]
    assert state() == before


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=endpoint_id)
def test_a_body_without_content_type_is_415(api, root_key, state, endpoint):
    before = state()
    body = json.dumps([{"name": "x"}] if endpoint[0] == "POST" else {"name": "x"})
    response = api.generic(
        endpoint[0],
        endpoint[1],
        body,
        content_type="",
        HTTP_HOST="localhost",
        HTTP_AUTHORIZATION=f"FlespiToken {root_key}",
    )
    assert reasons(response, 415) == "the body has no Content-Type; send it as application/json"
    assert state() == before


@pytest.mark.parametrize("endpoint", [TOKENS, SUBACCOUNTS], ids=endpoint_id)
def test_too_many_items(api, root_key, state, endpoint):
    before = state()
    response = api.call(endpoint[0], endpoint[1], key=root_key, body=[{"name": "x"}] * 1001)
    assert "at most 1000" in reasons(response, 400)
    assert state() == before


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=endpoint_id)
def test_other_content_types_are_415(api, root_key, state, endpoint):
    before = state()
    response = api.generic(
        endpoint[0],
        endpoint[1],
        "info=x",
        content_type="application/x-www-form-urlencoded",
        HTTP_HOST="localhost",
        HTTP_AUTHORIZATION=f"FlespiToken {root_key}",
    )
    reason = reasons(response, 415)
    assert 'Unsupported media type "application/x-www-form-urlencoded"' in reason
    assert reason.endswith("send the body as JSON with Content-Type: application/json (curl: --json)")
    assert state() == before


@pytest.mark.parametrize(
    "selector",
    [
        "abc",
        "1,,2",
        ",",
        "1,",
        "nosuchfield=1",
        "id=abc",
        "id=1*",
        "enabled=yes",
        "all,x",
        "=1",
        "{info==}",
        "{nosuch==1}",
        "{info==%22x%22",
        "{(info==%22x%22}",
        "{info==%22x%22 && }",
        "{enabled==%22yes%22}",
        "{id==%22x%22}",
        "{}",
        "info",
        "99999999999999999999",
        "info=%00",
        "info=a%00*",
        "%00",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_bad_token_selectors(api, root_key, state, method, selector):
    before = state()
    response = api.call(
        method, f"/platform/tokens/{selector}", key=root_key, body={"info": "x"} if method == "PUT" else None
    )
    errors = errors_of(response, 400)
    assert len(errors) == 1
    assert (errors[0]["code"], errors[0]["field"]) == (400, "selector")
    assert errors[0]["reason"].startswith(("selector", "cannot select on", "a selector")), errors
    assert state() == before


def test_wildcard_values_are_bounded(api, root_key, state):
    # PostgreSQL refuses a regular expression that is too complex: that must not be a 500.
    for value in ("*" * 20_000, "a*" * 200):
        response = api.call("GET", f"/platform/tokens/info={value}", key=root_key)
        assert (
            reasons(response, 400)
            == "selector info=...: a value with wildcards may have at most 256 characters"
        )
    response = api.call("GET", "/platform/subaccounts/metadata.group=" + "a%3F" * 200, key=root_key)
    assert reasons(response, 400) == (
        "selector metadata.group=...: a value with wildcards may have at most 256 characters"
    )
    assert result_of(api.call("GET", "/platform/tokens/info=" + "%3F*" * 128, key=root_key)) == []


def test_bad_selector_reasons(api, root_key, state):
    def reason(selector):
        return reasons(api.call("GET", f"/platform/tokens/{selector}", key=root_key), 400)

    assert reason("abc") == (
        "selector item 'abc' is neither an id nor a field=value condition; "
        "use 'all', ids like '1,2', conditions like 'name=truck*' or an expression like {name==\"truck\"}"
    )
    assert reason("1,,2") == "selector '1,,2' has an empty item"
    assert reason("nosuchfield=1") == "cannot select on 'nosuchfield'; selectable fields: cid, enabled, id, info"
    assert reason("id=abc") == "selector id='abc': id must be an integer"
    assert reason("enabled=yes") == "selector enabled='yes': enabled must be true or false"
    assert reason("metadata.a=1") == "cannot select on 'metadata.a'; selectable fields: cid, enabled, id, info"
    assert reasons(api.call("GET", "/platform/subaccounts/metadata=1", key=root_key), 400) == (
        "selector 'metadata': select on a key inside it, like metadata.key=value"
    )
    assert reason(",".join(["1"] * 1001)) == "a selector may list at most 1000 ids"
    for selector in ("name=a%00b", "metadata.a%00=1"):
        response = api.call("GET", f"/platform/subaccounts/{selector}", key=root_key)
        assert reasons(response, 400) == "a selector must not contain NUL characters (%00)"


@pytest.mark.parametrize("path", ["/platform/tokens/all", "/platform/customer", "/platform/subaccounts/all"])
@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("fields=nope", "unknown field(s) nope in fields; known: "),
        ("fields=id,nope,also", "unknown field(s) nope, also in fields; known: "),
        ("fields=", "fields must name at least one field"),
        ("fields=,", "fields must name at least one field"),
        ("data=%7Bbad", "query parameter data is not valid JSON"),
        ("data=", "query parameter data is not valid JSON"),
        ("data=%5B1%5D", "query parameter data must be a JSON object"),
        ("data=NaN", "query parameter data is not valid JSON: NaN is not a valid JSON number"),
        ("data=%7B%22fields%22%3A5%7D", "fields must be names separated by commas, or a JSON array of names"),
        ("data=%7B%22fields%22%3A%5B%5D%7D", "fields must name at least one field"),
        (
            "data=%7B%22fields%22%3A%7B%7D%7D",
            "fields must be names separated by commas, or a JSON array of names",
        ),
        (
            "data=%7B%22fields%22%3A%5B1%5D%7D",
            "fields must be names separated by commas, or a JSON array of names",
        ),
    ],
)
def test_bad_query_parameters(api, root_key, state, path, query, reason):
    response = api.call("GET", f"{path}?{query}", key=root_key)
    assert reasons(response, 400).startswith(reason)


@pytest.mark.parametrize("endpoint", [TOKENS, SUBACCOUNTS, TOKENS_PUT, SUBACCOUNTS_PUT], ids=endpoint_id)
def test_bad_fields_on_writes_change_nothing(api, root_key, state, endpoint):
    before = state()
    method, path = endpoint
    item = {"name": "new"} if "subaccounts" in path else {"info": "new"}
    response = api.call(
        method, f"{path}?fields=nope", key=root_key, body=[item] if method == "POST" else item
    )
    assert reasons(response, 400).startswith("unknown field(s) nope in fields")
    assert state() == before


def test_wrong_verbs_and_paths(api, root_key, state):
    before = state()
    assert reasons(api.call("POST", "/platform/tokens/1", key=root_key, body=[{}]), 400) == (
        "POST creates tokens: send it to the collection, without a selector"
    )
    assert "add a selector" in reasons(
        api.call("PUT", "/platform/tokens", key=root_key, body={"info": "x"}), 400
    )
    assert "add a selector" in reasons(api.call("DELETE", "/platform/subaccounts", key=root_key), 400)
    assert (
        reasons(api.call("PATCH", "/platform/tokens/all", key=root_key, body={}), 405)
        == 'Method "PATCH" not allowed.'
    )
    assert (
        reasons(api.call("DELETE", "/platform/customer", key=root_key), 405) == 'Method "DELETE" not allowed.'
    )
    assert reasons(api.call("POST", "/auth/regions", body=[]), 405) == 'Method "POST" not allowed.'
    assert (
        reasons(api.call("GET", "/platform/nothing", key=root_key), 404) == "no endpoint at /platform/nothing"
    )
    assert state() == before


def test_partial_batch_creates_the_valid_items(api, root, root_key, state):
    response = api.call(
        "POST",
        "/platform/tokens",
        key=root_key,
        body=[{"info": "good"}, {"info": "bad", "enabled": "yes"}, {"info": "good 2"}],
    )
    assert response.status_code == 200
    body = response.json()
    assert [item["info"] for item in body["result"]] == ["good", "good 2"]
    assert body["errors"] == [
        {
            "code": 400,
            "reason": "enabled: must be true or false",
            "field": "[1].enabled",
        }
    ]
    assert sorted(Token.objects.filter(account=root).values_list("info", flat=True)) == ["", "good", "good 2"]


def test_partial_batch_of_subaccounts(api, root, root_key, state):
    response = api.call(
        "POST", "/platform/subaccounts", key=root_key, body=[{"name": "ok"}, {"name": "far", "region": "us"}]
    )
    assert response.status_code == 200
    body = response.json()
    assert [item["name"] for item in body["result"]] == ["ok"]
    assert [(e["field"], e["reason"]) for e in body["errors"]] == [
        ("[1].region", "unknown region 'us'; regions: eu, ru")
    ]
    assert not Account.objects.filter(name="far").exists()


def test_an_unknown_parent_is_404_for_its_item(api, root, root_key, state, make_account):
    stranger = make_account("stranger")
    before = state()
    response = api.call(
        "POST", "/platform/subaccounts", key=root_key, body=[{"name": "x", "parent_id": stranger.pk}]
    )
    assert errors_of(response, 404) == [
        {
            "code": 404,
            "reason": f"parent account {stranger.pk} not found",
            "field": "[0].parent_id",
        }
    ]
    assert state() == before


@pytest.mark.parametrize("path", READ_ENDPOINTS)
def test_options_and_head_never_fail(api, root_key, state, path):
    assert api.call("HEAD", path, key=root_key).status_code == 200
    assert api.call("OPTIONS", path, key=root_key).status_code == 200
