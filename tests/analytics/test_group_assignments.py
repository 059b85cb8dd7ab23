"""/gw/calcs/{calc}/groups/{group}: calculators assigned to groups of devices. Current and future
members are assigned (``auto_created``), leavers unassigned, in the transaction of the membership
change; hand-made assignments are never removed by a group."""

from __future__ import annotations

import pytest

from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")

DC = "dc_eu_1"


def assigned(calc_id: int) -> dict[int, bool]:
    """device id -> auto_created, of the calculator's assignments (as stored)."""
    from analytics.models import Assignment

    rows = Assignment.objects.using(DC).filter(calculator_id=calc_id).values_list("device_id", "by_hand")
    return {device_id: not by_hand for device_id, by_hand in rows}


@pytest.fixture
def trucks(account):
    from devices.services import device_create

    return [
        device_create(account=account, name=f"truck-{n}", configuration={"ident": f"ga-{n}"},
                      metadata={"fleet": "north" if n % 2 else "south"})
        for n in range(1, 5)
    ]


def test_an_explicit_group_assigns_its_members_now_and_later(api, key, calculator, trucks):
    one, two, three, _four = trucks
    group = api.call("POST", "/gw/groups", key=key, body=[{"name": "pool", "devices": [one.pk, two.pk]}]).json()["result"][0]
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{group['id']}", key=key)
    assert response.status_code == 200, response.content
    [link] = response.json()["result"]
    assert {k: v for k, v in link.items() if k != "created"} == {
        "id": group["id"], "calc_id": calculator.pk, "cid": calculator.account_id, "name": "pool",
    }
    assert assigned(calculator.pk) == {one.pk: True, two.pk: True}
    response = api.call("GET", f"/gw/calcs/{calculator.pk}/devices/all", key=key)
    assert [(a["id"], a["auto_created"], a["state"]) for a in response.json()["result"]] == [
        (one.pk, True, "unsynced"), (two.pk, True, "unsynced"),
    ]
    # A device added later is assigned; one removed is unassigned.
    api.call("POST", f"/gw/groups/{group['id']}/devices/{three.pk}", key=key)
    assert assigned(calculator.pk) == {one.pk: True, two.pk: True, three.pk: True}
    api.call("DELETE", f"/gw/groups/{group['id']}/devices/{one.pk}", key=key)
    assert assigned(calculator.pk) == {two.pk: True, three.pk: True}
    # The member list replaced: joiners and leavers follow.
    api.call("PUT", f"/gw/groups/{group['id']}", key=key, body={"devices": [one.pk, three.pk]})
    assert assigned(calculator.pk) == {one.pk: True, three.pk: True}
    # Listing and unassigning the group.
    response = api.call("GET", f"/gw/calcs/{calculator.pk}/groups/all", key=key)
    assert [item["id"] for item in response.json()["result"]] == [group["id"]]
    response = api.call("DELETE", f"/gw/calcs/{calculator.pk}/groups/{group['id']}", key=key)
    assert response.json() == {"result": [{"id": group["id"], "calc_id": calculator.pk}]}
    assert assigned(calculator.pk) == {}
    assert api.call("GET", f"/gw/calcs/{calculator.pk}/groups/all", key=key).json() == {"result": []}


