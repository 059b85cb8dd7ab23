import pytest

pytestmark = pytest.mark.django_db(databases="__all__")


def test_post_and_read(device, key, api):
    response = api.call("POST", f"/gw/devices/{device.pk}/messages", key=key,
                        body=[{"timestamp": 1700000000, "position.speed": 10}, {"timestamp": "2023-11-14T22:13:21Z", "x": 1}, {"x": 2}])
    assert response.status_code == 200, response.content
    assert response.json()["errors"][0]["field"] == "[2]"
    response = api.call("GET", f"/gw/devices/{device.pk}/messages", key=key)
    assert [m["timestamp"] for m in response.json()["result"]] == [1700000000.0, 1700000001.0]
    response = api.call("GET", f"/gw/devices/{device.pk}/telemetry", key=key)
    assert response.json()["result"][0]["telemetry"]["x"] == {"value": 1, "ts": 1700000001.0}
