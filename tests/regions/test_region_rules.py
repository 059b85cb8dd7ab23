"""Region rules of the account tree: who chooses a region, inheritance, immutability, depth and
placement in a datacenter."""

from __future__ import annotations

import pytest

from accounts.models import Account
from accounts.services import account_create
from flespi_site.errors import InvalidInput
from tests.support.api import errors_of, reasons, result_of

pytestmark = pytest.mark.django_db(databases="__all__")


def snapshot() -> list[tuple]:
    return list(
        Account.objects.order_by("pk").values_list(
            "pk", "name", "region__code", "datacenter__code", "parent_id"
        )
    )


def test_root_lives_in_the_default_region_and_its_default_datacenter(make_account):
    root = make_account("root")
    assert (root.region.code, root.datacenter.code, root.depth, root.parent_id) == ("eu", "eu-1", 0, None)
    assert root.path == f"{root.pk}/"


def test_root_may_name_the_default_region_but_no_other(make_account):
    assert make_account("explicit", region="eu").region.code == "eu"
    before = snapshot()
    with pytest.raises(InvalidInput) as excinfo:
        make_account("elsewhere", region="ru")
    assert excinfo.value.field == "region"
    assert "default region eu" in excinfo.value.reason
    assert snapshot() == before


def test_first_level_subaccount_defaults_to_the_parents_region(make_account):
    root = make_account("root")
    child = make_account("child", parent=root)
    assert (child.region.code, child.datacenter.code, child.depth) == ("eu", "eu-1", 1)
    assert child.path == f"{root.pk}/{child.pk}/"


def test_first_level_subaccount_chooses_its_region(make_account):
    root = make_account("root")
    child = make_account("child", parent=root, region="ru")
    assert (child.region.code, child.datacenter.code) == ("ru", "ru-1")


def test_unknown_region_is_refused(make_account):
    root = make_account("root")
    before = snapshot()
    with pytest.raises(InvalidInput) as excinfo:
        make_account("child", parent=root, region="us")
    assert excinfo.value.reason == "unknown region 'us'; regions: eu, ru"
    assert snapshot() == before


def test_deeper_subaccounts_inherit_and_may_not_choose(make_account):
    root = make_account("root")
    child = make_account("child", parent=root, region="ru")
    grandchild = make_account("grandchild", parent=child)
    assert (grandchild.region.code, grandchild.datacenter.code) == ("ru", "ru-1")
    assert make_account("same", parent=child, region="ru").region.code == "ru"
    before = snapshot()
    with pytest.raises(InvalidInput) as excinfo:
        make_account("other", parent=child, region="eu")
    assert excinfo.value.field == "region"
    assert excinfo.value.reason == (
        f"only a first-level subaccount chooses its region; this one inherits ru from account {child.pk}"
    )
    assert snapshot() == before


def test_depth_limit_is_root_plus_three(make_account):
    root = make_account("root")
    level1 = make_account("l1", parent=root)
    level2 = make_account("l2", parent=level1)
    level3 = make_account("l3", parent=level2)
    assert [a.depth for a in (root, level1, level2, level3)] == [0, 1, 2, 3]
    before = snapshot()
    with pytest.raises(InvalidInput) as excinfo:
        make_account("l4", parent=level3)
    assert excinfo.value.field == "parent_id"
    assert f"account {level3.pk} is at the deepest level" in excinfo.value.reason
    assert snapshot() == before


def test_placement_in_a_given_datacenter_of_the_region(make_account):
    root = make_account("root")
    assert make_account("eu2", parent=root, datacenter="eu-2").datacenter.code == "eu-2"
    assert make_account("root2", datacenter="eu-2").datacenter.code == "eu-2"
    before = snapshot()
    with pytest.raises(InvalidInput) as excinfo:
        make_account("wrong", parent=root, region="ru", datacenter="eu-2")
    assert excinfo.value.reason == "datacenter eu-2 is in region eu, not in ru"
    with pytest.raises(InvalidInput) as excinfo:
        make_account("unknown", parent=root, datacenter="xx-9")
    assert excinfo.value.reason == "unknown datacenter 'xx-9'; datacenters of region eu: eu-1, eu-2"
    assert snapshot() == before


