"""The ring's SQLite index: one row per sealed segment file, queried by time.

WAL mode so the CLI can read while the daemon writes; ``synchronous=FULL`` so a
committed row survives a power cut (one extra fsync per 2 s segment);
``secure_delete`` so an evicted row's times and hashes are zeroed in the file.

Not thread-safe by itself: the ring serialises every call under its own lock.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.buffer.segment import SegmentMeta

# 2: digested_bytes, how much of the sealed file sealed_sha256 covers (its start:
# edge/buffer/seal.py, sealed_digest); NULL in rows schema 1 wrote, whose digest
# covers the whole file. A schema 1 index is brought up to 2 when the ring opens it.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: eviction goes by this
    file_name TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    first_frame_ms INTEGER NOT NULL,
    last_frame_ms INTEGER NOT NULL,
    frame_count INTEGER NOT NULL,
    clock_synced INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    video_bytes INTEGER NOT NULL,
    sealed_bytes INTEGER NOT NULL,
    sealed_sha256 BLOB NOT NULL,
    key_id TEXT NOT NULL,
    digested_bytes INTEGER
);
-- Window queries are range scans of it (then read only the rows they return);
-- the span scan (first and last frame only) is covered: it never reads the table.
CREATE INDEX IF NOT EXISTS segments_by_time ON segments (first_frame_ms, last_frame_ms);
CREATE INDEX IF NOT EXISTS segments_by_key ON segments (key_id);
CREATE TABLE IF NOT EXISTS pins (
    owner_id TEXT PRIMARY KEY,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL
);
"""

_RECORD_COLUMNS = (
    "id, file_name, camera, run_id, sequence, first_frame_ms, last_frame_ms, frame_count,"
    " clock_synced, width, height, video_bytes, sealed_bytes, sealed_sha256, key_id,"
    " digested_bytes"
)
# A schema 1 index read by a process that does not migrate it (edge status, export).
_RECORD_COLUMNS_1 = _RECORD_COLUMNS.replace("digested_bytes", "NULL")


class IndexError_(Exception):
    """The index file is unusable (not ours, or a newer schema)."""


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    row_id: int
    file_name: str
    meta: SegmentMeta
    video_bytes: int
    sealed_bytes: int
    sealed_sha256: bytes
    key_id: str
    digested_bytes: int | None  # of the sealed file, from its start; None: all of it


@dataclass(frozen=True, slots=True)
class Pin:
    owner_id: str
    start_ms: int
    end_ms: int

    def covers(self, record: SegmentRecord) -> bool:
        return (
            record.meta.first_frame_ms <= self.end_ms and record.meta.last_frame_ms >= self.start_ms
        )


