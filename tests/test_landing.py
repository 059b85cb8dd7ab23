"""The page at ``/``: HTML for a browser, the JSON envelope's 404 for API clients."""

from __future__ import annotations

import pytest

from flespi_site.landing import readme_curl_examples

pytestmark = pytest.mark.django_db(databases="__all__")

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def test_a_browser_gets_the_page_with_its_links(client, platform):
    response = client.get("/", HTTP_ACCEPT=BROWSER_ACCEPT)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "<h1>Telematics platform</h1>" in page
    for href in ('href="/admin/"', 'href="/api/docs/"', 'href="/auth/regions"', 'href="#examples"'):
        assert href in page
    # the README's curl examples, escaped as HTML
    assert "curl -H &quot;Authorization: FlespiToken $KEY&quot;" in page
    assert "/gw/devices/all/telemetry" in page


def test_the_links_answer(client, platform):
    assert client.get("/admin/").status_code == 302  # to the login page
    assert client.get("/admin/login/").status_code == 200
    assert client.get("/api/docs/").status_code == 200
    regions = client.get("/auth/regions")
    assert regions.status_code == 200
    assert [region["code"] for region in regions.json()["result"]] == ["eu", "ru"]


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/json, text/html;q=0.5", "text/plain"]
)
def test_api_clients_keep_the_json_404(client, accept):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    response = client.get("/", **headers)
    assert response.status_code == 404
    assert response.json() == {"errors": [{"code": 404, "reason": "no endpoint at /"}]}


def test_other_methods_keep_the_json_404(client):
    response = client.post("/", data="[]", content_type="application/json", HTTP_ACCEPT=BROWSER_ACCEPT)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == 404


def test_the_examples_are_the_readme_blocks_with_curl():
    examples = readme_curl_examples()
    assert len(examples) >= 1
    assert all("curl " in block for block in examples)
