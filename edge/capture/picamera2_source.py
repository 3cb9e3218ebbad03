"""`camera.source = "picamera2"`: the Raspberry Pi camera and its own H.264 encoder.

picamera2 is imported only here, and only when this source starts. Its
``H264Encoder`` is the V4L2 hardware encoder on a Pi 4 and older and libav's
libx264 on a Pi 5 (picamera2 picks, see ``picamera2/encoders/__init__.py``).
Either hands each encoded frame to an ``Output`` as
``outputframe(frame, keyframe, timestamp, packet, audio)`` with ``timestamp``
in microseconds since the encoder's first frame, taken from the sensor's
start-of-exposure time (``SensorTimestamp``, the kernel's monotonic clock);
``encoder.firsttimestamp`` is that first frame's sensor time.
(Read in raspberrypi/picamera2: outputs/output.py, encoders/encoder.py,
encoders/v4l2_encoder.py, encoders/libav_h264_encoder.py, picamera2.py.)

The output runs on picamera2's encoder thread: it only copies the bytes and
puts them on a bounded queue (a full queue drops the packet and everything up
to the next key frame, counted). Capture times are the sensor times on the wall
clock: exposure, not arrival.
"""

from __future__ import annotations

import logging
import queue
import threading
from fractions import Fraction
from typing import Any

from edge.capture.types import EncodedPacket, SourceOutput, VideoFormat
from edge.capture.wallclock import WallClockMapper
from edge.clock import Clock

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1_000_000)  # picamera2 timestamps are microseconds
MAX_SENSOR_LAG_S = 5.0  # a sensor time further from now than this is not trusted
DROP_LOG_INTERVAL_S = 5.0

_WAKE = object()  # queue marker: stop() wakes a waiting read


class Picamera2Source:
    """A Source of EncodedPackets. ``read`` is called from one capture thread."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int | Fraction,
        clock: Clock,
        *,
        bitrate_bps: int | None,
        keyframe_interval_frames: int,
        queue_packets: int | None = None,
        camera_index: int = 0,
    ) -> None:
        self._format = VideoFormat(width, height, Fraction(fps))
        self._clock = clock
        self._mapper = WallClockMapper(clock)
        self._bitrate_bps = bitrate_bps or None  # None: picamera2 picks by size ("medium")
        self._keyframe_interval = keyframe_interval_frames
        self._camera_index = camera_index
        size = queue_packets or max(4, round(2 * self._format.fps))  # about two seconds
        self._queue: queue.Queue[object] = queue.Queue(maxsize=size)
        self._stop_event = threading.Event()
        self._camera: Any = None
        self._encoder: Any = None
        # Written on picamera2's encoder thread only (in _on_frame):
        self._sequence = 0
        self._dropped = 0
        self._skip_to_keyframe = False
        self._last_drop_log_s: float | None = None
        self._warned_timestamps = False

    @property
    def video_format(self) -> VideoFormat:
        return self._format

    @property
    def output(self) -> SourceOutput:
        return "encoded"

    @property
    def dropped_frames(self) -> int:
        return self._dropped

    def start(self) -> None:
        if self._camera is not None:
            raise RuntimeError("picamera2 source already started")
        try:
            from picamera2 import Picamera2
            from picamera2.encoders import H264Encoder
            from picamera2.outputs import Output
        except ImportError as exc:
            raise RuntimeError(
                "camera.source is picamera2 but picamera2 is not installed: on Raspberry Pi OS"
                " run `apt install python3-picamera2` and make the venv with"
                " --system-site-packages"
            ) from exc

        source = self

        class PacketOutput(Output):
            """Hands encoded frames to the source; called on picamera2's encoder thread."""

            def outputframe(
                self,
                frame: Any,
                keyframe: bool = True,
                timestamp: int | None = None,
                packet: Any = None,
                audio: bool = False,
            ) -> None:
                if audio or frame is None:
                    return
                source._on_frame(bytes(frame), bool(keyframe), timestamp)

        fps = float(self._format.fps)
        try:
            camera = self._camera = Picamera2(self._camera_index)
            config = camera.create_video_configuration(
                main={"size": (self._format.width, self._format.height), "format": "YUV420"},
                controls={"FrameRate": fps},
            )
            camera.configure(config)
            encoder = H264Encoder(
                bitrate=self._bitrate_bps,
                repeat=True,  # SPS/PPS before every key frame: each segment stands alone
                iperiod=self._keyframe_interval,  # a key frame at every segment boundary
                framerate=fps,
            )
            self._encoder = encoder
            camera.start_recording(encoder, PacketOutput())
        except Exception as exc:
            self._close_camera()
            raise RuntimeError(f"picamera2 could not start the camera: {exc}") from exc
        log.info(
            "picamera2 recording %dx%d at %s fps with %s",
            self._format.width,
            self._format.height,
            self._format.fps,
            type(encoder).__name__,
        )

    def stop(self) -> None:
        """Stops the camera; packets already handed over can still be read."""
        if self._stop_event.is_set():
            return
        self._stop_event.set()
        camera = self._camera
        if camera is not None:
            try:
                camera.stop_recording()
            except Exception:
                log.exception("picamera2 failed to stop recording")
            self._close_camera()
        try:
            self._queue.put_nowait(_WAKE)
        except queue.Full:
            pass  # a reader has plenty to read and will see the stop after it

    def read(self, timeout_s: float) -> EncodedPacket | None:
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if item is _WAKE:
            return None
        assert isinstance(item, EncodedPacket)
        return item

    def _close_camera(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.close()
            except Exception:
                log.exception("picamera2 failed to close the camera")

    # --- picamera2's encoder thread ---------------------------------------------------

    def _on_frame(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
        now_s = self._clock.monotonic_s()
        exposure_s = self._exposure_s(timestamp_us, now_s)
        packet = EncodedPacket(
            data=data,
            is_keyframe=keyframe,
            pts=timestamp_us if timestamp_us is not None else round(now_s * 1e6),
            dts=timestamp_us if timestamp_us is not None else round(now_s * 1e6),
            time_base=TIME_BASE,
            video_format=self._format,
            capture_time_ms=self._mapper.wall_ms(exposure_s),
            sequence=self._sequence,
            clock_synced=self._mapper.synchronized(),
        )
        self._sequence += 1
        if self._skip_to_keyframe and not keyframe:
            self._dropped += 1
            return
        try:
            self._queue.put_nowait(packet)
            self._skip_to_keyframe = False
        except queue.Full:
            self._dropped += 1
            self._skip_to_keyframe = True
            if (
                self._last_drop_log_s is None
                or now_s - self._last_drop_log_s >= DROP_LOG_INTERVAL_S
            ):
                log.warning(
                    "picamera2 packets are not being taken fast enough; dropped up to the next"
                    " key frame (%d dropped in all)",
                    self._dropped,
                )
                self._last_drop_log_s = now_s

    def _exposure_s(self, timestamp_us: int | None, now_s: float) -> float:
        """The frame's sensor time on the monotonic clock, or its arrival if unknown."""
        first_us = getattr(self._encoder, "firsttimestamp", None)
        if isinstance(first_us, int) and timestamp_us is not None:
            exposure_s = (first_us + timestamp_us) / 1e6
            if -0.1 <= now_s - exposure_s <= MAX_SENSOR_LAG_S:
                return exposure_s
        if not self._warned_timestamps:
            log.warning("picamera2 sensor timestamps unusable; labelling frames by arrival time")
            self._warned_timestamps = True
        return now_s
