"""The picamera2 source, against a stand-in for the Pi camera (no camera here).

The stand-in modules below replace ``picamera2``, ``picamera2.encoders`` and
``picamera2.outputs`` for the calls the source makes, following picamera2's API
as read in raspberrypi/picamera2: ``Picamera2.create_video_configuration``,
``configure``, ``start_recording(encoder, output)`` (= ``start_encoder`` then
``start``), ``stop_recording`` (= ``stop`` then ``stop_encoder``) and ``close``
(picamera2/picamera2.py); ``H264Encoder(bitrate, repeat, iperiod, framerate, ...)``
whose ``outputframe`` calls each output's ``outputframe(frame, keyframe,
timestamp, packet, audio)`` with ``timestamp`` in microseconds since its first
frame and keeps that first frame's sensor time in ``firsttimestamp``
(picamera2/encoders/encoder.py, libav_h264_encoder.py, h264_encoder.py); and the
``Output`` base class (picamera2/outputs/output.py). The video is real H.264 from
libx264 (what picamera2's libav encoder uses on a Pi 5), Annex B with SPS/PPS
repeated before key frames, as ``repeat=True`` gives.
"""

from __future__ import annotations

import logging
import sys
import threading
import types
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import pytest

from edge.buffer.segmenter import Segmenter
from edge.capture import open_source
from edge.capture.picamera2_source import Picamera2Source
from edge.capture.timestrip import draw_strip
from edge.clock import Clock, SystemClock
from edge.recorder import Recorder
from videotools import ListSink, decode, ffmpeg_decodes

EXPOSURE_TO_DELIVERY_S = 0.05  # a frame reaches the encoder this long after its exposure began


class StandInOutput:
    """picamera2.outputs.Output."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass


class StandInH264Encoder:
    """picamera2.encoders.H264Encoder, encoding with PyAV's libx264 like LibavH264Encoder."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        self.bitrate, self.repeat, self.iperiod, self.framerate = (
            bitrate,
            repeat,
            iperiod,
            framerate,
        )
        self.width = self.height = 0
        self.firsttimestamp: int | None = None
        self._output: list[StandInOutput] = []
        self._running = False
        self._ctx: Any = None
        self.frames_output = 0  # frames handed to the outputs (test bookkeeping)

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        if not isinstance(value, StandInOutput):
            raise RuntimeError("Must pass Output")
        self._output = [value]

    def start(self, quality: Any = None) -> None:
        if self._running:
            raise RuntimeError("Encoder already running")
        self._running = True
        self.firsttimestamp = None
        for out in self._output:
            out.start()
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)
        ctx.gop_size = self.iperiod or 30
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
        if not self.repeat:
            ctx.flags |= av.codec.context.Flags.global_header
        self._ctx = ctx

    def encode_frame(self, yuv: np.ndarray, sensor_timestamp_ns: int) -> None:
        """What LibavH264Encoder._encode does with a completed request."""
        ts = sensor_timestamp_ns // 1000
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
        timestamp_us = ts - self.firsttimestamp
        frame = av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
        frame.pts = timestamp_us
        for packet in self._ctx.encode(frame):
            self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)

    def stop(self) -> None:
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        for packet in self._ctx.encode(None):
            self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)
        for out in self._output:
            out.stop()

    def outputframe(
        self, frame: Any, keyframe: bool = True, timestamp: int | None = None, packet: Any = None,
        audio: bool = False,
    ) -> None:  # fmt: skip
        self.frames_output += 1
        for out in self._output:
            out.outputframe(frame, keyframe, timestamp, packet, audio)


