"""The clip builder: real sealed rings, clips checked with PyAV and ffprobe, frame by frame.

Every frame carries its number (tests/ringtools.py), so each test says exactly
which frames a clip must hold. Stand-in: the clock (ManualClock).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import subprocess
import threading
import tracemalloc
from pathlib import Path

import av
import pytest

from edge.buffer import fmp4
from edge.buffer.clip import ClipInfo, NoFootage, build_clip
from edge.buffer.ring import SEGMENTS_DIR, Ring
from edge.clock import ManualClock
from ringtools import (
    T0_MS,
    HashingSink,
    RunSpec,
    decode_frame_numbers,
    frames_of,
    make_segments,
    open_ring,
    put_all,
    read_stamp,
)

RUN_A = RunSpec(count=12)  # segments of 1 s (10 frames), frames 0..119, from T0
RUN_B = RunSpec(count=6, start_ms=T0_MS + 60_000, first_frame_number=1000, run_id="run-b")


@pytest.fixture
def ring(tmp_path: Path) -> Ring:
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RUN_A), clock)
    put_all(ring, make_segments(RUN_B), clock)
    return ring


def clip_bytes(ring: Ring, start_ms: int, end_ms: int) -> tuple[bytes, ClipInfo]:
    out = io.BytesIO()
    info = build_clip(ring, start_ms, end_ms, out)
    return out.getvalue(), info


def ffprobe(data: bytes) -> dict[str, object]:
    """ffprobe of a clip read from a pipe; fails on any error it reports."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames:packet=pts,dts",
            "-of",
            "json",
            "-i",
            "pipe:0",
        ],
        input=data,
        capture_output=True,
        check=True,
    )
    assert result.stderr == b"", result.stderr.decode()
    return json.loads(result.stdout)


def test_window_inside_a_run_gives_exactly_its_segments(ring: Ring) -> None:
    data, info = clip_bytes(ring, T0_MS + 2_500, T0_MS + 5_200)
    # Key-frame aligned: whole segments 2..5 (the window starts inside 2, ends inside 5).
    assert decode_frame_numbers(data) == list(range(20, 60))
    assert (info.first_frame_ms, info.last_frame_ms) == (T0_MS + 2_000, T0_MS + 5_900)
    assert (info.segments, info.frames, info.duration_ms) == (4, 40, 4_000)
    assert info.gaps == () and info.skipped == () and info.clock_synced
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)
    probe = ffprobe(data)
    assert probe["streams"] == [{"codec_name": "h264", "nb_read_frames": "40"}]
    dts = [int(p["dts"]) for p in probe["packets"]]  # type: ignore[index]
    assert dts == sorted(dts) and len(set(dts)) == len(dts) and dts[0] == 0


def test_random_windows_are_key_frame_aligned(ring: Ring) -> None:
    rng = random.Random(3)
    for _ in range(8):
        start_ms = T0_MS + rng.randrange(0, 11_900)
        end_ms = start_ms + rng.randrange(0, 3_000)
        # Segment k holds frames captured at T0 + k s .. T0 + k s + 900 ms.
        first_segment = next(k for k in range(12) if T0_MS + k * 1000 + 900 >= start_ms)
        last_segment = max(k for k in range(12) if T0_MS + k * 1000 <= end_ms)
        if first_segment > last_segment:  # the window falls between two frames
            with pytest.raises(NoFootage):
                clip_bytes(ring, start_ms, end_ms)
            continue
        frames = decode_frame_numbers(clip_bytes(ring, start_ms, end_ms)[0])
        # At most one segment more on each side: precisely the segments with a
        # frame captured in the window.
        assert frames == list(range(first_segment * 10, last_segment * 10 + 10)), (start_ms, end_ms)


def test_a_window_across_a_gap_gives_one_continuous_clip_and_says_so(ring: Ring) -> None:
    data, info = clip_bytes(ring, T0_MS + 10_000, T0_MS + 61_500)
    assert decode_frame_numbers(data) == list(range(100, 120)) + list(range(1000, 1020))
    assert info.gaps[0].after_ms == T0_MS + 11_900
    assert info.gaps[0].before_ms == T0_MS + 60_000
    assert info.gaps[0].clip_offset_ms == 2_000  # where playback jumps over it
    assert len(info.gaps) == 1
    # Rebased: the clip plays straight on, 40 frames at 10 fps.
    assert info.duration_ms == 4_000
    probe = ffprobe(data)
    pts = sorted(int(p["pts"]) for p in probe["packets"])  # type: ignore[index]
    steps = {b - a for a, b in itertools.pairwise(pts)}
    assert len(steps) == 1  # evenly spaced throughout, across the gap too


@pytest.mark.parametrize("segmenter_style", [True, False])
def test_b_frames_and_both_segment_timing_styles(tmp_path: Path, segmenter_style: bool) -> None:
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    run = RunSpec(count=5, bframes=True, segmenter_style=segmenter_style)
    later = RunSpec(
        count=3,
        start_ms=T0_MS + 30_000,
        first_frame_number=500,
        run_id="r2",
        segmenter_style=segmenter_style,
    )
    put_all(ring, make_segments(run), clock)
    put_all(ring, make_segments(later), clock)
    data, info = clip_bytes(ring, T0_MS, T0_MS + 40_000)
    assert decode_frame_numbers(data) == list(range(0, 50)) + list(range(500, 530))
    assert ffprobe(data)["streams"] == [{"codec_name": "h264", "nb_read_frames": "80"}]
    assert info.frames == 80
    ring.close()


def test_runs_with_different_time_bases_join_evenly(tmp_path: Path) -> None:
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RunSpec(count=3)), clock)  # 1/90000, like the segmenter
    plain = RunSpec(
        count=3,
        start_ms=T0_MS + 10_000,
        first_frame_number=300,
        run_id="r2",
        segmenter_style=False,  # the muxer's own time base
    )
    put_all(ring, make_segments(plain), clock)
    data, info = clip_bytes(ring, T0_MS, T0_MS + 20_000)
    assert decode_frame_numbers(data) == list(range(0, 30)) + list(range(300, 330))
    assert info.duration_ms == 6_000
    pts = sorted(int(p["pts"]) for p in ffprobe(data)["packets"])  # type: ignore[index]
    assert len({b - a for a, b in itertools.pairwise(pts)}) == 1
    ring.close()


def test_a_new_run_at_another_resolution_still_decodes(tmp_path: Path) -> None:
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RunSpec(count=3)), clock)
    other = RunSpec(
        count=3,
        width=352,
        height=288,
        start_ms=T0_MS + 10_000,
        first_frame_number=700,
        run_id="r2",
        segmenter_style=False,  # SPS/PPS only out of band: the hard case
    )
    put_all(ring, make_segments(other), clock)
    data, _ = clip_bytes(ring, T0_MS, T0_MS + 20_000)
    assert decode_frame_numbers(data) == list(range(0, 30)) + list(range(700, 730))
    ring.close()


def test_streams_to_a_pipe_without_seeking(ring: Ring) -> None:
    probe = subprocess.Popen(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "json",
            "-i",
            "pipe:0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert probe.stdin is not None
    info = build_clip(ring, T0_MS, T0_MS + 11_999, probe.stdin)  # a real pipe: cannot seek
    stdout, stderr = probe.communicate(timeout=60)  # closes the pipe: end of clip
    assert stderr == b""
    assert json.loads(stdout)["streams"] == [{"nb_read_frames": "120"}]
    assert info.frames == 120


class _WriteOnly:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def seek(self, *args: object) -> int:
        raise AssertionError("the clip builder must never seek")

    def tell(self) -> int:
        raise AssertionError("the clip builder must never tell")


def test_never_seeks_even_when_the_output_could(ring: Ring) -> None:
    out = _WriteOnly()
    info = build_clip(ring, T0_MS, T0_MS + 3_000, out)  # type: ignore[arg-type]
    assert len(out.chunks) > 1  # written as it goes, not in one piece at the end
    assert hashlib.sha256(b"".join(out.chunks)).hexdigest() == info.sha256


def test_no_footage(ring: Ring) -> None:
    out = io.BytesIO()
    with pytest.raises(NoFootage, match="no footage"):
        build_clip(ring, T0_MS + 20_000, T0_MS + 50_000, out)  # in the gap
    with pytest.raises(NoFootage):
        build_clip(ring, T0_MS - 100_000, T0_MS - 1, out)  # before it all
    assert out.getvalue() == b""
    with pytest.raises(ValueError):
        build_clip(ring, T0_MS + 5, T0_MS, out)


def test_all_damaged_is_no_footage_with_the_reason(ring: Ring, tmp_path: Path) -> None:
    for record in ring.overlapping(T0_MS, T0_MS + 1_500):
        (tmp_path / "buffer" / SEGMENTS_DIR / record.file_name).write_bytes(b"junk")
    out = io.BytesIO()
    with pytest.raises(NoFootage, match="truncated"):
        build_clip(ring, T0_MS, T0_MS + 1_500, out)
    assert out.getvalue() == b""


def test_nothing_outside_the_window_is_read(ring: Ring, tmp_path: Path) -> None:
    inside = {r.file_name for r in ring.overlapping(T0_MS + 4_000, T0_MS + 6_000)}
    for path in (tmp_path / "buffer" / SEGMENTS_DIR).iterdir():
        if path.name not in inside:
            path.write_bytes(b"would fail to open")  # any read of these is reported
    _, info = clip_bytes(ring, T0_MS + 4_000, T0_MS + 6_000)
    assert info.skipped == () and info.segments == 3


def test_unsynchronised_footage_is_flagged(tmp_path: Path) -> None:
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RunSpec(count=2)), clock)
    put_all(
        ring,
        make_segments(
            RunSpec(
                count=2,
                start_ms=T0_MS + 2_000,
                first_frame_number=20,
                run_id="r2",
                clock_synced=False,
            )
        ),
        clock,
    )
    assert clip_bytes(ring, T0_MS, T0_MS + 1_500)[1].clock_synced
    assert not clip_bytes(ring, T0_MS, T0_MS + 3_500)[1].clock_synced
    ring.close()


