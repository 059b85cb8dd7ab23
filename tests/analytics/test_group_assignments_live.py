"""Calculators assigned to groups, live: a real calc worker computes the intervals of a device that
joined a group after its calculator was assigned to the group; concurrent membership changes of
one device, released together on a barrier against a live server, leave its assignments what its
final membership says."""

from __future__ import annotations

import time

import pytest

from tests.support.fleet import Fleet
from tests.support.waiting import wait_until
from tests.test_concurrent_writes import Server, race

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DC = "dc_eu_1"
ROUNDS = 4
T0 = float(int(time.time()) - 300)
TRIPS = {
    "name": "trips",
    "selectors": [{"type": "expression", "expression": "position.speed > 5"}],
    "counters": [{"name": "count", "type": "expression", "expression": "1", "method": "summary"}],
    "update_delay": 0,
}


@pytest.fixture
def fleet(tmp_path, platform):
    running = Fleet(tmp_path).start_all()
    yield running
    running.stop()


def test_a_device_that_joins_an_assigned_group_gets_its_intervals_computed(fleet, make_account):
    from analytics.models import Assignment
    from analytics.selectors import intervals_of
    from analytics.services import calculator_create, group_assignment_create
    from devices.services import device_create, group_create, group_members_add, messages_ingest

    account = make_account("fleet")
    calculator = calculator_create(account=account, config=TRIPS)
    group = group_create(account=account, name="pool")
    group_assignment_create(calculator=calculator, group=group)
    device = device_create(account=account, configuration={"ident": "grp-fleet-1"})
    # Two trips: moving at 0..20 s, stopped at 30 s, moving at 40..50 s.
    speeds = {0: 50.0, 10: 50.0, 20: 50.0, 30: 0.0, 40: 50.0, 50: 50.0}
    messages_ingest(devices=[device], messages=[{"timestamp": T0 + t, "position.speed": v} for t, v in speeds.items()])
    assert not Assignment.objects.using(DC).filter(device_id=device.pk).exists()

    group_members_add(group=group, devices=[device])

    assignment = Assignment.objects.using(DC).get(calculator_id=calculator.pk, device_id=device.pk)
    assert assignment.by_hand is False
    wait_until(lambda: Assignment.objects.using(DC).get(pk=assignment.pk).synced, what="synced", timeout=60)
    intervals = intervals_of(assignments=[assignment])
    assert [(iv["begin"], iv["end"], iv["count"]) for iv in intervals] == [
        (T0, T0 + 20, 3), (T0 + 40, T0 + 50, 2),
    ]


def _expected_calcs(device_id: int) -> set[int]:
    """The calculators whose groups hold the device now (from the committed state)."""
    from analytics.models import GroupAssignment
    from devices.models import Group
    from devices.selectors import groups_matching

    groups = list(Group.objects.using(DC).values_list("pk", flat=True))
    holding = groups_matching(alias=DC, device_ids=[device_id], group_ids=groups)[device_id]
    return set(GroupAssignment.objects.using(DC).filter(group_id__in=holding).values_list("calculator_id", flat=True))


def _assigned_calcs(device_id: int) -> set[int]:
    from analytics.models import Assignment

    return set(Assignment.objects.using(DC).filter(device_id=device_id).values_list("calculator_id", flat=True))


@pytest.fixture
def server(live_server, root, root_key):
    return Server(live_server.url, root_key)


@pytest.fixture
def setup(root):
    """Calculators ``north``, ``south`` and ``pool``, each assigned to the group of its name (two
    selector groups on metadata.fleet, one explicit group), and a device."""
    from analytics.services import calculator_create, group_assignment_create
    from devices.services import device_create, group_create

    calcs = {}
    for name, fields in (("north", {"selector": "metadata.fleet=north"}), ("south", {"selector": "metadata.fleet=south"}),
                         ("pool", {})):
        calcs[name] = calculator_create(account=root, config={**TRIPS, "name": name})
        group = group_create(account=root, name=name, **fields)
        group_assignment_create(calculator=calcs[name], group=group)
    device = device_create(account=root, configuration={"ident": "grp-race"}, metadata={"fleet": "north"})
    return calcs, device


