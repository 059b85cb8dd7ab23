"""The landing page and the admin login, in a real browser, with a screenshot of each page."""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen

from tests.support.waiting import page_wait

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def open_landing(browser, live_url):
    browser.get(f"{live_url}/")
    page_wait(browser, seen.presence_of_element_located((By.TAG_NAME, "h1")))


def test_the_landing_page_renders_with_the_examples(browser, live_url, screenshot):
    open_landing(browser, live_url)
    assert browser.title == "Telematics platform"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Telematics platform"
    links = {
        link.get_attribute("id"): link.get_attribute("href")
        for link in browser.find_elements(By.CSS_SELECTOR, "ul.links a[id]")
    }
    assert links == {
        "link-admin": f"{live_url}/admin/",
        "link-docs": f"{live_url}/api/docs/",
        "link-regions": f"{live_url}/auth/regions",
        "link-examples": f"{live_url}/#examples",
    }
    examples = browser.find_elements(By.CSS_SELECTOR, "#examples ~ pre")
    assert examples and 'curl -H "Authorization: FlespiToken $KEY"' in examples[0].text
    screenshot("landing")


def test_the_admin_link_leads_to_the_login(browser, live_url, screenshot):
    open_landing(browser, live_url)
    browser.find_element(By.ID, "link-admin").click()
    page_wait(browser, seen.presence_of_element_located((By.ID, "id_username")))
    assert browser.current_url == f"{live_url}/admin/login/?next=/admin/"
    screenshot("admin-login")


def test_the_docs_link_shows_the_api_documentation(browser, live_url, screenshot):
    open_landing(browser, live_url)
    browser.find_element(By.ID, "link-docs").click()
    # Swagger UI, served by the platform itself (no CDN), renders the schema's title.
    title = page_wait(browser, seen.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    assert title.text.startswith("Telematics platform API")
    page_wait(browser, seen.presence_of_element_located((By.CSS_SELECTOR, ".opblock-tag")))
    screenshot("api-docs")


def test_the_regions_link_lists_the_regions(browser, live_url, screenshot):
    open_landing(browser, live_url)
    browser.find_element(By.ID, "link-regions").click()
    page_wait(browser, seen.url_to_be(f"{live_url}/auth/regions"))
    body = json.loads(browser.find_element(By.TAG_NAME, "pre").text)
    assert [region["code"] for region in body["result"]] == ["eu", "ru"]
    screenshot("regions")


def test_the_examples_link_scrolls_to_the_examples(browser, live_url):
    open_landing(browser, live_url)
    browser.find_element(By.ID, "link-examples").click()
    page_wait(browser, seen.url_to_be(f"{live_url}/#examples"))
    assert browser.find_element(By.ID, "examples").is_displayed()


def test_logging_into_the_admin(browser, live_url, screenshot, django_user_model):
    django_user_model.objects.create_superuser(username="operator", email="", password="a long password 42")
    browser.get(f"{live_url}/admin/login/")
    browser.find_element(By.ID, "id_username").send_keys("operator")
    browser.find_element(By.ID, "id_password").send_keys("wrong password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    error = page_wait(browser, seen.visibility_of_element_located((By.CSS_SELECTOR, ".errornote")))
    assert "correct username and password" in error.text
    screenshot("admin-login-refused")
    browser.find_element(By.ID, "id_password").send_keys("a long password 42")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    page_wait(browser, seen.url_to_be(f"{live_url}/admin/"))
    assert "Site administration" in browser.find_element(By.TAG_NAME, "body").text
    assert "operator" in browser.find_element(By.ID, "user-tools").text.lower()
    screenshot("admin-index")
