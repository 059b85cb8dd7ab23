"""Region routing by host: the central point (an alias of the default region) and regional hosts,
redirects with a body and a header, and service on the right host."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest
from django.conf import settings

from accounts.models import Account
from regions.selectors import region_for_host
from tests.support.api import result_of

pytestmark = pytest.mark.django_db(databases="__all__")

# http://localhost:8000 (the default region, the central point) and http://ru.localhost:8000
# unless PORT or REST_URL_<CODE> say otherwise.
EU_URL = settings.TOPOLOGY.region("eu").rest_url
RU_URL = settings.TOPOLOGY.region("ru").rest_url


@pytest.fixture
def ru_account(root, make_account):
    return make_account("ru", parent=root, region="ru")


@pytest.fixture
def ru_key(ru_account, make_token):
    return make_token(ru_account)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", ("eu", True)),
        ("localhost:8000", ("eu", True)),
        ("eu.localhost", ("eu", False)),
        ("eu.localhost:8000", ("eu", False)),
        ("ru.localhost", ("ru", False)),
        ("RU.LocalHost:1234", ("ru", False)),
        ("us.localhost", ("eu", True)),
        ("127.0.0.1:8000", ("eu", True)),
        ("[::1]:8000", ("eu", True)),
    ],
)
def test_region_for_host(host, expected):
    assert region_for_host(host=host) == expected


def assert_redirect(response, *, region: str, url: str, location: str, account_id: int) -> None:
    assert response.status_code == 307, response.content
    assert response["Location"] == location
    assert response["X-Flespi-Region"] == region
    assert response["X-Flespi-Region-Url"] == url
    body = response.json()
    assert (body["region"], body["url"]) == (region, url)
    assert body["errors"] == [
        {
            "code": 307,
            "reason": f"account {account_id} lives in region {region}: send requests to {url}",
        }
    ]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "eu.localhost", "eu.localhost:8000"])
def test_ru_account_outside_ru_is_redirected_with_path_and_query(api, ru_account, ru_key, host):
    response = api.call("GET", "/platform/customer?fields=id,region", key=ru_key, host=host)
    assert_redirect(
        response,
        region="ru",
        url=RU_URL,
        location=RU_URL + "/platform/customer?fields=id,region",
        account_id=ru_account.pk,
    )


@pytest.mark.parametrize("host", ["ru.localhost", "ru.localhost:8000"])
def test_ru_account_is_served_on_ru(api, ru_account, ru_key, host):
    assert result_of(api.call("GET", "/platform/customer?fields=id,region", key=ru_key, host=host)) == [
        {"id": ru_account.pk, "region": "ru"}
    ]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "eu.localhost", "eu.localhost:8000"])
def test_eu_account_is_served_on_central_and_eu(api, root, root_key, host):
    assert result_of(api.call("GET", "/auth/info", key=root_key, host=host))[0]["cid"] == root.pk


@pytest.mark.parametrize("host", ["ru.localhost", "ru.localhost:8000"])
def test_eu_account_on_ru_is_redirected_to_eu(api, root, root_key, host):
    response = api.call("GET", "/platform/tokens/all?fields=id", key=root_key, host=host)
    assert_redirect(
        response,
        region="eu",
        url=EU_URL,
        location=EU_URL + "/platform/tokens/all?fields=id",
        account_id=root.pk,
    )


def test_a_write_on_the_wrong_host_is_redirected_and_not_done(api, ru_account, ru_key):
    response = api.call("POST", "/platform/subaccounts", key=ru_key, body=[{"name": "sub"}], host="localhost")
    assert response.status_code == 307
    assert response["Location"] == RU_URL + "/platform/subaccounts"
    assert not Account.objects.filter(name="sub").exists()


def test_cid_of_a_ru_subaccount_on_central_host_is_redirected(api, root_key, ru_account):
    response = api.call("GET", "/platform/customer", key=root_key, cid=ru_account.pk, host="localhost:8000")
    assert_redirect(
        response, region="ru", url=RU_URL, location=RU_URL + "/platform/customer", account_id=ru_account.pk
    )
    result = result_of(
        api.call("GET", "/platform/customer", key=root_key, cid=ru_account.pk, host="ru.localhost")
    )
    assert [(a["id"], a["region"]) for a in result] == [(ru_account.pk, "ru")]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "eu.localhost", "ru.localhost:8000"])
def test_auth_regions_needs_no_token_on_any_host(api, platform, host):
    mqtt = {region.code: region.mqtt_url for region in settings.TOPOLOGY.regions}
    address = {code: url.split("://", 1)[1].rstrip("/") for code, url in mqtt.items()}
    ws = getattr(settings, "MQTT_WS_URLS", {})
    assert result_of(api.call("GET", "/auth/regions", host=host)) == [
        {
            "region": "eu",
            "code": "eu",
            "default": True,
            "rest": EU_URL,
            "mqtt": address["eu"],
            "mqtt-ws": ws.get("eu"),
            "mqtt_url": mqtt["eu"],
            "datacenters": ["eu-1", "eu-2"],
        },
        {
            "region": "ru",
            "code": "ru",
            "default": False,
            "rest": RU_URL,
            "mqtt": address["ru"],
            "mqtt-ws": ws.get("ru"),
            "mqtt_url": mqtt["ru"],
            "datacenters": ["ru-1"],
        },
    ]


def test_auth_regions_ignores_a_bad_token(api, platform):
    response = api.call("GET", "/auth/regions", key="not-a-token", host="ru.localhost")
    assert response.status_code == 200


def test_redirect_keeps_an_encoded_path_and_query(api, ru_account, ru_key):
    response = api.call("GET", "/platform/tokens/info=a%3Fc,info=%D1%8F*?fields=id&data=%7B%7D", key=ru_key)
    assert response.status_code == 307
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}" == RU_URL
    # Django re-quotes the path ("=" may become %3D): the same path once decoded, "?" still quoted.
    assert location.path.startswith("/platform/tokens/info")
    assert unquote(location.path) == "/platform/tokens/info=a?c,info=я*"
    assert location.query == "fields=id&data=%7B%7D"


def test_authentication_comes_before_the_redirect(api, ru_account, make_token):
    # A bad token is a 401 on any host: the redirect never tells a stranger where an account lives.
    assert api.call("GET", "/platform/customer", key="wrong", host="localhost").status_code == 401
    standard = make_token(ru_account, master=False)
    assert api.call("GET", "/platform/customer", key=standard, host="localhost").status_code == 403
    assert api.call("GET", "/auth/info", key=standard, host="localhost").status_code == 307
