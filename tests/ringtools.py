"""Test helpers for the ring buffer: real H.264 segments, frame stamps, byte scans.

Segments are made the way the segmenter makes them (one libx264 encoder for the
whole run, continuous timestamps, a new fragmented MP4 at every key frame), with
each frame's number stamped into it as a row of bright/dark 16x16 blocks, so a
test can decode a clip and say exactly which frames came out.

Also the child process of the power-cut test: ``python tests/ringtools.py record``
(see ``record_main``).
"""

from __future__ import annotations

import fractions
import functools
import io
import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import av

if __package__ in (None, ""):  # run as a script by the power-cut test
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from edge.buffer.ring import Ring
from edge.buffer.segment import Segment, SegmentMeta
from edge.clock import Clock, ManualClock

if TYPE_CHECKING:
    import numpy as np

STAMP_BITS = 20
STAMP_BLOCK = 16  # macroblock-sized so compression keeps each block bright or dark
T0_MS = 1_790_000_000_000  # 2026-09-21: a fixed, synchronised-looking start time


@dataclass(frozen=True)
class RunSpec:
    count: int  # segments
    frames_per_segment: int = 10
    fps: int = 10
    width: int = 320
    height: int = 240
    start_ms: int = T0_MS
    first_frame_number: int = 0
    camera: str = "porch"
    run_id: str = "run-a"
    bframes: bool = False
    noise: int = 0  # rows of random noise at the bottom: makes segments big
    clock_synced: bool = True
    # True: muxed the way edge/buffer/segmenter.py does (SPS/PPS in band on every key
    # frame, run-continuous decode times). False: SPS/PPS only in the avcC box and
    # every segment's times restarting at 0 (what a naive segmenter would do).
    segmenter_style: bool = True


def frame_time_ms(spec: RunSpec, index_in_run: int) -> int:
    return spec.start_ms + index_in_run * 1000 // spec.fps


@functools.lru_cache(maxsize=32)
def make_segments(spec: RunSpec) -> tuple[Segment, ...]:
    """Encode ``spec.count`` segments of stamped frames (cached per spec, per process)."""
    if spec.width < STAMP_BITS * STAMP_BLOCK or spec.height < 2 * STAMP_BLOCK:
        raise ValueError("frame too small for the stamp")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width = spec.width
    encoder.height = spec.height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, spec.fps)
    encoder.framerate = spec.fps
    encoder.gop_size = 10_000  # key frames only where a segment starts
    encoder.options = {
        "preset": "superfast" if spec.bframes else "ultrafast",
        "forced-idr": "1",
        "sc_threshold": "0",
        "bframes": "2" if spec.bframes else "0",
    }
    # Out-of-band SPS/PPS (extradata), as an MP4 wants them.
    encoder.flags = encoder.flags | av.codec.context.Flags.global_header
    import numpy as np  # here, not at the top: the power-cut child starts faster without it

    rng = np.random.default_rng(spec.first_frame_number)
    total = spec.count * spec.frames_per_segment
    packets: list[av.Packet] = []
    for index in range(total):
        frame = stamped_frame(spec, spec.first_frame_number + index, index, rng)
        frame.pts = index
        if index % spec.frames_per_segment == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))
    extradata = encoder.extradata
    if not extradata:
        raise AssertionError("encoder gave no extradata")
    segments = []
    cuts = [i for i, packet in enumerate(packets) if packet.is_keyframe] + [len(packets)]
    if len(cuts) - 1 != spec.count:
        raise AssertionError(f"expected {spec.count} key frames, got {len(cuts) - 1}")
    for sequence, (begin, end) in enumerate(itertools.pairwise(cuts)):
        chunk = packets[begin:end]
        pts_values = [int(packet.pts) for packet in chunk if packet.pts is not None]
        meta = SegmentMeta(
            camera=spec.camera,
            run_id=spec.run_id,
            sequence=sequence,
            first_frame_ms=frame_time_ms(spec, min(pts_values)),
            last_frame_ms=frame_time_ms(spec, max(pts_values)),
            frame_count=len(chunk),
            clock_synced=spec.clock_synced,
            width=spec.width,
            height=spec.height,
        )
        mux = _mux_like_segmenter if spec.segmenter_style else _mux_plain
        segments.append(Segment(meta=meta, mp4=mux(extradata, chunk, spec)))
    return tuple(segments)


