"""Just enough ISO-BMFF to join fragmented-MP4 segments byte for byte.

``parse_segment`` reads a segment's layout (ftyp, moov, moof/mdat pairs) and
tells where the two fields a join rewrites sit in each moof: the fragment's
sequence number (``mfhd``) and its decode time (``tfdt``). It accepts only the
plain layout the segmenter makes (one H.264 track, one ``traf`` per ``moof``,
sample data in the ``mdat`` right after it, no edit list) and raises NotJoinable
with the reason for anything else, so the clip builder can remux that segment
instead. Every size and offset is checked against its parent before use: the
bytes were decrypted from the ring, which authenticates them, but are parsed as
untrusted all the same.

Box layouts follow ISO/IEC 14496-12 (mvhd, tkhd, mdhd, trex, mfhd, tfhd, tfdt,
trun, mfra/tfra/mfro) and 14496-15 (avc1, avcC).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# tfhd flags
_BASE_DATA_OFFSET = 0x000001
_SAMPLE_DESCRIPTION_INDEX = 0x000002
_DEFAULT_DURATION = 0x000008
_DEFAULT_SIZE = 0x000010
_DEFAULT_FLAGS = 0x000020
_DURATION_IS_EMPTY = 0x010000
# trun flags
_DATA_OFFSET = 0x000001
_FIRST_SAMPLE_FLAGS = 0x000004
_SAMPLE_DURATION = 0x000100
_SAMPLE_SIZE = 0x000200
_SAMPLE_FLAGS = 0x000400
_SAMPLE_CTO = 0x000800
_NON_SYNC_SAMPLE = 0x00010000  # in sample flags
# Top-level boxes a join leaves out: ffmpeg ends a fragmented file with an mfra,
# free/skip are padding, and a sealed segment carries its metadata in a uuid box
# after ftyp (edge/buffer/seal.py), which every MP4 reader skips.
_DROPPED_TOP_LEVEL = frozenset({b"mfra", b"free", b"skip", b"uuid"})
_MAX_SAMPLES_PER_FRAGMENT = 1 << 20


class NotJoinable(Exception):
    """This segment cannot be joined as it is (the message says why)."""


@dataclass(frozen=True, slots=True)
class Track:
    """What the moov says of the one video track."""

    track_id: int
    timescale: int  # ticks per second of decode times and durations
    parameter_sets: tuple[bytes, ...]  # SPS and PPS from avcC, trailing zero bytes dropped
    nal_length_size: int  # bytes in each sample's NAL unit length prefix
    default_duration: int  # trex defaults, for fragments that give none
    default_size: int
    default_flags: int


@dataclass(frozen=True, slots=True)
class Fragment:
    """One moof with its mdat; offsets are into the segment's bytes."""

    start: int  # the moof box
    end: int  # end of the mdat after it
    sequence_at: int  # offset of mfhd's sequence_number (4 bytes)
    time_at: int  # offset of tfdt's baseMediaDecodeTime
    time_bytes: int  # 8 (tfdt version 1) or 4 (version 0)
    decode_time: int
    duration: int  # sum of its samples' durations, in the track's timescale
    samples: int
    starts_with_sync_sample: bool
    first_sample_at: int
    first_sample_size: int


@dataclass(frozen=True, slots=True)
class SegmentLayout:
    ftyp: tuple[int, int]  # (start, end) of the ftyp box
    moov: tuple[int, int]  # and of the moov box: with ftyp, what a player needs first
    has_edit_list: bool
    track: Track
    fragments: tuple[Fragment, ...]

    def init(self, data: bytes | bytearray | memoryview) -> bytes:
        """The segment's ftyp and moov boxes, as they are."""
        return bytes(data[slice(*self.ftyp)]) + bytes(data[slice(*self.moov)])


