"""A break in the frame labels (the camera went away, or the clock was stepped) ends
the segment there: no segment claims the time of an outage or straddles a step."""

from __future__ import annotations

from fractions import Fraction

import pytest

from edge.buffer.segmenter import Segmenter
from edge.capture.encoder import make_encoder
from edge.capture.timestrip import draw_strip
from edge.capture.types import RawFrame, new_i420
from videotools import ListSink, decode

FPS = 10
T0_MS = 1_790_000_000_000


def frames_with_labels(labels_ms: list[int]) -> list[RawFrame]:
    frames = []
    for sequence, label_ms in enumerate(labels_ms):
        data = new_i420(320, 180)
        frame = RawFrame(data, 320, 180, label_ms, sequence, True)
        draw_strip(frame.y, frame.u, frame.v, label_ms, sequence)
        frames.append(frame)
    return frames


@pytest.mark.parametrize(
    ("what", "jump_ms"),
    [
        ("camera outage", 40_000),
        ("clock stepped forward", 3 * 3600_000),
        ("clock stepped back", -7_200_000),
        ("small step back onto used labels", -3_000),
    ],
)
def test_a_break_ends_the_segment_at_once(what: str, jump_ms: int) -> None:
    # 2.5 s of frames, the break, 2.5 s more; segments of 2 s.
    before = [T0_MS + i * 100 for i in range(25)]
    after = [T0_MS + 2_500 + jump_ms + i * 100 for i in range(25)]
    sink = ListSink()
    segmenter = Segmenter(sink, "porch", "run", segment_seconds=2)
    encoder = make_encoder(
        "libx264",
        320,
        180,
        Fraction(FPS),
        crf=30,
        bitrate_bps=None,
        keyframe_interval_frames=2 * FPS,
    )
    for frame in frames_with_labels(before + after):
        for packet in encoder.encode(frame):
            segmenter.add(packet)
    for packet in encoder.flush():
        segmenter.add(packet)
    segmenter.close()
    spans = [(s.meta.first_frame_ms, s.meta.last_frame_ms) for s in sink.segments]
    # No segment holds frames from both sides of the break ...
    for first_ms, last_ms in spans:
        assert last_ms - first_ms < 2_000, (what, spans)
    # ... the break is a boundary, and every frame is kept once, in order, decodable.
    boundaries = [s.meta.first_frame_ms for s in sink.segments]
    assert after[0] in boundaries, (what, spans)
    decoded = [f.capture_time_ms for s in sink.segments for f in decode(s.mp4)]
    assert decoded == before + after
    assert all(decode(s.mp4)[0].keyframe for s in sink.segments)
