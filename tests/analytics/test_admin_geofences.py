"""The admin's geofence pages: the list with its zones for the map, a geofence's page, a
calculator's assigned zones, and a deletion through the services."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.admin import HOST, fast_password_hashing  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db(databases="__all__")

CIRCLE = {"name": "depot", "priority": 30,
          "geometry": {"type": "circle", "center": {"lat": 50.0, "lon": 10.0}, "radius": 1.0}}
CORRIDOR = {"name": "road", "enabled": False,
            "geometry": {"type": "corridor", "width": 0.2, "path": [{"lat": 50, "lon": 10}, {"lat": 50.1, "lon": 10.2}]}}


def _zones(html: str) -> list[dict]:
    found = re.search(r'<script id="geofence-zones" type="application/json">(.*?)</script>', html, re.S)
    assert found, "no zones for the map"
    return json.loads(found.group(1))


def test_list_and_page_draw_the_zones(admin_client, account, calculator):
    from analytics.services import calculator_geofence_assign, geofence_create

    depot = geofence_create(account=account, data=CIRCLE)
    road = geofence_create(account=account, data=CORRIDOR)
    calculator_geofence_assign(calculator=calculator, geofence=depot)
    calculator_geofence_assign(calculator=calculator, geofence=road)
    html = admin_client.get("/admin/analytics/geofence/", **HOST).content.decode()
    assert [(zone["id"], zone["geometry"]["type"], zone["enabled"]) for zone in _zones(html)] == [
        (depot.pk, "circle", True), (road.pk, "corridor", False)]
    html = admin_client.get(f"/admin/analytics/geofence/{depot.pk}/change/", **HOST).content.decode()
    assert [zone["id"] for zone in _zones(html)] == [depot.pk]
    assert str(calculator) in html
    html = admin_client.get(f"/admin/analytics/calculator/{calculator.pk}/change/", **HOST).content.decode()
    assigned = re.findall(r'class="assigned-geofence" href="[^"]+">([^<]+)</a>([^<,]*)', html)
    assert assigned == [(str(depot), " (priority 30)"), (str(road), " (disabled)")]


def test_delete_goes_through_the_services(admin_client, account, calculator):
    from analytics.models import Calculator, Geofence
    from analytics.services import calculator_geofence_assign, geofence_create

    depot = geofence_create(account=account, data=CIRCLE)
    calculator_geofence_assign(calculator=calculator, geofence=depot)
    version = Calculator.objects.using(calculator.database).get(pk=calculator.pk).version
    response = admin_client.post(f"/admin/analytics/geofence/{depot.pk}/delete/", {"post": "yes"}, **HOST)
    assert response.status_code == 302
    assert not Geofence.objects.using(depot.database).filter(pk=depot.pk).exists()
    assert Calculator.objects.using(calculator.database).get(pk=calculator.pk).version == version + 1
