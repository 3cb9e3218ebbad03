"""The fMP4 layout parser the clip joiner relies on: real segments, and broken ones.

Segments come from tests/ringtools.py (libx264 through PyAV's mp4 muxer, laid out
as edge/buffer/segmenter.py lays them out). The parser must take those apart
exactly, and for anything mangled say NotJoinable (so the clip builder remuxes
or skips) rather than raise anything else or point outside the data.
"""

from __future__ import annotations

import random
import struct

import pytest

from edge.buffer import fmp4
from ringtools import RunSpec, make_segments

SEGMENTS = make_segments(RunSpec(count=3, frames_per_segment=10))


def test_a_segmenter_segment_is_taken_apart_exactly() -> None:
    segment = SEGMENTS[1]
    layout = fmp4.parse_segment(segment.mp4)
    assert layout.track.timescale == 90_000 and layout.track.track_id == 1
    assert not layout.has_edit_list
    (fragment,) = layout.fragments
    assert fragment.samples == 10 and fragment.duration == 90_000  # 10 frames at 10 fps
    assert fragment.starts_with_sync_sample
    assert fragment.decode_time == 108_000  # the run's time: tfdt is kept by the segmenter
    assert fragment.end == len(segment.mp4) - 67  # then only ffmpeg's mfra
    assert fmp4.has_parameter_sets_in_band(segment.mp4, fragment, layout.track)
    # The two fields a join rewrites are where the boxes say.
    data = segment.mp4
    assert data[fragment.sequence_at - 8 : fragment.sequence_at - 4] == b"mfhd"
    assert data[fragment.time_at - 8 : fragment.time_at - 4] == b"tfdt"


def test_a_moof_with_its_traf_before_its_mfhd_is_not_joinable() -> None:
    # The joiner copies a moof up to its tfdt with the sequence number in that
    # copy: a traf first (which no muxer writes) goes to the remuxer instead.
    data = bytearray(SEGMENTS[1].mp4)
    fragment = fmp4.parse_segment(bytes(data)).fragments[0]
    mfhd_start = fragment.sequence_at - 12  # size, type, version and flags
    traf_start = mfhd_start + int.from_bytes(data[mfhd_start : mfhd_start + 4], "big")
    traf_end = traf_start + int.from_bytes(data[traf_start : traf_start + 4], "big")
    assert data[traf_start + 4 : traf_start + 8] == b"traf"
    data[mfhd_start:traf_end] = data[traf_start:traf_end] + data[mfhd_start:traf_start]
    with pytest.raises(fmp4.NotJoinable, match="mfhd does not come before its traf"):
        fmp4.parse_segment(bytes(data))


def test_parameter_sets_compare_by_meaning_not_by_trailing_zero_bytes() -> None:
    # ffmpeg keeps a trailing zero byte on the PPS of some segments and not others.
    tracks = [fmp4.parse_segment(s.mp4).track for s in SEGMENTS]
    assert len({t.parameter_sets for t in tracks}) == 1
    assert len(tracks[0].parameter_sets) == 2  # one SPS, one PPS


def test_mfra_lists_each_key_fragment() -> None:
    box = fmp4.mfra(1, [(0, 800), (90_000, 5_000)])
    size, kind = struct.unpack_from(">I4s", box)
    assert (size, kind) == (len(box), b"mfra")
    assert box[8 + 4 : 8 + 8] == b"tfra"
    assert struct.unpack_from(">III", box, 8 + 12) == (1, 0, 2)
    assert struct.unpack_from(">QQBBB", box, 8 + 24) == (0, 800, 1, 1, 1)
    assert box[-12:-8] == b"mfro" and int.from_bytes(box[-4:], "big") == len(box)


@pytest.mark.parametrize("seed", range(4))
def test_mangled_segments_are_not_joinable_never_a_crash(seed: int) -> None:
    rng = random.Random(seed)
    original = SEGMENTS[seed % len(SEGMENTS)].mp4
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(1500):
        data = bytearray(original)
        mutation = rng.randrange(4)
        if mutation == 0:
            del data[rng.randrange(len(data)) :]
        elif mutation == 1:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(min(len(data), 1200))] = rng.randrange(256)  # the boxes
        elif mutation == 2:
            at = rng.randrange(min(len(data), 1200) - 4)
            data[at : at + 4] = rng.choice([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\x01"])
        else:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        try:
            layout = fmp4.parse_segment(bytes(data))
        except fmp4.NotJoinable:
            outcomes["refused"] += 1
            continue
        outcomes["parsed"] += 1
        for fragment in layout.fragments:  # everything it points at lies inside the data
            assert 0 <= fragment.start < fragment.sequence_at < fragment.time_at < fragment.end
            assert fragment.end <= len(data)
            assert fragment.first_sample_at + fragment.first_sample_size <= fragment.end
            fmp4.has_parameter_sets_in_band(bytes(data), fragment, layout.track)
    assert outcomes["refused"] > 100 and outcomes["parsed"] > 100, outcomes
