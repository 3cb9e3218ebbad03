"""edge/durable.py on real files (what a power cut does to a rename is not testable
here: the suite's power-cut tests kill processes, and the page cache survives that)."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest

from edge.durable import WRITEBACK_BYTES, rename_durably, replacing_durably, write_durably


def test_write_durably_replaces_the_file_whole_private_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "D.manifest.jws"
    path.write_bytes(b"old")
    write_durably(path, b"x" * 100_000)
    assert path.read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D.manifest.jws"]


def test_rename_durably_moves_the_temporary_onto_the_name(tmp_path: Path) -> None:
    temporary, path = tmp_path / ".clip.tmp", tmp_path / "clip"
    temporary.write_bytes(b"ciphertext")
    rename_durably(temporary, path)
    assert path.read_bytes() == b"ciphertext" and not temporary.exists()


def test_replacing_durably_leaves_the_old_file_and_no_temporary_when_writing_fails(
    tmp_path: Path,
) -> None:
    path = tmp_path / "D.mp4.age"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="encryption failed"):
        with replacing_durably(path) as out:
            out.write(b"half a ciphertext")
            raise ValueError("encryption failed")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D.mp4.age"]
    with replacing_durably(path) as out:
        out.write(b"whole")
    assert path.read_bytes() == b"whole"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_long_file_written_in_pieces_comes_out_whole(tmp_path: Path) -> None:
    # Past WRITEBACK_BYTES the file's pages are sent to disk as it grows (and
    # dropped from the cache): what is read back must still be every byte.
    rng = random.Random(7)
    data = rng.randbytes(3 * WRITEBACK_BYTES + 12345)
    path = tmp_path / "clip.mp4.age"
    position = 0
    with replacing_durably(path) as out:
        while position < len(data):
            size = rng.choice([1, 4096, 65_552, 1 << 20, 5 << 20])
            piece = memoryview(data)[position : position + size]
            assert out.write(piece) == len(piece)
            position += len(piece)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