def parse_segment(data: bytes | bytearray | memoryview) -> SegmentLayout:
    view = memoryview(data)
    top = list(_boxes(view, 0, len(view)))
    while len(top) > 1 and top[1][0] == b"uuid":  # our metadata box, in a sealed segment
        del top[1]
    if len(top) < 4 or top[0][0] != b"ftyp" or top[1][0] != b"moov":
        raise NotJoinable("does not start with ftyp, moov")
    _, moov_start, moov_payload, moov_end = top[1]
    track, has_edit_list = _parse_moov(view, moov_payload, moov_end)
    fragments: list[Fragment] = []
    index = 2
    while index < len(top):
        box_type, start, payload, end = top[index]
        if box_type in _DROPPED_TOP_LEVEL:
            index += 1
            continue
        if box_type != b"moof":
            raise NotJoinable(f"unexpected top-level {_name(box_type)} box")
        if index + 1 >= len(top) or top[index + 1][0] != b"mdat":
            raise NotJoinable("a moof is not followed by its mdat")
        _, _, mdat_payload, mdat_end = top[index + 1]
        fragments.append(_parse_moof(view, track, start, payload, end, mdat_payload, mdat_end))
        index += 2
    if not fragments:
        raise NotJoinable("holds no fragments")
    ftyp = (top[0][1], top[0][3])
    return SegmentLayout(ftyp, (moov_start, moov_end), has_edit_list, track, tuple(fragments))


def has_parameter_sets_in_band(
    data: bytes | bytearray | memoryview, fragment: Fragment, track: Track
) -> bool:
    """True if the fragment's first sample carries an SPS and a PPS before its picture."""
    view = memoryview(data)[
        fragment.first_sample_at : fragment.first_sample_at + fragment.first_sample_size
    ]
    size = track.nal_length_size
    offset = 0
    seen: set[int] = set()
    while offset + size <= len(view):
        length = int.from_bytes(view[offset : offset + size], "big")
        if length == 0 or offset + size + length > len(view):
            return False
        nal_type = view[offset + size] & 0x1F
        if nal_type in (1, 5):  # a slice: parameter sets must come before it
            break
        seen.add(nal_type)
        offset += size + length
    return {7, 8} <= seen


def mfra(track_id: int, seek_points: list[tuple[int, int]]) -> bytes:
    """A movie fragment random access box: (decode time, moof offset) of each key fragment."""
    entries = b"".join(struct.pack(">QQBBB", time, offset, 1, 1, 1) for time, offset in seek_points)
    tfra = _full_box(b"tfra", 1, struct.pack(">III", track_id, 0, len(seek_points)) + entries)
    size = 8 + len(tfra) + 16
    return (
        struct.pack(">I4s", size, b"mfra") + tfra + _full_box(b"mfro", 0, struct.pack(">I", size))
    )


def avcc_parameter_sets(avcc: bytes | memoryview) -> tuple[tuple[bytes, ...], int]:
    """(SPS and PPS NAL units, NAL length size) of an avcC record, to compare: muxers
    differ on a trailing zero byte (from the Annex B stream a unit was cut out of),
    which is not part of the unit's meaning."""
    units, length_size = avcc_units(avcc)
    return tuple(unit.rstrip(b"\0") for unit in units), length_size


def avcc_units(avcc: bytes | memoryview) -> tuple[tuple[bytes, ...], int]:
    """(SPS and PPS NAL units as stored, NAL length size) of an avcC record."""
    record = bytes(avcc)
    if len(record) < 7 or record[0] != 1:
        raise NotJoinable("avcC is not a version 1 record")
    length_size = (record[4] & 0x03) + 1
    units: list[bytes] = []
    offset = 5
    try:
        for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count
            count = record[offset] & count_mask
            offset += 1
            for _ in range(count):
                (size,) = struct.unpack_from(">H", record, offset)
                if offset + 2 + size > len(record):
                    raise NotJoinable("avcC parameter set overruns the record")
                units.append(record[offset + 2 : offset + 2 + size])
                offset += 2 + size
    except (IndexError, struct.error):
        raise NotJoinable("avcC is truncated") from None
    return tuple(units), length_size


# -- moov -------------------------------------------------------------------------------