def test_concurrent_changes_of_one_devices_membership_leave_its_assignments_consistent(server, root, setup):
    from devices.models import Group

    calcs, device = setup
    pool = Group.objects.using(DC).get(name="pool")
    base = f"/gw/devices/{device.pk}"
    for round_ in range(ROUNDS):
        fleets = ("north", "south") if round_ % 2 else ("south", "north")
        answers = race([
            lambda fleets=fleets: server.call("PUT", base, {"metadata": {"fleet": fleets[0]}}),
            lambda fleets=fleets: server.call("PUT", base, {"metadata": {"fleet": fleets[1]}}),
            lambda: server.call("POST", f"/gw/groups/{pool.pk}/devices/{device.pk}"),
            lambda: server.call("DELETE", f"/gw/groups/{pool.pk}/devices/{device.pk}"),
        ])
        assert all(status in (200, 404) for status, _body in answers), answers
        expected = _expected_calcs(device.pk)
        assert _assigned_calcs(device.pk) == expected, f"round {round_}: {answers}"
        assert calcs["pool"].pk in expected or calcs["north"].pk in expected or calcs["south"].pk in expected


def test_a_membership_change_racing_a_group_change_is_never_missed(server, root, setup):
    from devices.models import Group

    calcs, device = setup
    north = Group.objects.using(DC).get(name="north")
    pool = Group.objects.using(DC).get(name="pool")
    for round_ in range(ROUNDS):
        # The group's calculator unassigned and assigned again, its selector changed, while the
        # device changes and joins the explicit group.
        answers = race([
            lambda round_=round_: server.call("PUT", f"/gw/devices/{device.pk}", {"metadata": {"fleet": "north", "round": round_}}),
            lambda: server.call("DELETE", f"/gw/calcs/{calcs['north'].pk}/groups/{north.pk}"),
            lambda round_=round_: server.call("PUT", f"/gw/groups/{north.pk}", {"selector": f"metadata.round={round_}"}),
            lambda: server.call("POST", f"/gw/groups/{pool.pk}/devices/{device.pk}"),
        ])
        assert all(status in (200, 404) for status, _body in answers), answers
        assert _assigned_calcs(device.pk) == _expected_calcs(device.pk), f"round {round_}: {answers}"
        answers = race([
            lambda: server.call("POST", f"/gw/calcs/{calcs['north'].pk}/groups/{north.pk}"),
            lambda: server.call("DELETE", f"/gw/groups/{pool.pk}/devices/{device.pk}"),
            lambda round_=round_: server.call("PUT", f"/gw/devices/{device.pk}", {"metadata": {"fleet": "south", "round": round_}}),
        ])
        assert all(status == 200 for status, _body in answers), answers
        assert _assigned_calcs(device.pk) == _expected_calcs(device.pk), f"round {round_}: {answers}"


def test_a_device_joining_while_its_group_is_assigned_is_assigned(server, root, setup):
    from analytics.models import GroupAssignment
    from devices.models import Group

    calcs, device = setup
    pool = Group.objects.using(DC).get(name="pool")
    link = f"/gw/calcs/{calcs['pool'].pk}/groups/{pool.pk}"
    member = f"/gw/groups/{pool.pk}/devices/{device.pk}"
    for round_ in range(ROUNDS * 3):
        server.call("DELETE", link)
        server.call("DELETE", member)
        assert calcs["pool"].pk not in _assigned_calcs(device.pk)
        # Each reads what the other writes: the group's calculators, the group's members.
        answers = race([lambda: server.call("POST", link), lambda: server.call("POST", member)])
        assert [status for status, _body in answers] == [200, 200], answers
        assert GroupAssignment.objects.using(DC).filter(calculator_id=calcs["pool"].pk).exists()
        assert calcs["pool"].pk in _assigned_calcs(device.pk), f"round {round_}"


def test_patches_racing_a_group_assign_neither_deadlock_nor_miss(server, root, setup):
    """A PATCH locks its row to merge into it: the device's and the group's PATCH take the groups
    lock first, as every other membership change, or one of them and the group's assign (which
    waits for the device's row to assign it) would wait for each other."""
    from devices.models import Group

    calcs, device = setup
    pool = Group.objects.using(DC).get(name="pool")
    server.call("POST", f"/gw/groups/{pool.pk}/devices/{device.pk}")
    link = f"/gw/calcs/{calcs['pool'].pk}/groups/{pool.pk}"
    for round_ in range(ROUNDS * 2):
        server.call("DELETE", link)
        answers = race([
            lambda round_=round_: server.call("PATCH", f"/gw/devices/{device.pk}", {"metadata": {"round": round_}}),
            lambda: server.call("POST", link),
            lambda round_=round_: server.call("PATCH", f"/gw/groups/{pool.pk}", {"metadata": {"round": round_}}),
        ])
        assert [status for status, _body in answers] == [200, 200, 200], answers
        assert calcs["pool"].pk in _assigned_calcs(device.pk)
        assert _assigned_calcs(device.pk) == _expected_calcs(device.pk), f"round {round_}"
