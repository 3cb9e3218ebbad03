"""The PyAV encoder: key frames exactly at segment boundaries, parameters in band."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge.capture import h264
from edge.capture.encoder import make_encoder, v4l2_encoder_answers
from edge.capture.types import EncodedPacket, RawFrame, new_i420
from edge.capture.virtual import VirtualCamera
from edge.clock import ManualClock

T0_MS = 1_767_225_600_000


def frames(count: int, fps: int = 30) -> list[RawFrame]:
    camera = VirtualCamera(320, 180, fps, ManualClock(T0_MS), paced=False)
    camera.start()
    out = []
    for _ in range(count):
        frame = camera.read(1.0)
        assert frame is not None
        out.append(frame)
    return out


def encode_all(encoder_frames: list[RawFrame], **kwargs: object) -> list[EncodedPacket]:
    options: dict[str, object] = {"crf": 30, "bitrate_bps": None, "keyframe_interval_frames": 30}
    options.update(kwargs)
    encoder = make_encoder("libx264", 320, 180, 30, **options)  # type: ignore[arg-type]
    packets: list[EncodedPacket] = []
    for frame in encoder_frames:
        packets += encoder.encode(frame)
    return packets + encoder.flush()


def test_key_frames_exactly_at_every_interval_carrying_sps_pps() -> None:
    packets = encode_all(frames(95))
    assert [p.sequence for p in packets] == list(range(95))
    assert [p.sequence for p in packets if p.is_keyframe] == [0, 30, 60, 90]
    for packet in packets:
        assert packet.data.startswith(b"\x00\x00\x00\x01") or packet.data.startswith(
            b"\x00\x00\x01"
        )
        assert h264.has_parameter_sets(packet.data) == packet.is_keyframe
        if packet.is_keyframe:
            assert h264.NAL_IDR in h264.nal_types(packet.data), "key frames are IDR"
    first = packets[0]
    assert (first.pts, first.dts, first.time_base) == (0, 0, first.time_base)
    assert all(p.pts == p.dts == p.sequence for p in packets), "no B-frames, no reordering"
    assert [p.capture_time_ms for p in packets] == [f.capture_time_ms for f in frames(95)]


def test_no_scene_cut_key_frames() -> None:
    # A hard cut to a different picture mid-interval would make x264 insert a key frame
    # with its default scenecut; the boundaries must stay the only key frames.
    source = frames(60)
    rng = np.random.default_rng(7)
    for frame in source[15:]:
        frame.data[:] = rng.integers(0, 256, frame.data.shape, dtype=np.uint8)
    packets = encode_all(source)
    assert [p.sequence for p in packets if p.is_keyframe] == [0, 30]


def test_dropped_frames_do_not_shift_later_boundaries() -> None:
    kept = [f for f in frames(100) if f.sequence not in (10, 11, 30, 59)]
    packets = encode_all(kept)
    # Frame 30 never reached the encoder: the boundary moves to the next frame there is.
    assert [p.sequence for p in packets if p.is_keyframe] == [0, 31, 60, 90]


def test_bitrate_mode_holds_near_the_rate() -> None:
    packets = encode_all(frames(90), bitrate_bps=300_000)
    bits_per_s = sum(len(p.data) for p in packets) * 8 / 3.0
    assert 150_000 < bits_per_s < 450_000


def test_hardware_encoder_falls_back_to_libx264_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if v4l2_encoder_answers():
        pytest.skip("this machine has a V4L2 M2M encoder")
    with caplog.at_level(logging.INFO):
        encoder = make_encoder("h264_v4l2m2m", 320, 180, 30, 23, None, 60)
    assert encoder.name == "libx264"
    assert "no hardware encoder here; using libx264" in caplog.text
    assert make_encoder("auto", 320, 180, 30, 23, None, 60).name == "libx264"


def test_rejects_bad_settings_and_frames() -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        make_encoder("x265", 320, 180, 30, 23, None, 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crf"):
        make_encoder("libx264", 320, 180, 30, 60, None, 60)
    with pytest.raises(ValueError, match="keyframe interval"):
        make_encoder("libx264", 320, 180, 30, 23, None, 0)
    encoder = make_encoder("libx264", 320, 180, 30, 23, None, 60)
    wrong = RawFrame(new_i420(640, 360), 640, 360, T0_MS, 0, True)
    with pytest.raises(ValueError, match="640x360"):
        encoder.encode(wrong)
