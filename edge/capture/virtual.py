"""`camera.source = "virtual"`: a synthetic scene paced in real time.

Frame n is scheduled at ``start + n / fps`` on the monotonic clock, computed
from the start every time (never accumulated), so an hour of frames does not
drift by a frame. Its capture time, stamped into the time strip, is the wall
clock's reading of that scheduled moment.
"""

from __future__ import annotations

import logging
import math
import threading
from fractions import Fraction

from edge.capture.scene import Scene
from edge.capture.types import RawFrame, SourceOutput, VideoFormat, new_i420
from edge.capture.wallclock import WallClockMapper
from edge.clock import Clock

log = logging.getLogger(__name__)

# Like a camera driver's buffer queue (V4L2 through OpenCV keeps 4, picamera2 more):
# a reader up to this many frames behind gets every frame, late; one further
# behind gets the newest DRIVER_BUFFERS frames and the older ones are lost.
DRIVER_BUFFERS = 4


class VirtualCamera:
    """A Source of RawFrames. ``read`` is called from one capture thread."""

    def __init__(
        self, width: int, height: int, fps: int | Fraction, clock: Clock, *, paced: bool = True
    ) -> None:
        """``paced=False`` hands frames out as fast as they are read, still labelled with
        their scheduled times (tests use it with a ManualClock)."""
        self._format = VideoFormat(width, height, Fraction(fps))
        self._scene = Scene(width, height, float(self._format.fps))
        self._clock = clock
        self._mapper = WallClockMapper(clock)
        self._paced = paced
        self._stop_event = threading.Event()
        self._start_s: float | None = None
        self._next = 0
        self._dropped = 0

    @property
    def video_format(self) -> VideoFormat:
        return self._format

    @property
    def output(self) -> SourceOutput:
        return "raw"

    @property
    def dropped_frames(self) -> int:
        return self._dropped

    def start(self) -> None:
        if self._start_s is not None:
            raise RuntimeError("virtual camera already started")
        self._start_s = self._clock.monotonic_s()

    def stop(self) -> None:
        self._stop_event.set()

    def _scheduled_s(self, n: int) -> float:
        assert self._start_s is not None
        return self._start_s + float(n / self._format.fps)

    def read(self, timeout_s: float) -> RawFrame | None:
        if self._start_s is None:
            raise RuntimeError("virtual camera not started")
        if self._stop_event.is_set():
            return None
        if self._paced:
            delay_s = self._scheduled_s(self._next) - self._clock.monotonic_s()
            if delay_s > timeout_s:
                self._stop_event.wait(timeout_s)
                return None
            if delay_s > 0:
                if self._stop_event.wait(delay_s):
                    return None
                if self._scheduled_s(self._next) > self._clock.monotonic_s():
                    return None  # the clock says not yet: the caller reads again
            self._skip_if_late()
        n = self._next
        self._next += 1
        capture_ms = self._mapper.wall_ms(self._scheduled_s(n))
        data = new_i420(self._format.width, self._format.height)
        self._scene.draw(data, n, capture_ms)
        return RawFrame(
            data=data,
            width=self._format.width,
            height=self._format.height,
            capture_time_ms=capture_ms,
            sequence=n,
            clock_synced=self._mapper.synchronized(),
        )

    def _skip_if_late(self) -> None:
        assert self._start_s is not None
        elapsed_s = self._clock.monotonic_s() - self._start_s
        due = math.floor(elapsed_s * self._format.fps)  # the newest frame already due
        oldest_kept = due - DRIVER_BUFFERS + 1
        if oldest_kept > self._next:
            skipped = oldest_kept - self._next
            self._dropped += skipped
            log.warning(
                "virtual camera read %d frames late; skipped them (%d skipped in all)",
                skipped,
                self._dropped,
            )
            self._next = oldest_kept
