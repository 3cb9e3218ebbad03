"""The review page end to end, in Debian's real headless Chromium (tests/browser.py).

The daemon's part is real: the ReviewServer (cheroot) on a free loopback port, a
TokenStore on disk, clips that are real H.264 MP4s sealed with age and decrypted as
they stream. The consent service is tests/review_standin.py, which stands in for the
lead's service until that lands. The owner's link is taken from a rendered prompt.

Set EDGE_SCREENSHOT_DIR to keep the phone-width screenshots the test takes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from browser import headless_chromium, needs_chromium, screenshot
from edge.clock import ManualClock
from edge.share.prompt import Prompt, prompt_body
from edge.share.review import ReviewServer
from edge.share.tokens import TokenStore
from review_standin import DECIDE_BY_MS, NOW_MS, StandInConsent, request_view

pytestmark = needs_chromium()


@dataclass
class Site:
    server: ReviewServer
    backend: StandInConsent
    tokens: TokenStore
    clock: ManualClock
    base_url: str


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("review-browser")


@pytest.fixture(scope="module")
def site(work_dir: Path) -> Iterator[Site]:
    clock = ManualClock(NOW_MS)
    tokens = TokenStore(work_dir / "tokens.db")
    backend = StandInConsent(work_dir / "outbox", tokens, clock)
    server = ReviewServer("127.0.0.1:0", backend, tokens, clock)
    server.start()
    try:
        yield Site(server, backend, tokens, clock, f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def driver(work_dir: Path) -> Iterator[Any]:
    with headless_chromium(work_dir) as browser:
        yield browser


def link_from_prompt(site: Site, request_id: str) -> str:
    """Issues the request's tokens and returns the review link as the prompt's text has it."""
    view = site.backend.view(request_id)
    assert view is not None
    token = site.tokens.issue(request_id, "review", view.decide_by_ms)
    prompt = Prompt(
        request_id=request_id, agency_name=view.agency_name, agency_kind="police",
        title=view.title, description=view.description, case_ref=view.case_ref,
        public_url=view.public_url, window_start_ms=view.window_start_ms,
        window_end_ms=view.window_end_ms, time_zone=view.time_zone,
        distance_m=view.distance_m, footage_held_s=view.footage_held_s,
        footage_lost_to_pin_cap=False, footage_clock_unsynced=False,
        decide_by_ms=view.decide_by_ms, review_url=f"{site.base_url}/r/{token}",
        deny_url=None, deny_token=None, audit_head="a1b2c3d4")
    lines = [line for line in prompt_body(prompt, with_links=True).splitlines()
             if line.startswith("Review: ")]
    assert len(lines) == 1
    return lines[0].removeprefix("Review: ")


def wait_for(driver: Any, script: str, timeout_s: float = 15.0) -> Any:
    """Polls a JavaScript expression in the page until it is truthy (WebDriverWait)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
        lambda d: d.execute_script(f"return {script}"))


