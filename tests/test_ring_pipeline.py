"""The recording chain into the ring: virtual camera -> libx264 -> Segmenter -> Ring -> clip.

Everything real except the clock (ManualClock) and the camera (the virtual one,
unpaced): the frames carry the spec's time strip, so the clip is checked frame by
frame against the capture times the segments were labelled with.
"""

from __future__ import annotations

import io
import itertools
import subprocess
from pathlib import Path

from pyrage import x25519

from edge.buffer.clip import build_clip
from edge.buffer.ring import SEGMENTS_DIR, Ring
from edge.buffer.segmenter import Segmenter
from edge.capture.encoder import make_encoder
from edge.capture.virtual import VirtualCamera
from edge.clock import ManualClock
from ringtools import open_ring, scan_for_plaintext
from videotools import decode, ffprobe_stream

T0_MS = 1_767_225_600_000
FPS = 15


def record(ring: Ring, start_ms: int, run_id: str, seconds: float) -> None:
    """One `edge run` worth of recording, as the recorder wires it (minus threads)."""
    clock = ManualClock(start_ms)
    camera = VirtualCamera(320, 180, FPS, clock, paced=False)
    camera.start()
    encoder = make_encoder("libx264", 320, 180, FPS, 30, None, FPS)  # a key frame a second
    segmenter = Segmenter(ring, "porch", run_id, segment_seconds=1.0)
    for _ in range(int(seconds * FPS)):
        frame = camera.read(1.0)
        assert frame is not None
        for packet in encoder.encode(frame):
            segmenter.add(packet)
    for packet in encoder.flush():
        segmenter.add(packet)
    segmenter.close()
    camera.stop()


def test_recorded_footage_exports_frame_exact_across_a_restart(tmp_path: Path) -> None:
    owner = x25519.Identity.generate()
    ring = open_ring(
        tmp_path / "data", ManualClock(T0_MS), owner_recipients=[str(owner.to_public())]
    )
    record(ring, T0_MS, "run-1", 6)
    record(ring, T0_MS + 60_000, "run-2", 4)
    records = ring.overlapping(0, 2**62)
    assert [r.meta.run_id for r in records] == ["run-1"] * 6 + ["run-2"] * 4
    assert len(ring.status().spans) == 2

    # A window from inside run 1's third second to inside run 2's second second.
    start_ms, end_ms = T0_MS + 2_500, T0_MS + 61_500
    out = io.BytesIO()
    info = build_clip(ring, start_ms, end_ms, out)
    expected = [
        r for r in records if r.meta.last_frame_ms >= start_ms and r.meta.first_frame_ms <= end_ms
    ]
    frames = decode(out.getvalue())
    assert frames[0].capture_time_ms == expected[0].meta.first_frame_ms == info.first_frame_ms
    assert frames[-1].capture_time_ms == expected[-1].meta.last_frame_ms == info.last_frame_ms
    assert len(frames) == sum(r.meta.frame_count for r in expected) == info.frames
    times = [f.capture_time_ms for f in frames]
    assert times == sorted(times)  # every frame once, in order
    assert len(info.gaps) == 1 and info.gaps[0].before_ms == T0_MS + 60_000
    pts = [f.pts_s for f in frames]
    assert all(abs((b - a) - 1 / FPS) < 1e-3 for a, b in itertools.pairwise(pts))
    clip_path = tmp_path / "export.mp4"  # where the owner asked for it, outside data_dir
    clip_path.write_bytes(out.getvalue())
    probed = ffprobe_stream(clip_path)
    assert probed["codec_name"] == "h264" and int(probed["nb_read_frames"]) == len(frames)

    # The owner opens one stored segment with the age tool; it plays on its own.
    owner_key = tmp_path / "owner.key"
    owner_key.write_text(f"{owner}\n")
    sealed = tmp_path / "data" / "buffer" / SEGMENTS_DIR / records[3].file_name
    opened = subprocess.run(
        ["age", "-d", "-i", str(owner_key), str(sealed)], capture_output=True, check=True
    ).stdout
    assert next(f.capture_time_ms for f in decode(opened)) == records[3].meta.first_frame_ms
    ring.close()
    assert scan_for_plaintext(tmp_path / "data") == []
