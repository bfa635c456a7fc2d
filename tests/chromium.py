"""Debian's headless Chromium driven by Selenium, for the report and web page tests."""

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(profile_dir, screen: tuple[int, int] | None = None):
    """Selenium driving the system's Chromium, offline, with a fresh profile; `screen`
    emulates a phone of that CSS size. Fails (never skips) when Chromium is missing."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install them with `apt-get install -y chromium chromium-driver` "
            "(.ci/run does this before `make test`)."
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(flag)
    if screen is not None:
        metrics = {"width": screen[0], "height": screen[1], "pixelRatio": 2}
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    # An explicit driver path: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver
