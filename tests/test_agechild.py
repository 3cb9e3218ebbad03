"""age sealing in a child process (edge/share/agechild.py): real children, real age files.

The child is the same Python running edge/buffer/agefile.py; what is checked is what the outbox
relies on: the bytes come out as a standard age file (pyrage, the reader in
edge/buffer/agefile.py and the `age` tool open it), a child that cannot write
says why, and it runs below the recording's priority.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from edge.buffer.agefile import open_age_file
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


def test_what_the_child_seals_opens_with_pyrage_our_reader_and_age(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    data = os.urandom(3_000_000)  # several pipe-fulls
    path = seal_with_child(tmp_path, data, identity.to_public())
    assert pyrage.decrypt(path.read_bytes(), [identity]) == data
    with open_age_file(path, [identity]) as plaintext:
        assert plaintext.read() == data
    key_file = tmp_path / "owner.key"
    key_file.write_text(f"{identity}\n")
    opened = subprocess.run(
        ["age", "-d", "-i", str(key_file), str(path)], capture_output=True, check=True
    )
    assert opened.stdout == data


def test_the_child_runs_at_a_lower_priority_than_the_recording() -> None:
    read_end, write_end = os.pipe()
    try:
        sealer = agechild.Sealer(x25519.Identity.generate().to_public(), write_end)
        # The child lowers its priority before it reads anything; the age file it
        # then writes (once a chunk of plaintext is in) is the sign that it has.
        sealer.stdin.write(b"\0" * 200_000)
        sealer.stdin.flush()
        assert os.read(read_end, 64).startswith(b"age-encryption.org/v1")
        stat = Path(f"/proc/{sealer._process.pid}/stat").read_text()
        child_nice = int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice
        assert child_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        sealer.abort()
    finally:
        os.close(read_end)
        os.close(write_end)


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
