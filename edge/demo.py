"""`edge demo`: the whole story on one machine, with no hardware and no accounts.

It starts a local MQTT broker (mosquitto), the daemon with the virtual camera,
and a local upload server; plays a police department that publishes a signed
request; shows the owner's prompt; approves it as the owner would (and says
so); then checks what arrived at the "agency": the manifest's signature, the
clip's SHA-256, and the clip's own time strips against the approved window.
Finally it verifies the audit log. Every step is printed as it happens.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.units import format_rfc3339_ms

LATITUDE, LONGITUDE = 47.6062, -122.3321  # a porch in Seattle, as in the spec's vectors
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


class DemoError(Exception):
    """Something the demo needs is missing or did not happen in time."""


def _say(step: str, text: str = "") -> None:
    print(f"\n\033[1m==> {step}\033[0m" if sys.stdout.isatty() else f"\n==> {step}")
    if text:
        print(text)
    sys.stdout.flush()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(
    what: str, check: Callable[[], Any], timeout_s: float, *, progress_s: float | None = None
) -> Any:
    """Waits for another process to bring something about, with a progress line."""
    started = time.monotonic()
    width = 30
    while True:
        result = check()
        elapsed = time.monotonic() - started
        if result:
            if sys.stdout.isatty():
                print("\r" + " " * (width + len(what) + 20) + "\r", end="")
            return result
        if elapsed > timeout_s:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        total = progress_s or timeout_s
        done = min(int(width * elapsed / total), width)
        if sys.stdout.isatty():
            print(
                f"\r   [{'#' * done}{'.' * (width - done)}] {what} ({elapsed:4.1f} s)",
                end="",
                flush=True,
            )
        time.sleep(0.2)


class _UploadServer:
    """The agency's evidence server: takes HTTP PUTs, keeps them in memory."""

    def __init__(self) -> None:
        received: dict[str, bytes] = {}
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                if length > 512 * 1024 * 1024:
                    self.send_error(413)
                    return
                received[self.path.rsplit("/", 1)[-1]] = self.rfile.read(length)
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-upload", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _signed_request(
    platform_key: Ed25519PrivateKey,
    agency_key: Ed25519PrivateKey,
    window_start_ms: int,
    window_end_ms: int,
    upload_url: str,
) -> bytes:
    from edge.share.jws import sign_compact

    now_s = int(time.time())
    half_deg = 0.2
    ring = [
        [LONGITUDE - half_deg, LATITUDE - half_deg],
        [LONGITUDE + half_deg, LATITUDE - half_deg],
        [LONGITUDE + half_deg, LATITUDE + half_deg],
        [LONGITUDE - half_deg, LATITUDE + half_deg],
        [LONGITUDE - half_deg, LATITUDE - half_deg],
    ]
    cert = sign_compact(
        {"alg": "EdDSA", "typ": "agency-cert+jwt"},
        {
            "iss": "demo-platform",
            "sub": "us-wa-demo-pd",
            "name": "Demo City Police Department",
            "kind": "police",
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64url(_public_raw(agency_key))},
            "jurisdiction": {"type": "Polygon", "coordinates": [ring]},
            "upload_hosts": ["127.0.0.1"],
            "iat": now_s - 60,
            "exp": now_s + 86400,
        },
        platform_key,
    )
    jti = str(uuid.uuid4())
    request = sign_compact(
        {"alg": "EdDSA", "typ": "assist-request+jwt"},
        {
            "iss": "us-wa-demo-pd",
            "jti": jti,
            "iat": now_s,
            "exp": now_s + 3600,
            "title": "Bicycle stolen from a porch",
            "description": "A red bicycle was taken from a porch on this block a moment ago.",
            "case_ref": "DEMO-0001",
            "public_url": f"https://platform.example.org/requests/{jti}",
            "area": {
                "type": "Point",
                "coordinates": [LONGITUDE + 0.001, LATITUDE],
                "radius_m": 300,
            },
            "window": {
                "start": format_rfc3339_ms(window_start_ms),
                "end": format_rfc3339_ms(window_end_ms),
            },
            "upload": {"url": upload_url, "protocol": "put"},
        },
        agency_key,
    )
    return json.dumps({"cert": cert, "request": request}).encode()


