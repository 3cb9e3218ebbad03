"""The fault suite's harness: the daemon as a real process, and the faults put around it.

- ``Camera``: writes a config, starts ``python -m edge --config X run`` as a real
  child process, kills it (SIGKILL) or stops it (SIGTERM), restarts it, and asks it
  what a user would (``edge status --json``, ``edge requests --json``, ``edge
  approve``/``deny``, ``edge export``, ``edge audit verify``). Every run appends to
  one log file, which a failing test prints.
- ``TcpLink``: a small TCP relay standing in for the network path to a server
  (the MQTT broker, the agency's upload server). It forwards (optionally throttled,
  so an upload takes long enough to be cut), refuses, hangs (accepts and never
  answers) or answers every HTTP request with 500.
- ``NotifySocket``: a unix datagram socket standing in for systemd's
  ``NOTIFY_SOCKET``; it records every READY=1, WATCHDOG=1 and STATUS= the daemon sends.
- ``request_payload`` / ``publish_request``: signed requests for the camera's spot
  (tests/signing.py), published on its geohash topic with QoS 1.
- ``mounted_tmpfs``: a real filesystem of a few megabytes (a tmpfs) to fill up,
  standing in for a full SD card.

Stand-ins, said once here: the camera (the virtual camera, or an ffmpeg stream for
the opencv source), the request platform (a paho publisher), systemd (the socket),
the network (TcpLink), the SD card (a tmpfs). The broker (mosquitto), the upload
server (the tus project's own), the daemon, the CLI, the files and the decoders are
the real ones.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker import MosquittoBroker
from conftest import REPO_ROOT, run_edge
from edge.share.geohash import encode, request_topic
from edge.share.verify import Location
from signing import PLATFORM_KEY, make_payload, public_b64, rfc3339

LAT, LON = 47.6062, -122.3321  # the spec vectors' camera: every request here is for it
LOCATION = Location(lat=LAT, lon=LON)
POLL_S = 0.1

T = TypeVar("T")


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: "24m") mounted on ``mount_point`` for the
    block; skips the test where it cannot be mounted (it needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run the suite as root to test a full disk")
    mount_point.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_disk(path: Path, limit_bytes: int | None = None) -> int:
    """Writes the file ``path`` until the disk refuses (or ``limit_bytes``, if given);
    returns how much it took. Down to the last byte: the disk is then truly full."""
    written = 0
    with open(path, "ab", buffering=0) as filler:
        chunk = b"\0" * 65536
        while limit_bytes is None or written < limit_bytes:
            try:
                written += filler.write(chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return written


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = POLL_S,
    describe: Callable[[], str] | None = None,
) -> T:
    """Polls a condition another process brings about (there is no event to wait on
    across processes); returns the first truthy value, AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        pause.wait(interval_s)


# --------------------------------------------------------------------------- the camera


