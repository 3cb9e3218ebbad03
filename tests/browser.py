"""Debian's Chromium, headless, driven by Selenium, for end-to-end tests of web pages.

Uses the packaged browser and driver (apt: chromium, chromium-driver) at fixed
paths, so Selenium never looks for, or downloads, a browser or a driver of its
own (given a driver path, Selenium skips Selenium Manager entirely).

    with headless_chromium(tmp_path) as driver:
        driver.get(url)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EDGE_CHROMEDRIVER", "/usr/bin/chromedriver")
# A phone's screen (CSS pixels), as the owner sees the page.
PHONE_WIDTH, PHONE_HEIGHT = 390, 844

# Running as root needs --no-sandbox; the rest keeps the browser from reaching out
# (updates, sync, QUIC probes) and from reusing anything between runs.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
)


def needs_chromium() -> pytest.MarkDecorator:
    """Skips a test module where the browser is missing, except on CI (CI=true), whose
    setup installs it: there a missing browser is an error, not a quiet skip."""
    missing = chromium_missing()
    if missing is not None and os.environ.get("CI"):
        raise RuntimeError(f"the browser tests cannot run: {missing}")
    return pytest.mark.skipif(missing is not None, reason=missing or "")


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


@contextmanager
def headless_chromium(work_dir: Path, *, width: int = PHONE_WIDTH,
                      height: int = PHONE_HEIGHT) -> Iterator[WebDriver]:
    """A fresh headless Chromium showing pages at a phone's width; quit on exit.

    selenium is imported here, not above, so that a machine without it can still
    import this module and skip the browser tests with a reason.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = work_dir / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    profile.mkdir(parents=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    # The page as a phone lays it out: its width, its pixel density, touch.
    options.add_experimental_option("mobileEmulation", {
        "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0, "touch": True},
    })
    service = Service(executable_path=CHROMEDRIVER, log_output=str(work_dir / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(20)
        driver.set_script_timeout(20)
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str, default_dir: Path) -> Path:
    """The whole page at phone width as a PNG, in $EDGE_SCREENSHOT_DIR if set (to look
    at), else in ``default_dir``."""
    folder = Path(os.environ.get("EDGE_SCREENSHOT_DIR", default_dir))
    folder.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE_WIDTH, "height": max(PHONE_HEIGHT, int(height)),
        "deviceScaleFactor": 2, "mobile": True})
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path
