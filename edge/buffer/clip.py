"""The one clip builder: a time window of the ring as one fragmented MP4, streamed out.

``edge export``, the review page and delivery all call ``build_clip``. It lists the
segments overlapping the window (an index query: nothing outside the window is read
or decrypted), then for each one in time order: reads, checks and decrypts it in
memory, and remuxes its packets by stream copy (no re-encode) into one output
container written front to back to ``out`` (never seeked, so a pipe, an HTTP
response or a sealing stream will do). Only one segment is in memory at a time.

The clip is key-frame aligned: whole segments, so at most one segment more than the
window on each side. Timestamps are rebased to run continuously from 0: each
segment starts where the one before it ended, across segment boundaries, restarts
of ``edge run`` and gaps alike; a gap in the footage is collapsed (the clip plays
straight on) and listed in ``ClipInfo.gaps``, with where in the clip it falls.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Protocol

import av

from edge.buffer.index import SegmentRecord
from edge.buffer.ring import SegmentUnavailable
from edge.buffer.seal import OpenedSegment

log = logging.getLogger(__name__)

CLIP_MUXER_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
# The segment's avcC already says what the stream is: skip ffmpeg's probing, which
# would decode frames to guess a frame rate (most of the cost of opening one).
SEGMENT_DEMUXER_OPTIONS = {"analyzeduration": "0", "fpsprobesize": "0"}
DEFAULT_GAP_THRESHOLD_MS = 1000
_FALLBACK_FRAME_S = Fraction(1, 30)


class NoFootage(Exception):
    """The ring holds no (usable) footage of the window."""


class SegmentSource(Protocol):
    """What the clip builder needs of a ring (``Ring`` and ``RingReader`` both are one)."""

    def overlapping(self, start_ms: int, end_ms: int) -> list[SegmentRecord]: ...

    def open_segment(self, record: SegmentRecord) -> OpenedSegment: ...


@dataclass(frozen=True, slots=True)
class Gap:
    """Footage missing between two delivered segments (wall-clock ms), collapsed in the clip."""

    after_ms: int  # last frame before the gap
    before_ms: int  # first frame after it
    clip_offset_ms: int  # where in the clip's timeline playback jumps across it


@dataclass(frozen=True, slots=True)
class Skipped:
    """A segment of the window that was not delivered, and why (damaged, evicted)."""

    first_frame_ms: int
    last_frame_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class ClipInfo:
    first_frame_ms: int  # capture time of the first frame delivered
    last_frame_ms: int  # capture time of the last frame delivered
    segments: int
    frames: int
    duration_ms: int  # playback length of the clip
    gaps: tuple[Gap, ...]
    skipped: tuple[Skipped, ...]
    clock_synced: bool  # every delivered segment was recorded with a synchronised clock
    sha256: str  # hex digest of exactly the bytes written to ``out``
    bytes: int


def build_clip(
    ring: SegmentSource,
    start_ms: int,
    end_ms: int,
    out: BinaryIO,
    *,
    gap_threshold_ms: int = DEFAULT_GAP_THRESHOLD_MS,
) -> ClipInfo:
    """Write the footage of [start_ms, end_ms] to ``out`` as one fragmented MP4.

    Raises NoFootage (before writing anything) if no segment overlaps the window,
    or none of those that do can be read. Damaged segments are skipped and listed.
    """
    if end_ms < start_ms:
        raise ValueError("window ends before it starts")
    records = ring.overlapping(start_ms, end_ms)
    if not records:
        raise NoFootage("the buffer holds no footage of that window")
    skipped: list[Skipped] = []
    remuxer: _Remuxer | None = None
    for record in records:
        try:
            opened = ring.open_segment(record)
        except SegmentUnavailable as problem:
            skipped.append(
                Skipped(record.meta.first_frame_ms, record.meta.last_frame_ms, problem.reason)
            )
            continue
        if remuxer is None:
            remuxer = _Remuxer(_StreamSink(out), opened, gap_threshold_ms)
        remuxer.append(opened)
        del opened  # one segment in memory at a time
    if remuxer is None:
        raise NoFootage(
            f"none of the {len(records)} segments of that window can be read: "
            + "; ".join(sorted({s.reason for s in skipped}))
        )
    return remuxer.finish(tuple(skipped))


class _StreamSink:
    """Write-only view of ``out`` that hashes and counts. No seek/tell: PyAV then
    treats the output as a stream and never goes back."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._hash.update(data)
        self.bytes += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Remuxer:
    def __init__(self, sink: _StreamSink, first: OpenedSegment, gap_threshold_ms: int) -> None:
        self._sink = sink
        self._gap_threshold_ms = gap_threshold_ms
        self._output = av.open(sink, "w", format="mp4", options=dict(CLIP_MUXER_OPTIONS))
        with _open_segment(first) as source:
            template = source.streams.video[0]
            self._stream = self._output.add_stream_from_template(template)
            self._extradata = bytes(template.codec_context.extradata or b"")
            self._time_base = template.time_base or Fraction(1, 90000)
        self._stream.time_base = self._time_base
        self._offset = 0  # where the next segment starts, in the output's time base
        self._last_dts: int | None = None
        self._first_frame_ms: int | None = None
        self._last_frame_ms = 0
        self._previous_last_ms: int | None = None
        self._segments = 0
        self._frames = 0
        self._clock_synced = True
        self._gaps: list[Gap] = []
        self._announced_extradata = self._extradata

    def append(self, segment: OpenedSegment) -> None:
        meta = segment.meta
        if self._previous_last_ms is not None:
            if meta.first_frame_ms - self._previous_last_ms > self._gap_threshold_ms:
                self._gaps.append(
                    Gap(self._previous_last_ms, meta.first_frame_ms, self._offset_ms())
                )
        with _open_segment(segment) as source:
            stream = source.streams.video[0]
            in_band = self._parameter_sets_if_changed(stream)
            scale = Fraction(stream.time_base or self._time_base) / self._time_base
            rescale = _rescaler(scale)
            base_dts: int | None = None
            end = self._offset
            frame_ticks = self._nominal_frame_ticks(segment)
            for packet in source.demux(stream):
                if packet.dts is None or packet.size == 0:
                    continue  # the demuxer's empty packet at the end of the file
                if base_dts is None:
                    base_dts = packet.dts
                dts = self._offset + rescale(packet.dts - base_dts)
                pts_in = packet.pts if packet.pts is not None else packet.dts
                pts = self._offset + rescale(pts_in - base_dts)
                if self._last_dts is not None and dts <= self._last_dts:
                    dts = self._last_dts + 1  # never backwards, whatever the input did
                pts = max(pts, dts)
                duration = rescale(packet.duration) if packet.duration else frame_ticks
                if in_band and packet.is_keyframe:
                    packet = _with_prefix(packet, in_band)
                    in_band = b""
                packet.stream = self._stream
                packet.time_base = self._time_base
                packet.dts = dts
                packet.pts = pts
                packet.duration = duration
                self._output.mux(packet)
                self._last_dts = dts
                end = max(end, dts + duration)
                self._frames += 1
        self._offset = end
        self._segments += 1
        if self._first_frame_ms is None:
            self._first_frame_ms = meta.first_frame_ms
        self._last_frame_ms = max(self._last_frame_ms, meta.last_frame_ms)
        self._previous_last_ms = meta.last_frame_ms
        self._clock_synced = self._clock_synced and meta.clock_synced

    def finish(self, skipped: tuple[Skipped, ...]) -> ClipInfo:
        self._output.close()  # writes the last fragment (and mfra) to the stream
        assert self._first_frame_ms is not None
        return ClipInfo(
            first_frame_ms=self._first_frame_ms,
            last_frame_ms=self._last_frame_ms,
            segments=self._segments,
            frames=self._frames,
            duration_ms=self._offset_ms(),
            gaps=tuple(self._gaps),
            skipped=skipped,
            clock_synced=self._clock_synced,
            sha256=self._sink.hexdigest(),
            bytes=self._sink.bytes,
        )

    def _offset_ms(self) -> int:
        return round(self._offset * self._time_base * 1000)

    def _nominal_frame_ticks(self, segment: OpenedSegment) -> int:
        meta = segment.meta
        if meta.frame_count > 1 and meta.last_frame_ms > meta.first_frame_ms:
            frame_s = Fraction(
                meta.last_frame_ms - meta.first_frame_ms, 1000 * (meta.frame_count - 1)
            )
        else:
            frame_s = _FALLBACK_FRAME_S
        return max(1, round(frame_s / self._time_base))

    def _parameter_sets_if_changed(self, stream: av.video.stream.VideoStream) -> bytes:
        # A later run may have other SPS/PPS (another resolution or encoder). The
        # clip has one avcC, so carry the new ones in band on the segment's first
        # key frame, where every H.264 decoder picks them up.
        extradata = bytes(stream.codec_context.extradata or b"")
        if not extradata or extradata == self._extradata:
            return b""
        if extradata != self._announced_extradata:
            log.info("clip: H.264 parameters change at a segment boundary; carried in band")
            self._announced_extradata = extradata
        return _avcc_to_length_prefixed(extradata, _avcc_length_size(self._extradata))


