"""Upload rules and the `put` protocol, against a real HTTP server in the test.

Where bytes may go is checked before any connection: the tests count the
connections a real server accepted, not just the requests it answered.
The https tests use a throwaway CA, standing in for a public one (no internet).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from edge.clock import ManualClock
from edge.share.manifest import new_delivery_id
from edge.share.upload import (
    UploadExpired,
    UploadFailed,
    UploadFile,
    UploadSettings,
    UploadStopped,
    check_upload_url,
    upload_delivery,
)
from uploadservers import (
    RecordedRequest,
    RecordingHttpServer,
    Reply,
    TestTls,
    accept_puts,
    make_test_tls,
    strict_http_server_running,
)

FAST = UploadSettings(timeout_s=10, initial_backoff_s=0.02, max_backoff_s=0.1)
EXAMPLE = "upload.example.org"


@pytest.fixture
def strict_http_server() -> Iterator[RecordingHttpServer]:
    with strict_http_server_running() as server:
        yield server


class Recorder:
    """An UploadObserver that remembers what it was told."""

    def __init__(self, on_retry: object = None) -> None:
        self.progress: list[tuple[str, int, int]] = []
        self.retries: list[str] = []
        self._on_retry = on_retry

    def on_progress(self, name: str, offset_bytes: int, size_bytes: int) -> None:
        self.progress.append((name, offset_bytes, size_bytes))

    def on_retry(self, name: str, reason: str, delay_s: float) -> None:
        self.retries.append(reason)
        if callable(self._on_retry):
            self._on_retry()


def _delivery() -> tuple[str, list[UploadFile]]:
    d = new_delivery_id()
    return d, [
        UploadFile.from_bytes(f"{d}.mp4.age", os.urandom(300_000)),
        UploadFile.from_bytes(f"{d}.manifest.jws", b"header.payload.signature"),
    ]


def _upload(url: str, files: list[UploadFile], **overrides: object) -> None:
    args: dict[str, object] = {
        "request_id": "6f1c2a7e-3b4d-4c5e-8f90-1a2b3c4d5e6f",
        "allowed_hosts": ["127.0.0.1"],
        "allow_insecure_localhost": True,
        "state": {},
        "stop_event": threading.Event(),
        "settings": FAST,
    }
    args.update(overrides)
    upload_delivery(url, "put", files, **args)  # type: ignore[arg-type]


# --- the upload_not_allowed rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed", "host", "port", "path"),
    [
        ("https://Upload.Example.org/in", [EXAMPLE], EXAMPLE, 443, "/in"),
        ("https://upload.example.org:8443", ["UPLOAD.example.ORG"], EXAMPLE, 8443, "/"),
        ("https://upload.example.org/a?t=1#frag", [EXAMPLE], EXAMPLE, 443, "/a?t=1"),
        ("https://bücher.example/", ["xn--bcher-kva.example"], "xn--bcher-kva.example", 443, "/"),
        ("https://XN--BCHER-KVA.example/", ["bücher.example"], "xn--bcher-kva.example", 443, "/"),
        ("https://[::1]:9/up", ["::1"], "::1", 9, "/up"),
        ("https://192.0.2.7/up", ["192.0.2.7"], "192.0.2.7", 443, "/up"),
    ],
)  # fmt: skip
def test_allowed_urls(url: str, allowed: list[str], host: str, port: int, path: str) -> None:
    target = check_upload_url(url, allowed, allow_insecure_localhost=False)
    assert (target.scheme, target.host, target.port, target.path) == ("https", host, port, path)


@pytest.mark.parametrize(
    ("url", "allowed", "insecure_ok"),
    [
        ("http://upload.example.org/", ["upload.example.org"], False),
        ("http://upload.example.org/", ["upload.example.org"], True),  # http only to 127.0.0.1
        ("http://127.0.0.1:8080/", ["127.0.0.1"], False),  # only when configured for tests
        ("http://localhost:8080/", ["localhost"], True),  # 127.0.0.1 exactly, not a name
        ("https://user@upload.example.org/", ["upload.example.org"], False),
        ("https://user:pw@upload.example.org/", ["upload.example.org"], False),
        ("https://upload.example.org.evil.test/", ["upload.example.org"], False),
        ("https://evil.test/upload.example.org", ["upload.example.org"], False),
        ("https://evil.test#@upload.example.org", ["upload.example.org"], False),
        ("https://evil.test\\@upload.example.org/", ["upload.example.org"], False),
        ("https://upload.example.org./", ["upload.example.org"], False),  # exactly
        ("https://%75pload.example.org/", ["upload.example.org"], False),
        ("https://upload.example.org:99999/", ["upload.example.org"], False),
        ("https:///nohost", ["upload.example.org"], False),
        ("ftp://upload.example.org/", ["upload.example.org"], False),
        ("https://upload.example.org/a b", ["upload.example.org"], False),
        ("https://upload.example.org/\r\nX-Evil: 1", ["upload.example.org"], False),
        ("https://[::1%25eth0]/", ["::1"], False),
        ("upload.example.org/in", ["upload.example.org"], False),
    ],
)
def test_refused_urls(url: str, allowed: list[str], insecure_ok: bool) -> None:
    with pytest.raises(UploadFailed) as refused:
        check_upload_url(url, allowed, allow_insecure_localhost=insecure_ok)
    assert refused.value.code == "upload_not_allowed"


def test_a_host_not_allowed_gets_no_connection_at_all(
    strict_http_server: RecordingHttpServer,
) -> None:
    _, files = _delivery()
    for url, allowed, insecure_ok in [
        (strict_http_server.url("/in"), ["uploads.example.org"], True),
        (strict_http_server.url("/in"), ["127.0.0.1"], False),  # http without the test switch
        (strict_http_server.url("/in", host="localhost"), ["localhost"], True),
    ]:
        with pytest.raises(UploadFailed, match="not allowed"):
            _upload(url, files, allowed_hosts=allowed, allow_insecure_localhost=insecure_ok)
    assert strict_http_server.connections == 0


# --- put ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "query"), [("/in", ""), ("/in/", ""), ("/in", "?token=abc")])
def test_put_sends_the_clip_then_the_manifest_to_url_slash_name(
    strict_http_server: RecordingHttpServer, base: str, query: str
) -> None:
    strict_http_server.responder = accept_puts("/in/")
    d, files = _delivery()
    recorder = Recorder()
    state: dict[str, str] = {}
    _upload(strict_http_server.url(base + query), files, observer=recorder, state=state)

    requests = strict_http_server.requests
    assert [(r.method, r.path) for r in requests] == [
        ("PUT", f"/in/{d}.mp4.age{query}"),
        ("PUT", f"/in/{d}.manifest.jws{query}"),
    ]
    assert strict_http_server.put_bodies() == {
        f"{d}.mp4.age": _read_all(files[0]),
        f"{d}.manifest.jws": b"header.payload.signature",
    }
    assert state == {f"{d}.mp4.age": "done", f"{d}.manifest.jws": "done"}
    assert recorder.progress[-1] == (f"{d}.manifest.jws", 24, 24)


def test_put_any_2xx_is_success(strict_http_server: RecordingHttpServer) -> None:
    codes = iter([200, 204])
    strict_http_server.responder = lambda r: Reply(next(codes)) if r.method == "PUT" else None
    _, files = _delivery()
    _upload(strict_http_server.url("/"), files)
    assert len(strict_http_server.requests) == 2


def test_put_redirect_is_refused_and_not_followed(
    strict_http_server: RecordingHttpServer,
) -> None:
    elsewhere = RecordingHttpServer().start()  # also on 127.0.0.1: not even an allowed host helps
    try:
        for status in (301, 302, 303, 307, 308):
            strict_http_server.responder = lambda r, s=status: (
                Reply(s, {"Location": elsewhere.url("/in/x")}) if r.method == "PUT" else None
            )
            _, files = _delivery()
            with pytest.raises(UploadFailed, match="redirect") as failed:
                _upload(strict_http_server.url("/in/"), files)
            assert failed.value.code == "redirect"
        assert elsewhere.connections == 0
        # One PUT per try: the manifest never goes after a clip that did not arrive.
        assert [r.path.endswith(".mp4.age") for r in strict_http_server.requests] == [True] * 5
    finally:
        elsewhere.stop()


def test_put_retries_server_errors_with_backoff_but_not_refusals(
    strict_http_server: RecordingHttpServer,
) -> None:
    answers = iter([503, 500, 429, 201, 201])
    strict_http_server.responder = lambda r: Reply(next(answers)) if r.method == "PUT" else None
    _, files = _delivery()
    recorder = Recorder()
    _upload(strict_http_server.url("/"), files, observer=recorder)
    assert len(strict_http_server.requests) == 5
    assert [reason.rsplit(" ", 1)[-1] for reason in recorder.retries] == ["503", "500", "429"]

    strict_http_server.requests.clear()
    strict_http_server.responder = lambda r: Reply(403) if r.method == "PUT" else None
    with pytest.raises(UploadFailed, match="403") as failed:
        _upload(strict_http_server.url("/"), _delivery()[1])
    assert failed.value.code == "server_refused"
    assert len(strict_http_server.requests) == 1


def test_put_resumes_after_a_restart_without_sending_the_clip_again(
    strict_http_server: RecordingHttpServer,
) -> None:
    d, files = _delivery()
    state: dict[str, str] = {}
    stop = threading.Event()

    def first(request: RecordedRequest) -> Reply | None:
        if request.method != "PUT":
            return None
        return Reply(201) if request.path.endswith(".mp4.age") else Reply(503)

    strict_http_server.responder = first
    with pytest.raises(UploadStopped):
        # The daemon is told to stop while it waits to retry the manifest.
        _upload(strict_http_server.url("/"), files, state=state, stop_event=stop,
                observer=Recorder(on_retry=stop.set))  # fmt: skip
    assert state == {f"{d}.mp4.age": "done"}

    strict_http_server.requests.clear()
    strict_http_server.responder = accept_puts()
    _upload(strict_http_server.url("/"), files, state=state)
    assert [r.path for r in strict_http_server.requests] == [f"/{d}.manifest.jws"]


def test_upload_expires_with_the_request(strict_http_server: RecordingHttpServer) -> None:
    strict_http_server.responder = lambda r: Reply(503) if r.method == "PUT" else None
    clock = ManualClock(now_ms=1_700_000_000_000)
    # Each failed try moves the (stand-in) wall clock on a minute; the request expires in 5.
    recorder = Recorder(on_retry=lambda: clock.advance_ms(60_000))
    with pytest.raises(UploadExpired) as expired:
        _upload(strict_http_server.url("/"), _delivery()[1], clock=clock, observer=recorder,
                expires_at_ms=clock.now_ms() + 5 * 60_000)  # fmt: skip
    assert "503" in (expired.value.last_error or "")
    assert len(strict_http_server.requests) == 5


def test_stop_is_prompt_even_during_a_long_backoff(
    strict_http_server: RecordingHttpServer,
) -> None:
    strict_http_server.responder = lambda r: Reply(503) if r.method == "PUT" else None
    stop = threading.Event()
    slow = UploadSettings(initial_backoff_s=3600, max_backoff_s=3600)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            _upload(strict_http_server.url("/"), _delivery()[1], stop_event=stop, settings=slow)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=run, name="test-upload")
    worker.start()
    strict_http_server.wait_for_requests(1)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert [type(e) for e in outcome] == [UploadStopped]


def test_a_source_shorter_than_declared_fails_rather_than_hangs(
    strict_http_server: RecordingHttpServer,
) -> None:
    strict_http_server.responder = accept_puts()
    short = UploadFile.from_bytes("short.mp4", b"12345")
    lying = UploadFile(short.name, 10, short.open_at)
    with pytest.raises(UploadFailed, match="ended 5 bytes early"):
        _upload(strict_http_server.url("/"), [lying])
    # The server saw a body cut short, never a complete file.
    strict_http_server.wait_until(lambda: bool(strict_http_server.incomplete))
    assert [len(r.body) for r in strict_http_server.incomplete] == [5]
    assert strict_http_server.put_bodies() == {}


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RecordingHttpServer, object]]:
    tls = make_test_tls(tmp_path_factory.mktemp("tls"), names=("localhost",))
    server = RecordingHttpServer(accept_puts(), tls=tls.server_context).start()
    try:
        yield server, tls
    finally:
        server.stop()


def test_https_put_verifies_the_certificate_and_host_name(
    tls_server: tuple[RecordingHttpServer, TestTls],
) -> None:
    server, tls = tls_server
    _, files = _delivery()
    context = tls.client_context()
    _upload(server.url("/in", host="localhost"), files, allowed_hosts=["localhost"],
            allow_insecure_localhost=False, ssl_context=context)  # fmt: skip
    assert sorted(server.put_bodies()) == sorted(f.name for f in files)


@pytest.mark.parametrize("trust_test_ca", [False, True])
def test_https_to_an_untrusted_or_misnamed_server_sends_nothing(
    tls_server: tuple[RecordingHttpServer, TestTls], trust_test_ca: bool
) -> None:
    server, tls = tls_server
    stop = threading.Event()
    recorder = Recorder(on_retry=stop.set)
    if trust_test_ca:
        # The CA is trusted but the certificate names "localhost", not 127.0.0.1.
        url, allowed, context = server.url("/in"), ["127.0.0.1"], tls.client_context()
    else:
        # The system's CA store does not know the test CA.
        url, allowed, context = server.url("/in", host="localhost"), ["localhost"], None
    with pytest.raises(UploadStopped):
        _upload(url, _delivery()[1], allowed_hosts=allowed, allow_insecure_localhost=False,
                ssl_context=context, stop_event=stop, observer=recorder)  # fmt: skip
    assert "TLS certificate not trusted" in recorder.retries[0]
    assert server.requests == []


def _read_all(file: UploadFile) -> bytes:
    with file.open_at(0) as stream:
        return stream.read()


def test_stop_ends_an_upload_stuck_on_a_silent_server_at_once() -> None:
    """A server that accepts the connection and never answers (a hung agency) must
    not hold the daemon's stop for the socket's whole timeout."""
    import socket
    import time

    from edge.share.upload import UploadFile, UploadStopped, upload_delivery

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept_and_say_nothing() -> None:
        connection, _ = listener.accept()
        held.append(connection)
        accepted.set()

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    stop = threading.Event()
    outcome: list[BaseException] = []

    def upload() -> None:
        try:
            upload_delivery(
                f"http://127.0.0.1:{port}/in/",
                "put",
                [UploadFile.from_bytes("clip.mp4", b"x" * 1000)],
                request_id="r",
                allowed_hosts=["127.0.0.1"],
                allow_insecure_localhost=True,
                state={},
                stop_event=stop,
            )
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert accepted.wait(10)
        stopped_at = time.monotonic()
        stop.set()
        uploader.join(timeout=10)
        assert not uploader.is_alive()
        assert time.monotonic() - stopped_at < 5  # the socket timeout is 30 s
        assert len(outcome) == 1 and isinstance(outcome[0], UploadStopped)
    finally:
        stop.set()
        for connection in held:
            connection.close()
        listener.close()
