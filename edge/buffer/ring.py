"""The sealed ring buffer: segment files sealed with age, an SQLite index by time.

Layout under ``data_dir``::

    keys/                       the device's keys (edge/keys.py)
    buffer/ring.lock            held (flock) by the one process that writes
    buffer/index.sqlite3        the index (+ -wal, -shm)
    buffer/segments/<32 hex>.age  one sealed segment each; random names
    buffer/segments/.tmp-*      a segment being written (ciphertext too)

A segment is sealed in memory, written under a temporary name, fsynced, renamed,
the directory fsynced, and only then indexed: a power cut loses at most the
segment being written, and ``Ring.open`` reconciles files and rows. Nothing but
ciphertext is ever written to disk.

Sealing happens on the caller's thread; the disk work (eviction, the durable
write, the index row) on the ring's own store thread, so the recorder seals the
next segment while the last one is fsynced, and a slow flush (SD cards stall for
hundreds of milliseconds) never holds up encoding. ``put`` waits until its
segment is stored; ``submit``, the recorder's way in, waits only while
``STORE_QUEUE_SEGMENTS`` sealed segments are queued behind one being written.

A segment stops waiting, and makes room for the next, once its bytes are handed
to the kernel, just before its fsync, not when the store thread picks it up.
Sealing holds Python's interpreter lock throughout; the fsync is the store
thread's one long stretch without it. Started at pick-up, sealing stalled the
store thread at its first system call and the two took turns (measured: a
sealed ring stored at the rate of sealing plus storing); started at the fsync,
it runs inside it (bench/buffer.py, ingest).

``Ring`` is the writer (the daemon); ``RingReader`` reads the same state from
another process (``edge status``, ``edge export``) without changing it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import queue
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edge.buffer.index import IndexError_, Pin, SegmentIndex, SegmentRecord
from edge.buffer.seal import (
    MAX_SEGMENT_BYTES,
    OpenedSegment,
    SealedSegmentError,
    open_sealed,
    seal_segment,
    sealed_digest,
)
from edge.buffer.segment import Segment, SegmentMeta
from edge.buffer.worker import Worker
from edge.clock import Clock
from edge.durable import fsync_dir, replacing_durably
from edge.keys import (
    KeyFileError,
    KeyStore,
    StorageKey,
    check_permissions,
    init_keys,
    parse_recipients,
)

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite3"
LOCK_NAME = "ring.lock"
SEGMENTS_DIR = "segments"
_TMP_PREFIX = ".tmp-"
_FILE_RE = re.compile(r"^[0-9a-f]{32}\.age$")
# Space kept free beyond the incoming segment, for SQLite's WAL and the key files.
DISK_RESERVE_BYTES = 1024 * 1024
DEFAULT_GAP_THRESHOLD_MS = 1000  # frames further apart than this are a gap (restart, cut)
_EVICTION_BATCH = 256
_MAX_STORE_ATTEMPTS = 16
# Sealed segments queued behind the one being written (2 MB each at 8 Mbit/s);
# one written before it may still be in its fsync. A power cut loses all of
# these; two queued ride out a slow flush.
STORE_QUEUE_SEGMENTS = 2


class RingError(Exception):
    """The ring cannot be used (locked by another process, closed, unreadable index)."""


class PinCapExceeded(RingError):
    """Pinning this window would hold more bytes against eviction than the cap allows."""


class SegmentUnavailable(Exception):
    """A listed segment cannot be delivered; ``reason`` says why."""

    def __init__(self, record: SegmentRecord, reason: str) -> None:
        super().__init__(f"segment {record.file_name} ({_describe(record)}): {reason}")
        self.record = record
        self.reason = reason


class SegmentDamaged(SegmentUnavailable):
    """The file or its row was altered: truncated, bit-flipped, swapped or re-timed."""


class SegmentGone(SegmentUnavailable):
    """The file went away after it was listed (evicted meanwhile)."""


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of footage without gaps."""

    start_ms: int
    end_ms: int
    segments: int


