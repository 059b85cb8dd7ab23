"""The admin's pictures in a real browser, over the demo's data (``analytics.demo``: the two real
tracks imported, trips, parkings and daily mileage assigned to both, their intervals computed by
the engine and stored through the services): the device map and speed chart, the assignment
timeline and a chosen interval's route, the calculator's problems and "try it", the fleet status.

The browser is offline for these pages (``navigator.onLine`` false): the maps must draw without
any tiles. One test turns it online, with the tile server's addresses blocked, to see the tile
layer come and go. A screenshot of each page goes to the test output directory.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from django.conf import settings
from django.core.management import call_command
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen

from devtools import vendor
from tests.support.waiting import page_wait

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

PASSWORD = "a long password 42"
# The browser's idea of being online, switchable from a test (window.__online).
OFFLINE = """
Object.defineProperty(Navigator.prototype, "onLine", {get() { return window.__online === true; }});
"""


def scroll_to(browser, element) -> None:
    browser.execute_script("arguments[0].scrollIntoView({block: 'start', behavior: 'instant'});", element)


def inside_the_map(browser, map_id: str) -> bool:
    """Whether every path drawn on the map lies inside it (the map was fitted to what it shows)."""
    return browser.execute_script(
        "const b = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return [...document.querySelectorAll(`#${arguments[0]} path`)]"
        ".map(p => p.getBoundingClientRect())"
        ".every(r => r.left >= b.left - 1 && r.right <= b.right + 1 && r.top >= b.top - 1 && r.bottom <= b.bottom + 1);",
        map_id,
    )


def decode_polyline(text: str) -> list[tuple[float, float]]:
    """A Google encoded polyline (precision 5), decoded here independently of the page's code."""
    points, index, lat, lon = [], 0, 0, 0
    while index < len(text):
        deltas = []
        for _ in range(2):
            shift = result = 0
            while True:
                byte = ord(text[index]) - 63
                index += 1
                result |= (byte & 0x1F) << shift
                shift += 5
                if byte < 0x20:
                    break
            deltas.append(~(result >> 1) if result & 1 else result >> 1)
        lat, lon = lat + deltas[0], lon + deltas[1]
        points.append((lat / 1e5, lon / 1e5))
    return points


def vertices(path_element) -> int:
    """How many points an SVG path drawn by Leaflet goes through (an M or L command each)."""
    return len(re.findall(r"[ML]", path_element.get_attribute("d")))


@pytest.fixture(scope="session", autouse=True)
def vendored():
    vendor.ensure(quiet=True)  # what `make test` does before the suite


@pytest.fixture
def demo(platform, tmp_path, fast_hashing):
    """The demo's account, devices and calculators, the tracks imported and every assignment's
    intervals computed by the engine over the stored messages and stored."""
    from analytics import demo as demos
    from analytics.calculation import messages_stored
    from analytics.engine import Diff, calculate
    from analytics.services import compiled
    from tests.support.intervals import diff_store

    made = demos.demo_setup(key_file=tmp_path / "demo.token")
    for track, device in zip(demos.TRACKS, made.devices, strict=True):
        call_command(
            "import_messages",
            str(demos.TRACKS_DIR / track.file),
            device=device.pk,
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
    stored = {}
    for assignment in made.assignments:
        calculator = compiled(assignment.calculator)
        messages = messages_stored(
            device=assignment.device, begin=0, end=2**62, parameters=calculator.parameters
        )
        intervals = list(calculate(messages, calculator))
        diff_store(assignment=assignment, diff=Diff(created=intervals, reached_end=True))
        stored[assignment.calculator.name, assignment.device.ident] = intervals
    made.stored = stored  # type: ignore[attr-defined]
    return made


@pytest.fixture
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_browser(browser, live_url, django_user_model, fast_hashing):
    """The browser logged into the admin as a superuser, offline."""
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OFFLINE})
    django_user_model.objects.create_superuser(username="operator", email="", password=PASSWORD)
    browser.get(f"{live_url}/admin/login/?next=/admin/")
    browser.find_element(By.ID, "id_username").send_keys("operator")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    page_wait(browser, seen.url_to_be(f"{live_url}/admin/"))
    return browser


