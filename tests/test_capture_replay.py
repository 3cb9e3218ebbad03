"""`camera.file`: real recordings made with ffmpeg, passed through without decoding."""

from __future__ import annotations

import collections
import itertools
import subprocess
from pathlib import Path

import pytest

from edge.buffer.segmenter import Segmenter
from edge.capture import open_source
from edge.capture.replay import FileReplaySource, ReplayError
from edge.capture.types import EncodedPacket
from edge.clock import ManualClock, SystemClock
from videotools import ListSink, ffmpeg_decodes, ffprobe_packets, ffprobe_stream, make_video, remux

T0_MS = 1_767_225_600_000


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    mp4 = make_video(root / "bframes.mp4", seconds=2, codec_args=("-c:v", "libx264", "-g", "30"))
    return {
        "mp4": mp4,  # libx264 defaults: B-frames, avcC (length-prefixed) packets
        "mkv": make_video(root / "clip.mkv", seconds=2),
        "h264": make_video(
            root / "raw.h264", seconds=2, codec_args=("-c:v", "libx264", "-g", "30", "-bf", "0")
        ),
        "h264_bframes": make_video(root / "braw.h264", seconds=1),
        "mpeg4": make_video(root / "old.mp4", seconds=1, codec_args=("-c:v", "mpeg4")),
    }


def read_packets(source: FileReplaySource, count: int) -> list[EncodedPacket]:
    packets = []
    for _ in range(count):
        packet = source.read(1.0)
        assert packet is not None
        packets.append(packet)
    return packets


def framemd5(path: Path) -> list[str]:
    """The MD5 of every decoded picture, in presentation order."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    ).stdout
    return [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("kind", ["mp4", "mkv", "h264"])
def test_passes_packets_through_looped_with_continuous_times(
    videos: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    source = FileReplaySource(videos[kind], ManualClock(T0_MS), paced=False)
    assert source.output == "encoded"
    assert (source.video_format.width, source.video_format.height) == (320, 180)
    assert source.video_format.fps == 30
    source.start()
    sink = ListSink()
    segmenter = Segmenter(sink, "porch", "run", 1.0)
    packets = read_packets(source, 150)  # 2.5 passes over a 2 s file
    for packet in packets:
        segmenter.add(packet)
    segmenter.close()

    assert [p.sequence for p in packets] == list(range(150))
    for packet in packets:
        assert packet.data[:4] == b"\x00\x00\x00\x01" or packet.data[:3] == b"\x00\x00\x01"
    # Re-timed to now: the first frame shown is labelled with the start, the rest follow
    # at 30 fps through the loop seams.
    times = sorted(p.capture_time_ms - T0_MS for p in packets)
    first_shown = times[0]
    assert first_shown < 100
    for n, ms in enumerate(times):
        assert abs(ms - (first_shown + n * 1000 / 30)) <= 1

    # Stream copy of the segments decodes to exactly the file's pictures, loop after
    # loop: nothing was re-encoded.
    out = tmp_path / "clip.mp4"
    remux([s.mp4 for s in sink.segments], out)
    assert ffmpeg_decodes(out)
    original = framemd5(videos[kind])
    assert len(original) == 60
    replayed = framemd5(out)
    # Decode order cuts B-frame files mid-group: compare what was shown in full.
    assert replayed[:120] == original + original
    stream = ffprobe_stream(out)
    assert int(stream["nb_read_frames"]) == 150
    pts = sorted(int(p["pts"]) for p in ffprobe_packets(out))
    steps = collections.Counter(b - a for a, b in itertools.pairwise(pts))
    # 3000 ticks of 1/90000 s per frame; an mkv's millisecond timestamps round to 2970/3060.
    assert all(abs(step - 3000) <= 90 for step in steps), f"a gap at a seam: {steps}"


def test_paced_in_real_time(videos: dict[str, Path]) -> None:
    clock = SystemClock()
    source = FileReplaySource(videos["h264"], clock)
    source.start()
    start_s, start_ms = clock.monotonic_s(), clock.now_ms()
    packets = read_packets(source, 12)
    elapsed_s = clock.monotonic_s() - start_s
    assert 11 / 30 - 0.01 <= elapsed_s < 11 / 30 + 2.0
    assert abs(packets[0].capture_time_ms - start_ms) < 50
    assert packets[11].capture_time_ms - packets[0].capture_time_ms == round(11 * 1000 / 30)
    source.stop()
    assert source.read(5.0) is None


def test_refuses_what_it_cannot_replay(videos: dict[str, Path], tmp_path: Path) -> None:
    clock = ManualClock(T0_MS)
    with pytest.raises(ReplayError, match="does not exist"):
        FileReplaySource(tmp_path / "missing.mp4", clock)
    with pytest.raises(ReplayError, match=r"mpeg4, not H\.264"):
        FileReplaySource(videos["mpeg4"], clock)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(ReplayError, match="cannot be read"):
        FileReplaySource(garbage, clock)
    source = FileReplaySource(videos["h264_bframes"], clock, paced=False)
    source.start()
    with pytest.raises(ReplayError, match="B-frames"):
        read_packets(source, 5)


def test_open_source_replays_camera_file(videos: dict[str, Path]) -> None:
    source = open_source("virtual", 1280, 720, 30, None, videos["mkv"], ManualClock(T0_MS))
    assert isinstance(source, FileReplaySource)
    assert source.video_format.width == 320, "the file's size, not the configured one"
