"""Uploads an approved delivery to the agency, resumably, and to nowhere else.

Spec: ../shared/spec/assist-request-v1.md, "What an approved request delivers"
and the ``upload_not_allowed`` rule. The files go, in the order given (the
clip first, the manifest last), to the request's ``upload.url`` with its
``protocol``:

- ``tus``: tus 1.0.0 with the creation extension, one upload per file
  (``POST`` with ``Upload-Length`` and ``Upload-Metadata`` ``filename`` and
  ``request_id``), then ``PATCH`` from the server's offset. The upload URL is
  saved in the caller's ``state`` before the first byte, so a restart of the
  daemon (or the server) resumes with ``HEAD`` and ``PATCH`` from the offset
  the server holds, never from zero.
- ``put``: one ``PUT`` of each file to the URL (``/`` added to its path if it
  lacks one) plus the file name; any 2xx is success.

Where bytes may go: ``https`` only, TLS verified against the system's CA
store, to a host exactly in ``allowed_hosts`` (the certificate's
``upload_hosts``: compared case-insensitively, port ignored, internationalised
names as IDNA2008 A-labels), never with ``user@``; plain ``http`` only to
``127.0.0.1`` when ``allow_insecure_localhost`` is set (tests). The URL is
checked before any connection is made. No redirect is followed (a 3xx fails
the upload), and a tus ``Location`` on another host or scheme fails it too.
We use ``http.client`` directly because it follows nothing on its own; tuspy
was not used: it posts through ``requests`` (which follows redirects) and
joins ``Location`` with no host check.

Patience: network errors, timeouts, 5xx, 408, 423 and 429 are retried with
randomised exponential backoff, waiting on ``stop_event``, until the request
expires. Everything else a server says is final.

Threads: ``upload_delivery`` runs on the caller's thread (the daemon's
delivery worker) and blocks until done, failed, expired or stopped. It reads
``stop_event`` between blocks of at most ``block_bytes``, so stopping is prompt.
"""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urljoin, urlsplit

from edge.clock import Clock, SystemClock

log = logging.getLogger(__name__)

PROTOCOLS = ("tus", "put")
TUS_VERSION = "1.0.0"
MAX_URL_CHARS = 4096
_MAX_RESPONSE_BODY_BYTES = 64 * 1024  # what we read of any response body before hanging up
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# Characters RFC 3986 never allows anywhere in a URI, plus controls and space.
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f\\<>\"{}|^`]")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_RETRYABLE_STATUS = frozenset({408, 423, 429})
_GONE_STATUS = frozenset({403, 404, 410})  # tus: the upload URL no longer exists; start anew


# --- errors --------------------------------------------------------------------------------


class UploadError(Exception):
    """The delivery was not completely uploaded. ``code`` is short, for the audit log."""

    code = "upload_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UploadFailed(UploadError):
    """Final: retrying cannot help (a URL or host not allowed, a redirect, a server that
    refuses, a source that ends early). Nothing more is sent for this delivery."""

    code = "failed"