@dataclass(frozen=True, slots=True)
class RingStatus:
    segments: int
    bytes: int  # sealed bytes on disk (segment files only)
    oldest_ms: int | None  # first frame of the oldest segment
    newest_ms: int | None  # last frame of the newest segment
    spans: tuple[Span, ...]  # more than one: there are gaps between them
    pins: tuple[Pin, ...] = ()
    pinned_bytes: int = 0
    dropped_segments: int = 0  # since this process started: could not be stored at all

    def as_json(self) -> dict[str, object]:
        """The shape `edge status --json` prints under "buffer" (times RFC 3339, UTC)."""
        return {
            "segments": self.segments,
            "bytes": self.bytes,
            "oldest": _rfc3339(self.oldest_ms),
            "newest": _rfc3339(self.newest_ms),
            "spans": [
                {"start": _rfc3339(s.start_ms), "end": _rfc3339(s.end_ms), "segments": s.segments}
                for s in self.spans
            ],
            "gaps": [
                {"start": _rfc3339(a.end_ms), "end": _rfc3339(b.start_ms)}
                for a, b in zip(self.spans, self.spans[1:], strict=False)
            ],
            "pinned": {"windows": len(self.pins), "bytes": self.pinned_bytes},
            "dropped_segments": self.dropped_segments,
        }


@dataclass(eq=False)
class _SealedSegment:
    """A segment sealed on the caller's thread, waiting for the store thread."""

    meta: SegmentMeta
    video_bytes: int
    sealed: bytes | bytearray
    digest: tuple[bytes, int]  # sealed_digest: (SHA-256, bytes covered)
    key_id: str
    waited_for: bool  # by put, which raises its own error; a submit's goes to the next one
    stored: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    holds_room: bool = True  # until its bytes are written (or it failed)


@dataclass
class _Totals:
    segments: int = 0
    bytes: int = 0
    dropped: int = 0
    pins: list[Pin] = field(default_factory=list)


