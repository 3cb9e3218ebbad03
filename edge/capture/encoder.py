"""H.264 encoding of raw frames with PyAV: libx264, or the Pi 4's V4L2 M2M encoder.

One encoder serves the whole run, so timestamps run on without a restart. A key
frame is forced on the first frame of every key-frame interval, counted by
frame sequence number (so a dropped frame does not shift later boundaries), and
x264 makes no key frames of its own (no scene cuts): every segment boundary is
exactly one key frame. No global header: SPS and PPS travel in band before
each key frame, as the segmenter expects.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Literal

import av

from edge.capture.types import EncodedPacket, RawFrame, VideoFormat, is_discontinuity

log = logging.getLogger(__name__)

EncoderKind = Literal["auto", "libx264", "h264_v4l2m2m"]
V4L2_ENCODER_DEVICE = "/dev/video11"
DEFAULT_PRESET = "superfast"


class PyAVEncoder:
    """A VideoEncoder. Called from the recorder's encode thread only."""

    def __init__(
        self,
        codec_context: av.VideoCodecContext,
        video_format: VideoFormat,
        keyframe_interval_frames: int,
    ) -> None:
        self._ctx = codec_context
        self._format = video_format
        self._time_base = Fraction(1) / video_format.fps
        self._keyframe_interval = keyframe_interval_frames
        self._next_keyframe_sequence = 0
        self._last_capture_ms: int | None = None  # label of the frame before
        # Capture time and clock state by frame sequence (= pts), until its packet comes out.
        self._pending: dict[int, tuple[int, bool]] = {}

    @property
    def name(self) -> str:
        return str(self._ctx.codec.name)

    def encode(self, frame: RawFrame) -> list[EncodedPacket]:
        if frame.width != self._format.width or frame.height != self._format.height:
            raise ValueError(
                f"frame is {frame.width}x{frame.height}, encoder expects"
                f" {self._format.width}x{self._format.height}"
            )
        video_frame = av.VideoFrame.from_numpy_buffer(frame.data, format="yuv420p")
        video_frame.pts = frame.sequence
        video_frame.time_base = self._time_base
        broken = self._last_capture_ms is not None and is_discontinuity(
            self._last_capture_ms, frame.capture_time_ms, self._format.fps
        )
        self._last_capture_ms = frame.capture_time_ms
        if broken:
            # The segmenter starts a new segment after a break; it needs a key frame
            # here, and the next boundary a whole interval on.
            video_frame.pict_type = av.video.frame.PictureType.I
            self._next_keyframe_sequence = frame.sequence + self._keyframe_interval
        elif frame.sequence >= self._next_keyframe_sequence:
            video_frame.pict_type = av.video.frame.PictureType.I
            interval = self._keyframe_interval
            self._next_keyframe_sequence = (frame.sequence // interval + 1) * interval
        self._pending[frame.sequence] = (frame.capture_time_ms, frame.clock_synced)
        return self._packets(self._ctx.encode(video_frame))

    def flush(self) -> list[EncodedPacket]:
        return self._packets(self._ctx.encode(None))

    def _packets(self, packets: list[av.Packet]) -> list[EncodedPacket]:
        out: list[EncodedPacket] = []
        for packet in packets:
            if packet.pts is None or packet.size == 0:
                continue
            sequence = int(packet.pts)
            capture_ms, synced = self._pending.pop(sequence)
            out.append(
                EncodedPacket(
                    data=bytes(packet),
                    is_keyframe=bool(packet.is_keyframe),
                    pts=sequence,
                    dts=int(packet.dts) if packet.dts is not None else sequence,
                    time_base=self._time_base,
                    video_format=self._format,
                    capture_time_ms=capture_ms,
                    sequence=sequence,
                    clock_synced=synced,
                )
            )
        return out


def _base_context(
    codec_name: str, video_format: VideoFormat, keyframe_interval_frames: int
) -> av.VideoCodecContext:
    ctx = av.CodecContext.create(codec_name, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = video_format.width
    ctx.height = video_format.height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1) / video_format.fps
    ctx.framerate = video_format.fps
    ctx.gop_size = keyframe_interval_frames
    ctx.max_b_frames = 0
    return ctx


def open_libx264(
    video_format: VideoFormat,
    keyframe_interval_frames: int,
    crf: int,
    bitrate_bps: int | None,
    preset: str = DEFAULT_PRESET,
) -> PyAVEncoder:
    ctx = _base_context("libx264", video_format, keyframe_interval_frames)
    options = {
        "preset": preset,
        "tune": "zerolatency",
        "forced-idr": "1",  # forced key frames are IDR: a segment decodes alone
        "x264-params": (
            f"keyint={keyframe_interval_frames}:min-keyint={keyframe_interval_frames}"
            ":scenecut=0:force-cfr=1"
        ),
    }
    if bitrate_bps:
        ctx.bit_rate = bitrate_bps
        # A capped rate with a one-second buffer: steady card writes and upload sizes.
        options["maxrate"] = str(bitrate_bps)
        options["bufsize"] = str(bitrate_bps)
    else:
        options["crf"] = str(crf)
    ctx.options = options
    ctx.open()
    return PyAVEncoder(ctx, video_format, keyframe_interval_frames)


def default_bitrate_bps(video_format: VideoFormat) -> int:
    """For encoders without a quality mode: 6 Mbit/s at 1080p30, scaled by pixel rate
    (picamera2's "medium" quality)."""
    pixel_rate = video_format.width * video_format.height * float(video_format.fps)
    return max(500_000, int(6_000_000 * pixel_rate / (1920 * 1080 * 30)))


def open_v4l2m2m(
    video_format: VideoFormat, keyframe_interval_frames: int, bitrate_bps: int | None
) -> PyAVEncoder:
    ctx = _base_context("h264_v4l2m2m", video_format, keyframe_interval_frames)
    ctx.bit_rate = bitrate_bps or default_bitrate_bps(video_format)
    ctx.open()
    return PyAVEncoder(ctx, video_format, keyframe_interval_frames)


def v4l2_encoder_answers(device: str = V4L2_ENCODER_DEVICE) -> bool:
    """Whether the V4L2 M2M encoder device exists and opens."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def make_encoder(
    kind: EncoderKind,
    width: int,
    height: int,
    fps: int | Fraction,
    crf: int,
    bitrate_bps: int | None,
    keyframe_interval_frames: int,
    preset: str = DEFAULT_PRESET,
) -> PyAVEncoder:
    """The encoder for the config: ``auto`` takes the hardware encoder where it answers.

    ``bitrate_bps`` None or 0 means constant quality (``crf``); the hardware encoder has
    no quality mode and uses a bitrate for the size instead.
    """
    if kind not in ("auto", "libx264", "h264_v4l2m2m"):
        raise ValueError(f"unknown encoder {kind!r}: use auto, libx264 or h264_v4l2m2m")
    if keyframe_interval_frames < 1:
        raise ValueError(
            f"keyframe interval must be at least 1 frame, got {keyframe_interval_frames}"
        )
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be within 0..51, got {crf}")
    video_format = VideoFormat(width, height, Fraction(fps))
    if kind in ("auto", "h264_v4l2m2m"):
        if v4l2_encoder_answers():
            try:
                encoder = open_v4l2m2m(video_format, keyframe_interval_frames, bitrate_bps)
            except (av.FFmpegError, OSError, ValueError) as exc:
                log.warning("hardware encoder h264_v4l2m2m failed to open (%s); using libx264", exc)
            else:
                log.info("encoding with h264_v4l2m2m (hardware)")
                return encoder
        elif kind == "h264_v4l2m2m":
            log.warning(
                "%s does not answer: no hardware encoder here; using libx264", V4L2_ENCODER_DEVICE
            )
    encoder = open_libx264(video_format, keyframe_interval_frames, crf, bitrate_bps, preset)
    log.info(
        "encoding with libx264 (preset %s, %s)",
        preset,
        f"{bitrate_bps} bit/s" if bitrate_bps else f"crf {crf}",
    )
    return encoder
