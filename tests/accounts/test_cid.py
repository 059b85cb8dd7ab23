"""``x-flespi-cid``: acting as a descendant; anything else does not exist for the token."""

from __future__ import annotations

import pytest

from accounts.models import Account, Token
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def tree(root, make_account):
    child = make_account("child", parent=root)
    grandchild = make_account("grandchild", parent=child)
    sibling = make_account("sibling", parent=root)
    return {"root": root, "child": child, "grandchild": grandchild, "sibling": sibling}


@pytest.fixture
def child_key(tree, make_token):
    return make_token(tree["child"])


@pytest.mark.parametrize("name", ["child", "grandchild"])
def test_descendant_is_the_acting_account(api, tree, root_key, name):
    account = tree[name]
    customer = result_of(
        api.call("GET", "/platform/customer?fields=id,name,parent_id", key=root_key, cid=account.pk)
    )
    assert customer == [{"id": account.pk, "name": name, "parent_id": account.parent_id}]
    info = result_of(api.call("GET", "/auth/info", key=root_key, cid=account.pk))
    assert (info[0]["cid"], info[0]["account"]["id"], info[0]["token"]["cid"]) == (
        account.pk,
        account.pk,
        tree["root"].pk,
    )


def test_own_id_and_empty_cid_act_as_the_token_account(api, tree, child_key):
    child = tree["child"]
    for cid in (child.pk, ""):
        assert result_of(api.call("GET", "/platform/customer?fields=id", key=child_key, cid=cid)) == [
            {"id": child.pk}
        ]


def test_writes_act_for_the_descendant(api, tree, root_key):
    child = tree["child"]
    created = result_of(
        api.call("POST", "/platform/tokens", key=root_key, cid=child.pk, body=[{"info": "child's"}])
    )
    assert created[0]["cid"] == child.pk
    assert Token.objects.get(info="child's").account_id == child.pk
    sub = result_of(
        api.call("POST", "/platform/subaccounts", key=root_key, cid=child.pk, body=[{"name": "below"}])
    )
    assert (sub[0]["parent_id"], sub[0]["depth"]) == (child.pk, 2)


def arabic(number: int) -> str:
    """``number`` in Arabic-Indic digits, which Python's int() also reads."""
    return "".join(chr(0x660 + int(digit)) for digit in str(number))


@pytest.mark.parametrize(
    ("cid", "reason"),
    [
        (lambda t: t["sibling"].pk, lambda t: f"account {t['sibling'].pk} not found"),
        (lambda t: t["root"].pk, lambda t: f"account {t['root'].pk} not found"),
        (lambda t: 2**40, lambda t: f"account {2**40} not found"),
        (lambda t: "garbage", lambda t: "x-flespi-cid 'garbage' is not an account id"),
        (lambda t: "-1", lambda t: "account -1 not found"),
        (lambda t: "1.5", lambda t: "x-flespi-cid '1.5' is not an account id"),
        (lambda t: "9" * 30, lambda t: f"account {'9' * 30} not found"),
        # Python's int() reads "1_2" as 12: the header must be plain digits.
        (
            lambda t: "_".join(str(t["grandchild"].pk)),
            lambda t: f"x-flespi-cid {'_'.join(str(t['grandchild'].pk))!r} is not an account id",
        ),
        (
            lambda t: arabic(t["grandchild"].pk),
            lambda t: f"x-flespi-cid {arabic(t['grandchild'].pk)!r} is not an account id",
        ),
    ],
    ids=["sibling", "parent", "unknown", "garbage", "negative", "float", "huge", "underscores", "non-ascii"],
)
def test_anything_outside_the_subtree_is_404(api, tree, child_key, cid, reason):
    before = list(Account.objects.values_list("pk", "name"))
    for method, path, body in (
        ("GET", "/platform/customer", None),
        ("PUT", "/platform/customer", {"name": "taken"}),
        ("GET", "/auth/info", None),
        ("POST", "/platform/tokens", [{"info": "x"}]),
    ):
        errors = errors_of(api.call(method, path, key=child_key, cid=cid(tree), body=body), 404)
        assert errors == [{"code": 404, "reason": reason(tree)}], path
    assert list(Account.objects.values_list("pk", "name")) == before
    assert not Token.objects.filter(info="x").exists()


def test_subaccounts_of_a_subaccount_exclude_its_siblings(api, tree, child_key):
    listed = result_of(api.call("GET", "/platform/subaccounts/all?fields=id", key=child_key))
    assert listed == [{"id": tree["grandchild"].pk}]
    errors = errors_of(api.call("GET", f"/platform/subaccounts/{tree['sibling'].pk}", key=child_key), 404)
    assert errors[0]["reason"] == f"no subaccount with id {tree['sibling'].pk}"