def positioned(device, begin=None, end=None) -> list[dict]:
    from devices.selectors import messages_of

    return [
        m
        for m in messages_of(devices=[device], begin=begin, end=end, count=None, reverse=False)
        if "position.latitude" in m and "position.longitude" in m
    ]


def test_the_device_map_draws_the_bus_track_and_the_speed_chart(demo, admin_browser, live_url, screenshot):
    browser = admin_browser
    bus = demo.devices[0]
    track = positioned(bus)
    assert len(track) == 2144  # every point of the GPX file
    browser.get(f"{live_url}/admin/devices/device/{bus.pk}/change/?count=5000")
    line = page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#device-map path.track")))
    assert vertices(line) == len(track)
    assert browser.find_element(By.ID, "device-map").get_attribute("data-points") == str(len(track))
    assert browser.find_element(By.ID, "device-map").get_attribute("data-tiles") == "offline"
    assert not browser.find_elements(By.CSS_SELECTOR, "#device-map .leaflet-tile")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#device-map path.last-position")) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#device-map path.track-start")) == 1
    chart = browser.find_element(By.ID, "speed-chart")
    assert chart.find_elements(By.CSS_SELECTOR, ".uplot canvas")
    assert chart.get_attribute("data-points") == str(sum("position.speed" in m for m in track))
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    screenshot("admin-device")

    # The default: the newest 1000 positions.
    browser.get(f"{live_url}/admin/devices/device/{bus.pk}/change/")
    line = page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#device-map path.track")))
    assert vertices(line) == 1000
    # A time range: the positions inside it.
    begin, end = track[100]["timestamp"], track[299]["timestamp"]
    browser.get(f"{live_url}/admin/devices/device/{bus.pk}/change/?begin={begin}&end={end}")
    line = page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#device-map path.track")))
    assert vertices(line) == 200


def test_the_map_adds_tiles_only_while_online(demo, admin_browser, live_url):
    browser = admin_browser
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*tile.openstreetmap.org*"]})
    browser.get(f"{live_url}/admin/devices/device/{demo.devices[0].pk}/change/")
    page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#device-map path.track")))
    assert not browser.find_elements(By.CSS_SELECTOR, "#device-map .osm-tiles")
    browser.execute_script("window.__online = true; window.dispatchEvent(new Event('online'));")
    tiles = page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#device-map img.leaflet-tile")))
    assert tiles.get_attribute("src").startswith("https://tile.openstreetmap.org/")
    browser.execute_script("window.__online = false; window.dispatchEvent(new Event('offline'));")
    page_wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "#device-map img.leaflet-tile"))
    assert browser.find_elements(By.CSS_SELECTOR, "#device-map path.track")


def test_a_bad_track_range_is_refused_by_field(demo, admin_browser, live_url, client):
    browser = admin_browser
    browser.get(f"{live_url}/admin/devices/device/{demo.devices[0].pk}/change/?begin=yesterday")
    problem = page_wait(browser, seen.presence_of_element_located((By.ID, "track-problem")))
    assert problem.text.startswith("begin: 'yesterday' is neither unix seconds nor a UTC date")


def _assignment(demo, calculator_name: str, ident: str):
    return next(
        a for a in demo.assignments if a.calculator.name == calculator_name and a.device.ident == ident
    )


