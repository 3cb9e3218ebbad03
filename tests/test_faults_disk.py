"""Fault: the disk fills up under the running daemon (data_dir on a 24 MiB tmpfs).

The daemon is a real process; its whole data_dir (keys, ring, index, request
store, audit log, status file) lies on a real tmpfs mounted here (as root; the
test is skipped, saying why, where mounting is not allowed). Other files take
part of the disk from the start (a filler, as other data on the card would),
recording fills the rest, and later another process takes every byte still free.
``buffer.max_bytes`` is far above the disk's size: only the disk limits the ring.
The camera is the virtual one, lossless (crf 0) at 1280x720, ~1 MB/s, so that the
disk fills within seconds.

Proves: recording continues by evicting the oldest footage, the newest is kept
(the segments still listed are the newest ones, in order, without holes), no
segment is dropped, nothing listed is corrupt (every segment decrypts and
matches its row), `edge export` of the newest minute decodes with its time strips
in order up to the newest frame; a request that arrives meanwhile is taken in;
`edge audit verify` passes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import MosquittoBroker
from edge.buffer.ring import RingReader
from edge.units import format_rfc3339_ms, parse_rfc3339_ms
from faults import (
    Camera,
    fill_disk,
    mounted_tmpfs,
    publish_request,
    request_payload,
    running_camera,
    wait_until,
)
from videotools import decode

TMPFS_SIZE = "24m"
FILLER_BYTES = 8 * 1024 * 1024  # other files on the card from the start
BUDGET_S = 90.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", TMPFS_SIZE) as mount_point:
        yield mount_point


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def listing(camera: Camera) -> list[tuple[str, int, int]]:
    """(run, sequence, last frame ms) of every listed segment, in arrival order."""
    with RingReader.open(camera.data_dir) as reader:
        records = sorted(reader.overlapping(0, 2**62), key=lambda r: r.row_id)
        return [(r.meta.run_id, r.meta.sequence, r.meta.last_frame_ms) for r in records]


@pytest.mark.slow
def test_recording_goes_on_when_the_disk_is_full(
    tmp_path: Path, small_disk: Path, broker: MosquittoBroker
) -> None:
    started_s = time.monotonic()
    fill_disk(small_disk / "other-files", FILLER_BYTES)
    camera = Camera(
        tmp_path / "camera",
        broker_port=broker.port,
        data_dir=small_disk / "data",
        camera={"width": 1280, "height": 720, "fps": 15, "crf": 0},
        buffer={"max_bytes": "1TB"},
    )
    with running_camera(camera):
        camera.start()
        camera.wait_ready(subscribed=True)
        first = wait_until(lambda: listing(camera), 30, "the first segment")[0]
        # Recording fills the disk; the oldest footage has to go.
        wait_until(
            lambda: first not in listing(camera),
            60,
            "the first segment to be evicted for space",
            describe=lambda: f"{free_bytes(small_disk)} bytes free; " + camera.log_tail(5),
        )
        # Another process takes every byte still free.
        taken = fill_disk(small_disk / "more-files")
        newest_then = listing(camera)[-1]
        wait_until(
            lambda: len([s for s in listing(camera) if s[2] > newest_then[2]]) >= 3,
            30,
            "three more segments after the disk was taken",
            describe=camera.log_tail,
        )
        # A request arrives meanwhile: it is stored and its footage found.
        now_s = time.time()
        payload, jti = request_payload(
            window_start_s=now_s - 4, window_end_s=now_s - 1, upload_url="http://127.0.0.1:9/f/"
        )
        publish_request(broker, payload)
        wait_until(
            lambda: any(r["jti"] == jti and r["state"] == "pending" for r in camera.requests()),
            30,
            "the request to be pending",
        )
        frames_before = camera.frames()
        threading.Event().wait(3.0)  # record on a full disk a little longer
        assert camera.frames() > frames_before
        assert camera.running, camera.log_tail()

        status = camera.status()
        assert camera.stop() == 0
    segments = listing(camera)
    # The newest footage is kept: what is listed is the newest of this run, in
    # order and without holes; the oldest went first.
    sequences = [sequence for _run, sequence, _last in segments]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    assert sequences[0] > first[1]
    assert status["buffer"]["dropped_segments"] == 0
    with RingReader.open(camera.data_dir) as reader:
        assert reader.verify() == []  # nothing corrupted
    # The newest minute exports and decodes, up to the newest frame.
    newest_ms = segments[-1][2]
    out = tmp_path / "newest.mp4"  # not on the full disk
    camera.export(format_rfc3339_ms(newest_ms - 60_000), format_rfc3339_ms(newest_ms), out)
    times = [frame.capture_time_ms for frame in decode(out)]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[-1] == newest_ms
    assert parse_rfc3339_ms(status["buffer"]["newest"]) <= newest_ms
    camera.audit_verify()
    log = camera.log_text()
    assert "Traceback" not in log
    elapsed_s = time.monotonic() - started_s
    print(
        f"disk {TMPFS_SIZE}: {len(segments)} segments kept ({sequences[0]}..{sequences[-1]}), "
        f"{taken} bytes taken by another process; {elapsed_s:.1f} s"
    )
    assert elapsed_s < BUDGET_S
