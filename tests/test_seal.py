"""Sealing: real age files, opened by the real `age` tool and played by ffprobe/PyAV."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from edge.buffer.seal import (
    META_BOX_UUID,
    SealedSegmentError,
    meta_box,
    open_sealed,
    seal_segment,
)
from edge.buffer.segment import Segment
from ringtools import RunSpec, decode_frame_numbers, make_segments

SPEC = RunSpec(count=3)


def ffprobe_frames(path: Path) -> tuple[str, int]:
    """(codec, decoded frame count) as ffprobe sees the file; fails on any ffprobe error."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
    )
    assert result.stderr == b"", result.stderr.decode()
    stream = json.loads(result.stdout)["streams"][0]
    return stream["codec_name"], int(stream["nb_read_frames"])


def test_round_trip_keeps_video_and_metadata() -> None:
    segment = make_segments(SPEC)[1]
    device = x25519.Identity.generate()
    sealed = seal_segment(segment, [device.to_public()])
    assert sealed.startswith(b"age-encryption.org/v1\n")
    opened = open_sealed(sealed, [device])
    assert opened.meta == segment.meta
    assert opened.mp4 == segment.mp4
    assert opened.video_bytes == len(segment.mp4)


def test_owner_opens_a_segment_with_the_age_tool_and_it_plays(tmp_path: Path) -> None:
    segment = make_segments(SPEC)[1]
    device, owner = x25519.Identity.generate(), x25519.Identity.generate()
    sealed_path = tmp_path / "segment.age"
    sealed_path.write_bytes(seal_segment(segment, [device.to_public(), owner.to_public()]))
    owner_key = tmp_path / "owner.key"
    owner_key.write_text(f"{owner}\n")
    # The documented command: age -d -i owner.key SEGMENT > seg.mp4
    opened_path = tmp_path / "seg.mp4"
    with open(opened_path, "wb") as out:
        subprocess.run(
            ["age", "-d", "-i", str(owner_key), str(sealed_path)], stdout=out, check=True
        )
    assert ffprobe_frames(opened_path) == ("h264", 10)
    assert decode_frame_numbers(opened_path) == list(range(10, 20))
    # The metadata rides along inside, in a box players skip.
    assert META_BOX_UUID in opened_path.read_bytes()[:200]


def test_wrong_key_and_bit_flips_do_not_open() -> None:
    segment = make_segments(SPEC)[0]
    device = x25519.Identity.generate()
    sealed = seal_segment(segment, [device.to_public()])
    with pytest.raises(SealedSegmentError, match="does not decrypt"):
        open_sealed(sealed, [x25519.Identity.generate()])
    for offset in (len(sealed) // 2, len(sealed) - 1):
        flipped = bytearray(sealed)
        flipped[offset] ^= 0x01
        with pytest.raises(SealedSegmentError, match="does not decrypt"):
            open_sealed(bytes(flipped), [device])
    with pytest.raises(SealedSegmentError, match="does not decrypt"):
        open_sealed(sealed[: len(sealed) - 100], [device])


def test_a_validly_sealed_file_that_is_not_our_segment_is_refused() -> None:
    device = x25519.Identity.generate()
    mp4 = make_segments(SPEC)[0].mp4
    # Sealed by someone else, without our metadata box.
    with pytest.raises(SealedSegmentError, match="no metadata box"):
        open_sealed(pyrage.encrypt(mp4, [device.to_public()]), [device])
    with pytest.raises(SealedSegmentError, match="ftyp"):
        open_sealed(pyrage.encrypt(b"hello", [device.to_public()]), [device])
    # A metadata box whose video size is wrong (video cut after sealing the box).
    segment = make_segments(SPEC)[0]
    box = meta_box(segment.meta, len(mp4) + 5)
    ftyp_end = int.from_bytes(mp4[:4], "big")
    forged = mp4[:ftyp_end] + box + mp4[ftyp_end:]
    with pytest.raises(SealedSegmentError, match="metadata says"):
        open_sealed(pyrage.encrypt(forged, [device.to_public()]), [device])


def test_sealing_refuses_what_is_not_a_segment() -> None:
    segment = make_segments(SPEC)[0]
    device = x25519.Identity.generate().to_public()
    with pytest.raises(ValueError, match="ftyp"):
        seal_segment(dataclasses.replace(segment, mp4=b"\x00" * 64), [device])
    with pytest.raises(ValueError, match="recipient"):
        seal_segment(segment, [])
    with pytest.raises(ValueError, match="bytes is out of bounds"):
        seal_segment(Segment(meta=segment.meta, mp4=b""), [device])
