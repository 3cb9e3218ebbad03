"""Single-use tokens that let a prompt's link or action carry the owner's decision.

A token is 256 random bits handed out once (in a prompt) and kept here only as
its SHA-256, so reading the database does not yield a working link. Each token
is bound to one request and one purpose (``review`` opens the page and lets it
decide; ``deny`` denies at once), expires with the request, and is spent by the
first decision that uses it. Looking a token up compares hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

PURPOSES = ("review", "deny")
_TOKEN_BYTES = 32
_MAX_TOKEN_CHARS = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 BLOB PRIMARY KEY,
    request_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    spent_ms INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_by_request ON tokens(request_id);
"""


class TokenError(Exception):
    """The token is unknown, expired, spent, or for another purpose (one reason for all)."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    request_id: str
    purpose: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


class TokenStore:
    """Tokens in SQLite (WAL), shared by the daemon's review page and its notifier.

    Thread-safety: one connection guarded by ``_lock``; any thread may call.
    """

    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def issue(self, request_id: str, purpose: str, expires_ms: int) -> str:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown token purpose {purpose!r}")
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO tokens (token_sha256, request_id, purpose, expires_ms) "
                "VALUES (?, ?, ?, ?)",
                (_digest(token), request_id, purpose, expires_ms),
            )
        return token

    def _find(self, token: str, now_ms: int) -> tuple[bytes, TokenGrant]:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise TokenError("invalid or expired link")
        wanted = _digest(token)
        row = self._db.execute(
            "SELECT token_sha256, request_id, purpose, expires_ms, spent_ms FROM tokens "
            "WHERE token_sha256 = ?",
            (wanted,),
        ).fetchone()
        # The lookup is by hash, so timing reveals nothing about the token; the
        # comparison below is constant-time all the same.
        if row is None or not hmac.compare_digest(row[0], wanted):
            raise TokenError("invalid or expired link")
        if row[4] is not None or now_ms >= row[3]:
            raise TokenError("invalid or expired link")
        return row[0], TokenGrant(request_id=row[1], purpose=row[2])

    def peek(self, token: str, now_ms: int) -> TokenGrant:
        """What a token grants, without spending it (opening a page spends nothing)."""
        with self._lock:
            return self._find(token, now_ms)[1]

    def spend(self, token: str, now_ms: int, purpose: str | None = None) -> TokenGrant:
        """Spends the token once; a second use, or use for another purpose, fails."""
        with self._lock, self._db:
            digest, grant = self._find(token, now_ms)
            if purpose is not None and grant.purpose != purpose:
                raise TokenError("invalid or expired link")
            updated = self._db.execute(
                "UPDATE tokens SET spent_ms = ? WHERE token_sha256 = ? AND spent_ms IS NULL",
                (now_ms, digest),
            ).rowcount
            if updated != 1:
                raise TokenError("invalid or expired link")
            return grant

    def revoke_request(self, request_id: str) -> None:
        """A decided or expired request's tokens stop working, and are forgotten."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM tokens WHERE request_id = ?", (request_id,))

    def prune(self, now_ms: int) -> int:
        with self._lock, self._db:
            return self._db.execute(
                "DELETE FROM tokens WHERE expires_ms <= ? OR spent_ms IS NOT NULL", (now_ms,)
            ).rowcount