class Camera:
    """One camera: a config, a data_dir, and `edge run` started and killed at will.

    Threads: used from the test's thread only.
    """

    def __init__(
        self,
        directory: Path,
        *,
        broker_port: int | None = None,
        data_dir: Path | None = None,
        camera: Mapping[str, object] | None = None,
        buffer: Mapping[str, object] | None = None,
        extra_toml: str = "",
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or directory / "data"
        self.config = directory / "edge.toml"
        self.log_path = directory / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        camera_settings: dict[str, object] = {"width": 320, "height": 180, "fps": 10}
        camera_settings.update(camera or {})
        buffer_settings: dict[str, object] = {"segment_seconds": 1, "max_bytes": "1GB"}
        buffer_settings.update(buffer or {})
        mqtt = f'host = "127.0.0.1"\nport = {broker_port}' if broker_port else 'host = ""'
        self.config.write_text(
            f"""
[device]
data_dir = "{self.data_dir}"
latitude = {LAT}
longitude = {LON}
timezone = "UTC"
[camera]
{_toml_lines(camera_settings)}
[buffer]
{_toml_lines(buffer_settings)}
[mqtt]
{mqtt}
[trust]
platform_keys = ["{public_b64(PLATFORM_KEY)}"]
[policy]
# This machine's clock may not say it is synchronised (a container): keep its footage.
unsynced_footage = "warn"
[notify]
console = true
[upload]
allow_insecure_localhost = true
{extra_toml}
"""
        )

    # -- the daemon process

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, env: Mapping[str, str] | None = None) -> None:
        assert not self.running, "already running"
        self.starts += 1
        full_env = dict(os.environ)
        full_env.pop("EDGE_CONFIG", None)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("WATCHDOG_USEC", None)
        full_env.update(env or {})
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"---- start {self.starts} ----\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "--config", str(self.config), "run"],
                cwd=REPO_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
            )

    def kill(self) -> None:
        """kill -9: a power cut as far as the daemon can tell."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.running:
            try:
                self.stop(timeout_s=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def daemon_status(self) -> dict[str, Any] | None:
        """The running daemon's own status file (what `edge status` reads), if this run
        has written one. Read directly: cheap enough to poll."""
        if not self.running:
            return None
        try:
            status = json.loads((self.data_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return status if status.get("pid") == self.pid else None

    def wait_ready(self, timeout_s: float = 60.0, *, subscribed: bool = False) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.running, "the daemon exited:\n" + self.log_tail()
            status = self.daemon_status()
            if status is None:
                return None
            if subscribed and not status.get("broker", {}).get("subscribed"):
                return None
            return status

        return wait_until(ready, timeout_s, "the daemon to be up", describe=self.log_tail)

    def frames(self) -> int:
        status = self.daemon_status() or {}
        return int(status.get("camera", {}).get("frames_captured", 0))

    # -- the CLI, as a user runs it

    def edge(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[bytes]:
        return run_edge("--config", str(self.config), *args, timeout_s=timeout_s)

    def status(self) -> dict[str, Any]:
        result = self.edge("status", "--json")
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def requests(self, *, all: bool = False) -> list[dict[str, Any]]:
        result = self.edge("requests", "--json", *(["--all"] if all else []))
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def audit_verify(self) -> str:
        result = self.edge("audit", "verify")
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
        return result.stdout.decode()

    def export(self, start: str, end: str, output: Path) -> str:
        result = self.edge("export", "--start", start, "--end", end, "-o", str(output))
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode() + result.stderr.decode()

    def client_id(self) -> str:
        return (self.data_dir / "mqtt-client-id").read_text().strip()

    # -- logs

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _toml_lines(settings: Mapping[str, object]) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())


@contextlib.contextmanager
def running_camera(camera: Camera) -> Iterator[Camera]:
    """Stops the daemon on the way out and prints its log when the test failed."""
    try:
        yield camera
    except BaseException:
        print(camera.log_tail(200))
        raise
    finally:
        camera.close()


# --------------------------------------------------------------------------- requests


def request_payload(
    *,
    window_start_s: float,
    window_end_s: float,
    upload_url: str,
    protocol: str = "tus",
    now_s: float | None = None,
) -> tuple[bytes, str]:
    """A signed request for the camera's spot; returns (payload, jti)."""
    now_s = time.time() if now_s is None else now_s
    jti = str(uuid.uuid4())
    payload = make_payload(
        now_s=now_s,
        location=LOCATION,
        cert_overrides={"upload_hosts": ["127.0.0.1"]},
        request_overrides={
            "jti": jti,
            "public_url": f"https://platform.example.org/r/{jti}",
            "window": {"start": rfc3339(window_start_s), "end": rfc3339(window_end_s)},
            "upload": {"url": upload_url, "protocol": protocol},
        },
    )
    return payload, jti


def publish_request(broker: MosquittoBroker, payload: bytes, *, precision: int = 5) -> None:
    """Publishes with QoS 1 and returns once the broker has it (PUBACK)."""
    with broker.publisher() as publisher:
        publisher.publish(request_topic("edge", encode(LAT, LON, precision)), payload)


def tus_metadata(header: str | None) -> dict[str, str]:
    """A tus Upload-Metadata header as a dict (values base64-decoded)."""
    metadata: dict[str, str] = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition(" ")
        if key:
            metadata[key] = base64.b64decode(value).decode() if value else ""
    return metadata


# --------------------------------------------------------------------------- the network


