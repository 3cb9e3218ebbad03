"""What an approved request delivers: the clip file and its signed manifest.

Spec: ../shared/spec/assist-request-v1.md, "What an approved request delivers".
Each delivery has a fresh random id ``D``; the clip is ``D.mp4``, or
``D.mp4.age`` when the request names an age ``recipient``, and the manifest is
``D.manifest.jws``: a compact JWS (RFC 7515) signed with the camera's Ed25519
key (RFC 8037, ``"alg": "EdDSA"``), whose ``file`` claim binds the exact bytes
uploaded (size and SHA-256).

Nothing here writes plaintext anywhere: ``encrypt_clip`` streams plaintext in
and ciphertext out; ``digest_clip`` only reads; ``open_sealed_clip_at`` decrypts
as it is read (edge/buffer/agefile.py).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.buffer.agefile import AgeReader, AgeWriter, HashingWriter, Writable, open_age_reader
from edge.share.jws import b64url_encode, sign_compact

log = logging.getLogger(__name__)

MANIFEST_HEADER: dict[str, str] = {"alg": "EdDSA", "typ": "clip-manifest+jwt"}
CLIP_SUFFIX = ".mp4"
ENCRYPTED_CLIP_SUFFIX = ".mp4.age"
MANIFEST_SUFFIX = ".manifest.jws"

_READ_BLOCK_BYTES = 256 * 1024  # bounded reads: memory stays flat in the clip's length

# RFC 3339 date-time with an offset; fractional seconds allowed; T/Z in either case.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def new_delivery_id() -> str:
    """A fresh random delivery id (UUID 4, canonical text): says nothing about the camera."""
    return str(uuid.uuid4())


def clip_file_name(delivery_id: str, *, encrypted: bool) -> str:
    _check_delivery_id(delivery_id)
    return delivery_id + (ENCRYPTED_CLIP_SUFFIX if encrypted else CLIP_SUFFIX)


def manifest_file_name(delivery_id: str) -> str:
    _check_delivery_id(delivery_id)
    return delivery_id + MANIFEST_SUFFIX


def _check_delivery_id(delivery_id: str) -> None:
    try:
        canonical = str(uuid.UUID(delivery_id))
    except ValueError:
        raise ValueError(f"delivery id is not a UUID: {delivery_id!r}") from None
    if canonical != delivery_id:
        raise ValueError(f"delivery id is not a UUID in canonical form: {delivery_id!r}")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with its offset, as an aware datetime; ValueError otherwise."""
    if not isinstance(text, str) or not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time with an offset: {text!r}")
    normalised = text.upper()
    # fromisoformat takes at most 6 fractional digits; RFC 3339 allows any number.
    match = re.fullmatch(r"(.*?\.\d{6})\d+(.*)", normalised)
    if match:
        normalised = match.group(1) + match.group(2)
    return datetime.fromisoformat(normalised)