class RingReader:
    """Reads the ring's state; never changes files or rows. Safe from any thread."""

    def __init__(
        self,
        buffer_dir: Path,
        index: SegmentIndex | None,
        keys: KeyStore,
        *,
        gap_threshold_ms: int = DEFAULT_GAP_THRESHOLD_MS,
    ) -> None:
        self.buffer_dir = buffer_dir
        self.segments_dir = buffer_dir / SEGMENTS_DIR
        self._index = index
        self._keys = keys
        self._gap_threshold_ms = gap_threshold_ms
        # Guards the SQLite connection and the totals. Taken briefly by every
        # thread: put (segmenter thread), pin/unpin (approvals), status and
        # overlapping (CLI, review page, delivery). File reads and decryption
        # happen outside it.
        self._lock = threading.Lock()
        self._closed = False
        # Decrypts (readers) or hashes (the writer) beside the thread that asked.
        self._worker = Worker("edge-ring-worker")

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        keys_dir: Path | None = None,
        gap_threshold_ms: int = DEFAULT_GAP_THRESHOLD_MS,
    ) -> RingReader:
        buffer_dir = data_dir / "buffer"
        index_path = buffer_dir / INDEX_NAME
        index = SegmentIndex.open(index_path, create=False) if index_path.exists() else None
        keys = KeyStore(keys_dir or data_dir / "keys")
        return cls(buffer_dir, index, keys, gap_threshold_ms=gap_threshold_ms)

    def close(self) -> None:
        with self._lock:
            if not self._closed and self._index is not None:
                self._index.close()
            self._closed = True
        self._worker.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------

    def overlapping(self, start_ms: int, end_ms: int) -> list[SegmentRecord]:
        """Rows of the segments with a frame in [start_ms, end_ms], by time. Reads no file."""
        if end_ms < start_ms:
            raise ValueError("window ends before it starts")
        with self._lock:
            index = self._open_index()
            return [] if index is None else index.overlapping(start_ms, end_ms)

    def open_segment(
        self, record: SegmentRecord, *, meanwhile: Callable[[], object] | None = None
    ) -> OpenedSegment:
        """Read, check and decrypt one listed segment, in memory.

        ``meanwhile``: work for the calling thread while the segment decrypts on
        the worker (the clip builder hashes what it has written so far).
        Raises SegmentDamaged (logged as a warning) if the file or its row were
        altered, SegmentGone if the file was evicted since it was listed.
        """
        if not _FILE_RE.match(record.file_name):
            raise self._damaged(record, "index names a file that is not a segment file")
        path = self.segments_dir / record.file_name
        try:
            with open(path, "rb", buffering=0) as file:
                # One byte more than expected tells "grown" apart from "as listed".
                sealed = file.read(min(record.sealed_bytes, MAX_SEGMENT_BYTES * 2) + 1)
        except FileNotFoundError:
            raise SegmentGone(record, "file evicted or removed after it was listed") from None
        if len(sealed) != record.sealed_bytes:
            raise self._damaged(
                record,
                f"file holds {len(sealed)}{'+' if len(sealed) > record.sealed_bytes else ''} "
                f"bytes, index says {record.sealed_bytes}: truncated, or replaced by another file",
            )
        # Rows from schema 1 hash the whole file; from 2, its start (sealed_digest).
        digested_bytes = record.digested_bytes
        if digested_bytes is None:
            digested_bytes = record.sealed_bytes
        if not 0 < digested_bytes <= len(sealed):
            raise self._damaged(record, f"index row's digest covers {digested_bytes} bytes")
        # Decrypted on the worker while this thread works on ``meanwhile`` (the clip
        # builder hashes its output, and hashlib lets go of Python's lock).
        decrypted: Future[OpenedSegment] | None = None
        problem = ""
        try:
            identity = self._keys.identity(record.key_id).private_key
            decrypted = self._worker.submit(lambda: open_sealed(sealed, [identity]))
        except KeyFileError as error:
            problem = f"its storage key is not available: {error}"
        digest = hashlib.sha256(memoryview(sealed)[:digested_bytes]).digest()
        if meanwhile is not None:
            meanwhile()
        opened: OpenedSegment | None = None
        if decrypted is not None:
            try:
                opened = decrypted.result()
            except SealedSegmentError as error:
                problem = str(error)
        if digest != record.sealed_sha256:
            raise self._damaged(
                record, "content does not match its index row: altered, or replaced by another file"
            )
        if opened is None:
            raise self._damaged(record, problem)
        differences = _differences(record, opened)
        if differences:
            raise self._damaged(
                record,
                "metadata sealed in the segment differs from its index row: "
                + ", ".join(differences),
            )
        return opened

    def verify(self) -> list[SegmentUnavailable]:
        """Check every listed segment (reads and decrypts all: for tests and repair tools)."""
        with self._lock:
            index = self._open_index()
            records = [] if index is None else list(index.all_records())
        problems = []
        for record in records:
            try:
                self.open_segment(record)
            except SegmentUnavailable as problem:
                problems.append(problem)
        return problems

    def status(self) -> RingStatus:
        with self._lock:
            index = self._open_index()
            if index is None:
                return RingStatus(0, 0, None, None, ())
            segments, total_bytes = index.totals()
            spans = _spans(index.time_ranges(), self._gap_threshold_ms)
            pins = tuple(index.pins())
            pinned_bytes = _pinned_bytes(index, pins)
            dropped = self._dropped_unlocked()
        return RingStatus(
            segments=segments,
            bytes=total_bytes,
            oldest_ms=spans[0].start_ms if spans else None,
            newest_ms=max(s.end_ms for s in spans) if spans else None,
            spans=tuple(spans),
            pins=pins,
            pinned_bytes=pinned_bytes,
            dropped_segments=dropped,
        )

    # -- internals ---------------------------------------------------------------

    def _open_index(self) -> SegmentIndex | None:
        if self._closed:
            raise RingError("ring is closed")
        return self._index

    def _dropped_unlocked(self) -> int:
        return 0

    def _damaged(self, record: SegmentRecord, reason: str) -> SegmentDamaged:
        damaged = SegmentDamaged(record, reason)
        log.warning("skipping damaged %s", damaged)
        return damaged


