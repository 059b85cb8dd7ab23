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


@pytest.fixture
def schema(api, platform):
    response = api.call("GET", "/api/schema/?format=json")
    assert response.status_code == 200, response.content
    return response.json()


def test_schema_lists_only_the_methods_each_path_takes(schema):
    for resource in ("/platform/tokens", "/platform/subaccounts", "/gw/devices"):
        assert sorted(schema["paths"][resource]) == ["get", "post"]
        merges = [] if resource == "/platform/tokens" else ["patch"]
        assert sorted(schema["paths"][resource + "/{selector}"]) == ["delete", "get", *merges, "put"]


def test_schema_bodies_are_required_and_strict(schema):
    post = schema["paths"]["/platform/tokens"]["post"]["requestBody"]
    assert post["required"] is True
    components = schema["components"]["schemas"]
    assert components["TokenCreate"]["additionalProperties"] is False
    assert components["SubaccountCreate"]["properties"]["metadata"] == {
        "type": "object",
        "additionalProperties": True,
    }
    assert components["SubaccountCreate"]["properties"]["region"]["minLength"] == 1
    messages = schema["paths"]["/gw/devices/{selector}/messages"]["post"]["requestBody"]
    assert messages["content"]["application/json"]["schema"]["type"] == "array"


def test_schema_documents_the_error_envelope(schema):
    responses = schema["paths"]["/platform/tokens/{selector}"]["delete"]["responses"]
    assert set(responses) == {"200", "307", "4XX"}
    envelope = responses["4XX"]["content"]["application/json"]["schema"]
    assert envelope["required"] == ["errors"]
    assert envelope["properties"]["errors"]["items"]["required"] == ["code", "reason"]


def test_schema_fields_parameter_lists_the_rendered_fields(schema):
    parameters = {p["name"]: p for p in schema["paths"]["/gw/devices"]["get"]["parameters"]}
    pattern = parameters["fields"]["schema"]["pattern"]
    assert re.fullmatch(pattern, "id,name,configuration")
    assert not re.fullmatch(pattern, "id,nope")
