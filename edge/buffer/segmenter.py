"""Cuts a run's H.264 packets into self-contained fragmented-MP4 segments.

Each segment starts at a key frame, is about ``segment_seconds`` long, and is
made in memory (never a temporary file: no plaintext footage on disk). It is
a complete fMP4 (ftyp, moov, moof/mdat) that plays on its own.

Timestamps are the run's, not the segment's: segment k's first frame has the
decode time it had in the run (its ``tfdt``), so segments of one run remux by
stream copy, read in order, into one clip with continuous timestamps. Two
muxer settings make that so: ``frag_discont`` (take the first fragment's time
from the first packet instead of forcing it to zero) with ``use_editlist=0``.
Each packet's duration is the gap to the next packet, even across a segment
boundary (the segmenter holds one packet back), so segment k ends exactly where
segment k+1 begins.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import av

from edge.buffer.segment import Segment, SegmentMeta, SegmentSink
from edge.capture import h264
from edge.capture.types import EncodedPacket, VideoFormat, is_discontinuity

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 90_000)  # the usual MP4 video timescale; 64-bit decode times, no wrap
MUXER_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont",
    "use_editlist": "0",
    "avoid_negative_ts": "disabled",
}


@dataclass(slots=True)
class _Held:
    """A packet waiting for the next one, which gives it its duration."""

    data: bytes
    is_keyframe: bool
    pts: int  # TIME_BASE units from the start of the run
    dts: int
    capture_time_ms: int
    clock_synced: bool
    video_format: VideoFormat


class _OpenSegment:
    def __init__(self, video_format: VideoFormat, start_dts: int) -> None:
        self.video_format = video_format
        self.start_dts = start_dts
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, "w", format="mp4", options=dict(MUXER_OPTIONS))
        self.stream = self.container.add_mux_stream(
            "h264", rate=video_format.fps, width=video_format.width, height=video_format.height
        )
        self.stream.time_base = TIME_BASE
        self.first_frame_ms: int | None = None
        self.last_frame_ms: int | None = None
        self.frame_count = 0
        self.clock_synced = True

    def mux(self, held: _Held, duration: int) -> None:
        packet = av.Packet(held.data)
        packet.stream = self.stream
        packet.time_base = TIME_BASE
        packet.pts = held.pts
        packet.dts = held.dts
        packet.duration = duration
        packet.is_keyframe = held.is_keyframe
        self.container.mux(packet)
        ms = held.capture_time_ms
        self.first_frame_ms = ms if self.first_frame_ms is None else min(self.first_frame_ms, ms)
        self.last_frame_ms = ms if self.last_frame_ms is None else max(self.last_frame_ms, ms)
        self.frame_count += 1
        self.clock_synced = self.clock_synced and held.clock_synced

    def finish(self) -> bytes:
        self.container.close()
        return self.buffer.getvalue()


class Segmenter:
    """Packets in (``add``), segments out to the sink. Used from one thread (the recorder's
    encode worker); the sink is called on that thread."""

    def __init__(self, sink: SegmentSink, camera: str, run_id: str, segment_seconds: float) -> None:
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
        self._sink = sink
        self._camera = camera
        self._run_id = run_id
        self._target = round(segment_seconds / TIME_BASE)
        self._segment: _OpenSegment | None = None
        self._held: _Held | None = None
        self._base_dts: int | None = None  # the run's first decode time, in the packet's units
        self._last_dts = -1
        self._parameter_sets = b""  # latest SPS+PPS seen, for key frames that lack them
        self._sequence = 0
        self._closed = False
        self.packets_skipped = 0  # before the first usable key frame
        self._break_seen = False  # labels broke (outage, clock step) since the last key frame

    @property
    def segments_emitted(self) -> int:
        return self._sequence

    def add(self, packet: EncodedPacket) -> None:
        if self._closed:
            raise RuntimeError("segmenter is closed")
        data = packet.data
        if packet.is_keyframe:
            found = h264.parameter_sets(data)
            if found:
                self._parameter_sets = found
            elif self._parameter_sets:
                data = self._parameter_sets + data  # a segment must carry its own SPS/PPS
        if self._held is None and self._segment is None:
            if not (packet.is_keyframe and self._parameter_sets):
                self.packets_skipped += 1
                if self.packets_skipped == 1:
                    log.warning("skipping packets until a key frame with SPS/PPS arrives")
                return
        pts, dts = self._run_times(packet)
        held = _Held(
            data,
            packet.is_keyframe,
            pts,
            dts,
            packet.capture_time_ms,
            packet.clock_synced,
            packet.video_format,
        )
        if self._held is not None:
            self._mux_held(duration=dts - self._held.dts)
            if is_discontinuity(
                self._held.capture_time_ms, held.capture_time_ms, held.video_format.fps
            ):
                # An outage or a clock step: the segment ends at the next key frame
                # (at once, for frames we encode: the encoder forces one here).
                self._break_seen = True
        if self._starts_segment(held):
            self._break_seen = False
            self._finish_segment()
            self._segment = _OpenSegment(held.video_format, held.dts)
        self._held = held

    def close(self) -> None:
        """Writes the held packet and emits the last segment. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._held is not None:
            self._mux_held(duration=round(1 / (self._held.video_format.fps * TIME_BASE)))
            self._held = None
        self._finish_segment()

    def _run_times(self, packet: EncodedPacket) -> tuple[int, int]:
        scale = packet.time_base / TIME_BASE
        pts = round(packet.pts * scale)
        dts = round(packet.dts * scale)
        if self._base_dts is None:
            self._base_dts = dts
        pts -= self._base_dts
        dts -= self._base_dts
        if dts <= self._last_dts:
            log.warning(
                "packet decode time went back (%d after %d); moved it on", dts, self._last_dts
            )
            dts = self._last_dts + 1
        pts = max(pts, dts)
        self._last_dts = dts
        return pts, dts

    def _starts_segment(self, held: _Held) -> bool:
        if not held.is_keyframe:
            return False
        segment = self._segment
        if segment is None or held.video_format != segment.video_format or self._break_seen:
            return True
        half_frame = round(1 / (2 * held.video_format.fps * TIME_BASE))
        return held.dts - segment.start_dts >= self._target - half_frame

    def _mux_held(self, duration: int) -> None:
        assert self._held is not None and self._segment is not None
        self._segment.mux(self._held, max(1, duration))

    def _finish_segment(self) -> None:
        segment = self._segment
        if segment is None:
            return
        self._segment = None
        mp4 = segment.finish()
        assert segment.first_frame_ms is not None and segment.last_frame_ms is not None
        meta = SegmentMeta(
            camera=self._camera,
            run_id=self._run_id,
            sequence=self._sequence,
            first_frame_ms=segment.first_frame_ms,
            last_frame_ms=segment.last_frame_ms,
            frame_count=segment.frame_count,
            clock_synced=segment.clock_synced,
            width=segment.video_format.width,
            height=segment.video_format.height,
        )
        self._sequence += 1
        self._sink.put(Segment(meta=meta, mp4=mp4))
