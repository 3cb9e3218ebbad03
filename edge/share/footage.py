"""How much footage the ring holds of a window, for matching and for prompts."""

from __future__ import annotations

from collections.abc import Callable

from edge.buffer.index import SegmentRecord
from edge.buffer.ring import RingReader
from edge.buffer.seal import OpenedSegment


class RingFootage:
    """The ring as the sharing side sees it: a time index and segments to open.

    Reads only the index (no file is opened or decrypted) to answer footage_ms.
    """

    def __init__(self, ring: RingReader) -> None:
        self._ring = ring

    def overlapping(self, start_ms: int, end_ms: int) -> list[SegmentRecord]:
        return self._ring.overlapping(start_ms, end_ms)

    def open_segment(
        self, record: SegmentRecord, *, meanwhile: Callable[[], object] | None = None
    ) -> OpenedSegment:
        return self._ring.open_segment(record, meanwhile=meanwhile)

    def footage_ms(self, start_ms: int, end_ms: int, *, synced_only: bool) -> int:
        """Milliseconds of [start_ms, end_ms] covered by segments (at least 1 per segment)."""
        covered_ms = 0
        for record in self._ring.overlapping(start_ms, end_ms):
            meta = record.meta
            if synced_only and not meta.clock_synced:
                continue
            first = max(meta.first_frame_ms, start_ms)
            last = min(meta.last_frame_ms, end_ms)
            covered_ms += max(last - first, 1)
        return covered_ms
