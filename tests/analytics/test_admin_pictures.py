"""The admin's picture endpoints refuse bad input with a 4xx in the API's envelope, naming the
field and the path inside it (the pages themselves are driven in a browser by
tests/browser/test_admin_pictures.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.admin import HOST, fast_password_hashing  # noqa: F401 (an autouse fixture)
from tests.support.calculators import TRIPS

pytestmark = pytest.mark.django_db(databases="__all__")


def post(client, path: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, str) else json.dumps(body)
    response = client.post(path, raw, content_type="application/json", **HOST)
    return response.status_code, response.json()


def problems(body: dict) -> list[str]:
    """The field of each error ("" for the request as a whole)."""
    return [error.get("field", "") for error in body["errors"]]


def test_try_refuses_every_problem_by_field_and_path(admin_client, calculator, device):
    path = f"/admin/analytics/calculator/{calculator.pk}/try/"
    response = admin_client.get(path, **HOST)
    assert response.status_code == 405
    assert response.json() == {
        "errors": [
            {"code": 405, "reason": "POST the configuration, the device and the range"}
        ]
    }
    status, body = post(admin_client, path, "{not json")
    assert status == 400 and problems(body) == [""]
    assert body["errors"][0]["code"] == 400
    assert body["errors"][0]["reason"].startswith("body is not valid JSON: ")
    broken = {**TRIPS, "selectors": [{"type": "expression", "expression": "a >"}], "timezone": "Mars/Olympus"}
    status, body = post(
        admin_client, path, {"configuration": json.dumps(broken), "device": "x", "begin": "soon"}
    )
    assert status == 400
    assert problems(body) == ["configuration.selectors[0].expression", "configuration.timezone", "device", "begin"]
    assert body["errors"][0]["reason"].startswith("configuration.selectors[0].expression: unexpected end")
    assert body["errors"][2:] == [
        {"code": 400, "reason": "device: choose a device (its id)", "field": "device"},
        {
            "code": 400,
            "reason": "begin: 'soon' is neither unix seconds nor a UTC date and time (2019-02-18T07:45)",
            "field": "begin",
        },
    ]
    status, body = post(admin_client, path, {"configuration": "[1]", "device": 999999999})
    assert status == 400 and problems(body) == ["configuration", "device"]
    assert [error["reason"] for error in body["errors"]] == [
        "configuration: the configuration is a JSON object",
        "device: no device 999999999",
    ]
    status, body = post(
        admin_client, path, {"configuration": json.dumps(TRIPS), "device": device.pk, "begin": 10, "end": 5}
    )
    assert status == 400 and problems(body) == ["begin"]
    status, body = post(admin_client, "/admin/analytics/calculator/424242/try/", {})
    assert status == 404
    assert body == {
        "errors": [{"code": 404, "reason": "no calculator 424242", "field": "calculator"}]
    }


def test_try_calculates_without_storing(admin_client, calculator, device):
    from devices.services import messages_ingest

    messages_ingest(
        devices=[device],
        messages=[{"timestamp": 1000.0 + i, "position.speed": 50.0 if i < 60 else 0.0} for i in range(100)],
    )
    status, body = post(
        admin_client,
        "/admin/analytics/calculator/try/",
        {"configuration": json.dumps(TRIPS), "device": str(device.pk)},
    )
    assert status == 200, body
    assert (body["device"], body["begin"], body["end"]) == (
        device.pk,
        0.0,
        1099.0,
    )  # the day up to the newest
    assert [(i["begin"], i["end"]) for i in body["intervals"]] == [(1000.0, 1059.0)]
    assert body["stored"] is None  # the add page: no saved calculator to compare with


def test_an_interval_that_is_not_there_is_a_404(admin_client, assignment):
    response = admin_client.get(f"/admin/analytics/assignment/{assignment.pk}/interval/123/", **HOST)
    assert response.status_code == 404
    assert response.json() == {
        "errors": [
            {
                "code": 404,
                "reason": f"assignment {assignment.pk} has no interval 123",
                "field": "interval",
            }
        ]
    }
    response = admin_client.get("/admin/analytics/assignment/99999/interval/123/", **HOST)
    assert response.status_code == 404 and problems(response.json()) == ["assignment"]


def test_a_bad_timeline_range_is_a_400_naming_the_field(admin_client, assignment):
    response = admin_client.get(
        f"/admin/analytics/assignment/{assignment.pk}/change/?from=2019-13-01", **HOST
    )
    assert response.status_code == 400
    assert "from: &#x27;2019-13-01&#x27; is not a date" in response.content.decode()
    response = admin_client.get(
        f"/admin/analytics/assignment/{assignment.pk}/change/?from=2019-01-01&to=2019-06-01", **HOST
    )
    assert response.status_code == 400 and "at most 62 days" in response.content.decode()


def test_try_refuses_as_the_api_refuses(admin_client, calculator, device):
    path = f"/admin/analytics/calculator/{calculator.pk}/try/"
    status, body = post(admin_client, path, [1])
    assert (status, body) == (400, {"errors": [{"code": 400, "reason": "must be a JSON object"}]})
    status, body = post(admin_client, path, {"configuration": {**TRIPS, "name": "a\x00"}, "device": device.pk})
    assert status == 400 and problems(body) == ["configuration"]
    assert body["errors"][0]["reason"].startswith("configuration: must not contain NUL characters")
    status, body = post(admin_client, path, {"configuration": json.dumps(TRIPS), "device": device.pk, "extra": 1})
    assert status == 400 and problems(body) == ["extra"]
    # The on-demand calculation's own limits, as the API answers them.
    status, body = post(
        admin_client, path, {"configuration": json.dumps(TRIPS), "device": device.pk, "begin": 0, "end": 400 * 86400}
    )
    assert status == 400 and problems(body) == ["end"]
    assert "for one on-demand calculation" in body["errors"][0]["reason"]
