"""The audit log: append-only, hash-chained, fsynced, rotated by size.

Everything that happens to a request is written here as one JSON line::

    {"seq":7,"ts":"2026-11-28T14:05:00.123Z","event":"rejected","reason":"bad_alg",...,"prev":"<hex>"}

- ``seq`` counts entries from 1, across files, with no gaps.
- ``ts`` is the wall-clock time the event was appended (RFC 3339, UTC, ms).
- ``prev`` is the SHA-256 (hex) of the previous entry's exact bytes, without its
  terminating newline; the very first entry chains from ``GENESIS_PREV``.
- Lines are ASCII (``ensure_ascii``), so a log shown in a terminal cannot carry
  escape sequences, and the bytes hashed are the bytes a ``grep`` shows.

Files: ``audit.log`` is written; past ``max_file_bytes`` it becomes
``audit.log.1`` (the older ones shift up to ``audit.log.{max_files}``, the
oldest beyond that is dropped). The chain runs on across files: the first line
of a new file chains from the last line of the one before. Every file begins
with an ``audit_file_start`` entry, so cutting lines off the top of the oldest
file is caught; dropping a whole oldest file is what rotation does and cannot
be told from deletion, which is why prompts carry the head (below).

The head: ``head()`` is the first 16 hex characters of the SHA-256 of the last
entry that is on disk. A chain kept on the device alone can be rewritten whole
by whoever holds the device, so every prompt carries the head, and
``verify(log_dir, head=H)`` checks that H is still an entry of the log: a
rewritten log or a cut tail is then caught against the owner's own messages.
(Entries appended after the last head the owner received are protected only by
the chain; the newest entry of all only by a head.)

Writes are batched by one writer thread ("audit-writer"): ``append`` queues
the event and returns; the writer writes whatever has queued and fsyncs once
per batch. ``append(..., durable=True)`` returns only once that entry is
fsynced, for events that must be on disk before the daemon acts on them.

Floods: ``append_counted`` writes the first ``flood_threshold_per_min`` events
per (event, reason) and minute one line each; past that it only counts, and
writes one ``{event}_aggregate`` line per minute and reason with the count.

Crashes: a crash mid-write can leave a torn last line (no newline). ``verify``
reports it apart from tampering (it never finished, so it was never durable).
On the next open the writer truncates the torn bytes and then logs that it did
(``audit_torn_tail_repaired``, with the number of bytes dropped and their
SHA-256): the repair is itself on the chain.

Only one process writes: ``open`` takes an exclusive ``flock`` on
``audit.lock``, so the daemon owns the log and the CLI only reads (verifies).

No footage and no secrets: field values are ids, reasons, numbers and short
strings. Strings are cut to ``MAX_STRING_CHARS``, ``bytes`` are refused, and a
line has at most ``MAX_FIELD_VALUES`` values.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.clock import Clock
from edge.durable import fsync_dir

log = logging.getLogger(__name__)

GENESIS_PREV = "0" * 64  # the "previous hash" of the first entry ever written
LOG_NAME = "audit.log"
LOCK_NAME = "audit.lock"
HEAD_HEX_CHARS = 16  # a head is this many hex characters of an entry's SHA-256

FILE_START_EVENT = "audit_file_start"  # first entry of every file
OPENED_EVENT = "audit_opened"  # the writer (re)opened the log: a daemon start
TORN_REPAIRED_EVENT = "audit_torn_tail_repaired"
DROPPED_EVENT = "audit_events_dropped"  # queue overflowed while the disk stalled
WRITE_FAILED_EVENT = "audit_write_failed"  # written once writing works again

MAX_STRING_CHARS = 200  # longer strings are cut (ids, reasons and short text only)
MAX_FIELD_VALUES = 32  # scalar values per entry, nested ones included
MAX_NESTING = 2  # a field may hold a dict/list of scalars, or one more level
MAX_FIELDS_BYTES = 16 * 1024  # an entry's fields, encoded; more is a caller's mistake
MAX_LINE_BYTES = 64 * 1024  # no entry written reaches this; verify refuses longer lines
_MAX_INT = 2**63 - 1

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,47}\Z")
_RESERVED_FIELDS = frozenset({"seq", "ts", "event", "prev"})
_FILE_RE = re.compile(r"audit\.log(?:\.([1-9][0-9]{0,5}))?\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
_HEAD_RE = re.compile(r"[0-9a-f]{8,64}\Z")

_MAX_BATCH_LINES = 4096  # lines per write+fsync; bounds the memory of one batch
_MAX_BUCKETS = 256  # distinct (event, reason) flood counters; more fold into "other"
_RETRY_AFTER_FAILURE_S = 1.0


class AuditError(Exception):
    """Base of the audit log's errors."""


class AuditLockedError(AuditError):
    """Another process (or another AuditLog here) already writes this log."""


