"""The request store: every message taken in, its state, and the replay cache.

SQLite in WAL mode at ``data_dir/requests.db``, shared by the daemon and the
CLI (each process opens its own ``RequestStore``; ``busy_timeout`` makes one
wait for the other's write instead of failing). A decision given on the CLI is
a committed row the daemon reads back (``changes_since``).

States (assist-request-v1 and the consent issue)::

    rejected       a message that failed a check (reason = the spec's code)
    not_matching   accepted, but the camera is outside the area or holds no footage
    pending  ──▶  approved ──▶ delivered
       │  └──▶  denied            └──▶ failed
       └────▶  expired  (exp, or the owner's decision deadline, passed)

``rejected``, ``not_matching``, ``denied``, ``expired``, ``delivered`` and
``failed`` are final: no row ever leaves them, so a denied or expired request
can never be made to send anything. ``transition`` is a compare-and-set on
the state inside one write transaction: of two concurrent decisions exactly
one wins, in this process or another. Every change is committed with
``synchronous=FULL`` (the WAL is fsynced) before the call returns, so the
caller acts only on a state already on disk. Rejected rows, which a flood
could multiply, are committed with ``synchronous=NORMAL`` (a power cut may
lose the last few; they send nothing) and kept to ``max_rejected`` rows, the
oldest dropped.

Local ids are SQLite ``AUTOINCREMENT`` integers: short, typeable
(``edge approve 12``), and never reused, even after old rejected rows are
dropped, so an id the owner once saw never names another request.

The replay cache is keyed on (iss, jti), as the spec says, so one agency cannot
pre-empt another's request id. ``accept`` checks and reserves the pair in the
same transaction as it inserts the request; a rejected message reserves
nothing. Entries can be pruned once the request's ``exp`` is past by a margin
(``prune_replay``): the verifier rejects a request whose ``exp`` ≤ now as
``expired`` before the duplicate check is ever reached, so a pruned pair can
no longer be taken in again. The margin (default a day, well above the 300 s
skew) covers the camera's own clock stepping back (a Pi without an RTC, NTP
correcting it): while now < exp again, the entry must still be there.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Final, Literal

from edge.clock import Clock

DB_NAME = "requests.db"
SCHEMA_VERSION = 1

STATES: Final = (
    "rejected",
    "not_matching",
    "pending",
    "approved",
    "denied",
    "expired",
    "delivered",
    "failed",
)
# `edge requests` without --all shows these.
LISTED_STATES: Final = ("pending", "approved", "denied", "expired", "delivered", "failed")
FINAL_STATES: Final = frozenset(
    {"rejected", "not_matching", "denied", "expired", "delivered", "failed"}
)
# to_state for each from_state. A state may also "move" to itself to update
# fields under the same guard (e.g. record the clip's hash while pending).
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "pending": frozenset({"pending", "approved", "denied", "expired"}),
    "approved": frozenset({"approved", "delivered", "failed"}),
}
AcceptedState = Literal["pending", "not_matching"]

DEFAULT_MAX_REJECTED = 10_000
DEFAULT_REPLAY_MARGIN_MS = 86_400_000  # see the module docstring
MAX_TEXT_CHARS = 256  # iss, topic, reason, decided_by, ... (longer is cut)
MAX_DETAIL_CHARS = 200
MAX_REQUEST_JSON_BYTES = 512 * 1024  # a payload is at most 64 KiB; this is ample

# Columns transition() may set, with their types. state/ids/times are the store's.
_UPDATABLE: Final[Mapping[str, type]] = {
    "reason": str,
    "detail": str,
    "decided_ms": int,
    "decided_by": str,
    "decision_channel": str,
    "approved_start_ms": int,
    "approved_end_ms": int,
    "clip_sha256": str,
    "delivery_id": str,
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    reason TEXT,
    detail TEXT,
    jti TEXT,
    iss TEXT,
    agency_name TEXT,
    topic TEXT,
    received_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    rev INTEGER NOT NULL,
    window_start_ms INTEGER,
    window_end_ms INTEGER,
    exp_ms INTEGER,
    decide_by_ms INTEGER,
    decided_ms INTEGER,
    decided_by TEXT,
    decision_channel TEXT,
    approved_start_ms INTEGER,
    approved_end_ms INTEGER,
    clip_sha256 TEXT,
    delivery_id TEXT,
    request_json TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, id);
CREATE INDEX IF NOT EXISTS requests_by_rev ON requests (rev);
CREATE TABLE IF NOT EXISTS replay (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    exp_ms INTEGER NOT NULL,
    PRIMARY KEY (iss, jti)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replay_by_exp ON replay (exp_ms);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) VALUES ('rev', 0), ('rejected_rows', 0);
CREATE TABLE IF NOT EXISTS followed (
    request_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (request_id, state)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "id, state, reason, detail, jti, iss, agency_name, topic, received_ms, updated_ms, rev,"
    " window_start_ms, window_end_ms, exp_ms, decide_by_ms, decided_ms, decided_by,"
    " decision_channel, approved_start_ms, approved_end_ms, clip_sha256, delivery_id,"
    " request_json"
)


class StoreError(Exception):
    """The store cannot be used: locked too long, unreadable, or a newer schema."""


@dataclass(frozen=True)
class AcceptResult:
    id: int  # the local id; for a duplicate, that of the request first taken in
    duplicate: bool


@dataclass(frozen=True)
class Acceptance:
    """A request that passed every check, as the intake hands it over (see ``accept``)."""

    iss: str
    jti: str
    state: AcceptedState
    request: Mapping[str, Any]
    exp_ms: int
    window_start_ms: int
    window_end_ms: int
    agency_name: str | None = None
    topic: str | None = None
    received_ms: int | None = None
    decide_by_ms: int | None = None
    reason: str | None = None


def _request_json(item: Acceptance) -> str:
    """Checks an acceptance before any write, and gives its request as stored JSON."""
    if item.state not in ("pending", "not_matching"):
        raise ValueError(f"a request is taken in as pending or not_matching, not {item.state!r}")
    if (
        not isinstance(item.iss, str)
        or not isinstance(item.jti, str)
        or not item.iss
        or not item.jti
    ):
        raise ValueError("iss and jti must be non-empty strings")
    if item.window_start_ms >= item.window_end_ms:
        raise ValueError("window start must be before its end")
    if not item.request:  # a near miss keeps no request: skip the encoder for "{}"
        return "{}"
    request_json = json.dumps(item.request, separators=(",", ":"), allow_nan=False)
    if len(request_json) > MAX_REQUEST_JSON_BYTES:
        raise ValueError("request too large to store")
    return request_json


@dataclass(frozen=True)
class Rejection:
    """A message that failed a check, as the intake hands it over."""

    reason: str  # the spec's reason code
    received_ms: int
    topic: str | None = None
    iss: str | None = None  # as claimed, when it could be read
    jti: str | None = None
    detail: str | None = None  # the verifier's short explanation


@dataclass(frozen=True)
class RequestRecord:
    """One row, typed. Times are ms since the Unix epoch (UTC)."""

    id: int
    state: str
    reason: str | None
    detail: str | None
    jti: str | None
    iss: str | None
    agency_name: str | None
    topic: str | None
    received_ms: int
    updated_ms: int
    rev: int
    window_start_ms: int | None
    window_end_ms: int | None
    exp_ms: int | None
    decide_by_ms: int | None  # min(exp, the owner's decision deadline)
    decided_ms: int | None
    decided_by: str | None
    decision_channel: str | None
    approved_start_ms: int | None
    approved_end_ms: int | None
    clip_sha256: str | None
    delivery_id: str | None
    request: dict[str, Any] | None  # the verified request as stored (opaque to the store)

    def to_json(self) -> dict[str, Any]:
        """The shape `edge requests --json` prints (times as RFC 3339 UTC)."""

        def window(start_ms: int | None, end_ms: int | None) -> dict[str, str] | None:
            if start_ms is None or end_ms is None:
                return None
            return {"start": format_rfc3339(start_ms), "end": format_rfc3339(end_ms)}

        return {
            "id": self.id,
            "jti": self.jti,
            "iss": self.iss,
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "agency": self.agency_name,
            "topic": self.topic,
            "received": format_rfc3339(self.received_ms),
            "updated": format_rfc3339(self.updated_ms),
            "window": window(self.window_start_ms, self.window_end_ms),
            "exp": _opt_time(self.exp_ms),
            "decide_by": _opt_time(self.decide_by_ms),
            "decided": _opt_time(self.decided_ms),
            "decided_by": self.decided_by,
            "decision_channel": self.decision_channel,
            "approved_window": window(self.approved_start_ms, self.approved_end_ms),
            "clip_sha256": self.clip_sha256,
            "delivery_id": self.delivery_id,
        }


_RECORD_FIELDS = tuple(f.name for f in dataclass_fields(RequestRecord) if f.name != "request")
assert _RECORD_FIELDS == tuple(c.strip() for c in _COLUMNS.split(","))[:-1]


def format_rfc3339(timestamp_ms: int) -> str:
    """``2026-11-28T14:05:00Z``, with ``.123`` only when the milliseconds are not 0."""
    seconds, millis = divmod(timestamp_ms, 1000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def _opt_time(timestamp_ms: int | None) -> str | None:
    return None if timestamp_ms is None else format_rfc3339(timestamp_ms)


def _cut(value: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    """Bounds a string from an untrusted message; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _row_to_record(row: Sequence[Any]) -> RequestRecord:
    request_json = row[22]
    request: dict[str, Any] | None = None
    if request_json is not None:
        try:
            parsed = json.loads(request_json)
        except ValueError as exc:
            raise StoreError(f"request {row[0]}: stored request is not JSON") from exc
        request = parsed if isinstance(parsed, dict) else {"value": parsed}
    values = dict(zip(_RECORD_FIELDS, row[:-1], strict=True))
    return RequestRecord(**values, request=request)


