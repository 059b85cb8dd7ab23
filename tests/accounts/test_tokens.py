"""Token lifecycle, hashing, expiry, ttl and access types."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from accounts.models import Token
from accounts.services import token_authenticate, token_create
from flespi_site.errors import Unauthorized
from tests.support.api import errors_of, reasons, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

TOKEN_FIELDS = {
    "id",
    "info",
    "enabled",
    "expire",
    "ttl",
    "access",
    "key_prefix",
    "created",
    "last_used",
    "cid",
}


def token_rows() -> list[tuple]:
    return list(
        Token.objects.order_by("pk").values_list("pk", "info", "enabled", "expire", "ttl", "access_type")
    )


def test_create_shows_the_key_once(api, root, root_key):
    created = result_of(
        api.call(
            "POST",
            "/platform/tokens",
            key=root_key,
            body=[{"info": "ci", "ttl": 3600, "expire": 4_000_000_000, "access": {"type": 1}}, {}],
        )
    )
    assert [set(item) for item in created] == [TOKEN_FIELDS | {"key"}] * 2
    first, second = created
    assert (
        first["info"],
        first["enabled"],
        first["ttl"],
        first["expire"],
        first["access"],
        first["cid"],
    ) == (
        "ci",
        True,
        3600,
        4_000_000_000,
        {"type": 1},
        root.pk,
    )
    assert (second["info"], second["enabled"], second["ttl"], second["expire"], second["access"]) == (
        "",
        True,
        0,
        0,
        {"type": 0},
    )
    assert len(first["key"]) == 64 and first["key"].startswith(first["key_prefix"])
    listed = result_of(api.call("GET", "/platform/tokens/all", key=root_key))
    assert [item["id"] for item in listed][-2:] == [first["id"], second["id"]]
    assert all("key" not in item for item in listed)
    single = result_of(api.call("GET", f"/platform/tokens/{first['id']}", key=root_key))
    assert [set(item) for item in single] == [TOKEN_FIELDS]
    # The key works, and its access type is the one asked for.
    info = result_of(api.call("GET", "/auth/info", key=first["key"]))
    assert (info[0]["token"]["id"], info[0]["access"]) == (first["id"], {"type": 1, "name": "master"})
    # ``key`` cannot be projected out of a list either.
    listed = result_of(api.call("GET", f"/platform/tokens/{first['id']}?fields=id,key", key=root_key))
    assert listed == [{"id": first["id"]}]


def test_key_is_stored_hashed(root):
    token, key = token_create(account=root, info="secret")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_token WHERE id = %s", [token.pk])
        row = cursor.fetchone()
    assert not any(key in str(value) for value in row)
    assert token.key_prefix == key[:8]
    assert len(token.key_hash) == 64 and token.key_hash != key


def test_update_info_enabled_expire_ttl(api, root, root_key, make_token):
    make_token(root, master=False, info="other")
    token = Token.objects.get(info="other")
    result = result_of(
        api.call(
            "PUT",
            f"/platform/tokens/{token.pk}",
            key=root_key,
            body={"info": "renamed", "enabled": False, "expire": 4_000_000_000, "ttl": 60},
        )
    )
    assert [(r["id"], r["info"], r["enabled"], r["expire"], r["ttl"]) for r in result] == [
        (token.pk, "renamed", False, 4_000_000_000, 60)
    ]
    assert "key" not in result[0]
    token.refresh_from_db()
    assert (token.info, token.enabled, token.expire, token.ttl) == ("renamed", False, 4_000_000_000, 60)


def test_access_type_changes_only_when_named(api, root, root_key):
    token = Token.objects.get()
    result = result_of(
        api.call("PUT", f"/platform/tokens/{token.pk}", key=root_key, body={"info": "still master"})
    )
    assert result[0]["access"] == {"type": 1}
    errors = errors_of(
        api.call("PUT", f"/platform/tokens/{token.pk}", key=root_key, body={"access": {}}), 400
    )
    assert errors == [
        {
            "code": 400,
            "reason": "access.type: This field is required.",
            "field": "access.type",
        }
    ]
    token.refresh_from_db()
    assert token.access_type == 1


def test_delete_tokens(api, root, root_key, make_token):
    key = make_token(root, info="doomed")
    token = Token.objects.get(info="doomed")
    assert result_of(api.call("DELETE", f"/platform/tokens/{token.pk}", key=root_key)) == [{"id": token.pk}]
    assert not Token.objects.filter(pk=token.pk).exists()
    assert "unknown token" in reasons(api.call("GET", "/auth/info", key=key), 401)
    errors = errors_of(api.call("DELETE", f"/platform/tokens/{token.pk}", key=root_key), 404)
    assert errors[0]["reason"] == f"no token with id {token.pk}"


def test_tokens_of_other_accounts_do_not_exist(api, root, root_key, make_account, make_token):
    other = make_account("other")
    make_token(other, info="theirs")
    theirs = Token.objects.get(info="theirs")
    before = token_rows()
    for method, body in (("GET", None), ("PUT", {"info": "mine"}), ("DELETE", None)):
        response = api.call(method, f"/platform/tokens/{theirs.pk}", key=root_key, body=body)
        assert errors_of(response, 404)[0]["reason"] == f"no token with id {theirs.pk}"
    assert token_rows() == before
    listed = result_of(api.call("GET", "/platform/tokens/all", key=root_key))
    assert theirs.pk not in [item["id"] for item in listed]


def test_expired_token_gets_401(api, root, make_token):
    key = make_token(root, expire=int(time.time()) - 1)
    response = api.call("GET", "/auth/info", key=key)
    assert response["WWW-Authenticate"] == "FlespiToken"
    assert reasons(response, 401) == f"token {Token.objects.get().pk} expired"


def test_expire_in_the_future_is_accepted(api, root, make_token):
    key = make_token(root, expire=int(time.time()) + 3600)
    assert result_of(api.call("GET", "/auth/info", key=key))[0]["cid"] == root.pk


def test_disabled_token_gets_401(api, root, root_key, make_token):
    key = make_token(root, info="off")
    token = Token.objects.get(info="off")
    result_of(api.call("PUT", f"/platform/tokens/{token.pk}", key=root_key, body={"enabled": False}))
    assert reasons(api.call("GET", "/auth/info", key=key), 401) == f"token {token.pk} is disabled"
    result_of(api.call("PUT", f"/platform/tokens/{token.pk}", key=root_key, body={"enabled": True}))
    assert result_of(api.call("GET", "/auth/info", key=key))[0]["token"]["id"] == token.pk


def test_unknown_and_malformed_tokens_get_401(api, platform):
    assert reasons(api.call("GET", "/auth/info", key="nope"), 401) == "unknown token"
    for header in ("FlespiToken", "Basic abc", "FlespiToken   ", "Token abc"):
        response = api.call("GET", "/auth/info", HTTP_AUTHORIZATION=header)
        assert reasons(response, 401) == "Authorization must be 'FlespiToken <key>' or 'Bearer <key>'", header
    response = api.call("GET", "/auth/info")
    assert "a token is required" in reasons(response, 401)


def test_bearer_is_accepted(api, root, root_key):
    response = api.call("GET", "/auth/info", HTTP_AUTHORIZATION=f"Bearer {root_key}")
    assert result_of(response)[0]["cid"] == root.pk


def test_ttl_counts_from_last_use(root):
    token, key = token_create(account=root, ttl=100)
    start = token.created
    assert token_authenticate(key=key, now=start + 90).pk == token.pk
    # 90 s after the last use, 180 s after creation: still valid.
    assert token_authenticate(key=key, now=start + 180).pk == token.pk
    token.refresh_from_db()
    assert token.last_used == start + 180
    with pytest.raises(Unauthorized) as excinfo:
        token_authenticate(key=key, now=start + 280)
    assert excinfo.value.reason == f"token {token.pk} expired: unused for more than its ttl of 100 s"
    # A refused use does not count as a use.
    token.refresh_from_db()
    assert token.last_used == start + 180


def test_ttl_counts_from_creation_before_first_use(root):
    token, key = token_create(account=root, ttl=100)
    with pytest.raises(Unauthorized):
        token_authenticate(key=key, now=token.created + 100)


def test_ttl_over_the_api(api, root, make_token):
    key = make_token(root, ttl=60)
    Token.objects.filter(info="").update(created=time.time() - 120)
    assert "unused for more than its ttl of 60 s" in reasons(api.call("GET", "/auth/info", key=key), 401)
    fresh = make_token(root, ttl=60, info="fresh")
    assert result_of(api.call("GET", "/auth/info", key=fresh))[0]["token"]["ttl"] == 60
    assert Token.objects.get(info="fresh").last_used is not None


def test_new_ttl_counts_from_the_update(api, root, root_key, make_token):
    key = make_token(root, info="idle")
    Token.objects.filter(info="idle").update(created=time.time() - 1000)
    token = Token.objects.get(info="idle")
    result_of(api.call("PUT", f"/platform/tokens/{token.pk}", key=root_key, body={"ttl": 60}))
    assert result_of(api.call("GET", "/auth/info", key=key))[0]["token"]["id"] == token.pk


def test_standard_token_is_refused_on_platform_but_reads_auth_info(api, root, make_token):
    key = make_token(root, master=False)
    for method, path, body in (
        ("GET", "/platform/customer", None),
        ("PUT", "/platform/customer", {"name": "x"}),
        ("GET", "/platform/tokens", None),
        ("GET", "/platform/tokens/all", None),
        ("POST", "/platform/tokens", [{"access": {"type": 1}}]),
        ("GET", "/platform/subaccounts/all", None),
        ("POST", "/platform/subaccounts", [{"name": "x"}]),
    ):
        response = api.call(method, path, key=key, body=body)
        assert (
            reasons(response, 403) == "this token's access type is standard; /platform needs a master token"
        ), path
    assert Token.objects.count() == 1
    root.refresh_from_db()
    assert root.name == "root"
    info = result_of(api.call("GET", "/auth/info", key=key))
    assert info[0]["access"] == {"type": 0, "name": "standard"}


def test_master_token_works_on_platform(api, root, root_key):
    assert result_of(api.call("GET", "/platform/customer", key=root_key))[0]["id"] == root.pk
    assert len(result_of(api.call("GET", "/platform/tokens", key=root_key))) == 1
    assert result_of(api.call("GET", "/platform/subaccounts", key=root_key)) == []
