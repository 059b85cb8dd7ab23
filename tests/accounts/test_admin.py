"""The admin: a superuser loads the lists and forms of accounts and tokens."""

from __future__ import annotations

import pytest

from tests.support.admin import fast_password_hashing  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def tree(root, make_account, make_token):
    child = make_account("child", parent=root, region="ru")
    make_token(root, info="admin visible")
    return root, child


@pytest.mark.parametrize(
    "path",
    [
        "/admin/accounts/account/",
        "/admin/accounts/token/",
        "/admin/regions/region/",
        "/admin/regions/datacenter/",
        "/admin/accounts/account/add/",
        "/admin/accounts/token/add/",
    ],
)
def test_changelists_and_add_forms_load(admin_client, tree, path):
    response = admin_client.get(path, HTTP_HOST="localhost")
    assert response.status_code == 200, response.content[:500]


def test_account_changelist_shows_the_tree(admin_client, tree):
    _root, _child = tree
    response = admin_client.get("/admin/accounts/account/", HTTP_HOST="localhost")
    assert "— child" in response.content.decode()


def test_change_forms_load_with_region_read_only(admin_client, tree):
    root, child = tree
    response = admin_client.get(f"/admin/accounts/account/{child.pk}/change/", HTTP_HOST="localhost")
    assert response.status_code == 200
    assert 'name="region"' not in response.content.decode()
    token = root.tokens.get()
    response = admin_client.get(f"/admin/accounts/token/{token.pk}/change/", HTTP_HOST="localhost")
    assert response.status_code == 200
    assert "key_hash" not in response.content.decode()


def add_account(admin_client, **fields):
    from regions.models import Datacenter, Region

    data = {"name": "added", "parent": "", "region": "", "datacenter": "", "metadata": "{}"}
    data.update(fields)
    if data["region"]:
        data["region"] = Region.objects.get(code=data["region"]).pk
    if data["datacenter"]:
        data["datacenter"] = Datacenter.objects.get(code=data["datacenter"]).pk
    for prefix in ("children",):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    return admin_client.post("/admin/accounts/account/add/", data, HTTP_HOST="localhost")


def test_admin_places_a_root_account_by_default(admin_client, tree):
    from accounts.models import Account

    response = add_account(admin_client)
    assert response.status_code == 302, response.content.decode()[:2000]
    added = Account.objects.get(name="added")
    assert (added.parent_id, added.region.code, added.datacenter.code, added.depth) == (None, "eu", "eu-1", 0)
    assert added.path == f"{added.pk}/"


def test_admin_creates_a_first_level_subaccount_in_the_chosen_region(admin_client, tree):
    from accounts.models import Account

    root, _child = tree
    response = add_account(admin_client, parent=root.pk, region="ru", datacenter="ru-1")
    assert response.status_code == 302, response.content.decode()[:2000]
    added = Account.objects.get(name="added")
    assert (added.parent_id, added.region.code, added.datacenter.code, added.depth) == (
        root.pk,
        "ru",
        "ru-1",
        1,
    )
    assert added.path == f"{root.pk}/{added.pk}/"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"region": "ru", "datacenter": "ru-1"}, "a root account lives in the default region eu"),
        ({"region": "ru", "datacenter": "eu-1"}, "a root account lives in the default region eu"),
        ({"region": "eu", "datacenter": "ru-1"}, "datacenter ru-1 is in region ru, not in eu"),
        (
            {"parent": "child", "region": "eu", "datacenter": "eu-1"},
            "only a first-level subaccount chooses its region",
        ),
    ],
    ids=["root-in-ru", "root-region-ignored", "datacenter-of-another-region", "deeper-chooses"],
)
def test_admin_refuses_what_the_rules_refuse(admin_client, tree, fields, message):
    from accounts.models import Account

    _root, child = tree
    if fields.get("parent") == "child":
        fields = {**fields, "parent": child.pk}
    before = list(Account.objects.values_list("pk", flat=True))
    response = add_account(admin_client, **fields)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert list(Account.objects.values_list("pk", flat=True)) == before


def test_admin_creates_a_token_and_shows_its_key_once(admin_client, tree):
    from accounts.models import Token
    from accounts.services import token_authenticate

    root, _child = tree
    data = {
        "account": root.pk,
        "info": "from admin",
        "enabled": "on",
        "access_type": 1,
        "expire": 0,
        "ttl": 0,
    }
    response = admin_client.post("/admin/accounts/token/add/", data, HTTP_HOST="localhost", follow=True)
    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    assert len(shown) == 2 and shown[0].startswith("Token key (shown once, copy it now): ")
    key = shown[0].rsplit(" ", 1)[1]
    token = Token.objects.get(info="from admin")
    assert token_authenticate(key=key).pk == token.pk
    assert token.access_type == 1
    response = admin_client.get(f"/admin/accounts/token/{token.pk}/change/", HTTP_HOST="localhost")
    assert key not in response.content.decode()
