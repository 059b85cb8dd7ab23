"""A process that serves one region, and accounts whose region or datacenter left the
configuration: a redirect or a 4xx that says what to do, nothing half done, never a 500."""

from __future__ import annotations

import dataclasses

import pytest
from django.conf import settings as django_settings

from accounts import placement
from accounts.models import Account, Token
from accounts.services import account_create
from regions.selectors import region_for_host
from tests.support.api import errors_of, result_of

pytestmark = pytest.mark.django_db(databases="__all__")

EU_URL = django_settings.TOPOLOGY.region("eu").rest_url
RU_URL = django_settings.TOPOLOGY.region("ru").rest_url


def serve_only(settings, region: str) -> None:
    """This process serves ``region`` (production: only that region's databases configured)."""
    settings.SERVED_REGION = region


def without_region(settings, code: str) -> None:
    topology = settings.TOPOLOGY
    settings.TOPOLOGY = dataclasses.replace(topology, regions=tuple(r for r in topology.regions if r.code != code))


def without_datacenter(settings, code: str) -> None:
    topology = settings.TOPOLOGY
    settings.TOPOLOGY = dataclasses.replace(
        topology,
        regions=tuple(
            dataclasses.replace(r, datacenters=tuple(dc for dc in r.datacenters if dc.code != code))
            for r in topology.regions
        ),
    )


def names():
    return sorted(Account.objects.values_list("name", flat=True))


@pytest.fixture
def ru_child(root, make_account):
    child = make_account("ru-child", parent=root, region="ru")
    make_account("ru-grandchild", parent=child)
    return child


def test_a_one_region_process_is_its_region_whatever_the_host(settings, platform):
    settings.SERVED_REGION = "eu"
    assert region_for_host(host="ru.localhost:8000") == ("eu", False)
    assert region_for_host(host="localhost") == ("eu", False)


def test_eu_process_redirects_the_delete_of_a_ru_subaccount_to_ru(api, settings, root_key, ru_child):
    serve_only(settings, "eu")
    response = api.call("DELETE", f"/platform/subaccounts/{ru_child.pk}", key=root_key, host="eu.localhost")
    assert response.status_code == 307, response.content
    assert response["Location"] == f"{RU_URL}/platform/subaccounts/{ru_child.pk}"
    assert response.json()["errors"] == [
        {
            "code": 307,
            "reason": f"account {ru_child.pk} lives in region ru: send requests to {RU_URL}",
        }
    ]
    assert names() == ["root", "ru-child", "ru-grandchild"]


def test_ru_process_deletes_a_ru_subaccount_for_an_eu_root(api, settings, root_key, ru_child):
    from devices.models import Device

    Device(account_id=ru_child.pk, ident="ru-dev", shard=0, created=0.0).save()
    serve_only(settings, "ru")
    assert result_of(
        api.call("DELETE", f"/platform/subaccounts/{ru_child.pk}", key=root_key, host="ru.localhost")
    ) == [{"id": ru_child.pk}]
    assert names() == ["root"]
    assert not Device.objects.using("dc_ru_1").filter(ident="ru-dev").exists()


def test_ru_process_still_redirects_other_requests_of_an_eu_root(api, settings, root, root_key, ru_child):
    serve_only(settings, "ru")
    for method, path in [("GET", f"/platform/subaccounts/{ru_child.pk}"), ("DELETE", "/platform/tokens/all")]:
        response = api.call(method, path, key=root_key, host="ru.localhost")
        assert response.status_code == 307, (method, path)
        assert response["Location"] == EU_URL + path
    assert Token.objects.count() == 1


def test_eu_process_deletes_what_it_reaches_and_names_the_rest(api, settings, root, root_key, ru_child, make_account):
    eu_child = make_account("eu-child", parent=root)
    serve_only(settings, "eu")
    response = api.call("DELETE", f"/platform/subaccounts/parent_id={root.pk}", key=root_key, host="eu.localhost")
    assert response.status_code == 200
    assert response.json() == {
        "result": [{"id": eu_child.pk}],
        "errors": [
            {
                "code": 421,
                "reason": f"datacenter ru-1 is in region ru, which this server (region eu) does not serve: "
                f"send the request to {RU_URL}",
                "id": ru_child.pk,
            }
        ],
    }
    assert names() == ["root", "ru-child", "ru-grandchild"]