def test_memory_does_not_grow_with_the_window(tmp_path: Path) -> None:
    # Big (noisy) segments, so holding several at once would show.
    run = RunSpec(count=40, frames_per_segment=5, noise=112)
    segments = make_segments(run)
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    put_all(ring, segments, clock)
    segment_bytes = max(len(s.mp4) for s in segments)

    def peak_bytes(count: int) -> int:
        tracemalloc.start()
        try:
            build_clip(ring, T0_MS, segments[count - 1].meta.last_frame_ms, HashingSink())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak_bytes(4), peak_bytes(40)
    # Python-level allocations only (tracemalloc); ffmpeg's own buffers are not
    # counted, but they hold at most one fragment (one segment) by construction.
    assert long < short + 2 * segment_bytes, (short, long, segment_bytes)
    assert long < 8 * segment_bytes  # 40 segments never all in memory
    ring.close()


def test_exports_while_recording(tmp_path: Path) -> None:
    segments = make_segments(RunSpec(count=30, frames_per_segment=5))
    clock = ManualClock(T0_MS)
    ring = open_ring(tmp_path, clock)
    put_all(ring, segments[:10], clock)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def export() -> None:
        try:
            for _ in range(5):
                out = io.BytesIO()
                build_clip(ring, T0_MS, segments[9].meta.last_frame_ms, out)
                results.append(decode_frame_numbers(out.getvalue()))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=export, name="test-export")
    thread.start()
    put_all(ring, segments[10:], clock)
    thread.join(timeout=60)
    assert errors == []
    assert results == [frames_of(segments[:10])] * 5
    ring.close()


def test_segments_are_joined_byte_for_byte_not_re_encoded_or_remuxed(ring: Ring) -> None:
    data, info = clip_bytes(ring, T0_MS + 2_500, T0_MS + 5_200)
    sources = make_segments(RUN_A)[2:6]
    clip = fmp4.parse_segment(data)  # the clip has the same plain layout as a segment
    first = fmp4.parse_segment(sources[0].mp4)
    assert clip.init(data) == first.init(sources[0].mp4)  # ftyp + moov as recorded
    assert len(clip.fragments) == len(sources) == info.segments
    for fragment, source in zip(clip.fragments, sources, strict=True):
        (original,) = fmp4.parse_segment(source.mp4).fragments
        # Sample data and the sample table are the recorded bytes; only the
        # sequence number and the decode time differ.
        mdat_from = fragment.time_at + fragment.time_bytes
        original_from = original.time_at + original.time_bytes
        assert data[mdat_from : fragment.end] == source.mp4[original_from : original.end]
    times = [f.decode_time for f in clip.fragments]
    assert times == [0, 90_000, 180_000, 270_000]  # 1 s segments at 90 kHz, from 0


def test_the_clip_can_be_seeked_through_its_mfra(ring: Ring) -> None:
    data, _ = clip_bytes(ring, T0_MS, T0_MS + 11_900)
    assert data[-16:-12] == b"\x00\x00\x00\x10" and data[-12:-8] == b"mfro"
    mfra_size = int.from_bytes(data[-4:], "big")
    assert data[-mfra_size + 4 : -mfra_size + 8] == b"mfra"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        container.seek(int(7.0 / stream.time_base), stream=stream)  # 7 s into the clip
        frame = next(container.decode(stream))
        assert read_stamp(frame) == 70  # segment 7 starts with frame 70, a key frame