class AuditWriteError(AuditError):
    """An entry could not be made durable (disk error, or the writer stopped)."""


class AuditClosedError(AuditError):
    """The log is not open for appending."""


FieldValue = None | bool | int | float | str | list[Any] | dict[str, Any]


# --------------------------------------------------------------------------- helpers


def format_ts_ms(timestamp_ms: int) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-28T14:05:00.123Z``."""
    seconds, millis = divmod(timestamp_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _format_minute(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(minute * 60))


def entry_hash(line: bytes) -> str:
    """SHA-256 hex of one entry: its bytes without the terminating newline."""
    return hashlib.sha256(line).hexdigest()


def _clean_value(value: object, depth: int, budget: list[int]) -> FieldValue:
    """A JSON value safe for the log: bounded, no bytes, no NaN."""
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_NESTING:
            raise ValueError("audit field nested too deeply")
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str) or not _NAME_RE.match(key):
                    raise ValueError(f"audit field key {key!r} is not a short snake_case name")
                out[key] = _clean_value(item, depth + 1, budget)
            return out
        return [_clean_value(item, depth + 1, budget) for item in value]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"an audit entry holds at most {MAX_FIELD_VALUES} values")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_MAX_INT <= value <= _MAX_INT:
            raise ValueError("audit integer out of 64-bit range")
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("audit float must be finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            # Cut, not refused: callers pass strings from untrusted messages (iss, topic).
            return value[: MAX_STRING_CHARS - 1] + "…"
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("audit fields take no bytes: footage and secrets stay out of the log")
    raise TypeError(f"audit field of type {type(value).__name__} is not allowed")


def clean_fields(fields: Mapping[str, object]) -> dict[str, FieldValue]:
    """Checks and bounds an entry's fields; raises TypeError/ValueError on misuse."""
    budget = [MAX_FIELD_VALUES]
    out: dict[str, FieldValue] = {}
    for key, value in fields.items():
        if not _NAME_RE.match(key):
            raise ValueError(f"audit field name {key!r} is not a short snake_case name")
        if key in _RESERVED_FIELDS:
            raise ValueError(f"audit field name {key!r} is reserved")
        out[key] = _clean_value(value, 0, budget)
    if len(json.dumps(out, ensure_ascii=True, separators=(",", ":"))) > MAX_FIELDS_BYTES:
        raise ValueError(f"audit entry fields over {MAX_FIELDS_BYTES} bytes")
    return out


def _check_event_name(event: str) -> None:
    if not isinstance(event, str) or not _NAME_RE.match(event):
        raise ValueError(f"audit event {event!r} is not a short snake_case name")


def encode_entry(
    seq: int, timestamp_ms: int, event: str, fields: Mapping[str, FieldValue], prev_hex: str
) -> bytes:
    """One entry's bytes, without the newline. Key order: seq, ts, event, fields, prev."""
    obj: dict[str, Any] = {"seq": seq, "ts": format_ts_ms(timestamp_ms), "event": event}
    obj.update(fields)
    obj["prev"] = prev_hex
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()


def _log_files(log_dir: Path) -> list[tuple[int, Path]]:
    """The log's files, oldest first, as (rotation number, path); audit.log is number 0."""
    found: list[tuple[int, Path]] = []
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    for name in names:
        match = _FILE_RE.match(name)
        if match:
            found.append((int(match.group(1) or 0), log_dir / name))
    found.sort(key=lambda item: -item[0])
    return found