class StandInPicamera2:
    """picamera2.Picamera2: a camera thread that exposes frames at the configured rate."""

    instances: ClassVar[list[StandInPicamera2]] = []
    fail_on_configure: ClassVar[str | None] = None

    def __init__(self, camera_num: int = 0) -> None:
        self.calls: list[tuple[str, Any]] = [("__init__", camera_num)]
        self.camera_config: dict[str, Any] | None = None
        self._encoders: set[StandInH264Encoder] = set()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.clock: Clock = SystemClock()
        StandInPicamera2.instances.append(self)

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        self.calls.append(("create_video_configuration", {"main": main, "controls": controls}))
        return {"main": dict(main or {}), "controls": dict(controls or {}), "use_case": "video"}

    def configure(self, config: dict[str, Any]) -> None:
        self.calls.append(("configure", config))
        if StandInPicamera2.fail_on_configure:
            raise RuntimeError(StandInPicamera2.fail_on_configure)
        self.camera_config = config

    def start_encoder(self, encoder: StandInH264Encoder, output: Any = None, **kw: Any) -> None:
        if output is not None:
            encoder.output = output
        assert self.camera_config is not None
        encoder.width, encoder.height = self.camera_config["main"]["size"]
        encoder.start(quality=kw.get("quality"))
        self._encoders.add(encoder)

    def start_recording(
        self, encoder: StandInH264Encoder, output: Any, pts: Any = None, config: Any = None,
        quality: Any = None, name: Any = None,
    ) -> None:  # fmt: skip
        self.calls.append(("start_recording", (encoder, output)))
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="standin-camera")
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()

    def stop_recording(self) -> None:
        self.calls.append(("stop_recording", None))
        self.stop()
        for encoder in self._encoders:
            encoder.stop()
        self._encoders.clear()

    def close(self) -> None:
        self.calls.append(("close", None))

    def _run(self) -> None:
        assert self.camera_config is not None
        width, height = self.camera_config["main"]["size"]
        fps = self.camera_config["controls"]["FrameRate"]
        start_s = self.clock.monotonic_s()
        n = 0
        while True:
            delivery_s = start_s + EXPOSURE_TO_DELIVERY_S + n / fps
            if self._stop_event.wait(max(0.0, delivery_s - self.clock.monotonic_s())):
                return
            exposure_s = delivery_s - EXPOSURE_TO_DELIVERY_S
            lag_s = self.clock.monotonic_s() - exposure_s
            exposure_wall_ms = self.clock.now_ms() - round(lag_s * 1000)
            yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            flat = yuv.reshape(-1)
            y = yuv[:height]
            y[height // 2 :, (n * 4) % width :] = 200
            u = flat[width * height : width * height * 5 // 4].reshape(height // 2, width // 2)
            v = flat[width * height * 5 // 4 :].reshape(height // 2, width // 2)
            draw_strip(y, u, v, exposure_wall_ms, n)
            for encoder in list(self._encoders):
                # SensorTimestamp: ns on the monotonic clock at the start of exposure.
                encoder.encode_frame(yuv, round(exposure_s * 1e9))
            n += 1


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> type[StandInPicamera2]:
    package = types.ModuleType("picamera2")
    package.Picamera2 = StandInPicamera2  # type: ignore[attr-defined]
    encoders = types.ModuleType("picamera2.encoders")
    encoders.H264Encoder = StandInH264Encoder  # type: ignore[attr-defined]
    outputs = types.ModuleType("picamera2.outputs")
    outputs.Output = StandInOutput  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", package)
    monkeypatch.setitem(sys.modules, "picamera2.encoders", encoders)
    monkeypatch.setitem(sys.modules, "picamera2.outputs", outputs)
    StandInPicamera2.instances = []
    StandInPicamera2.fail_on_configure = None
    return StandInPicamera2


def test_records_the_cameras_own_h264_with_exposure_times(
    standin: type[StandInPicamera2], tmp_path: Path
) -> None:
    clock = SystemClock()
    source = open_source("picamera2", 320, 180, 30, None, None, clock, keyframe_interval_frames=15)
    assert isinstance(source, Picamera2Source) and source.output == "encoded"
    sink = ListSink()
    recorder = Recorder(source, Segmenter(sink, "porch", "run", 0.5), clock)  # no encoder
    recorder.start()
    assert sink.wait_for(2, timeout_s=10)
    recorder.stop()

    camera = standin.instances[0]
    assert [name for name, _ in camera.calls] == [
        "__init__", "create_video_configuration", "configure", "start_recording",
        "stop_recording", "close",
    ]  # fmt: skip
    assert camera.calls[1][1] == {
        "main": {"size": (320, 180), "format": "YUV420"},
        "controls": {"FrameRate": 30.0},
    }
    encoder = camera.calls[3][1][0]
    assert (encoder.bitrate, encoder.repeat, encoder.iperiod) == (None, True, 15)

    stats = recorder.stats
    assert stats.errors == 0 and stats.frames_dropped == 0
    assert stats.frames_captured == encoder.frames_output, "the packets flushed at stop are kept"
    assert sum(s.meta.frame_count for s in sink.segments) == stats.frames_captured >= 30
    seen = []
    for seg in sink.segments:
        frames = decode(seg.mp4)
        assert frames[0].keyframe and len(frames) == seg.meta.frame_count
        if seg is not sink.segments[-1]:
            assert seg.meta.frame_count == 15  # one key frame interval (stop cuts the last)
        # Labels are the sensor's exposure times on the wall clock, not arrival times
        # (those would be 50 ms later): they match what the camera stamped in the picture.
        assert abs(seg.meta.first_frame_ms - frames[0].capture_time_ms) <= 2
        assert abs(seg.meta.last_frame_ms - frames[-1].capture_time_ms) <= 2
        path = tmp_path / f"{seg.meta.sequence}.mp4"
        path.write_bytes(seg.mp4)
        assert ffmpeg_decodes(path)
        seen += [f.sequence for f in frames]
    assert seen == list(range(len(seen)))


def test_a_full_hand_over_queue_drops_up_to_the_next_key_frame(
    standin: type[StandInPicamera2], caplog: pytest.LogCaptureFixture
) -> None:
    dropped = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "not being taken fast enough" in record.getMessage():
                dropped.set()

    watch = Watch()
    logging.getLogger("edge").addHandler(watch)
    try:
        source = Picamera2Source(
            320, 180, 30, SystemClock(), bitrate_bps=None, keyframe_interval_frames=10,
            queue_packets=4,
        )  # fmt: skip
        source.start()  # nobody reads: 4 packets fit, then the queue overflows
        assert dropped.wait(10)
        source.stop()
    finally:
        logging.getLogger("edge").removeHandler(watch)
    camera = standin.instances[0]
    assert [name for name, _ in camera.calls][-2:] == ["stop_recording", "close"]
    kept = []
    while (packet := source.read(0.1)) is not None:
        kept.append(packet)
    assert [p.sequence for p in kept] == [0, 1, 2, 3] and kept[0].is_keyframe
    assert source.dropped_frames >= 1


def test_says_how_to_install_picamera2_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as without the package
    source = Picamera2Source(
        1280, 720, 30, SystemClock(), bitrate_bps=4_000_000, keyframe_interval_frames=60
    )
    with pytest.raises(RuntimeError, match="apt install python3-picamera2"):
        source.start()


def test_a_camera_that_fails_to_start_is_closed_and_reported(
    standin: type[StandInPicamera2],
) -> None:
    standin.fail_on_configure = "Camera __init__ sequence did not complete."
    source = Picamera2Source(320, 180, 30, SystemClock(), bitrate_bps=None,
                             keyframe_interval_frames=60)  # fmt: skip
    with pytest.raises(RuntimeError, match="could not start the camera: Camera __init__"):
        source.start()
    assert standin.instances[0].calls[-1][0] == "close"


def test_unusable_sensor_times_fall_back_to_arrival(
    standin: type[StandInPicamera2], caplog: pytest.LogCaptureFixture
) -> None:
    clock = SystemClock()
    source = Picamera2Source(320, 180, 30, clock, bitrate_bps=None, keyframe_interval_frames=30)
    source._encoder = types.SimpleNamespace(firsttimestamp=None)  # an encoder without it
    with caplog.at_level(logging.WARNING):
        before_ms = clock.now_ms()
        source._on_frame(b"\x00\x00\x00\x01\x65", True, 0)
        source._on_frame(b"\x00\x00\x00\x01\x41", False, 33_333)
    packets = [source.read(0.1), source.read(0.1)]
    assert all(p is not None and abs(p.capture_time_ms - before_ms) < 50 for p in packets)
    assert caplog.text.count("sensor timestamps unusable") == 1
