"""The one clip builder: a time window of the ring as one fragmented MP4, streamed out.

``edge export``, the review page and delivery all call ``build_clip``. It lists the
segments overlapping the window (an index query: nothing outside the window is read
or decrypted), then for each one in time order reads, checks and decrypts it in
memory and appends it to one fragmented MP4 written front to back to ``out``
(never seeked, so a pipe, an HTTP response or a sealing stream will do). Only one
segment is in memory at a time.

Joined, not remuxed: every segment is itself a fragmented MP4 (ftyp, moov, then
moof/mdat pairs), and the segmenter makes them all alike (one H.264 track, one
time scale, SPS/PPS in band on every key frame). So the clip is the first
segment's ftyp and moov, then every segment's moof/mdat pairs copied byte for
byte with only two fields rewritten in each moof (the fragment's sequence number
and its decode time, ``tfdt``), then an ``mfra`` index for seeking. No packet is
parsed or copied one by one. A segment that does not fit that mould (another
time scale, SPS/PPS that differ from the clip's and are not in band, a layout
the joiner does not know) is first remuxed alone by stream copy with PyAV into
one that does, its own SPS/PPS carried in band, and then joined the same way.

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
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av

from edge.buffer import fmp4
from edge.buffer.agefile import Writable
from edge.buffer.index import SegmentRecord
from edge.buffer.ring import SegmentUnavailable
from edge.buffer.seal import OpenedSegment
from edge.buffer.segmenter import MUXER_OPTIONS as SEGMENTER_MUXER_OPTIONS

log = logging.getLogger(__name__)

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

    def open_segment(
        self, record: SegmentRecord, *, meanwhile: Callable[[], object] | None = None
    ) -> OpenedSegment: ...


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
    out: Writable,
    *,
    gap_threshold_ms: int = DEFAULT_GAP_THRESHOLD_MS,
    digest_of_out: Callable[[], str] | None = None,
) -> ClipInfo:
    """Write the footage of [start_ms, end_ms] to ``out`` as one fragmented MP4.

    Raises NoFootage (before writing anything) if no segment overlaps the window,
    or none of those that do can be read. Damaged segments are skipped and listed.

    The builder hashes what it writes (``ClipInfo.sha256``) while each segment
    decrypts. ``digest_of_out`` is for an ``out`` that hashes what it is given
    itself, on a thread of its own (the outbox's sealing thread, which reads
    every byte anyway): called once the whole clip is written, it returns that
    hex SHA-256, and the builder does not hash.
    """
    if end_ms < start_ms:
        raise ValueError("window ends before it starts")
    records = ring.overlapping(start_ms, end_ms)
    if not records:
        raise NoFootage("the buffer holds no footage of that window")
    skipped: list[Skipped] = []
    joiner: _Joiner | None = None
    opened: OpenedSegment | None = None
    sink = _StreamSink(out, digest_of_out)
    try:
        for record in records:
            try:
                # The output so far is hashed while the segment decrypts: hashlib
                # lets go of Python's lock, so the two overlap.
                opened = ring.open_segment(record, meanwhile=sink.hash_pending)
                if joiner is None:
                    joiner = _Joiner.start(sink, opened, gap_threshold_ms)
                joiner.append(opened)
            except (SegmentUnavailable, _Unusable) as problem:
                skipped.append(
                    Skipped(record.meta.first_frame_ms, record.meta.last_frame_ms, problem.reason)
                )
            finally:
                opened = None  # one segment in memory at a time
        if joiner is None:
            raise NoFootage(
                f"none of the {len(records)} segments of that window can be read: "
                + "; ".join(sorted({s.reason for s in skipped}))
            )
        return joiner.finish(tuple(skipped))
    finally:
        sink.close()


class _StreamSink:
    """Write-only view of ``out`` that hashes (unless ``out`` does) and counts: the
    clip goes out front to back, never seeked. Hashing waits for ``hash_pending``
    (at most a segment's worth: bytes and views of bytes never change)."""

    def __init__(self, out: Writable, digest_of_out: Callable[[], str] | None) -> None:
        self._out = out
        self._digest_of_out = digest_of_out
        self._hash = hashlib.sha256()
        self._unhashed: list[bytes | memoryview] = []
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self._out.write(data)
        if self._digest_of_out is None:  # hashed here, not by out
            self._unhashed.append(data)
        self.bytes += len(data)
        return len(data)

    def hash_pending(self) -> None:
        for data in self._unhashed:
            self._hash.update(data)
        self._unhashed.clear()

    def hexdigest(self) -> str:
        if self._digest_of_out is not None:
            return self._digest_of_out()
        self.hash_pending()
        return self._hash.hexdigest()

    def close(self) -> None:
        self._unhashed.clear()


class _Unusable(Exception):
    """A decrypted segment that neither joins nor remuxes (never seen from our segmenter)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Joiner:
    """Writes the clip: the first segment's init, then every segment's fragments."""

    def __init__(
        self, sink: _StreamSink, init: bytes, track: fmp4.Track, gap_threshold_ms: int
    ) -> None:
        self._sink = sink
        self._init = init  # the clip's ftyp + moov: the mould later segments must fit
        self._track = track
        self._gap_threshold_ms = gap_threshold_ms
        self._sequence = 0  # of the last fragment written (mfhd counts from 1)
        self._offset = 0  # decode time where the next segment starts (track time scale)
        self._seek_points: list[tuple[int, int]] = []  # (decode time, moof offset)
        self._first_frame_ms: int | None = None
        self._last_frame_ms = 0
        self._previous_last_ms: int | None = None
        self._segments = 0
        self._frames = 0
        self._clock_synced = True
        self._gaps: list[Gap] = []
        sink.write(init)

    @classmethod
    def start(cls, sink: _StreamSink, first: OpenedSegment, gap_threshold_ms: int) -> _Joiner:
        data, layout = first.plaintext, _layout_or_none(first.plaintext)
        if layout is None or layout.has_edit_list or not _starts_with_key_frame(layout):
            data = _remuxed(first, template_init=None, timescale=None)
            layout = _layout_or_none(data)
            if layout is None:
                raise _Unusable("remuxing it did not give a segment that joins")
        return cls(sink, layout.init(data), layout.track, gap_threshold_ms)

    def append(self, segment: OpenedSegment) -> None:
        # The decrypted bytes as they are: the parser steps over the metadata box.
        data, layout = segment.plaintext, _layout_or_none(segment.plaintext)
        if layout is None or not self._fits(data, layout):
            data = _remuxed(segment, self._init, self._track.timescale)
            layout = _layout_or_none(data)
            if layout is None or not self._fits(data, layout):
                raise _Unusable("remuxing it did not give a segment that joins")
        meta = segment.meta
        if self._previous_last_ms is not None:
            if meta.first_frame_ms - self._previous_last_ms > self._gap_threshold_ms:
                self._gaps.append(
                    Gap(self._previous_last_ms, meta.first_frame_ms, self._offset_ms())
                )
        view = memoryview(data)
        base = layout.fragments[0].decode_time
        end = self._offset
        for fragment in layout.fragments:
            self._sequence += 1
            decode_time = self._offset + fragment.decode_time - base
            # The moof up to its tfdt time (a copy of ~100 bytes, its two fields
            # rewritten), then the rest of the fragment as it is: two writes.
            head_end = fragment.time_at + fragment.time_bytes
            head = bytearray(view[fragment.start : head_end])
            sequence_at = fragment.sequence_at - fragment.start
            time_at = fragment.time_at - fragment.start
            head[sequence_at : sequence_at + 4] = self._sequence.to_bytes(4, "big")
            head[time_at:] = decode_time.to_bytes(fragment.time_bytes, "big")
            if fragment.starts_with_sync_sample:
                self._seek_points.append((decode_time, self._sink.bytes))
            self._sink.write(bytes(head))
            self._sink.write(view[head_end : fragment.end])
            end = max(end, decode_time + fragment.duration)
            self._frames += fragment.samples
        self._offset = end
        self._segments += 1
        if self._first_frame_ms is None:
            self._first_frame_ms = meta.first_frame_ms
        self._last_frame_ms = max(self._last_frame_ms, meta.last_frame_ms)
        self._previous_last_ms = meta.last_frame_ms
        self._clock_synced = self._clock_synced and meta.clock_synced

    def finish(self, skipped: tuple[Skipped, ...]) -> ClipInfo:
        self._sink.write(fmp4.mfra(self._track.track_id, self._seek_points))
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

    def _fits(self, data: bytes | bytearray, layout: fmp4.SegmentLayout) -> bool:
        """Joins as it is: same track and time scale, starts with a key frame that
        decoders can start from (the clip's SPS/PPS, or its own in band), and its
        decode times fit the tfdt fields they go into."""
        track = layout.track
        if (track.track_id, track.timescale, track.nal_length_size) != (
            self._track.track_id,
            self._track.timescale,
            self._track.nal_length_size,
        ):
            return False
        first = layout.fragments[0]
        if not _starts_with_key_frame(layout):
            return False
        if track.parameter_sets != self._track.parameter_sets and not (
            fmp4.has_parameter_sets_in_band(data, first, track)
        ):
            return False
        for fragment in layout.fragments:
            relative = fragment.decode_time - first.decode_time
            if relative < 0 or (self._offset + relative) >> (8 * fragment.time_bytes):
                return False
        return True

    def _offset_ms(self) -> int:
        return round(self._offset * 1000 / self._track.timescale)


def _layout_or_none(data: bytes | bytearray) -> fmp4.SegmentLayout | None:
    try:
        return fmp4.parse_segment(data)
    except fmp4.NotJoinable as reason:
        log.debug("clip: segment remuxed before joining: %s", reason)
        return None


def _starts_with_key_frame(layout: fmp4.SegmentLayout) -> bool:
    return layout.fragments[0].starts_with_sync_sample


def _remuxed(segment: OpenedSegment, template_init: bytes | None, timescale: int | None) -> bytes:
    """The segment alone, remuxed by stream copy into the joinable mould.

    With a template (the clip's ftyp + moov) the result has the clip's sample
    description and time scale, and the segment's own SPS/PPS, if they differ,
    go in band on its key frames (every H.264 decoder picks them up there).
    Without one (the clip's first segment) it keeps its own. Times restart at 0.
    """
    try:
        return _remux(segment, template_init, timescale)
    except (av.error.FFmpegError, ValueError, IndexError) as error:
        raise _Unusable(f"cannot be remuxed: {error}") from None


def _remux(segment: OpenedSegment, template_init: bytes | None, timescale: int | None) -> bytes:
    buffer = io.BytesIO()
    with _open_mp4(segment.mp4) as source:
        stream = source.streams.video[0]
        template_source = _open_mp4(template_init) if template_init is not None else None
        try:
            template = (template_source or source).streams.video[0]
            extradata = bytes(template.codec_context.extradata or b"")
            time_base = (
                Fraction(1, timescale) if timescale else (template.time_base or Fraction(1, 90000))
            )
            # The segmenter's own muxer settings give the joinable mould.
            options = dict(SEGMENTER_MUXER_OPTIONS)
            with av.open(buffer, "w", format="mp4", options=options) as output:
                out_stream = output.add_stream_from_template(template)
                out_stream.time_base = time_base
                own = bytes(stream.codec_context.extradata or b"")
                in_band = b""
                if own and extradata and own != extradata:
                    in_band = _in_band_parameter_sets(own, extradata)
                rescale = _rescaler(Fraction(stream.time_base or time_base) / time_base)
                frame_ticks = _nominal_frame_ticks(segment, time_base)
                base_dts: int | None = None
                last_dts: int | None = None
                for packet in source.demux(stream):
                    if packet.dts is None or packet.size == 0:
                        continue  # the demuxer's empty packet at the end of the file
                    if base_dts is None:
                        base_dts = packet.dts
                    dts = rescale(packet.dts - base_dts)
                    pts_in = packet.pts if packet.pts is not None else packet.dts
                    pts = rescale(pts_in - base_dts)
                    if last_dts is not None and dts <= last_dts:
                        dts = last_dts + 1  # never backwards, whatever the input did
                    duration = rescale(packet.duration) if packet.duration else frame_ticks
                    if in_band and packet.is_keyframe:
                        packet = _with_prefix(packet, in_band)
                    packet.stream = out_stream
                    packet.time_base = time_base
                    packet.dts = dts
                    packet.pts = max(pts, dts)
                    packet.duration = duration
                    output.mux(packet)
                    last_dts = dts
        finally:
            if template_source is not None:
                template_source.close()
    return buffer.getvalue()


def _nominal_frame_ticks(segment: OpenedSegment, time_base: Fraction) -> int:
    meta = segment.meta
    if meta.frame_count > 1 and meta.last_frame_ms > meta.first_frame_ms:
        frame_s = Fraction(meta.last_frame_ms - meta.first_frame_ms, 1000 * (meta.frame_count - 1))
    else:
        frame_s = _FALLBACK_FRAME_S
    return max(1, round(frame_s / time_base))


def _rescaler(scale: Fraction) -> Callable[[int], int]:
    if scale == 1:  # the usual case (one time base for the whole ring): plain ints
        return lambda ticks: ticks
    return lambda ticks: round(ticks * scale)


def _open_mp4(data: bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(data), "r", format="mp4", container_options=SEGMENT_DEMUXER_OPTIONS)


def _with_prefix(packet: av.Packet, prefix: bytes) -> av.Packet:
    replacement = av.Packet(prefix + bytes(packet))
    replacement.is_keyframe = True
    return replacement


def _in_band_parameter_sets(avcc: bytes, clip_avcc: bytes) -> bytes:
    """The SPS and PPS of ``avcc``, each prefixed with its length as the clip's samples
    are (nothing if either record is not an avcC one: Annex B extradata)."""
    try:
        units, _ = fmp4.avcc_units(avcc)
        _, length_size = fmp4.avcc_units(clip_avcc)
    except fmp4.NotJoinable:
        return b""
    return b"".join(len(unit).to_bytes(length_size, "big") + unit for unit in units)
