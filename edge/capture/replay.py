"""`camera.file`: replay an H.264 recording in a loop, passing its packets through.

Nothing is decoded. The file (mp4, mkv or a raw .h264 stream) is demuxed with
PyAV, its packets converted to Annex B with in-band SPS/PPS where the container
stores them apart (``h264_mp4toannexb``), re-timed to now and handed out in
real time: the same shape of data the Pi's hardware encoder produces. At the end
of the file it starts again, timestamps running on.

A raw .h264 stream has no timestamps: frames are taken to follow each other at
the stream's frame rate, which is only right without B-frames, so a raw stream
with B-frames is refused (mp4 and mkv carry the timestamps and may have them).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
from av.bitstream import BitStreamFilterContext

from edge.capture import h264
from edge.capture.types import EncodedPacket, SourceOutput, VideoFormat
from edge.capture.wallclock import WallClockMapper
from edge.clock import Clock

log = logging.getLogger(__name__)


class ReplayError(ValueError):
    """The file cannot be replayed; the message says why."""


def _read_ue(bits: str, pos: int) -> tuple[int, int]:
    """An unsigned Exp-Golomb value from a string of bits."""
    zeros = 0
    while pos + zeros < len(bits) and bits[pos + zeros] == "0":
        zeros += 1
    end = pos + 2 * zeros + 1
    if end > len(bits):
        raise ValueError("truncated Exp-Golomb value")
    return int(bits[pos + zeros : end], 2) - 1, end


def has_b_slice(access_unit: bytes) -> bool:
    """Whether any slice of an Annex B access unit is a B slice (slice_type 1 or 6)."""
    for nal in h264.iter_nal_units(access_unit):
        if not nal or nal[0] & 0x1F not in (1, 5):
            continue
        head = nal[1:16].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention
        bits = "".join(f"{byte:08b}" for byte in head)
        try:
            _, pos = _read_ue(bits, 0)  # first_mb_in_slice
            slice_type, _ = _read_ue(bits, pos)
        except ValueError:
            continue
        if slice_type % 5 == 1:
            return True
    return False


class FileReplaySource:
    """A Source of EncodedPackets. ``read`` is called from one capture thread."""

    def __init__(self, path: Path, clock: Clock, *, paced: bool = True) -> None:
        self._path = Path(path)
        self._clock = clock
        self._mapper = WallClockMapper(clock)
        self._paced = paced
        self._stop_event = threading.Event()
        self._container: av.container.InputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._demux: Iterator[av.Packet] = iter(())  # packets of the current pass
        self._bsf: BitStreamFilterContext | None = None
        self._raw = False  # a raw Annex B stream: no timestamps of its own
        self._ready: deque[EncodedPacket] = deque()
        self._start_s: float | None = None
        self._base_dts: int | None = None  # the file's first decode time
        self._loop_offset = 0  # added to every timestamp of the current pass
        self._loop_end = 0  # latest pts + duration seen so far, relative
        self._first_pts: int | None = None  # the file's earliest pts, relative to its first dts
        self._raw_index = 0
        self._last_file_dts: int | None = None  # of the last packet timed in this pass
        self._sequence = 0
        self._pending_dts: list[av.Packet] = []  # mkv: packets before the first known dts
        self._open()
        assert self._stream is not None
        self._time_base: Fraction = Fraction(self._stream.time_base or Fraction(1, 90_000))
        # A raw stream's average rate is the demuxer's 25 fps default; the SPS timing
        # (guessed rate) is the stream's own.
        rates = (self._stream.guessed_rate, self._stream.average_rate)
        rate = next((r for r in (rates if self._raw else rates[::-1]) if r), None)
        if not rate or rate <= 0:
            raise ReplayError(f"{self._path}: no frame rate in the file")
        width, height = self._stream.codec_context.width, self._stream.codec_context.height
        if not width or not height:
            raise ReplayError(f"{self._path}: no picture size in the file")
        self._format: VideoFormat = VideoFormat(int(width), int(height), Fraction(rate))
        self._frame_ticks: int = max(1, round(1 / (self._format.fps * self._time_base)))

    @property
    def video_format(self) -> VideoFormat:
        return self._format

    @property
    def output(self) -> SourceOutput:
        return "encoded"

    @property
    def dropped_frames(self) -> int:
        return 0

    def start(self) -> None:
        if self._start_s is not None:
            raise RuntimeError("replay already started")
        self._start_s = self._clock.monotonic_s()

    def stop(self) -> None:
        self._stop_event.set()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def read(self, timeout_s: float) -> EncodedPacket | None:
        if self._start_s is None:
            raise RuntimeError("replay not started")
        if self._stop_event.is_set():
            return None
        if not self._ready:
            self._fill()
        packet = self._ready[0]
        if self._paced:
            due_s = self._start_s + float(packet.dts * packet.time_base)
            delay_s = due_s - self._clock.monotonic_s()
            if delay_s > timeout_s:
                self._stop_event.wait(timeout_s)
                return None
            if delay_s > 0:
                if self._stop_event.wait(delay_s):
                    return None
                if due_s > self._clock.monotonic_s():
                    return None  # the clock says not yet: the caller reads again
        return self._ready.popleft()

    # --- reading the file -------------------------------------------------------------

    def _open(self) -> None:
        if not self._path.is_file():
            raise ReplayError(f"camera.file {self._path} does not exist or is not a file")
        try:
            container = av.open(str(self._path))
        except av.FFmpegError as exc:
            raise ReplayError(f"camera.file {self._path} cannot be read: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise ReplayError(f"camera.file {self._path} has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            container.close()
            raise ReplayError(
                f"camera.file {self._path} is {stream.codec_context.name}, not H.264;"
                " re-encode it, e.g. ffmpeg -i IN -c:v libx264 -bf 0 OUT.mp4"
            )
        self._container, self._stream = container, stream
        self._raw = container.format.name == "h264"
        extradata = stream.codec_context.extradata or b""
        # avcC extradata (first byte 1) means length-prefixed packets: convert to Annex B.
        self._bsf = (
            BitStreamFilterContext("h264_mp4toannexb", in_stream=stream)
            if extradata[:1] == b"\x01"
            else None
        )
        self._demux = container.demux(stream)

    def _restart(self) -> None:
        self.close()
        self._open()
        # The next pass's first frame follows this pass's last one by one frame duration.
        self._loop_offset = self._loop_end - (self._first_pts or 0)
        self._raw_index = 0
        self._last_file_dts = None
        log.debug("replay of %s starts again at %d", self._path, self._loop_offset)

    def _fill(self) -> None:
        """Reads until at least one packet is ready, starting the file again at its end."""
        passes_without_packets = 0
        while not self._ready:
            packet = next(self._demux, None)
            if packet is None:
                self._finish_pass()
                if self._ready:
                    return
                passes_without_packets += 1
                if passes_without_packets > 1:
                    raise ReplayError(f"camera.file {self._path} holds no video packets")
                self._restart()
                continue
            if packet.size == 0:  # PyAV's empty packet at the end of the file
                continue
            for out in self._bsf.filter(packet) if self._bsf is not None else [packet]:
                self._take(out)

    def _finish_pass(self) -> None:
        if self._bsf is not None:
            for out in self._bsf.filter(None):
                self._take(out)
            self._bsf = None
        if self._pending_dts:  # never learned a decode time: count from the first pts
            first = self._pending_dts[0]
            self._resolve_pending(int(first.pts or 0))

    def _take(self, packet: av.Packet) -> None:
        if packet.size == 0:
            return
        if self._raw:
            data = bytes(packet)
            if has_b_slice(data):
                raise ReplayError(
                    f"camera.file {self._path} is a raw H.264 stream with B-frames, whose"
                    " timing is unknown; use an mp4 or mkv file"
                )
            packet.pts = packet.dts = self._raw_index * self._frame_ticks
            self._raw_index += 1
        if packet.pts is None:
            return  # nothing to time it by (should not happen in mp4 or mkv)
        if packet.dts is None:
            if not self._pending_dts and self._last_file_dts is not None:
                packet.dts = self._last_file_dts + self._frame_ticks
            else:
                self._pending_dts.append(packet)
                return
        if self._pending_dts:
            self._resolve_pending(int(packet.dts))
        self._emit(packet)

    def _resolve_pending(self, known_dts: int) -> None:
        """Back-fills decode times (mkv stores none for the first frames)."""
        waiting, self._pending_dts = self._pending_dts, []
        for k, early in enumerate(waiting):
            early.dts = known_dts - (len(waiting) - k) * self._frame_ticks
            self._emit(early)

    def _emit(self, packet: av.Packet) -> None:
        assert packet.pts is not None and packet.dts is not None
        if self._base_dts is None:
            self._base_dts = int(packet.dts)
        pts = int(packet.pts) - self._base_dts + self._loop_offset
        dts = int(packet.dts) - self._base_dts + self._loop_offset
        duration = int(packet.duration or 0) or self._frame_ticks
        if self._loop_offset == 0:
            file_pts = pts
            self._first_pts = (
                file_pts if self._first_pts is None else min(self._first_pts, file_pts)
            )
        self._loop_end = max(self._loop_end, pts + duration)
        self._last_file_dts = int(packet.dts)
        assert self._start_s is not None
        capture_ms = self._mapper.wall_ms(self._start_s + float(pts * self._time_base))
        self._ready.append(
            EncodedPacket(
                data=bytes(packet),
                is_keyframe=bool(packet.is_keyframe),
                pts=pts,
                dts=dts,
                time_base=self._time_base,
                video_format=self._format,
                capture_time_ms=capture_ms,
                sequence=self._sequence,
                clock_synced=self._mapper.synchronized(),
            )
        )
        self._sequence += 1
