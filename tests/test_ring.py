"""The ring: real files, real SQLite, real decoders; crashes simulated on disk.

Stand-ins: the clock (ManualClock: segments carry synthetic capture times and
tests make hours pass) and the camera (tests/ringtools.py encodes stamped frames
with libx264 and muxes them like the segmenter does).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pyrage import x25519

from edge.buffer.clip import build_clip
from edge.buffer.ring import (
    INDEX_NAME,
    SEGMENTS_DIR,
    STORE_QUEUE_SEGMENTS,
    PinCapExceeded,
    RingError,
    RingFeed,
    RingReader,
    SegmentDamaged,
)
from edge.buffer.seal import open_sealed, seal_segment
from edge.clock import ManualClock
from edge.keys import KeyPermissionError
from ringtools import (
    T0_MS,
    HashingSink,
    RunSpec,
    decode_frame_numbers,
    frames_of,
    make_segments,
    open_ring,
    put_all,
    scan_for_plaintext,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_A = RunSpec(count=12)  # 12 segments of 1 s (10 frames at 10 fps), frames 0..119
RUN_B = RunSpec(count=6, start_ms=T0_MS + 60_000, first_frame_number=1000, run_id="run-b")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


def segment_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "buffer" / SEGMENTS_DIR).iterdir())


def index_db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "buffer" / INDEX_NAME, isolation_level=None)


def listed_sequences(ring: RingReader, start_ms: int = 0, end_ms: int = 2**62) -> list[int]:
    return [record.meta.sequence for record in ring.overlapping(start_ms, end_ms)]


def test_put_status_and_spans(tmp_path: Path, clock: ManualClock) -> None:
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RUN_A), clock)
    put_all(ring, make_segments(RUN_B), clock)
    status = ring.status()
    assert status.segments == 18
    assert status.bytes == sum(path.stat().st_size for path in segment_files(tmp_path))
    assert status.oldest_ms == T0_MS
    assert status.newest_ms == T0_MS + 60_000 + 5_900
    assert [(s.start_ms, s.end_ms, s.segments) for s in status.spans] == [
        (T0_MS, T0_MS + 11_900, 12),
        (T0_MS + 60_000, T0_MS + 65_900, 6),
    ]
    shown = status.as_json()
    assert shown["segments"] == 18 and shown["bytes"] == status.bytes
    assert shown["oldest"] == "2026-09-21T14:13:20.000Z"
    assert shown["gaps"] == [
        {"start": "2026-09-21T14:13:31.900Z", "end": "2026-09-21T14:14:20.000Z"}
    ]
    json.dumps(shown)  # printable as is
    ring.close()


def test_files_are_private_and_only_ciphertext(tmp_path: Path, clock: ManualClock) -> None:
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RUN_A)[:3], clock)
    buffer_dir = tmp_path / "buffer"
    assert stat.S_IMODE(buffer_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((buffer_dir / SEGMENTS_DIR).stat().st_mode) == 0o700
    assert stat.S_IMODE((buffer_dir / INDEX_NAME).stat().st_mode) == 0o600
    for path in segment_files(tmp_path):
        assert path.name.endswith(".age")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(b"age-encryption.org/v1\n")
    ring.close()


def test_no_plaintext_anywhere_under_data_dir_after_recording_and_export(
    tmp_path: Path, clock: ManualClock
) -> None:
    data_dir = tmp_path / "data"
    owner = x25519.Identity.generate()
    ring = open_ring(data_dir, clock, owner_recipients=[str(owner.to_public())])
    put_all(ring, make_segments(RUN_A), clock)
    put_all(ring, make_segments(RUN_B), clock)
    # Exports while the daemon runs (in process, as the review page would) and
    # from another reader (as `edge export` would), to a place outside data_dir.
    build_clip(ring, T0_MS, T0_MS + 70_000, HashingSink())
    with RingReader.open(data_dir) as reader:
        with open(tmp_path / "export.mp4", "wb") as out:
            build_clip(reader, T0_MS + 3_000, T0_MS + 62_000, out)
    ring.close()  # closing checkpoints the WAL into the index file: scan both states
    findings = scan_for_plaintext(data_dir)
    assert findings == [], findings
    # The scanner does find plaintext where there is some (the export itself).
    assert {name for _, name, _ in scan_for_plaintext(tmp_path)} >= {
        "mp4 ftyp iso",
        "mp4 moof+mfhd",
        "mp4 avcC",
    }


def test_tampering_is_detected_reported_skipped_and_the_rest_exports(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    put_all(ring, segments, clock)
    records = ring.overlapping(T0_MS, T0_MS + 20_000)
    path = {r.meta.sequence: tmp_path / "buffer" / SEGMENTS_DIR / r.file_name for r in records}
    # 2: one bit flipped in the middle.
    data = bytearray(path[2].read_bytes())
    data[len(data) // 2] ^= 0x04
    path[2].write_bytes(bytes(data))
    # 4: truncated.
    path[4].write_bytes(path[4].read_bytes()[:-300])
    # 6 and 7: the two files swapped.
    six, seven = path[6].read_bytes(), path[7].read_bytes()
    path[6].write_bytes(seven)
    path[7].write_bytes(six)
    # 9: its row re-timed to claim another second (its file untouched).
    with index_db(tmp_path) as db:
        db.execute(
            "UPDATE segments SET first_frame_ms = first_frame_ms + 500,"
            " last_frame_ms = last_frame_ms + 500 WHERE sequence = 9"
        )
    problems = {p.record.meta.sequence: p for p in ring.verify()}
    assert sorted(problems) == [2, 4, 6, 7, 9]
    assert all(isinstance(p, SegmentDamaged) for p in problems.values())
    assert "altered" in problems[2].reason
    assert "truncated" in problems[4].reason
    assert "replaced by another file" in problems[6].reason
    assert "replaced by another file" in problems[7].reason
    assert "first_frame_ms sealed" in problems[9].reason
    out = io.BytesIO()
    info = build_clip(ring, T0_MS, T0_MS + 20_000, out)
    claimed = ring.overlapping(T0_MS, T0_MS + 20_000)  # skipped as their rows claim them
    assert sorted(s.first_frame_ms for s in info.skipped) == sorted(
        r.meta.first_frame_ms for r in claimed if r.meta.sequence in (2, 4, 6, 7, 9)
    )
    assert info.segments == 7
    good = [s for s in segments if s.meta.sequence not in (2, 4, 6, 7, 9)]
    assert decode_frame_numbers(out.getvalue()) == frames_of(good)
    # A swap that also swaps the rows' hashes is still caught by the sealed metadata.
    with index_db(tmp_path) as db:
        rows = dict(db.execute("SELECT sequence, sealed_sha256 FROM segments").fetchall())
        sizes = dict(db.execute("SELECT sequence, sealed_bytes FROM segments").fetchall())
        db.execute(
            "UPDATE segments SET sealed_sha256 = ?, sealed_bytes = ? WHERE sequence = 6",
            (rows[7], sizes[7]),
        )
        db.execute(
            "UPDATE segments SET sealed_sha256 = ?, sealed_bytes = ? WHERE sequence = 7",
            (rows[6], sizes[6]),
        )
    problems = {p.record.meta.sequence: p for p in ring.verify()}
    assert "sequence sealed 7 vs index 6" in problems[6].reason
    ring.close()


def test_eviction_by_size_oldest_first(tmp_path: Path, clock: ManualClock) -> None:
    segments = make_segments(RUN_A)
    # age adds random "grease" to each header, so sealed sizes vary a little:
    # learn each one as it is stored.
    max_bytes = len(segments[0].mp4) * 4
    ring = open_ring(tmp_path, clock, max_bytes=max_bytes)
    sealed_size = {}
    for segment in segments:
        put_all(ring, [segment], clock)
        newest = ring.overlapping(segment.meta.first_frame_ms, segment.meta.last_frame_ms)
        sealed_size[segment.meta.sequence] = newest[-1].sealed_bytes
    # What must be left: the longest run of newest segments that fits.
    expected: list[int] = []
    for sequence in reversed(range(12)):
        if sum(sealed_size[s] for s in expected) + sealed_size[sequence] > max_bytes:
            break
        expected.insert(0, sequence)
    assert 3 <= len(expected) < 12
    assert listed_sequences(ring) == expected
    assert ring.status().bytes <= max_bytes
    assert len(segment_files(tmp_path)) == len(expected)
    assert ring.verify() == []
    ring.close()


def test_eviction_by_age_only_with_a_synchronised_clock(tmp_path: Path) -> None:
    clock = ManualClock(T0_MS, synchronized=False)
    ring = open_ring(tmp_path, clock, max_age_s=5.0)
    segments = make_segments(RUN_A)
    put_all(ring, segments, clock)  # clock ends at the last frame, 11.9 s on
    # Unsynchronised, footage times mean nothing: nothing is evicted by age.
    assert len(listed_sequences(ring)) == 12
    clock.synchronized = True
    put_all(ring, make_segments(RunSpec(count=1, start_ms=T0_MS + 12_000, run_id="r2")), clock)
    # Now (12.9 s on) everything whose last frame is more than 5 s old is gone.
    kept = ring.overlapping(0, 2**62)
    assert all(r.meta.last_frame_ms >= clock.now_ms() - 5_000 for r in kept)
    assert [r.meta.sequence for r in kept] == [7, 8, 9, 10, 11, 0]
    ring.close()


def test_age_eviction_follows_each_segment_and_looks_past_a_pinned_oldest(
    tmp_path: Path, clock: ManualClock
) -> None:
    ring = open_ring(tmp_path, clock, max_age_s=3.0)
    segments = make_segments(RUN_A)
    put_all(ring, segments[:2], clock)
    ring.pin(T0_MS, T0_MS + 500, "request-1")  # segment 0, the oldest
    for segment in segments[2:]:
        put_all(ring, [segment], clock)
        cutoff_ms = clock.now_ms() - 3_000
        young = [s.meta.sequence for s in segments[1 : segment.meta.sequence + 1]
                 if s.meta.last_frame_ms >= cutoff_ms]
        assert listed_sequences(ring) == [0, *young]
    ring.unpin("request-1")
    later = make_segments(RunSpec(count=1, start_ms=T0_MS + 60_000, run_id="r2"))
    put_all(ring, later, clock)
    assert [r.meta.run_id for r in ring.overlapping(0, 2**62)] == ["r2"]
    put_all(ring, make_segments(RunSpec(count=1, start_ms=T0_MS + 70_000, run_id="r3")), clock)
    assert [r.meta.run_id for r in ring.overlapping(0, 2**62)] == ["r3"]  # r2 is 9 s old
    ring.close()


def test_pins_hold_a_window_against_eviction_until_unpinned(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    size = len(segments[0].mp4) + 2000  # sealed is a little larger than the video
    ring = open_ring(tmp_path, clock, max_bytes=size * 4, pin_cap_bytes=size * 3)
    put_all(ring, segments[:3], clock)
    pinned_bytes = ring.pin(T0_MS + 1_000, T0_MS + 1_500, "request-1")  # segment 1
    assert pinned_bytes == ring.overlapping(T0_MS + 1_000, T0_MS + 1_500)[0].sealed_bytes
    put_all(ring, segments[3:], clock)
    listed = listed_sequences(ring)
    # The pinned segment stayed; around it, only the newest few that fit.
    assert listed[0] == 1 and listed[1:] == list(range(listed[1], 12)) and listed[1] > 4
    assert ring.status().bytes <= size * 4
    assert ring.status().pinned_bytes == pinned_bytes
    # Over the cap: refused, nothing changes.
    with pytest.raises(PinCapExceeded, match="cap"):
        ring.pin(T0_MS, T0_MS + 20_000, "request-2")
    assert [p.owner_id for p in ring.status().pins] == ["request-1"]
    # Pins survive a restart.
    ring.close()
    ring = open_ring(tmp_path, clock, max_bytes=size * 4, pin_cap_bytes=size * 3)
    assert [p.owner_id for p in ring.status().pins] == ["request-1"]
    ring.unpin("request-1")
    put_all(ring, make_segments(RunSpec(count=1, start_ms=T0_MS + 20_000, run_id="r2")), clock)
    assert 1 not in listed_sequences(ring, T0_MS, T0_MS + 12_000)
    ring.close()


def test_reconcile_after_crashes(tmp_path: Path, clock: ManualClock) -> None:
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    put_all(ring, segments[:6], clock)
    records = {r.meta.sequence: r for r in ring.overlapping(0, 2**62)}
    ring.close()
    seg_dir = tmp_path / "buffer" / SEGMENTS_DIR
    # Cut off mid-write: a temporary file (ciphertext) left behind.
    (seg_dir / f".tmp-{'ab' * 16}.age").write_bytes(b"age-encryption.org/v1\n-> X25519 cut")
    # Renamed into place, power gone before the row was committed.
    with index_db(tmp_path) as db:
        db.execute("DELETE FROM segments WHERE sequence = 5")
    # Evicted file, power gone before the row went.
    (seg_dir / records[0].file_name).unlink()
    # A file with a segment's name that no key opens (garbage), and a stranger.
    (seg_dir / f"{'cd' * 16}.age").write_bytes(os.urandom(500))
    (seg_dir / "notes.txt").write_text("not ours")
    ring = open_ring(tmp_path, clock)
    assert listed_sequences(ring) == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in seg_dir.iterdir()) == sorted(
        [records[i].file_name for i in (1, 2, 3, 4, 5)] + ["notes.txt"]
    )
    assert ring.verify() == []
    # The re-indexed segment carries its sealed metadata and exports.
    out = io.BytesIO()
    build_clip(ring, records[5].meta.first_frame_ms, records[5].meta.last_frame_ms, out)
    assert decode_frame_numbers(out.getvalue()) == list(range(50, 60))
    ring.close()


def test_storage_keys_rotate_and_go_when_their_segments_are_evicted(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    size = len(segments[0].mp4) + 2000
    ring = open_ring(tmp_path, clock, max_bytes=size * 3, rotate_every_s=3.0)
    kept_ciphertexts = []
    for segment in segments:
        put_all(ring, [segment], clock)
        record = ring.overlapping(segment.meta.first_frame_ms, segment.meta.first_frame_ms)[0]
        kept_ciphertexts.append(
            (tmp_path / "buffer" / SEGMENTS_DIR / record.file_name).read_bytes()
        )
    records = ring.overlapping(0, 2**62)
    assert records[0].meta.sequence >= 6 and records[-1].meta.sequence == 11
    in_use = {r.key_id for r in records}
    key_files = sorted((tmp_path / "keys").glob("storage-*.agekey"))
    assert {p.name[len("storage-") : -len(".agekey")] for p in key_files} == in_use
    # The footage evicted earliest (sealed with since-deleted keys) opens with no
    # key the device still holds.
    held = [f"-i{p}" for p in key_files]
    for ciphertext in kept_ciphertexts[:6]:
        result = subprocess.run(["age", "-d", *held], input=ciphertext, capture_output=True)
        assert result.returncode != 0
    ring.close()


def test_one_writer_per_data_dir_and_readers_alongside(tmp_path: Path, clock: ManualClock) -> None:
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RUN_A)[:4], clock)
    with pytest.raises(RingError, match="in use by another edge process"):
        open_ring(tmp_path, clock)
    # A reader in another process (as `edge status` would be) sees the same state.
    script = (
        "import sys, json; from pathlib import Path; from edge.buffer.ring import RingReader;"
        "r = RingReader.open(Path(sys.argv[1])); print(json.dumps(r.status().as_json()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert json.loads(result.stdout)["segments"] == 4
    ring.close()
    reopened = open_ring(tmp_path, clock)  # the lock went with the close
    reopened.close()


def test_a_reader_of_an_empty_data_dir_creates_nothing(tmp_path: Path) -> None:
    with RingReader.open(tmp_path / "data") as reader:
        assert reader.status().segments == 0 and reader.status().oldest_ms is None
    assert not (tmp_path / "data").exists()


def test_window_queries_are_index_range_scans(tmp_path: Path, clock: ManualClock) -> None:
    ring = open_ring(tmp_path, clock)
    put_all(ring, make_segments(RUN_A), clock)
    plan = ring._writer_index.query_plan(T0_MS + 3000, T0_MS + 5000)
    assert "USING INDEX segments_by_time (first_frame_ms>? AND first_frame_ms<?)" in plan, plan
    ring.close()


def test_keys_open_to_others_refuse_to_start(tmp_path: Path, clock: ManualClock) -> None:
    open_ring(tmp_path, clock).close()
    key = next((tmp_path / "keys").glob("storage-*.agekey"))
    os.chmod(key, 0o644)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        open_ring(tmp_path, clock)


def test_bad_owner_recipient_is_refused_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="owner_recipients"):
        open_ring(tmp_path / "data", ManualClock(T0_MS), owner_recipients=["age1bad"])
    assert not (tmp_path / "data").exists()


def test_concurrent_put_status_and_export(tmp_path: Path, clock: ManualClock) -> None:
    segments = make_segments(RunSpec(count=30, frames_per_segment=5))
    ring = open_ring(tmp_path, clock, max_bytes=len(segments[0].mp4) * 12)
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                ring.status()
                for record in ring.overlapping(0, 2**62):
                    try:
                        ring.open_segment(record)
                    except Exception as problem:  # evicted meanwhile is fine, damage is not
                        if isinstance(problem, SegmentDamaged):
                            errors.append(problem)
            except BaseException as error:
                errors.append(error)
                return

    thread = threading.Thread(target=reader, name="test-reader")
    thread.start()
    try:
        put_all(ring, segments, clock)  # this thread plays the segmenter
    finally:
        done.set()
        thread.join(timeout=30)
    assert errors == []
    assert ring.verify() == []
    ring.close()


# -- the recorder's way in: submit seals at once, the store thread writes -----------


def test_submitted_segments_are_stored_in_order_once_flushed(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    feed = RingFeed(ring)  # what the daemon hands the segmenter
    for segment in segments:
        feed.put(segment)
    ring.flush()
    assert listed_sequences(ring) == [s.meta.sequence for s in segments]
    records = ring.overlapping(0, 2**62)
    assert [record.row_id for record in records] == sorted(r.row_id for r in records)
    assert [n for r in records for n in decode_frame_numbers(ring.open_segment(r).mp4)] == (
        frames_of(segments)
    )
    assert ring.verify() == []
    ring.close()


def test_close_stores_everything_submitted(tmp_path: Path, clock: ManualClock) -> None:
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    for segment in segments:
        ring.submit(segment)
    ring.close()  # as the daemon does on stop, right after the recorder's last segment
    with RingReader.open(tmp_path) as reader:
        assert listed_sequences(reader) == [s.meta.sequence for s in segments]
        assert reader.verify() == []
    with pytest.raises(RingError, match="closed"):
        ring.submit(segments[0])


def test_submit_does_not_wait_for_a_stalled_disk_until_the_queue_is_full(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    cap = STORE_QUEUE_SEGMENTS + 1  # the queue and the one being written
    ring = open_ring(tmp_path, clock)
    # Holding the ring's index lock stands in for a disk that stalls: the store
    # thread blocks in its eviction pass before it writes anything.
    with ring._lock:
        for segment in segments[:cap]:
            ring.submit(segment)
        assert segment_files(tmp_path) == []
        one_more = threading.Thread(target=ring.submit, args=(segments[cap],))
        one_more.start()
        # A negative: it must still be waiting (memory stays bounded while the disk
        # stalls). Half a second is ample for a submit that does not wait.
        one_more.join(timeout=0.5)
        assert one_more.is_alive()
    one_more.join(timeout=60)
    assert not one_more.is_alive()
    ring.flush()
    assert listed_sequences(ring) == [s.meta.sequence for s in segments[: cap + 1]]
    ring.close()


def test_a_failed_store_is_reported_on_the_next_submit_and_recording_can_go_on(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    ring.put(segments[0])
    segments_dir = tmp_path / "buffer" / SEGMENTS_DIR
    # A real fault, not a mock: the segments directory is gone (a card pulled, a
    # stray rm), so the durable write fails with ENOENT.
    moved = tmp_path / "moved-away"
    segments_dir.rename(moved)
    ring.submit(segments[1])
    ring.flush()
    with pytest.raises(RingError, match="storing an earlier segment failed"):
        ring.submit(segments[2])
    moved.rename(segments_dir)
    ring.submit(segments[3])  # reported once: the next one goes through
    ring.flush()
    with pytest.raises(FileNotFoundError):  # put reports its own failure at once
        segments_dir.rename(moved)
        ring.put(segments[4])
    moved.rename(segments_dir)
    ring.submit(segments[5])  # put's failure was put's to report: not raised again here
    ring.flush()
    assert listed_sequences(ring) == [0, 3, 5]
    # The failed segments gave back their room in the store queue: more than it
    # holds still go through.
    for segment in segments[6:]:
        ring.submit(segment)
    ring.flush()
    assert listed_sequences(ring) == [0, 3, 5, *range(6, len(segments))]
    ring.close()


def test_a_segment_file_replaced_by_a_fresh_seal_with_matching_metadata_is_detected(
    tmp_path: Path, clock: ManualClock
) -> None:
    # age lets anyone holding the (public) recipient seal a file: the stand-in below
    # decrypts with the ring's key and carries the right metadata. What gives it
    # away is the row's digest of the age header the ring wrote.
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    put_all(ring, segments[:4], clock)
    records = {r.meta.sequence: r for r in ring.overlapping(0, 2**62)}
    seg_dir = tmp_path / "buffer" / SEGMENTS_DIR
    key = ring._keys.current(clock)
    stand_in = seal_segment(segments[2], [key.recipient])
    assert open_sealed(bytes(stand_in), [key.identity]).meta == segments[2].meta
    assert len(stand_in) == records[2].sealed_bytes
    (seg_dir / records[2].file_name).write_bytes(stand_in)
    # And one byte of segment 1's header (in its X25519 stanza) changed.
    header = bytearray((seg_dir / records[1].file_name).read_bytes())
    header[header.index(b"X25519 ") + 9] ^= 0x01
    (seg_dir / records[1].file_name).write_bytes(header)
    problems = {p.record.meta.sequence: p.reason for p in ring.verify()}
    assert sorted(problems) == [1, 2]
    assert all("content does not match its index row" in reason for reason in problems.values())
    ring.close()


def test_an_index_of_schema_1_is_read_as_it_is_and_brought_up_to_date_by_the_writer(
    tmp_path: Path, clock: ManualClock
) -> None:
    segments = make_segments(RUN_A)
    ring = open_ring(tmp_path, clock)
    put_all(ring, segments[:4], clock)
    ring.close()
    seg_dir = tmp_path / "buffer" / SEGMENTS_DIR
    # The index as schema 1 wrote it: no digested_bytes, each digest over the whole file.
    with index_db(tmp_path) as db:
        for (name,) in db.execute("SELECT file_name FROM segments").fetchall():
            whole = hashlib.sha256((seg_dir / name).read_bytes()).digest()
            db.execute("UPDATE segments SET sealed_sha256 = ? WHERE file_name = ?", (whole, name))
        db.execute("ALTER TABLE segments DROP COLUMN digested_bytes")
        db.execute("PRAGMA user_version = 1")

    def schema() -> int:
        with index_db(tmp_path) as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    with RingReader.open(tmp_path) as reader:  # as `edge status` or `edge export` would
        assert reader.status().segments == 4
        assert reader.verify() == []
    assert schema() == 1  # a reader changes nothing
    ring = open_ring(tmp_path, clock)
    assert schema() == 2
    put_all(ring, segments[4:6], clock)
    assert ring.verify() == []
    with index_db(tmp_path) as db:
        covered = dict(db.execute("SELECT sequence, digested_bytes FROM segments").fetchall())
    assert [covered[i] for i in range(4)] == [None] * 4  # still the whole file
    assert all(0 < covered[i] < 1000 for i in (4, 5))  # the header and nonce
    # The old rows are still checked over the whole file.
    records = {r.meta.sequence: r for r in ring.overlapping(0, 2**62)}
    data = bytearray((seg_dir / records[0].file_name).read_bytes())
    data[len(data) // 2] ^= 0x04
    (seg_dir / records[0].file_name).write_bytes(data)
    problems = {p.record.meta.sequence: p.reason for p in ring.verify()}
    assert list(problems) == [0]
    assert "content does not match its index row" in problems[0]
    out = io.BytesIO()
    build_clip(ring, T0_MS, T0_MS + 60_000, out)
    assert decode_frame_numbers(out.getvalue()) == frames_of(segments[1:6])
    ring.close()
