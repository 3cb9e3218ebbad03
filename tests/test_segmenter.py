"""Segments from real H.264: decoded with PyAV, checked with ffprobe, remuxed by stream copy."""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge.buffer.segment import Segment
from edge.buffer.segmenter import Segmenter
from edge.capture import h264
from edge.capture.encoder import make_encoder
from edge.capture.types import EncodedPacket
from edge.capture.virtual import VirtualCamera
from edge.clock import ManualClock
from videotools import (
    ListSink,
    decode,
    expected_ms,
    ffmpeg_decodes,
    ffprobe_packets,
    ffprobe_stream,
    remux,
)

T0_MS = 1_767_225_600_000
FPS = 30


def encoded_run(frames: int, *, keyframe_interval: int = 60, fps: int = FPS) -> list[EncodedPacket]:
    """Packets for ``frames`` frames of the virtual camera, labelled from T0_MS."""
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, fps, clock, paced=False)
    camera.start()
    encoder = make_encoder("libx264", 320, 180, fps, 30, None, keyframe_interval)
    packets: list[EncodedPacket] = []
    for _ in range(frames):
        frame = camera.read(1.0)
        assert frame is not None
        packets += encoder.encode(frame)
    return packets + encoder.flush()


def segment(packets: list[EncodedPacket], segment_seconds: float = 2.0) -> list[Segment]:
    sink = ListSink()
    segmenter = Segmenter(sink, "porch", "run-1", segment_seconds)
    for packet in packets:
        segmenter.add(packet)
    segmenter.close()
    return sink.segments


@pytest.fixture(scope="module")
def run_packets() -> list[EncodedPacket]:
    return encoded_run(200)  # 6.67 s: segments of 60, 60, 60 and 20 frames


@pytest.fixture(scope="module")
def segments(run_packets: list[EncodedPacket]) -> list[Segment]:
    return segment(run_packets)


def test_every_frame_once_in_order_with_its_time_across_boundaries(segments: list[Segment]) -> None:
    assert [s.meta.frame_count for s in segments] == [60, 60, 60, 20]
    seen = []
    for k, seg in enumerate(segments):
        frames = decode(seg.mp4)  # each segment decodes alone
        assert frames[0].keyframe, "a segment starts with a key frame"
        assert len(frames) == seg.meta.frame_count
        assert seg.meta.sequence == k
        assert (seg.meta.camera, seg.meta.run_id) == ("porch", "run-1")
        assert (seg.meta.width, seg.meta.height) == (320, 180)
        assert seg.meta.first_frame_ms == frames[0].capture_time_ms
        assert seg.meta.last_frame_ms == frames[-1].capture_time_ms
        assert seg.meta.clock_synced
        seen += frames
    assert [f.sequence for f in seen] == list(range(200))
    assert [f.capture_time_ms for f in seen] == [expected_ms(T0_MS, n, FPS) for n in range(200)]
    # Timestamps inside segments are the run's: frame n is at n/30 s in every segment.
    assert [round(f.pts_s * FPS) for f in seen] == list(range(200))


def test_each_segment_is_a_fragmented_mp4_that_ffmpeg_plays_alone(
    segments: list[Segment], tmp_path: Path
) -> None:
    for seg in segments:
        assert seg.mp4[4:8] == b"ftyp"
        assert b"moov" in seg.mp4[:4096] and b"moof" in seg.mp4 and b"mvex" in seg.mp4
        path = tmp_path / f"{seg.meta.sequence}.mp4"
        path.write_bytes(seg.mp4)
        assert ffmpeg_decodes(path)
        stream = ffprobe_stream(path)
        assert int(stream["nb_read_frames"]) == seg.meta.frame_count
        assert float(stream["start_time"]) == pytest.approx(seg.meta.sequence * 2.0)


@pytest.mark.parametrize("chosen", [slice(0, 4), slice(1, 3), slice(2, 4)])
def test_any_run_of_segments_remuxes_into_one_continuous_mp4(
    segments: list[Segment], tmp_path: Path, chosen: slice
) -> None:
    out = tmp_path / "clip.mp4"
    remux([s.mp4 for s in segments[chosen]], out)
    expected_frames = sum(s.meta.frame_count for s in segments[chosen])
    stream = ffprobe_stream(out)
    assert stream["codec_name"] == "h264"
    assert int(stream["nb_read_frames"]) == expected_frames
    packets = ffprobe_packets(out)
    assert len(packets) == expected_frames
    dts = [int(p["dts"]) for p in packets]
    steps = {b - a for a, b in itertools.pairwise(dts)}
    assert len(steps) == 1, f"decode times step unevenly: {sorted(steps)}"
    assert ffmpeg_decodes(out)
    frames = decode(out)
    first = segments[chosen][0].meta.sequence * 60
    assert [f.sequence for f in frames] == list(range(first, first + expected_frames))