def _parse_moov(view: memoryview, payload: int, end: int) -> tuple[Track, bool]:
    moov = _children(view, payload, end)
    traks = moov.get(b"trak", [])
    if len(traks) != 1:
        raise NotJoinable(f"has {len(traks)} tracks, not one")
    trak = _children(view, traks[0][0], traks[0][1])
    mvex = _children(view, *_one(moov, b"mvex"))
    if b"mehd" in mvex:  # a fragment duration: the segment's, wrong for a clip
        raise NotJoinable("moov states a fragment duration (mehd)")
    tkhd_payload, tkhd_end = _one(trak, b"tkhd")
    version = view[tkhd_payload]
    track_id = _u32(view, tkhd_payload + (20 if version == 1 else 12), tkhd_end)
    mdia = _children(view, *_one(trak, b"mdia"))
    mdhd_payload, mdhd_end = _one(mdia, b"mdhd")
    version = view[mdhd_payload]
    timescale = _u32(view, mdhd_payload + (20 if version == 1 else 12), mdhd_end)
    if timescale == 0:
        raise NotJoinable("time scale is 0")
    minf = _children(view, *_one(mdia, b"minf"))
    stbl = _children(view, *_one(minf, b"stbl"))
    stsd_payload, stsd_end = _one(stbl, b"stsd")
    if _u32(view, stsd_payload + 4, stsd_end) != 1:
        raise NotJoinable("not exactly one sample description")
    entries = list(_boxes(view, stsd_payload + 8, stsd_end))
    if len(entries) != 1 or entries[0][0] != b"avc1":
        raise NotJoinable("sample description is not avc1 (H.264, parameter sets in avcC)")
    _, _, avc1_payload, avc1_end = entries[0]
    avc1 = _children(view, avc1_payload + 78, avc1_end)  # after the visual sample entry
    parameter_sets, length_size = avcc_parameter_sets(view[slice(*_one(avc1, b"avcC"))])
    trex_payload, trex_end = _one(mvex, b"trex")
    trex_track, _, duration, size, flags = struct.unpack_from(
        ">IIIII", _bounded(view, trex_payload + 4, 20, trex_end)
    )
    if trex_track != track_id:
        raise NotJoinable("trex names another track")
    track = Track(track_id, timescale, parameter_sets, length_size, duration, size, flags)
    return track, b"edts" in trak


# -- moof -------------------------------------------------------------------------------


def _parse_moof(
    view: memoryview,
    track: Track,
    start: int,
    payload: int,
    end: int,
    mdat_payload: int,
    mdat_end: int,
) -> Fragment:
    moof = _children(view, payload, end)
    if set(moof) != {b"mfhd", b"traf"} or len(moof[b"traf"]) != 1:
        raise NotJoinable("moof is not one mfhd and one traf")
    mfhd_payload, mfhd_end = _one(moof, b"mfhd")
    _u32(view, mfhd_payload + 4, mfhd_end)
    if mfhd_end > moof[b"traf"][0][0]:  # the joiner rewrites the two fields in this order
        raise NotJoinable("moof's mfhd does not come before its traf")
    traf = _children(view, *moof[b"traf"][0])
    if set(traf) != {b"tfhd", b"tfdt", b"trun"}:
        raise NotJoinable("traf holds more than tfhd, tfdt and trun")
    tfhd_payload, tfhd_end = _one(traf, b"tfhd")
    flags = _u32(view, tfhd_payload, tfhd_end) & 0xFFFFFF
    if flags & (_BASE_DATA_OFFSET | _DURATION_IS_EMPTY):
        raise NotJoinable("tfhd has an explicit base data offset or an empty duration")
    if _u32(view, tfhd_payload + 4, tfhd_end) != track.track_id:
        raise NotJoinable("traf is for another track")
    offset = tfhd_payload + 8
    default_duration, default_size, default_flags = (
        track.default_duration,
        track.default_size,
        track.default_flags,
    )
    if flags & _SAMPLE_DESCRIPTION_INDEX:
        offset += 4
    if flags & _DEFAULT_DURATION:
        default_duration = _u32(view, offset, tfhd_end)
        offset += 4
    if flags & _DEFAULT_SIZE:
        default_size = _u32(view, offset, tfhd_end)
        offset += 4
    if flags & _DEFAULT_FLAGS:
        default_flags = _u32(view, offset, tfhd_end)
    tfdt_payload, tfdt_end = _one(traf, b"tfdt")
    time_bytes = 8 if view[tfdt_payload] == 1 else 4
    time_at = tfdt_payload + 4
    decode_time = int.from_bytes(_bounded(view, time_at, time_bytes, tfdt_end), "big")
    duration = 0
    samples = 0
    first: tuple[int, int, bool] | None = None  # (data offset, size, sync) of sample 1
    for trun_payload, trun_end in traf[b"trun"]:
        trun_flags = _u32(view, trun_payload, trun_end) & 0xFFFFFF
        count = _u32(view, trun_payload + 4, trun_end)
        if not trun_flags & _DATA_OFFSET:
            raise NotJoinable("trun gives no data offset")
        (data_offset,) = struct.unpack_from(">i", _bounded(view, trun_payload + 8, 4, trun_end))
        at = trun_payload + 12
        first_flags = default_flags
        if trun_flags & _FIRST_SAMPLE_FLAGS:
            first_flags = _u32(view, at, trun_end)
            at += 4
        fields = [
            bit
            for bit in (_SAMPLE_DURATION, _SAMPLE_SIZE, _SAMPLE_FLAGS, _SAMPLE_CTO)
            if trun_flags & bit
        ]
        if count > _MAX_SAMPLES_PER_FRAGMENT or at + count * 4 * len(fields) > trun_end:
            raise NotJoinable("trun sample table overruns its box")
        data_at = start + data_offset
        table = struct.unpack_from(f">{count * len(fields)}I", view, at) if fields else ()
        sizes = _column(table, fields, _SAMPLE_SIZE, default_size, count)
        duration += sum(_column(table, fields, _SAMPLE_DURATION, default_duration, count))
        if first is None and count:
            sample_flags = _column(table, fields, _SAMPLE_FLAGS, first_flags, count)[0]
            first = (data_at, sizes[0], not sample_flags & _NON_SYNC_SAMPLE)
        data_size = sum(sizes)
        if data_at < mdat_payload or data_at + data_size > mdat_end:
            raise NotJoinable("trun points outside its mdat")
        samples += count
    if first is None:
        raise NotJoinable("fragment holds no samples")
    return Fragment(
        start=start,
        end=mdat_end,
        sequence_at=mfhd_payload + 4,
        time_at=time_at,
        time_bytes=time_bytes,
        decode_time=decode_time,
        duration=duration,
        samples=samples,
        starts_with_sync_sample=first[2],
        first_sample_at=first[0],
        first_sample_size=first[1],
    )