def test_subaccounts_api_applies_the_rules(api, root, root_key):
    created = result_of(
        api.call(
            "POST",
            "/platform/subaccounts",
            key=root_key,
            body=[
                {"name": "eu default"},
                {"name": "ru", "region": "ru"},
                {"name": "eu-2", "datacenter": "eu-2"},
            ],
        )
    )
    assert [(a["name"], a["region"], a["datacenter"], a["parent_id"], a["depth"]) for a in created] == [
        ("eu default", "eu", "eu-1", root.pk, 1),
        ("ru", "ru", "ru-1", root.pk, 1),
        ("eu-2", "eu", "eu-2", root.pk, 1),
    ]
    ru_id = created[1]["id"]
    deeper = result_of(
        api.call("POST", "/platform/subaccounts", key=root_key, body=[{"name": "deeper", "parent_id": ru_id}])
    )
    assert (deeper[0]["region"], deeper[0]["datacenter"], deeper[0]["depth"]) == ("ru", "ru-1", 2)

    before = snapshot()
    response = api.call(
        "POST",
        "/platform/subaccounts",
        key=root_key,
        body=[
            {"name": "choose", "parent_id": ru_id, "region": "eu"},
            {"name": "bad dc", "region": "ru", "datacenter": "eu-1"},
        ],
    )
    errors = errors_of(response, 400)
    assert [e["field"] for e in errors] == ["[0].region", "[1].datacenter"]
    assert "inherits ru" in errors[0]["reason"]
    assert errors[1]["reason"] == "datacenter eu-1 is in region eu, not in ru"
    assert response.json()["result"] == []
    assert snapshot() == before


def test_subaccounts_api_depth_limit(api, root, root_key, make_account):
    level1 = make_account("l1", parent=root)
    level2 = make_account("l2", parent=level1)
    level3 = make_account("l3", parent=level2)
    before = snapshot()
    response = api.call(
        "POST", "/platform/subaccounts", key=root_key, body=[{"name": "l4", "parent_id": level3.pk}]
    )
    errors = errors_of(response, 400)
    assert errors[0]["field"] == "[0].parent_id"
    assert "deepest level" in errors[0]["reason"]
    assert snapshot() == before


def test_region_of_a_subaccount_never_changes(api, root, root_key, make_account):
    child = make_account("child", parent=root, region="ru")
    before = snapshot()
    response = api.call(
        "PUT", f"/platform/subaccounts/{child.pk}", key=root_key, body={"region": "eu", "name": "renamed"}
    )
    errors = errors_of(response, 400)
    assert errors == [
        {
            "code": 400,
            "reason": f"the region of account {child.pk} is ru and can never change",
            "field": "region",
            "id": child.pk,
        }
    ]
    assert snapshot() == before
    # Naming the current region is not a change.
    result = result_of(
        api.call(
            "PUT", f"/platform/subaccounts/{child.pk}", key=root_key, body={"region": "ru", "name": "renamed"}
        )
    )
    assert (result[0]["name"], result[0]["region"]) == ("renamed", "ru")


def test_datacenter_and_parent_of_a_subaccount_do_not_change_through_the_api(
    api, root, root_key, make_account
):
    child = make_account("child", parent=root)
    other = make_account("other", parent=root)
    before = snapshot()
    response = api.call("PUT", f"/platform/subaccounts/{child.pk}", key=root_key, body={"datacenter": "eu-2"})
    assert "move command" in reasons(response, 400)
    response = api.call(
        "PUT", f"/platform/subaccounts/{child.pk}", key=root_key, body={"parent_id": other.pk}
    )
    assert reasons(response, 400) == f"account {child.pk} cannot move in the account tree"
    assert snapshot() == before


def test_region_of_the_customer_never_changes(api, root, root_key):
    before = snapshot()
    response = api.call("PUT", "/platform/customer", key=root_key, body={"region": "ru", "name": "renamed"})
    errors = errors_of(response, 400)
    assert errors == [
        {
            "code": 400,
            "reason": f"the region of account {root.pk} is eu and can never change",
            "field": "region",
        }
    ]
    assert snapshot() == before
    result = result_of(
        api.call("PUT", "/platform/customer", key=root_key, body={"name": "renamed", "metadata": {"a": 1}})
    )
    assert (result[0]["name"], result[0]["metadata"], result[0]["region"]) == ("renamed", {"a": 1}, "eu")


def test_account_create_is_atomic_when_the_datacenter_is_refused(platform, root):
    before = snapshot()
    with pytest.raises(InvalidInput):
        account_create(name="x", parent=root, region_code="ru", datacenter_code="eu-1")
    assert snapshot() == before
