"""Polling: the tests wait on other threads and processes by asking again until an answer
comes or time runs out; the browser tests on a page, with Selenium's own wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

Value = TypeVar("Value")


def poll(condition: Callable[[], Value], *, timeout: float, every: float = 0.05) -> Value:
    """The first true value of ``condition()`` within ``timeout`` seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def wait_until(condition: Callable[[], Value], *, timeout: float = 30.0, every: float = 0.1,
               what: str = "the condition") -> Value:
    """The first true value of ``condition()``; an AssertionError naming ``what`` when none came
    within ``timeout`` seconds."""
    value = poll(condition, timeout=timeout, every=every)
    if not value:
        raise AssertionError(f"{what} did not hold within {timeout} s")
    return value


def page_wait(browser, condition: Callable[[Any], Value], timeout: float = 20) -> Value:
    """The first true value of a Selenium expected ``condition`` on ``browser`` (an element not
    there yet counts as false); a TimeoutException when none came within ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait  # only the browser tests need Selenium

    return WebDriverWait(browser, timeout).until(condition)
