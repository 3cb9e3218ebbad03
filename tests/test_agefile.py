"""edge/buffer/agefile.py writes age v1: pyrage and the real `age` tool must open it."""

from __future__ import annotations

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
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK - 17, 2_000_003]


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
