"""The device's key store: the only module (with edge/buffer/seal.py) that touches keys.

Layout of the keys directory (default ``data_dir/keys``, mode 0700)::

    device-ed25519.key                      Ed25519 signing key (PKCS#8 PEM), for manifests
    device-ed25519.pub                      its public half, base64url of the 32 raw bytes
    storage-20261128T140500123Z-1a2b3c4d.agekey   age X25519 storage identities, one per
                                            rotation period, named by creation time + id

Storage identity files are ordinary age identity files, so ``age -d -i FILE`` opens
a segment with them. Every private key file is mode 0600, written to a temporary
name, fsynced and linked into place (``link`` refuses to overwrite, so a key is
never replaced by accident), and the directory fsynced.

What this protects: evicted footage cannot be opened with the keys the device
still holds, because an identity is deleted once no segment needs it. What it does
not: whoever takes the whole SD card takes the current keys too (see design.md).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyrage import IdentityError, RecipientError, x25519

from edge.buffer.agefile import identity_key
from edge.clock import Clock
from edge.durable import fsync_dir, write_synced

log = logging.getLogger(__name__)

SIGNING_KEY_NAME = "device-ed25519.key"
SIGNING_PUBLIC_NAME = "device-ed25519.pub"
_STORAGE_PREFIX = "storage-"
_STORAGE_SUFFIX = ".agekey"
_TMP_PREFIX = ".tmp-"
_MAX_KEY_FILE_BYTES = 4096  # a key file is a few hundred bytes; anything bigger is not ours
_KEY_ID_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")


class KeyError_(Exception):
    """Base of the key store's errors (named with a trailing _ to keep clear of the builtin)."""


class KeyPermissionError(KeyError_):
    """A private key file (or the keys directory) is open to other users."""


class KeyFileError(KeyError_):
    """A key file is missing, unreadable or not a key."""


@dataclass(frozen=True, slots=True)
class StorageKey:
    key_id: str  # "20261128T140500123Z-1a2b3c4d": creation time (UTC, ms) + random id
    identity: x25519.Identity
    recipient: x25519.Recipient
    created_ms: int
    # The same identity parsed for edge.buffer.agefile, which opens every segment
    # with it: parsed once here rather than once a segment.
    private_key: X25519PrivateKey


def parse_recipients(recipients: list[str]) -> list[x25519.Recipient]:
    """Parse ``keys.owner_recipients``; raises ValueError naming the bad entry."""
    parsed = []
    for text in recipients:
        try:
            parsed.append(x25519.Recipient.from_str(text.strip()))
        except RecipientError as error:
            raise ValueError(
                f"keys.owner_recipients: {text!r} is not an age X25519 recipient "
                f"(expected 'age1…'): {error}"
            ) from None
    return parsed