def _column(
    table: tuple[int, ...], fields: list[int], field: int, default: int, count: int
) -> list[int]:
    """One field of every sample of a trun's sample table, or its default for all."""
    if field not in fields:
        return [default] * count
    return list(table[fields.index(field) :: len(fields)])


# -- boxes ------------------------------------------------------------------------------


def _boxes(view: memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, start, payload start, end) of each box in view[start:end]."""
    offset = start
    while offset < end:
        if offset + 8 > end:
            raise NotJoinable("truncated box header")
        size, box_type = struct.unpack_from(">I4s", view, offset)
        payload = offset + 8
        if size == 1:
            if offset + 16 > end:
                raise NotJoinable("truncated box header")
            (size,) = struct.unpack_from(">Q", view, offset + 8)
            payload = offset + 16
        elif size == 0:
            size = end - offset
        if size < payload - offset or offset + size > end:
            raise NotJoinable(f"{_name(box_type)} box overruns its parent")
        yield box_type, offset, payload, offset + size
        offset += size


def _children(view: memoryview, payload: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    found: dict[bytes, list[tuple[int, int]]] = {}
    for box_type, _, child_payload, child_end in _boxes(view, payload, end):
        found.setdefault(box_type, []).append((child_payload, child_end))
    return found


def _one(boxes: dict[bytes, list[tuple[int, int]]], box_type: bytes) -> tuple[int, int]:
    found = boxes.get(box_type, [])
    if len(found) != 1:
        raise NotJoinable(f"{len(found)} {_name(box_type)} boxes where one belongs")
    return found[0]


def _bounded(view: memoryview, offset: int, size: int, end: int) -> memoryview:
    if offset + size > end:
        raise NotJoinable("box too short for its fields")
    return view[offset : offset + size]


def _u32(view: memoryview, offset: int, end: int) -> int:
    return int.from_bytes(_bounded(view, offset, 4, end), "big")


def _full_box(box_type: bytes, version: int, body: bytes) -> bytes:
    return struct.pack(">I4sB3x", 12 + len(body), box_type, version) + body


def _name(box_type: bytes) -> str:
    return box_type.decode("latin-1").encode("unicode_escape").decode()
