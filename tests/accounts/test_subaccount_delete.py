"""Deleting a subaccount removes its subtree, their tokens and their regional data."""

from __future__ import annotations

import pytest

from accounts import placement
from accounts.models import Account, Token
from tests.support.api import errors_of, reasons, result_of

pytestmark = pytest.mark.django_db(databases="__all__")


def test_delete_removes_the_subtree_tokens_and_regional_rows(api, root, root_key, make_account, make_token):
    from devices.models import Device

    child = make_account("child", parent=root, region="ru")
    grandchild = make_account("grandchild", parent=child)
    sibling = make_account("sibling", parent=root)
    grandchild_key = make_token(grandchild)
    for account in (grandchild, sibling):
        Device(account_id=account.pk, ident=f"del-{account.pk}", shard=0, created=0.0).save()
    assert placement.alias_for_account(grandchild.pk) == "dc_ru_1"

    assert result_of(api.call("DELETE", f"/platform/subaccounts/{child.pk}", key=root_key)) == [
        {"id": child.pk}
    ]

    assert sorted(Account.objects.values_list("name", flat=True)) == ["root", "sibling"]
    assert list(Token.objects.values_list("account_id", flat=True)) == [root.pk]
    assert (
        list(
            Device.objects.using("dc_ru_1")
            .filter(ident__startswith="del-")
            .values_list("account_id", flat=True)
        )
        == []
    )
    assert list(
        Device.objects.using("dc_eu_1").filter(ident__startswith="del-").values_list("account_id", flat=True)
    ) == [sibling.pk]
    with pytest.raises(placement.UnknownAccount):
        placement.alias_for_account(grandchild.pk)
    assert reasons(api.call("GET", "/auth/info", key=grandchild_key), 401) == "unknown token"
    errors = errors_of(api.call("DELETE", f"/platform/subaccounts/{child.pk}", key=root_key), 404)
    assert errors[0]["reason"] == f"no subaccount with id {child.pk}"


def test_an_account_cannot_delete_itself_or_its_parent_through_subaccounts(
    api, root, make_account, make_token
):
    child = make_account("child", parent=root)
    child_key = make_token(child)
    for target in (child, root):
        errors = errors_of(api.call("DELETE", f"/platform/subaccounts/{target.pk}", key=child_key), 404)
        assert errors[0]["reason"] == f"no subaccount with id {target.pk}"
    assert Account.objects.count() == 2
