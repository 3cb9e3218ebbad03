"""Fault: the MQTT broker stops for a while and comes back, while the daemon runs.

The daemon is a real process, the broker the real mosquitto (persistence on: a
SIGTERM saves sessions and queued messages, as on a real server). The camera
reaches the broker through a TcpLink (tests/faults.py), which is held closed for a
moment after the broker is back: a request published then can only reach the
camera through its persistent session, so that path is tested every time rather
than when a race happens to fall that way.

Proves: recording never stops (frames keep coming, none dropped, no gap in the
buffer); a request published with QoS 1 while the camera was cut off is taken in
once it reconnects, and so is one published after; `edge audit verify` passes.

``EDGE_FAULT_BROKER_OUTAGE_S`` sets the outage (CI: 12 s; bench/faults.py: 60 s).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from broker import MosquittoBroker
from faults import Camera, TcpLink, publish_request, request_payload, running_camera, wait_until

OUTAGE_S = float(os.environ.get("EDGE_FAULT_BROKER_OUTAGE_S", "12"))
BUDGET_S = 60.0 + 2 * OUTAGE_S


@pytest.mark.slow
def test_broker_outage_recording_goes_on_and_requests_arrive(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    started_s = time.monotonic()
    link = TcpLink(broker.port)
    camera = Camera(tmp_path / "camera", broker_port=link.port)
    # Never approved here: the upload URL is never used.
    upload_url = "http://127.0.0.1:9/files/"
    try:
        with running_camera(camera):
            camera.start()
            camera.wait_ready(subscribed=True)
            wait_until(lambda: camera.frames() >= 30, 30, "three seconds of frames")

            connections_before = link.accepted["forward"]
            link.set_mode("refuse")  # once the broker is back, the camera cannot get in at once
            broker.stop()  # mosquitto saves the camera's session (subscriptions, queue)
            outage_started_s = time.monotonic()
            samples = []
            tick = threading.Event()
            while time.monotonic() - outage_started_s < OUTAGE_S:
                samples.append(camera.frames())
                tick.wait(1.0)  # the outage's length is the fault; we sample meanwhile
            assert camera.running, camera.log_tail()
            status = camera.daemon_status()
            assert status is not None and not status["broker"]["connected"]
            assert status["broker"]["last_error"]  # the status says why

            broker.start()
            now_s = time.time()
            queued, queued_jti = request_payload(
                window_start_s=now_s - 8, window_end_s=now_s - 1, upload_url=upload_url
            )
            publish_request(broker, queued)  # PUBACK: the broker holds it for the camera
            assert link.accepted["forward"] == connections_before, "the camera got in first"
            link.set_mode("forward")

            def pending_jtis() -> set[str]:
                return {str(r["jti"]) for r in camera.requests() if r["state"] == "pending"}

            wait_until(
                lambda: queued_jti in pending_jtis(),
                130,  # paho's reconnect backoff doubles up to 120 s
                "the request queued during the outage",
                describe=camera.log_tail,
            )
            camera.wait_ready(subscribed=True)
            now_s = time.time()
            live, live_jti = request_payload(
                window_start_s=now_s - 8, window_end_s=now_s - 1, upload_url=upload_url
            )
            publish_request(broker, live)
            wait_until(lambda: live_jti in pending_jtis(), 30, "the request sent after")

            # Recording went on through it all: frames grew at every sample, none
            # dropped, and the buffer has no gap.
            # (The status file is rewritten every 2 s: compare samples 3 s apart.)
            assert all(b > a for a, b in zip(samples, samples[3:], strict=False)), samples
            assert samples[-1] - samples[0] >= (OUTAGE_S - 3) * 10 * 0.8, samples
            status = camera.status()
            assert status["daemon"]["camera"]["frames_dropped"] == 0
            assert status["buffer"]["gaps"] == [], status["buffer"]
            assert status["buffer"]["dropped_segments"] == 0
            assert status["daemon"]["broker"]["connected"]
            assert len([r for r in camera.requests() if r["state"] == "pending"]) == 2
            assert camera.stop() == 0
            camera.audit_verify()
    finally:
        link.close()
    elapsed_s = time.monotonic() - started_s
    print(f"broker outage of {OUTAGE_S:.0f} s: test took {elapsed_s:.1f} s")
    assert elapsed_s < BUDGET_S, f"took {elapsed_s:.1f} s, budget {BUDGET_S:.0f} s"