class UploadExpired(UploadError):
    """The request expired before the upload completed; ``last_error`` says why it lagged."""

    code = "expired"

    def __init__(self, message: str, *, last_error: str | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class UploadStopped(UploadError):
    """``stop_event`` was set. The state is kept: call again later to resume."""

    code = "stopped"


class _Transient(Exception):
    """A failure worth retrying after a backoff (network, timeout, 5xx, ...)."""


class _UploadGone(_Transient):
    """The saved tus upload URL is gone on the server: the next attempt creates a new one."""


# --- where bytes may go ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """A checked URL: the exact host string compared with the allowed list is the one
    we connect to, so no second parser can disagree about where the bytes go."""

    scheme: str  # "https", or "http" to 127.0.0.1 in tests
    host: str  # ASCII: lower-case A-labels, or an IP address without brackets
    port: int
    path: str  # path and query, at least "/"; never a fragment

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        port = "" if self.port == default_port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"

    def same_origin(self, other: UploadTarget) -> bool:
        return (self.scheme, self.host, self.port) == (other.scheme, other.host, other.port)


def normalise_host(raw: str) -> str:
    """A host as compared and connected to: an IP address in its canonical text, or a
    DNS name in lower-case A-labels (IDNA2008). ValueError when it is neither."""
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
        if "%" in raw:
            raise ValueError("IPv6 zone identifiers are not allowed")
        return str(ipaddress.IPv6Address(raw))
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    if not raw.isascii():
        try:
            import idna  # only for internationalised names; ASCII hosts never need it
        except ImportError:
            raise ValueError("internationalised host names need the idna package") from None
        try:
            raw = idna.encode(raw, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise ValueError(f"not a valid internationalised host name: {error}") from None
    host = raw.lower()
    labels = host.split(".")
    if len(host) > 253 or not all(_LDH_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a host name: {raw!r}")
    return host


def check_upload_url(
    url: str, allowed_hosts: Iterable[str], *, allow_insecure_localhost: bool
) -> UploadTarget:
    """The spec's ``upload_not_allowed`` rule, checked before any connection is made.

    Raises ``UploadFailed`` (code ``upload_not_allowed``) with the reason."""

    def refuse(reason: str) -> UploadFailed:
        return UploadFailed(f"upload URL not allowed: {reason}", code="upload_not_allowed")

    if isinstance(allowed_hosts, str):
        raise TypeError("allowed_hosts is a list of hosts, not one string")
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise refuse("not a string of reasonable length")
    if _NOT_IN_URL.search(url):
        raise refuse("it contains characters a URL may not (space, control, backslash, ...)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise refuse(f"scheme {parts.scheme!r} is not https")
    if "@" in parts.netloc:
        raise refuse("it carries user info (user@)")
    raw_host, _, port_text = _split_host_port(parts.netloc)
    try:
        host = normalise_host(raw_host)
    except ValueError as error:
        raise refuse(f"bad host: {error}") from None
    allowed = set()
    for candidate in allowed_hosts:
        try:
            allowed.add(normalise_host(candidate))
        except ValueError:
            log.warning("ignoring an upload host that is not a host name: %r", candidate)
    if host not in allowed:
        raise refuse(f"host {host!r} is not one of the certificate's upload hosts")
    if scheme == "http" and not (allow_insecure_localhost and host == "127.0.0.1"):
        raise refuse("plain http (allowed only to 127.0.0.1 with upload.allow_insecure_localhost)")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise refuse(f"bad port {port_text!r}")
        port = int(port_text)
    else:
        port = 443 if scheme == "https" else 80
    path = parts.path or "/"
    if not path.startswith("/"):
        raise refuse("path is not absolute")
    if parts.query:
        path += "?" + parts.query
    if not path.isascii():
        raise refuse("path is not ASCII (percent-encode it)")
    return UploadTarget(scheme, host, port, path)


def _split_host_port(netloc: str) -> tuple[str, str, str]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return netloc, "", ""
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        return (host, ":", rest[1:]) if rest.startswith(":") else (host, "", rest)
    return netloc.rpartition(":") if ":" in netloc else (netloc, "", "")


# --- what to send -----------------------------------------------------------------------------


class Source(Protocol):
    """What ``open_at`` returns: a binary stream (a file, BytesIO) or a ViewSource."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def close(self) -> None: ...


@runtime_checkable
class ViewSource(Source, Protocol):
    """A source that lends its own buffer (the age reader's decrypted batch): sent
    as it is, with no copy into the uploader's."""

    def read_view(self, max_bytes: int, /) -> memoryview: ...


@dataclass(frozen=True, slots=True)
class UploadFile:
    """One file of a delivery: its name, exact size, and a way to read it from any offset.

    ``open_at(offset)`` returns a fresh binary stream of the file's bytes from
    ``offset`` on; the uploader closes it. A resumed tus upload opens at the
    server's offset, so the source must be re-readable (bytes in memory, a
    ciphertext file, or a sealed clip decrypted again on the fly)."""

    name: str
    size: int
    open_at: Callable[[int], Source]

    def __post_init__(self) -> None:
        if not _FILE_NAME.fullmatch(self.name) or ".." in self.name:
            raise ValueError(f"not a plain file name: {self.name!r}")
        if self.size < 0:
            raise ValueError("size must not be negative")

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> UploadFile:
        def open_at(offset: int) -> io.BytesIO:
            stream = io.BytesIO(data)
            stream.seek(offset)
            return stream

        return cls(name, len(data), open_at)

    @classmethod
    def from_path(cls, name: str, path: Path) -> UploadFile:
        """A file on disk (ciphertext only: never a plaintext clip)."""

        def open_at(offset: int) -> io.BufferedReader:
            stream = path.open("rb")
            stream.seek(offset)
            return stream

        return cls(name, path.stat().st_size, open_at)


class UploadObserver(Protocol):
    """Told what happens; called on the uploading thread, so it must be quick."""

    def on_progress(self, name: str, offset_bytes: int, size_bytes: int) -> None: ...

    def on_retry(self, name: str, reason: str, delay_s: float) -> None: ...


class _NoObserver:
    def on_progress(self, name: str, offset_bytes: int, size_bytes: int) -> None:
        pass

    def on_retry(self, name: str, reason: str, delay_s: float) -> None:
        pass


@dataclass(frozen=True, slots=True)
class UploadSettings:
    timeout_s: float = 30.0  # every connect, send and receive (the tus spec suggests 30 s)
    # At most one tus PATCH. The server keeps what a broken PATCH delivered (the next
    # HEAD says how much), so this bounds round trips, not what a failure costs.
    chunk_bytes: int = 32 * 1024 * 1024
    block_bytes: int = 1024 * 1024  # one read/send: memory stays flat in the file's size
    initial_backoff_s: float = 2.0
    max_backoff_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 600:
            raise ValueError("timeout_s must be in (0, 600]")
        if not 0 < self.block_bytes <= self.chunk_bytes <= 1 << 30:
            raise ValueError("need 0 < block_bytes <= chunk_bytes <= 1 GiB")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")


class JsonFileState(MutableMapping[str, str]):
    """Resume state kept in a small JSON file, rewritten atomically on every change
    (temporary file, fsync, rename, directory fsync), so a power cut leaves the old
    or the new state, never a torn one. One writer at a time."""

    MAX_FILE_BYTES = 1024 * 1024

    def __init__(self, path: Path) -> None:
        self._path = path
        self._data: dict[str, str] = {}
        try:
            raw = path.read_bytes()[: self.MAX_FILE_BYTES + 1]
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw) if len(raw) <= self.MAX_FILE_BYTES else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            # Worst case a resumable upload starts over: never worth refusing to start.
            log.warning("upload state %s is unreadable; starting afresh", path)
            return
        self._data = data

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._data[key] = value
        self._save()

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._save()

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def _save(self) -> None:
        temporary = self._path.with_name(self._path.name + ".tmp")
        with temporary.open("wb") as out:
            out.write(json.dumps(self._data, sort_keys=True).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._path)
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


