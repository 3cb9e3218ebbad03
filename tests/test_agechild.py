"""age in a child process (edge/share/agechild.py): real children, real age files.

The children are the same Python running pyrage; what is checked is what the
outbox and delivery rely on: the bytes round-trip, a file that does not open
fails with the child's own reason (not a silent short read), a reader that stops
early ends the child, and keys never appear on a command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from edge.share import agechild


def seal_with_child(tmp_path: Path, data: bytes, recipient: x25519.Recipient) -> Path:
    path = tmp_path / "clip.age"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sealer = agechild.Sealer(recipient, fd)
        sealer.stdin.write(data)
        sealer.finish()
    finally:
        os.close(fd)
    return path


def test_what_one_child_seals_another_opens_and_age_agrees(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    data = os.urandom(3_000_000)  # several pipe-fulls both ways
    path = seal_with_child(tmp_path, data, identity.to_public())
    assert pyrage.decrypt(path.read_bytes(), [identity]) == data  # a standard age file
    with agechild.open_unsealed(path, [identity]) as plaintext:
        assert plaintext.read() == data


def test_a_file_that_does_not_open_fails_with_the_reason(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    path = seal_with_child(tmp_path, b"footage" * 1000, x25519.Identity.generate().to_public())
    with agechild.open_unsealed(path, [identity]) as plaintext:  # not a key it was sealed to
        with pytest.raises(agechild.AgeChildError, match=r"does not open: \w+"):
            plaintext.read()
    flipped = tmp_path / "flipped.age"
    sealed = bytearray(pyrage.encrypt(b"a" * 200_000, [identity.to_public()]))
    sealed[-50] ^= 1  # a flipped bit in the last chunk
    flipped.write_bytes(bytes(sealed))
    with agechild.open_unsealed(flipped, [identity]) as plaintext:
        with pytest.raises(ValueError):  # AgeChildError is a ValueError, as callers expect
            plaintext.read()


def test_a_reader_that_stops_early_ends_the_child(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    path = seal_with_child(tmp_path, os.urandom(8_000_000), identity.to_public())
    plaintext = agechild.open_unsealed(path, [identity])
    assert len(plaintext.read(1000)) == 1000
    raw = plaintext.raw
    process = raw._process  # type: ignore[attr-defined]
    plaintext.close()
    assert process.returncode is not None  # ended and reaped, not left blocked on a full pipe


def test_keys_go_on_stdin_not_the_command_line(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    path = seal_with_child(tmp_path, b"x" * 10, identity.to_public())
    with agechild.open_unsealed(path, [identity]) as plaintext:
        process = plaintext.raw._process  # type: ignore[attr-defined]
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert str(identity).encode() not in command_line
        assert b"AGE-SECRET-KEY" not in command_line
        assert plaintext.read() == b"x" * 10


def test_the_child_runs_at_a_lower_priority_than_the_recording(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    path = seal_with_child(tmp_path, os.urandom(4_000_000), identity.to_public())
    with agechild.open_unsealed(path, [identity]) as plaintext:
        # The child has set its priority once it writes: it is then blocked on the
        # full pipe, alive, until this reader goes on.
        assert len(plaintext.read(1)) == 1
        process = plaintext.raw._process  # type: ignore[attr-defined]
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        child_nice = int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice
        assert child_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        plaintext.read()


def test_a_sealer_that_cannot_write_reports_why(tmp_path: Path) -> None:
    # /dev/full: every write fails with ENOSPC, as a full disk would.
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sealer = agechild.Sealer(x25519.Identity.generate().to_public(), fd)
        with pytest.raises(agechild.AgeChildError, match=r"could not seal the clip: \w+"):
            try:
                for _ in range(64):
                    sealer.stdin.write(b"\0" * 65536)
            except BrokenPipeError:
                pass  # the child has already stopped; finish() says why
            sealer.finish()
    finally:
        os.close(fd)
