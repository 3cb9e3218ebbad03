"""The recorder's threads, end to end with the real encoder, muxer and decoder."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.buffer.segment import Segment
from edge.buffer.segmenter import Segmenter
from edge.capture.encoder import make_encoder
from edge.capture.replay import FileReplaySource
from edge.capture.virtual import VirtualCamera
from edge.clock import SystemClock
from edge.recorder import Recorder
from videotools import ListSink, decode, ffmpeg_decodes, make_video

FPS = 30


class BlockingSink(ListSink):
    """Stands still on its first segment until released: a slow disk or a stuck ring."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, segment: Segment) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super().put(segment)


class FailingSink:
    def put(self, segment: Segment) -> None:
        raise OSError("disk on fire")


class LogEvent(logging.Handler):
    """Sets an event when a matching message is logged, so tests can wait for it."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.fixture
def log_event() -> Iterator[Callable[[str], threading.Event]]:
    handlers: list[LogEvent] = []

    def watch(text: str) -> threading.Event:
        handler = LogEvent(text)
        logging.getLogger("edge").addHandler(handler)
        handlers.append(handler)
        return handler.event

    yield watch
    for handler in handlers:
        logging.getLogger("edge").removeHandler(handler)


def virtual_recorder(sink: object, *, segment_s: float = 0.5, queue_frames: int = 10) -> Recorder:
    clock = SystemClock()
    camera = VirtualCamera(320, 180, FPS, clock)
    encoder = make_encoder("libx264", 320, 180, FPS, 30, None, round(segment_s * FPS))
    segmenter = Segmenter(sink, "porch", "run-7", segment_s)  # type: ignore[arg-type]
    return Recorder(camera, segmenter, clock, encoder=encoder, queue_frames=queue_frames)


def test_every_captured_frame_lands_once_in_order_and_stop_keeps_the_last_segment() -> None:
    sink = ListSink()
    recorder = virtual_recorder(sink)
    recorder.start()
    names = {t.name for t in threading.enumerate()}
    assert {"edge-capture", "edge-encode"} <= names
    assert sink.wait_for(3, timeout_s=10)
    recorder.stop()
    assert recorder.wait(0)
    assert not {"edge-capture", "edge-encode"} & {t.name for t in threading.enumerate()}

    stats = recorder.stats
    assert stats.errors == 0 and stats.last_error is None
    assert stats.segments == len(sink.segments) >= 4, "the segment in progress was emitted"
    assert stats.frames_captured == stats.frames_encoded, "nothing lost between the threads"
    skipped = stats.frames_dropped_by_source  # only a starved machine makes the camera skip
    assert stats.frames_dropped == skipped, "no frame lost in the queue"
    assert sum(s.meta.frame_count for s in sink.segments) == stats.frames_captured
    frames = []
    for k, seg in enumerate(sink.segments):
        decoded = decode(seg.mp4)
        assert seg.meta.sequence == k and decoded[0].keyframe
        assert seg.meta.first_frame_ms == decoded[0].capture_time_ms
        assert seg.meta.last_frame_ms == decoded[-1].capture_time_ms
        # Segment k holds frames 15k..15k+14 (fewer only if a starved camera skipped some).
        assert {f.sequence // 15 for f in decoded} == {k}
        if k < len(sink.segments) - 1 and not skipped:
            assert seg.meta.frame_count == 15
        frames += decoded
    sequences = [f.sequence for f in frames]
    assert len(sequences) == stats.frames_captured
    assert sequences == sorted(set(sequences)) and sequences[-1] == len(sequences) - 1 + skipped
    t0 = frames[0].capture_time_ms
    for frame in frames:
        assert abs(frame.capture_time_ms - (t0 + frame.sequence * 1000 / FPS)) <= 1


def test_a_slow_sink_never_stalls_capture_frames_are_dropped_counted_and_logged(
    log_event: Callable[[str], threading.Event],
) -> None:
    behind = log_event("encoding is falling behind")
    sink = BlockingSink()
    recorder = virtual_recorder(sink, queue_frames=3)
    recorder.start()
    assert sink.entered.wait(10)
    assert behind.wait(10), "a drop is logged"
    sink.release.set()
    assert sink.wait_for(3, timeout_s=10)
    recorder.stop()
    stats = recorder.stats
    queue_drops = stats.frames_dropped - stats.frames_dropped_by_source
    assert queue_drops > 0
    assert stats.frames_captured == stats.frames_encoded + queue_drops
    sequences = [f.sequence for s in sink.segments for f in decode(s.mp4)]
    assert len(sequences) == stats.frames_encoded
    assert sequences == sorted(set(sequences)), "in order, none twice"
    last = stats.frames_captured - 1 + stats.frames_dropped_by_source
    assert sequences[-1] == last, "capture kept going"


def test_dropping_encoded_packets_skips_to_the_next_key_frame(
    tmp_path: Path, log_event: Callable[[str], threading.Event]
) -> None:
    video = make_video(
        tmp_path / "gop10.mp4", seconds=2, codec_args=("-c:v", "libx264", "-g", "10")
    )
    behind = log_event("encoding is falling behind")
    clock = SystemClock()
    sink = BlockingSink()
    recorder = Recorder(
        FileReplaySource(video, clock), Segmenter(sink, "porch", "run", 0.3), clock, queue_frames=2
    )
    recorder.start()
    assert behind.wait(10)
    sink.release.set()
    assert sink.wait_for(4, timeout_s=10)
    recorder.stop()
    assert recorder.stats.frames_dropped > 0
    for seg in sink.segments:
        path = tmp_path / f"{seg.meta.sequence}.mp4"
        path.write_bytes(seg.mp4)
        assert ffmpeg_decodes(path), "no frame refers to a dropped one"


def test_a_failure_on_a_worker_is_logged_with_traceback_kept_and_stops_recording(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[BaseException] = []
    clock = SystemClock()
    camera = VirtualCamera(320, 180, FPS, clock)
    encoder = make_encoder("libx264", 320, 180, FPS, 30, None, 3)
    recorder = Recorder(
        camera, Segmenter(FailingSink(), "porch", "run", 0.1), clock, encoder=encoder,
        on_failure=failures.append,
    )  # fmt: skip
    with caplog.at_level(logging.ERROR):
        recorder.start()
        assert recorder.wait(10), "the recorder stops by itself"
    assert isinstance(recorder.error, OSError) and failures == [recorder.error]
    stats = recorder.stats
    assert stats.errors >= 1 and stats.last_error == "OSError: disk on fire"
    record = next(r for r in caplog.records if "encode thread failed" in r.getMessage())
    assert record.exc_info is not None, "logged with its traceback"
    recorder.stop()  # harmless after a failure


def test_a_short_run_still_yields_its_one_segment() -> None:
    sink = ListSink()
    recorder = virtual_recorder(sink, segment_s=2.0)
    recorder.start()
    threading.Event().wait(0.3)  # the length of the recording (as --duration), not a sync
    recorder.stop()
    assert len(sink.segments) == 1
    assert sink.segments[0].meta.frame_count == recorder.stats.frames_captured >= 5


def test_construction_and_lifecycle_rules() -> None:
    clock = SystemClock()
    camera = VirtualCamera(320, 180, FPS, clock)
    segmenter = Segmenter(ListSink(), "porch", "run", 2)
    with pytest.raises(ValueError, match="needs an encoder"):
        Recorder(camera, segmenter, clock)
    encoder = make_encoder("libx264", 320, 180, FPS, 30, None, 60)
    with pytest.raises(ValueError, match="queue_frames"):
        Recorder(camera, segmenter, clock, encoder=encoder, queue_frames=0)
    recorder = Recorder(camera, segmenter, clock, encoder=encoder)
    recorder.stop()  # before start: nothing to do
    recorder.start()
    with pytest.raises(RuntimeError, match="already started"):
        recorder.start()
    recorder.stop()
    recorder.stop()
