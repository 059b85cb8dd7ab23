"""Selectors in paths (``all``, ids, ``field=value`` with wildcards, ANDed) and ``fields=``."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from accounts.models import Token
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

INFOS = ["abc", "abcd", "aXc", "a.c", "ac", "zabc", "a+c"]


@pytest.fixture
def tokens(root, root_key, make_token):
    """Tokens named by ``INFOS`` (the master token's info is ``""``); ``aXc`` is disabled."""
    for info in INFOS:
        make_token(root, info=info, enabled=info != "aXc")
    return {token.info: token.pk for token in Token.objects.filter(account=root)}


def infos(api, key, selector: str) -> list[str]:
    # "?" must be percent-encoded in a path, or it starts the query string.
    result = result_of(
        api.call("GET", f"/platform/tokens/{quote(selector, safe='=,*')}?fields=info", key=key)
    )
    return sorted(item["info"] for item in result)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("all", sorted(["", *INFOS])),
        ("info=abc", ["abc"]),
        ("info=abc*", ["abc", "abcd"]),
        ("info=a?c", ["a+c", "a.c", "aXc", "abc"]),
        ("info=a*c", ["a+c", "a.c", "aXc", "abc", "ac"]),
        ("info=*bc*", ["abc", "abcd", "zabc"]),
        ("info=a.c", ["a.c"]),
        ("info=a+c", ["a+c"]),
        ("info=", [""]),
        ("info=nothing*", []),
        ("enabled=false", ["aXc"]),
        ("info=a?c,enabled=true", ["a+c", "a.c", "abc"]),
        ("enabled=true,info=a*,info=*d", ["abcd"]),
    ],
)
def test_conditions(api, root_key, tokens, selector, expected):
    assert infos(api, root_key, selector) == expected


def test_ids(api, root_key, tokens):
    assert infos(api, root_key, str(tokens["abc"])) == ["abc"]
    assert infos(api, root_key, f"{tokens['abc']},{tokens['zabc']}") == ["abc", "zabc"]
    assert infos(api, root_key, f"id={tokens['ac']}") == ["ac"]
    assert infos(api, root_key, f"id={tokens['ac']},info=zz") == []
    # Ids the account cannot see are left out; when none is left, the selection is a 404.
    assert infos(api, root_key, f"{tokens['abc']},{2**40}") == ["abc"]
    errors = errors_of(api.call("GET", f"/platform/tokens/{2**40}", key=root_key), 404)
    assert errors == [{"code": 404, "reason": f"no token with id {2**40}"}]


def test_a_condition_matching_nothing_is_an_empty_result_for_get_and_404_for_writes(api, root_key, tokens):
    assert result_of(api.call("GET", "/platform/tokens/info=nothing*", key=root_key)) == []
    for method, body in (("PUT", {"info": "x"}), ("DELETE", None)):
        errors = errors_of(api.call(method, "/platform/tokens/info=nothing*", key=root_key, body=body), 404)
        assert errors[0]["reason"] == "no token matches 'info=nothing*'"


def test_put_and_delete_act_on_every_selected_item(api, root, root_key, tokens):
    updated = result_of(api.call("PUT", "/platform/tokens/info=abc*", key=root_key, body={"enabled": False}))
    assert sorted((item["info"], item["enabled"]) for item in updated) == [("abc", False), ("abcd", False)]
    assert sorted(Token.objects.filter(enabled=False).values_list("info", flat=True)) == [
        "aXc",
        "abc",
        "abcd",
    ]
    deleted = result_of(api.call("DELETE", "/platform/tokens/enabled=false", key=root_key))
    assert sorted(item["id"] for item in deleted) == sorted([tokens["aXc"], tokens["abc"], tokens["abcd"]])
    assert sorted(Token.objects.values_list("info", flat=True)) == ["", "a+c", "a.c", "ac", "zabc"]


@pytest.mark.parametrize(
    "query",
    [
        "fields=id,info",
        "fields=%20id%20,info",
        "data=%7B%22fields%22%3A%22id%2Cinfo%22%7D",
        "data=%7B%22fields%22%3A%5B%22id%22%2C%22info%22%5D%7D",
    ],
    ids=["plain", "spaces", "data-string", "data-array"],
)
def test_fields_projects(api, root_key, tokens, query):
    result = result_of(api.call("GET", f"/platform/tokens/{tokens['abc']}?{query}", key=root_key))
    assert result == [{"id": tokens["abc"], "info": "abc"}]


