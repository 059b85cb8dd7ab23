"""The admin's group pages: the list (how each group holds its devices, how many, its
calculators), a group's page with its members and calculators linked, and a deletion through
the services (the group's members leave it, its calculators' automatic assignments go)."""

from __future__ import annotations

import re

import pytest

from tests.support.admin import HOST, fast_password_hashing  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def fleet(account, calculator):
    from analytics.services import group_assignment_create
    from devices.services import device_create, group_create

    trucks = [device_create(account=account, name=f"truck-{n}", configuration={"ident": f"ag-{n}"},
                            metadata={"fleet": "north" if n < 2 else "south"}) for n in range(3)]
    north = group_create(account=account, name="north", selector="metadata.fleet=north")
    picked = group_create(account=account, name="picked", devices=[trucks[2].pk])
    group_assignment_create(calculator=calculator, group=north)
    return trucks, north, picked


def test_list_and_page_show_members_and_calculators(admin_client, account, calculator, fleet):
    trucks, north, picked = fleet
    html = admin_client.get("/admin/devices/group/", **HOST).content.decode()
    rows = re.findall(r'<tr>.*?</tr>', html, re.S)
    cells = {name: re.sub(r"<[^>]+>", "|", row) for row in rows for name in ("north", "picked") if f">{name}<" in row}
    assert "selector metadata.fleet=north" in cells["north"] and "|2|" in cells["north"]
    assert str(calculator) in cells["north"]
    assert "member list" in cells["picked"] and "|1|" in cells["picked"] and "none" in cells["picked"]
    html = admin_client.get(f"/admin/devices/group/{north.pk}/change/", **HOST).content.decode()
    assert re.findall(r'class="group-member" href="[^"]+">([^<]+)</a>', html) == [str(trucks[0]), str(trucks[1])]
    assert re.findall(r'class="group-calculator" href="[^"]+">([^<]+)</a>', html) == [str(calculator)]
    html = admin_client.get(f"/admin/devices/group/{picked.pk}/change/", **HOST).content.decode()
    assert re.findall(r'class="group-member" href="[^"]+">([^<]+)</a>', html) == [str(trucks[2])]


def test_delete_goes_through_the_services(admin_client, account, calculator, fleet):
    from analytics.models import Assignment, GroupAssignment
    from devices.models import Group

    _trucks, north, _picked = fleet
    alias = north.database
    assert Assignment.objects.using(alias).filter(calculator=calculator).count() == 2
    response = admin_client.post(f"/admin/devices/group/{north.pk}/delete/", {"post": "yes"}, **HOST)
    assert response.status_code == 302
    assert not Group.objects.using(alias).filter(pk=north.pk).exists()
    assert not GroupAssignment.objects.using(alias).filter(group_id=north.pk).exists()
    assert not Assignment.objects.using(alias).filter(calculator=calculator).exists()