class Ring(RingReader):
    """The writer: takes segments (a SegmentSink), evicts, pins. One per data_dir.

    Thread use: ``submit`` (or ``put``) is called by the segmenter's worker thread;
    ``pin`` and ``unpin`` by the approvals worker; the reader methods by any thread.
    ``_put_lock`` serialises sealing and queueing, so segments are stored in the
    order they were put. The store thread writes, renames and fsyncs outside
    ``_lock``, so a status query never waits for a disk flush.
    """

    def __init__(
        self,
        buffer_dir: Path,
        index: SegmentIndex,
        keys: KeyStore,
        *,
        lock_fd: int,
        max_bytes: int,
        max_age_s: float,
        clock: Clock,
        owner_recipients: list[str],
        pin_cap_bytes: int,
        gap_threshold_ms: int = DEFAULT_GAP_THRESHOLD_MS,
    ) -> None:
        if max_bytes <= 0 or max_age_s <= 0 or pin_cap_bytes < 0:
            raise ValueError("max_bytes and max_age_s must be positive, pin_cap_bytes >= 0")
        super().__init__(buffer_dir, index, keys, gap_threshold_ms=gap_threshold_ms)
        self._writer_index = index
        self._lock_fd = lock_fd
        self._max_bytes = max_bytes
        self._max_age_ms = int(max_age_s * 1000)
        self._clock = clock
        self._owners = parse_recipients(owner_recipients)
        self._pin_cap_bytes = pin_cap_bytes
        self._put_lock = threading.Lock()
        self._totals = _Totals()
        # Sealed segments; an Event is flush()'s marker, None tells the thread to end.
        # Unbounded: _room bounds the sealed segments not yet written, the queued
        # ones and the one being written (not one already written, in its fsync).
        self._store_queue: queue.Queue[_SealedSegment | threading.Event | None] = queue.Queue()
        self._room = threading.Semaphore(STORE_QUEUE_SEGMENTS + 1)
        self._store_thread: threading.Thread | None = None
        self._store_error: BaseException | None = None  # a submitted segment that failed
        # The oldest row (None: the ring is empty), while known: most segments arrive
        # with nothing old enough to evict, and then the index need not be asked.
        self._oldest: SegmentRecord | None = None
        self._oldest_known = False

    @classmethod
    def open(  # type: ignore[override]
        cls,
        data_dir: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        clock: Clock,
        owner_recipients: list[str],
        rotate_every_s: float = 86400.0,
        pin_cap_bytes: int,
        keys_dir: Path | None = None,
        gap_threshold_ms: int = DEFAULT_GAP_THRESHOLD_MS,
    ) -> Ring:
        """Open (creating what is missing), take the writer lock, reconcile, evict to limits.

        Creates missing keys like ssh host keys; raises KeyPermissionError if a key
        is open to other users, RingError if another process writes this ring,
        ValueError for a bad owner recipient or limit.
        """
        parse_recipients(owner_recipients)  # fail before touching anything
        keys_dir = keys_dir or data_dir / "keys"
        init_keys(keys_dir, now_ms=clock.now_ms())
        check_permissions(keys_dir)
        buffer_dir = data_dir / "buffer"
        for directory in (data_dir, buffer_dir, buffer_dir / SEGMENTS_DIR):
            if not directory.is_dir():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(directory, 0o700)
                fsync_dir(directory.parent)
        lock_fd = os.open(buffer_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RingError(
                f"{buffer_dir} is in use by another edge process (is `edge run` already running?)"
            ) from None
        try:
            index = SegmentIndex.open(buffer_dir / INDEX_NAME, create=True)
        except IndexError_ as error:
            os.close(lock_fd)
            raise RingError(str(error)) from None
        ring = cls(
            buffer_dir,
            index,
            KeyStore(keys_dir, rotate_every_s=rotate_every_s),
            lock_fd=lock_fd,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            clock=clock,
            owner_recipients=owner_recipients,
            pin_cap_bytes=pin_cap_bytes,
            gap_threshold_ms=gap_threshold_ms,
        )
        try:
            ring._start()
        except BaseException:
            ring.close()
            raise
        return ring

    def close(self) -> None:
        """Stores what was submitted, then closes the index and lets go of the lock."""
        with self._put_lock:
            if self._store_thread is not None:
                self._store_queue.put(None)
                self._store_thread.join()
                self._store_thread = None
            super().close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    # -- SegmentSink -----------------------------------------------------------------

    def put(self, segment: Segment) -> None:
        """Seal and store one segment, evicting as needed; returns once it is on disk.

        A full disk never stops recording: the oldest segments go at once. Only if
        nothing at all can be evicted is the segment dropped (logged, counted).
        """
        sealed = self._seal_and_queue(segment, waited_for=True)
        sealed.stored.wait()
        if sealed.error is not None:
            raise sealed.error

    def submit(self, segment: Segment) -> None:
        """Seal one segment now and leave storing it to the store thread.

        Returns once it is queued (waiting only while the queue is full). If a
        segment submitted earlier could not be stored, raises that error here,
        once: the caller (the recorder) then stops as it would have on ``put``.
        """
        self._seal_and_queue(segment, waited_for=False)

    def flush(self) -> None:
        """Waits until everything submitted so far is stored (or has failed)."""
        with self._put_lock:
            self._check_open()
            if self._store_thread is None:
                return
            reached = threading.Event()
            self._store_queue.put(reached)
        reached.wait()

    def _seal_and_queue(self, segment: Segment, *, waited_for: bool) -> _SealedSegment:
        meta = segment.meta
        if meta.last_frame_ms < meta.first_frame_ms or meta.frame_count <= 0:
            raise ValueError(f"segment metadata is inconsistent: {meta}")
        with self._put_lock:
            self._check_open()
            error, self._store_error = self._store_error, None
            if error is not None:
                raise RingError(f"storing an earlier segment failed: {error}") from error
            self._room.acquire()
            try:
                key = self._keys.current(self._clock)
                sealed_bytes = seal_segment(segment, [key.recipient, *self._owners])
                sealed = _SealedSegment(
                    meta=meta,
                    video_bytes=len(segment.mp4),
                    sealed=sealed_bytes,
                    digest=sealed_digest(sealed_bytes),
                    key_id=key.key_id,
                    waited_for=waited_for,
                )
            except BaseException:
                self._room.release()
                raise
            if self._store_thread is None:
                self._store_thread = threading.Thread(
                    target=self._store_loop, name="edge-ring-store", daemon=True
                )
                self._store_thread.start()
            self._store_queue.put(sealed)
            return sealed

    def _check_open(self) -> None:
        if self._closed:
            raise RingError("ring is closed")

    # -- the store thread ---------------------------------------------------------------

    def _store_loop(self) -> None:
        while (sealed := self._store_queue.get()) is not None:
            if isinstance(sealed, threading.Event):
                sealed.set()
                continue
            try:
                self._store(sealed)
            except BaseException as error:
                log.error("could not store a segment (%s): %s", _describe_meta(sealed.meta), error)
                sealed.error = error
                if not sealed.waited_for:
                    self._store_error = error
            finally:
                self._free_room(sealed)
                sealed.stored.set()

    def _store(self, sealed: _SealedSegment) -> None:
        data = sealed.sealed
        digest, digested_bytes = sealed.digest
        with self._lock:
            self._evict_to_limits(incoming_bytes=len(data))
        file_name = f"{secrets.token_hex(16)}.age"
        if not self._store_file(file_name, data, written=lambda: self._free_room(sealed)):
            self._drop(sealed.meta, "no space left even after evicting everything evictable")
            return
        for _ in range(_MAX_STORE_ATTEMPTS):
            try:
                with self._lock:
                    self._writer_index.insert(
                        file_name=file_name,
                        meta=sealed.meta,
                        video_bytes=sealed.video_bytes,
                        sealed_bytes=len(data),
                        sealed_sha256=digest,
                        digested_bytes=digested_bytes,
                        key_id=sealed.key_id,
                    )
                    self._totals.segments += 1
                    self._totals.bytes += len(data)
                    if self._oldest is None:
                        self._oldest_known = False  # was empty: this row is the oldest
                return
            except sqlite3.OperationalError as error:
                if not _is_disk_full(error):
                    (self.segments_dir / file_name).unlink(missing_ok=True)
                    raise
                if not self._evict_for_disk(len(data)):
                    break
        (self.segments_dir / file_name).unlink(missing_ok=True)
        self._drop(sealed.meta, "no space left for its index row")

    # -- pins -------------------------------------------------------------------------

    def pin(self, window_start_ms: int, window_end_ms: int, owner_id: str) -> int:
        """Keep the segments overlapping the window from eviction until ``unpin(owner_id)``.

        Pinning again with the same owner replaces its window. Returns the bytes the
        window holds now; raises PinCapExceeded if all pins together would exceed
        the cap. Pins are stored in the index, so they survive a restart.
        """
        if window_end_ms < window_start_ms:
            raise ValueError("pin window ends before it starts")
        if not owner_id or len(owner_id) > 256:
            raise ValueError("pin owner id must be 1..256 characters")
        pin = Pin(owner_id, window_start_ms, window_end_ms)
        with self._lock:
            index = self._writer_index
            others = [p for p in self._totals.pins if p.owner_id != owner_id]
            total = _pinned_bytes(index, [*others, pin])
            if total > self._pin_cap_bytes:
                raise PinCapExceeded(
                    f"pinning {owner_id!r} would hold {total} bytes against eviction, "
                    f"more than the cap of {self._pin_cap_bytes}"
                )
            index.set_pin(pin)
            self._totals.pins = [*others, pin]
            return _pinned_bytes(index, [pin])

    def unpin(self, owner_id: str) -> None:
        with self._lock:
            self._writer_index.remove_pin(owner_id)
            self._totals.pins = [p for p in self._totals.pins if p.owner_id != owner_id]

    # -- internals ----------------------------------------------------------------------

    def _dropped_unlocked(self) -> int:
        return self._totals.dropped

    def _start(self) -> None:
        with self._put_lock, self._lock:
            self._reconcile()
            current = self._keys.current(self._clock)
            self._keys.delete_unused(self._writer_index.key_ids_in_use() | {current.key_id})
            self._totals.segments, self._totals.bytes = self._writer_index.totals()
            self._totals.pins = self._writer_index.pins()
            self._evict_to_limits(incoming_bytes=0)

    def _reconcile(self) -> None:
        """Make files and rows agree after a crash or power cut."""
        index = self._writer_index
        rows = index.file_names()
        on_disk: set[str] = set()
        for entry in os.scandir(self.segments_dir):
            if entry.name.startswith(_TMP_PREFIX):
                # A segment cut off mid-write (ciphertext only): never indexed.
                os.unlink(entry.path)
                log.info("reconcile: removed unfinished %s", entry.name)
            elif _FILE_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                on_disk.add(entry.name)
            else:
                log.warning("reconcile: %s is not a segment file; left alone", entry.path)
        dangling = [row_id for name, row_id in rows.items() if name not in on_disk]
        if dangling:
            index.delete(dangling)
            log.warning("reconcile: dropped %d index rows whose files are gone", len(dangling))
        orphans = sorted(on_disk - rows.keys())
        if orphans:
            identities = self._keys.all_identities()
            for name in orphans:
                self._reindex_orphan(name, identities)
        fsync_dir(self.segments_dir)

    def _reindex_orphan(self, name: str, identities: list[StorageKey]) -> None:
        # A file renamed into place but not yet indexed when the power went: it is
        # complete (fsynced before the rename), so index it from its sealed metadata.
        path = self.segments_dir / name
        sealed = path.read_bytes() if path.stat().st_size <= MAX_SEGMENT_BYTES * 2 else b""
        for key in identities:
            try:
                opened = open_sealed(sealed, [key.private_key])
            except SealedSegmentError:
                continue
            digest, digested_bytes = sealed_digest(sealed)  # opened: framed as age
            self._writer_index.insert(
                file_name=name,
                meta=opened.meta,
                video_bytes=opened.video_bytes,
                sealed_bytes=len(sealed),
                sealed_sha256=digest,
                digested_bytes=digested_bytes,
                key_id=key.key_id,
            )
            log.info("reconcile: re-indexed %s (%s)", name, _describe_meta(opened.meta))
            return
        path.unlink()
        log.warning("reconcile: removed %s: not a segment any key here opens", name)

    def _evict_to_limits(self, *, incoming_bytes: int) -> None:
        """Oldest first (arrival order), skipping pinned, past max_bytes or max_age."""
        over_bytes = self._totals.bytes + incoming_bytes - self._max_bytes
        if over_bytes > 0:
            self._evict(lambda record, freed: freed < over_bytes, include_pinned=False)
        if self._clock.is_synchronized():
            # Footage labels are only comparable with a synchronised clock; the scan
            # stops at the first young segment, so a clock that was wrong once never
            # evicts newer recordings ahead of older ones.
            cutoff_ms = self._clock.now_ms() - self._max_age_ms
            if self._may_hold_older_than(cutoff_ms):
                self._evict(
                    lambda record, freed: record.meta.last_frame_ms < cutoff_ms,
                    include_pinned=False,
                )
        self._evict_for_free_space(incoming_bytes)

    def _may_hold_older_than(self, cutoff_ms: int) -> bool:
        """False if the age scan would stop at once: the oldest segment is younger
        than the cutoff and not pinned (so a pinned one is always looked past)."""
        if not self._oldest_known:
            batch = self._writer_index.oldest(0, 1)
            self._oldest, self._oldest_known = (batch[0] if batch else None), True
        oldest = self._oldest
        if oldest is None:
            return False
        return oldest.meta.last_frame_ms < cutoff_ms or self._is_pinned(oldest)

    def _evict_for_free_space(self, incoming_bytes: int) -> int:
        needed = incoming_bytes + DISK_RESERVE_BYTES

        def short_of_space(record: SegmentRecord | None = None, freed: int = 0) -> bool:
            return _free_bytes(self.segments_dir) < needed

        evicted = 0
        # A few rounds: deleting rows grows the WAL, which eats a little of the space.
        for _ in range(4):
            if not short_of_space():
                break
            count = self._evict(short_of_space, include_pinned=False)
            if count == 0:
                # Recording must go on: pinned footage goes last, but it goes.
                count = self._evict(short_of_space, include_pinned=True)
                if count:
                    log.warning("disk full: evicted %d pinned segments to keep recording", count)
            if count == 0:
                break
            evicted += count
        return evicted

    def _evict_for_disk(self, incoming_bytes: int) -> bool:
        """After ENOSPC: evict at once; True if anything went (so a retry may succeed)."""
        with self._lock:
            evicted = self._evict_for_free_space(incoming_bytes)
            if not evicted:
                # statvfs can say there is room (reserved blocks, metadata) while
                # writes fail: evict the oldest segment regardless.
                evicted = self._evict(lambda r, freed: freed == 0, include_pinned=False)
                evicted = evicted or self._evict(lambda r, freed: freed == 0, include_pinned=True)
            if evicted:
                log.warning("disk full: evicted the %d oldest segments", evicted)
            else:
                log.error("disk full and no segment left to evict")
            return evicted > 0

    def _evict(self, should_evict: _EvictWhile, *, include_pinned: bool) -> int:
        """Evict in arrival order while ``should_evict(record, bytes_freed_so_far)``.

        Files go first (each unlinked at once, so free-space checks see it), rows
        after, in one transaction: a crash in between leaves rows without files,
        which the next open drops. Returns how many segments went.
        """
        index = self._writer_index
        victims: list[SegmentRecord] = []
        freed = 0
        after_row_id = 0
        batch_rows = 2  # usually none or one goes: read few rows, more as they do
        try:
            while batch := index.oldest(after_row_id, batch_rows):
                batch_rows = min(batch_rows * 4, _EVICTION_BATCH)
                for record in batch:
                    after_row_id = record.row_id
                    if not include_pinned and self._is_pinned(record):
                        continue
                    if not should_evict(record, freed):
                        return len(victims)
                    if _FILE_RE.match(record.file_name):
                        (self.segments_dir / record.file_name).unlink(missing_ok=True)
                    victims.append(record)
                    freed += record.sealed_bytes
            return len(victims)
        finally:
            self._forget(victims)

    def _forget(self, victims: list[SegmentRecord]) -> None:
        if not victims:
            return
        fsync_dir(self.segments_dir)
        try:
            self._writer_index.delete([record.row_id for record in victims])
        except sqlite3.OperationalError as error:
            # The files are gone; the rows go at the next eviction pass or open.
            log.error("could not delete %d evicted rows: %s", len(victims), error)
            return
        self._totals.segments -= len(victims)
        self._totals.bytes -= sum(record.sealed_bytes for record in victims)
        self._oldest_known = False
        log.debug("evicted %d segments", len(victims))
        if any(record.key_id != self._keys.current_key_id() for record in victims):
            self._keys.delete_unused(self._writer_index.key_ids_in_use())

    def _is_pinned(self, record: SegmentRecord) -> bool:
        return any(pin.covers(record) for pin in self._totals.pins)

    def _free_room(self, sealed: _SealedSegment) -> None:
        if sealed.holds_room:  # only the store thread changes it
            sealed.holds_room = False
            self._room.release()

    def _store_file(
        self, file_name: str, sealed: bytes | bytearray, *, written: Callable[[], None]
    ) -> bool:
        """Writes the file durably, evicting on a full disk; ``written`` is called once
        its bytes are with the kernel, before the fsync. False: no room even so."""
        for _ in range(_MAX_STORE_ATTEMPTS):
            try:
                _write_durably(self.segments_dir, file_name, sealed, written=written)
                return True
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if not self._evict_for_disk(len(sealed)):
                    return False
        return False

    def _drop(self, meta: SegmentMeta, reason: str) -> None:
        with self._lock:
            self._totals.dropped += 1
        log.error("segment dropped (%s): %s", _describe_meta(meta), reason)


_EvictWhile = Callable[[SegmentRecord, int], bool]


class RingFeed:
    """The recorder's sink: each segment is sealed at once and stored on the ring's
    store thread (``Ring.submit``), so encoding never waits for a disk flush."""

    def __init__(self, ring: Ring) -> None:
        self._ring = ring

    def put(self, segment: Segment) -> None:
        self._ring.submit(segment)


def _write_durably(
    directory: Path,
    file_name: str,
    data: bytes | bytearray,
    *,
    written: Callable[[], None] | None = None,
) -> None:
    """Temp name, write, fsync, rename, fsync the directory: all or nothing on disk.
    ``written``: called between the write and the fsync."""
    path = directory / file_name
    with replacing_durably(path, temporary=directory / f"{_TMP_PREFIX}{file_name}") as out:
        out.write(data)  # unbuffered: the bytes are with the kernel once it returns
        if written is not None:
            written()


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _is_disk_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(error)


def _spans(time_ranges: Iterable[tuple[int, int]], gap_threshold_ms: int) -> list[Span]:
    spans: list[Span] = []
    start_ms = end_ms = count = 0
    for first_ms, last_ms in time_ranges:
        if count and first_ms - end_ms <= gap_threshold_ms:
            end_ms = max(end_ms, last_ms)
            count += 1
            continue
        if count:
            spans.append(Span(start_ms, end_ms, count))
        start_ms, end_ms, count = first_ms, last_ms, 1
    if count:
        spans.append(Span(start_ms, end_ms, count))
    return spans


def _pinned_bytes(index: SegmentIndex, pins: Iterable[Pin]) -> int:
    held: dict[int, int] = {}
    for pin in pins:
        for record in index.overlapping(pin.start_ms, pin.end_ms):
            held[record.row_id] = record.sealed_bytes
    return sum(held.values())


def _differences(record: SegmentRecord, opened: OpenedSegment) -> list[str]:
    differences = [
        f"{name} sealed {getattr(opened.meta, name)!r} vs index {getattr(record.meta, name)!r}"
        for name in SegmentMeta.__slots__
        if getattr(opened.meta, name) != getattr(record.meta, name)
    ]
    if opened.video_bytes != record.video_bytes:
        differences.append(f"video_bytes sealed {opened.video_bytes} vs index {record.video_bytes}")
    return differences


def _describe_meta(meta: SegmentMeta) -> str:
    return (
        f"{meta.camera} run {meta.run_id} #{meta.sequence}, "
        f"{_rfc3339(meta.first_frame_ms)}..{_rfc3339(meta.last_frame_ms)}"
    )


def _describe(record: SegmentRecord) -> str:
    return _describe_meta(record.meta)


def _rfc3339(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    try:
        when = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"@{timestamp_ms}ms"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
