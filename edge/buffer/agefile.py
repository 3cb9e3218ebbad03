"""age v1 files (age-encryption.org/v1) with X25519 keys: writing and reading a
segment whole, in memory; writing a clip as a stream and reading one as a stream.

It exists because the ring seals every segment on the recording thread: pyrage's
ChaCha20-Poly1305 takes ~3 ms for a 2 MB segment here, OpenSSL's, through
``cryptography``, ~0.7 ms. Both hold Python's interpreter lock while they work
(measured: a sleeping thread wakes only between calls), so the shorter the
better for the threads beside it (the ring's disk writes, encoding); here the
lock is held for one 64 KiB chunk at a time, not a whole segment. The format is
the one age specifies (https://age-encryption.org/v1), built from the same
primitives age names, with nothing of our own:

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

Reading (``AgeReader``) is the same in reverse, for streams that are read while
they are sent (a clip decrypted on the fly for an upload): the header is parsed
with every size bounded and base64 checked canonical, the stanza unwrapped, the
header MAC checked before any payload is read, and each chunk authenticated, the
last by its flag, so a truncated, extended or altered file raises AgeFileError.

tests/test_agefile.py opens what this writes with pyrage and with the ``age`` tool,
and reads what they write.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyrage import x25519

CHUNK_BYTES = 64 * 1024
_TAG_BYTES = 16
_X25519_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)
_MAX_CHUNKS = 1 << 88  # the nonce's 11-byte counter


_SEALED_CHUNK_BYTES = CHUNK_BYTES + _TAG_BYTES
_WRITE_CHUNKS = 16  # sealed chunks an AgeWriter hands ``out`` at once (~1 MiB)
_MAX_HEADER_BYTES = 64 * 1024  # a header with many recipients is a few KB
_READ_CHUNKS = 16  # 1 MiB of payload per read, decrypted while the one before is used


# An identity as text (``AGE-SECRET-KEY-1...``), as pyrage holds it, or already
# parsed: a key read for every segment is parsed once by its holder (Bech32 in
# Python is ~0.2 ms, with Python's lock held, against ~0.5 ms to decrypt the
# whole segment).
AnyIdentity: TypeAlias = "str | x25519.Identity | X25519PrivateKey"


class RecipientError(ValueError):
    """Not an age X25519 recipient (``age1...``) or identity (``AGE-SECRET-KEY-1...``)."""


class AgeFileError(ValueError):
    """The file is not an age v1 file these identities open, or it is damaged."""


def encrypt(parts: Sequence[bytes | memoryview], recipients: Sequence[str]) -> bytearray:
    """The age file of the plaintext ``parts`` (read as one stream), to every recipient.

    Each chunk is sealed straight into its place in the one buffer returned: the
    plaintext is not joined and the ciphertext not copied.
    """
    header, nonce, payload = _new_file(recipients)
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
        payload.encrypt_into(_chunk_nonce(counter, last=False), chunk, None, view[position:end])
        position, chunk, counter = end, following, counter + 1
    end = position + len(chunk) + _TAG_BYTES
    payload.encrypt_into(_chunk_nonce(counter, last=True), chunk, None, view[position:end])
    if end != len(out):
        raise AssertionError(f"age file is {end} bytes, expected {len(out)}")
    return out


class Writable(Protocol):
    """Where bytes go, front to back: a file, a hashing wrapper, a sealing stream."""

    def write(self, data: bytes | memoryview, /) -> object: ...


class HashingWriter:
    """Passes bytes on to ``out`` while counting and hashing them (SHA-256)."""

    def __init__(self, out: Writable) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        # Hashed first, passed on second: ``out`` (a sealer) reads the bytes again
        # while they are still in the CPU's cache.
        self._hash.update(data)
        self._out.write(data)
        self.size += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class AgeWriter:
    """An age file written to ``out`` as its plaintext comes, for streams too long
    to hold (a clip for an agency): ``write`` pieces of any size, then ``close``.

    ``close`` seals the last chunk, which age flags as last: a stream cut off
    before it (an error, a crash) is never a valid age file, so a part can
    never pass for the whole. ``out`` must not keep the buffers it is given
    (files and hashing wrappers copy them). Memory: a chunk of plaintext and
    a batch of sealed chunks (~1 MiB).
    """

    def __init__(self, out: Writable, recipients: Sequence[str]) -> None:
        header, nonce, self._payload = _new_file(recipients)
        self._out = out
        self._pending = bytearray()  # at most a chunk: it may turn out to be the last
        # Sealed chunks go out a batch at a time: one write (one system call,
        # one hand-over of Python's lock) a megabyte instead of a chunk.
        self._sealed = bytearray(_WRITE_CHUNKS * _SEALED_CHUNK_BYTES)
        self._sealed_bytes = 0
        self._counter = 0
        self._closed = False
        out.write(memoryview(header + nonce))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed AgeWriter")
        view = memoryview(data).cast("B")
        taken = len(view)
        if len(self._pending) + len(view) <= CHUNK_BYTES:
            self._pending += view
            return taken
        if self._pending:  # filled up to a chunk, and more follows: not the last
            need = CHUNK_BYTES - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            self._seal(self._pending, last=False)
        while len(view) > CHUNK_BYTES:  # whole chunks straight from the caller's bytes
            self._seal(view[:CHUNK_BYTES], last=False)
            view = view[CHUNK_BYTES:]
        self._pending = bytearray(view)
        return taken

    def close(self) -> None:
        """Seals the last chunk (empty only if nothing was written). Does not close ``out``."""
        if not self._closed:
            self._seal(self._pending, last=True)
            self._send()
            self._pending = bytearray()
            self._closed = True

    def _seal(self, chunk: bytes | bytearray | memoryview, *, last: bool) -> None:
        if self._counter >= _MAX_CHUNKS:
            raise ValueError("plaintext too long for one age file")
        start = self._sealed_bytes
        out = memoryview(self._sealed)[start : start + len(chunk) + _TAG_BYTES]
        self._payload.encrypt_into(_chunk_nonce(self._counter, last=last), chunk, None, out)
        self._counter += 1
        self._sealed_bytes += len(out)
        if self._sealed_bytes + _SEALED_CHUNK_BYTES > len(self._sealed):
            self._send()

    def _send(self) -> None:
        self._out.write(memoryview(self._sealed)[: self._sealed_bytes])
        self._sealed_bytes = 0


def sealed_size(plaintext_bytes: int, header_bytes: int) -> int:
    """Bytes of an age file with this header (up to its MAC line) and plaintext."""
    if plaintext_bytes > CHUNK_BYTES * _MAX_CHUNKS:
        raise ValueError("plaintext too long for one age file")
    chunks = max(1, -(-plaintext_bytes // CHUNK_BYTES))
    return header_bytes + 16 + plaintext_bytes + chunks * _TAG_BYTES


@functools.lru_cache(maxsize=32)
def recipient_key(recipient: str) -> X25519PublicKey:
    """The X25519 public key of an ``age1...`` recipient (Bech32, checksum checked)."""
    what = f"not an age X25519 recipient (age1...): {recipient[:80]!r}"
    try:
        hrp, data = _bech32_decode(recipient)
    except RecipientError as error:
        raise RecipientError(f"{what}: {error}") from None
    if hrp != "age" or len(data) != 32:
        raise RecipientError(what)
    return X25519PublicKey.from_public_bytes(data)


def identity_key(identity: AnyIdentity) -> X25519PrivateKey:
    """The X25519 private key of an ``AGE-SECRET-KEY-1...`` identity (a parsed one as it is)."""
    if isinstance(identity, X25519PrivateKey):
        return identity
    try:
        hrp, data = _bech32_decode(str(identity))
    except RecipientError:
        raise RecipientError("not an age X25519 identity") from None  # never echo a key
    if hrp != "age-secret-key-" or len(data) != 32:
        raise RecipientError("not an age X25519 identity")
    return X25519PrivateKey.from_private_bytes(data)


class AgeReader(io.RawIOBase):
    """The plaintext of an age file, decrypted as it is read.

    The header is read and checked when it is made (AgeFileError if these
    identities do not open it); the payload is authenticated chunk by chunk, a
    megabyte ahead of the reader on a thread of its own, so the file read and
    the decryption of the next megabyte go on while the reader sends this one
    (a socket send lets go of Python's lock). A damaged payload raises AgeFileError from
    ``read`` when it is reached; nothing unauthenticated is ever returned.
    """

    def __init__(
        self, source: IO[bytes], identities: Sequence[AnyIdentity], *, name: str = ""
    ) -> None:
        super().__init__()
        self._source = source
        self._name = name or "the file"
        keys = [identity_key(identity) for identity in identities]
        payload_key, carry = _open_header(source, keys, self._name)
        self._payload = ChaCha20Poly1305(payload_key)
        # Reused for every megabyte: the ciphertext read, and two plaintext buffers,
        # one being read while the other is filled.
        self._ciphertext = bytearray(_READ_CHUNKS * _SEALED_CHUNK_BYTES + 1)
        self._ciphertext[: len(carry)] = carry
        self._carry_bytes = len(carry)
        self._plaintext_buffers = [bytearray(_READ_CHUNKS * CHUNK_BYTES) for _ in range(2)]
        self._batches = 0
        self._counter = 0
        self._ended = False  # the last chunk has been decrypted
        self._plaintext = memoryview(b"")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="age-reader")
        self._next: Future[memoryview] | None = self._executor.submit(self._decrypt_more)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = self.read_view(len(buffer))
        buffer[: len(view)] = view
        return len(view)

    def read_view(self, max_bytes: int) -> memoryview:
        """Up to ``max_bytes`` of plaintext, empty at the end, without a copy: a view
        of the decrypted batch, valid only until the next read from this reader."""
        while not self._plaintext:
            if self._next is None:
                return memoryview(b"")
            # The batch before this one is no longer read: its buffer takes the next.
            self._plaintext = self._next.result()  # raises the batch's AgeFileError
            self._next = None if self._ended else self._executor.submit(self._decrypt_more)
        view = self._plaintext[:max_bytes]
        self._plaintext = self._plaintext[max_bytes:]
        return view

    def close(self) -> None:
        if not self.closed:
            if self._next is not None:
                self._next.cancel()
            self._executor.shutdown(wait=True)
            self._source.close()
        super().close()

    def _decrypt_more(self) -> memoryview:
        """Reads and decrypts up to _READ_CHUNKS chunks (on the reader's thread).

        A chunk is the last only if the file ends right after it, so one full
        chunk is always held back until more of the file (or its end) is seen.
        """
        buffer = memoryview(self._ciphertext)
        filled = self._carry_bytes
        while filled < len(buffer) and (count := self._source.readinto(buffer[filled:])):  # type: ignore[attr-defined]
            filled += count
        at_end = filled < len(buffer)  # otherwise one byte more than 16 chunks: not the end
        view = buffer[:filled]
        chunks = filled // _SEALED_CHUNK_BYTES
        if at_end and filled % _SEALED_CHUNK_BYTES == 0:
            chunks -= 1  # a full last chunk: decrypted below, flagged last
        out_view = memoryview(self._plaintext_buffers[self._batches % 2])
        self._batches += 1
        position = written = 0
        for _ in range(chunks):
            self._decrypt_chunk(view[position : position + _SEALED_CHUNK_BYTES],
                                out_view[written : written + CHUNK_BYTES], last=False)
            position += _SEALED_CHUNK_BYTES
            written += CHUNK_BYTES
        if at_end:
            last = view[position:]
            if len(last) < _TAG_BYTES or (len(last) == _TAG_BYTES and self._counter > 0):
                raise AgeFileError(f"{self._name} is truncated")
            plain_bytes = len(last) - _TAG_BYTES
            self._decrypt_chunk(last, out_view[written : written + plain_bytes], last=True)
            written += plain_bytes
            self._ended = True
        else:
            self._carry_bytes = filled - position  # one byte: less than position, no overlap
            buffer[: self._carry_bytes] = view[position:]
        return out_view[:written]

    def _decrypt_chunk(self, chunk: memoryview, out: memoryview, *, last: bool) -> None:
        _open_chunk(self._payload, self._counter, chunk, out, last=last, name=self._name)
        self._counter += 1


def decrypt(
    sealed: bytes | bytearray, identities: Sequence[AnyIdentity], *, name: str = ""
) -> bytearray:
    """The plaintext of an age file held in memory (a segment), each chunk authenticated
    on the way: raises AgeFileError for keys that do not open it, or any damage."""
    name = name or "the file"
    source = io.BytesIO(sealed)
    payload_key, carry = _open_header(source, [identity_key(i) for i in identities], name)
    payload = memoryview(sealed)[source.tell() - len(carry) :]
    chunks = max(1, -(-len(payload) // _SEALED_CHUNK_BYTES))
    last_bytes = len(payload) - (chunks - 1) * _SEALED_CHUNK_BYTES
    # The last chunk holds at least its tag, and is empty only if the whole file is.
    if last_bytes < _TAG_BYTES or (last_bytes == _TAG_BYTES and chunks > 1):
        raise AgeFileError(f"{name} is truncated")
    cipher = ChaCha20Poly1305(payload_key)
    out = bytearray(len(payload) - chunks * _TAG_BYTES)
    view = memoryview(out)
    for counter in range(chunks):
        last = counter == chunks - 1
        start = counter * _SEALED_CHUNK_BYTES
        end = start + (last_bytes if last else _SEALED_CHUNK_BYTES)
        written = counter * CHUNK_BYTES
        _open_chunk(
            cipher,
            counter,
            payload[start:end],
            view[written : written + end - start - _TAG_BYTES],
            last=last,
            name=name,
        )
    return out


def payload_offset(data: bytes | bytearray) -> int:
    """Where the payload chunks of an age file held in memory begin: past the header
    (its MAC line included) and the 16-byte payload nonce. Checks only the framing;
    raises AgeFileError if the header does not end or nothing follows it."""
    mac_line = data.find(b"\n--- ", 0, _MAX_HEADER_BYTES)
    header_end = data.find(b"\n", mac_line + 5, _MAX_HEADER_BYTES) + 1 if mac_line >= 0 else 0
    if header_end <= 0 or not data.startswith(b"age-encryption.org/v1\n"):
        raise AgeFileError(f"not an age v1 file with a header under {_MAX_HEADER_BYTES} bytes")
    if header_end + 16 > len(data):
        raise AgeFileError("age file truncated: no payload nonce")
    return header_end + 16


def open_age_file(path: Path, identities: Sequence[AnyIdentity]) -> IO[bytes]:
    """The plaintext of the age file at ``path``, decrypted as it is read (buffered)."""
    return io.BufferedReader(open_age_reader(path, identities), buffer_size=CHUNK_BYTES)


def open_age_reader(path: Path, identities: Sequence[AnyIdentity]) -> AgeReader:
    """The same, unbuffered: for a reader that takes the plaintext by ``read_view``."""
    source = open(path, "rb")
    try:
        return AgeReader(source, identities, name=path.name)
    except BaseException:
        source.close()
        raise


def _open_header(
    source: IO[bytes], keys: Sequence[X25519PrivateKey], name: str
) -> tuple[bytes, bytes]:
    """(payload key, the bytes read past the payload nonce)."""
    data = b""
    while b"\n--- " not in data or data.find(b"\n", data.index(b"\n--- ") + 5) < 0:
        more = source.read(4096)
        if not more:
            raise AgeFileError(f"{name} is not an age file: its header does not end")
        data += more
        if len(data) > _MAX_HEADER_BYTES + 4096:
            raise AgeFileError(f"{name}: age header longer than {_MAX_HEADER_BYTES} bytes")
    mac_line_start = data.index(b"\n--- ") + 1
    mac_line_end = data.index(b"\n", mac_line_start) + 1
    if mac_line_end > _MAX_HEADER_BYTES:
        raise AgeFileError(f"{name}: age header longer than {_MAX_HEADER_BYTES} bytes")
    lines = data[:mac_line_start].split(b"\n")[:-1]
    if not lines or lines[0] != b"age-encryption.org/v1":
        raise AgeFileError(f"{name} is not an age v1 file")
    stanzas = _stanzas(lines[1:], name)
    file_key = _unwrap(stanzas, keys, name)
    header_mac = _b64_decode(data[mac_line_start + 4 : mac_line_end - 1], 32, name)
    mac_key = _hkdf(file_key, b"", b"header")
    expected = hmac.new(mac_key, data[: mac_line_start + 3], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, header_mac):
        raise AgeFileError(f"{name}: the age header's MAC does not match (altered header)")
    rest = data[mac_line_end:]
    while len(rest) < 16 and (more := source.read(16 - len(rest))):
        rest += more
    if len(rest) < 16:
        raise AgeFileError(f"{name} is truncated: no payload")
    return _hkdf(file_key, rest[:16], b"payload"), rest[16:]


def _stanzas(lines: list[bytes], name: str) -> list[tuple[list[bytes], bytes]]:
    """(arguments, body) of each ``-> `` stanza; bodies are base64 in 64-column lines."""
    stanzas: list[tuple[list[bytes], bytes]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        arguments = line[3:].split(b" ")
        if not line.startswith(b"-> ") or not all(arguments):
            raise AgeFileError(f"{name}: malformed age header line")
        body_lines = []
        while True:
            index += 1
            if index >= len(lines):
                raise AgeFileError(f"{name}: age stanza without its body")
            body_lines.append(lines[index])
            if len(lines[index]) < 64:
                break
            if len(lines[index]) > 64:
                raise AgeFileError(f"{name}: malformed age stanza body")
        index += 1
        stanzas.append((arguments, b"".join(body_lines)))
    return stanzas


def _unwrap(
    stanzas: list[tuple[list[bytes], bytes]], keys: Sequence[X25519PrivateKey], name: str
) -> bytes:
    for arguments, body in stanzas:
        if arguments[0] != b"X25519":
            continue  # another kind of recipient: not ours to open
        if len(arguments) != 2:
            raise AgeFileError(f"{name}: malformed X25519 stanza")
        share = _b64_decode(arguments[1], 32, name)
        wrapped = _b64_decode(body, 32, name)
        for key in keys:
            try:
                shared_secret = key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise AgeFileError(f"{name}: X25519 stanza with a low-order share") from None
            salt = share + key.public_key().public_bytes_raw()
            wrap_key = _hkdf(shared_secret, salt, _X25519_INFO)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, wrapped, None)
            except InvalidTag:
                continue
    raise AgeFileError(f"{name} does not open: it is not sealed to any key held here")


def _b64_decode(text: bytes, expected_bytes: int, name: str) -> bytes:
    """Unpadded, canonical base64 of exactly ``expected_bytes`` (age's rules)."""
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except ValueError:
        data = b""
    if len(data) != expected_bytes or _b64(data) != text:
        raise AgeFileError(f"{name}: malformed base64 in the age header")
    return data


def _new_file(recipients: Sequence[str]) -> tuple[bytes, bytes, ChaCha20Poly1305]:
    """A fresh file key wrapped for every recipient: (header up to and including its
    MAC line, payload nonce, the payload's cipher)."""
    if not recipients:
        raise ValueError("at least one recipient is needed")
    file_key = os.urandom(16)
    lines = [b"age-encryption.org/v1\n"]
    for recipient in recipients:
        lines.append(_x25519_stanza(file_key, recipient_key(recipient)))
    lines.append(b"---")
    header = b"".join(lines)
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(16)
    payload = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    return header + b" " + _b64(mac) + b"\n", nonce, payload


def _chunk_nonce(counter: int, *, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _open_chunk(
    cipher: ChaCha20Poly1305,
    counter: int,
    chunk: memoryview,
    out: memoryview,
    *,
    last: bool,
    name: str,
) -> None:
    """Decrypts payload chunk ``counter`` into ``out``; AgeFileError unless it authenticates."""
    if counter >= _MAX_CHUNKS:
        raise AgeFileError(f"{name} is too long for an age file")
    try:
        cipher.decrypt_into(_chunk_nonce(counter, last=last), chunk, None, out)
    except InvalidTag:
        what = "truncated or damaged" if last else "damaged"
        raise AgeFileError(f"{name} is {what}: chunk {counter} does not authenticate") from None


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
