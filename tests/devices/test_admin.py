"""The device admin: a read-only list per datacenter, deleting through the service."""

from __future__ import annotations

import pytest
from django.db import connections

from tests.support.admin import HOST, fast_password_hashing, page_queries  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def far_device(make_account):
    from devices.services import device_create

    far = make_account("far", datacenter="eu-2")
    return device_create(account=far, name="far truck", configuration={"ident": "352625690000099"})


@pytest.mark.parametrize(
    "path",
    [
        "/admin/devices/device/",
        "/admin/devices/device/?datacenter=eu-2",
        "/admin/devices/device/?q=352625690000001",
        "/admin/devices/device/{device}/change/",
        "/admin/devices/device/{far}/change/",
        "/admin/devices/device/{device}/delete/",
    ],
)
def test_pages_load(admin_client, device, far_device, path):
    response = admin_client.get(path.format(device=device.pk, far=far_device.pk), **HOST)
    assert response.status_code == 200, response.content.decode()[:2000]


def test_list_per_datacenter_with_its_columns(admin_client, device, far_device, account):
    first = admin_client.get("/admin/devices/device/", **HOST).content.decode()
    assert "truck 1" in first and "352625690000001" in first and "far truck" not in first
    assert f"fleet #{account.pk}" in first
    assert f'<td class="field-shard">{device.shard}</td>' in first
    second = admin_client.get("/admin/devices/device/?datacenter=eu-2", **HOST).content.decode()
    assert "far truck" in second and "352625690000099" in second and "truck 1" not in second


def test_read_only(admin_client, device):
    from devices.models import Device

    assert admin_client.get("/admin/devices/device/add/", **HOST).status_code == 403
    response = admin_client.post(f"/admin/devices/device/{device.pk}/change/", {"name": "renamed"}, **HOST)
    assert response.status_code == 403
    assert Device.objects.using(device.database).get(pk=device.pk).name == "truck 1"


def _traces(device) -> tuple[int, int, int]:
    from devices.models import Device, DeviceIdent

    with connections[device.database].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM messages WHERE device_id = %s", [device.pk])
        messages = cursor.fetchone()[0]
    return (
        Device.objects.using(device.database).filter(pk=device.pk).count(),
        DeviceIdent.objects.filter(device_id=device.pk).count(),
        messages,
    )


def test_delete_goes_through_the_service(admin_client, device, far_device):
    from devices.services import messages_ingest

    messages_ingest(devices=[device], messages=[{"timestamp": 100.0, "speed": 5}])
    assert _traces(device) == (1, 1, 1)
    page = admin_client.get(f"/admin/devices/device/{device.pk}/delete/", **HOST).content.decode()
    assert "truck 1" in page
    response = admin_client.post(f"/admin/devices/device/{device.pk}/delete/", {"post": "yes"}, **HOST)
    assert response.status_code == 302
    # The ident claim and the messages go with it.
    assert _traces(device) == (0, 0, 0)
    response = admin_client.post(
        "/admin/devices/device/?datacenter=eu-2",
        {"action": "delete_selected", "_selected_action": [far_device.pk], "post": "yes"},
        **HOST,
    )
    assert response.status_code == 302
    assert _traces(far_device) == (0, 0, 0)


def test_changelist_query_count_does_not_grow_with_rows(admin_client, device, make_account):
    from devices.services import device_create

    few = page_queries(admin_client, "/admin/devices/device/")
    for number in range(5):
        owner = make_account(f"owner {number}")
        device_create(account=owner, name=f"van {number}", configuration={"ident": f"35262569000010{number}"})
    assert page_queries(admin_client, "/admin/devices/device/") == few == {"default": 3, "dc_eu_1": 3}