def _read_tail(path: Path, max_bytes: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        return f.read()


def _parse_seq(line: bytes) -> int | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None


# --------------------------------------------------------------------------- the writer


@dataclass(frozen=True)
class AuditStats:
    lines_written: int
    fsyncs: int
    rotations: int
    dropped: int  # non-durable events refused because the queue was full (disk stalled)
    counted: int  # flood events counted into aggregate lines instead of written one each


@dataclass
class _Pending:
    ticket: int
    timestamp_ms: int
    event: str
    fields: dict[str, FieldValue]


@dataclass
class _Bucket:
    minute: int  # minutes since the epoch (wall clock)
    total: int = 0
    suppressed: int = 0


class AuditLog:
    """The writer. One per log directory per machine (enforced with a file lock).

    Threads: any thread may call ``append``, ``append_counted``, ``flush`` and
    ``head``; the writer thread ("audit-writer") alone touches the file. All
    shared state below is guarded by ``_cond``; the ``_w_*`` attributes belong
    to the writer thread (and to ``open`` before that thread starts).
    """

    def __init__(
        self,
        log_dir: Path | str,
        clock: Clock,
        *,
        max_file_bytes: int = 4 * 1024 * 1024,
        max_files: int = 8,
        flood_threshold_per_min: int = 30,
        batch_interval_s: float = 0.1,
        max_pending: int = 50_000,
        durable_timeout_s: float = 10.0,
    ) -> None:
        if max_file_bytes < 4096:
            raise ValueError("audit max_file_bytes must be at least 4096")
        if not 1 <= max_files <= 999:
            raise ValueError("audit max_files must be between 1 and 999")
        if flood_threshold_per_min < 0:
            raise ValueError("audit flood_threshold_per_min cannot be negative")
        if not 0 <= batch_interval_s <= 5:
            raise ValueError("audit batch_interval_s must be between 0 and 5")
        if max_pending < 1:
            raise ValueError("audit max_pending must be at least 1")
        self._dir = Path(log_dir)
        self._clock = clock
        self._max_file_bytes = max_file_bytes
        self._max_files = max_files
        self._flood_threshold = flood_threshold_per_min
        self._batch_interval_s = batch_interval_s
        self._max_pending = max_pending
        self._durable_timeout_s = durable_timeout_s

        self._cond = threading.Condition()
        # Guarded by _cond:
        self._state = "new"  # new -> open -> closing -> closed
        self._pending: deque[_Pending] = deque()
        self._next_ticket = 1
        self._synced_ticket = 0  # every ticket up to this one is on disk
        self._urgent_waiters = 0  # durable appends and flushes waiting: write at once
        self._failures = 0  # write failures so far; a waiter fails if one happens meanwhile
        self._last_error: Exception | None = None
        self._dropped_unreported = 0
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._head_hex = GENESIS_PREV
        self._stats = {"lines": 0, "fsyncs": 0, "rotations": 0, "dropped": 0, "counted": 0}
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None

        # Writer-thread state (no lock needed: one thread at a time).
        self._w_fd: int | None = None
        self._w_size = 0
        self._w_file_entries = 0  # entries in audit.log, its start entry included
        self._w_seq = 0  # seq of the last entry on disk
        self._w_prev = GENESIS_PREV  # hash of the last entry on disk
        self._w_notices: list[_Pending] = []  # the log's own events, written before the queue

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> AuditLog:
        """Takes the lock, repairs a torn tail, logs the (re)open and starts the writer."""
        with self._cond:
            if self._state != "new":
                raise AuditError(f"audit log already {self._state}")
            self._state = "opening"
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self._dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditLockedError(
                    f"the audit log in {self._dir} is already open in another process"
                ) from None
            repair = self._w_recover()
            startup: list[_Pending] = []
            if repair is not None:
                dropped_bytes, dropped_sha = repair
                log.warning("audit log: dropped a torn last line (%d bytes)", dropped_bytes)
                startup.append(
                    _Pending(
                        0,
                        self._clock.now_ms(),
                        TORN_REPAIRED_EVENT,
                        {"dropped_bytes": dropped_bytes, "dropped_sha256": dropped_sha},
                    )
                )
            startup.append(_Pending(0, self._clock.now_ms(), OPENED_EVENT, {}))
            self._w_write_batch(startup)
        except BaseException:
            self._release_files()
            with self._cond:
                self._state = "new"
            raise
        with self._cond:
            self._head_hex = self._w_prev
            self._state = "open"
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued (aggregates included), stops the writer, releases the lock."""
        with self._cond:
            if self._state != "open":
                return
            for key in list(self._buckets):
                self._emit_aggregate_locked(key)
            self._state = "closing"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("audit writer did not stop within %.1f s", timeout_s)
        with self._cond:
            lost = len(self._pending)
            self._state = "closed"
            self._cond.notify_all()
        if lost:
            log.error("audit log closed with %d entries not written", lost)
        self._release_files()

    def __enter__(self) -> AuditLog:
        return self.open() if self._state == "new" else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release_files(self) -> None:
        if self._w_fd is not None:
            os.close(self._w_fd)
            self._w_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # ----------------------------------------------------------------- appending

    def append(self, event: str, /, *, durable: bool = False, **fields: object) -> None:
        """Queues one entry. With ``durable=True`` returns only once it is fsynced.

        Raises TypeError/ValueError for fields the log does not take (bytes, long
        structures, bad names), AuditClosedError when not open, and (durable
        only) AuditWriteError when the entry could not be made durable in time.
        A non-durable entry is dropped and counted if the disk has stalled long
        enough for ``max_pending`` entries to queue up.
        """
        _check_event_name(event)
        cleaned = clean_fields(fields)
        timestamp_ms = self._clock.now_ms()
        with self._cond:
            self._check_open_locked()
            if not durable and len(self._pending) >= self._max_pending:
                self._dropped_unreported += 1
                self._stats["dropped"] += 1
                return
            ticket = self._enqueue_locked(timestamp_ms, event, cleaned)
            if durable:
                self._wait_synced_locked(ticket, self._durable_timeout_s)

    def append_counted(self, event: str, reason: str, /, **fields: object) -> None:
        """An event that may come in floods (rejections): kept as counts past a threshold.

        The first ``flood_threshold_per_min`` calls per (event, reason) in a
        wall-clock minute are written one line each (with ``reason`` and the
        fields); the rest of that minute only count, and one line
        ``{event}_aggregate`` with ``reason``, ``minute``, ``count`` (entries not
        written one by one) and ``total`` is written once the minute is over
        (or on ``flush``/``close``).

        The fields of an event that is only counted are not kept, so they are
        not checked either (in a flood that check was most of the cost); those
        of every event written are, before it is counted.
        """
        _check_event_name(event)
        _check_event_name(event + "_aggregate")
        if "reason" in fields:
            raise ValueError("append_counted takes the reason as its second argument")
        if not isinstance(reason, str):
            raise TypeError("reason must be a string")
        reason = reason[:MAX_STRING_CHARS]
        timestamp_ms = self._clock.now_ms()
        minute = timestamp_ms // 60_000
        with self._cond:
            self._check_open_locked()
            key = (event, reason)
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.minute != minute:
                self._emit_aggregate_locked(key)
                bucket = None
            if bucket is None:
                if len(self._buckets) >= _MAX_BUCKETS:
                    key = (event, "other")  # untrusted reasons cannot grow the table
                    bucket = self._buckets.get(key)
                    if bucket is not None and bucket.minute != minute:
                        self._emit_aggregate_locked(key)
                        bucket = None
                if bucket is None:
                    bucket = self._buckets[key] = _Bucket(minute)
            if bucket.total >= self._flood_threshold:
                bucket.total += 1
                bucket.suppressed += 1
                self._stats["counted"] += 1
                return
            # Checked before it counts: a refused entry leaves the counts as they were.
            cleaned = clean_fields({"reason": reason, **fields})
            bucket.total += 1
            if len(self._pending) >= self._max_pending:
                self._dropped_unreported += 1
                self._stats["dropped"] += 1
                return
            self._enqueue_locked(timestamp_ms, event, cleaned)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Writes the aggregates of finished minutes and waits until all queued is on disk."""
        with self._cond:
            self._check_open_locked()
            self._emit_due_aggregates_locked(self._clock.now_ms() // 60_000)
            last_ticket = self._next_ticket - 1
            if self._synced_ticket < last_ticket:
                self._wait_synced_locked(last_ticket, timeout_s)

    def head(self) -> str:
        """The current head: the first 16 hex chars of the SHA-256 of the last entry on disk."""
        with self._cond:
            return self._head_hex[:HEAD_HEX_CHARS]

    def stats(self) -> AuditStats:
        with self._cond:
            s = self._stats
            return AuditStats(s["lines"], s["fsyncs"], s["rotations"], s["dropped"], s["counted"])

    # ----------------------------------------------------------------- internals (locked)

    def _check_open_locked(self) -> None:
        if self._state != "open":
            raise AuditClosedError(f"audit log is {self._state}, not open")

    def _enqueue_locked(self, timestamp_ms: int, event: str, fields: dict[str, FieldValue]) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending.append(_Pending(ticket, timestamp_ms, event, fields))
        # Wake the writer only when it has something new to decide about: the
        # first entry of a batch, or a full batch. Waking it on every entry
        # would defeat batching.
        if len(self._pending) == 1 or len(self._pending) == _MAX_BATCH_LINES:
            self._cond.notify_all()
        return ticket

    def _wait_synced_locked(self, ticket: int, timeout_s: float) -> None:
        failures_before = self._failures
        deadline = time.monotonic() + timeout_s
        self._urgent_waiters += 1
        self._cond.notify_all()
        try:
            while self._synced_ticket < ticket:
                if self._failures > failures_before:
                    raise AuditWriteError(f"audit log write failed: {self._last_error}")
                if self._state not in ("open", "closing"):
                    raise AuditWriteError("audit log closed before the entry was written")
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise AuditWriteError(f"audit entry not on disk after {timeout_s:.1f} s")
                self._cond.wait(remaining_s)
        finally:
            self._urgent_waiters -= 1

    def _emit_aggregate_locked(self, key: tuple[str, str]) -> None:
        bucket = self._buckets.pop(key)
        if bucket.suppressed == 0:
            return  # every one of them was written as its own line
        event, reason = key
        fields: dict[str, FieldValue] = {
            "reason": reason,
            "minute": _format_minute(bucket.minute),
            "count": bucket.suppressed,
            "total": bucket.total,
        }
        # Aggregates are never dropped for a full queue: they are few and carry many.
        self._enqueue_locked(self._clock.now_ms(), event + "_aggregate", fields)

    def _emit_due_aggregates_locked(self, current_minute: int) -> None:
        # "!=" rather than "<": after the wall clock steps back, an old bucket
        # would otherwise wait until the clock caught up again.
        for key in [k for k, b in self._buckets.items() if b.minute != current_minute]:
            self._emit_aggregate_locked(key)

    def _idle_wait_s_locked(self) -> float | None:
        if not self._buckets:
            return None
        # Wake at the next minute boundary to write the finished minute's counts.
        # (Real time; with a test clock the wait simply ends and finds nothing due.)
        until_next_minute_ms = 60_000 - self._clock.now_ms() % 60_000
        return min(60.0, max(0.05, until_next_minute_ms / 1000 + 0.01))

    # ----------------------------------------------------------------- writer thread

    def _run(self) -> None:
        # The writer waits on its condition (which close() also signals) rather
        # than a separate stop event: it must wake both for new entries and to stop.
        retry_wait_s = 0.0
        while True:
            with self._cond:
                if retry_wait_s:
                    self._cond.wait(retry_wait_s)
                    retry_wait_s = 0.0
                if not self._pending and self._state == "open":
                    self._cond.wait(self._idle_wait_s_locked())
                if (
                    self._pending
                    and self._state == "open"
                    and not self._urgent_waiters
                    and len(self._pending) < _MAX_BATCH_LINES
                    and self._batch_interval_s > 0
                ):
                    # Group commit: let more entries join before paying for an fsync.
                    self._cond.wait(self._batch_interval_s)
                if self._state == "open":
                    self._emit_due_aggregates_locked(self._clock.now_ms() // 60_000)
                if self._dropped_unreported:
                    notice: dict[str, FieldValue] = {"count": self._dropped_unreported}
                    self._w_notices.append(_Pending(0, self._clock.now_ms(), DROPPED_EVENT, notice))
                    self._dropped_unreported = 0
                batch = list(self._w_notices)
                batch += [
                    self._pending[i] for i in range(min(len(self._pending), _MAX_BATCH_LINES))
                ]
                stopping = self._state != "open"
            if not batch:
                if stopping:
                    return
                continue
            try:
                self._w_write_batch(batch)
            except Exception as exc:  # disk errors; anything else is a bug, logged the same way
                log.error("audit log write failed; will retry", exc_info=True)
                if isinstance(exc, OSError):
                    self._w_note_failure(exc)
                with self._cond:
                    self._failures += 1
                    self._last_error = exc
                    self._cond.notify_all()
                if stopping:
                    log.error("audit log stopping with entries not written")
                    return
                retry_wait_s = _RETRY_AFTER_FAILURE_S

    def _w_note_failure(self, exc: OSError) -> None:
        """Keeps a notice of the failure, written to the chain once writing works again."""
        error = errno.errorcode.get(exc.errno or 0, "unknown")
        for notice in self._w_notices:
            if notice.event == WRITE_FAILED_EVENT:
                failures = notice.fields.get("failures")
                notice.fields["failures"] = (failures if isinstance(failures, int) else 0) + 1
                notice.fields["error"] = error
                return
        fields: dict[str, FieldValue] = {"failures": 1, "error": error}
        self._w_notices.append(_Pending(0, self._clock.now_ms(), WRITE_FAILED_EVENT, fields))

    def _w_write_batch(self, batch: list[_Pending]) -> None:
        """Writes entries, fsyncs, then publishes progress. Rotates between entries.

        Entries leave the queue only once fsynced. On a failure the file is cut
        back to where this write began (best effort; otherwise the next attempt
        re-reads the tail from disk), so nothing is written twice.
        """
        if self._w_fd is None:
            if self._w_recover() is not None:
                log.warning("audit log: cut a torn line left by a failed write")
        chunk: list[bytes] = []
        chunk_items: list[_Pending] = []
        seq, prev, size = self._w_seq, self._w_prev, self._w_size
        file_entries = self._w_file_entries
        for item in batch:
            line = encode_entry(seq + 1, item.timestamp_ms, item.event, item.fields, prev) + b"\n"
            # A file holding only its start entry takes the line even if it overflows:
            # rotating again would loop.
            if file_entries > 1 and size + len(line) > self._max_file_bytes:
                self._w_commit(chunk, chunk_items, seq, prev, size)
                chunk, chunk_items = [], []
                self._w_rotate()
                seq, prev, size = self._w_seq, self._w_prev, self._w_size
                file_entries = self._w_file_entries
                line = encode_entry(seq + 1, item.timestamp_ms, item.event, item.fields, prev)
                line += b"\n"
            chunk.append(line)
            chunk_items.append(item)
            seq += 1
            prev = entry_hash(line[:-1])
            size += len(line)
            file_entries += 1
        self._w_commit(chunk, chunk_items, seq, prev, size)

    def _w_commit(
        self, chunk: list[bytes], items: list[_Pending], seq: int, prev: str, size: int
    ) -> None:
        if not chunk:
            return
        assert self._w_fd is not None
        start_size = self._w_size
        try:
            data = b"".join(chunk)
            view = memoryview(data)
            while view:
                written = os.write(self._w_fd, view)
                view = view[written:]
            os.fsync(self._w_fd)
        except OSError:
            try:
                os.ftruncate(self._w_fd, start_size)
                os.fsync(self._w_fd)
            except OSError:
                os.close(self._w_fd)
                self._w_fd = None  # the next attempt re-reads the tail from disk
            raise
        self._w_seq, self._w_prev, self._w_size = seq, prev, size
        self._w_file_entries += len(chunk)
        self._w_notices = [n for n in self._w_notices if not any(n is item for item in items)]
        with self._cond:
            self._stats["lines"] += len(chunk)
            self._stats["fsyncs"] += 1
            self._head_hex = prev
            last_ticket = 0
            for item in items:
                if item.ticket:
                    last_ticket = item.ticket
            if last_ticket:
                while self._pending and self._pending[0].ticket <= last_ticket:
                    self._pending.popleft()
                self._synced_ticket = last_ticket
            self._cond.notify_all()

    def _w_rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.{max_files}; the oldest goes."""
        assert self._w_fd is not None
        os.close(self._w_fd)  # already fsynced by the commit before
        self._w_fd = None
        for number, path in _log_files(self._dir):  # oldest first, so renames never collide
            if number == 0:
                continue
            if number >= self._max_files:
                path.unlink()
            else:
                path.rename(self._dir / f"{LOG_NAME}.{number + 1}")
        (self._dir / LOG_NAME).rename(self._dir / f"{LOG_NAME}.1")
        fsync_dir(self._dir)
        with self._cond:
            self._stats["rotations"] += 1
        self._w_open_current()

    def _w_open_current(self) -> None:
        """Opens audit.log for appending; a new (empty) file first gets its start entry."""
        path = self._dir / LOG_NAME
        created = not path.exists()
        self._w_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if created:
            fsync_dir(self._dir)
        self._w_size = os.fstat(self._w_fd).st_size
        # Only "empty or not" matters for rotation; a reopened file counts as full enough.
        self._w_file_entries = 0 if self._w_size == 0 else 2
        if self._w_size == 0:
            reason = "genesis" if self._w_seq == 0 else "rotation"
            start = _Pending(0, self._clock.now_ms(), FILE_START_EVENT, {"reason": reason})
            line = (
                encode_entry(
                    self._w_seq + 1, start.timestamp_ms, start.event, start.fields, self._w_prev
                )
                + b"\n"
            )
            self._w_commit([line], [start], self._w_seq + 1, entry_hash(line[:-1]), len(line))

    def _w_recover(self) -> tuple[int, str] | None:
        """Finds where the chain ends on disk; cuts a torn last line. Returns what it cut."""
        if self._w_fd is not None:
            os.close(self._w_fd)
            self._w_fd = None
        repair: tuple[int, str] | None = None
        current = self._dir / LOG_NAME
        if current.exists():
            size = current.stat().st_size
            tail = _read_tail(current, 2 * MAX_LINE_BYTES)
            if tail and not tail.endswith(b"\n"):
                cut_at = tail.rfind(b"\n") + 1  # 0 when the file holds no newline in reach
                torn = tail[cut_at:]
                keep = size - len(torn)
                fd = os.open(current, os.O_WRONLY)
                try:
                    os.ftruncate(fd, keep)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                repair = (len(torn), hashlib.sha256(torn).hexdigest())
        self._w_seq, self._w_prev = 0, GENESIS_PREV
        for _number, path in reversed(_log_files(self._dir)):  # newest first
            tail = _read_tail(path, 2 * MAX_LINE_BYTES)
            lines = tail.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            if not lines:
                continue
            self._w_prev = entry_hash(lines[-1])
            # seq: from the last entry that parses (one that does not is flagged by verify).
            seq = None
            for back, line in enumerate(reversed(lines)):
                parsed = _parse_seq(line)
                if parsed is not None:
                    seq = parsed + back
                    break
            if seq is None:
                log.error("audit log: cannot read the seq of the last entries in %s", path.name)
                seq = len(lines)
            self._w_seq = seq
            break
        self._w_open_current()
        return repair


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Location:
    file: str  # e.g. "audit.log.2"
    line: int  # 1-based line number in that file
    seq: int | None  # the entry's seq, if it could be read

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}"
        return f"{where} (seq {self.seq})" if self.seq is not None else where


@dataclass(frozen=True)
class BadEntry:
    location: Location
    reason: str  # malformed | bad_seq | altered | out_of_place | missing_entries |
    #              out_of_order | bad_genesis | file_start_missing | head_not_found |
    #              torn_tail | unreadable
    detail: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool  # the chain holds (and the head, when one was given, is in it)
    entries: int  # complete entries checked
    first_bad: BadEntry | None  # the first broken entry, named
    torn_tail: BadEntry | None = None  # a last line cut by a crash: reported, not tampering
    from_genesis: bool = False  # the log starts at the first entry ever written
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None  # head of the last complete entry
    head_checked: str | None = None
    head_found_at: Location | None = None
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line for `edge audit verify`."""
        if self.first_bad is not None:
            text = f"audit log BROKEN at {self.first_bad}"
        elif self.entries == 0:
            text = "audit log OK: empty"
        else:
            start = "from genesis" if self.from_genesis else "older files rotated away"
            text = (
                f"audit log OK: {self.entries} entries, seq {self.first_seq}..{self.last_seq}"
                f" ({start}), head {self.head}"
            )
            if self.head_found_at is not None:
                text += f"; head {self.head_checked} found at {self.head_found_at}"
        if self.torn_tail is not None:
            text += f"; {self.torn_tail.location}: {self.torn_tail.detail}"
        return text


@dataclass
class _Line:
    file: str
    number: int
    raw: bytes  # without the newline
    complete: bool  # ended by a newline
    last_of_log: bool = False


@dataclass
class _Entry:
    seq: int
    event: str
    prev: str


def _iter_lines(files: list[tuple[int, Path]]) -> Iterator[_Line]:
    for _number, path in files:
        with open(path, "rb") as f:
            number = 0
            while True:
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                number += 1
                complete = raw.endswith(b"\n")
                if not complete and len(raw) > MAX_LINE_BYTES:
                    yield _Line(path.name, number, raw[:64], False)
                    # An over-long line: report it and stop reading this file.
                    return
                yield _Line(path.name, number, raw[:-1] if complete else raw, complete)


def _parse_entry(raw: bytes) -> _Entry | str:
    """The fields verification needs, or why the line is not an entry."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("duplicate member")
        return obj

    try:
        obj = json.loads(raw, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        return "not a JSON object"
    if not isinstance(obj, dict):
        return "not a JSON object"
    seq, event, prev, ts = obj.get("seq"), obj.get("event"), obj.get("prev"), obj.get("ts")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "no valid seq"
    if not isinstance(event, str) or not isinstance(ts, str):
        return "no event or ts"
    if not isinstance(prev, str) or not _HEX64_RE.match(prev):
        return "no valid prev hash"
    return _Entry(seq, event, prev)


class _Verifier:
    """Walks the lines once, keeping the two previous hashes and peeking one ahead."""

    def __init__(self, files: list[tuple[int, Path]], head: str | None) -> None:
        self._lines = _iter_lines(files)
        self._peeked: _Line | None = None
        self._head = head
        self.head_found_at: Location | None = None
        self.entries = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.last_hash: str | None = None
        self.torn: BadEntry | None = None
        self.from_genesis = False

    def _next(self) -> _Line | None:
        if self._peeked is not None:
            line, self._peeked = self._peeked, None
            return line
        return next(self._lines, None)

    def _peek(self) -> _Line | None:
        if self._peeked is None:
            self._peeked = next(self._lines, None)
        return self._peeked

    def run(self) -> BadEntry | None:
        prev_hash: str | None = None
        prev2_hash: str | None = None
        prev_seq = 0
        prev_loc = Location("", 0, None)
        while (line := self._next()) is not None:
            if not line.complete:
                loc = Location(line.file, line.number, None)
                if line.file == LOG_NAME and self._peek() is None:
                    self.torn = BadEntry(
                        loc,
                        "torn_tail",
                        f"last line torn by a crash mid-write ({len(line.raw)} bytes,"
                        " never completed): not tampering; the writer drops it on its next start",
                    )
                    return None
                return BadEntry(loc, "malformed", "incomplete or over-long line")
            entry = _parse_entry(line.raw)
            if isinstance(entry, str):
                return BadEntry(Location(line.file, line.number, None), "malformed", entry)
            loc = Location(line.file, line.number, entry.seq)
            line_hash = entry_hash(line.raw)
            if prev_hash is None:
                self.first_seq = entry.seq
                if entry.seq == 1:
                    if entry.prev != GENESIS_PREV:
                        return BadEntry(
                            loc, "bad_genesis", "the first entry must chain from genesis"
                        )
                    self.from_genesis = True
            else:
                bad = self._diagnose(
                    entry, loc, line_hash, prev_hash, prev2_hash, prev_seq, prev_loc
                )
                if bad is not None:
                    return bad
            if line.number == 1 and entry.event != FILE_START_EVENT:
                return BadEntry(
                    loc,
                    "file_start_missing",
                    f"{line.file} does not begin with its {FILE_START_EVENT} entry:"
                    " entries were cut from the top of this file",
                )
            if self._head is not None and self.head_found_at is None:
                if line_hash.startswith(self._head):
                    self.head_found_at = loc
            self.entries += 1
            self.last_seq = entry.seq
            self.last_hash = line_hash
            prev2_hash, prev_hash, prev_seq, prev_loc = prev_hash, line_hash, entry.seq, loc
        return None

    def _diagnose(
        self,
        entry: _Entry,
        loc: Location,
        line_hash: str,
        prev_hash: str,
        prev2_hash: str | None,
        prev_seq: int,
        prev_loc: Location,
    ) -> BadEntry | None:
        """Names the first broken entry as precisely as the neighbours allow."""
        expected = prev_seq + 1
        chain_ok = entry.prev == prev_hash
        if chain_ok and entry.seq == expected:
            return None
        if chain_ok:
            return BadEntry(loc, "bad_seq", f"seq {entry.seq} where {expected} was due: changed")
        if prev2_hash is not None and entry.prev == prev2_hash:
            # This entry chains past the one before it: that one does not belong.
            return BadEntry(
                prev_loc,
                "out_of_place",
                "inserted or moved: the entry after it chains from the entry before it",
            )
        nxt_line = self._peek()
        nxt = _parse_entry(nxt_line.raw) if nxt_line is not None and nxt_line.complete else None
        if isinstance(nxt, _Entry):
            if nxt.prev == prev_hash and nxt.seq == expected:
                return BadEntry(
                    loc,
                    "out_of_place",
                    "inserted or moved: the entry after it chains from the entry before it",
                )
            if nxt.prev == line_hash and entry.seq == expected:
                return BadEntry(
                    prev_loc,
                    "altered",
                    "its bytes differ from those the next entry recorded (prev hash)",
                )
        if entry.seq > expected:
            return BadEntry(
                loc,
                "missing_entries",
                f"seq {entry.seq} where {expected} was due: entries removed or moved before it",
            )
        if entry.seq < expected:
            return BadEntry(
                loc, "out_of_order", f"seq {entry.seq} where {expected} was due: repeated or moved"
            )
        return BadEntry(loc, "altered", "does not chain from the entry before it")


def parse_head(head: str) -> str:
    """A head as given by a user: 8 to 64 hex characters, any case. Raises ValueError."""
    value = head.strip().lower()
    if not _HEAD_RE.match(value):
        raise ValueError(f"{head!r} is not an audit head (8 to 64 hex characters)")
    return value


def verify(log_dir: Path | str, head: str | None = None) -> VerifyResult:
    """Checks the whole chain, oldest file present first, and names the first broken entry.

    With ``head``, also checks that an entry with that hash prefix is in the log
    (raises ValueError for a malformed head). Safe to run while the daemon
    writes: a line being written shows as a torn tail, which is not a failure.
    """
    head_value = parse_head(head) if head is not None else None
    log_dir = Path(log_dir)
    files = _log_files(log_dir)
    names = tuple(path.name for _n, path in files)
    notes: list[str] = []
    numbers = [n for n, _p in files if n > 0]
    if numbers and sorted(numbers) != list(range(1, max(numbers) + 1)):
        notes.append(f"rotated files are not numbered 1..{max(numbers)} (a crash mid-rotation?)")
    verifier = _Verifier(files, head_value)
    try:
        bad = verifier.run()
    except OSError as exc:
        where = Location(Path(str(exc.filename or log_dir)).name, 0, None)
        bad = BadEntry(where, "unreadable", exc.strerror or str(exc))
    if bad is None and verifier.entries and not verifier.from_genesis:
        notes.append(
            f"the log starts at seq {verifier.first_seq} in {names[0]}: older files were rotated"
            " away, so the chain before it cannot be checked"
        )
    if bad is None and head_value is not None and verifier.head_found_at is None:
        detail = f"no entry has head {head_value}: the log was rewritten or its tail was cut"
        if not verifier.from_genesis:
            detail += " (or that entry was in a file rotated away)"
        last = (
            Location(names[-1], 0, verifier.last_seq) if names else Location(str(log_dir), 0, None)
        )
        bad = BadEntry(last, "head_not_found", detail)
    return VerifyResult(
        ok=bad is None,
        entries=verifier.entries,
        first_bad=bad,
        torn_tail=verifier.torn,
        from_genesis=verifier.from_genesis,
        first_seq=verifier.first_seq,
        last_seq=verifier.last_seq,
        head=verifier.last_hash[:HEAD_HEX_CHARS] if verifier.last_hash else None,
        head_checked=head_value,
        head_found_at=verifier.head_found_at,
        files=names,
        notes=tuple(notes),
    )
