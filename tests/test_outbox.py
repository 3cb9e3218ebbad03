"""The outbox: clips sealed once, read back chunk by chunk, never in the clear on disk."""

from __future__ import annotations

import hashlib
import io
import stat
import subprocess
from pathlib import Path

import pytest

from edge.buffer.clip import NoFootage, build_clip
from edge.clock import ManualClock
from edge.share.outbox import Outbox, OutboxError
from ringtools import (
    RunSpec,
    decode_frame_numbers,
    make_segments,
    open_ring,
    put_all,
    scan_for_plaintext,
)

SPEC = RunSpec(count=4)


@pytest.fixture
def ring_and_outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock = ManualClock(now_ms=SPEC.start_ms)
    ring = open_ring(tmp_path / "data", clock)
    put_all(ring, make_segments(SPEC), clock)
    outbox = Outbox(tmp_path / "data" / "outbox", tmp_path / "data" / "keys")
    yield ring, outbox, tmp_path / "data"
    ring.close()


def test_clip_is_sealed_once_and_reads_back_exactly(ring_and_outbox) -> None:  # type: ignore[no-untyped-def]
    ring, outbox, data_dir = ring_and_outbox
    start_ms, end_ms = SPEC.start_ms + 1000, SPEC.start_ms + 2500
    clip = outbox.build(7, ring, start_ms, end_ms)
    # The same window gives the same clip as `edge export` would build it.
    direct = io.BytesIO()
    info = build_clip(ring, start_ms, end_ms, direct)
    assert clip.sha256 == info.sha256 == hashlib.sha256(direct.getvalue()).hexdigest()
    plaintext = b"".join(outbox.open_plaintext(clip))
    assert plaintext == direct.getvalue()
    assert decode_frame_numbers(plaintext) == list(range(10, 30))  # key-frame aligned
    assert outbox.build(7, ring, start_ms, end_ms).path == clip.path  # reused, not rebuilt
    assert scan_for_plaintext(data_dir) == []
    assert outbox.clips_of(7) == [clip]


def test_reader_may_stop_early_and_tampering_is_caught(ring_and_outbox) -> None:  # type: ignore[no-untyped-def]
    ring, outbox, _ = ring_and_outbox
    clip = outbox.build(3, ring, SPEC.start_ms, SPEC.start_ms + 3900)
    chunks = outbox.open_plaintext(clip)
    next(chunks)
    chunks.close()  # a browser that stops watching: the decrypting thread ends
    sealed = bytearray(clip.path.read_bytes())
    sealed[-100] ^= 0x01
    clip.path.write_bytes(bytes(sealed))
    with pytest.raises(OutboxError):
        b"".join(outbox.open_plaintext(clip))


def test_no_footage_and_deletion(ring_and_outbox) -> None:  # type: ignore[no-untyped-def]
    ring, outbox, _ = ring_and_outbox
    with pytest.raises(NoFootage):
        outbox.build(5, ring, SPEC.start_ms - 100_000, SPEC.start_ms - 50_000)
    assert list(outbox.dir.iterdir()) == []  # nothing half-made left behind
    outbox.build(5, ring, SPEC.start_ms, SPEC.start_ms + 1000)
    outbox.build(5, ring, SPEC.start_ms, SPEC.start_ms + 2000)
    outbox.build(6, ring, SPEC.start_ms, SPEC.start_ms + 2000)
    assert outbox.delete_request(5) == 4  # two clips, two notes
    assert outbox.request_ids() == {6}


def test_the_sealed_clip_is_private_and_opens_with_the_age_tool(ring_and_outbox) -> None:  # type: ignore[no-untyped-def]
    # Sealing runs in a child process (beside the build, on another core): what it
    # writes must be a standard age file for the outbox key, readable by no one else.
    ring, outbox, data_dir = ring_and_outbox
    clip = outbox.build(9, ring, SPEC.start_ms, SPEC.start_ms + 3900)
    assert stat.S_IMODE(clip.path.stat().st_mode) == 0o600
    key = data_dir / "keys" / "outbox.agekey"
    opened = subprocess.run(
        ["age", "-d", "-i", str(key), str(clip.path)], capture_output=True, check=True
    ).stdout
    assert hashlib.sha256(opened).hexdigest() == clip.sha256
    assert decode_frame_numbers(opened) == list(range(0, 40))
    assert [p.name for p in outbox.dir.iterdir() if p.name.startswith(".")] == []  # no temp left