def init_keys(keys_dir: Path, *, now_ms: int | None = None) -> list[Path]:
    """Create the device's keys that are missing; never overwrite one. Returns what it made."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    _ensure_private_dir(keys_dir)
    _remove_temp_leftovers(keys_dir)
    created: list[Path] = []
    signing_path = keys_dir / SIGNING_KEY_NAME
    if not signing_path.exists():
        signing_key = Ed25519PrivateKey.generate()
        pem = signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if _write_new_file(signing_path, pem, mode=0o600):
            created.append(signing_path)
    public_path = keys_dir / SIGNING_PUBLIC_NAME
    if not public_path.exists():
        public_raw = (
            load_signing_key(keys_dir)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        text = base64.urlsafe_b64encode(public_raw).rstrip(b"=") + b"\n"
        if _write_new_file(public_path, text, mode=0o644):
            created.append(public_path)
    if not _storage_files(keys_dir):
        created.append(_storage_path(keys_dir, _create_storage_identity(keys_dir, now_ms).key_id))
    return created


def check_permissions(keys_dir: Path) -> None:
    """Refuse keys other users could read or replace. Raises KeyPermissionError saying the fix."""
    try:
        dir_stat = keys_dir.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"keys directory {keys_dir} does not exist; run `edge keys init`"
        ) from None
    euid = os.geteuid()
    if dir_stat.st_uid != euid:
        raise KeyPermissionError(
            f"{keys_dir} is owned by uid {dir_stat.st_uid}, not by this user (uid {euid}); "
            f"fix with: chown -R {euid} {keys_dir}"
        )
    if dir_stat.st_mode & 0o022:
        mode = stat.S_IMODE(dir_stat.st_mode)
        raise KeyPermissionError(
            f"{keys_dir} is writable by group or others (mode {mode:04o}), so a key could be"
            f" replaced; fix with: chmod 700 {keys_dir}"
        )
    for path in sorted(keys_dir.iterdir()):
        if path.name.endswith(".pub") or path.name.startswith(_TMP_PREFIX):
            continue
        file_stat = path.lstat()
        if not stat.S_ISREG(file_stat.st_mode):
            raise KeyPermissionError(f"{path} is not a regular file; remove it")
        if file_stat.st_uid != euid:
            raise KeyPermissionError(
                f"{path} is owned by uid {file_stat.st_uid}, not by this user (uid {euid}); "
                f"fix with: chown {euid} {path}"
            )
        if file_stat.st_mode & 0o077:
            raise KeyPermissionError(
                f"{path} is readable by group or others (mode "
                f"{stat.S_IMODE(file_stat.st_mode):04o}); fix with: chmod 600 {path}"
            )


def load_signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    path = keys_dir / SIGNING_KEY_NAME
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as error:
        raise KeyFileError(f"{path} is not a PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


class KeyStore:
    """Storage identities: the current one (rotated on a schedule) and the older ones.

    Thread use: ``current()`` and ``delete_unused()`` are called by the ring's writer
    under the ring's lock; ``identity()`` by any reader thread. ``_lock`` guards the
    cache and the current-key state, so all three are safe from any thread.
    """

    def __init__(self, keys_dir: Path, *, rotate_every_s: float = 86400.0) -> None:
        if rotate_every_s <= 0:
            raise ValueError("rotate_every_s must be positive")
        self.keys_dir = keys_dir
        self.rotate_every_s = rotate_every_s
        self._lock = threading.Lock()
        self._cache: dict[str, StorageKey] = {}
        self._current: StorageKey | None = None
        # Age of the current key when adopted (from its wall-clock name) and the
        # monotonic time of adoption: rotation is timed on the monotonic clock, so
        # an NTP step does not rotate (or stall) it; only the starting age uses the
        # wall clock, and never goes below zero.
        self._adopted_age_s = 0.0
        self._adopted_at_s = 0.0

    def key_ids(self) -> list[str]:
        return sorted(_key_id_of(path) for path in _storage_files(self.keys_dir))

    def identity(self, key_id: str) -> StorageKey:
        """The storage identity with this id; KeyFileError if it is gone (deleted or never here)."""
        if not _KEY_ID_RE.match(key_id):
            raise KeyFileError(f"not a storage key id: {key_id!r}")
        with self._lock:
            cached = self._cache.get(key_id)
            if cached is not None:
                return cached
            key = _load_storage_identity(self.keys_dir, key_id)
            self._cache[key_id] = key
            return key

    def all_identities(self) -> list[StorageKey]:
        return [self.identity(key_id) for key_id in self.key_ids()]

    def current(self, clock: Clock) -> StorageKey:
        """The identity to seal new segments with, making a new one when the period is over."""
        with self._lock:
            if self._current is None:
                newest = max(self._key_ids_unlocked(), default=None)
                if newest is not None:
                    key = self._cache.get(newest) or _load_storage_identity(self.keys_dir, newest)
                    self._cache[newest] = key
                    self._adopt(key, clock)
            current = self._current
            if current is None or self._age_s(clock) >= self.rotate_every_s:
                try:
                    fresh = _create_storage_identity(self.keys_dir, clock.now_ms())
                except OSError as error:
                    if current is None:
                        raise
                    # A full card must not stop recording: keep sealing to the old key.
                    log.warning(
                        "could not rotate the storage key, keeping %s: %s", current.key_id, error
                    )
                    return current
                log.info("storage key rotated: now %s", fresh.key_id)
                self._cache[fresh.key_id] = fresh
                self._adopt(fresh, clock)
                current = fresh
            return current

    def current_key_id(self) -> str | None:
        with self._lock:
            return None if self._current is None else self._current.key_id

    def delete_unused(self, in_use: set[str]) -> list[str]:
        """Delete every storage identity that is neither current nor in ``in_use``."""
        deleted = []
        with self._lock:
            keep = set(in_use)
            if self._current is not None:
                keep.add(self._current.key_id)
            for key_id in self._key_ids_unlocked():
                if key_id in keep:
                    continue
                _overwrite_and_unlink(_storage_path(self.keys_dir, key_id))
                self._cache.pop(key_id, None)
                deleted.append(key_id)
            if deleted:
                fsync_dir(self.keys_dir)
        for key_id in deleted:
            log.info("storage key %s deleted: no segment needs it any more", key_id)
        return deleted

    def _key_ids_unlocked(self) -> list[str]:
        return sorted(_key_id_of(path) for path in _storage_files(self.keys_dir))

    def _adopt(self, key: StorageKey, clock: Clock) -> None:
        self._current = key
        self._adopted_age_s = max(0.0, (clock.now_ms() - key.created_ms) / 1000.0)
        self._adopted_at_s = clock.monotonic_s()

    def _age_s(self, clock: Clock) -> float:
        return self._adopted_age_s + (clock.monotonic_s() - self._adopted_at_s)


# -- files -------------------------------------------------------------------------


def _storage_files(keys_dir: Path) -> list[Path]:
    if not keys_dir.is_dir():
        return []
    return [
        path
        for path in keys_dir.iterdir()
        if path.name.startswith(_STORAGE_PREFIX)
        and path.name.endswith(_STORAGE_SUFFIX)
        and _KEY_ID_RE.match(_key_id_of(path))
    ]


def _key_id_of(path: Path) -> str:
    return path.name[len(_STORAGE_PREFIX) : -len(_STORAGE_SUFFIX)]


def _key_id_created_ms(key_id: str) -> int:
    stamp = key_id.split("-", 1)[0]  # 20261128T140500123Z
    when = datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return int(when.timestamp()) * 1000 + int(stamp[15:18])


def _new_key_id(now_ms: int) -> str:
    # Clamp: a Pi without an RTC may boot at a time strftime cannot name.
    now_ms = min(max(now_ms, 0), 253402300799999)
    when = datetime.fromtimestamp(now_ms // 1000, tz=UTC)
    return f"{when:%Y%m%dT%H%M%S}{now_ms % 1000:03d}Z-{secrets.token_hex(4)}"


def _storage_path(keys_dir: Path, key_id: str) -> Path:
    return keys_dir / f"{_STORAGE_PREFIX}{key_id}{_STORAGE_SUFFIX}"


def _create_storage_identity(keys_dir: Path, now_ms: int) -> StorageKey:
    _ensure_private_dir(keys_dir)
    identity = x25519.Identity.generate()
    recipient = identity.to_public()
    key_id = _new_key_id(now_ms)
    created = datetime.fromtimestamp(max(now_ms, 0) // 1000, tz=UTC).isoformat()
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n".encode()
    path = _storage_path(keys_dir, key_id)
    if not _write_new_file(path, text, mode=0o600):
        raise KeyFileError(f"{path} already exists")  # random id: practically never
    return StorageKey(
        key_id, identity, recipient, _key_id_created_ms(key_id), identity_key(identity)
    )


def _load_storage_identity(keys_dir: Path, key_id: str) -> StorageKey:
    path = _storage_path(keys_dir, key_id)
    lines = [
        line.strip()
        for line in _read_key_file(path).decode("ascii", "replace").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if len(lines) != 1:
        raise KeyFileError(f"{path} should hold exactly one AGE-SECRET-KEY line")
    try:
        identity = x25519.Identity.from_str(lines[0])
    except IdentityError:
        raise KeyFileError(f"{path} does not hold a valid age X25519 identity") from None
    return StorageKey(
        key_id,
        identity,
        identity.to_public(),
        _key_id_created_ms(key_id),
        identity_key(identity),
    )


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} is missing") from None
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        data = file.read(_MAX_KEY_FILE_BYTES + 1)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a key file")
    return data


def _ensure_private_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        fsync_dir(path.parent)


def _remove_temp_leftovers(keys_dir: Path) -> None:
    for path in keys_dir.iterdir():
        if path.name.startswith(_TMP_PREFIX):
            path.unlink(missing_ok=True)


def _write_new_file(path: Path, data: bytes, *, mode: int) -> bool:
    """Write atomically without ever replacing an existing file; False if it exists."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
    write_synced(tmp, data, mode=mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def _overwrite_and_unlink(path: Path) -> None:
    # Best effort: overwriting helps on plain filesystems; on flash with wear
    # levelling the old blocks may survive, which the README states.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, b"\0" * size)
        os.fsync(fd)
    except OSError as error:
        # A full disk may refuse even this; unlinking still removes the key.
        log.debug("could not overwrite %s before deleting it: %s", path, error)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
