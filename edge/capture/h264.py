"""Just enough of the H.264 Annex B byte stream to find parameter sets."""

from __future__ import annotations

from collections.abc import Iterator

NAL_SPS = 7
NAL_PPS = 8
NAL_IDR = 5


def iter_nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B buffer, without their start codes."""
    starts: list[tuple[int, int]] = []  # (start code offset, payload offset)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        code_at = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((code_at, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    for k, (_, payload_at) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        yield data[payload_at:end]


def nal_types(data: bytes) -> list[int]:
    return [nal[0] & 0x1F for nal in iter_nal_units(data) if nal]


def parameter_sets(data: bytes) -> bytes:
    """The SPS and PPS units of an access unit, as Annex B (empty if it has none)."""
    units = [nal for nal in iter_nal_units(data) if nal and nal[0] & 0x1F in (NAL_SPS, NAL_PPS)]
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in units)


def has_parameter_sets(data: bytes) -> bool:
    types = set(nal_types(data))
    return NAL_SPS in types and NAL_PPS in types
