"""Browser tests in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
driven by Selenium, against the platform served by pytest-django's live server.

Fixtures for any page: ``live_url`` (the server's base URL), ``browser`` (a WebDriver with a
fresh profile, one per test), ``screenshot(name)`` (saves the current page as
``test-output/screenshots/<name>.png``; ``FLESPI_TEST_OUTPUT`` moves ``test-output``). Tests that
use them need the transactional database: the server answers from another thread.

Without Chromium or its driver the tests are skipped, saying so; in CI (``CI`` set), where
``.ci/run`` installs both, they fail instead, so that a missing browser cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools import embedded

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
SCREENSHOTS = Path(os.environ.get("FLESPI_TEST_OUTPUT") or embedded.REPO_DIR / "test-output") / "screenshots"
MISSING = [name for name, path in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)) if path is None]


REASON = f"{' and '.join(MISSING)} not installed (apt-get install -y chromium chromium-driver)"


def pytest_collection_modifyitems(config, items):
    if not MISSING or os.environ.get("CI"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture
def live_url(live_server, platform) -> str:
    """The base URL of the platform served for this test (``http://localhost:<port>``)."""
    return live_server.url


@pytest.fixture
def browser(tmp_path_factory) -> Iterator:
    """A Chromium of the test's own (about a second to start): its own profile, and no
    keep-alive connection left to the live server, whose threads would hold their database
    connections open past the test."""
    if MISSING:  # only in CI, where .ci/run installs them
        pytest.fail(f"{REASON}: .ci/run installs them in CI", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(browser) -> Callable[[str], Path]:
    def take(name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert browser.save_screenshot(str(path)), f"the screenshot {path} could not be saved"
        return path

    return take