# --- the upload --------------------------------------------------------------------------------


def upload_delivery(
    url: str,
    protocol: str,
    files: Sequence[UploadFile],
    *,
    request_id: str,
    allowed_hosts: Iterable[str],
    allow_insecure_localhost: bool,
    state: MutableMapping[str, str],
    stop_event: threading.Event,
    expires_at_ms: int | None = None,
    clock: Clock | None = None,
    settings: UploadSettings | None = None,
    observer: UploadObserver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Uploads ``files`` in order (clip first, manifest last) to ``url`` by ``protocol``.

    Returns once every file is on the server. ``state`` (a dict, or a
    ``JsonFileState`` to survive restarts) remembers tus upload URLs and finished
    files: call again with the same state after a crash, stop or restart and the
    upload resumes where the server is. Raises ``UploadFailed`` (final; nothing is
    sent for a URL that breaks the rules), ``UploadExpired`` (``expires_at_ms``,
    wall clock, passed) or ``UploadStopped`` (``stop_event`` set).

    ``ssl_context`` is for tests only (a test CA); the default verifies against the
    system's CA store."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("file names must be unique")
    if isinstance(allowed_hosts, str):
        raise TypeError("allowed_hosts is a list of hosts, not one string")
    hosts = tuple(allowed_hosts)  # read once: it is checked again for every tus Location
    target = check_upload_url(url, hosts, allow_insecure_localhost=allow_insecure_localhost)
    session = _Session(
        target=target,
        allowed_hosts=hosts,
        allow_insecure_localhost=allow_insecure_localhost,
        request_id=request_id,
        state=state,
        stop_event=stop_event,
        settings=settings or UploadSettings(),
        observer=observer or _NoObserver(),
        ssl_context=ssl_context or _default_ssl_context(),
    )
    deadline = _Deadline(expires_at_ms, clock or SystemClock())
    finished = threading.Event()
    # A server that accepts and then says nothing would hold a stop for the whole
    # socket timeout: on stop, a watcher shuts the open connection's socket, which
    # ends the blocked read at once (the upload then stops as from a backoff wait).
    watcher = threading.Thread(
        target=_abort_on_stop, args=(session, finished), name="edge-upload-stop", daemon=True
    )
    watcher.start()
    try:
        for file in files:
            if state.get(file.name) == _DONE:
                log.info("%s was already delivered; skipping it", file.name)
                continue
            upload_one = session.upload_tus if protocol == "tus" else session.upload_put
            _with_retries(file, upload_one, session, deadline)
            state[file.name] = _DONE
            log.info("uploaded %s (%d bytes) by %s", file.name, file.size, protocol)
    finally:
        finished.set()


_STOP_POLL_S = 0.25


def _abort_on_stop(session: _Session, finished: threading.Event) -> None:
    # Waits on the upload's own event, looking at the stop event between waits:
    # threading offers no wait on either of two events.
    while not finished.wait(_STOP_POLL_S):
        if session.stop_event.is_set():
            session.abort()
            return


_DONE = "done"
_TUS_PREFIX = "tus "


def _default_ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's CA store, host name checked
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Deadline:
    def __init__(self, expires_at_ms: int | None, clock: Clock) -> None:
        self._expires_at_ms = expires_at_ms
        self._clock = clock

    def remaining_s(self) -> float | None:
        if self._expires_at_ms is None:
            return None
        return (self._expires_at_ms - self._clock.now_ms()) / 1000


def _with_retries(
    file: UploadFile,
    upload_one: Callable[[UploadFile], None],
    session: _Session,
    deadline: _Deadline,
) -> None:
    failures = 0
    last_error: str | None = None
    while True:
        if session.stop_event.is_set():
            raise UploadStopped(f"stopped before {file.name} was complete")
        remaining_s = deadline.remaining_s()
        if remaining_s is not None and remaining_s <= 0:
            raise UploadExpired(
                f"the request expired before {file.name} was uploaded", last_error=last_error
            )
        session.progressed = False
        try:
            upload_one(file)
            return
        except _Transient as error:
            last_error = str(error)
        if session.progressed:
            failures = 0  # it moved forward: the next wait starts short again
        ceiling_s = min(
            session.settings.max_backoff_s, session.settings.initial_backoff_s * 2**failures
        )
        delay_s = random.uniform(ceiling_s / 2, ceiling_s)  # jitter: cameras do not stampede
        if remaining_s is not None:
            delay_s = min(delay_s, max(remaining_s, 0.0))
        failures = min(failures + 1, 32)
        log.warning("upload of %s failed (%s); retrying in %.1f s", file.name, last_error, delay_s)
        session.observer.on_retry(file.name, last_error, delay_s)
        if session.stop_event.wait(delay_s):
            raise UploadStopped(f"stopped before {file.name} was complete")


@dataclass
class _Response:
    status: int
    headers: http.client.HTTPMessage


class _Session:
    """One delivery's connections and rules. Used from one thread."""

    def __init__(
        self,
        *,
        target: UploadTarget,
        allowed_hosts: tuple[str, ...],
        allow_insecure_localhost: bool,
        request_id: str,
        state: MutableMapping[str, str],
        stop_event: threading.Event,
        settings: UploadSettings,
        observer: UploadObserver,
        ssl_context: ssl.SSLContext,
    ) -> None:
        self.target = target
        self.allowed_hosts = allowed_hosts
        self.allow_insecure_localhost = allow_insecure_localhost
        self.request_id = request_id
        self.state = state
        self.stop_event = stop_event
        self.settings = settings
        self.observer = observer
        self.ssl_context = ssl_context
        self.progressed = False  # set when an attempt moved the upload forward
        self._connection: http.client.HTTPConnection | None = None
        self._connection_origin: UploadTarget | None = None

    # -- tus --

    def upload_tus(self, file: UploadFile) -> None:
        try:
            self._upload_tus(file)
        finally:
            self._close()

    def _upload_tus(self, file: UploadFile) -> None:
        saved = self.state.get(file.name, "")
        upload: UploadTarget | None = None
        offset = 0
        if saved.startswith(_TUS_PREFIX):
            upload = self._check_location(saved[len(_TUS_PREFIX) :])
            try:
                offset = self._tus_head(upload, file)
            except _UploadGone as gone:
                log.warning("%s; starting the upload of %s anew", gone, file.name)
                del self.state[file.name]
                upload, offset = None, 0
        if upload is None:
            upload = self._tus_create(file)
            # Saved before the first byte goes, so a crash from here on resumes, not restarts.
            self.state[file.name] = _TUS_PREFIX + upload.url
            self.progressed = True
        self.observer.on_progress(file.name, offset, file.size)
        stream: Source | None = None
        position = -1
        try:
            while offset < file.size:
                if self.stop_event.is_set():
                    raise UploadStopped(f"stopped with {file.name} at {offset} bytes")
                if position != offset:
                    if stream is not None:
                        stream.close()
                    stream = _open_source(file, offset)
                    position = offset
                assert stream is not None
                length = min(self.settings.chunk_bytes, file.size - offset)
                response = self._request(
                    upload,
                    "PATCH",
                    upload.path,
                    {
                        "Tus-Resumable": TUS_VERSION,
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                        "Content-Length": str(length),
                    },
                    body=(file.name, stream, length),
                )
                position += length
                if response.status in _GONE_STATUS:
                    del self.state[file.name]
                    raise _UploadGone(f"tus PATCH {file.name}: {response.status}: upload gone")
                if response.status == 409:
                    raise _Transient(f"tus PATCH {file.name}: 409: offset {offset} was stale")
                self._final_unless_ok(response, f"tus PATCH {file.name}", ok=(200, 204))
                new_offset = _header_int(response, "Upload-Offset")
                if new_offset is None or not offset < new_offset <= offset + length:
                    raise UploadFailed(
                        f"tus PATCH {file.name}: the server answered offset {new_offset} "
                        f"after {length} bytes at {offset}",
                        code="protocol_error",
                    )
                offset = new_offset
                self.progressed = True
                self.observer.on_progress(file.name, offset, file.size)
        finally:
            if stream is not None:
                stream.close()

    def _tus_create(self, file: UploadFile) -> UploadTarget:
        metadata = ",".join(
            f"{key} {base64.b64encode(value.encode()).decode('ascii')}"
            for key, value in (("filename", file.name), ("request_id", self.request_id))
        )
        response = self._request(
            self.target,
            "POST",
            self.target.path,
            {
                "Tus-Resumable": TUS_VERSION,
                "Upload-Length": str(file.size),
                "Upload-Metadata": metadata,
                "Content-Length": "0",
            },
        )
        self._final_unless_ok(response, f"tus POST {file.name}", ok=(200, 201))
        location = response.headers.get("Location")
        if not location:
            raise UploadFailed(f"tus POST {file.name}: no Location", code="protocol_error")
        return self._check_location(urljoin(self.target.url, location.strip()))

    def _check_location(self, url: str) -> UploadTarget:
        try:
            upload = check_upload_url(
                url, self.allowed_hosts, allow_insecure_localhost=self.allow_insecure_localhost
            )
        except UploadFailed as error:
            raise UploadFailed(
                f"tus Location refused: {error}", code="location_not_allowed"
            ) from None
        if upload.scheme != self.target.scheme:
            raise UploadFailed(
                f"tus Location refused: scheme changed to {upload.scheme}",
                code="location_not_allowed",
            )
        return upload

    def _tus_head(self, upload: UploadTarget, file: UploadFile) -> int:
        response = self._request(upload, "HEAD", upload.path, {"Tus-Resumable": TUS_VERSION})
        if response.status in _GONE_STATUS:
            raise _UploadGone(f"tus HEAD {file.name}: {response.status}: upload gone")
        self._final_unless_ok(response, f"tus HEAD {file.name}", ok=(200, 204))
        offset = _header_int(response, "Upload-Offset")
        length = _header_int(response, "Upload-Length")
        if offset is None or offset > file.size:
            raise UploadFailed(
                f"tus HEAD {file.name}: bad Upload-Offset {offset}", code="protocol_error"
            )
        if length is not None and length != file.size:
            # Not the upload we created: drop it and make a new one.
            raise _UploadGone(f"tus HEAD {file.name}: Upload-Length {length} != {file.size}")
        return offset

    # -- put --

    def upload_put(self, file: UploadFile) -> None:
        base_path, _, query = self.target.path.partition("?")
        path = (base_path if base_path.endswith("/") else base_path + "/") + file.name
        if query:
            path += "?" + query
        stream = _open_source(file, 0)
        try:
            response = self._request(
                self.target,
                "PUT",
                path,
                {"Content-Type": "application/octet-stream", "Content-Length": str(file.size)},
                body=(file.name, stream, file.size),
            )
        finally:
            stream.close()
            self._close()
        self._final_unless_ok(response, f"PUT {file.name}", ok=range(200, 300))
        self.progressed = True
        self.observer.on_progress(file.name, file.size, file.size)

    # -- HTTP --

    def _final_unless_ok(self, response: _Response, what: str, *, ok: Iterable[int]) -> None:
        status = response.status
        if status in ok:
            return
        if 300 <= status < 400:
            raise UploadFailed(f"{what}: redirect ({status}) refused", code="redirect")
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise _Transient(f"{what}: server answered {status}")
        raise UploadFailed(f"{what}: server refused with {status}", code="server_refused")

    def _request(
        self,
        origin: UploadTarget,
        method: str,
        path: str,
        headers: dict[str, str],
        body: tuple[str, Source, int] | None = None,
    ) -> _Response:
        try:
            connection = self._connect(origin)
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            if body is not None:
                self._send_body(connection, *body)
            response = connection.getresponse()
            # Read a bounded part of any body; hang up rather than read more.
            response.read(_MAX_RESPONSE_BODY_BYTES)
            if not response.isclosed():
                self._close()
            return _Response(response.status, response.headers)
        except (OSError, http.client.HTTPException) as error:
            self._close()
            raise _Transient(f"{method} {origin.host}: {_describe(error)}") from error
        except BaseException:
            self._close()
            raise

    def _send_body(
        self, connection: http.client.HTTPConnection, name: str, stream: Source, length: int
    ) -> None:
        read_block: Callable[[int], memoryview]
        if isinstance(stream, ViewSource):
            read_block = stream.read_view  # its own buffer, sent as it is
        else:
            buffer = memoryview(bytearray(min(self.settings.block_bytes, length)))  # reused
            source = stream

            def read_block(max_bytes: int) -> memoryview:
                return buffer[: source.readinto(buffer[:max_bytes]) or 0]

        left = length
        while left:
            if self.stop_event.is_set():
                raise UploadStopped(f"stopped while sending {name}")
            try:
                block = read_block(min(self.settings.block_bytes, left))
            except Exception as error:  # the local source, not the network: retrying won't help
                raise UploadFailed(
                    f"{name}: reading it failed: {error}", code="source_error"
                ) from error
            if not block:
                raise UploadFailed(
                    f"{name}: the source ended {left} bytes early", code="source_error"
                )
            connection.send(block)
            left -= len(block)

    def _connect(self, origin: UploadTarget) -> http.client.HTTPConnection:
        if self._connection is not None and self._connection_origin is not None:
            if self._connection_origin.same_origin(origin):
                return self._connection
            self._close()
        connection: http.client.HTTPConnection
        if origin.scheme == "https":
            connection = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=self.settings.timeout_s, context=self.ssl_context
            )
        else:
            connection = http.client.HTTPConnection(
                origin.host, origin.port, timeout=self.settings.timeout_s
            )
        self._connection, self._connection_origin = connection, origin
        return connection

    def abort(self) -> None:
        """From another thread: ends a blocked send or receive on the open connection."""
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing is blocked on it

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = self._connection_origin = None


def _open_source(file: UploadFile, offset: int) -> Source:
    try:
        return file.open_at(offset)
    except Exception as error:
        raise UploadFailed(
            f"{file.name}: opening it failed: {error}", code="source_error"
        ) from error


def _header_int(response: _Response, name: str) -> int | None:
    value = response.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 18:
        raise UploadFailed(f"bad {name} header {value[:40]!r}", code="protocol_error")
    return int(value)


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {error.verify_message}"
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
