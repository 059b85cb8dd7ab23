"""OpenAPI schema and the offline docs UI."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db(databases="__all__")


def test_schema_lists_the_platform_endpoints(api, platform):
    response = api.call("GET", "/api/schema/?format=json")
    assert response.status_code == 200, response.content
    schema = response.json()
    for path in (
        "/platform/tokens",
        "/platform/tokens/{selector}",
        "/platform/subaccounts",
        "/platform/customer",
        "/auth/regions",
        "/auth/info",
    ):
        assert path in schema["paths"], path
    assert set(schema["paths"]["/platform/tokens"]) >= {"get", "post"}
    assert set(schema["paths"]["/platform/tokens/{selector}"]) >= {"get", "put", "delete"}
    assert schema["components"]["securitySchemes"]["FlespiToken"]["name"] == "Authorization"


def test_schema_yaml_mentions_tokens(api, platform):
    response = api.call("GET", "/api/schema/")
    assert response.status_code == 200
    assert b"/platform/tokens" in response.content


def test_docs_ui_uses_local_assets(api, platform):
    response = api.call("GET", "/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    scripts = re.findall(r'src="([^"]+)"', html) + re.findall(r'href="([^"]+)"', html)
    assert scripts, html
    # Sidecar assets are served by the platform itself: nothing is fetched from the network.
    assert not [url for url in scripts if url.startswith(("http://", "https://", "//"))], scripts
    assert any("swagger-ui" in url for url in scripts), scripts
