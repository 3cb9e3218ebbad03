"""`camera.source = "opencv"`: a USB webcam, a video file or an RTSP stream via OpenCV.

``camera.device`` is an index ("0"), a device path ("/dev/video0"), a file or a
URL. When the device or stream drops (a read fails), the capture is released
and opened again with exponential backoff, measured on the monotonic clock and
waited out on the stop event, and the log says so. A file is played at the
configured frame rate, like a camera, and starts again at its end.

Frames arrive as BGR and are converted to I420 here (the only place cv2 is
used). Frames of another size than configured are scaled to it, so one encoder
serves the run even if a reconnected device comes back in another mode.
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.capture.types import RawFrame, SourceOutput, VideoFormat
from edge.capture.wallclock import WallClockMapper
from edge.clock import Clock

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


def capture_target(device: str) -> int | str:
    """What to hand cv2.VideoCapture: an int for a bare index, else the string."""
    stripped = device.strip()
    if stripped.isdigit():
        return int(stripped)
    if not stripped:
        raise ValueError("camera.device is empty: give an index, /dev/videoN, a file or a URL")
    return stripped


class OpenCVSource:
    """A Source of RawFrames. ``read`` is called from one capture thread."""

    def __init__(
        self,
        device: str,
        width: int,
        height: int,
        fps: int | Fraction,
        clock: Clock,
        *,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self._target = capture_target(device)
        self._format = VideoFormat(width, height, Fraction(fps))
        self._clock = clock
        self._mapper = WallClockMapper(clock)
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = initial_backoff_s
        self._stop_event = threading.Event()
        self._capture: Any = None  # cv2.VideoCapture while open
        self._is_file = False
        self._retry_at_s: float | None = None  # monotonic time of the next open attempt
        self._failures = 0
        self._file_start_s = 0.0  # monotonic time file frame 0 was due
        self._file_index = 0  # file frames handed out since then
        self._sequence = 0
        self._warned_size: tuple[int, int] | None = None
        self._started = False

    @property
    def video_format(self) -> VideoFormat:
        return self._format

    @property
    def output(self) -> SourceOutput:
        return "raw"

    @property
    def dropped_frames(self) -> int:
        return 0

    def start(self) -> None:
        if self._started:
            raise RuntimeError("opencv source already started")
        self._started = True
        self._retry_at_s = self._clock.monotonic_s()

    def stop(self) -> None:
        self._stop_event.set()

    def close(self) -> None:
        self._release()

    def read(self, timeout_s: float) -> RawFrame | None:
        if not self._started:
            raise RuntimeError("opencv source not started")
        if self._stop_event.is_set():
            self._release()
            return None
        if self._capture is None and not self._connect(timeout_s):
            return None
        if self._is_file and not self._wait_for_file_frame(timeout_s):
            return None
        ok, bgr = self._capture.read()
        taken_s = self._clock.monotonic_s()
        if not ok or bgr is None:
            if self._is_file:
                log.debug("end of %s; playing it again", self._target)
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self._capture.read()
            if not ok or bgr is None:
                self._lost("no frame")
                return None
        self._backoff_s = self._initial_backoff_s
        return self._frame(bgr, taken_s)

    def _frame(self, bgr: np.ndarray, taken_s: float) -> RawFrame:
        fmt = self._format
        height, width = bgr.shape[:2]
        if (width, height) != (fmt.width, fmt.height):
            if self._warned_size != (width, height):
                log.warning(
                    "camera delivers %dx%d, scaling to the configured %dx%d",
                    width,
                    height,
                    fmt.width,
                    fmt.height,
                )
                self._warned_size = (width, height)
            bgr = cv2.resize(bgr, (fmt.width, fmt.height), interpolation=cv2.INTER_AREA)
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
        n = self._sequence
        self._sequence += 1
        return RawFrame(
            data=i420,
            width=fmt.width,
            height=fmt.height,
            capture_time_ms=self._mapper.wall_ms(taken_s),
            sequence=n,
            clock_synced=self._mapper.synchronized(),
        )

    def _connect(self, timeout_s: float) -> bool:
        assert self._retry_at_s is not None
        delay_s = self._retry_at_s - self._clock.monotonic_s()
        if delay_s > 0:
            self._stop_event.wait(min(delay_s, timeout_s))
            if self._stop_event.is_set() or self._retry_at_s - self._clock.monotonic_s() > 0:
                return False
        target = self._target
        self._is_file = isinstance(target, str) and Path(target).is_file()
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            self._lost("cannot open")
            return False
        self._capture = capture
        if not self._is_file:
            # Ask for the configured mode; a camera may choose another (scaled in _frame).
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._format.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._format.height)
            capture.set(cv2.CAP_PROP_FPS, float(self._format.fps))
        self._file_start_s = self._clock.monotonic_s()
        self._file_index = 0
        if self._failures:
            log.warning("camera %s is back after %d failed attempt(s)", target, self._failures)
        else:
            log.info("camera %s opened", target)
        self._failures = 0
        return True

    def _wait_for_file_frame(self, timeout_s: float) -> bool:
        """Paces a file at the configured rate, frame k due at start + k / fps."""
        due_s = self._file_start_s + float(self._file_index / self._format.fps)
        delay_s = due_s - self._clock.monotonic_s()
        if delay_s > timeout_s:
            self._stop_event.wait(timeout_s)
            return False
        if delay_s > 0 and self._stop_event.wait(delay_s):
            return False
        if delay_s < -1.0:  # over a second behind (the machine was busy): start afresh
            self._file_start_s, self._file_index = self._clock.monotonic_s(), 0
        self._file_index += 1
        return True

    def _lost(self, what: str) -> None:
        self._release()
        self._failures += 1
        log.warning(
            "camera %s: %s (attempt %d); trying again in %.1f s",
            self._target,
            what,
            self._failures,
            self._backoff_s,
        )
        self._retry_at_s = self._clock.monotonic_s() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
