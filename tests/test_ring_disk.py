"""A full disk: the ring on a real 8 MiB tmpfs (mounted here as root, else skipped).

Recording must go on: the oldest segments go at once, the newest are kept, and
nothing listed is ever corrupt. Stand-in: the clock (ManualClock).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import edge.buffer.ring as ring_module
from edge.buffer.clip import build_clip
from edge.clock import ManualClock
from faults import fill_disk, mounted_tmpfs
from ringtools import (
    T0_MS,
    RunSpec,
    decode_frame_numbers,
    make_segments,
    open_ring,
    put_all,
    scan_for_plaintext,
)

TMPFS_BYTES = 8 * 1024 * 1024
# Incompressible noise rows make each 5-frame segment ~150 kB: 8 MiB holds ~50.
BIG = RunSpec(count=150, frames_per_segment=5, noise=112)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", str(TMPFS_BYTES)) as mount_point:
        yield mount_point


def test_recording_goes_on_when_the_disk_fills(small_disk: Path) -> None:
    clock = ManualClock(T0_MS)
    data_dir = small_disk / "data"
    segments = make_segments(BIG)
    assert sum(len(s.mp4) for s in segments) > 2 * TMPFS_BYTES  # fills it twice over
    ring = open_ring(data_dir, clock, max_bytes=1 << 40)  # only the disk limits it
    put_all(ring, segments, clock)
    status = ring.status()
    assert status.dropped_segments == 0
    listed = [r.meta.sequence for r in ring.overlapping(0, 2**62)]
    assert listed[-1] == BIG.count - 1  # the newest is kept
    assert listed == list(range(listed[0], BIG.count))  # oldest went first, no holes
    assert len(listed) >= 20
    assert ring.verify() == []
    # The last seconds export with exactly their frames.
    last = segments[-4:]
    out = io.BytesIO()
    build_clip(ring, last[0].meta.first_frame_ms, last[-1].meta.last_frame_ms, out)
    assert decode_frame_numbers(out.getvalue()) == list(range(146 * 5, 150 * 5))
    ring.close()
    reopened = open_ring(data_dir, clock, max_bytes=1 << 40)
    assert [r.meta.sequence for r in reopened.overlapping(0, 2**62)] == listed
    reopened.close()
    assert scan_for_plaintext(data_dir) == []


def test_another_process_filling_the_disk(small_disk: Path) -> None:
    clock = ManualClock(T0_MS)
    data_dir = small_disk / "data"
    segments = make_segments(BIG)
    ring = open_ring(data_dir, clock, max_bytes=1 << 40)
    put_all(ring, segments[:20], clock)
    # Something else takes every free byte: the ring gives up its oldest footage.
    fill_disk(small_disk / "filler")
    put_all(ring, segments[20:30], clock)
    listed = [r.meta.sequence for r in ring.overlapping(0, 2**62)]
    assert listed[-1] == 29 and listed == list(range(listed[0], 30))
    assert listed[0] > 0
    assert ring.status().dropped_segments == 0
    assert ring.verify() == []
    ring.close()


def test_nothing_left_to_evict_drops_the_segment_and_recording_resumes(small_disk: Path) -> None:
    clock = ManualClock(T0_MS)
    data_dir = small_disk / "data"
    segments = make_segments(BIG)
    ring = open_ring(data_dir, clock, max_bytes=1 << 40)
    filler = small_disk / "filler"
    fill_disk(filler)
    ring.put(segments[0])  # does not raise: the segmenter thread must live on
    assert ring.status().dropped_segments == 1
    assert ring.status().segments == 0
    assert list((data_dir / "buffer" / "segments").iterdir()) == []  # no temp leftover
    filler.unlink()
    put_all(ring, segments[1:4], clock)
    assert [r.meta.sequence for r in ring.overlapping(0, 2**62)] == [1, 2, 3]
    assert ring.verify() == []
    ring.close()


def test_write_failures_without_the_free_space_margin(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the reserve the ring only learns of a full disk from ENOSPC (segment
    # file) or SQLITE_FULL (index row): the paths a disk that fills under us takes.
    monkeypatch.setattr(ring_module, "DISK_RESERVE_BYTES", 0)
    clock = ManualClock(T0_MS)
    data_dir = small_disk / "data"
    segments = make_segments(BIG)
    ring = open_ring(data_dir, clock, max_bytes=1 << 40)
    put_all(ring, segments, clock)
    listed = [r.meta.sequence for r in ring.overlapping(0, 2**62)]
    assert listed[-1] == BIG.count - 1
    assert listed == list(range(listed[0], BIG.count))
    assert ring.status().dropped_segments == 0
    assert ring.verify() == []
    ring.close()
