"""edge/buffer/agefile.py writes age v1: pyrage and the real `age` tool must open it."""

from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from edge.buffer import agefile

CHUNK = agefile.CHUNK_BYTES
# Sizes around the 64 KiB chunk edges: age's last chunk may be full, and is
# empty only when the whole plaintext is.
# 16 chunks: one batch of AgeWriter's writes to its file, and one more byte.
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK - 17]
SIZES += [16 * CHUNK, 16 * CHUNK + 1, 2_000_003]


def split(data: bytes, rng: random.Random) -> list[bytes | memoryview]:
    """The plaintext as parts of random sizes (some empty), bytes and views mixed."""
    parts: list[bytes | memoryview] = []
    position = 0
    while position < len(data):
        size = rng.choice([0, 1, 17, CHUNK - 5, CHUNK, 3 * CHUNK + 3])
        piece = data[position : position + size]
        parts.append(memoryview(piece) if rng.random() < 0.5 else piece)
        position += size
    return parts or [b""]


@pytest.mark.parametrize("size", SIZES)
def test_pyrage_opens_it_for_every_recipient(size: int) -> None:
    rng = random.Random(size)
    identities = [x25519.Identity.generate() for _ in range(3)]
    data = rng.randbytes(size)
    sealed = bytes(agefile.encrypt(split(data, rng), [str(i.to_public()) for i in identities]))
    for identity in identities:
        assert pyrage.decrypt(sealed, [identity]) == data
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(sealed, [x25519.Identity.generate()])


@pytest.mark.parametrize("size", [0, CHUNK, 2 * CHUNK + 5])
def test_the_age_tool_opens_it(tmp_path: Path, size: int) -> None:
    identity = x25519.Identity.generate()
    key_file = tmp_path / "owner.key"
    key_file.write_text(f"{identity}\n")
    data = os.urandom(size)
    sealed = bytes(agefile.encrypt([data], [str(identity.to_public())]))
    opened = subprocess.run(
        ["age", "-d", "-i", str(key_file)], input=sealed, capture_output=True, check=True
    )
    assert opened.stdout == data


@pytest.mark.parametrize("size", SIZES)
def test_a_stream_written_in_pieces_opens_with_pyrage_and_the_age_tool(
    tmp_path: Path, size: int
) -> None:
    rng = random.Random(size)
    identity = x25519.Identity.generate()
    data = rng.randbytes(size)
    out = io.BytesIO()
    writer = agefile.AgeWriter(out, [str(identity.to_public())])
    for part in split(data, rng):  # pieces of random sizes, chunk edges included
        assert writer.write(part) == len(part)
    writer.close()
    sealed = out.getvalue()
    assert len(sealed) == agefile.sealed_size(size, agefile.payload_offset(sealed) - 16)
    assert pyrage.decrypt(sealed, [identity]) == data
    key_file = tmp_path / "agency.key"
    key_file.write_text(f"{identity}\n")
    opened = subprocess.run(
        ["age", "-d", "-i", str(key_file)], input=sealed, capture_output=True, check=True
    )
    assert opened.stdout == data


def test_a_stream_cut_off_before_close_is_not_a_valid_age_file() -> None:
    identity = x25519.Identity.generate()
    out = io.BytesIO()
    writer = agefile.AgeWriter(out, [str(identity.to_public())])
    writer.write(os.urandom(40 * CHUNK + 5))  # two batches written, none flagged last
    assert len(out.getvalue()) > 32 * CHUNK
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(out.getvalue(), [identity])
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")
    assert len(pyrage.decrypt(out.getvalue(), [identity])) == 40 * CHUNK + 5


def test_layout_is_age_v1_with_one_x25519_stanza_per_recipient() -> None:
    recipients = [str(x25519.Identity.generate().to_public()) for _ in range(2)]
    data = os.urandom(CHUNK + 10)
    sealed = bytes(agefile.encrypt([data], recipients))
    header_end = sealed.index(b"\n---") + 1
    mac_line_end = sealed.index(b"\n", header_end) + 1
    lines = sealed[:header_end].decode().splitlines()
    assert lines[0] == "age-encryption.org/v1"
    assert [line.split()[:2] for line in lines[1::2]] == [["->", "X25519"]] * 2
    assert all(len(line) == 43 for line in lines[2::2])  # 32-byte wrapped file key, unpadded
    assert len(sealed[header_end:mac_line_end].split()[1]) == 43  # the header's HMAC
    # 16-byte nonce, then two chunks each with a 16-byte tag.
    assert len(sealed) == mac_line_end + 16 + len(data) + 2 * 16
    assert len(sealed) == agefile.sealed_size(len(data), mac_line_end)
    assert agefile.payload_offset(sealed) == mac_line_end + 16  # past the header and nonce