def test_segments_are_made_in_memory_without_temporary_files(
    run_packets: list[EncodedPacket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = tmp_path / "tmp"
    watched.mkdir()
    monkeypatch.setenv("TMPDIR", str(watched))
    monkeypatch.setattr(tempfile, "tempdir", None)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert len(segment(run_packets)) == 4
    assert os.listdir(watched) == [] and os.listdir(cwd) == []


def test_a_dropped_frame_leaves_a_gap_in_time_not_a_broken_stream(tmp_path: Path) -> None:
    # The encoder never saw frame 70; timestamps skip it and segment 2 still starts at 60.
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, FPS, clock, paced=False)
    camera.start()
    encoder = make_encoder("libx264", 320, 180, FPS, 30, None, 60)
    packets: list[EncodedPacket] = []
    for n in range(120):
        frame = camera.read(1.0)
        assert frame is not None
        if n != 70:
            packets += encoder.encode(frame)
    packets += encoder.flush()
    segs = segment(packets)
    assert [s.meta.frame_count for s in segs] == [60, 59]
    out = tmp_path / "clip.mp4"
    remux([s.mp4 for s in segs], out)
    frames = decode(out)
    assert [f.sequence for f in frames] == [n for n in range(120) if n != 70]
    assert [round(f.pts_s * FPS) for f in frames] == [n for n in range(120) if n != 70]


def test_cuts_only_at_key_frames_near_the_target_length() -> None:
    # Key frames every 15 frames (0.5 s), segments of 1.2 s: a segment ends at the
    # first key frame at or past its target length (minus half a frame).
    segs = segment(encoded_run(90, keyframe_interval=15), segment_seconds=1.2)
    assert [s.meta.frame_count for s in segs] == [45, 45]
    for seg in segs:
        frames = decode(seg.mp4)
        assert frames[0].keyframe


def test_skips_packets_before_the_first_key_frame(run_packets: list[EncodedPacket]) -> None:
    segs = segment(run_packets[5:])  # starts mid-way through the first group of pictures
    assert [s.meta.frame_count for s in segs] == [60, 60, 20]
    assert decode(segs[0].mp4)[0].sequence == 60


def test_a_key_frame_without_sps_pps_gets_them_so_its_segment_stands_alone(
    run_packets: list[EncodedPacket],
) -> None:
    stripped = []
    for packet in run_packets:
        if packet.is_keyframe and packet.sequence > 0:
            kept = [nal for nal in h264.iter_nal_units(packet.data) if nal[0] & 0x1F not in (7, 8)]
            data = b"".join(b"\x00\x00\x00\x01" + nal for nal in kept)
            assert not h264.has_parameter_sets(data)
            packet = dataclasses.replace(packet, data=data)
        stripped.append(packet)
    segs = segment(stripped)
    assert len(segs) == 4
    assert [len(decode(s.mp4)) for s in segs] == [60, 60, 60, 20]


def test_clock_sync_is_per_segment_all_frames_or_nothing(run_packets: list[EncodedPacket]) -> None:
    marked = [dataclasses.replace(p, clock_synced=not (60 <= p.sequence < 62)) for p in run_packets]
    assert [s.meta.clock_synced for s in segment(marked)] == [True, False, True, True]


def test_decode_times_that_go_back_are_moved_on(run_packets: list[EncodedPacket]) -> None:
    shaken = list(run_packets)
    shaken[10] = dataclasses.replace(shaken[10], pts=9, dts=9)  # same time as frame 9
    segs = segment(shaken)
    assert sum(len(decode(s.mp4)) for s in segs) == 200


def test_microsecond_timestamps_like_picamera2(run_packets: list[EncodedPacket]) -> None:
    # Encoded sources count in microseconds; a segment still lasts 60 frames at 30 fps.
    us = Fraction(1, 1_000_000)
    jittered = [
        dataclasses.replace(
            p,
            pts=p.sequence * 33_333 + (p.sequence % 3) * 50,
            dts=p.sequence * 33_333 + (p.sequence % 3) * 50,
            time_base=us,
        )
        for p in run_packets
    ]
    segs = segment(jittered)
    assert [s.meta.frame_count for s in segs] == [60, 60, 60, 20]
    with av.open(io.BytesIO(segs[1].mp4), "r") as container:
        first = next(iter(container.demux(video=0)))
        assert first.pts is not None and first.time_base is not None
        assert float(first.pts * first.time_base) == pytest.approx(60 * 0.033333, abs=1e-4)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="segment_seconds"):
        Segmenter(ListSink(), "porch", "run", 0)
    segmenter = Segmenter(ListSink(), "porch", "run", 2)
    segmenter.close()
    with pytest.raises(RuntimeError, match="closed"):
        segmenter.add(encoded_run(1)[0])
