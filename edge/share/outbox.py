"""The outbox: clips the owner is shown and may approve, sealed until they are sent.

A clip is made once by the one clip builder (edge.buffer.clip), streamed
straight into age encryption (never a plaintext byte on disk) under the
outbox's own key, and kept as ``{request_id}-{start_ms}-{end_ms}.mp4.age``
with a small JSON note of what it holds (times, SHA-256 of the plaintext).
Approvals bind to that SHA-256; delivery and the review page decrypt it on the
fly, chunk by chunk. A denied, expired, delivered or failed request's clips are
deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from pyrage import x25519

from edge.buffer.agefile import AgeFileError, AgeWriter, HashingWriter, open_age_file
from edge.buffer.clip import ClipInfo, SegmentSource, build_clip
from edge.durable import SyncedFile, fsync_dir, replacing_durably, write_durably
from edge.priority import in_background
from edge.writebehind import WriteBehind

log = logging.getLogger(__name__)

OUTBOX_KEY_NAME = "outbox.agekey"
_CLIP_RE = re.compile(r"^(\d+)-(\d+)-(\d+)\.mp4\.age$")
_CLIP_FILE_RE = re.compile(r"^\d+-\d+-\d+\.mp4\.(age|json)(\.tmp)?$")  # clips, notes
_CHUNK_BYTES = 64 * 1024
_MAX_NOTE_BYTES = 64 * 1024


class OutboxError(Exception):
    """A clip cannot be made, read or found; the message says why."""


@dataclass(frozen=True)
class OutboxClip:
    request_id: int
    start_ms: int  # the window the clip was made for
    end_ms: int
    sha256: str  # of the plaintext MP4
    size_bytes: int  # of the plaintext MP4
    first_frame_ms: int
    last_frame_ms: int
    clock_synced: bool
    gaps: int
    skipped: int
    path: Path

    @property
    def note(self) -> dict[str, object]:
        note = asdict(self)
        del note["path"]
        return note


def _load_or_create_identity(keys_dir: Path) -> x25519.Identity:
    path = keys_dir / OUTBOX_KEY_NAME
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        identity = x25519.Identity.generate()
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{OUTBOX_KEY_NAME}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(str(identity) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # never replaces a key another process just made
        except FileExistsError:
            pass
        os.unlink(temporary)
        return _load_or_create_identity(keys_dir)
    try:
        return x25519.Identity.from_str(text)
    except Exception as exc:  # pyrage raises its own IdentityError types
        raise OutboxError(f"{path} is not an age identity: {exc}") from None


class Outbox:
    """Sealed clips under ``data_dir/outbox``. Any thread; files are the only state."""

    def __init__(self, outbox_dir: Path, keys_dir: Path) -> None:
        self.dir = outbox_dir
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._identity = _load_or_create_identity(keys_dir)
        self._recipient = self._identity.to_public()
        self._build_lock = threading.Lock()  # one clip built at a time: bounded CPU and memory

    @property
    def identity(self) -> x25519.Identity:
        """The key that opens the outbox's clips (for delivery's resumable reads)."""
        return self._identity

    # -- making ------------------------------------------------------------------------

    def find(self, request_id: int, start_ms: int, end_ms: int) -> OutboxClip | None:
        path = self.dir / f"{request_id}-{start_ms}-{end_ms}.mp4.age"
        note_path = path.with_suffix(".json")
        try:
            with open(note_path, "rb") as handle:
                raw = handle.read(_MAX_NOTE_BYTES + 1)
            note = json.loads(raw)
            if not path.exists():
                return None
            return OutboxClip(**note, path=path)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("outbox note %s unreadable (%s): the clip is made again", note_path, exc)
            return None

    def build(
        self, request_id: int, source: SegmentSource, start_ms: int, end_ms: int
    ) -> OutboxClip:
        """The sealed clip of [start_ms, end_ms] for a request, made once and then reused.

        Raises NoFootage (edge.buffer.clip) when the buffer holds none of the window.
        """
        with self._build_lock:
            existing = self.find(request_id, start_ms, end_ms)
            if existing is not None:
                return existing
            path = self.dir / f"{request_id}-{start_ms}-{end_ms}.mp4.age"
            # Renamed into place only once it is whole and on disk; the note,
            # written after it, is what makes it count (find() needs both).
            try:
                with replacing_durably(
                    path, temporary=path.with_name(f".{path.name}.tmp")
                ) as out:
                    # Bulk work: recording comes first (the thread that sealing
                    # starts has the same lower priority).
                    info = in_background(
                        lambda: self._build_sealed(source, start_ms, end_ms, out),
                        name="edge-outbox-build",
                    )
            except OSError as error:  # a full or failing disk: nothing is left behind
                raise OutboxError(f"could not write the sealed clip: {error}") from None
            clip = OutboxClip(
                request_id=request_id,
                start_ms=start_ms,
                end_ms=end_ms,
                sha256=info.sha256,
                size_bytes=info.bytes,
                first_frame_ms=info.first_frame_ms,
                last_frame_ms=info.last_frame_ms,
                clock_synced=info.clock_synced,
                gaps=len(info.gaps),
                skipped=len(info.skipped),
                path=path,
            )
            write_durably(
                path.with_suffix(".json"),
                json.dumps(clip.note).encode(),
                temporary=path.with_name(f".{path.stem}.json.tmp"),
            )
            log.info(
                "outbox: clip for request %s (%d bytes, sha256 %s…)",
                request_id,
                clip.size_bytes,
                clip.sha256[:12],
            )
            return clip

    def _build_sealed(
        self, source: SegmentSource, start_ms: int, end_ms: int, out: SyncedFile
    ) -> ClipInfo:
        """Builds the clip into ``out``, age-sealed to the outbox's key as it goes.

        The plaintext's SHA-256, the sealing and the writing run on a thread of
        their own, beside the build: hashing, AEAD and system calls all let go
        of Python's lock, so neither thread waits for the other, nor does the
        recording; the builder is left only the joining. Plaintext is only ever
        in memory.
        """
        sealer = AgeWriter(out, [str(self._recipient)])
        hashed = HashingWriter(sealer)
        behind = WriteBehind(hashed, name="edge-outbox-seal")

        def digest_of_clip() -> str:
            behind.close()  # every piece hashed and sealed
            return hashed.hexdigest()

        try:
            info = build_clip(source, start_ms, end_ms, behind, digest_of_out=digest_of_clip)
        except BaseException:
            behind.abort()
            raise
        sealer.close()
        return info

    # -- reading -----------------------------------------------------------------------

    def open_plaintext(self, clip: OutboxClip) -> Iterator[bytes]:
        """The plaintext MP4, decrypted chunk by chunk as it is read; nothing written to disk.

        The bytes are checked against the clip's SHA-256 at the end: a clip that
        changed on disk raises OutboxError instead of finishing quietly. Closing
        the iterator early ends the decryption.
        """
        digest = hashlib.sha256()
        size = 0
        try:
            with open_age_file(clip.path, [self._identity]) as plaintext:
                while chunk := plaintext.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
        except (OSError, AgeFileError) as error:
            raise OutboxError(f"cannot open the sealed clip: {error}") from None
        if digest.hexdigest() != clip.sha256 or size != clip.size_bytes:
            raise OutboxError("the sealed clip on disk is not the clip that was made")

    def copy_plaintext(self, clip: OutboxClip, out: BinaryIO) -> None:
        for chunk in self.open_plaintext(clip):
            out.write(chunk)

    # -- forgetting --------------------------------------------------------------------

    def clips_of(self, request_id: int) -> list[OutboxClip]:
        found = []
        for entry in sorted(os.listdir(self.dir)):
            match = _CLIP_RE.match(entry)
            if match and int(match.group(1)) == request_id:
                clip = self.find(request_id, int(match.group(2)), int(match.group(3)))
                if clip is not None:
                    found.append(clip)
        return found

    def delete_request(
        self, request_id: int, keep: OutboxClip | None = None, *, clips_only: bool = False
    ) -> int:
        """Deletes a request's files: all of them, or only its clips (all but ``keep``),
        leaving what delivery made. Returns how many files went."""
        removed = 0
        for entry in os.listdir(self.dir):
            stem = entry.removeprefix(".")
            if not stem.startswith(f"{request_id}-"):
                continue
            if clips_only and not _CLIP_FILE_RE.match(stem):
                continue
            if keep is not None and entry in (keep.path.name, keep.path.with_suffix(".json").name):
                continue
            try:
                os.unlink(self.dir / entry)
                removed += 1
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(self.dir)
        return removed

    def request_ids(self) -> set[int]:
        ids = set()
        for entry in os.listdir(self.dir):
            match = _CLIP_RE.match(entry)
            if match:
                ids.add(int(match.group(1)))
        return ids
