"""The OpenCV source on real video files made with ffmpeg (a webcam cannot run here)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from edge.buffer.segmenter import Segmenter
from edge.capture import open_source
from edge.capture.encoder import make_encoder
from edge.capture.opencv_source import OpenCVSource, capture_target
from edge.capture.types import RawFrame
from edge.clock import SystemClock
from edge.recorder import Recorder
from videotools import ListSink, decode, ffmpeg_decodes, make_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("opencv") / "testsrc.mp4", seconds=1, fps=30)


def file_lumas(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p")[: f.height] for f in container.decode(video=0)]


def read_frames(source: OpenCVSource, count: int, timeout_s: float = 5.0) -> list[RawFrame]:
    clock = SystemClock()
    deadline_s = clock.monotonic_s() + timeout_s
    frames: list[RawFrame] = []
    while len(frames) < count and clock.monotonic_s() < deadline_s:
        frame = source.read(0.2)
        if frame is not None:
            frames.append(frame)
    assert len(frames) == count
    return frames


def test_reads_a_file_as_i420_paced_and_looping(video: Path) -> None:
    clock = SystemClock()
    # 100 fps keeps the test short; the file has 30 frames and is played again at its end.
    source = OpenCVSource(str(video), 320, 180, 100, clock)
    assert "cv2" in sys.modules and source.output == "raw"
    source.start()
    start_s = clock.monotonic_s()
    frames = read_frames(source, 45)
    elapsed_s = clock.monotonic_s() - start_s
    assert 0.43 <= elapsed_s < 5, "paced at the configured rate: 44 intervals of 10 ms"
    assert [f.sequence for f in frames] == list(range(45))
    times = [f.capture_time_ms for f in frames]
    assert times == sorted(times) and 430 <= times[-1] - times[0] < 5000
    expected = file_lumas(video)
    for n, frame in enumerate(frames):
        assert frame.data.shape == (270, 320) and frame.data.dtype == np.uint8
        diff = np.abs(frame.y.astype(int) - expected[n % 30].astype(int))
        assert diff.mean() < 2.0, f"frame {n} is not the file's frame {n % 30}"
    source.stop()
    assert source.read(1.0) is None


def test_scales_frames_to_the_configured_size(
    video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = OpenCVSource(str(video), 640, 360, 100, SystemClock())
    source.start()
    with caplog.at_level(logging.WARNING):
        frame = read_frames(source, 1)[0]
    assert (frame.width, frame.height, frame.data.shape) == (640, 360, (540, 640))
    assert "delivers 320x180, scaling to the configured 640x360" in caplog.text
    source.close()


def test_reconnects_with_backoff_and_says_so(
    video: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A device that is not there yet (unplugged camera, stream down): the source retries
    # with growing waits, logs each failure, and picks up as soon as it appears.
    later = tmp_path / "camera.mp4"
    source = OpenCVSource(str(later), 320, 180, 100, SystemClock(), initial_backoff_s=0.02)
    source.start()
    with caplog.at_level(logging.WARNING):
        for _ in range(8):
            assert source.read(0.05) is None
        failures = [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()]
        assert len(failures) >= 2
        assert "trying again in 0.0 s" in failures[0] and "trying again in 0.1 s" in failures[2]
        shutil.copy(video, later)
        frames = read_frames(source, 3)
    assert frames[0].sequence == 0
    assert any("is back after" in r.getMessage() for r in caplog.records)
    source.close()


def test_records_through_the_whole_pipeline(video: Path, tmp_path: Path) -> None:
    clock = SystemClock()
    source = open_source("opencv", 320, 180, 30, str(video), None, clock)
    sink = ListSink()
    recorder = Recorder(
        source,
        Segmenter(sink, "porch", "run", 0.5),
        clock,
        encoder=make_encoder("libx264", 320, 180, 30, 30, None, 15),
    )
    recorder.start()
    assert sink.wait_for(2, timeout_s=10)
    recorder.stop()
    stats = recorder.stats
    assert stats.frames_dropped == 0 and stats.errors == 0
    assert sum(s.meta.frame_count for s in sink.segments) == stats.frames_captured
    for seg in sink.segments:
        path = tmp_path / f"{seg.meta.sequence}.mp4"
        path.write_bytes(seg.mp4)
        assert ffmpeg_decodes(path)
        assert len(decode(seg.mp4)) == seg.meta.frame_count


def test_device_names() -> None:
    assert capture_target("0") == 0
    assert capture_target(" 2 ") == 2
    assert capture_target("/dev/video0") == "/dev/video0"
    assert capture_target("rtsp://cam.local/stream") == "rtsp://cam.local/stream"
    with pytest.raises(ValueError, match="empty"):
        capture_target(" ")
