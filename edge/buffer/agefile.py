"""Writing age v1 files (age-encryption.org/v1) to X25519 recipients, for the ring.

Opening them is pyrage's (and the ``age`` tool's) job; this module only writes.
It exists because the ring seals every segment on the recording thread: pyrage's
ChaCha20-Poly1305 takes ~3 ms for a 2 MB segment here and holds Python's
interpreter lock throughout, while OpenSSL's, through ``cryptography``, takes
~0.8 ms and lets the other threads (the ring's disk writes, encoding) run
meanwhile. The format is the one age specifies (https://age-encryption.org/v1),
built from the same primitives age names, with nothing of our own:

- a random 16-byte file key, wrapped for each recipient in an ``X25519`` stanza:
  a fresh ephemeral key, HKDF-SHA256 of the shared secret (salt: ephemeral share
  then recipient, info ``age-encryption.org/v1/X25519``), ChaCha20-Poly1305 with
  a zero nonce;
- the header's MAC: HMAC-SHA256 keyed by HKDF-SHA256(file key, info ``header``)
  over the header up to and including ``---``;
- the payload: a random 16-byte nonce, then the plaintext in 64 KiB chunks, each
  sealed with ChaCha20-Poly1305 under HKDF-SHA256(file key, salt: that nonce,
  info ``payload``) and the nonce ``counter (11 bytes, big-endian) || last flag``;
  the last chunk may be full and is empty only if the plaintext is.

tests/test_agefile.py opens what this writes with pyrage and with the ``age`` tool.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CHUNK_BYTES = 64 * 1024
_TAG_BYTES = 16
_X25519_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)
_MAX_CHUNKS = 1 << 88  # the nonce's 11-byte counter


class RecipientError(ValueError):
    """Not an age X25519 recipient (``age1...``)."""


def encrypt(parts: Sequence[bytes | memoryview], recipients: Sequence[str]) -> bytearray:
    """The age file of the plaintext ``parts`` (read as one stream), to every recipient.

    Each chunk is sealed straight into its place in the one buffer returned: the
    plaintext is not joined and the ciphertext not copied.
    """
    if not recipients:
        raise ValueError("at least one recipient is needed")
    file_key = os.urandom(16)
    lines = [b"age-encryption.org/v1\n"]
    for recipient in recipients:
        lines.append(_x25519_stanza(file_key, recipient_key(recipient)))
    lines.append(b"---")
    header = b"".join(lines)
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    header += b" " + _b64(mac) + b"\n"
    nonce = os.urandom(16)
    payload = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))

    plaintext_bytes = sum(memoryview(part).nbytes for part in parts)
    out = bytearray(sealed_size(plaintext_bytes, len(header)))
    out[: len(header)] = header
    out[len(header) : len(header) + 16] = nonce
    view = memoryview(out)
    position = len(header) + 16
    chunks = _chunks(parts)
    chunk = next(chunks)
    counter = 0
    for following in chunks:  # every chunk but the last
        end = position + len(chunk) + _TAG_BYTES
        payload.encrypt_into(counter.to_bytes(11, "big") + b"\x00", chunk, None, view[position:end])
        position, chunk, counter = end, following, counter + 1
    end = position + len(chunk) + _TAG_BYTES
    payload.encrypt_into(counter.to_bytes(11, "big") + b"\x01", chunk, None, view[position:end])
    if end != len(out):
        raise AssertionError(f"age file is {end} bytes, expected {len(out)}")
    return out


def sealed_size(plaintext_bytes: int, header_bytes: int) -> int:
    """Bytes of an age file with this header (up to its MAC line) and plaintext."""
    if plaintext_bytes > CHUNK_BYTES * _MAX_CHUNKS:
        raise ValueError("plaintext too long for one age file")
    chunks = max(1, -(-plaintext_bytes // CHUNK_BYTES))
    return header_bytes + 16 + plaintext_bytes + chunks * _TAG_BYTES


@functools.lru_cache(maxsize=32)
def recipient_key(recipient: str) -> X25519PublicKey:
    """The X25519 public key of an ``age1...`` recipient (Bech32, checksum checked)."""
    hrp, data = _bech32_decode(recipient)
    if hrp != "age" or len(data) != 32:
        raise RecipientError(f"not an age X25519 recipient: {recipient[:80]!r}")
    return X25519PublicKey.from_public_bytes(data)


def _x25519_stanza(file_key: bytes, recipient: X25519PublicKey) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared_secret = ephemeral.exchange(recipient)  # raises on an all-zero result
    salt = share + recipient.public_bytes_raw()
    wrap_key = _hkdf(shared_secret, salt, _X25519_INFO)
    body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
    # The 32-byte body is 43 base64 characters: one line, shorter than 64, ends the stanza.
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"


def _chunks(parts: Sequence[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """The stream of ``parts`` in CHUNK_BYTES pieces (at least one, possibly empty).

    Views into the parts where a chunk lies inside one; a copy only where it spans two.
    """
    pending: list[memoryview] = []
    pending_bytes = 0
    for part in parts:
        view = memoryview(part).cast("B")
        if pending_bytes:
            take = min(CHUNK_BYTES - pending_bytes, len(view))
            pending.append(view[:take])
            pending_bytes += take
            view = view[take:]
            if pending_bytes < CHUNK_BYTES:
                continue
            yield b"".join(pending)
            pending, pending_bytes = [], 0
        whole = len(view) - len(view) % CHUNK_BYTES
        for start in range(0, whole, CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]
        if whole < len(view):
            pending, pending_bytes = [view[whole:]], len(view) - whole
    if pending_bytes or not any(len(part) for part in parts):
        yield b"".join(pending)


def _hkdf(key_material: bytes, salt: bytes, info: bytes) -> bytes:
    # An empty salt is HKDF's default (a zero-filled one), as in age's Go code.
    return HKDF(hashes.SHA256(), 32, salt or None, info).derive(key_material)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


# -- Bech32 (BIP 173), as age encodes its keys -------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_MAX_BECH32_CHARS = 90  # BIP 173's limit; age recipients are 62


def _polymod(values: Sequence[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATOR):
            if (top >> i) & 1:
                checksum ^= generator
    return checksum


def _bech32_decode(text: str) -> tuple[str, bytes]:
    if len(text) > _MAX_BECH32_CHARS or text != text.strip() or not text.isascii():
        raise RecipientError(f"not a Bech32 string: {text[:80]!r}")
    if text.lower() != text and text.upper() != text:
        raise RecipientError("mixed case in a Bech32 string")
    text = text.lower()
    hrp, separator, data_part = text.rpartition("1")
    if not separator or not hrp or len(data_part) < 6:
        raise RecipientError(f"not a Bech32 string: {text[:80]!r}")
    try:
        values = [_CHARSET.index(char) for char in data_part]
    except ValueError:
        raise RecipientError(f"not a Bech32 string: {text[:80]!r}") from None
    expanded = [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]
    if _polymod(expanded + values) != 1:
        raise RecipientError(f"bad Bech32 checksum: {text[:80]!r}")
    # 5-bit groups to bytes; the padding left over must be fewer than 8 zero bits.
    accumulator = bits = 0
    data = bytearray()
    for value in values[:-6]:
        accumulator = accumulator << 5 | value
        bits += 5
        if bits >= 8:
            bits -= 8
            data.append(accumulator >> bits & 0xFF)
    if bits >= 5 or accumulator & ((1 << bits) - 1):
        raise RecipientError(f"bad Bech32 padding: {text[:80]!r}")
    return hrp, bytes(data)