def test_payload_offset_finds_where_pyrages_payload_starts_and_refuses_what_is_not_age() -> None:
    identity = x25519.Identity.generate()
    sealed = pyrage.encrypt(b"x" * 100, [identity.to_public()])  # with pyrage's grease stanza
    offset = agefile.payload_offset(sealed)
    assert sealed[: offset - 16].endswith(b"\n") and b"\n--- " in sealed[: offset - 16]
    assert len(sealed) - offset == 100 + 16  # one chunk and its tag
    for junk in (b"", b"not age at all", b"age-encryption.org/v1\n-> X25519 cut",
                 sealed[: offset - 1],  # the nonce cut short
                 b"age-encryption.org/v1\n" + b"A" * (1 << 20) + b"\n--- mac\n" + bytes(16)):
        with pytest.raises(agefile.AgeFileError):
            agefile.payload_offset(junk)


def test_every_file_has_its_own_keys_and_nonce() -> None:
    recipient = str(x25519.Identity.generate().to_public())
    first = bytes(agefile.encrypt([b"same plaintext"], [recipient]))
    second = bytes(agefile.encrypt([b"same plaintext"], [recipient]))
    first_share, second_share = (s.split(b"\n")[1] for s in (first, second))
    assert first_share != second_share  # ephemeral X25519 key
    assert first[-40:] != second[-40:]  # payload nonce and ciphertext


def test_a_flipped_byte_anywhere_is_refused_by_pyrage() -> None:
    identity = x25519.Identity.generate()
    sealed = bytearray(agefile.encrypt([os.urandom(3 * CHUNK)], [str(identity.to_public())]))
    rng = random.Random(5)
    for position in rng.sample(range(len(sealed)), 40):
        flipped = bytearray(sealed)
        flipped[position] ^= 1 << rng.randrange(8)
        with pytest.raises((pyrage.DecryptError, ValueError)):
            pyrage.decrypt(bytes(flipped), [identity])


@pytest.mark.parametrize(
    "recipient",
    [
        "",
        "age1",
        "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK",
        "age1" + "q" * 300,
    ],
)
def test_what_is_not_a_recipient_is_refused(recipient: str) -> None:
    with pytest.raises(agefile.RecipientError):
        agefile.recipient_key(recipient)


def test_a_recipient_with_one_character_changed_fails_its_checksum() -> None:
    recipient = str(x25519.Identity.generate().to_public())
    position = len(recipient) - 10
    other = "q" if recipient[position] != "q" else "p"
    with pytest.raises(agefile.RecipientError, match="checksum"):
        agefile.recipient_key(recipient[:position] + other + recipient[position + 1 :])


def test_upper_case_recipients_are_the_same_key() -> None:
    recipient = str(x25519.Identity.generate().to_public())
    assert agefile.recipient_key(recipient.upper()) == agefile.recipient_key(recipient)


def test_no_recipients_is_an_error() -> None:
    with pytest.raises(ValueError, match="recipient"):
        agefile.encrypt([b"x"], [])


# -- reading: AgeReader / open_age_file -------------------------------------------------


def read_all(sealed: bytes, identity: x25519.Identity, *, block: int = 65536) -> bytes:
    reader = agefile.AgeReader(io.BytesIO(sealed), [str(identity)])
    try:
        out = bytearray()
        while data := reader.read(block):
            out += data
        return bytes(out)
    finally:
        reader.close()


@pytest.mark.parametrize("size", [*SIZES, 16 * CHUNK, 16 * CHUNK + 1, 33 * CHUNK])
def test_the_reader_opens_what_pyrage_and_the_age_tool_write(tmp_path: Path, size: int) -> None:
    identity = x25519.Identity.generate()
    other = x25519.Identity.generate()
    data = random.Random(size).randbytes(size)
    by_pyrage = pyrage.encrypt(data, [other.to_public(), identity.to_public()])
    block = random.Random(size).choice([1, 7000, 1 << 20])
    assert read_all(by_pyrage, identity, block=block) == data
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    by_age = subprocess.run(
        ["age", "-r", str(identity.to_public()), str(plain)], capture_output=True, check=True
    ).stdout
    assert read_all(by_age, identity) == data


@pytest.mark.parametrize("size", [*SIZES, 16 * CHUNK + 1])
def test_decrypt_in_memory_opens_what_pyrage_the_age_tool_and_encrypt_write(
    tmp_path: Path, size: int
) -> None:
    identity = x25519.Identity.generate()
    other = x25519.Identity.generate()
    data = random.Random(size).randbytes(size)
    by_pyrage = pyrage.encrypt(data, [other.to_public(), identity.to_public()])
    assert agefile.decrypt(by_pyrage, [str(identity)]) == data
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    by_age = subprocess.run(
        ["age", "-r", str(identity.to_public()), str(plain)], capture_output=True, check=True
    ).stdout
    assert agefile.decrypt(by_age, [str(identity)]) == data
    ours = agefile.encrypt([data], [str(identity.to_public())])
    assert agefile.decrypt(ours, [str(other), str(identity)]) == data
    with pytest.raises(agefile.AgeFileError, match="not sealed to any key held here"):
        agefile.decrypt(ours, [str(other)])


