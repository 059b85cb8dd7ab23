"""The admin's group pages in a real browser: the list of an account's groups with how many
members and which calculators, then a group's page listing its members and calculators, linked.
A screenshot of each goes to the test output."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen

from tests.browser.test_admin_pictures import (  # noqa: F401 (fixtures)
    admin_browser,
    fast_hashing,
    vendored,
)
from tests.support.waiting import page_wait

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_the_group_pages_list_members_and_calculators(platform, make_account, admin_browser, live_url, screenshot):  # noqa: F811
    from analytics.services import calculator_create, group_assignment_create
    from devices.services import device_create, group_create

    account = make_account("groups")
    trucks = [device_create(account=account, name=f"truck-{n}", configuration={"ident": f"bg-{n}"},
                            metadata={"fleet": "north"}) for n in range(2)]
    trips = calculator_create(account=account, config={"name": "trips", "selectors": [
        {"type": "expression", "expression": "position.speed > 5"}], "counters": []})
    north = group_create(account=account, name="north", selector="metadata.fleet=north")
    group_create(account=account, name="empty", devices=[])
    group_assignment_create(calculator=trips, group=north)
    browser = admin_browser
    browser.get(f"{live_url}/admin/devices/group/")
    page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "#result_list")))
    rows = {
        row.find_element(By.CSS_SELECTOR, "td.field-name").text: [
            row.find_element(By.CSS_SELECTOR, f"td.field-{column}").text
            for column in ("holds", "member_count", "calculators")
        ]
        for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    }
    assert rows == {"north": ["selector metadata.fleet=north", "2", str(trips)], "empty": ["member list", "0", "none"]}
    screenshot("admin-groups")
    browser.get(f"{live_url}/admin/devices/group/{north.pk}/change/")
    members = page_wait(browser, seen.presence_of_all_elements_located((By.CSS_SELECTOR, "a.group-member")))
    assert [link.text for link in members] == [str(truck) for truck in trucks]
    calculators = browser.find_elements(By.CSS_SELECTOR, "a.group-calculator")
    assert [link.text for link in calculators] == [str(trips)]
    members[0].click()
    page_wait(browser, seen.url_contains(f"/admin/devices/device/{trucks[0].pk}/change/"))
    browser.back()
    page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, "a.group-member")))
    screenshot("admin-group")
