"""Sealing segments with age (age-encryption.org/v1, X25519 recipients).

The sealed plaintext is the segment's own fragmented MP4 with one extra top-level
box right after ``ftyp``: a ``uuid`` box holding the segment's metadata as JSON.
MP4 readers skip ``uuid`` boxes they do not know, so an owner can run
``age -d -i owner.key SEGMENT > seg.mp4`` and play ``seg.mp4`` as it is, and the
metadata is authenticated together with the video by age's AEAD: the index row and
the box are compared on every read, so a re-timed row or a swapped file shows.

Only this module and edge/keys.py touch ciphers and keys.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pyrage import x25519

from edge.buffer import agefile
from edge.buffer.segment import Segment, SegmentMeta

# uuid box type for our metadata (random, fixed forever: readers look for it).
META_BOX_UUID = bytes.fromhex("6d1f6f1e9c2a4b7e8d3e0c5a1b2f4e60")
META_FORMAT_VERSION = 1
MAX_META_JSON_BYTES = 4096
MAX_SEGMENT_BYTES = 256 * 1024 * 1024  # 8 Mbit/s for 2 s is 2 MB; this bounds a mistake


_T = TypeVar("_T")


class SealedSegmentError(Exception):
    """A sealed segment does not open, or what it holds is not a segment of ours."""


@dataclass(frozen=True, slots=True)
class OpenedSegment:
    meta: SegmentMeta
    video_bytes: int  # size of the segment's MP4 as recorded (without the metadata box)
    plaintext: bytes | bytearray  # as decrypted: the MP4 with the metadata box after ftyp
    meta_box: tuple[int, int]  # where that box lies in ``plaintext`` (start, end)

    @property
    def mp4(self) -> bytes:
        """The segment's MP4 exactly as recorded (a copy without the metadata box).
        The clip joiner reads ``plaintext`` instead: MP4 readers skip the box."""
        start, end = self.meta_box
        return b"".join((self.plaintext[:start], self.plaintext[end:]))


def seal_segment(segment: Segment, recipients: Sequence[x25519.Recipient]) -> bytearray:
    """Seal one segment (metadata box inserted after ``ftyp``) to all the recipients."""
    if not recipients:
        raise ValueError("at least one recipient is needed")
    mp4 = segment.mp4
    if not 0 < len(mp4) <= MAX_SEGMENT_BYTES:
        raise ValueError(f"segment of {len(mp4)} bytes is out of bounds")
    ftyp_end = _first_box_end(mp4, b"ftyp")
    if ftyp_end is None:
        raise ValueError("segment does not start with an ftyp box: not a fragmented MP4")
    view = memoryview(mp4)
    parts = (view[:ftyp_end], meta_box(segment.meta, len(mp4)), view[ftyp_end:])
    # Sealed straight from the parts, never joined into one more copy of the
    # plaintext; edge/buffer/agefile.py says why not pyrage here.
    return agefile.encrypt(parts, [str(recipient) for recipient in recipients])


def sealed_digest(sealed: bytes | bytearray) -> tuple[bytes, int]:
    """(SHA-256, bytes it covers) that bind a sealed segment file to its index row.

    It covers the age header and the payload nonce, a few hundred bytes, not the
    whole file: those fix the file key and the payload key, and age authenticates
    every payload chunk under them, so a file that keeps them cannot hold other
    content unless its writer knew the file key (a recipient's private key). What
    the digest adds to age: anyone holding a recipient's public key can seal a
    file, so a segment replaced by a fresh one, with metadata to match its row,
    would open cleanly without it. Hashing the whole 2 MB took as long as sealing
    it (1.1 ms here; a Pi 4's CPU has no SHA-2 instructions), on every write and
    every read. Raises SealedSegmentError if ``sealed`` is not framed as age.
    """
    try:
        covered = agefile.payload_offset(sealed)
    except agefile.AgeFileError as error:
        raise SealedSegmentError(str(error)) from None
    return hashlib.sha256(memoryview(sealed)[:covered]).digest(), covered


def open_sealed(
    sealed: bytes, identities: Sequence[agefile.AnyIdentity]
) -> OpenedSegment:
    """Decrypt and take apart a sealed segment. Raises SealedSegmentError with the reason.
    The ring passes its keys parsed (``StorageKey.private_key``), once for every segment."""
    try:  # in memory only
        data = agefile.decrypt(sealed, identities)
    except agefile.AgeFileError as error:
        raise SealedSegmentError(f"does not decrypt: altered or damaged ({error})") from None
    plaintext = memoryview(data)
    ftyp_end = _first_box_end(plaintext, b"ftyp")
    if ftyp_end is None:
        raise SealedSegmentError("plaintext does not start with an ftyp box")
    header = _box_header(plaintext, ftyp_end)
    if header is None or header[0] != b"uuid":
        raise SealedSegmentError("no metadata box after ftyp")
    _, box_end, payload_start = header
    if plaintext[payload_start : payload_start + 16] != META_BOX_UUID:
        raise SealedSegmentError("the box after ftyp is not our metadata box")
    meta, video_bytes = parse_meta_payload(bytes(plaintext[payload_start + 16 : box_end]))
    mp4_bytes = len(plaintext) - (box_end - ftyp_end)
    if mp4_bytes != video_bytes:
        raise SealedSegmentError(f"video is {mp4_bytes} bytes but its metadata says {video_bytes}")
    return OpenedSegment(
        meta=meta, video_bytes=video_bytes, plaintext=data, meta_box=(ftyp_end, box_end)
    )


def meta_box(meta: SegmentMeta, video_bytes: int) -> bytes:
    payload = json.dumps(
        {
            "v": META_FORMAT_VERSION,
            "camera": meta.camera,
            "run_id": meta.run_id,
            "sequence": meta.sequence,
            "first_frame_ms": meta.first_frame_ms,
            "last_frame_ms": meta.last_frame_ms,
            "frame_count": meta.frame_count,
            "clock_synced": meta.clock_synced,
            "width": meta.width,
            "height": meta.height,
            "video_bytes": video_bytes,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    if len(payload) > MAX_META_JSON_BYTES:
        raise ValueError("segment metadata too large (camera or run id too long?)")
    return struct.pack(">I4s", 8 + 16 + len(payload), b"uuid") + META_BOX_UUID + payload


def parse_meta_payload(payload: bytes) -> tuple[SegmentMeta, int]:
    if len(payload) > MAX_META_JSON_BYTES:
        raise SealedSegmentError("metadata box too large")
    try:
        fields = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise SealedSegmentError("metadata box is not JSON") from None
    if not isinstance(fields, dict) or fields.get("v") != META_FORMAT_VERSION:
        raise SealedSegmentError("metadata box has an unknown format version")
    try:
        meta = SegmentMeta(
            camera=_typed(fields, "camera", str),
            run_id=_typed(fields, "run_id", str),
            sequence=_typed(fields, "sequence", int),
            first_frame_ms=_typed(fields, "first_frame_ms", int),
            last_frame_ms=_typed(fields, "last_frame_ms", int),
            frame_count=_typed(fields, "frame_count", int),
            clock_synced=_typed(fields, "clock_synced", bool),
            width=_typed(fields, "width", int),
            height=_typed(fields, "height", int),
        )
        video_bytes = _typed(fields, "video_bytes", int)
    except (KeyError, TypeError) as error:
        raise SealedSegmentError(f"metadata box field {error} missing or mistyped") from None
    return meta, video_bytes


def _typed(fields: dict[str, object], name: str, kind: type[_T]) -> _T:
    value = fields[name]
    # bool is an int subclass: keep the two apart both ways.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(name)
    return value


def _box_header(data: bytes | memoryview, offset: int) -> tuple[bytes, int, int] | None:
    """(type, end offset, payload offset) of the ISO-BMFF box at ``offset``, if well-formed."""
    if offset + 8 > len(data):
        return None
    size, box_type = struct.unpack_from(">I4s", data, offset)
    payload = offset + 8
    if size == 1:  # 64-bit largesize follows the type
        if offset + 16 > len(data):
            return None
        (size,) = struct.unpack_from(">Q", data, offset + 8)
        payload = offset + 16
    elif size == 0:  # box runs to the end of the file
        size = len(data) - offset
    if size < payload - offset or offset + size > len(data):
        return None
    return box_type, offset + size, payload


def _first_box_end(data: bytes | memoryview, expected_type: bytes) -> int | None:
    header = _box_header(data, 0)
    if header is None or header[0] != expected_type:
        return None
    return header[1]