def test_the_assignment_timeline_shows_the_trips_and_a_chosen_route(
    demo, admin_browser, live_url, screenshot
):
    browser = admin_browser
    trips = _assignment(demo, "demo trips", "demo-bus-304")
    expected = demo.stored["demo trips", "demo-bus-304"]
    parkings = demo.stored["demo parkings", "demo-bus-304"]
    daily = demo.stored["demo daily mileage", "demo-bus-304"]
    assert len(expected) >= 3
    browser.get(f"{live_url}/admin/analytics/assignment/{trips.pk}/change/")
    timeline = page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#timeline svg.timeline")))
    lane = f'rect.bar[data-lane="{trips.pk}"][data-part="0"]'
    bars = timeline.find_elements(By.CSS_SELECTOR, lane)
    assert sorted(int(bar.get_attribute("data-interval")) for bar in bars) == sorted(
        i["id"] for i in expected
    )
    # Every assignment of the device on the same timeline: parkings and the daily mileage too.
    assert len(timeline.find_elements(By.CSS_SELECTOR, 'rect.bar[data-part="0"]')) == len(expected) + len(
        parkings
    ) + len(daily)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".timeline-legend li")) == 3

    # The longest trip: its route counter decoded and drawn.
    chosen = max(expected, key=lambda i: i["duration"])
    browser.find_element(By.CSS_SELECTOR, f'{lane}[data-interval="{chosen["id"]}"]').click()
    page_wait(
        browser,
        lambda b: (
            b.find_element(By.ID, "assignment-pictures").get_attribute("data-interval") == str(chosen["id"])
        ),
    )
    line = browser.find_element(By.CSS_SELECTOR, "#interval-map path.track")
    assert vertices(line) == len(decode_polyline(chosen["route"])) > 10
    decoded = browser.execute_script("return FlespiPictures.decodePolyline(arguments[0]);", chosen["route"])
    assert decoded == [list(point) for point in decode_polyline(chosen["route"])]
    assert inside_the_map(browser, "interval-map")
    assert browser.find_element(By.ID, "assignment-pictures").get_attribute("data-source") == "route"
    counters = {
        row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
        for row in browser.find_elements(By.CSS_SELECTOR, "#interval-counters tr")
    }
    assert counters["max_speed"] == json.dumps(chosen["max_speed"])
    assert "route" not in counters
    screenshot("admin-assignment")

    # A parking: no route counter, the positions of its messages instead.
    parking = max(parkings, key=lambda i: i["duration"])
    parkings_lane = _assignment(demo, "demo parkings", "demo-bus-304").pk
    browser.find_element(
        By.CSS_SELECTOR, f'rect.bar[data-lane="{parkings_lane}"][data-interval="{parking["id"]}"]'
    ).click()
    page_wait(
        browser,
        lambda b: (
            b.find_element(By.ID, "assignment-pictures").get_attribute("data-interval") == str(parking["id"])
        ),
    )
    assert browser.find_element(By.ID, "assignment-pictures").get_attribute("data-source") == "messages"
    line = browser.find_element(By.CSS_SELECTOR, "#interval-map path.track")
    assert vertices(line) == len(positioned(demo.devices[0], parking["begin"], parking["end"]))