def _rescaler(scale: Fraction) -> Callable[[int], int]:
    if scale == 1:  # the usual case (one time base for the whole ring): plain ints
        return lambda ticks: ticks
    return lambda ticks: round(ticks * scale)


def _open_segment(segment: OpenedSegment) -> av.container.InputContainer:
    return av.open(
        io.BytesIO(segment.mp4), "r", format="mp4", container_options=SEGMENT_DEMUXER_OPTIONS
    )


def _with_prefix(packet: av.Packet, prefix: bytes) -> av.Packet:
    replacement = av.Packet(prefix + bytes(packet))
    replacement.is_keyframe = True
    return replacement


def _avcc_length_size(avcc: bytes) -> int:
    if len(avcc) >= 5 and avcc[0] == 1:
        return (avcc[4] & 0x03) + 1
    return 4


def _avcc_to_length_prefixed(avcc: bytes, length_size: int) -> bytes:
    """SPS and PPS NAL units of an avcC record, each prefixed with its length."""
    if len(avcc) < 7 or avcc[0] != 1:
        return b""  # Annex B extradata: nothing we can safely convert
    units: list[bytes] = []
    offset = 5
    try:
        for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count
            count = avcc[offset] & count_mask
            offset += 1
            for _ in range(count):
                (size,) = struct.unpack_from(">H", avcc, offset)
                units.append(avcc[offset + 2 : offset + 2 + size])
                offset += 2 + size
    except (IndexError, struct.error):
        return b""
    return b"".join(len(unit).to_bytes(length_size, "big") + unit for unit in units)
