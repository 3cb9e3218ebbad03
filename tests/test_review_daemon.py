"""The review page as the daemon serves it, in Debian's headless Chromium.

Everything is real: `edge run` records from the virtual camera, hears a signed
request on a real broker, prompts the owner on the console with a review link,
builds and seals the clip from its own ring when the page is opened, streams it
decrypted, and takes the approval made in the browser. Only the owner's phone
is stood in for, by the headless browser.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker import MosquittoBroker
from browser import headless_chromium, needs_chromium, screenshot
from conftest import REPO_ROOT, run_edge
from edge.share.geohash import encode, request_topic
from edge.share.verify import Location
from signing import PLATFORM_KEY, make_payload, public_b64, rfc3339

LAT, LON = 47.6062, -122.3321
T = TypeVar("T")

pytestmark = needs_chromium()


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Polls a condition another process brings about (there is no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, Path, MosquittoBroker]]:
    with MosquittoBroker(tmp_path / "broker") as broker:
        port = free_port()
        config = tmp_path / "edge.toml"
        config.write_text(f"""
[device]
data_dir = "{tmp_path / "data"}"
latitude = {LAT}
longitude = {LON}
timezone = "Europe/Berlin"
[camera]
width = 320
height = 180
fps = 10
[buffer]
segment_seconds = 1
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[trust]
platform_keys = ["{public_b64(PLATFORM_KEY)}"]
[policy]
unsynced_footage = "warn"
[notify]
console = true
[review]
listen = "127.0.0.1:{port}"
url = "http://127.0.0.1:{port}"
""")
        log_path = tmp_path / "daemon.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "edge", "--config", str(config), "run"],
                cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            yield config, log_path, broker
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            print(log_path.read_text())


def edge_json(config: Path, *args: str) -> Any:
    result = run_edge("--config", str(config), *args)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_owner_approves_in_the_browser_from_the_daemons_prompt(
        daemon: tuple[Path, Path, MosquittoBroker], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    config, log_path, broker = daemon
    wait_for(lambda: (edge_json(config, "status", "--json") or {})
             .get("buffer", {}).get("segments", 0) >= 4, 60, "four segments recorded")
    wait_for(lambda: ((edge_json(config, "status", "--json") or {}).get("daemon") or {})
             .get("broker", {}).get("subscribed"), 30, "subscribed")
    now_s = time.time()
    payload = make_payload(now_s=now_s, location=Location(lat=LAT, lon=LON), request_overrides={
        "window": {"start": rfc3339(now_s - 600), "end": rfc3339(now_s - 1)}})
    with broker.publisher() as publisher:
        publisher.publish(request_topic("edge", encode(LAT, LON, 5)), payload)
    # The link exactly as the console prompt shows it to the owner.
    # (The console draws a box; the link may sit on the line after "Review:".)
    link = wait_for(lambda: re.search(r"Review:[\s│]*(http://[^\s│]+/r/[A-Za-z0-9_-]+)",
                                      log_path.read_text()), 30, "a prompt with a link")[1]
    request_id = wait_for(lambda: [r["id"] for r in edge_json(config, "requests", "--json")
                                   if r["state"] == "pending"], 10, "pending")[0]

    with headless_chromium(tmp_path) as driver:
        driver.get(link)
        wait = WebDriverWait(driver, 30, poll_frequency=0.1)
        wait.until(lambda d: d.execute_script(
            "const v = document.getElementById('clip'); return v && v.readyState >= 2"))
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const v = document.getElementById('clip'); v.muted = true;
            v.play().then(() => done(true), (e) => done(String(e)));""")
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('clip').currentTime > 0.3"))
        assert driver.execute_script(
            "return document.getElementById('clip').videoWidth") == 320
        screenshot(driver, "daemon-review", tmp_path)
        driver.find_element(By.ID, "approve").click()
        # The decision lands on the read-only status page (a new URL, /s/...).
        wait.until(lambda d: "/s/" in d.current_url)
        state_text = driver.find_element(By.ID, "state").text
        assert state_text.startswith("Approved"), state_text
        driver.get(link)  # the link is spent
        assert "not valid" in driver.find_element(By.ID, "error").text

    decided = [r for r in edge_json(config, "requests", "--json", "--all")
               if r["id"] == request_id]
    assert decided and decided[0]["state"] in ("approved", "delivered", "failed")
    audit_log = config.parent / "data" / "audit" / "audit.log"
    wait_for(lambda: '"channel":"review"' in audit_log.read_text(), 10, "the decision audited")
