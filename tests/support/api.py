"""Assertions on the API's envelope."""

from __future__ import annotations

# flespi's error item (flespi-sdk's FlespiError takes exactly these keys and fails on others).
ERROR_ITEM_KEYS = {"code", "reason", "id", "selector", "field"}


def errors_of(response, status: int) -> list[dict]:
    """The ``errors`` of a failed response, after checking its status and shape."""
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    assert body["errors"], body
    for error in body["errors"]:
        assert isinstance(error["reason"], str) and error["reason"], error
        assert isinstance(error["code"], int) and set(error) <= ERROR_ITEM_KEYS, error
    return body["errors"]


def reasons(response, status: int) -> str:
    """Every reason of a failed response joined in one string, to look for what and where."""
    return " | ".join(error["reason"] for error in errors_of(response, status))


def result_of(response, status: int = 200) -> list[dict]:
    """The ``result`` of a successful response, after checking its status and that it has no errors."""
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    assert "errors" not in body, body
    return body["result"]
