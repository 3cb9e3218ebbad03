"""Real upload servers for tests: the tus project's Node.js server, and a small HTTP server.

- ``TusServer``: ``@tus/server`` with ``@tus/file-store`` (tests/tus_server/), a real
  ``node`` process on a free port, stopped, killed and restarted on the same port
  and directory at will. It reports every request and response on stdout; tests
  wait on those reports (``wait_for``) instead of sleeping.
- ``RecordingHttpServer``: ``http.server`` in a thread, recording every request and
  every accepted connection. Its ``responder`` decides the answer; a request the
  responder does not expect (returns ``None``) is recorded in ``unexpected`` and
  the ``strict_http_server`` fixture fails the test for it.
- ``make_test_tls``: a throwaway CA and server certificate, standing in for a
  public CA (no internet here), to exercise the https path.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TUS_SERVER_DIR = Path(__file__).resolve().parent / "tus_server"
NODE_MODULES = TUS_SERVER_DIR / "node_modules"
_START_TIMEOUT_S = 30.0


def require_tus_server() -> None:
    """Skips (with the fix) when the tus server's packages are not installed; nothing else."""
    if not (NODE_MODULES / "@tus" / "server").is_dir():
        pytest.skip(
            "tests/tus_server/node_modules is missing: run "
            "`npm ci --prefix tests/tus_server` (scripts/setup does)"
        )


