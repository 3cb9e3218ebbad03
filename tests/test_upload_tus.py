"""tus delivery against the tus project's own server (@tus/server + @tus/file-store, Node.js).

The server runs as a real `node` process on a free port; a test kills it (SIGKILL:
a crash or power cut) mid-upload and restarts it, or kills the uploading process
itself and starts a new one with the state it left on disk, and checks that the
upload resumes from the server's offset (a HEAD, then a PATCH from a non-zero
offset, and no second POST), and that the stored files are what the manifest says.
Skipped, saying how to fix it, only when tests/tus_server/node_modules is absent.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.jwk import OKPKey

from edge.share import manifest as m
from edge.share.upload import (
    JsonFileState,
    UploadFailed,
    UploadFile,
    UploadSettings,
    UploadStopped,
    upload_delivery,
)
from uploadservers import (
    RecordedRequest,
    RecordingHttpServer,
    Reply,
    TusServer,
    make_test_tls,
    running_tus_server,
    strict_http_server_running,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUEST_ID = "6f1c2a7e-3b4d-4c5e-8f90-1a2b3c4d5e6f"
CHUNK_BYTES = 1024 * 1024
FAST = UploadSettings(
    timeout_s=10, chunk_bytes=CHUNK_BYTES, initial_backoff_s=0.05, max_backoff_s=0.5
)

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


@pytest.fixture
def tus_server(tmp_path: Path) -> Iterator[TusServer]:
    with running_tus_server(tmp_path / "tus-store") as server:
        yield server


class Delivery:
    """A real delivery package: a clip age-encrypted to the agency, and its manifest."""

    def __init__(self, directory: Path, clip_bytes: int) -> None:
        self.agency = pyrage.x25519.Identity.generate()
        self.device_key = Ed25519PrivateKey.generate()
        self.id = m.new_delivery_id()
        self.plaintext = os.urandom(clip_bytes)  # stands in for a clip from the outbox
        self.clip_path = directory / m.clip_file_name(self.id, encrypted=True)
        with self.clip_path.open("wb") as out:
            self.clip = m.encrypt_clip(
                io.BytesIO(self.plaintext), str(self.agency.to_public()), out, delivery_id=self.id
            )
        window = m.Window("2024-05-01T12:00:00Z", "2024-05-01T12:10:00Z")
        claims = m.manifest_claims(
            request_id=REQUEST_ID,
            issuer="us-wa-seattle-pd",
            device_key=self.device_key.public_key(),
            window_requested=window,
            window_approved=window,
            window_delivered=window,
            clock_synced=True,
            clip=self.clip,
            approved_at_s=1714570000,
            issued_at_s=1714570001,
        )
        self.manifest_name = m.manifest_file_name(self.id)
        self.manifest_jws = m.sign_manifest(claims, self.device_key)

    def files(self, clip_open_at: Any = None) -> list[UploadFile]:
        clip = UploadFile.from_path(self.clip.name, self.clip_path)
        if clip_open_at is not None:
            clip = UploadFile(clip.name, clip.size, clip_open_at)
        return [clip, UploadFile.from_bytes(self.manifest_name, self.manifest_jws.encode())]

    def check_stored(self, server: TusServer) -> None:
        """What an agency does: verify the manifest, then the clip against it, then open it."""
        stored = server.stored_uploads()
        manifest = stored[self.manifest_name].data().decode()
        claims = json.loads(
            jws.deserialize_compact(
                manifest,
                OKPKey.import_key(m.device_jwk(self.device_key.public_key())),
                algorithms=["EdDSA"],
            ).payload
        )
        clip = stored[claims["file"]["name"]]
        assert clip.size == claims["file"]["size"] == clip.path.stat().st_size
        assert clip.sha256() == claims["file"]["sha256"]
        assert pyrage.decrypt(clip.data(), [self.agency]) == self.plaintext
        for name in (self.clip.name, self.manifest_name):
            assert stored[name].metadata == {"filename": name, "request_id": REQUEST_ID}


def _upload(server: TusServer, files: list[UploadFile], **overrides: Any) -> None:
    args: dict[str, Any] = {
        "request_id": REQUEST_ID,
        "allowed_hosts": ["127.0.0.1"],
        "allow_insecure_localhost": True,
        "state": {},
        "stop_event": threading.Event(),
        "settings": FAST,
    }
    args.update(overrides)
    upload_delivery(server.url, "tus", files, **args)


def _post_for(server: TusServer, name: str, since: int = 0) -> list[dict[str, Any]]:
    encoded = base64.b64encode(name.encode()).decode()
    return [
        e
        for e in server.requests(since)
        if e["method"] == "POST" and f"filename {encoded}" in (e["upload_metadata"] or "")
    ]


def test_clip_then_manifest_arrive_whole_with_tus_metadata(
    tus_server: TusServer, tmp_path: Path
) -> None:
    delivery = Delivery(tmp_path, clip_bytes=3 * CHUNK_BYTES + 12345)
    state: dict[str, str] = {}
    _upload(tus_server, delivery.files(), state=state)
    delivery.check_stored(tus_server)

    requests = tus_server.requests()
    assert all(e["tus_resumable"] == "1.0.0" for e in requests)
    # The clip is created and completed before the manifest is even created.
    clip_post = requests.index(_post_for(tus_server, delivery.clip.name)[0])
    manifest_post = requests.index(_post_for(tus_server, delivery.manifest_name)[0])
    clip_patches = [i for i, e in enumerate(requests[:manifest_post]) if e["method"] == "PATCH"]
    assert clip_post < clip_patches[0] and len(clip_patches) == 4  # bounded chunks
    assert requests[clip_post]["upload_length"] == str(delivery.clip.size)
    assert state == {delivery.clip.name: "done", delivery.manifest_name: "done"}


class PausingStream(io.RawIOBase):
    """The clip's bytes, pausing once after ``pause_at`` bytes until the test says go on:
    lets the test act while a PATCH is provably in flight."""

    def __init__(self, data: bytes, offset: int, pause_at: int, paused: threading.Event,
                 go_on: threading.Event) -> None:  # fmt: skip
        self._data = data
        self._position = offset
        self._pause_at = pause_at
        self._paused = paused
        self._go_on = go_on

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._position == self._pause_at and not self._paused.is_set():
            self._paused.set()
            assert self._go_on.wait(30), "the test never let the upload go on"
        end = len(self._data)
        if self._position < self._pause_at:
            end = self._pause_at
        chunk = self._data[self._position : min(end, self._position + len(buffer))]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def test_server_crash_mid_patch_resumes_from_the_servers_offset(
    tus_server: TusServer, tmp_path: Path
) -> None:
    delivery = Delivery(tmp_path, clip_bytes=6 * 1024 * 1024)
    ciphertext = delivery.clip_path.read_bytes()
    paused, go_on, retried = threading.Event(), threading.Event(), threading.Event()
    pause_at = CHUNK_BYTES + CHUNK_BYTES // 2  # half way through the second PATCH

    def clip_open_at(offset: int) -> IO[bytes]:
        return io.BufferedReader(PausingStream(ciphertext, offset, pause_at, paused, go_on))

    class Observer:
        def on_progress(self, name: str, offset_bytes: int, size_bytes: int) -> None:
            pass

        def on_retry(self, name: str, reason: str, delay_s: float) -> None:
            retried.set()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            _upload(tus_server, delivery.files(clip_open_at), observer=Observer())
        except BaseException as error:
            errors.append(error)

    uploader = threading.Thread(target=run, name="test-tus-upload")
    uploader.start()
    try:
        assert paused.wait(30)
        tus_server.stop(kill=True)  # the server dies with a PATCH half sent
        go_on.set()
        assert retried.wait(30)
        mark = len(tus_server.events)
        tus_server.start()  # same port, same store
    finally:
        go_on.set()
        uploader.join(timeout=60)
    assert not uploader.is_alive() and errors == []

    after = tus_server.requests(mark)
    head = tus_server.wait_for(lambda e: e["event"] == "response" and e["method"] == "HEAD",
                               since=mark)  # fmt: skip
    first_patch = next(e for e in after if e["method"] == "PATCH")
    assert after[0]["method"] == "HEAD"
    assert int(head["upload_offset"]) >= CHUNK_BYTES  # at least the first PATCH survived
    assert first_patch["upload_offset"] == str(head["upload_offset"])  # from there, not zero
    assert len(_post_for(tus_server, delivery.clip.name)) == 1  # resumed, not restarted
    delivery.check_stored(tus_server)


CHILD = r"""
import io, json, sys, threading
from pathlib import Path
from edge.share.upload import JsonFileState, UploadFile, UploadSettings, upload_delivery

