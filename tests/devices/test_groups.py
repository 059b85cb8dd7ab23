"""/gw/groups: groups of devices (explicit members or a stored device selector) over the API, their
members, bad input naming its path with nothing saved, and isolation between accounts."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(databases="__all__")

DC = "dc_eu_1"


def _count(table: str, where: str = "", params=()) -> int:
    from django.db import connections

    with connections[DC].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} {where}", params)
        return cursor.fetchone()[0]


@pytest.fixture
def trucks(account):
    from devices.services import device_create

    return [
        device_create(account=account, name=name, configuration={"ident": f"g-{name}"}, metadata=metadata)
        for name, metadata in (
            ("truck-1", {"fleet": "north"}), ("truck-2", {"fleet": "south"}), ("van-1", {"fleet": "north", "x": 1}),
        )
    ]


def test_create_read_update_delete_an_explicit_group(api, key, account, trucks):
    one, two, _van = trucks
    response = api.call("POST", "/gw/groups", key=key, body=[{"name": "pool", "devices": [one.pk, two.pk],
                                                               "metadata": {"depot": 7}}])
    assert response.status_code == 200, response.content
    [group] = response.json()["result"]
    assert {k: v for k, v in group.items() if k not in ("id", "created")} == {
        "cid": account.pk, "name": "pool", "metadata": {"depot": 7}, "selector": None,
    }
    response = api.call("GET", f"/gw/groups/{group['id']}?fields=id,devices", key=key)
    assert response.json() == {"result": [{"id": group["id"], "devices": [one.pk, two.pk]}]}
    response = api.call("GET", f"/gw/groups/{group['id']}/devices", key=key)
    assert response.json() == {"result": [
        {"id": one.pk, "group_id": group["id"], "name": "truck-1"},
        {"id": two.pk, "group_id": group["id"], "name": "truck-2"},
    ]}
    response = api.call("PUT", f"/gw/groups/{group['id']}", key=key, body={"name": "pool 2", "devices": [two.pk]})
    assert response.status_code == 200, response.content
    assert response.json()["result"][0]["name"] == "pool 2"
    assert api.call("GET", f"/gw/groups/{group['id']}?fields=devices", key=key).json() == {
        "result": [{"devices": [two.pk]}]
    }
    response = api.call("GET", "/gw/groups/name=pool*", key=key)
    assert [item["id"] for item in response.json()["result"]] == [group["id"]]
    response = api.call("DELETE", f"/gw/groups/{group['id']}", key=key)
    assert response.json() == {"result": [{"id": group["id"]}]}
    assert api.call("GET", f"/gw/groups/{group['id']}", key=key).status_code == 404
    assert _count("devices_groupdevice") == 0


def test_members_are_added_listed_and_removed(api, key, trucks):
    one, two, van = trucks
    group = api.call("POST", "/gw/groups", key=key, body=[{"name": "pool"}]).json()["result"][0]
    response = api.call("POST", f"/gw/groups/{group['id']}/devices/{one.pk},{van.pk}", key=key)
    assert response.status_code == 200, response.content
    assert [item["id"] for item in response.json()["result"]] == [one.pk, van.pk]
    # Adding again changes nothing.
    assert api.call("POST", f"/gw/groups/{group['id']}/devices/{one.pk}", key=key).status_code == 200
    assert _count("devices_groupdevice") == 2
    response = api.call("GET", f"/gw/groups/{group['id']}/devices/name=van*", key=key)
    assert [item["id"] for item in response.json()["result"]] == [van.pk]
    response = api.call("DELETE", f"/gw/groups/{group['id']}/devices/{one.pk},{two.pk}", key=key)
    body = response.json()
    assert [item["id"] for item in body["result"]] == [one.pk]
    assert body["errors"] == [{"code": 404, "reason": f"device {two.pk} is not a member of group {group['id']}",
                               "id": two.pk, "selector": f"group_id={group['id']}"}]
    assert [item["id"] for item in api.call("GET", f"/gw/groups/{group['id']}/devices", key=key).json()["result"]] == [
        van.pk
    ]


def test_a_selector_group_holds_what_its_selector_selects_now(api, key, account, trucks):
    from devices.services import device_create

    one, two, van = trucks
    response = api.call("POST", "/gw/groups", key=key, body=[{"name": "north", "selector": "metadata.fleet=north"}])
    assert response.status_code == 200, response.content
    group = response.json()["result"][0]
    assert group["selector"] == "metadata.fleet=north"
    members = lambda: [item["id"] for item in api.call("GET", f"/gw/groups/{group['id']}/devices", key=key).json()["result"]]  # noqa: E731
    assert members() == [one.pk, van.pk]
    api.call("PUT", f"/gw/devices/{two.pk}", key=key, body={"metadata": {"fleet": "north"}})
    later = device_create(account=account, configuration={"ident": "g-later"}, metadata={"fleet": "north"})
    assert members() == [one.pk, two.pk, van.pk, later.pk]
    # An expression selector works too.
    response = api.call("PUT", f"/gw/groups/{group['id']}", key=key, body={"selector": '{name=="truck*" && metadata.fleet=="north"}'})
    assert response.status_code == 200, response.content
    assert members() == [one.pk, two.pk]
    # Its members are not a list to add to.
    response = api.call("POST", f"/gw/groups/{group['id']}/devices/{van.pk}", key=key)
    assert response.status_code == 409
    assert response.json()["errors"][0]["id"] == group["id"] and "selects its devices by selector" in response.json()["errors"][0]["reason"]
    # It becomes an explicit group with "selector": null and a member list.
    response = api.call("PUT", f"/gw/groups/{group['id']}", key=key, body={"selector": None, "devices": [van.pk]})
    assert response.status_code == 200, response.content
    assert members() == [van.pk]


@pytest.mark.parametrize(
    ("item", "status", "field", "reason"),
    [
        ({"name": "g", "devices": [], "selector": "name=x"}, 400, "[0].selector", "not both"),
        ({"name": "g", "selector": "colour=red"}, 400, "[0].selector", "cannot select on 'colour'"),
        ({"name": "g", "selector": "{name==}"}, 400, "[0].selector", "expected more at the end"),
        ({"name": "g", "selector": "  "}, 400, "[0].selector", "may not be blank"),
        ({"name": "g", "devices": [999999999]}, 404, "[0].devices[0]", "device 999999999 not found"),
        ({"name": "g", "devices": ["x"]}, 400, "[0].devices[0]", "must be an integer"),
        ({"devices": []}, 400, "[0].name", ""),
        ({"name": "g", "bogus": 1}, 400, "[0].bogus", ""),
    ],
)
def test_bad_groups_are_refused_naming_the_path_and_nothing_is_saved(api, key, trucks, item, status, field, reason):
    response = api.call("POST", "/gw/groups", key=key, body=[item])
    assert response.status_code == status, response.content
    matching = [e for e in response.json()["errors"] if e["field"] == field]
    assert len(matching) == 1, response.json()
    [error] = matching
    assert reason in error["reason"]
    assert _count("devices_group") == 0 and _count("devices_groupdevice") == 0


def test_bad_updates_change_nothing(api, key, trucks):
    one, _two, _van = trucks
    group = api.call("POST", "/gw/groups", key=key, body=[{"name": "north", "selector": "metadata.fleet=north"}]).json()["result"][0]
    for body, field in (
        ({"devices": [one.pk]}, "devices"),
        ({"selector": "nope=1"}, "selector"),
        ({"selector": None, "devices": [123456789]}, "devices[0]"),
    ):
        response = api.call("PUT", f"/gw/groups/{group['id']}", key=key, body=body)
        assert 400 <= response.status_code < 500, response.content
        assert response.json()["errors"][0]["field"] == field
    assert api.call("GET", f"/gw/groups/{group['id']}", key=key).json()["result"][0]["selector"] == "metadata.fleet=north"
    assert _count("devices_groupdevice") == 0


def test_another_accounts_groups_and_devices_do_not_exist(api, key, account, make_account, make_token, trucks):
    from devices.services import device_create, group_create

    other = make_account("other")
    other_key = make_token(other)
    stranger = device_create(account=other, configuration={"ident": "g-stranger"})
    theirs = group_create(account=other, name="theirs", devices=[stranger.pk])
    ours = api.call("POST", "/gw/groups", key=key, body=[{"name": "ours"}]).json()["result"][0]
    # Their group: 404 by id, absent from lists and wildcards.
    assert api.call("GET", f"/gw/groups/{theirs.pk}", key=key).status_code == 404
    assert api.call("DELETE", f"/gw/groups/{theirs.pk}", key=key).status_code == 404
    assert api.call("GET", f"/gw/groups/{theirs.pk}/devices", key=key).status_code == 404
    assert [g["id"] for g in api.call("GET", "/gw/groups/all", key=key).json()["result"]] == [ours["id"]]
    assert api.call("GET", "/gw/groups/name=the*", key=key).json() == {"result": []}
    # Their device as a member: 404 naming it, nothing saved.
    response = api.call("POST", "/gw/groups", key=key, body=[{"name": "x", "devices": [stranger.pk]}])
    assert response.status_code == 404 and response.json()["errors"][0]["field"] == "[0].devices[0]"
    response = api.call("POST", f"/gw/groups/{ours['id']}/devices/{stranger.pk}", key=key)
    assert response.status_code == 404 and response.json()["errors"][0]["id"] == stranger.pk
    assert _count("devices_groupdevice", "WHERE group_id = %s", [ours["id"]]) == 0
    # A selector group holds devices of its own account only.
    api.call("POST", "/gw/groups", key=key, body=[{"name": "everything", "selector": "all"}])
    every = api.call("GET", "/gw/groups/name=everything/devices", key=key).json()["result"]
    assert {item["id"] for item in every} == {device.pk for device in trucks}
    # A parent acting for the account with x-flespi-cid sees its groups; the other account not.
    parent = make_account("parent")
    child = make_account("child", parent=parent)
    group_create(account=child, name="child's")
    parent_key = make_token(parent)
    response = api.call("GET", "/gw/groups/all", key=parent_key, cid=child.pk)
    assert [g["name"] for g in response.json()["result"]] == ["child's"]
    assert api.call("GET", "/gw/groups/all", key=parent_key).json() == {"result": []}
    assert api.call("GET", "/gw/groups/all", key=other_key, cid=child.pk).status_code in (403, 404)


def test_a_group_id_comes_from_the_platform_sequence(account):
    from devices.models import Device
    from devices.services import device_create, group_create

    device = device_create(account=account, configuration={"ident": "g-seq"})
    group = group_create(account=account, name="g", devices=[device.pk])
    # Ids of every entity come from one sequence: a group id is never a device's.
    assert group.pk != device.pk and not Device.objects.using(DC).filter(pk=group.pk).exists()


@pytest.mark.parametrize(
    ("selector", "hint"),
    [
        ("metadata.fleet=north", ("metadata", ("fleet",), "north")),
        ("metadata.a.b=x-1.5", ("metadata", ("a", "b"), "x-1.5")),
        ("name=truck 1", ("name", (), "truck 1")),
        ("enabled=true,configuration.ident=352", ("configuration", ("ident",), "352")),
        ('{metadata.fleet=="f1" && enabled==true}', ("metadata", ("fleet",), "f1")),
        ('{enabled && (name=="a" && cid==3)}', ("name", (), "a")),
        ("metadata.fleet=nor*", ("metadata", ("fleet",), "nor", True)),
        ("name=truck-?", ("name", (), "truck-", True)),
        ('{name=="tr*" && metadata.x=="1"}', ("metadata", ("x",), "1")),
        ("name=*-1", None),
        ('{name=="a" || name=="b"}', None),
        ('{!(name=="a")}', None),
        ('{name!="a"}', None),
        ("all", None),
        ("12,13", None),
    ],
)
def test_the_condition_a_selector_implies(selector, hint):
    from devices.selectors import SelectorHint, selector_hint

    assert selector_hint(selector) == (SelectorHint(*hint) if hint else None)


def test_membership_found_in_sql_is_what_the_selector_selects(account, make_account):
    """``groups_matching`` (hints, then selectors compiled to SQL) against the ORM's reading of
    each selector, for every device and selector."""
    from devices.selectors import group_members, groups_matching
    from devices.services import device_create, group_create

    devices = [
        device_create(account=account, name=name, configuration={"ident": f"m-{n}"}, metadata=metadata, enabled=enabled)
        for n, (name, metadata, enabled) in enumerate([
            ("truck-1", {"fleet": "north", "n": 1}, True),
            ("truck-2", {"fleet": "south", "a": {"b": "x"}}, True),
            ("van", {"fleet": "north", "n": "1"}, False),
            ("van-2", {}, True),
            ("Truck-3", {"fleet": ["north"]}, True),
        ])
    ]
    other = device_create(account=make_account("other"), name="truck-9", configuration={"ident": "m-other"},
                          metadata={"fleet": "north"})
    selectors = [
        "metadata.fleet=north", "metadata.n=1", "metadata.a.b=x", "name=truck-*", "name=van", "all",
        '{metadata.fleet=="north" && enabled==false}', '{name=="truck*" || metadata.fleet=="south"}',
        '{!enabled}', f"{devices[0].pk},{devices[3].pk}", "enabled=true,metadata.fleet=north", f"cid={account.pk}",
        "metadata.fleet=nor*", "name=*-2",
    ]
    groups = [group_create(account=account, name=f"g{n}", selector=selector) for n, selector in enumerate(selectors)]
    groups.append(group_create(account=account, name="list", devices=[devices[1].pk, devices[4].pk]))
    ids = [device.pk for device in [*devices, other]]
    found = groups_matching(alias=DC, device_ids=ids, group_ids=[group.pk for group in groups])
    expected: dict[int, set[int]] = {device_id: set() for device_id in ids}
    for group in groups:
        for device_id in group_members(group=group).values_list("pk", flat=True):
            expected[device_id].add(group.pk)
    assert found == expected
    names = {group.pk: group.name for group in groups}
    # By hand: a number in metadata reads as its text; a list is not its element; names are
    # case-sensitive; another account's device is in no group.
    assert {names[g] for g in found[devices[0].pk]} == {"g0", "g1", "g3", "g5", "g7", "g9", "g10", "g11", "g12"}
    assert {names[g] for g in found[devices[2].pk]} == {"g0", "g1", "g4", "g5", "g6", "g8", "g11", "g12"}
    assert {names[g] for g in found[devices[4].pk]} == {"g5", "g11", "list"}
    assert {names[g] for g in found[devices[3].pk]} == {"g5", "g9", "g11", "g13"}
    assert found[other.pk] == set()


def test_a_devices_groups_field_lists_the_ids_of_its_groups_now(api, key, make_account, make_token, trucks):
    """``fields=groups`` on a device: explicit and selector groups alike, ascending, ``[]`` for a
    device in none; another account's group with a selector that would match is not listed."""
    one, two, van = trucks
    created = api.call("POST", "/gw/groups", key=key, body=[
        {"name": "north", "selector": "metadata.fleet=north"}, {"name": "picked", "devices": [van.pk, two.pk]},
    ]).json()["result"]
    north, picked = (group["id"] for group in created)
    other_key = make_token(make_account(name="other"))
    assert api.call("POST", "/gw/groups", key=other_key, body=[{"name": "all", "selector": "all"}]).status_code == 200

    def groups() -> dict[int, list[int]]:
        response = api.call("GET", "/gw/devices/all?fields=id,groups", key=key)
        assert response.status_code == 200, response.content
        return {item["id"]: item["groups"] for item in response.json()["result"]}

    assert groups() == {one.pk: [north], two.pk: [picked], van.pk: [north, picked]}
    api.call("PUT", f"/gw/devices/{two.pk}", key=key, body={"metadata": {"fleet": "north"}})
    api.call("DELETE", f"/gw/groups/{picked}/devices/{van.pk}", key=key)
    api.call("PUT", f"/gw/devices/{one.pk}", key=key, body={"metadata": {"fleet": "east"}})
    assert groups() == {one.pk: [], two.pk: [north, picked], van.pk: [north]}
    [item] = api.call("GET", f"/gw/devices/{van.pk}?fields=groups", key=key).json()["result"]
    assert item == {"groups": [north]}
