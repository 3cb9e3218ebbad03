"""What recording hands to storage: one self-contained fragmented-MP4 segment.

This is the boundary between the segmenter and the ring. A segment starts at a
key frame, plays on its own, and carries the wall-clock capture times of its
first and last frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SegmentMeta:
    camera: str  # camera name from the config (device identity is the ring's business)
    run_id: str  # random id of this `edge run`; sequence numbers restart with each run
    sequence: int  # segment number within the run, from 0, no gaps
    first_frame_ms: int  # capture time of the first frame, ms since the Unix epoch (UTC)
    last_frame_ms: int  # capture time of the last frame (>= first_frame_ms)
    frame_count: int
    clock_synced: bool  # the system clock was synchronised for every frame in it
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Segment:
    meta: SegmentMeta
    mp4: bytes  # fragmented MP4: ftyp, moov, then moof/mdat pairs; plays alone


class SegmentSink(Protocol):
    """Takes finished segments. Called from the segmenter's worker thread only."""

    def put(self, segment: Segment) -> None: ...
