"""The daemon as a real process: records, hears a signed request on a real broker,
prompts the owner (console), and takes the owner's decision from the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import MosquittoBroker
from conftest import REPO_ROOT, run_edge
from edge.share.geohash import encode, request_topic
from edge.share.verify import Location
from signing import PLATFORM_KEY, make_payload, public_b64, rfc3339

LAT, LON = 47.6062, -122.3321


def wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    """Polls a condition another process brings about (there is no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def daemon(
    tmp_path: Path, broker: MosquittoBroker
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
[device]
data_dir = "{tmp_path / "data"}"
latitude = {LAT}
longitude = {LON}
timezone = "UTC"
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
# This machine's clock may not report itself synchronised (a container): keep its footage.
unsynced_footage = "warn"
[notify]
console = true
"""
    )
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", str(config), "run"],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield config, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        print(log_path.read_text())


def requests_json(config: Path, *extra: str) -> list[dict[str, object]]:
    result = run_edge("--config", str(config), "requests", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_request_becomes_pending_and_owner_approves_on_cli(
    daemon: tuple[Path, subprocess.Popen[bytes]], broker: MosquittoBroker
) -> None:
    config, process = daemon

    def status() -> dict:  # type: ignore[type-arg]
        result = run_edge("--config", str(config), "status", "--json")
        return json.loads(result.stdout) if result.returncode == 0 else {"buffer": {"segments": 0}}

    wait_for(lambda: status()["buffer"]["segments"] >= 3, 60, "three segments recorded")
    wait_for(
        lambda: (status().get("daemon") or {}).get("broker", {}).get("subscribed"), 30, "subscribed"
    )
    now_s = time.time()
    location = Location(lat=LAT, lon=LON)
    payload = make_payload(
        now_s=now_s,
        location=location,
        request_overrides={"window": {"start": rfc3339(now_s - 600), "end": rfc3339(now_s - 1)}},
    )
    # Published to a coarse cell (precision 3) and to a fine one (precision 7): one request.
    with broker.publisher() as publisher:
        publisher.publish(request_topic("edge", encode(LAT, LON, 3)), payload)
        publisher.publish(request_topic("edge", encode(LAT, LON, 7)), payload)
        publisher.publish(request_topic("edge", "c23nb"), b"not json at all")
    pending = wait_for(
        lambda: [r for r in requests_json(config) if r["state"] == "pending"], 30, "pending"
    )
    assert len(pending) == 1
    rejected = wait_for(
        lambda: [r for r in requests_json(config, "--all") if r["state"] == "rejected"],
        30,
        "rejected",
    )
    assert rejected[0]["reason"] == "bad_payload"
    request_id = str(pending[0]["id"])
    result = run_edge("--config", str(config), "approve", request_id, "--start", "-300s")
    assert result.returncode == 0, result.stderr
    assert b"approved request" in result.stdout
    again = run_edge("--config", str(config), "deny", request_id)
    assert again.returncode == 1
    assert b"approved, not pending" in again.stderr
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    verify = run_edge("--config", str(config), "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    log_text = (config.parent / "data" / "audit" / "audit.log").read_text()
    assert '"event":"pending"' in log_text
    assert '"decision":"approved"' in log_text
    assert '"channel":"cli"' in log_text