class TcpLink:
    """A TCP relay on 127.0.0.1 in front of a server, in one of four modes:

    - ``forward``: relays both ways; ``upstream_bytes_per_s`` throttles what the
      client sends (so an upload lasts long enough to be cut mid-way);
    - ``refuse``: accepts and closes at once (the server is down);
    - ``hang``: accepts, reads and discards, never answers (a server that hangs);
    - ``http500``: reads each HTTP request and answers 500 (a failing server).

    ``cut()`` drops every open connection (a network failure mid-transfer).
    Threads: one accept thread; two per forwarded connection, one per other one.
    """

    MODES = ("forward", "refuse", "hang", "http500")

    def __init__(self, target_port: int, *, upstream_bytes_per_s: float | None = None) -> None:
        self.target_port = target_port
        self.upstream_bytes_per_s = upstream_bytes_per_s
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._changed = threading.Condition()
        self._mode = "forward"
        self.accepted: Counter[str] = Counter()  # connections accepted, by the mode then
        self.answered_500 = 0
        self.upstream_bytes = 0  # bytes relayed from clients to the server
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-link", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, *, cut: bool = False) -> None:
        if mode not in self.MODES:
            raise ValueError(mode)
        with self._changed:
            self._mode = mode
            self._changed.notify_all()
        if cut:
            self.cut()

    def cut(self) -> None:
        with self._changed:
            sockets = list(self._open)
        for sock in sockets:
            _close(sock)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout_s):
                raise AssertionError(f"the link never saw {what}")

    def close(self) -> None:
        self._stop.set()
        _close(self._listener)
        self.cut()
        self._thread.join(timeout=5)

    # -- internals

    def _track(self, sock: socket.socket) -> None:
        with self._changed:
            self._open.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._changed:
            self._open.discard(sock)
        _close(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            with self._changed:
                mode = self._mode
                self.accepted[mode] += 1
                self._changed.notify_all()
            if mode == "refuse":
                _close(client)
                continue
            self._track(client)
            handler = {"forward": self._forward, "hang": self._hang, "http500": self._answer_500}
            threading.Thread(
                target=handler[mode], args=(client,), name=f"tcp-link-{mode}", daemon=True
            ).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            self._untrack(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        back = threading.Thread(
            target=self._pump,
            args=(upstream, client),
            kwargs={"upstream": False},
            name="tcp-link-down",
            daemon=True,
        )
        back.start()
        self._pump(client, upstream, upstream=True)
        back.join(timeout=30)

    def _pump(self, source: socket.socket, sink: socket.socket, *, upstream: bool) -> None:
        rate = self.upstream_bytes_per_s if upstream else None
        started_s = time.monotonic()
        sent = 0
        try:
            while not self._stop.is_set():
                data = source.recv(16 * 1024)
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
                if upstream:
                    with self._changed:
                        self.upstream_bytes += len(data)
                        self._changed.notify_all()
                if rate is not None:
                    # The throttle is the fault itself (a slow uplink), not a wait
                    # for something to happen.
                    ahead_s = sent / rate - (time.monotonic() - started_s)
                    if ahead_s > 0 and self._stop.wait(ahead_s):
                        break
        except OSError:
            pass
        finally:
            self._untrack(source)
            self._untrack(sink)

    def _hang(self, client: socket.socket) -> None:
        try:
            while not self._stop.is_set() and client.recv(64 * 1024):
                pass
        except OSError:
            pass
        finally:
            self._untrack(client)

    def _answer_500(self, client: socket.socket) -> None:
        buffered = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffered:
                    data = client.recv(64 * 1024)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and value.strip().isdigit():
                        length = int(value.strip())
                while len(buffered) < length:
                    data = client.recv(64 * 1024)
                    if not data:
                        return
                    buffered += data
                buffered = buffered[length:]
                client.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
                )
                with self._changed:
                    self.answered_500 += 1
                    self._changed.notify_all()
        except OSError:
            pass
        finally:
            self._untrack(client)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --------------------------------------------------------------------------- systemd


class NotifySocket:
    """Stands in for systemd's notification socket: records (monotonic s, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._changed = threading.Condition()
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int = 10_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def lines(self, since_s: float = 0.0, until_s: float = float("inf")) -> list[tuple[float, str]]:
        """Every line of every datagram received in [since_s, until_s] (monotonic)."""
        with self._changed:
            return [
                (at_s, line)
                for at_s, message in self.messages
                if since_s <= at_s <= until_s
                for line in message.splitlines()
            ]

    def count(self, line: str, since_s: float = 0.0, until_s: float = float("inf")) -> int:
        return sum(1 for _at, text in self.lines(since_s, until_s) if text == line)

    def wait_for(self, line: str, *, since_s: float, timeout_s: float) -> float:
        """Waits for a line received at or after since_s; returns when it came."""

        def found() -> float | None:
            return next((at for at, text in self.lines(since_s) if text == line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout_s):
                raise AssertionError(f"no {line} from the daemon within {timeout_s} s")
        at = found()
        assert at is not None
        return at

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))
                self._changed.notify_all()


# --------------------------------------------------------------------------- figures


def process_figures(pid: int) -> tuple[int, int]:
    """(resident set in KiB, open file descriptors) of a process, from /proc."""
    rss_kib = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return rss_kib, len(os.listdir(f"/proc/{pid}/fd"))