def test_a_selector_group_follows_devices_created_changed_and_deleted(api, key, account, calculator, trucks):
    from devices.services import device_create

    _one, two, _three, four = trucks
    north = [t.pk for t in trucks if t.metadata["fleet"] == "north"]
    group = api.call("POST", "/gw/groups", key=key, body=[{"name": "north", "selector": "metadata.fleet=north"}]).json()["result"][0]
    api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{group['id']}", key=key)
    assert assigned(calculator.pk) == dict.fromkeys(north, True)
    # A device created matching the selector is assigned by its creation.
    response = api.call("POST", "/gw/devices", key=key, body=[
        {"configuration": {"ident": "ga-new"}, "metadata": {"fleet": "north"}},
        {"configuration": {"ident": "ga-other"}, "metadata": {"fleet": "west"}},
    ])
    new, _other = (item["id"] for item in response.json()["result"])
    assert assigned(calculator.pk) == dict.fromkeys([*north, new], True)
    # A change that makes a device match, or stop matching.
    api.call("PUT", f"/gw/devices/{two.pk}", key=key, body={"metadata": {"fleet": "south"}})
    api.call("PATCH", f"/gw/devices/{four.pk}", key=key, body={"metadata": {"fleet": "north"}})
    assert set(assigned(calculator.pk)) == {*north, new, four.pk} - {two.pk}
    # A change of what the selector does not read changes nothing.
    api.call("PUT", f"/gw/devices/{four.pk}", key=key, body={"messages_ttl": 3600})
    assert set(assigned(calculator.pk)) == {*north, new, four.pk} - {two.pk}
    # A name selector: the group's selector changed, the members follow.
    api.call("PUT", f"/gw/groups/{group['id']}", key=key, body={"selector": "name=truck-?"})
    assert set(assigned(calculator.pk)) == {t.pk for t in trucks}
    api.call("PUT", f"/gw/devices/{four.pk}", key=key, body={"name": "van"})
    assert set(assigned(calculator.pk)) == {t.pk for t in trucks} - {four.pk}
    # A deleted device takes its assignment with it.
    api.call("DELETE", f"/gw/devices/{two.pk}", key=key)
    assert set(assigned(calculator.pk)) == {t.pk for t in trucks} - {four.pk, two.pk}
    # A deleted group unassigns its members.
    device_create(account=account, name="truck-9", configuration={"ident": "ga-9"})
    assert len(assigned(calculator.pk)) == 3
    api.call("DELETE", f"/gw/groups/{group['id']}", key=key)
    assert assigned(calculator.pk) == {}


def test_a_hand_made_assignment_outlives_its_groups(api, key, calculator, trucks):
    one, two, _three, _four = trucks
    group = api.call("POST", "/gw/groups", key=key, body=[{"name": "pool", "devices": [one.pk, two.pk]}]).json()["result"][0]
    other = api.call("POST", "/gw/groups", key=key, body=[{"name": "pool 2", "devices": [two.pk]}]).json()["result"][0]
    api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{one.pk}", key=key)
    assert assigned(calculator.pk) == {one.pk: False}
    api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{group['id']},{other['id']}", key=key)
    # Held by hand and by the group: auto_created reads false.
    assert assigned(calculator.pk) == {one.pk: False, two.pk: True}
    # Unassigning a group never removes the hand-made assignment; the other group still holds two.
    api.call("DELETE", f"/gw/calcs/{calculator.pk}/groups/{group['id']}", key=key)
    assert assigned(calculator.pk) == {one.pk: False, two.pk: True}
    # A hand-made assign of a group's assignment makes the hand hold it too.
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/devices/{two.pk}", key=key)
    assert response.json()["result"][0]["auto_created"] is False
    # A hand unassign of an assignment a group also holds removes the hand's part: the group's stays.
    response = api.call("DELETE", f"/gw/calcs/{calculator.pk}/devices/{two.pk}", key=key)
    assert response.status_code == 200, response.content
    assert assigned(calculator.pk) == {one.pk: False, two.pk: True}
    # One that only a group holds cannot be unassigned by hand: a 409 naming the group.
    response = api.call("DELETE", f"/gw/calcs/{calculator.pk}/devices/{two.pk}", key=key)
    assert response.status_code == 409
    [error] = response.json()["errors"]
    assert error["id"] == two.pk and f"through group {other['id']}" in error["reason"]
    assert assigned(calculator.pk) == {one.pk: False, two.pk: True}
    # The device leaves the group: only the hand-made assignment stays.
    api.call("DELETE", f"/gw/groups/{other['id']}/devices/{two.pk}", key=key)
    api.call("DELETE", f"/gw/groups/{group['id']}/devices/{one.pk}", key=key)
    assert assigned(calculator.pk) == {one.pk: False}