def format_rfc3339_ms(timestamp_ms: int) -> str:
    """A capture time (ms since the Unix epoch) as RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Window:
    """A time window as RFC 3339 strings, kept exactly as given (the request's own text)."""

    start: str
    end: str

    def __post_init__(self) -> None:
        if parse_rfc3339(self.start) > parse_rfc3339(self.end):
            raise ValueError(f"window starts after it ends: {self.start} > {self.end}")

    @classmethod
    def from_ms(cls, start_ms: int, end_ms: int) -> Window:
        return cls(format_rfc3339_ms(start_ms), format_rfc3339_ms(end_ms))

    def contains(self, other: Window) -> bool:
        return parse_rfc3339(self.start) <= parse_rfc3339(other.start) and parse_rfc3339(
            other.end
        ) <= parse_rfc3339(self.end)

    def to_claim(self) -> dict[str, str]:
        return {"start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class FileDigest:
    """A delivered file as uploaded: its name, size and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str

    def to_claim(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def encrypt_clip(
    plaintext: IO[bytes], recipient: str, out: Writable, *, delivery_id: str
) -> FileDigest:
    """Age-encrypts the clip to the request's recipient alone, streaming.

    Reads ``plaintext`` to its end and writes the ciphertext to ``out`` (which
    may be a file: only ciphertext reaches it). Returns the digest of the
    ciphertext, the bytes the manifest describes and the upload sends. Raises
    ValueError (RecipientError) for a recipient that is not ``age1...``.
    """
    writer = HashingWriter(out)
    sealer = AgeWriter(writer, [recipient])
    while block := plaintext.read(_READ_BLOCK_BYTES):
        sealer.write(block)
    sealer.close()
    return FileDigest(clip_file_name(delivery_id, encrypted=True), writer.size, writer.hexdigest())


def open_sealed_clip_at(
    path: Path, identities: Sequence[pyrage.x25519.Identity], offset: int
) -> AgeReader:
    """The plaintext of an age-sealed clip file from ``offset`` on, decrypted as it
    is read (an upload resumed at the server's offset decrypts and drops the bytes
    before it). A clip these keys do not open raises ``ValueError`` at once; a damaged
    one when the damaged part is read, before any byte of it is returned.

    Unbuffered: the uploader sends each decrypted batch as it is (``read_view``);
    a reader that wants whole reads wraps it in ``io.BufferedReader``."""
    if offset < 0:
        raise ValueError("offset must not be negative")

    # Decrypted a megabyte ahead on a thread of its own, while the upload sends.
    stream = open_age_reader(path, list(identities))
    try:
        left = offset
        while left:
            skipped = len(stream.read_view(left))
            if not skipped:
                raise ValueError(f"the sealed clip {path.name} is shorter than {offset} bytes")
            left -= skipped
    except BaseException:
        stream.close()
        raise
    return stream


def digest_clip(plaintext: IO[bytes], *, delivery_id: str) -> FileDigest:
    """The digest of an unencrypted clip (``D.mp4``), read in bounded blocks."""
    digest = hashlib.sha256()
    size = 0
    while block := plaintext.read(_READ_BLOCK_BYTES):
        digest.update(block)
        size += len(block)
    return FileDigest(clip_file_name(delivery_id, encrypted=False), size, digest.hexdigest())


def device_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The camera's public key as an Ed25519 OKP JWK (RFC 8037)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def manifest_claims(
    *,
    request_id: str,
    issuer: str,
    device_key: Ed25519PublicKey,
    window_requested: Window,
    window_approved: Window,
    window_delivered: Window,
    clock_synced: bool,
    clip: FileDigest,
    approved_at_s: int,
    issued_at_s: int,
) -> dict[str, Any]:
    """The manifest's claims, every one the spec lists, in its order."""
    if not window_requested.contains(window_approved):
        raise ValueError("the approved window is not inside the requested one")
    if not clip.name.endswith((CLIP_SUFFIX, ENCRYPTED_CLIP_SUFFIX)):
        raise ValueError(f"not a clip file name: {clip.name!r}")
    if clip.size < 0 or not re.fullmatch(r"[0-9a-f]{64}", clip.sha256):
        raise ValueError("clip digest is not a size and a SHA-256 in lower-case hex")
    for name, value in (("approved_at_s", approved_at_s), ("issued_at_s", issued_at_s)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative whole number of seconds")
    return {
        "jti": request_id,
        "iss": issuer,
        "device": device_jwk(device_key),
        "window_requested": window_requested.to_claim(),
        "window_approved": window_approved.to_claim(),
        "window_delivered": window_delivered.to_claim(),
        "clock_synced": bool(clock_synced),
        "file": clip.to_claim(),
        "approved_at": approved_at_s,
        "iat": issued_at_s,
    }


def sign_manifest(claims: dict[str, Any], device_private_key: Ed25519PrivateKey) -> str:
    """The manifest as a compact JWS, header ``{"alg":"EdDSA","typ":"clip-manifest+jwt"}``
    (compact UTF-8 JSON, signed by the project's one JWS module)."""
    return sign_compact(MANIFEST_HEADER, claims, device_private_key)