def node_binary() -> str:
    # EDGE_TEST_NODE lets a developer run the suite under another Node.js (e.g. 18).
    node = os.environ.get("EDGE_TEST_NODE") or shutil.which("node")
    if not node:
        raise RuntimeError("node is not installed (scripts/setup installs it)")
    return node


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TusServer:
    """One real tus server process at a time, on a fixed port once started."""

    def __init__(self, storage_dir: Path) -> None:
        require_tus_server()
        self.storage_dir = storage_dir
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.events: list[dict[str, Any]] = []  # every report, across restarts
        self._changed = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The creation URL."""
        return f"http://127.0.0.1:{self.port}/files"

    def start(self) -> None:
        assert self._process is None, "already running"
        mark = len(self.events)
        port = self.port or free_port()
        self._process = subprocess.Popen(
            [node_binary(), "server.js", str(port), str(self.storage_dir)],
            cwd=TUS_SERVER_DIR,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(
            target=self._read_reports, args=(self._process,), name="tus-server-reports", daemon=True
        )
        self._reader.start()
        listening = self.wait_for(lambda e: e["event"] in ("listening", "exited"), since=mark)
        if listening["event"] != "listening":
            self._process = None
            raise RuntimeError(f"the tus server did not start: {listening}")
        self.port = int(listening["port"])

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean stop), or SIGKILL to stand in for a crash or power cut."""
        process = self._process
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self._process = self._reader = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _read_reports(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exited", "code": process.wait()})
            self._changed.notify_all()

    def wait_for(
        self, matches: Callable[[dict[str, Any]], bool], *, since: int = 0, timeout_s: float = 30
    ) -> dict[str, Any]:
        """The first report from index ``since`` on that matches; AssertionError on timeout."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [e for e in self.events[since:] if matches(e)][:1]
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(check, timeout=timeout_s):
                raise AssertionError(
                    f"the tus server never reported what the test waited for; "
                    f"last reports: {self.events[-5:]}"
                )
        return found[0]

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events[since:] if e["event"] == "request"]

    def stored_uploads(self) -> dict[str, StoredUpload]:
        """Uploads in the file store, by their ``filename`` metadata."""
        uploads: dict[str, StoredUpload] = {}
        for info_path in self.storage_dir.glob("*.json"):
            info = json.loads(info_path.read_text())
            data_path = self.storage_dir / info["id"]
            metadata = info.get("metadata") or {}
            uploads[metadata.get("filename", info["id"])] = StoredUpload(
                id=info["id"],
                size=int(info["size"]),
                metadata=metadata,
                path=data_path,
            )
        return uploads


@dataclass(frozen=True)
class StoredUpload:
    id: str
    size: int  # the Upload-Length the client declared
    metadata: dict[str, str]
    path: Path

    def data(self) -> bytes:
        return self.path.read_bytes()

    def sha256(self) -> str:
        return hashlib.sha256(self.data()).hexdigest()


@contextlib.contextmanager
def running_tus_server(storage_dir: Path) -> Iterator[TusServer]:
    """For a fixture: ``with running_tus_server(tmp_path / "store") as server: yield server``."""
    server = TusServer(storage_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- a small real HTTP server -------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Responder = Callable[[RecordedRequest], Reply | None]


class RecordingHttpServer:
    """``http.server`` on 127.0.0.1, in a thread; records requests and connections."""

    MAX_BODY_BYTES = 256 * 1024 * 1024

    def __init__(self, responder: Responder | None = None, *, tls: ssl.SSLContext | None = None):
        self.responder: Responder = responder or (lambda request: None)
        self.requests: list[RecordedRequest] = []
        self.unexpected: list[RecordedRequest] = []
        self.incomplete: list[RecordedRequest] = []  # bodies cut short by the client
        self.errors: list[str] = []  # failed TLS handshakes and the like
        self.connections = 0
        self._changed = threading.Condition()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length_text = self.headers.get("Content-Length", "0")
                if self.headers.get("Transfer-Encoding") or not length_text.isdigit():
                    self.send_error(411)
                    return
                length = int(length_text)
                if length > owner.MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                body = self.rfile.read(length)
                request = RecordedRequest(self.command, self.path, dict(self.headers), body)
                if len(body) < length:  # the client hung up mid-body: nothing was received
                    with owner._changed:
                        owner.incomplete.append(request)
                        owner._changed.notify_all()
                    self.close_connection = True
                    return
                reply = owner.responder(request)
                with owner._changed:
                    owner.requests.append(request)
                    if reply is None:
                        owner.unexpected.append(request)
                    owner._changed.notify_all()
                if reply is None:
                    reply = Reply(500, body=b"unexpected request")
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_PUT = do_POST = do_PATCH = do_HEAD = do_DELETE = do_OPTIONS = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                with owner._changed:
                    owner.connections += 1
                    owner._changed.notify_all()
                return True

            def handle_error(self, request: Any, client_address: Any) -> None:
                with owner._changed:
                    owner.errors.append(repr(sys.exc_info()[1]))

        self._server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one interval
            name="recording-http-server",
            daemon=True,
        )

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def start(self) -> RecordingHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def wait_for_requests(self, count: int, timeout_s: float = 10) -> list[RecordedRequest]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout=timeout_s):
                raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
            return list(self.requests)

    def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10) -> None:
        """Waits until ``condition()`` (checked whenever the server records something)."""
        with self._changed:
            if not self._changed.wait_for(condition, timeout=timeout_s):
                raise AssertionError("the HTTP server never saw what the test waited for")

    def put_bodies(self) -> dict[str, bytes]:
        """The body of every PUT, by the last segment of its path."""
        with self._changed:
            return {
                r.path.split("?")[0].rsplit("/", 1)[-1]: r.body
                for r in self.requests
                if r.method == "PUT"
            }


def accept_puts(under: str = "/") -> Responder:
    """Answers 201 to a PUT below ``under``; anything else is unexpected."""

    def respond(request: RecordedRequest) -> Reply | None:
        if request.method == "PUT" and request.path.startswith(under):
            return Reply(201)
        return None

    return respond


@contextlib.contextmanager
def strict_http_server_running(
    tls: ssl.SSLContext | None = None,
) -> Iterator[RecordingHttpServer]:
    """For a fixture. Expects nothing until the test sets ``responder``; on leaving, fails
    the test if the server got any request the responder did not expect."""
    server = RecordingHttpServer(tls=tls).start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.unexpected, f"unexpected requests: {server.unexpected}"


# --- TLS with a throwaway CA ------------------------------------------------------------------


@dataclass(frozen=True)
class TestTls:
    __test__ = False  # not a pytest test class
    ca_file: Path  # trust this (and only this) to reach the server
    server_context: ssl.SSLContext

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def make_test_tls(directory: Path, names: tuple[str, ...] = ("localhost",)) -> TestTls:
    """A CA and a server certificate for ``names`` (DNS names or IP addresses)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "test-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain_file = directory / "server.pem"
    key_file = directory / "server.key"
    chain_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain_file, key_file)
    return TestTls(ca_file, server_context)
