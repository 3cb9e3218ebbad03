"""Camera sources and encoding.

``open_source`` builds the source named by ``camera.source``. Each backend is
imported only when chosen, so the virtual camera never loads cv2 or
picamera2.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Literal

from edge.capture.types import EncodedPacket, RawFrame, Source, VideoEncoder, VideoFormat
from edge.clock import Clock

__all__ = [
    "EncodedPacket",
    "RawFrame",
    "Source",
    "SourceKind",
    "VideoEncoder",
    "VideoFormat",
    "open_source",
]

SourceKind = Literal["virtual", "opencv", "picamera2"]


def open_source(
    kind: SourceKind,
    width: int,
    height: int,
    fps: int | Fraction,
    device: str | None,
    file: Path | None,
    clock: Clock,
    *,
    bitrate_bps: int | None = None,
    keyframe_interval_frames: int | None = None,
) -> Source:
    """The camera for the config (not started).

    ``device`` is for ``opencv`` (index, /dev/videoN, file or RTSP URL; default 0);
    ``file`` for ``virtual`` (a recording to replay instead of the synthetic scene).
    ``bitrate_bps`` and ``keyframe_interval_frames`` configure the Pi's own encoder
    (``picamera2``); the other sources are encoded by ``make_encoder``.
    """
    if kind == "virtual":
        if file is not None:
            from edge.capture.replay import FileReplaySource

            return FileReplaySource(file, clock)
        from edge.capture.virtual import VirtualCamera

        return VirtualCamera(width, height, fps, clock)
    if kind == "opencv":
        from edge.capture.opencv_source import OpenCVSource

        return OpenCVSource(device if device is not None else "0", width, height, fps, clock)
    if kind == "picamera2":
        from edge.capture.picamera2_source import Picamera2Source

        interval = keyframe_interval_frames or max(1, round(2 * Fraction(fps)))
        return Picamera2Source(
            width, height, fps, clock, bitrate_bps=bitrate_bps, keyframe_interval_frames=interval
        )
    raise ValueError(f"unknown camera source {kind!r}: use virtual, opencv or picamera2")