def stamped_frame(
    spec: RunSpec, frame_number: int, index_in_run: int, rng: np.random.Generator
) -> av.VideoFrame:
    import numpy as np

    height, width = spec.height, spec.width
    luma = np.empty((height, width), np.uint8)
    # A slowly moving gradient so frames differ like a real scene.
    luma[:] = ((np.arange(width)[None, :] + index_in_run * 3) % 128 + 64).astype(np.uint8)
    luma[: 2 * STAMP_BLOCK] = 128
    for bit in range(STAMP_BITS):
        value = 235 if (frame_number >> bit) & 1 else 16
        x = bit * STAMP_BLOCK
        luma[:STAMP_BLOCK, x : x + STAMP_BLOCK] = value
    if spec.noise:
        luma[height - spec.noise :] = rng.integers(0, 256, (spec.noise, width), np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)  # U then V, each (h/2, w/2)
    return av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")


def read_stamp(frame: av.VideoFrame) -> int:
    luma = frame.to_ndarray(format="gray")
    number = 0
    for bit in range(STAMP_BITS):
        x = bit * STAMP_BLOCK
        block = luma[4 : STAMP_BLOCK - 4, x + 4 : x + STAMP_BLOCK - 4]
        if float(block.mean()) > 128:
            number |= 1 << bit
    return number


def decode_frame_numbers(mp4: bytes | Path) -> list[int]:
    """Decode every frame (presentation order) and read its stamp."""
    source: io.BytesIO | str = io.BytesIO(mp4) if isinstance(mp4, bytes) else str(mp4)
    with av.open(source) as container:
        return [read_stamp(frame) for frame in container.decode(video=0)]


_TIME_BASE = fractions.Fraction(1, 90000)


def _mux_like_segmenter(extradata: bytes, packets: list[av.Packet], spec: RunSpec) -> bytes:
    buffer = io.BytesIO()
    options = {
        "movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont",
        "use_editlist": "0",
        "avoid_negative_ts": "disabled",
    }
    ticks = 90000 // spec.fps
    with av.open(buffer, "w", format="mp4", options=options) as output:
        stream = output.add_mux_stream("h264", rate=spec.fps, width=spec.width, height=spec.height)
        stream.time_base = _TIME_BASE
        for packet in packets:
            data = bytes(packet)
            if packet.is_keyframe:
                data = extradata + data  # in band, as the segmenter does
            out = av.Packet(data)
            out.stream = stream
            out.time_base = _TIME_BASE
            # Two frames later: with B-frames the encoder's decode times start at -2.
            out.pts = (int(packet.pts) + 2) * ticks
            out.dts = (int(packet.dts) + 2) * ticks
            out.duration = ticks
            out.is_keyframe = packet.is_keyframe
            output.mux(out)
    return buffer.getvalue()


def _mux_plain(extradata: bytes, packets: list[av.Packet], spec: RunSpec) -> bytes:
    # PyAV copies out-of-band parameters only from a stream: a raw H.264 input of
    # SPS/PPS + one key frame gives one carrying the encoder's own extradata.
    template_input = av.open(io.BytesIO(extradata + bytes(packets[0])), format="h264")
    buffer = io.BytesIO()
    with av.open(
        buffer,
        "w",
        format="mp4",
        options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
    ) as output:
        # No time base set: the muxer picks its own (1/10240 at 10 fps), unlike the
        # segmenter's 1/90000, so a clip mixing both styles must rescale.
        stream = output.add_stream_from_template(template_input.streams.video[0])
        for packet in packets:
            packet.time_base = fractions.Fraction(1, spec.fps)
            packet.stream = stream
            output.mux(packet)
    template_input.close()
    return buffer.getvalue()


# -- rings -----------------------------------------------------------------------


def open_ring(data_dir: Path, clock: Clock, **overrides: Any) -> Ring:
    """A Ring with roomy defaults; tests override the limit they are about."""
    settings: dict[str, Any] = {
        "max_bytes": 1 << 30,
        "max_age_s": 30 * 86400.0,
        "clock": clock,
        "owner_recipients": [],
        "pin_cap_bytes": 1 << 28,
    }
    settings.update(overrides)
    return Ring.open(data_dir, **settings)


def put_all(ring: Ring, segments: Iterable[Segment], clock: ManualClock | None = None) -> None:
    """Put segments as a camera would: the clock at each segment's last frame."""
    for segment in segments:
        if clock is not None and segment.meta.last_frame_ms > clock.now_ms():
            clock.advance_ms(segment.meta.last_frame_ms - clock.now_ms())
        ring.put(segment)


def frames_of(segments: Iterable[Segment]) -> list[int]:
    return [number for segment in segments for number in decode_frame_numbers(segment.mp4)]


# -- scanning for plaintext -------------------------------------------------------

