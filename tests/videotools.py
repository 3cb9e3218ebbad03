"""Helpers for the recording tests: real decoders (PyAV, ffprobe), real files (ffmpeg)."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from edge.buffer.segment import Segment
from edge.capture.timestrip import read_strip


class ListSink:
    """A SegmentSink keeping segments in memory; tests wait for them without sleeping."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self._condition = threading.Condition()

    def put(self, segment: Segment) -> None:
        with self._condition:
            self.segments.append(segment)
            self._condition.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: len(self.segments) >= count, timeout_s)


@dataclass(frozen=True)
class DecodedFrame:
    capture_time_ms: int  # from the time strip
    sequence: int  # from the time strip (mod 65536)
    pts_s: float  # presentation time in the file
    keyframe: bool


def decode(mp4: bytes | Path) -> list[DecodedFrame]:
    """Decodes every frame and reads its time strip."""
    source = io.BytesIO(mp4) if isinstance(mp4, bytes) else str(mp4)
    frames: list[DecodedFrame] = []
    with av.open(source, "r") as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            luma = frame.to_ndarray(format="yuv420p")[: frame.height]  # the Y plane as coded
            capture_ms, sequence = read_strip(luma)
            assert frame.pts is not None and frame.time_base is not None
            frames.append(
                DecodedFrame(
                    capture_ms, sequence, float(frame.pts * frame.time_base), frame.key_frame
                )
            )
    return frames


def remux(mp4s: list[bytes], out: Path) -> None:
    """Stream copy (no re-encode) of segments, read in order, into one plain MP4.

    Packets keep the timestamps the segments carry: that the result is continuous is
    exactly what the segmenter promises.
    """
    with av.open(str(out), "w", format="mp4") as output:
        out_stream = None
        for mp4 in mp4s:
            with av.open(io.BytesIO(mp4), "r") as segment:
                in_stream = segment.streams.video[0]
                if out_stream is None:
                    out_stream = output.add_stream_from_template(in_stream)
                for packet in segment.demux(in_stream):
                    if packet.size == 0:  # PyAV's empty packet at the end of each file
                        continue
                    packet.stream = out_stream
                    output.mux(packet)


def ffprobe_json(path: Path, *args: str) -> dict[str, object]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def ffprobe_packets(path: Path) -> list[dict[str, str]]:
    """Every video packet: pts, dts (in stream units), duration and flags."""
    data = ffprobe_json(
        path, "-select_streams", "v:0", "-show_entries", "packet=pts,dts,duration,flags"
    )
    packets = data["packets"]
    assert isinstance(packets, list)
    return packets


def ffprobe_stream(path: Path) -> dict[str, str]:
    data = ffprobe_json(
        path,
        "-select_streams",
        "v:0",
        "-count_frames",
        "-show_entries",
        "stream=codec_name,width,height,time_base,nb_read_frames,start_time,duration",
    )
    streams = data["streams"]
    assert isinstance(streams, list)
    stream: dict[str, str] = streams[0]
    return stream


def ffmpeg_decodes(path: Path) -> bool:
    """Whether ffmpeg decodes the whole file without a single error."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0 and not result.stderr.strip()


def make_video(
    path: Path,
    *,
    seconds: float,
    size: str = "320x180",
    fps: int = 30,
    codec_args: tuple[str, ...] = ("-c:v", "libx264", "-g", "30"),
    source: str = "testsrc",
) -> Path:
    """A real video file from ffmpeg's test source."""
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"{source}=size={size}:rate={fps}",
            "-t", str(seconds), "-pix_fmt", "yuv420p", *codec_args, str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def expected_ms(start_ms: int, n: int, fps: int | Fraction) -> int:
    """Frame n's scheduled capture time, for a source started at ``start_ms``."""
    return start_ms + round(Fraction(n * 1000) / Fraction(fps))