def damaged_copies(sealed: bytes, seed: int) -> list[bytes]:
    """Cuts at every chunk edge (the empty payload too) and inside a chunk, bytes
    appended (a stray byte, a whole chunk again), and 60 single flipped bits."""
    start = agefile.payload_offset(sealed)
    chunks = -(-(len(sealed) - start) // (CHUNK + 16))
    damaged = [sealed[: start + (CHUNK + 16) * k] for k in range(chunks)]
    damaged += [sealed[:-1], sealed[:-17], sealed + b"\0", sealed + sealed[-(CHUNK + 16) :]]
    rng = random.Random(seed)
    for position in rng.sample(range(len(sealed)), 60):
        flipped = bytearray(sealed)
        flipped[position] ^= 1 << rng.randrange(8)
        damaged.append(bytes(flipped))
    return damaged


def test_decrypt_in_memory_refuses_every_damage_the_reader_refuses() -> None:
    identity = x25519.Identity.generate()
    sealed = pyrage.encrypt(os.urandom(3 * CHUNK + 100), [identity.to_public()])
    for bad in damaged_copies(sealed, seed=11):
        with pytest.raises(agefile.AgeFileError):
            agefile.decrypt(bad, [str(identity)])


def test_lent_views_hold_the_plaintext_in_order_while_the_next_batch_is_decrypted() -> None:
    """read_view lends the decrypted batch itself (the uploader sends it as it
    is): each view must stay intact until the next read, though the thread
    decrypting ahead is filling the other buffer meanwhile."""
    identity = x25519.Identity.generate()
    data = os.urandom(40 * CHUNK + 123)  # several 1 MiB batches and a short last one
    reader = agefile.AgeReader(
        io.BytesIO(pyrage.encrypt(data, [identity.to_public()])), [str(identity)]
    )
    rng = random.Random(5)
    position = 0
    try:
        while view := reader.read_view(rng.choice([1, 1000, CHUNK, 1 << 20, 1 << 22])):
            ahead = reader._next  # type: ignore[attr-defined]
            if ahead is not None:
                ahead.result()  # the next batch is decrypted: the lent one is still whole
            assert bytes(view) == data[position : position + len(view)]
            position += len(view)
        assert position == len(data)
        assert reader.read_view(10) == b""  # the end stays the end
    finally:
        reader.close()


def test_the_reader_refuses_a_file_not_sealed_to_its_keys() -> None:
    sealed = pyrage.encrypt(b"footage", [x25519.Identity.generate().to_public()])
    with pytest.raises(agefile.AgeFileError, match="not sealed to any key held here"):
        read_all(sealed, x25519.Identity.generate())


def test_the_reader_never_returns_what_does_not_authenticate() -> None:
    """Every flipped bit, a cut at a chunk edge or inside one, and bytes appended:
    each raises AgeFileError, and no read before it returned a byte that was not
    the plaintext's own."""
    identity = x25519.Identity.generate()
    data = os.urandom(3 * CHUNK + 100)
    sealed = pyrage.encrypt(data, [identity.to_public()])
    for bad in damaged_copies(sealed, seed=9):
        got = bytearray()
        with pytest.raises(agefile.AgeFileError):
            reader = agefile.AgeReader(io.BytesIO(bad), [str(identity)])
            try:
                while block := reader.read(5000):
                    got += block
            finally:
                reader.close()
        assert data.startswith(bytes(got))


def test_a_mangled_header_is_refused_with_a_reason_never_a_crash() -> None:
    identity = x25519.Identity.generate()
    sealed = pyrage.encrypt(b"x" * 1000, [identity.to_public()])
    header_end = sealed.index(b"\n---") + 50
    rng = random.Random(3)
    for _ in range(500):
        mangled = bytearray(sealed)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(header_end)
            mangled[position] = rng.choice(b"\n- ABCxyz0123=+/\xff\0")
        try:
            reader = agefile.AgeReader(io.BytesIO(bytes(mangled)), [str(identity)])
        except agefile.AgeFileError:
            continue
        try:  # a change that age's rules still accept must open to the same plaintext
            assert reader.read() == b"x" * 1000
        except agefile.AgeFileError:
            pass
        finally:
            reader.close()


def test_a_header_that_never_ends_is_refused_within_its_bound() -> None:
    endless = b"age-encryption.org/v1\n" + b"-> X25519 " + b"A" * (1 << 20)
    with pytest.raises(agefile.AgeFileError, match="header"):
        agefile.AgeReader(io.BytesIO(endless), [str(x25519.Identity.generate())])


def test_closing_a_reader_early_ends_its_thread_and_closes_the_file(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    path = tmp_path / "clip.age"
    path.write_bytes(pyrage.encrypt(os.urandom(5_000_000), [identity.to_public()]))
    stream = agefile.open_age_file(path, [identity])
    assert len(stream.read(1000)) == 1000
    reader = stream.raw
    stream.close()
    assert reader.closed and reader._source.closed  # type: ignore[attr-defined]
    assert reader._executor._shutdown  # type: ignore[attr-defined]
