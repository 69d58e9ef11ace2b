"""Headless Chromium driven by selenium, for tests of the browser pages (`browser` fixture).

Debian's `chromium` and `chromium-driver` (installed by `make test-deps`); the test is skipped
only when they are missing. The browser is offline except for the service under test: every
host name resolves to nothing but 127.0.0.1, and Chromium's own background traffic is off.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_ARGS = (
    "--headless=new",
    # (one argv entry, so no shell quotes around the value)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)
PAGE_LOAD_TIMEOUT_S = 30


def chromium_binaries() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when Chromium or its driver is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium(*, window: tuple[int, int] | None = None) -> Iterator[object]:
    """A headless Chromium (selenium WebDriver) with a fresh profile, quit afterwards."""
    binaries = chromium_binaries()
    if binaries is None:
        pytest.skip("chromium and chromium-driver are not installed (make test-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="gensvc-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = binaries[0]
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    if window:
        options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=binaries[1]))
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """Severe console messages so far other than failed requests (which the API answers on
    purpose, e.g. 401 before a key is entered): script errors, CSP violations."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]
