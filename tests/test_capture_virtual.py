"""The virtual camera: scene, pacing on the monotonic clock, labels from the wall clock."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.capture import open_source
from edge.capture.timestrip import read_strip
from edge.capture.types import RawFrame
from edge.capture.virtual import DRIVER_BUFFERS, VirtualCamera
from edge.clock import ManualClock, SystemClock
from videotools import expected_ms

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def read_frame(camera: VirtualCamera, timeout_s: float = 1.0) -> RawFrame:
    frame = camera.read(timeout_s)
    assert frame is not None
    return frame


def test_frames_carry_their_scheduled_time_in_the_strip_and_the_frame() -> None:
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, 30, clock, paced=False)
    camera.start()
    for n in range(40):
        frame = read_frame(camera)
        assert (frame.width, frame.height, frame.data.shape) == (320, 180, (270, 320))
        assert frame.sequence == n
        assert frame.capture_time_ms == expected_ms(T0_MS, n, 30)
        assert read_strip(frame.y) == (frame.capture_time_ms, n)
        assert frame.clock_synced


def test_no_drift_over_an_hour_of_frames() -> None:
    # Frame times are computed from the start, not added up: frame 108000 (one hour at
    # 30 fps) is labelled exactly one hour after frame 0.
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, 30, clock)
    camera.start()
    assert read_frame(camera).capture_time_ms == T0_MS
    clock.advance_ms(3_600_000)
    camera._next = 108_000  # jump the reader ahead rather than draw 108,000 frames
    frame = read_frame(camera)
    assert frame.sequence == 108_000
    assert frame.capture_time_ms == T0_MS + 3_600_000


def test_waits_for_the_scheduled_time_of_each_frame() -> None:
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, 25, clock)
    camera.start()
    assert read_frame(camera).sequence == 0
    assert camera.read(timeout_s=0.01) is None, "frame 1 is not due before 40 ms"
    clock.advance_ms(39)
    assert camera.read(timeout_s=0.01) is None
    clock.advance_ms(1)
    frame = read_frame(camera)
    assert (frame.sequence, frame.capture_time_ms) == (1, T0_MS + 40)


def test_a_late_reader_loses_what_the_driver_buffers_could_not_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, 10, clock)
    camera.start()
    read_frame(camera)
    clock.advance_ms(1000)  # frames 1..10 are due; the reader was away
    with caplog.at_level(logging.WARNING):
        late = [read_frame(camera) for _ in range(DRIVER_BUFFERS)]
    # The newest frames the driver's buffers held come out at once, with their own times.
    first_kept = 11 - DRIVER_BUFFERS
    assert [f.sequence for f in late] == list(range(first_kept, 11))
    assert [f.capture_time_ms for f in late] == [T0_MS + 100 * n for n in range(first_kept, 11)]
    assert camera.dropped_frames == first_kept - 1
    assert "skipped" in caplog.text
    assert camera.read(timeout_s=0.01) is None, "caught up: frame 11 is not due yet"


def test_a_reader_late_by_less_than_the_driver_buffers_loses_nothing() -> None:
    clock = ManualClock(T0_MS)
    camera = VirtualCamera(320, 180, 10, clock)
    camera.start()
    read_frame(camera)
    clock.advance_ms(100 * (DRIVER_BUFFERS - 1))  # a stall of DRIVER_BUFFERS - 1 frames
    frames = [read_frame(camera) for _ in range(DRIVER_BUFFERS - 1)]
    assert [f.sequence for f in frames] == list(range(1, DRIVER_BUFFERS))
    assert camera.dropped_frames == 0


def test_labels_follow_a_wall_clock_step_and_its_sync_state() -> None:
    clock = ManualClock(T0_MS, synchronized=False)
    camera = VirtualCamera(320, 180, 10, clock, paced=False)
    camera.start()
    first = read_frame(camera)
    assert (first.capture_time_ms, first.clock_synced) == (T0_MS, False)
    clock.jump_wall_ms(7_200_000)  # NTP answers: the Pi was two hours behind
    clock.synchronized = True
    second = read_frame(camera)
    assert (second.capture_time_ms, second.clock_synced) == (T0_MS + 7_200_100, True)
    assert read_strip(second.y)[0] == T0_MS + 7_200_100


def test_paced_in_real_time_and_stop_is_prompt() -> None:
    clock = SystemClock()
    camera = VirtualCamera(320, 180, 30, clock)
    camera.start()
    start_s = clock.monotonic_s()
    frames = []
    while clock.monotonic_s() - start_s < 0.5:
        frame = camera.read(0.5)
        if frame is not None:
            frames.append((frame, clock.monotonic_s(), clock.now_ms()))
    assert len(frames) <= 17 and frames[-1][0].sequence in range(14, 17)
    for frame, returned_s, now_ms in frames:
        assert returned_s >= start_s + frame.sequence / 30 - 0.002, "handed out before its time"
        assert 0 <= now_ms - frame.capture_time_ms < 150, "labelled with when it was due"

    stopper = threading.Timer(0.05, camera.stop)
    stopper.start()
    returned = camera.read(timeout_s=10.0)  # the next frame is due in 33 ms at most
    while returned is not None:
        returned = camera.read(timeout_s=10.0)
    assert clock.monotonic_s() - start_s < 1.5, "read returns promptly once stopped"
    stopper.join()


def test_open_source_builds_the_virtual_camera() -> None:
    source = open_source("virtual", 640, 360, 15, None, None, ManualClock(T0_MS))
    assert isinstance(source, VirtualCamera)
    assert (source.video_format.width, source.video_format.height) == (640, 360)
    assert source.output == "raw"
    with pytest.raises(ValueError, match="unknown camera source"):
        open_source("webcam", 640, 360, 15, None, None, ManualClock(T0_MS))  # type: ignore[arg-type]


def test_refuses_frames_smaller_than_the_strip_needs() -> None:
    with pytest.raises(ValueError, match="at least 320x180"):
        VirtualCamera(160, 120, 30, ManualClock(T0_MS))


def test_the_virtual_path_imports_neither_cv2_nor_picamera2() -> None:
    code = (
        "import sys\n"
        "from edge.capture import open_source\n"
        "from edge.capture.encoder import make_encoder\n"
        "from edge.buffer.segmenter import Segmenter\n"
        "from edge.recorder import Recorder\n"
        "from edge.clock import SystemClock\n"
        "source = open_source('virtual', 320, 180, 30, None, None, SystemClock())\n"
        "make_encoder('auto', 320, 180, 30, 23, None, 60)\n"
        "heavy = {'cv2', 'picamera2'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
