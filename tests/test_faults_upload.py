"""Fault: the agency's upload server is down, fails (HTTP 500) or hangs during a delivery.

The daemon is a real process, the upload server the tus project's own
(@tus/server with @tus/file-store), reached through a TcpLink (tests/faults.py)
that stands in for the network path and for a server that misbehaves: it
forwards, answers every request with 500, or accepts the connection and never
answers. The server is also really stopped for a while.

Proves: the delivery is retried with backoff and completes once the server is
back, exactly once (one upload per file, bytes matching the manifest); the
daemon records on meanwhile (frames keep coming, none dropped); `edge status`
shows the upload in progress; `edge audit verify` passes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from broker import MosquittoBroker
from faults import (
    Camera,
    TcpLink,
    publish_request,
    request_payload,
    running_camera,
    tus_metadata,
    wait_until,
)
from uploadservers import TusServer

BUDGET_S = 90.0


def approved_request(camera: Camera, broker: MosquittoBroker, upload_url: str) -> int:
    """Publishes a request for the last seconds, waits for it to be pending, approves it."""
    now_s = time.time()
    payload, jti = request_payload(
        window_start_s=now_s - 6, window_end_s=now_s - 1, upload_url=upload_url
    )
    publish_request(broker, payload)
    record = wait_until(
        lambda: next((r for r in camera.requests() if r["jti"] == jti), None),
        30,
        "the request to be taken in",
    )
    assert record["state"] == "pending", record
    result = camera.edge("approve", str(record["id"]))
    assert result.returncode == 0, result.stderr.decode()
    return int(record["id"])


def request_record(camera: Camera, request_id: int) -> dict[str, object]:
    return next(r for r in camera.requests() if r["id"] == request_id)


def check_delivered_once(tus: TusServer, record: dict[str, object]) -> None:
    """Exactly the request's two files, each created once, the clip matching the manifest."""
    delivery_id = record["delivery_id"]
    uploads = tus.stored_uploads()
    assert set(uploads) == {f"{delivery_id}.mp4", f"{delivery_id}.manifest.jws"}, set(uploads)
    for upload in uploads.values():
        assert upload.path.stat().st_size == upload.size  # complete
    creations = [
        tus_metadata(e["upload_metadata"]).get("filename")
        for e in tus.requests()
        if e["method"] == "POST"
    ]
    assert sorted(creations) == sorted(uploads), creations  # one creation per file
    clip = uploads[f"{delivery_id}.mp4"]
    assert clip.sha256() == record["clip_sha256"]
    manifest_jws = uploads[f"{delivery_id}.manifest.jws"].data().decode()
    claims = json.loads(_b64url(manifest_jws.split(".")[1]))
    assert claims["file"]["sha256"] == hashlib.sha256(clip.data()).hexdigest()


def _b64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def recording_went_on(camera: Camera, frames_before: int, seconds: float) -> None:
    status = camera.daemon_status()
    assert status is not None, camera.log_tail()
    frames = status["camera"]["frames_captured"]
    # 10 fps; a loaded machine and the 2-s status period take some of it.
    assert frames - frames_before >= (seconds - 3) * 10 * 0.8, (frames_before, frames, seconds)
    assert status["camera"]["frames_dropped"] == 0


@pytest.mark.slow
def test_upload_server_down_then_failing_then_back(
    tmp_path: Path, broker: MosquittoBroker, tus: TusServer
) -> None:
    started_s = time.monotonic()
    link = TcpLink(tus.port)
    camera = Camera(tmp_path / "camera", broker_port=broker.port)
    try:
        with running_camera(camera):
            camera.start()
            camera.wait_ready(subscribed=True)
            wait_until(lambda: camera.frames() >= 60, 30, "six seconds of frames")
            frames_before, fault_started_s = camera.frames(), time.monotonic()

            tus.stop()  # the server is down: the link finds nothing behind it
            request_id = approved_request(camera, broker, f"http://127.0.0.1:{link.port}/files/")
            link.wait_for(lambda: link.accepted["forward"] >= 1, 30, "an upload attempt")
            wait_until(
                lambda: (camera.daemon_status() or {}).get("parts", {}).get("upload")
                == f"delivering request {request_id}",
                10,
                "the status to show the upload in progress",
            )
            assert request_record(camera, request_id)["state"] == "approved"

            tus.start()
            link.set_mode("http500")  # back, but failing
            link.wait_for(lambda: link.answered_500 >= 1, 30, "a retry answered with 500")
            assert request_record(camera, request_id)["state"] == "approved"
            assert tus.stored_uploads() == {}

            link.set_mode("forward")  # healthy again
            wait_until(
                lambda: request_record(camera, request_id)["state"] == "delivered",
                60,
                "the delivery once the server is back",
                describe=camera.log_tail,
            )
            recording_went_on(camera, frames_before, time.monotonic() - fault_started_s)
            log = camera.log_text()
            assert "retrying in" in log  # the backoff is logged, not a traceback
            assert "Traceback" not in log
            check_delivered_once(tus, request_record(camera, request_id))
            # The status file is rewritten every 2 s: wait for the one after delivery.
            wait_until(
                lambda: camera.status()["daemon"]["parts"].get("upload") is None,
                10,
                "the status to stop showing the upload",
            )
            assert camera.stop() == 0
            camera.audit_verify()
    finally:
        link.close()
    elapsed_s = time.monotonic() - started_s
    print(f"upload server down and failing: {elapsed_s:.1f} s")
    assert elapsed_s < BUDGET_S


@pytest.mark.slow
def test_upload_server_hanging(tmp_path: Path, broker: MosquittoBroker, tus: TusServer) -> None:
    """A server that takes the connection and never answers costs one timeout (30 s,
    as the tus protocol suggests), then the upload is retried and completes."""
    started_s = time.monotonic()
    link = TcpLink(tus.port)
    camera = Camera(tmp_path / "camera", broker_port=broker.port)
    try:
        with running_camera(camera):
            camera.start()
            camera.wait_ready(subscribed=True)
            wait_until(lambda: camera.frames() >= 60, 30, "six seconds of frames")
            frames_before, fault_started_s = camera.frames(), time.monotonic()

            link.set_mode("hang")
            request_id = approved_request(camera, broker, f"http://127.0.0.1:{link.port}/files/")
            link.wait_for(lambda: link.accepted["hang"] >= 1, 30, "an upload attempt")
            hung_at_s = time.monotonic()
            wait_until(
                lambda: (camera.daemon_status() or {}).get("parts", {}).get("upload")
                == f"delivering request {request_id}",
                10,
                "the status to show the upload in progress",
            )
            link.set_mode("forward")  # the next attempt finds a healthy server
            wait_until(
                lambda: request_record(camera, request_id)["state"] == "delivered",
                75,
                "the delivery after the hung attempt timed out",
                describe=camera.log_tail,
            )
            waited_s = time.monotonic() - hung_at_s
            assert link.accepted["hang"] == 1
            recording_went_on(camera, frames_before, time.monotonic() - fault_started_s)
            assert "timed out" in camera.log_text()
            check_delivered_once(tus, request_record(camera, request_id))
            assert camera.stop() == 0
            camera.audit_verify()
    finally:
        link.close()
    elapsed_s = time.monotonic() - started_s
    print(f"upload server hanging: delivered {waited_s:.1f} s after the hang; {elapsed_s:.1f} s")
    assert elapsed_s < BUDGET_S
