"""The outbox: clips sealed once, read back chunk by chunk, never in the clear on disk."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from edge.buffer import agefile
from edge.buffer.clip import NoFootage, build_clip
from edge.buffer.index import SegmentRecord
from edge.buffer.seal import OpenedSegment
from edge.clock import ManualClock
from edge.priority import BACKGROUND_NICE
from edge.share.outbox import Outbox, OutboxError
from faults import mounted_tmpfs
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
    # Sealing runs on a thread of its own (beside the build, on another core): what
    # it writes must be a standard age file for the outbox key, readable by no one else.
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


class WatchedSource:
    """The real ring, as the clip builder reads it, noting which thread reads it."""

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self.readers: set[tuple[str, int]] = set()

    def overlapping(self, start_ms: int, end_ms: int) -> list[SegmentRecord]:
        return self._ring.overlapping(start_ms, end_ms)  # type: ignore[no-any-return]

    def open_segment(self, record: SegmentRecord, **options: Any) -> OpenedSegment:
        self.readers.add((threading.current_thread().name, nice_of_this_thread()))
        return self._ring.open_segment(record, **options)  # type: ignore[no-any-return]


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_building_and_sealing_run_below_the_recordings_priority(
    ring_and_outbox, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    ring, outbox, _ = ring_and_outbox
    recording_nice = nice_of_this_thread()
    background = min(19, recording_nice + BACKGROUND_NICE)
    sealers: set[tuple[str, int]] = set()
    real_write = agefile.AgeWriter.write

    def watched_write(self: agefile.AgeWriter, data: bytes | bytearray | memoryview) -> int:
        sealers.add((threading.current_thread().name, nice_of_this_thread()))
        return real_write(self, data)

    monkeypatch.setattr(agefile.AgeWriter, "write", watched_write)
    source = WatchedSource(ring)
    clip = outbox.build(4, source, SPEC.start_ms, SPEC.start_ms + 3900)
    assert source.readers == {("edge-outbox-build", background)}
    assert sealers == {("edge-outbox-seal", background)}
    assert nice_of_this_thread() == recording_nice  # the caller's own is untouched
    assert hashlib.sha256(b"".join(outbox.open_plaintext(clip))).hexdigest() == clip.sha256


def test_a_full_disk_fails_the_build_cleanly_and_it_works_once_there_is_room(
    ring_and_outbox, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ring, _, data_dir = ring_and_outbox
    with mounted_tmpfs(tmp_path / "card", "128k") as card:
        outbox = Outbox(card / "outbox", data_dir / "keys")
        filler = card / "filler"
        stats = os.statvfs(card)
        filler.write_bytes(bytes(stats.f_bavail * stats.f_frsize - 8192))  # 8 KiB left
        with pytest.raises(OutboxError, match=r"could not write the sealed clip: .*No space"):
            outbox.build(8, ring, SPEC.start_ms, SPEC.start_ms + 3900)
        assert list(outbox.dir.iterdir()) == []  # no part of a clip, no note
        assert outbox.find(8, SPEC.start_ms, SPEC.start_ms + 3900) is None
        filler.unlink()
        clip = outbox.build(8, ring, SPEC.start_ms, SPEC.start_ms + 3900)
        assert decode_frame_numbers(b"".join(outbox.open_plaintext(clip))) == list(range(40))