def test_eu_process_updates_a_ru_subaccount(api, settings, root_key, ru_child):
    # Only control rows change: the account's own region serves it.
    serve_only(settings, "eu")
    result = result_of(
        api.call("PUT", f"/platform/subaccounts/{ru_child.pk}", key=root_key, body={"name": "renamed"})
    )
    assert [(item["id"], item["name"]) for item in result] == [(ru_child.pk, "renamed")]


@pytest.fixture
def ru_key(ru_child, make_token):
    return make_token(ru_child)


@pytest.mark.parametrize("host", ["localhost", "ru.localhost"])
@pytest.mark.parametrize("path", ["/auth/info", "/gw/devices/all", "/platform/subaccounts/all"])
def test_an_account_of_a_region_gone_from_the_configuration(api, settings, ru_child, ru_key, host, path):
    without_region(settings, "ru")
    assert errors_of(api.call("GET", path, key=ru_key, host=host), 409) == [
        {
            "code": 409,
            "reason": f"account {ru_child.pk} lives in region ru, which is not in the platform's configuration "
            "(FLESPI_TOPOLOGY): an operator must add the region back and run `manage.py platform_setup` "
            "before the account can be used",
        }
    ]


def test_a_subaccount_of_a_region_gone_from_the_configuration_is_not_deleted(api, settings, root_key, ru_child):
    without_region(settings, "ru")
    errors = errors_of(api.call("DELETE", f"/platform/subaccounts/{ru_child.pk}", key=root_key), 409)
    assert errors == [
        {
            "code": 409,
            "reason": "datacenter ru-1 is not in the platform's configuration (FLESPI_TOPOLOGY); the data of "
            "its accounts is unreachable until an operator adds it back and runs `manage.py platform_setup`",
            "id": ru_child.pk,
        }
    ]
    assert names() == ["root", "ru-child", "ru-grandchild"]


def test_no_account_is_placed_in_a_region_gone_from_the_configuration(api, settings, root, root_key, ru_child):
    without_region(settings, "ru")
    response = api.call("POST", "/platform/subaccounts", key=root_key, body=[{"name": "new", "region": "ru"}])
    assert errors_of(response, 400)[0]["reason"] == "unknown region 'ru'; regions: eu"
    response = api.call(
        "POST", "/platform/subaccounts", key=root_key, body=[{"name": "new", "parent_id": ru_child.pk}]
    )
    assert "is not in the platform's configuration" in errors_of(response, 409)[0]["reason"]
    assert names() == ["root", "ru-child", "ru-grandchild"]


def test_an_account_of_a_datacenter_gone_from_the_configuration(api, settings, root, root_key, make_account):
    eu2 = make_account("eu2", parent=root, datacenter="eu-2")
    without_datacenter(settings, "eu-2")
    placement.forget_all()
    errors = errors_of(api.call("GET", "/gw/devices/all", key=root_key, cid=eu2.pk), 409)
    assert [(error["code"], "eu-2" in error["reason"]) for error in errors] == [(409, True)]
    # Control data stays reachable.
    assert result_of(api.call("GET", "/platform/customer?fields=id", key=root_key, cid=eu2.pk)) == [{"id": eu2.pk}]
    response = api.call("POST", "/platform/subaccounts", key=root_key, body=[{"name": "x", "datacenter": "eu-2"}])
    assert errors_of(response, 400)[0]["reason"] == "unknown datacenter 'eu-2'; datacenters of region eu: eu-1"
    # A new account under it goes to the region's default datacenter, which is configured.
    assert account_create(name="y", parent=eu2).datacenter.code == "eu-1"