url, state_path, clip_path, manifest_path, request_id, pause_at = sys.argv[1:]
pause_at = int(pause_at)
clip = UploadFile.from_path(Path(clip_path).name, Path(clip_path))
manifest = UploadFile.from_path(Path(manifest_path).name, Path(manifest_path))

def open_at(offset):
    # Stops for good after pause_at bytes, mid-PATCH, so the parent can kill us there.
    stream = clip.open_at(offset)
    class Pausing(io.RawIOBase):
        position = offset
        def readable(self):
            return True
        def readinto(self, buffer):
            if 0 <= pause_at == self.position:
                print(json.dumps({"paused": self.position}), flush=True)
                threading.Event().wait()
            limit = len(buffer)
            if pause_at >= self.position:
                limit = min(limit, pause_at - self.position)
            data = stream.read(limit)
            buffer[: len(data)] = data
            self.position += len(data)
            return len(data)
    return io.BufferedReader(Pausing())

class Observer:
    def on_progress(self, name, offset_bytes, size_bytes):
        print(json.dumps({"progress": [name, offset_bytes]}), flush=True)
    def on_retry(self, name, reason, delay_s):
        print(json.dumps({"retry": reason}), flush=True)

upload_delivery(
    url, "tus",
    [UploadFile(clip.name, clip.size, open_at), manifest],
    request_id=request_id, allowed_hosts=["127.0.0.1"], allow_insecure_localhost=True,
    state=JsonFileState(Path(state_path)), stop_event=threading.Event(),
    settings=UploadSettings(chunk_bytes=1 << 20, initial_backoff_s=0.05, max_backoff_s=0.5),
    observer=Observer(),
)
print(json.dumps({"done": True}), flush=True)
"""


def _start_child(
    server: TusServer, delivery: Delivery, state_path: Path, pause_at: int
) -> subprocess.Popen[str]:
    manifest_path = state_path.parent / delivery.manifest_name
    manifest_path.write_text(delivery.manifest_jws)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, server.url, str(state_path), str(delivery.clip_path),
         str(manifest_path), REQUEST_ID, str(pause_at)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip


def test_uploader_killed_mid_patch_resumes_after_restart(
    tus_server: TusServer, tmp_path: Path
) -> None:
    delivery = Delivery(tmp_path, clip_bytes=6 * 1024 * 1024)
    state_path = tmp_path / "upload-state.json"

    first = _start_child(tus_server, delivery, state_path, pause_at=2 * CHUNK_BYTES + 4096)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "paused" in json.loads(line):
                break
        else:
            pytest.fail(f"the first uploader ended without pausing: {first.wait()}")
        first.kill()  # power cut: the daemon dies with a PATCH in flight
    finally:
        first.kill()
        first.wait(timeout=10)
    saved = json.loads(state_path.read_text())
    assert saved[delivery.clip.name].startswith(f"tus {tus_server.url}/")

    # The server's report of the PATCH cut short may trail the kill: wait for it.
    tus_server.wait_for(
        lambda e: e["event"] == "request" and e["upload_offset"] == str(2 * CHUNK_BYTES)
    )
    mark = len(tus_server.events)
    second = _start_child(tus_server, delivery, state_path, pause_at=-1)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    reports = [json.loads(line) for line in out.splitlines()]
    assert reports[-1] == {"done": True}
    clip_offsets = [
        r["progress"][1] for r in reports if r.get("progress", [""])[0] == delivery.clip.name
    ]
    assert clip_offsets[0] >= 2 * CHUNK_BYTES  # the restarted daemon began where the server was

    after = tus_server.requests(mark)
    assert after[0]["method"] == "HEAD"
    head = tus_server.wait_for(lambda e: e["event"] == "response" and e["method"] == "HEAD",
                               since=mark)  # fmt: skip
    assert int(head["upload_offset"]) == clip_offsets[0]
    assert after[1]["method"] == "PATCH" and after[1]["upload_offset"] == str(clip_offsets[0])
    assert len(_post_for(tus_server, delivery.clip.name)) == 1
    delivery.check_stored(tus_server)
    assert json.loads(state_path.read_text()) == {
        delivery.clip.name: "done",
        delivery.manifest_name: "done",
    }


def test_an_upload_the_server_lost_starts_anew(tus_server: TusServer, tmp_path: Path) -> None:
    delivery = Delivery(tmp_path, clip_bytes=2 * CHUNK_BYTES)
    state: dict[str, str] = {}
    _upload(tus_server, delivery.files()[:1], state=state)
    lost = tus_server.stored_uploads()[delivery.clip.name]
    lost.path.unlink()
    lost.path.with_name(lost.id + ".json").unlink()
    state[delivery.clip.name] = f"tus {tus_server.url}/{lost.id}"  # as if it had not finished

    _upload(tus_server, delivery.files(), state=state)
    assert len(_post_for(tus_server, delivery.clip.name)) == 2
    delivery.check_stored(tus_server)


def test_an_unencrypted_clip_goes_out_decrypted_on_the_fly_from_its_sealed_copy(
    tus_server: TusServer, tmp_path: Path
) -> None:
    # No recipient: D.mp4 is sent as is, read from the outbox copy sealed to the device
    # (plaintext never on disk), and a resumed upload decrypts from the server's offset.
    device = pyrage.x25519.Identity.generate()
    plaintext = os.urandom(3 * CHUNK_BYTES + 99)
    sealed = tmp_path / "outbox-clip.age"
    sealed.write_bytes(pyrage.encrypt(plaintext, [device.to_public()]))
    d = m.new_delivery_id()
    clip = UploadFile(
        m.clip_file_name(d, encrypted=False),
        len(plaintext),
        functools.partial(m.open_sealed_clip_at, sealed, [device]),
    )
    state: dict[str, str] = {}
    stop = threading.Event()

    class StopAfterFirstChunk:
        def on_progress(self, name: str, offset_bytes: int, size_bytes: int) -> None:
            if offset_bytes > 0:
                stop.set()

        def on_retry(self, name: str, reason: str, delay_s: float) -> None:
            pass

    with pytest.raises(UploadStopped):
        _upload(tus_server, [clip], state=state, stop_event=stop, observer=StopAfterFirstChunk())
    # The server's report of the last response may trail the client's: wait for it.
    tus_server.wait_for(lambda e: e["event"] == "response" and e["upload_offset"] == CHUNK_BYTES)
    mark = len(tus_server.events)
    _upload(tus_server, [clip], state=state)
    after = tus_server.requests(mark)
    assert [e["method"] for e in after[:2]] == ["HEAD", "PATCH"]
    assert int(after[1]["upload_offset"]) >= CHUNK_BYTES
    assert tus_server.stored_uploads()[clip.name].data() == plaintext

    wrong_key = UploadFile(
        m.clip_file_name(m.new_delivery_id(), encrypted=False),
        len(plaintext),
        functools.partial(m.open_sealed_clip_at, sealed, [pyrage.x25519.Identity.generate()]),
    )
    with pytest.raises(UploadFailed, match="does not open") as failed:
        _upload(tus_server, [wrong_key])
    assert failed.value.code == "source_error"


# --- a hostile tus endpoint (Python stand-in: the real server never misbehaves so) -------------


@pytest.fixture
def hostile() -> Iterator[RecordingHttpServer]:
    with strict_http_server_running() as server:
        yield server


@pytest.mark.parametrize("where", ["localhost", "upload.example.org.evil.test", "user@127.0.0.1"])
def test_a_tus_location_on_another_host_fails_the_upload(
    hostile: RecordingHttpServer, where: str
) -> None:
    elsewhere = RecordingHttpServer().start()
    try:
        location = f"http://{where}:{elsewhere.port}/files/abc"
        hostile.responder = lambda r: (
            Reply(201, {"Location": location, "Tus-Resumable": "1.0.0"})
            if r.method == "POST"
            else None
        )
        state: dict[str, str] = {}
        with pytest.raises(UploadFailed, match="Location refused") as failed:
            upload_delivery(hostile.url("/files"), "tus", _tiny_files(), request_id=REQUEST_ID,
                            allowed_hosts=["127.0.0.1"], allow_insecure_localhost=True,
                            state=state, stop_event=threading.Event(), settings=FAST)  # fmt: skip
        assert failed.value.code == "location_not_allowed"
        assert [r.method for r in hostile.requests] == ["POST"]  # no PATCH anywhere
        assert elsewhere.connections == 0
        assert state == {}
    finally:
        elsewhere.stop()


def test_a_relative_tus_location_is_resolved_against_the_creation_url(
    hostile: RecordingHttpServer,
) -> None:
    # A minimal tus endpoint in Python: the real server always answers absolute URLs.
    def tus(request: RecordedRequest) -> Reply | None:
        if request.method == "POST" and request.path == "/api/files":
            return Reply(201, {"Location": "upload/abc", "Tus-Resumable": "1.0.0"})
        if request.method == "PATCH" and request.path == "/api/upload/abc":
            offset = int(request.headers["Upload-Offset"]) + len(request.body)
            return Reply(204, {"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0"})
        return None

    hostile.responder = tus
    files = _tiny_files()[:1]
    upload_delivery(hostile.url("/api/files"), "tus", files, request_id=REQUEST_ID,
                    allowed_hosts=(h for h in ["127.0.0.1"]), allow_insecure_localhost=True,
                    state={}, stop_event=threading.Event(), settings=FAST)  # fmt: skip
    assert [(r.method, r.path) for r in hostile.requests] == [
        ("POST", "/api/files"),
        ("PATCH", "/api/upload/abc"),
    ]
    assert hostile.requests[1].body == b"clip bytes"


def test_a_tus_location_that_drops_tls_fails_the_upload(tmp_path: Path) -> None:
    tls = make_test_tls(tmp_path, names=("127.0.0.1",))
    with strict_http_server_running(tls=tls.server_context) as hostile:
        # Same host and port, but plain http: the rest of the clip would go in clear.
        hostile.responder = lambda r: (
            Reply(201, {"Location": f"http://127.0.0.1:{hostile.port}/files/abc"})
            if r.method == "POST"
            else None
        )
        with pytest.raises(UploadFailed, match="scheme changed") as failed:
            upload_delivery(hostile.url("/files"), "tus", _tiny_files(), request_id=REQUEST_ID,
                            allowed_hosts=["127.0.0.1"], allow_insecure_localhost=True,
                            state={}, stop_event=threading.Event(), settings=FAST,
                            ssl_context=tls.client_context())  # fmt: skip
        assert failed.value.code == "location_not_allowed"
        assert [r.method for r in hostile.requests] == ["POST"]


def test_a_tus_creation_redirect_is_refused(hostile: RecordingHttpServer) -> None:
    hostile.responder = lambda r: (
        Reply(307, {"Location": hostile.url("/other")}) if r.method == "POST" else None
    )
    with pytest.raises(UploadFailed, match="redirect"):
        upload_delivery(hostile.url("/files"), "tus", _tiny_files(), request_id=REQUEST_ID,
                        allowed_hosts=["127.0.0.1"], allow_insecure_localhost=True,
                        state={}, stop_event=threading.Event(), settings=FAST)  # fmt: skip
    assert [(r.method, r.path) for r in hostile.requests] == [("POST", "/files")]


def test_a_saved_upload_url_on_another_host_is_never_contacted(
    hostile: RecordingHttpServer,
) -> None:
    files = _tiny_files()
    # A state file edited behind the daemon's back points the clip elsewhere.
    state = {files[0].name: f"tus http://localhost:{hostile.port}/files/abc"}
    with pytest.raises(UploadFailed, match="Location refused"):
        upload_delivery(hostile.url("/files"), "tus", files, request_id=REQUEST_ID,
                        allowed_hosts=["127.0.0.1"], allow_insecure_localhost=True,
                        state=state, stop_event=threading.Event(), settings=FAST)  # fmt: skip
    assert hostile.connections == 0


def test_a_tus_host_not_allowed_gets_no_connection(tus_server: TusServer, tmp_path: Path) -> None:
    mark = len(tus_server.events)
    with pytest.raises(UploadFailed, match="not allowed"):
        _upload(tus_server, _tiny_files(), allowed_hosts=["upload.example.org"])
    with pytest.raises(UploadFailed, match="plain http"):
        _upload(tus_server, _tiny_files(), allow_insecure_localhost=False)
    assert tus_server.requests(mark) == []


def test_json_state_survives_a_reload_and_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = JsonFileState(path)
    state["a.mp4"] = "tus http://127.0.0.1:1/files/x"
    state["b.jws"] = "done"
    del state["b.jws"]
    assert dict(JsonFileState(path)) == {"a.mp4": "tus http://127.0.0.1:1/files/x"}
    path.write_bytes(b'{"a.mp4": "tus http://127.0')  # torn by hand: never by JsonFileState
    assert dict(JsonFileState(path)) == {}
    path.write_text(json.dumps({"a.mp4": 5}))
    assert dict(JsonFileState(path)) == {}


def _tiny_files() -> list[UploadFile]:
    d = m.new_delivery_id()
    return [
        UploadFile.from_bytes(f"{d}.mp4", b"clip bytes"),
        UploadFile.from_bytes(f"{d}.manifest.jws", b"a.b.c"),
    ]