class SegmentIndex:
    def __init__(self, connection: sqlite3.Connection, *, schema: int = SCHEMA_VERSION) -> None:
        self._db = connection
        self._columns = _RECORD_COLUMNS_1 if schema == 1 else _RECORD_COLUMNS
        # Longest segment (last - first frame) ever indexed: bounds window queries to
        # an index range. Recomputed on open, raised on insert, never lowered.
        row = self._db.execute(
            "SELECT COALESCE(MAX(last_frame_ms - first_frame_ms), 0) FROM segments"
        ).fetchone()
        self._max_span_ms = int(row[0])

    @classmethod
    def open(cls, path: Path, *, create: bool) -> SegmentIndex:
        if create and not path.exists():
            # Create it 0600 ourselves: sqlite would honour the umask (often 0644),
            # and the -wal/-shm files copy the main file's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        try:
            db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA secure_delete = ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise IndexError_(f"{path} has schema {version}, newer than this edge knows")
            if create:
                if version == 1:
                    with _Transaction(db):
                        db.execute("ALTER TABLE segments ADD COLUMN digested_bytes INTEGER")
                        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = SCHEMA_VERSION
        except sqlite3.DatabaseError as error:
            raise IndexError_(f"{path} is not a usable index: {error}") from None
        return cls(db, schema=version)

    def close(self) -> None:
        self._db.close()

    # -- writes --------------------------------------------------------------

    def insert(
        self,
        *,
        file_name: str,
        meta: SegmentMeta,
        video_bytes: int,
        sealed_bytes: int,
        sealed_sha256: bytes,
        digested_bytes: int,
        key_id: str,
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO segments (file_name, camera, run_id, sequence, first_frame_ms,"
            " last_frame_ms, frame_count, clock_synced, width, height, video_bytes,"
            " sealed_bytes, sealed_sha256, digested_bytes, key_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                file_name,
                meta.camera,
                meta.run_id,
                meta.sequence,
                meta.first_frame_ms,
                meta.last_frame_ms,
                meta.frame_count,
                int(meta.clock_synced),
                meta.width,
                meta.height,
                video_bytes,
                sealed_bytes,
                sealed_sha256,
                digested_bytes,
                key_id,
            ),
        )
        self._max_span_ms = max(self._max_span_ms, meta.last_frame_ms - meta.first_frame_ms)
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def delete(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM segments WHERE id = ?", [(i,) for i in row_ids])

    def set_pin(self, pin: Pin) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO pins (owner_id, start_ms, end_ms) VALUES (?, ?, ?)",
            (pin.owner_id, pin.start_ms, pin.end_ms),
        )

    def remove_pin(self, owner_id: str) -> bool:
        return self._db.execute("DELETE FROM pins WHERE owner_id = ?", (owner_id,)).rowcount > 0

    # -- reads ---------------------------------------------------------------

    def overlapping(self, start_ms: int, end_ms: int) -> list[SegmentRecord]:
        """Segments with any frame in [start_ms, end_ms], in the order they were recorded.

        An index range scan on time only. Recording order, not label order: after
        the wall clock is stepped back, later footage carries earlier labels, and
        a clip must still play it after what came before.
        """
        rows = self._db.execute(
            f"SELECT {self._columns} FROM segments"
            " WHERE first_frame_ms BETWEEN ? AND ? AND last_frame_ms >= ?"
            " ORDER BY id",
            (start_ms - self._max_span_ms, end_ms, start_ms),
        )
        return [_record(row) for row in rows]

    def oldest(self, after_row_id: int, limit: int) -> list[SegmentRecord]:
        """In arrival order (eviction order), starting after ``after_row_id``."""
        rows = self._db.execute(
            f"SELECT {self._columns} FROM segments WHERE id > ? ORDER BY id LIMIT ?",
            (after_row_id, limit),
        )
        return [_record(row) for row in rows]

    def all_records(self) -> Iterator[SegmentRecord]:
        for row in self._db.execute(f"SELECT {self._columns} FROM segments ORDER BY id"):
            yield _record(row)

    def totals(self) -> tuple[int, int]:
        """(segments, sealed bytes)."""
        count, total = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(sealed_bytes), 0) FROM segments"
        ).fetchone()
        return int(count), int(total)

    def time_ranges(self) -> Iterator[tuple[int, int]]:
        """(first_frame_ms, last_frame_ms) of every segment, by time (covering index)."""
        rows = self._db.execute(
            "SELECT first_frame_ms, last_frame_ms FROM segments ORDER BY first_frame_ms"
        )
        for first_ms, last_ms in rows:
            yield int(first_ms), int(last_ms)

    def file_names(self) -> dict[str, int]:
        return {
            name: row_id for row_id, name in self._db.execute("SELECT id, file_name FROM segments")
        }

    def key_ids_in_use(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT DISTINCT key_id FROM segments")}

    def pins(self) -> list[Pin]:
        rows = self._db.execute("SELECT owner_id, start_ms, end_ms FROM pins ORDER BY owner_id")
        return [Pin(owner_id, int(start_ms), int(end_ms)) for owner_id, start_ms, end_ms in rows]

    def query_plan(self, start_ms: int, end_ms: int) -> str:
        """How SQLite runs ``overlapping`` (tests check it is an index range scan)."""
        rows = self._db.execute(
            f"EXPLAIN QUERY PLAN SELECT {self._columns} FROM segments"
            " WHERE first_frame_ms BETWEEN ? AND ? AND last_frame_ms >= ?"
            " ORDER BY first_frame_ms, id",
            (start_ms - self._max_span_ms, end_ms, start_ms),
        )
        return " | ".join(str(row[-1]) for row in rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def _record(row: tuple[object, ...]) -> SegmentRecord:
    (
        row_id,
        file_name,
        camera,
        run_id,
        sequence,
        first_frame_ms,
        last_frame_ms,
        frame_count,
        clock_synced,
        width,
        height,
        video_bytes,
        sealed_bytes,
        sealed_sha256,
        key_id,
        digested_bytes,
    ) = row
    meta = SegmentMeta(
        camera=str(camera),
        run_id=str(run_id),
        sequence=_int(sequence),
        first_frame_ms=_int(first_frame_ms),
        last_frame_ms=_int(last_frame_ms),
        frame_count=_int(frame_count),
        clock_synced=bool(clock_synced),
        width=_int(width),
        height=_int(height),
    )
    return SegmentRecord(
        row_id=_int(row_id),
        file_name=str(file_name),
        meta=meta,
        video_bytes=_int(video_bytes),
        sealed_bytes=_int(sealed_bytes),
        sealed_sha256=bytes(sealed_sha256) if isinstance(sealed_sha256, bytes) else b"",
        key_id=str(key_id),
        digested_bytes=None if digested_bytes is None else _int(digested_bytes),
    )


def _int(value: object) -> int:
    # Rows are read back from a file anyone with the card could edit: a text or
    # NULL where a number belongs must not crash a reader.
    if isinstance(value, int):
        return value
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1