def clip_plays(driver: Any) -> dict[str, Any]:
    """Waits until the clip has decoded frames, plays it, and waits for time to pass."""
    wait_for(driver, "document.getElementById('clip').readyState >= 2")
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const video = document.getElementById('clip');
        video.muted = true;
        video.play().then(() => done(true), (error) => done(String(error)));
    """)
    wait_for(driver, "document.getElementById('clip').currentTime > 0.3")
    return driver.execute_script("""
        const v = document.getElementById('clip');
        return {width: v.videoWidth, height: v.videoHeight, duration: v.duration,
                error: v.error && v.error.code, decoded: v.getVideoPlaybackQuality
                ? v.getVideoPlaybackQuality().totalVideoFrames : null};
    """)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_owner_watches_narrows_and_approves_and_the_link_is_then_spent(
        site: Site, driver: Any, work_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    started_s = time.monotonic()
    site.backend.add(request_view("r7k2"))
    link = link_from_prompt(site, "r7k2")
    driver.get(link)
    assert "Hit and run on Elm Street" in driver.title
    video = clip_plays(driver)
    assert (video["width"], video["height"]) == (320, 240) and video["error"] is None
    assert video["decoded"] and video["decoded"] > 0
    whole_sha = text_of(driver, "sha256")
    screenshot(driver, "review-pending", work_dir)

    # A second tab on the same link, left open: its form must not work once spent.
    driver.switch_to.new_window("tab")
    driver.get(link)
    stale_tab = driver.current_window_handle
    driver.switch_to.window(driver.window_handles[0])

    # Narrow to the last two seconds; the page shows that clip and its hash.
    driver.execute_script("document.getElementById('from').value = '2026-11-28T14:05:02';")
    driver.find_element(By.ID, "narrow").click()
    wait_for(driver, "document.body.innerText.includes('narrowed by you')")
    narrow_sha = text_of(driver, "sha256")
    assert narrow_sha != whole_sha
    clip_plays(driver)

    driver.find_element(By.ID, "approve").click()
    wait_for(driver, "document.getElementById('state') !== null && "
                     "document.getElementById('state').innerText.includes('Approved')")
    assert "/s/" in driver.current_url and "/r/" not in driver.current_url
    assert "Approved window: Sat 28 Nov 14:05:02–14:05:04 (Europe/Berlin)" in \
        driver.find_element(By.TAG_NAME, "body").text
    assert "approved (review)" in text_of(driver, "history")
    screenshot(driver, "review-approved", work_dir)
    assert site.backend.decisions == [("r7k2", "approved", "review")]
    approved = site.backend.view("r7k2")
    assert approved is not None and approved.approved_window == (
        approved.window_start_ms + 2000, approved.window_end_ms)

    # The same link again: refused, in the stale tab's form and when opened anew.
    driver.switch_to.window(stale_tab)
    driver.find_element(By.ID, "deny").click()
    wait_for(driver, "document.getElementById('error') !== null")
    assert "not valid" in text_of(driver, "error")
    driver.get(link)
    assert "not valid" in text_of(driver, "error")
    screenshot(driver, "review-refused", work_dir)
    driver.close()
    driver.switch_to.window(driver.window_handles[0])
    assert site.backend.decisions == [("r7k2", "approved", "review")]
    assert time.monotonic() - started_s < 45


def test_forged_and_expired_links_are_refused(site: Site, driver: Any) -> None:
    site.backend.add(request_view("x9q4"))
    link = link_from_prompt(site, "x9q4")
    token = link.rsplit("/", 1)[1]
    forged = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")
    driver.get(f"{site.base_url}/r/{forged}")
    assert "not valid" in text_of(driver, "error")
    assert driver.find_elements("tag name", "video") == []

    short = site.tokens.issue("x9q4", "review", site.clock.now_ms() + 60_000)
    driver.get(f"{site.base_url}/r/{short}")
    wait_for(driver, "document.getElementById('clip') !== null")  # valid for now
    site.clock.advance_ms(60_000)
    driver.get(f"{site.base_url}/r/{short}")
    assert "not valid" in text_of(driver, "error")
    assert site.backend.decisions[-1:] != [("x9q4", "approved", "review")]


def test_a_post_without_the_csrf_token_is_refused(site: Site, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    site.backend.add(request_view("c5m1", decide_by_ms=DECIDE_BY_MS + 3_600_000))
    link = link_from_prompt(site, "c5m1")
    driver.get(link)
    driver.execute_script(
        "document.querySelectorAll('input[name=csrf]').forEach((e) => e.remove());")
    driver.find_element(By.ID, "deny").click()
    wait_for(driver, "document.getElementById('error') !== null")
    assert "out of date" in text_of(driver, "error")
    assert ("c5m1", "denied", "review") not in site.backend.decisions
    # Nothing was spent: the link still opens, and the owner can deny properly.
    driver.get(link)
    driver.find_element(By.ID, "deny").click()
    wait_for(driver, "document.getElementById('state') !== null && "
                     "document.getElementById('state').innerText.includes('Denied')")
    assert ("c5m1", "denied", "review") in site.backend.decisions