# Byte signatures long enough not to turn up by chance in ciphertext (>= 8 bytes:
# a given 8-byte string appears by chance in 1 GB of random bytes with p ~ 5e-11).
PLAINTEXT_SIGNATURES: dict[str, bytes] = {
    "mp4 ftyp iso": b"ftypiso",
    "mp4 ftyp mp4": b"ftypmp4",
    "mp4 ftyp avc1": b"ftypavc1",
    "mp4 moov/mvhd": b"moov\x00\x00\x00",
    "mp4 mvhd": b"mvhd\x00",
    "mp4 moof+mfhd": b"\x00\x00\x00\x10mfhd",
    "mp4 avcC": b"avcC\x01",
    "H.264 start code + SPS": b"\x00\x00\x00\x01\x67",
    "H.264 start code + PPS": b"\x00\x00\x00\x01\x68",
    "H.264 start code + IDR": b"\x00\x00\x00\x01\x65",
    "x264 SEI text": b"x264 - core",
    "JPEG SOI+APP0 JFIF": b"\xff\xd8\xff\xe0",
    "JPEG SOI+APP1 Exif": b"\xff\xd8\xff\xe1",
    "our metadata box": b"\x6d\x1f\x6f\x1e\x9c\x2a\x4b\x7e",
}
# Short signatures only count with more context (JFIF/Exif need their marker text).
_JPEG_CONTEXT = {b"\xff\xd8\xff\xe0": b"JFIF\x00", b"\xff\xd8\xff\xe1": b"Exif\x00"}


def scan_for_plaintext(root: Path) -> list[tuple[Path, str, int]]:
    """Every (file, signature name, offset) under ``root`` that looks like plaintext video."""
    findings = []
    for path in sorted(_all_files(root)):
        data = path.read_bytes()
        for name, signature in PLAINTEXT_SIGNATURES.items():
            start = 0
            while (offset := data.find(signature, start)) >= 0:
                start = offset + 1
                context = _JPEG_CONTEXT.get(signature)
                if context is not None and data[offset + 6 : offset + 11] != context:
                    continue
                findings.append((path, name, offset))
                break
    return findings


def _all_files(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


# -- the power-cut test's child ----------------------------------------------------
#
# The parent streams segments to the child's stdin (a pipe, never the disk), each
# as a 4-byte big-endian length + JSON metadata, then 4-byte length + MP4. The child
# puts them into a Ring and prints "put <run_id> <sequence>" after each put
# returns (so the parent knows which segments were durable before the kill), and
# every few segments exports the last seconds into a hashing sink.


def write_segment_frame(stream: IO[bytes], segment: Segment) -> None:
    meta = json.dumps(_meta_dict(segment.meta)).encode()
    stream.write(struct.pack(">I", len(meta)) + meta + struct.pack(">I", len(segment.mp4)))
    stream.write(segment.mp4)


def _meta_dict(meta: SegmentMeta) -> dict[str, object]:
    return {name: getattr(meta, name) for name in SegmentMeta.__slots__}


def read_segment_frames(stream: IO[bytes]) -> Iterator[Segment]:
    while True:
        header = stream.read(4)
        if len(header) < 4:
            return
        meta = SegmentMeta(**json.loads(stream.read(struct.unpack(">I", header)[0])))
        (size,) = struct.unpack(">I", stream.read(4))
        yield Segment(meta=meta, mp4=stream.read(size))


class HashingSink:
    """A write-only stream (no seek) that keeps only a hash and a byte count."""

    def __init__(self) -> None:
        import hashlib

        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.bytes += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def record_main(argv: Iterable[str]) -> int:
    import argparse

    from edge.buffer.clip import NoFootage, build_clip
    from edge.buffer.ring import Ring
    from edge.clock import ManualClock

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--now-ms", type=int, required=True)
    parser.add_argument("--owner", action="append", default=[])
    parser.add_argument("--export-every", type=int, default=5)
    args = parser.parse_args(list(argv))
    # Stands in for the system clock: the segments carry synthetic capture times.
    clock = ManualClock(args.now_ms)
    ring = Ring.open(
        args.data_dir,
        max_bytes=args.max_bytes,
        max_age_s=10 * 86400,
        clock=clock,
        owner_recipients=args.owner,
        rotate_every_s=3.0,  # rotate often, so kills land during rotation and key deletion too
        pin_cap_bytes=args.max_bytes // 4,
    )
    print("ready", flush=True)
    for count, segment in enumerate(read_segment_frames(sys.stdin.buffer), start=1):
        clock.advance_ms(max(0, segment.meta.last_frame_ms - clock.now_ms()))
        ring.put(segment)
        print(f"put {segment.meta.run_id} {segment.meta.sequence}", flush=True)
        if count % args.export_every == 0:
            try:
                build_clip(
                    ring,
                    segment.meta.last_frame_ms - 1500,
                    segment.meta.last_frame_ms,
                    HashingSink(),
                )
            except NoFootage:
                pass
    ring.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        raise SystemExit(record_main(sys.argv[2:]))
    raise SystemExit("usage: ringtools.py record --data-dir DIR --max-bytes N --now-ms MS")