def test_fields_on_create_and_update(api, root_key, tokens):
    created = result_of(
        api.call("POST", "/platform/tokens?fields=info,key", key=root_key, body=[{"info": "new"}])
    )
    assert list(created[0]) == ["info", "key"] and created[0]["info"] == "new"
    updated = result_of(
        api.call("PUT", f"/platform/tokens/{tokens['ac']}?fields=id", key=root_key, body={"ttl": 5})
    )
    assert updated == [{"id": tokens["ac"]}]


@pytest.fixture
def subaccounts(root, make_account):
    from accounts.services import account_update

    made = {}
    for name, region, datacenter, group in (
        ("truck 1", None, None, "north"),
        ("truck 2", "ru", None, "south"),
        ("van", None, "eu-2", "north"),
    ):
        account = make_account(name, parent=root, region=region, datacenter=datacenter)
        made[name] = account_update(
            account=account, data={"metadata": {"group": group, "deep": {"level": name}}}
        )
    made["trailer"] = make_account("trailer", parent=made["truck 2"])
    return made


def names(api, key, selector: str) -> list[str]:
    result = result_of(
        api.call("GET", f"/platform/subaccounts/{quote(selector, safe='=,*')}?fields=name", key=key)
    )
    return sorted(item["name"] for item in result)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("all", ["trailer", "truck 1", "truck 2", "van"]),
        ("name=truck*", ["truck 1", "truck 2"]),
        ("name=truck ?", ["truck 1", "truck 2"]),
        ("region=ru", ["trailer", "truck 2"]),
        ("datacenter=eu-2", ["van"]),
        ("metadata.group=north", ["truck 1", "van"]),
        ("metadata.group=n*,name=v*", ["van"]),
        ("metadata.deep.level=truck*", ["truck 1", "truck 2"]),
        ("metadata.missing=*", []),
        ("metadata.a..b=1", []),
        ("metadata.contains=1", []),
        ("metadata.a'b=1", []),
    ],
)
def test_subaccount_conditions(api, root_key, subaccounts, selector, expected):
    assert names(api, root_key, selector) == expected


def test_subaccount_parent_condition(api, root, root_key, subaccounts):
    assert names(api, root_key, f"parent_id={subaccounts['truck 2'].pk}") == ["trailer"]
    assert names(api, root_key, f"parent_id={root.pk},region=ru") == ["truck 2"]


def test_subaccount_fields(api, root_key, subaccounts):
    van = subaccounts["van"]
    result = result_of(
        api.call("GET", f"/platform/subaccounts/{van.pk}?fields=id,region,datacenter,metadata", key=root_key)
    )
    assert result == [
        {
            "id": van.pk,
            "region": "eu",
            "datacenter": "eu-2",
            "metadata": {"group": "north", "deep": {"level": "van"}},
        }
    ]


def test_list_queries_are_pinned(api, root_key, subaccounts, tokens, django_assert_max_num_queries):
    # Authentication (and its use stamp), then one query for the page: no query per row.
    with django_assert_max_num_queries(3):
        assert len(result_of(api.call("GET", "/platform/subaccounts/all", key=root_key))) == 4
    with django_assert_max_num_queries(3):
        assert len(result_of(api.call("GET", "/platform/tokens/all", key=root_key))) == 8


@pytest.mark.parametrize(
    "selector",
    [
        "metadata.group__regex=north",
        "metadata.group__isnull=true",
        "metadata.deep__level=truck*",
        "metadata.group__gt=a",
    ],
)
def test_json_keys_are_keys_not_lookups(api, root_key, subaccounts, selector):
    # "__" used to be read as a Django lookup: group__isnull was an operator, and a 500.
    assert names(api, root_key, selector) == []


def test_a_json_key_with_double_underscores_is_selected_like_any_key(api, root, root_key, make_account):
    from accounts.services import account_update

    account_update(
        account=make_account("odd", parent=root), data={"metadata": {"a__gt": "v", "b": {"c__d": 1}}}
    )
    assert names(api, root_key, "metadata.a__gt=v") == ["odd"]
    assert names(api, root_key, "metadata.b.c__d=1") == ["odd"]


def test_json_keys_may_be_16_deep_and_no_deeper(api, root_key, subaccounts):
    assert names(api, root_key, "metadata." + ".".join(["a"] * 16) + "=x") == []
    name = "metadata." + ".".join(["a"] * 500)
    response = api.call("GET", f"/platform/subaccounts/{name}=x", key=root_key)
    assert errors_of(response, 400)[0]["reason"] == f"selector {name[:64]}...: at most 16 keys deep"
