"""The admin's geofence map in a real browser: every zone of the list drawn (a circle, a polygon,
a corridor), the map fitted to them, offline (no tiles). A screenshot goes to the test output."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen

from tests.browser.test_admin_pictures import (  # noqa: F401 (fixtures)
    admin_browser,
    fast_hashing,
    inside_the_map,
    vendored,
)
from tests.support.waiting import page_wait

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ZONES = [
    {"name": "depot", "priority": 20,
     "geometry": {"type": "circle", "center": {"lat": 56.95, "lon": 24.10}, "radius": 1.5}},
    {"name": "yard", "geometry": {"type": "polygon", "path": [
        {"lat": 56.96, "lon": 24.12}, {"lat": 56.97, "lon": 24.15}, {"lat": 56.955, "lon": 24.16},
        {"lat": 56.958, "lon": 24.14}]}},
    {"name": "road", "enabled": False, "geometry": {"type": "corridor", "width": 0.3, "path": [
        {"lat": 56.94, "lon": 24.05}, {"lat": 56.945, "lon": 24.08}, {"lat": 56.93, "lon": 24.11}]}},
]


def test_the_geofence_list_draws_every_zone(platform, make_account, admin_browser, live_url, screenshot):  # noqa: F811
    from analytics.services import geofence_create

    account = make_account("zones")
    for zone in ZONES:
        geofence_create(account=account, data=zone)
    browser = admin_browser
    browser.get(f"{live_url}/admin/analytics/geofence/")
    element = page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#geofence-map[data-zones='3']")))
    paths = browser.find_elements(By.CSS_SELECTOR, "#geofence-map path.zone")
    kinds = sorted(path.get_attribute("class").split()[1] for path in paths)
    assert kinds == ["zone-circle", "zone-corridor", "zone-polygon"]
    assert inside_the_map(browser, "geofence-map")
    assert element.get_attribute("data-tiles") == "offline"
    assert not browser.find_elements(By.CSS_SELECTOR, "#geofence-map .leaflet-tile")
    screenshot("admin-geofences")
