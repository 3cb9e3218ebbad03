"""The daemon as a real process: records, hears a signed request on a real broker,
prompts the owner (console), takes the owner's decision from the CLI, and delivers
an approved clip to the tus project's own server; a denied request sends nothing."""

from __future__ import annotations

import base64
import hashlib
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
from edge.units import parse_rfc3339_ms
from signing import PLATFORM_KEY, make_payload, public_b64, rfc3339
from uploadservers import TusServer
from videotools import decode

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


def write_daemon_config(tmp_path: Path, broker_port: int) -> Path:
    """The daemon's config for these tests: virtual camera 320x180 at 10 fps, 1 s
    segments, the test platform trusted, console prompts, uploads to localhost."""
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
port = {broker_port}
[trust]
platform_keys = ["{public_b64(PLATFORM_KEY)}"]
[policy]
# This machine's clock may not report itself synchronised (a container): keep its footage.
unsynced_footage = "warn"
[notify]
console = true
[upload]
allow_insecure_localhost = true
"""
    )
    return config


@pytest.fixture
def daemon(
    tmp_path: Path, broker: MosquittoBroker
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    config = write_daemon_config(tmp_path, broker.port)
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


def test_request_pending_approved_on_cli_and_delivered(
    daemon: tuple[Path, subprocess.Popen[bytes]], broker: MosquittoBroker, tus: TusServer
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
    window = {"start": rfc3339(now_s - 600), "end": rfc3339(now_s - 1)}
    upload = {"url": f"{tus.url}/files/", "protocol": "tus"}

    def payload() -> bytes:
        return make_payload(
            now_s=now_s,
            location=location,
            cert_overrides={"upload_hosts": ["127.0.0.1"]},
            request_overrides={"window": window, "upload": upload},
        )

    approved_payload, denied_payload = payload(), payload()
    # Published to a coarse cell (precision 3) and to a fine one (precision 7): one request.
    with broker.publisher() as publisher:
        publisher.publish(request_topic("edge", encode(LAT, LON, 3)), approved_payload)
        publisher.publish(request_topic("edge", encode(LAT, LON, 7)), approved_payload)
        publisher.publish(request_topic("edge", encode(LAT, LON, 5)), denied_payload)
        publisher.publish(request_topic("edge", "c23nb"), b"not json at all")
    pending = wait_for(
        lambda: (
            [r for r in requests_json(config) if r["state"] == "pending"] * 0
            or (lambda rows: rows if len(rows) == 2 else [])(
                [r for r in requests_json(config) if r["state"] == "pending"]
            )
        ),
        30,
        "two pending requests",
    )
    approved_id, denied_id = str(pending[0]["id"]), str(pending[1]["id"])
    rejected = wait_for(
        lambda: [r for r in requests_json(config, "--all") if r["state"] == "rejected"],
        30,
        "rejected",
    )
    assert rejected[0]["reason"] == "bad_payload"

    assert run_edge("--config", str(config), "deny", denied_id).returncode == 0
    result = run_edge("--config", str(config), "approve", approved_id, "--start", "-300s")
    assert result.returncode == 0, result.stderr
    assert b"approved request" in result.stdout
    again = run_edge("--config", str(config), "deny", approved_id)
    assert again.returncode == 1
    assert b"not pending" in again.stderr

    delivered = wait_for(
        lambda: [r for r in requests_json(config) if r["state"] == "delivered"], 60, "delivered"
    )
    assert [r["id"] for r in delivered] == [int(approved_id)]
    record = delivered[0]
    uploads = tus.stored_uploads()
    delivery_id = record["delivery_id"]
    # Exactly the approved request's two files, and nothing for the denied one.
    assert set(uploads) == {f"{delivery_id}.mp4", f"{delivery_id}.manifest.jws"}
    assert {u.metadata.get("request_id") for u in uploads.values()} == {pending[0]["jti"]}
    clip = uploads[f"{delivery_id}.mp4"].data()
    assert hashlib.sha256(clip).hexdigest() == record["clip_sha256"]
    claims = verified_manifest(uploads[f"{delivery_id}.manifest.jws"].data())
    assert claims["jti"] == pending[0]["jti"]
    assert claims["file"] == {
        "name": f"{delivery_id}.mp4",
        "size": len(clip),
        "sha256": record["clip_sha256"],
    }
    # The clip decodes, and its time strips lie in the approved window give or take
    # the one segment (1 s here) the spec allows on each side.
    frames = decode(clip)
    approved_start = parse_rfc3339_ms(record["approved_window"]["start"])
    approved_end = parse_rfc3339_ms(record["approved_window"]["end"])
    times = [frame.capture_time_ms for frame in frames]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert approved_start - 1100 <= times[0] and times[-1] <= approved_end + 1100
    assert not any(
        p.name.endswith((".mp4.age", ".json"))
        for p in (config.parent / "data" / "outbox").iterdir()
    )

    # Judged again "as the daemon would", the approved request is now a duplicate.
    payload_file = config.parent / "approved.json"
    payload_file.write_bytes(approved_payload)
    check = run_edge("--config", str(config), "request", "check", str(payload_file))
    assert check.returncode == 1
    assert json.loads(check.stdout)["reason"] == "duplicate"

    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    verify = run_edge("--config", str(config), "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    log_text = (config.parent / "data" / "audit" / "audit.log").read_text()
    assert '"event":"pending"' in log_text
    assert log_text.count('"decision":"approved"') == 1  # acted on once, however often polled
    assert '"decision":"denied"' in log_text
    assert '"channel":"cli"' in log_text
    assert '"event":"delivered"' in log_text


def verified_manifest(jws: bytes) -> dict[str, object]:
    """Checks the manifest with joserfc (not the code that signed it) under its device key."""
    from joserfc import jws as jose_jws
    from joserfc.jwk import OKPKey

    header_b64 = jws.split(b".")[1]
    claims = json.loads(base64.urlsafe_b64decode(header_b64 + b"=" * (-len(header_b64) % 4)))
    key = OKPKey.import_key(claims["device"])
    verified = jose_jws.deserialize_compact(jws, key, algorithms=["EdDSA"])
    assert verified.protected["typ"] == "clip-manifest+jwt"
    return json.loads(verified.payload)  # type: ignore[no-any-return]