def _publish(port: int, topic: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-agency-{os.getpid()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def _edge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _requests(config: Path) -> list[dict[str, Any]]:
    result = _edge(config, "requests", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else []


def run_demo(work_dir: Path | None, record_seconds: float = 20.0) -> int:
    mosquitto = next((p for p in MOSQUITTO_PATHS if os.path.exists(p)), shutil.which("mosquitto"))
    if mosquitto is None:
        print(
            "edge demo: mosquitto is not installed (sudo apt-get install mosquitto)",
            file=sys.stderr,
        )
        return 1
    owned_dir = work_dir is None
    base = Path(tempfile.mkdtemp(prefix="edge-demo-")) if work_dir is None else work_dir
    base.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    upload_server = _UploadServer()
    try:
        return _story(base, mosquitto, processes, upload_server, max(record_seconds, 6.0))
    except DemoError as exc:
        print(f"\nedge demo: {exc}", file=sys.stderr)
        log = base / "daemon.log"
        if log.exists():
            print("--- the daemon's last lines ---", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        return 1
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        upload_server.stop()
        if owned_dir:
            shutil.rmtree(base, ignore_errors=True)


def _story(
    base: Path,
    mosquitto: str,
    processes: list[subprocess.Popen[bytes]],
    upload_server: _UploadServer,
    record_seconds: float,
) -> int:
    from edge.share.geohash import encode, request_topic
    from edge.share.jws import parse_compact

    platform_key = Ed25519PrivateKey.generate()
    agency_key = Ed25519PrivateKey.generate()
    broker_port = _free_port()

    _say("1. A local MQTT broker, standing in for the public request broker")
    broker_conf = base / "mosquitto.conf"
    broker_conf.write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    processes.append(
        subprocess.Popen(
            [mosquitto, "-c", str(broker_conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    _wait("the broker", lambda: _port_open(broker_port), 10)
    print(f"   mosquitto on 127.0.0.1:{broker_port}")

    _say("2. The agency's upload server")
    upload_server.start()
    upload_url = f"http://127.0.0.1:{upload_server.port}/evidence/"
    print(f"   taking HTTP PUTs at {upload_url}")

    _say("3. The camera: `edge run` with the virtual camera")
    config = base / "edge.toml"
    config.write_text(
        f"""# written by `edge demo`
[device]
data_dir = "{base / "data"}"
latitude = {LATITUDE}
longitude = {LONGITUDE}
[camera]
source = "virtual"
width = 640
height = 360
fps = 15
[buffer]
max_bytes = "200MB"
segment_seconds = 2
[mqtt]
host = "127.0.0.1"
port = {broker_port}
[trust]
platform_keys = ["{_b64url(_public_raw(platform_key))}"]
[policy]
# A demo machine's clock may not say it is synchronised; use its footage anyway.
unsynced_footage = "warn"
[notify]
console = true
[upload]
# The demo's "agency" is on this machine, over plain http. No camera in service does this.
allow_insecure_localhost = true
"""
    )
    log_path = base / "daemon.log"
    with open(log_path, "wb") as log_file:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge", "--config", str(config), "run"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )
    print(f"   config {config}; the daemon's log is {log_path}")
    started_ms = int(time.time() * 1000)
    _wait(
        f"recording {record_seconds:.0f} s of video into the encrypted ring buffer",
        lambda: (
            time.time() * 1000 - started_ms >= record_seconds * 1000
            or processes[-1].poll() is not None
        ),
        record_seconds + 30,
        progress_s=record_seconds,
    )
    if processes[-1].poll() is not None:
        raise DemoError("the daemon stopped")
    status = json.loads(_edge(config, "status", "--json").stdout)
    buffer = status["buffer"]
    print(
        f"   buffer: {buffer['segments']} sealed segments, {buffer['bytes']} bytes, "
        f"{buffer['oldest']} to {buffer['newest']}"
    )
    segment_dir = base / "data" / "buffer" / "segments"
    sample = next(iter(sorted(segment_dir.iterdir())), None)
    if sample is not None:
        print(
            f"   on disk they are age ciphertext: {sample.name} starts with "
            f"{sample.read_bytes()[:21]!r}"
        )

    _say("4. The police department publishes a signed request for the last few seconds")
    window_end_ms = int(time.time() * 1000) - 1000
    window_start_ms = window_end_ms - 8000
    payload = _signed_request(platform_key, agency_key, window_start_ms, window_end_ms, upload_url)
    topic = request_topic("edge", encode(LATITUDE, LONGITUDE, 4))
    _publish(broker_port, topic, payload)
    print(f"   {len(payload)} bytes on {topic}")
    print(f"   window {format_rfc3339_ms(window_start_ms)} to {format_rfc3339_ms(window_end_ms)}")

    _say("5. The camera verifies it, finds itself in the area, and prompts its owner")
    pending = _wait(
        "the request to become pending",
        lambda: [r for r in _requests(config) if r["state"] == "pending"],
        30,
    )
    request_id = str(pending[0]["id"])
    box = _prompt_box(log_path)
    print(box or "   (the prompt is in the daemon's log)")

    _say("6. A second request comes in; the owner denies that one")
    denied_payload = _signed_request(
        platform_key, agency_key, window_start_ms, window_end_ms, upload_url
    )
    _publish(broker_port, topic, denied_payload)
    both = _wait(
        "the second request",
        lambda: (lambda rows: rows if len(rows) == 2 else [])(
            [r for r in _requests(config) if r["state"] == "pending"]
        ),
        30,
    )
    denied_id = str(both[1]["id"])
    print(f"   $ edge deny {denied_id}")
    result = _edge(config, "deny", denied_id)
    print("   " + (result.stdout.strip() or result.stderr.strip()))

    _say("7. The owner approves the first one on the device (the demo does this for you)")
    print(f"   $ edge approve {request_id}")
    result = _edge(config, "approve", request_id)
    print("   " + (result.stdout.strip() or result.stderr.strip()).replace("\n", "\n   "))
    if result.returncode != 0:
        raise DemoError("the approval failed")

    _say("8. The camera uploads the approved clip, then its signed manifest")
    delivered = _wait(
        "the upload", lambda: [r for r in _requests(config) if r["state"] == "delivered"], 60
    )
    delivery_id = delivered[0]["delivery_id"]
    clip = upload_server.received.get(f"{delivery_id}.mp4", b"")
    manifest_token = upload_server.received.get(f"{delivery_id}.manifest.jws", b"").decode()
    print(f"   the agency received: {', '.join(sorted(upload_server.received))}")

    _say("9. The agency checks what it received")
    manifest = parse_compact(manifest_token, typ="clip-manifest+jwt")
    claims = manifest.claims()
    device_key = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(claims["device"]["x"] + "==")
    )
    checks = {
        "manifest signature verifies under the camera's key": manifest.verify(device_key),
        "clip SHA-256 matches the manifest": hashlib.sha256(clip).hexdigest()
        == claims["file"]["sha256"],
        "clip size matches the manifest": len(clip) == claims["file"]["size"],
        "nothing at all was sent for the denied request": len(upload_server.received) == 2,
    }
    strip_ms = _strip_times(clip)
    checks["every frame's time strip lies in the approved window (± one segment)"] = bool(
        strip_ms
    ) and (window_start_ms - 2100 <= strip_ms[0] and strip_ms[-1] <= window_end_ms + 2100)
    checks["no frame repeated or out of order"] = strip_ms == sorted(set(strip_ms))
    for text, ok in checks.items():
        print(f"   [{'ok' if ok else 'FAILED'}] {text}")
    if strip_ms:
        first, last = format_rfc3339_ms(strip_ms[0]), format_rfc3339_ms(strip_ms[-1])
        print(f"   {len(strip_ms)} frames, {first} to {last}")

    _say("10. The audit log, hash-chained, checked end to end")
    audit = _edge(config, "audit", "verify")
    print("   " + (audit.stdout.strip() or audit.stderr.strip()).replace("\n", "\n   "))
    checks["audit log verifies"] = audit.returncode == 0

    ok = all(checks.values())
    _say(
        "Done" if ok else "Done, with failures",
        "Everything above ran for real on this machine: broker, camera, "
        "encryption, upload.\nA denial, or no answer, would have sent nothing at all.",
    )
    return 0 if ok else 1


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _prompt_box(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(("┌", "+-"))]
    if not starts:
        return ""
    start = starts[-1]
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith(("└", "+-"))),
        len(lines) - 1,
    )
    return "\n".join("   " + line for line in lines[start : end + 1])


def _strip_times(clip: bytes) -> list[int]:
    import av

    from edge.capture.timestrip import read_strip

    times = []
    with av.open(io.BytesIO(clip), "r") as container:
        for frame in container.decode(video=0):
            luma = frame.to_ndarray(format="yuv420p")[: frame.height]
            times.append(read_strip(luma)[0])
    return times