class RequestStore:
    """The store. One per process; any thread may call it.

    Threads: one SQLite connection guarded by ``_lock``; every public method
    takes it, so calls from the intake worker, the review page and the sweeper
    are serialised here, and against other processes by SQLite's own lock.
    """

    def __init__(
        self,
        data_dir: Path | str,
        clock: Clock,
        *,
        max_rejected: int = DEFAULT_MAX_REJECTED,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if max_rejected < 1:
            raise ValueError("max_rejected must be at least 1")
        self._clock = clock
        self._max_rejected = max_rejected
        self.path = Path(data_dir) / DB_NAME
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Owner-only from the start; SQLite gives the -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            self._db = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT below
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} was written by a newer edge (schema {version});"
                        f" this one reads schema {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                # Recount once, so the cap stays exact even if rows were removed by hand.
                rejected = db.execute(
                    "SELECT count(*) FROM requests WHERE state = 'rejected'"
                ).fetchone()[0]
                db.execute(
                    "UPDATE counters SET value = ? WHERE name = 'rejected_rows'", (rejected,)
                )
                self._trim_rejected(db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RequestStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- transactions

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its first statement.

        BEGIN IMMEDIATE (not DEFERRED) so two writers never both read and then
        fail to upgrade: the second waits (busy_timeout) and then sees the
        first one's commit.
        """
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StoreError(f"request store unavailable: {exc}") from exc
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"request store commit failed: {exc}") from exc
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"request store unavailable: {exc}") from exc

    @staticmethod
    def _next_rev(db: sqlite3.Connection) -> int:
        row = db.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'rev' RETURNING value"
        ).fetchone()
        return int(row[0])

    def _trim_rejected(self, db: sqlite3.Connection) -> None:
        count = db.execute("SELECT value FROM counters WHERE name = 'rejected_rows'").fetchone()[0]
        excess = count - self._max_rejected
        if excess > 0:
            db.execute(
                "DELETE FROM requests WHERE id IN (SELECT id FROM requests"
                " WHERE state = 'rejected' ORDER BY id LIMIT ?)",
                (excess,),
            )
            db.execute(
                "UPDATE counters SET value = ? WHERE name = 'rejected_rows'", (self._max_rejected,)
            )

    # ----------------------------------------------------------------- taking messages in

    def reject(self, rejection: Rejection) -> int:
        """Keeps one rejected message; returns its local id."""
        return self.reject_many([rejection])[0]

    def reject_many(self, rejections: Iterable[Rejection]) -> builtins.list[int]:
        """Keeps rejected messages in one transaction (a flood is taken in batches).

        Reserves nothing in the replay cache. Past ``max_rejected`` rows the
        oldest rejected rows are dropped.
        """
        rows = [
            (
                _cut(r.reason, 64) or "unknown",
                _cut(r.detail, MAX_DETAIL_CHARS),
                _cut(r.jti),
                _cut(r.iss),
                _cut(r.topic),
                int(r.received_ms),
                int(r.received_ms),
            )
            for r in rejections
        ]
        if not rows:
            return []
        ids: list[int] = []
        with self._write(durable=False) as db:
            rev = self._next_rev(db)
            for row in rows:
                cursor = db.execute(
                    "INSERT INTO requests (state, reason, detail, jti, iss, topic, received_ms,"
                    " updated_ms, rev) VALUES ('rejected', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, rev),
                )
                ids.append(int(cursor.lastrowid or 0))
            db.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'rejected_rows'", (len(rows),)
            )
            self._trim_rejected(db)
        return ids

    def accept(
        self,
        *,
        iss: str,
        jti: str,
        state: AcceptedState,
        request: Mapping[str, Any],
        exp_ms: int,
        window_start_ms: int,
        window_end_ms: int,
        agency_name: str | None = None,
        topic: str | None = None,
        received_ms: int | None = None,
        decide_by_ms: int | None = None,
        reason: str | None = None,
        durable: bool = True,
    ) -> AcceptResult:
        """Takes in a request that passed every check, unless (iss, jti) was taken in before.

        Atomic: the duplicate check, the replay entry and the row are one
        transaction, committed (fsynced) before this returns. ``state`` is
        ``pending`` (matching) or ``not_matching`` (``reason`` may say why).
        ``decide_by_ms`` is the owner's decision deadline; the store keeps
        min(it, exp). ``request`` is the verified request as a JSON-able dict.
        ``durable=False`` (for ``not_matching``, which a flood multiplies and which
        sends nothing) commits without fsyncing the WAL, as rejections are.
        """
        item = Acceptance(
            iss=iss,
            jti=jti,
            state=state,
            request=request,
            exp_ms=exp_ms,
            window_start_ms=window_start_ms,
            window_end_ms=window_end_ms,
            agency_name=agency_name,
            topic=topic,
            received_ms=received_ms,
            decide_by_ms=decide_by_ms,
            reason=reason,
        )
        return self.accept_many([item], durable=durable)[0]

    def accept_many(
        self, items: Sequence[Acceptance], *, durable: bool = True
    ) -> builtins.list[AcceptResult]:
        """``accept`` for several requests in one transaction (one fsync at most).

        The same (iss, jti) twice in ``items`` is taken in once; the second is a
        duplicate of the first, as it would be in two calls. The rows taken in
        share one rev, as the transaction makes them visible at once (and a
        flood of near misses then costs one counter update per batch).
        """
        prepared = [(item, _request_json(item)) for item in items]
        now_ms = self._clock.now_ms()
        results = []
        with self._write(durable) as db:
            rev: int | None = None  # taken at the first row written: duplicates change nothing
            for item, request_json in prepared:
                existing = db.execute(
                    "SELECT request_id FROM replay WHERE iss = ? AND jti = ?", (item.iss, item.jti)
                ).fetchone()
                if existing is not None:
                    results.append(AcceptResult(int(existing[0]), duplicate=True))
                    continue
                if rev is None:
                    rev = self._next_rev(db)
                results.append(self._insert_accepted(db, item, request_json, now_ms, rev))
        return results

    def _insert_accepted(
        self, db: sqlite3.Connection, item: Acceptance, request_json: str, now_ms: int, rev: int
    ) -> AcceptResult:
        received = now_ms if item.received_ms is None else int(item.received_ms)
        decide_by = (
            item.exp_ms
            if item.decide_by_ms is None
            else min(int(item.decide_by_ms), int(item.exp_ms))
        )
        cursor = db.execute(
            "INSERT INTO requests (state, reason, jti, iss, agency_name, topic, received_ms,"
            " updated_ms, rev, window_start_ms, window_end_ms, exp_ms, decide_by_ms,"
            " request_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item.state,
                _cut(item.reason, 64),
                item.jti,
                item.iss,
                _cut(item.agency_name),
                _cut(item.topic),
                received,
                now_ms,
                rev,
                int(item.window_start_ms),
                int(item.window_end_ms),
                int(item.exp_ms),
                decide_by,
                request_json,
            ),
        )
        request_id = int(cursor.lastrowid or 0)
        db.execute(
            "INSERT INTO replay (iss, jti, request_id, exp_ms) VALUES (?, ?, ?, ?)",
            (item.iss, item.jti, request_id, int(item.exp_ms)),
        )
        return AcceptResult(request_id, duplicate=False)

    def seen(self, iss: str, jti: str) -> bool:
        """Whether (iss, jti) was already accepted (a cheap pre-check; ``accept`` decides)."""
        with self._read() as db:
            row = db.execute("SELECT 1 FROM replay WHERE iss = ? AND jti = ?", (iss, jti))
            return row.fetchone() is not None

    # ----------------------------------------------------------------- state changes

    def transition(
        self,
        request_id: int,
        from_states: Iterable[str],
        to_state: str,
        **fields: object,
    ) -> bool:
        """Moves a request to ``to_state`` if it is in one of ``from_states``; True if it did.

        Compare-and-set inside one write transaction, committed (fsynced)
        before returning: of concurrent calls on one request, in any process,
        exactly one wins, and the winner's change is on disk when it acts.
        ``fields`` set columns of ``_UPDATABLE`` at the same time. An approved
        window (``approved_start_ms``/``approved_end_ms``) must lie within the
        requested one: the owner may narrow, never widen (ValueError).
        Raises ValueError for a move the state machine does not have.
        """
        sources = frozenset(from_states)
        if not sources:
            raise ValueError("from_states is empty")
        for source in sources:
            if to_state not in TRANSITIONS.get(source, frozenset()):
                raise ValueError(f"no transition from {source!r} to {to_state!r}")
        columns: dict[str, object] = {}
        for name, value in fields.items():
            kind = _UPDATABLE.get(name)
            if kind is None:
                raise ValueError(f"transition cannot set {name!r}")
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise TypeError(f"{name} must be {kind.__name__} or None")
            columns[name] = _cut(value, MAX_DETAIL_CHARS) if isinstance(value, str) else value
        now_ms = self._clock.now_ms()
        placeholders = ", ".join("?" for _ in sources)
        with self._write() as db:
            row = db.execute(
                f"SELECT state, window_start_ms, window_end_ms, approved_start_ms,"
                f" approved_end_ms FROM requests WHERE id = ? AND state IN ({placeholders})",
                (request_id, *sorted(sources)),
            ).fetchone()
            if row is None:
                return False
            _state, window_start, window_end, old_start, old_end = row
            start = columns.get("approved_start_ms", old_start)
            end = columns.get("approved_end_ms", old_end)
            if start is not None or end is not None:
                if not (
                    isinstance(start, int)
                    and isinstance(end, int)
                    and window_start is not None
                    and window_end is not None
                    and window_start <= start < end <= window_end
                ):
                    raise ValueError("the approved window must lie within the requested one")
            assignments = "".join(f", {name} = ?" for name in columns)
            db.execute(
                f"UPDATE requests SET state = ?, updated_ms = ?, rev = ?{assignments} WHERE id = ?",
                (to_state, now_ms, self._next_rev(db), *columns.values(), request_id),
            )
        return True

    def sweep_expired(self, now_ms: int) -> builtins.list[int]:
        """Pending requests past ``exp`` or their decision deadline become ``expired``.

        Returns the ids it moved (each moved exactly once, whichever process sweeps).
        ``reason`` says which: ``exp`` (exp ≤ now, strict as the spec says) or
        ``decision_timeout``.
        """
        with self._write() as db:
            rows = db.execute(
                "SELECT id, exp_ms FROM requests WHERE state = 'pending'"
                " AND (exp_ms <= ? OR decide_by_ms <= ?) ORDER BY id",
                (now_ms, now_ms),
            ).fetchall()
            if not rows:
                return []
            rev = self._next_rev(db)
            for request_id, exp_ms in rows:
                db.execute(
                    "UPDATE requests SET state = 'expired', reason = ?, updated_ms = ?, rev = ?"
                    " WHERE id = ? AND state = 'pending'",
                    ("exp" if exp_ms <= now_ms else "decision_timeout", now_ms, rev, request_id),
                )
        return [int(r[0]) for r in rows]

    def prune_replay(self, now_ms: int, margin_ms: int = DEFAULT_REPLAY_MARGIN_MS) -> int:
        """Forgets (iss, jti) pairs whose request expired more than ``margin_ms`` ago.

        Safe because the verifier rejects such a request as ``expired`` before
        any duplicate check (see the module docstring). Returns how many went.
        """
        if margin_ms < 0:
            raise ValueError("margin_ms cannot be negative")
        with self._write() as db:
            cursor = db.execute("DELETE FROM replay WHERE exp_ms < ?", (now_ms - margin_ms,))
            return int(cursor.rowcount)

    # ----------------------------------------------------------------- reading

    def get(self, request_id: int) -> RequestRecord | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)
            ).fetchone()
        return None if row is None else _row_to_record(row)

    def in_states(self, states: Iterable[str]) -> builtins.list[RequestRecord]:
        """Requests in these states, oldest first (e.g. pending and approved on start)."""
        wanted = sorted(set(states))
        unknown = set(wanted) - set(STATES)
        if unknown:
            raise ValueError(f"unknown states {sorted(unknown)}")
        if not wanted:
            return []
        placeholders = ", ".join("?" for _ in wanted)
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE state IN ({placeholders}) ORDER BY id",
                wanted,
            ).fetchall()
        return [_row_to_record(row) for row in rows]

    def list(self, all: bool = False) -> builtins.list[dict[str, Any]]:
        """What `edge requests [--all] --json` prints: one dict per request, oldest first.

        Without ``all``: pending, approved, denied, expired, delivered, failed.
        With it, rejected (with the reason code) and not_matching as well.
        """
        states = STATES if all else LISTED_STATES
        return [record.to_json() for record in self.in_states(states)]

    def changes_since(self, rev: int) -> tuple[int, builtins.list[RequestRecord]]:
        """Rows changed after ``rev`` (by any process), and the rev to ask from next.

        The daemon polls this (cheap: an index range) to see decisions made
        on the CLI. Start from ``current_rev()``.
        """
        with self._read() as db:
            current = db.execute("SELECT value FROM counters WHERE name = 'rev'").fetchone()[0]
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE rev > ? AND state != 'rejected'"
                " ORDER BY rev, id",
                (rev,),
            ).fetchall()
        return int(current), [_row_to_record(row) for row in rows]

    def current_rev(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT value FROM counters WHERE name = 'rev'").fetchone()[0])

    def mark_followed(self, request_id: int, state: str) -> bool:
        """Records that the daemon acted on a request reaching ``state``; True the first time.

        A row's state is read, not its history, so this is what makes "act once
        per state" hold across polls, restarts and field-only updates.
        """
        with self._write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO followed (request_id, state) VALUES (?, ?)",
                (request_id, state),
            )
            return cursor.rowcount == 1

    def was_followed(self, request_id: int, state: str) -> bool:
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM followed WHERE request_id = ? AND state = ?", (request_id, state)
            ).fetchone()
        return row is not None

    def get_counter(self, name: str) -> int:
        """A named number kept with the requests (e.g. how far the daemon has handled changes)."""
        with self._read() as db:
            row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_counter(self, name: str, value: int) -> None:
        if name in ("rev", "rejected_rows"):
            raise ValueError(f"counter {name!r} is the store's own")
        with self._write() as db:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, int(value)),
            )

    def counts(self) -> dict[str, int]:
        """Rows per state (every state present, 0 included), for `edge status`."""
        with self._read() as db:
            rows = db.execute("SELECT state, count(*) FROM requests GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(state): int(n) for state, n in rows})
        return counts
