"""What camera sources hand over: raw I420 frames or encoded H.264 packets.

A source produces one or the other, never both. Raw frames go through an
encoder (edge/capture/encoder.py); encoded packets (the Pi's own encoder, a
replayed file) go straight to the segmenter. Every frame carries its capture
time on the wall clock and whether that clock was synchronised.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

import numpy as np

SourceOutput = Literal["raw", "encoded"]


@dataclass(frozen=True, slots=True)
class VideoFormat:
    width: int
    height: int
    fps: Fraction  # nominal frame rate; exact, so time bases derived from it are exact

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"frame size must be even and positive, got {self.width}x{self.height}"
            )
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @property
    def frame_interval_s(self) -> float:
        return float(1 / self.fps)


@dataclass(slots=True)
class RawFrame:
    """One picture in planar YUV 4:2:0 (I420), as one contiguous buffer.

    ``data`` has shape ``(height * 3 // 2, width)``: the Y plane (height rows),
    then U and V (each width/2 x height/2, packed row after row). This is the
    layout ``cv2.COLOR_BGR2YUV_I420`` produces and ``av.VideoFrame.from_numpy_buffer``
    takes without a copy.
    """

    data: np.ndarray
    width: int
    height: int
    capture_time_ms: int  # wall clock, ms since the Unix epoch (UTC)
    sequence: int  # frame number from 0 at the start of the run
    clock_synced: bool  # the wall clock was synchronised when this frame was taken

    @property
    def y(self) -> np.ndarray:
        return self.data[: self.height]

    @property
    def u(self) -> np.ndarray:
        flat = self.data.reshape(-1)
        start = self.width * self.height
        return flat[start : start + start // 4].reshape(self.height // 2, self.width // 2)

    @property
    def v(self) -> np.ndarray:
        flat = self.data.reshape(-1)
        start = self.width * self.height * 5 // 4
        return flat[start : start + self.width * self.height // 4].reshape(
            self.height // 2, self.width // 2
        )


DISCONTINUITY_MS = 500  # labels this much off one frame interval: an outage or a clock step


def is_discontinuity(previous_ms: int, current_ms: int, fps: Fraction) -> bool:
    """Whether two consecutive frames' labels are not one frame interval apart.

    A camera that went away and came back, or a wall clock that was stepped,
    breaks the run of labels; a segment must not straddle such a break (its
    row would claim all the time in between, or overlap footage already kept).
    """
    expected_ms = 1000 / fps
    return abs((current_ms - previous_ms) - expected_ms) > DISCONTINUITY_MS


def new_i420(width: int, height: int) -> np.ndarray:
    """An uninitialised I420 buffer in the RawFrame layout."""
    return np.empty((height * 3 // 2, width), dtype=np.uint8)


@dataclass(slots=True)
class EncodedPacket:
    """One H.264 access unit (one frame), Annex B byte stream (start codes).

    Key frames carry their SPS and PPS in band, so a segment starting at any
    key frame is self-contained. ``pts``/``dts`` count in ``time_base`` from
    about 0 at the start of the run and never go back within a run: the
    segmenter keeps them, so segments of one run line up end to end.
    """

    data: bytes
    is_keyframe: bool
    pts: int
    dts: int
    time_base: Fraction
    video_format: VideoFormat
    capture_time_ms: int  # wall clock, ms since the Unix epoch (UTC)
    sequence: int  # frame number from 0 at the start of the run
    clock_synced: bool


class Source(Protocol):
    """A camera. ``read`` is called from one capture thread only."""

    @property
    def video_format(self) -> VideoFormat: ...

    @property
    def output(self) -> SourceOutput:
        """Either "raw" (RawFrame, needs an encoder) or "encoded" (EncodedPacket)."""
        ...

    @property
    def dropped_frames(self) -> int:
        """Frames the source itself lost (late reads, full hand-over buffer)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None:
        """Unblocks a waiting ``read`` promptly; idempotent."""
        ...

    def read(self, timeout_s: float) -> RawFrame | EncodedPacket | None:
        """The next frame, or None if none came within ``timeout_s``.

        After ``stop`` it returns what the source still holds, then None.
        """
        ...


class VideoEncoder(Protocol):
    """Turns raw frames into H.264 packets. One per run, so timestamps never restart."""

    @property
    def name(self) -> str: ...

    def encode(self, frame: RawFrame) -> list[EncodedPacket]: ...

    def flush(self) -> list[EncodedPacket]:
        """Drains the packets still inside the encoder; the encoder is finished after it."""
        ...