def test_a_member_in_two_groups_of_one_calculator_stays_while_either_holds(api, key, calculator, trucks):
    one = trucks[0]
    a = api.call("POST", "/gw/groups", key=key, body=[{"name": "a", "devices": [one.pk]}]).json()["result"][0]
    b = api.call("POST", "/gw/groups", key=key, body=[{"name": "b", "selector": "name=truck-1"}]).json()["result"][0]
    api.call("POST", f"/gw/calcs/{calculator.pk}/groups/all", key=key)
    assert assigned(calculator.pk) == {one.pk: True}
    api.call("DELETE", f"/gw/groups/{a['id']}/devices/{one.pk}", key=key)
    assert assigned(calculator.pk) == {one.pk: True}
    api.call("DELETE", f"/gw/calcs/{calculator.pk}/groups/{b['id']}", key=key)
    assert assigned(calculator.pk) == {}


def test_bad_group_assignments_are_refused_and_nothing_is_saved(api, key, account, make_account, calculator, trucks):
    from analytics.models import GroupAssignment
    from devices.services import group_create

    other = make_account("other")
    theirs = group_create(account=other, name="theirs", selector="all")
    ours = group_create(account=account, name="ours", devices=[trucks[0].pk])
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{theirs.pk}", key=key)
    assert response.status_code == 404
    assert response.json()["errors"] == [{"code": 404, "reason": f"no group with id {theirs.pk}", "id": theirs.pk}]
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{ours.pk},{theirs.pk}", key=key)
    assert response.status_code == 200 and [e["id"] for e in response.json()["errors"]] == [theirs.pk]
    assert [r["id"] for r in response.json()["result"]] == [ours.pk]
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/groups/colour=red", key=key)
    assert response.status_code == 400 and "cannot select on 'colour'" in response.json()["errors"][0]["reason"]
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/groups/999999999", key=key)
    assert response.status_code == 404
    response = api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{ours.pk}", key=key, body={"x": 1})
    assert response.status_code == 400
    assert api.call("PUT", f"/gw/calcs/{calculator.pk}/groups/{ours.pk}", key=key, body={}).status_code == 405
    response = api.call("DELETE", f"/gw/calcs/{calculator.pk}/groups/{theirs.pk}", key=key)
    assert response.status_code == 404
    assert list(GroupAssignment.objects.using(DC).values_list("group_id", flat=True)) == [ours.pk]
    assert set(assigned(calculator.pk)) == {trucks[0].pk}
    # Another account's calculator: 404, nothing saved.
    from analytics.services import calculator_create

    their_calc = calculator_create(account=other, config=TRIPS)
    assert api.call("POST", f"/gw/calcs/{their_calc.pk}/groups/{ours.pk}", key=key).status_code == 404
    assert assigned(their_calc.pk) == {}


def test_a_device_moved_to_another_account_leaves_its_groups(api, key, account, make_account, make_token, calculator, trucks):
    from devices.models import GroupDevice

    one = trucks[0]
    child = make_account("child", parent=account)
    group = api.call("POST", "/gw/groups", key=key, body=[{"name": "pool", "devices": [one.pk]}]).json()["result"][0]
    api.call("POST", f"/gw/calcs/{calculator.pk}/groups/{group['id']}", key=key)
    assert assigned(calculator.pk) == {one.pk: True}
    response = api.call("PUT", f"/gw/devices/{one.pk}", key=key, body={"cid": child.pk})
    assert response.status_code == 200, response.content
    assert assigned(calculator.pk) == {}
    assert not GroupDevice.objects.using(DC).filter(device_id=one.pk).exists()


def test_the_admin_unassigns_as_the_api_does(admin_client, account, calculator, trucks):
    from analytics.models import Assignment
    from analytics.services import group_assignment_create
    from devices.services import group_create
    from tests.support.admin import HOST

    one = trucks[0]
    group_assignment_create(calculator=calculator, group=group_create(account=account, name="pool", devices=[one.pk]))
    row = Assignment.objects.using(DC).get(calculator_id=calculator.pk, device_id=one.pk)
    response = admin_client.post(
        "/admin/analytics/assignment/", {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
        **HOST,
    )
    # Only the group holds it: refused (403 with the reason), as the API's 409.
    assert response.status_code == 403
    assert assigned(calculator.pk) == {one.pk: True}