def test_the_calculator_page_shows_problems_at_their_paths_and_tries_a_configuration(
    demo, admin_browser, live_url, screenshot
):
    from analytics.calculation import calculate_stored
    from analytics.services import calculator_compile

    browser = admin_browser
    trips = demo.calculators[0]
    bus = demo.devices[0]
    browser.get(f"{live_url}/admin/analytics/calculator/{trips.pk}/change/")
    field = page_wait(browser, seen.presence_of_element_located((By.ID, "id_configuration")))
    config = json.loads(field.get_attribute("value"))
    broken = {**config, "selectors": [{**config["selectors"][0], "expression": "position.speed >"}]}
    browser.execute_script("arguments[0].value = arguments[1];", field, json.dumps(broken, indent=2))

    # Try it: the problem at its path, nothing calculated.
    browser.find_element(By.ID, "try-device").clear()
    browser.find_element(By.ID, "try-device").send_keys(str(bus.pk))
    browser.find_element(By.ID, "try-button").click()
    page_wait(browser, lambda b: b.find_element(By.ID, "try-it").get_attribute("data-state") == "refused")
    problems = browser.find_elements(By.CSS_SELECTOR, "#try-problems li")
    assert [(p.get_attribute("data-field"), p.get_attribute("data-path")) for p in problems] == [
        ("configuration", "selectors[0].expression")
    ]
    assert problems[0].text.startswith("configuration: selectors[0].expression: ")

    # Saving: the form's own error list, at the same path; nothing saved.
    browser.find_element(By.CSS_SELECTOR, "input[name=_save]").click()
    errors = page_wait(
        browser, seen.presence_of_element_located((By.CSS_SELECTOR, ".field-configuration .errorlist"))
    )
    assert errors.text.startswith("selectors[0].expression: ")
    scroll_to(browser, errors)
    screenshot("admin-calculator-problem")

    # A working change (trips from 20 km/h), tried over the morning of the bus before saving.
    changed = {**config, "selectors": [{**config["selectors"][0], "expression": "position.speed > 20"}]}
    field = browser.find_element(By.ID, "id_configuration")
    browser.execute_script("arguments[0].value = arguments[1];", field, json.dumps(changed, indent=2))
    browser.find_element(By.ID, "try-device").clear()
    browser.find_element(By.ID, "try-device").send_keys(str(bus.pk))
    browser.find_element(By.ID, "try-button").click()
    page_wait(browser, lambda b: b.find_element(By.ID, "try-it").get_attribute("data-state") == "done")
    newest = positioned(bus)[-1]["timestamp"]
    expected = calculate_stored(
        device=bus, calculator=calculator_compile(config=changed), begin=newest - 86400, end=newest
    )
    assert 0 < len(expected) != len(demo.stored["demo trips", "demo-bus-304"])
    tried = browser.find_elements(By.CSS_SELECTOR, '#try-timeline rect.bar[data-lane="try"][data-part="0"]')
    assert sorted(int(bar.get_attribute("data-interval")) for bar in tried) == sorted(
        i["id"] for i in expected
    )
    stored = browser.find_elements(
        By.CSS_SELECTOR, '#try-timeline rect.bar[data-lane="stored"][data-part="0"]'
    )
    assert len(stored) == len(demo.stored["demo trips", "demo-bus-304"])
    tried[0].click()
    page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#try-map path.track")))
    assert vertices(browser.find_element(By.CSS_SELECTOR, "#try-map path.track")) == len(
        decode_polyline(min(expected, key=lambda i: i["id"])["route"])
    )
    assert inside_the_map(browser, "try-map")
    scroll_to(browser, browser.find_element(By.ID, "try-it"))
    screenshot("admin-calculator-try")
    trips.refresh_from_db(using=trips.database)
    assert trips.selectors == config["selectors"]  # tried, not saved


def test_the_fleet_status_lists_the_shards(demo, admin_browser, live_url, screenshot):
    from analytics.fleet.leases import ShardLeases
    from flespi_site.celery import redis_client

    leases = ShardLeases(
        redis_client("eu"), region="eu", shards=settings.CALC_SHARDS, worker="calc-eu-a", ttl=60
    )
    epoch = leases.acquire(2)
    assert epoch is not None
    try:
        browser = admin_browser
        browser.get(f"{live_url}/admin/analytics/assignment/")
        browser.find_element(By.ID, "fleet-status-link").click()
        table = page_wait(browser, seen.presence_of_element_located((By.ID, "shards-eu")))
        rows = table.find_elements(By.CSS_SELECTOR, "tr.shard")
        assert [row.get_attribute("data-shard") for row in rows] == [
            str(s) for s in range(settings.CALC_SHARDS)
        ]
        cells = rows[2].find_elements(By.TAG_NAME, "td")
        assert cells[1].text == "calc-eu-a" and cells[2].text == str(epoch)
        assert rows[0].find_elements(By.TAG_NAME, "td")[1].text == "none"
        assert browser.find_element(By.ID, "shards-ru").find_elements(By.CSS_SELECTOR, "tr.shard")
        # The demo's intervals are stored the way a run stores them: every assignment is synced.
        synced = browser.find_element(
            By.CSS_SELECTOR, '#datacenters-eu tr[data-datacenter="eu-1"] td[data-state="synced"]'
        )
        assert synced.text == str(len(demo.assignments))
        screenshot("admin-fleet-status")
    finally:
        leases.leave()
