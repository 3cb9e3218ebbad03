"""Delivery: an approved request's clip and signed manifest, uploaded, and nothing else.

One worker ("edge-delivery") takes ``approved`` requests from the store, oldest
first. Everything an upload needs to resume is made once and kept in the
outbox under the request's id: the delivery id (in the store), the clip as
uploaded (the approved sealed clip itself, decrypted as it is read; or, when
the request names a recipient, a copy age-encrypted to that recipient alone),
the signed manifest, and the tus upload state. A crash or restart therefore
resumes the same upload from the server's offset; it never asks again and
never sends twice. When the request expires first, it is ``failed`` and its
files are deleted; a delivered request's are deleted too.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.clock import Clock
from edge.durable import replacing_durably, write_durably
from edge.priority import yield_to_recording
from edge.share import manifest
from edge.share.audit import AuditLog
from edge.share.outbox import Outbox, OutboxClip
from edge.share.store import RequestRecord, RequestStore
from edge.share.upload import (
    JsonFileState,
    UploadExpired,
    UploadFailed,
    UploadFile,
    UploadStopped,
    upload_delivery,
)

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
STOP_WAIT_S = 5.0  # how long a stop waits for an upload to notice it


class DeliveryError(Exception):
    """An approved request cannot be delivered at all (its clip is gone, say)."""


@dataclass(frozen=True)
class DeliverySettings:
    allow_insecure_localhost: bool


class DeliveryWorker:
    def __init__(
        self,
        settings: DeliverySettings,
        store: RequestStore,
        outbox: Outbox,
        audit: AuditLog,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        on_finished: Callable[[RequestRecord, bool, str | None], None] = lambda *_: None,
        upload: Callable[..., None] = upload_delivery,
    ) -> None:
        self._settings = settings
        self._store = store
        self._outbox = outbox
        self._audit = audit
        self._signing_key = signing_key
        self._clock = clock
        self.on_finished = on_finished  # set by the composition root (owner notices)
        self._upload = upload  # tests pass upload_delivery with a test CA bound in
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        # A daemon thread: an upload blocked on a silent server (up to its socket
        # timeout) must not hold up the process's exit; its state is on disk and it
        # resumes from the server's offset on the next start.
        self._thread = threading.Thread(target=self._run, name="edge-delivery", daemon=True)
        self.active_request: int | None = None  # read by the status line

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT_S)
            if self._thread.is_alive():
                log.info("an upload is still waiting on the server; it resumes on the next start")

    def wake(self, _request_id: int | None = None) -> None:
        self._wake.set()

    def _run(self) -> None:
        yield_to_recording()
        while not self._stop_event.is_set():
            for record in self._store.in_states(["approved"]):
                if self._stop_event.is_set():
                    return
                if not self._store.was_followed(record.id, "approved"):
                    continue  # the approval is not in the audit log yet: next round
                self.active_request = record.id
                try:
                    self.deliver(record)
                except Exception:
                    log.exception("delivery of request %s failed unexpectedly", record.id)
                finally:
                    self.active_request = None
            self._wake.wait(POLL_INTERVAL_S)
            self._wake.clear()

    # -- one request -------------------------------------------------------------------

    def deliver(self, record: RequestRecord) -> None:
        request: dict[str, Any] = record.request or {}
        delivery_id = record.delivery_id
        if delivery_id is None:
            delivery_id = manifest.new_delivery_id()
            # Kept before anything is made or sent: a restart resumes this delivery.
            if not self._store.transition(
                record.id, {"approved"}, "approved", delivery_id=delivery_id
            ):
                return
        try:
            files = self._prepare(record, request, delivery_id)
        except DeliveryError as exc:
            self._finish(record, delivery_id, delivered=False, reason=str(exc))
            return
        try:
            self._upload(
                request["upload_url"],
                request["upload_protocol"],
                files,
                request_id=request["jti"],
                allowed_hosts=request["upload_hosts"],
                allow_insecure_localhost=self._settings.allow_insecure_localhost,
                state=JsonFileState(self._path(record.id, delivery_id, "upload.json")),
                stop_event=self._stop_event,
                expires_at_ms=int(float(request["exp_s"]) * 1000),
                clock=self._clock,
            )
        except UploadStopped:
            log.info("delivery of request %s paused; it resumes on the next start", record.id)
            return
        except UploadExpired as exc:
            self._finish(
                record, delivery_id, delivered=False, reason=f"expired: {exc.last_error or exc}"
            )
            return
        except UploadFailed as exc:
            self._finish(record, delivery_id, delivered=False, reason=str(exc))
            return
        self._finish(record, delivery_id, delivered=True, reason=None)

    def _path(self, request_id: int, delivery_id: str, suffix: str) -> Path:
        return self._outbox.dir / f"{request_id}-{delivery_id}.{suffix}"

    def _prepare(
        self, record: RequestRecord, request: dict[str, Any], delivery_id: str
    ) -> list[UploadFile]:
        assert record.approved_start_ms is not None and record.approved_end_ms is not None
        clip = self._outbox.find(record.id, record.approved_start_ms, record.approved_end_ms)
        if clip is None or clip.sha256 != record.clip_sha256:
            raise DeliveryError("the approved clip is no longer in the outbox")
        recipient = request.get("recipient")
        if recipient:
            clip_file, digest = self._encrypted_copy(record.id, delivery_id, clip, recipient)
        else:
            digest = manifest.FileDigest(
                manifest.clip_file_name(delivery_id, encrypted=False), clip.size_bytes, clip.sha256
            )
            clip_file = UploadFile(
                digest.name,
                digest.size,
                functools.partial(manifest.open_sealed_clip_at, clip.path, [self._outbox.identity]),
            )
        manifest_path = self._path(record.id, delivery_id, "manifest.jws")
        if not manifest_path.exists():
            claims = manifest.manifest_claims(
                request_id=request["jti"],
                issuer=request["iss"],
                device_key=self._signing_key.public_key(),
                window_requested=manifest.Window(request["window_start"], request["window_end"]),
                window_approved=manifest.Window.from_ms(
                    record.approved_start_ms, record.approved_end_ms
                ),
                window_delivered=manifest.Window.from_ms(clip.first_frame_ms, clip.last_frame_ms),
                clock_synced=clip.clock_synced,
                clip=digest,
                approved_at_s=(record.decided_ms or self._clock.now_ms()) // 1000,
                issued_at_s=self._clock.now_ms() // 1000,
            )
            write_durably(manifest_path, manifest.sign_manifest(claims, self._signing_key).encode())
        manifest_file = UploadFile.from_path(
            manifest.manifest_file_name(delivery_id), manifest_path
        )
        return [clip_file, manifest_file]

    def _encrypted_copy(
        self, request_id: int, delivery_id: str, clip: OutboxClip, recipient: str
    ) -> tuple[UploadFile, manifest.FileDigest]:
        """The clip age-encrypted to the agency's recipient, made once (the same bytes
        on every resume: age encryption is randomised)."""
        path = self._path(request_id, delivery_id, "mp4.age")
        name = manifest.clip_file_name(delivery_id, encrypted=True)
        if path.exists():  # made before a restart: its bytes are read back once
            digest = manifest.FileDigest(name, path.stat().st_size, _sha256_file(path))
        else:
            try:
                with (
                    io.BufferedReader(
                        manifest.open_sealed_clip_at(clip.path, [self._outbox.identity], 0)
                    ) as plaintext,
                    replacing_durably(path) as out,
                ):
                    # Hashed as it is written: no second pass over the file.
                    digest = manifest.encrypt_clip(
                        plaintext, recipient, out, delivery_id=delivery_id
                    )
            except ValueError as exc:
                raise DeliveryError(f"cannot encrypt the clip to the agency: {exc}") from None
        return UploadFile.from_path(name, path), digest

    def _finish(
        self, record: RequestRecord, delivery_id: str, *, delivered: bool, reason: str | None
    ) -> None:
        state = "delivered" if delivered else "failed"
        if not self._store.transition(record.id, {"approved"}, state, reason=reason):
            return
        self._audit.append(
            state, durable=True, id=record.id, delivery_id=delivery_id, reason=reason
        )
        if delivered:
            log.info("request %s delivered", record.id)
        else:
            log.error("request %s could not be delivered: %s", record.id, reason)
        self._outbox.delete_request(record.id)
        latest = self._store.get(record.id) or record
        self.on_finished(latest, delivered, reason)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
