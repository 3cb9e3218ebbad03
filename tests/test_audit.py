"""The audit log: real files, real threads, a real process killed mid-write.

The only stand-in is the clock (ManualClock) where a test needs minutes to pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.clock import ManualClock, SystemClock
from edge.share.audit import (
    DROPPED_EVENT,
    FILE_START_EVENT,
    GENESIS_PREV,
    MAX_STRING_CHARS,
    OPENED_EVENT,
    TORN_REPAIRED_EVENT,
    WRITE_FAILED_EVENT,
    AuditClosedError,
    AuditLockedError,
    AuditLog,
    verify,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
T0_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def entry(line: bytes) -> dict[str, object]:
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
def make_log(tmp_path: Path, clock: ManualClock) -> Callable[..., AuditLog]:
    opened: list[AuditLog] = []

    def make(log_dir: Path | None = None, **kwargs: object) -> AuditLog:
        log = AuditLog(log_dir or tmp_path / "audit", clock, **kwargs)  # type: ignore[arg-type]
        opened.append(log.open())
        return log

    yield make  # type: ignore[misc]
    for log in opened:
        log.close()


def fill(log: AuditLog, count: int) -> None:
    for i in range(count):
        log.append("rejected", reason="bad_alg", jti=f"j-{i}", n=i)


# ------------------------------------------------------------------ format and chain


def test_entries_chain_from_genesis_one_json_line_each(make_log, tmp_path: Path) -> None:
    log = make_log()
    fill(log, 10)
    log.append("pending", durable=True, id=7, jti="6f1c…")
    head = log.head()
    log.close()

    lines = lines_of(tmp_path / "audit" / "audit.log")
    entries = [entry(line) for line in lines]
    assert entries[0]["event"] == FILE_START_EVENT and entries[0]["prev"] == GENESIS_PREV
    assert entries[1]["event"] == OPENED_EVENT
    assert [e["seq"] for e in entries] == list(range(1, len(lines) + 1))
    for before, after in zip(lines, entries[1:], strict=False):
        assert after["prev"] == sha(before)
    assert entries[-1]["event"] == "pending" and entries[-1]["id"] == 7
    assert entries[2]["ts"] == "2026-11-18T11:06:40.000Z"
    assert all(line.isascii() for line in lines)  # no raw control or escape characters
    assert head == sha(lines[-1])[:16]

    result = verify(tmp_path / "audit")
    assert result.ok and result.first_bad is None and result.torn_tail is None
    assert result.entries == len(lines) and result.from_genesis
    assert result.head == head
    assert "OK" in result.summary()


def test_reopen_continues_the_chain(make_log, tmp_path: Path) -> None:
    log = make_log()
    fill(log, 3)
    log.close()
    log2 = make_log()
    fill(log2, 3)
    log2.close()
    entries = [entry(line) for line in lines_of(tmp_path / "audit" / "audit.log")]
    assert [e["event"] for e in entries].count(OPENED_EVENT) == 2
    assert [e["event"] for e in entries].count(FILE_START_EVENT) == 1
    result = verify(tmp_path / "audit")
    assert result.ok and result.entries == len(entries) == 2 + 3 + 1 + 3


def test_one_writer_per_log(make_log, tmp_path: Path, clock: ManualClock) -> None:
    make_log()
    with pytest.raises(AuditLockedError):
        AuditLog(tmp_path / "audit", clock).open()


def test_fields_are_bounded_no_bytes_no_reserved_names(make_log, tmp_path: Path) -> None:
    log = make_log()
    with pytest.raises(TypeError, match="bytes"):
        log.append("delivered", clip=b"\x00\x00\x01")
    with pytest.raises(ValueError, match="reserved"):
        log.append("pending", prev="x")
    with pytest.raises(ValueError):
        log.append("Not An Event")
    with pytest.raises(ValueError, match="at most"):
        log.append("pending", many=list(range(100)))
    log.append("rejected", iss="x" * 10_000, durable=True)
    log.close()
    with pytest.raises(AuditClosedError):
        log.append("pending")
    last = entry(lines_of(tmp_path / "audit" / "audit.log")[-1])
    assert isinstance(last["iss"], str) and len(last["iss"]) == MAX_STRING_CHARS


def test_durable_append_is_on_disk_when_it_returns(make_log, tmp_path: Path) -> None:
    # A long batch interval: without durable=True the entry would still be queued.
    log = make_log(batch_interval_s=5.0)
    log.append("approved", durable=True, id=3, channel="cli")
    last = lines_of(tmp_path / "audit" / "audit.log")[-1]
    assert entry(last)["event"] == "approved"
    assert log.head() == sha(last)[:16]


# ------------------------------------------------------------------ tampering


@pytest.fixture
def closed_log(make_log, tmp_path: Path) -> tuple[Path, list[bytes], str]:
    log = make_log()
    fill(log, 12)
    log.flush()
    head = log.head()  # the head of the last entry on disk
    log.close()
    path = tmp_path / "audit" / "audit.log"
    return path, lines_of(path), head


def bad_of(log_dir: Path, head: str | None = None) -> tuple[str, int, str]:
    result = verify(log_dir, head=head)
    assert not result.ok and result.first_bad is not None
    loc = result.first_bad.location
    assert "BROKEN" in result.summary()
    return loc.file, loc.line, result.first_bad.reason


def test_edited_entry_is_named(closed_log) -> None:
    path, lines, _ = closed_log
    lines[5] = lines[5].replace(b'"bad_alg"', b'"bad_sig"')
    write_lines(path, lines)
    assert bad_of(path.parent) == ("audit.log", 6, "altered")


def test_edited_seq_is_named(closed_log) -> None:
    path, lines, _ = closed_log
    lines[5] = lines[5].replace(b'"seq":6,', b'"seq":60,')
    write_lines(path, lines)
    assert bad_of(path.parent) == ("audit.log", 6, "bad_seq")


def test_edited_prev_is_named(closed_log) -> None:
    path, lines, _ = closed_log
    obj = entry(lines[5])
    obj["prev"] = "ab" * 32
    lines[5] = json.dumps(obj, separators=(",", ":")).encode()
    write_lines(path, lines)
    assert bad_of(path.parent) == ("audit.log", 6, "altered")


def test_deleted_entry_is_caught_where_the_gap_is(closed_log) -> None:
    path, lines, _ = closed_log
    del lines[5]
    write_lines(path, lines)
    assert bad_of(path.parent) == ("audit.log", 6, "missing_entries")


def test_deleted_first_entry_is_caught(closed_log) -> None:
    path, lines, _ = closed_log
    write_lines(path, lines[3:])
    file, line, reason = bad_of(path.parent)
    assert (file, line, reason) == ("audit.log", 1, "file_start_missing")


def test_reordered_entries_are_caught(closed_log) -> None:
    path, lines, _ = closed_log
    lines[5], lines[6] = lines[6], lines[5]
    write_lines(path, lines)
    file, line, reason = bad_of(path.parent)
    assert (file, line) == ("audit.log", 6)
    assert reason in ("out_of_place", "missing_entries")


def test_inserted_copy_is_named(closed_log) -> None:
    path, lines, _ = closed_log
    lines.insert(7, lines[3])  # replaying an earlier entry
    write_lines(path, lines)
    assert bad_of(path.parent) == ("audit.log", 8, "out_of_place")


def test_inserted_entry_with_a_forged_chain_is_named(closed_log) -> None:
    path, lines, _ = closed_log
    # The forger computes a correct prev and seq for the line they insert ...
    forged = {"seq": 8, "ts": "2026-11-18T11:06:40.000Z", "event": "approved", "id": 1}
    forged["prev"] = sha(lines[6])
    lines.insert(7, json.dumps(forged, separators=(",", ":")).encode())
    write_lines(path, lines)
    # ... but the original entry after it still chains from the entry before it.
    assert bad_of(path.parent) == ("audit.log", 8, "out_of_place")


def test_edited_last_entry_is_caught_by_the_head(closed_log) -> None:
    path, lines, head = closed_log
    lines[-1] = lines[-1].replace(b'"bad_alg"', b'"bad_sig"')
    write_lines(path, lines)
    # The newest entry has no successor to vouch for it: only a head the owner holds does.
    assert verify(path.parent).ok
    assert bad_of(path.parent, head=head)[2] == "head_not_found"


def test_garbage_line_is_malformed(closed_log) -> None:
    path, lines, _ = closed_log
    lines[4] = b"not json at all"
    write_lines(path, lines)
    assert bad_of(path.parent) == ("audit.log", 5, "malformed")


# ------------------------------------------------------------------ head


def test_head_from_a_prompt_is_found_later(make_log, tmp_path: Path) -> None:
    log = make_log()
    fill(log, 5)
    log.append("prompted", durable=True, id=4)
    prompt_head = log.head()  # what a prompt carries
    fill(log, 5)
    log.close()
    result = verify(tmp_path / "audit", head=prompt_head.upper())
    assert result.ok and result.head_found_at is not None
    assert result.head_found_at.seq == 2 + 5 + 1


def test_head_catches_a_whole_rewrite(tmp_path: Path, clock: ManualClock) -> None:
    real, forged = tmp_path / "real", tmp_path / "forged"
    with AuditLog(real, clock) as log:
        log.append("prompted", id=1)
        log.append("denied", id=1, channel="review", durable=True)
        owner_head = log.head()
    # Whoever holds the device regenerates the whole log, one event changed.
    with AuditLog(forged, clock) as log:
        log.append("prompted", id=1)
        log.append("approved", id=1, channel="review")
    (real / "audit.log").write_bytes((forged / "audit.log").read_bytes())

    assert verify(real).ok  # the chain alone cannot tell
    result = verify(real, head=owner_head)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.reason == "head_not_found"


def test_head_catches_a_cut_tail(closed_log) -> None:
    path, lines, head = closed_log
    write_lines(path, lines[:-3])
    assert verify(path.parent).ok
    assert bad_of(path.parent, head=head)[2] == "head_not_found"


def test_malformed_head_is_refused(closed_log) -> None:
    path, _lines, _head = closed_log
    with pytest.raises(ValueError, match="not an audit head"):
        verify(path.parent, head="xyz")


# ------------------------------------------------------------------ rotation


def test_rotation_carries_the_chain_and_bounds_the_files(make_log, tmp_path: Path) -> None:
    log = make_log(max_file_bytes=4096, max_files=3)
    fill(log, 300)
    log.close()
    log_dir = tmp_path / "audit"
    names = sorted(p.name for p in log_dir.glob("audit.log*"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    assert log.stats().rotations > 3
    assert all(p.stat().st_size <= 4096 for p in log_dir.glob("audit.log*"))
    # Each file's first entry chains from the last entry of the file before it.
    for older, newer in (
        ("audit.log.3", "audit.log.2"),
        ("audit.log.2", "audit.log.1"),
        ("audit.log.1", "audit.log"),
    ):
        first = entry(lines_of(log_dir / newer)[0])
        assert first["event"] == FILE_START_EVENT
        assert first["prev"] == sha(lines_of(log_dir / older)[-1])

    result = verify(log_dir)
    assert result.ok and not result.from_genesis
    assert result.first_seq == entry(lines_of(log_dir / "audit.log.3")[0])["seq"]
    assert any("rotated away" in note for note in result.notes)
    assert result.entries == sum(len(lines_of(p)) for p in log_dir.glob("audit.log*"))


def test_missing_middle_file_is_caught(make_log, tmp_path: Path) -> None:
    log = make_log(max_file_bytes=4096, max_files=3)
    fill(log, 300)
    log.close()
    log_dir = tmp_path / "audit"
    (log_dir / "audit.log.2").unlink()
    assert bad_of(log_dir) == ("audit.log.1", 1, "missing_entries")


def test_cut_top_of_oldest_file_is_caught(make_log, tmp_path: Path) -> None:
    log = make_log(max_file_bytes=4096, max_files=3)
    fill(log, 300)
    log.close()
    oldest = tmp_path / "audit" / "audit.log.3"
    write_lines(oldest, lines_of(oldest)[2:])
    assert bad_of(tmp_path / "audit") == ("audit.log.3", 1, "file_start_missing")


def test_crash_between_rotation_and_new_file(make_log, tmp_path: Path) -> None:
    log = make_log()
    fill(log, 5)
    log.close()
    log_dir = tmp_path / "audit"
    # What a crash right after the rename leaves: no audit.log at all.
    (log_dir / "audit.log").rename(log_dir / "audit.log.1")
    log2 = make_log()
    fill(log2, 2)
    log2.close()
    first = entry(lines_of(log_dir / "audit.log")[0])
    assert first["event"] == FILE_START_EVENT and first["reason"] == "rotation"
    result = verify(log_dir)
    assert result.ok and result.from_genesis


# ------------------------------------------------------------------ floods and batching


def test_flood_of_rejections_becomes_counts_per_reason_and_minute(
    make_log, tmp_path: Path, clock: ManualClock
) -> None:
    log = make_log(flood_threshold_per_min=5)
    for i in range(1000):
        log.append_counted("rejected", "bad_alg", topic="edge/v1/req/c", n=i)
    for _ in range(3):
        log.append_counted("rejected", "bad_payload")
    log.flush()  # the minute is not over: no aggregate yet
    events = [entry(x) for x in lines_of(tmp_path / "audit" / "audit.log")]
    assert sum(e["event"] == "rejected" and e["reason"] == "bad_alg" for e in events) == 5
    assert sum(e["event"] == "rejected" and e["reason"] == "bad_payload" for e in events) == 3
    assert not any(e["event"] == "rejected_aggregate" for e in events)

    clock.advance_ms(60_000)
    log.append_counted("rejected", "bad_alg", n=-1)  # a new minute: written again
    log.flush()
    events = [entry(x) for x in lines_of(tmp_path / "audit" / "audit.log")]
    aggregates = [e for e in events if e["event"] == "rejected_aggregate"]
    assert aggregates == [
        {
            **aggregates[0],
            "reason": "bad_alg",
            "minute": "2026-11-18T11:06Z",
            "count": 995,
            "total": 1000,
        }
    ]
    assert events[-1]["event"] == "rejected" and events[-1]["n"] == -1
    assert log.stats().counted == 995
    log.close()
    assert verify(tmp_path / "audit").ok


def test_counts_of_the_current_minute_are_written_on_close(make_log, tmp_path: Path) -> None:
    log = make_log(flood_threshold_per_min=2)
    for _ in range(10):
        log.append_counted("rejected", "too_large")
    log.close()
    events = [entry(x) for x in lines_of(tmp_path / "audit" / "audit.log")]
    assert [(e["count"], e["total"]) for e in events if e["event"] == "rejected_aggregate"] == [
        (8, 10)
    ]


def test_a_flood_is_written_in_batches_not_one_fsync_each(make_log, tmp_path: Path) -> None:
    log = make_log(batch_interval_s=0.05)
    fill(log, 10_000)
    log.flush()
    stats = log.stats()
    assert stats.lines_written >= 10_000
    assert stats.fsyncs < 200  # about one per batch interval, not one per entry
    log.close()
    assert verify(tmp_path / "audit").entries == stats.lines_written


def test_many_threads_append_at_once(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", SystemClock(), max_file_bytes=64 * 1024).open()
    threads_n, per_thread = 8, 300
    barrier = threading.Barrier(threads_n)

    def work(t: int) -> None:
        barrier.wait(timeout=10)
        for i in range(per_thread):
            log.append("received", durable=(i % 50 == 0), t=t, i=i)

    threads = [threading.Thread(target=work, args=(t,), name=f"appender-{t}") for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    log.close()

    result = verify(tmp_path / "audit")
    assert result.ok and result.from_genesis
    seen = []
    for path in sorted((tmp_path / "audit").glob("audit.log*")):
        seen += [(e["t"], e["i"]) for e in map(entry, lines_of(path)) if e["event"] == "received"]
    assert sorted(seen) == [(t, i) for t in range(threads_n) for i in range(per_thread)]


# ------------------------------------------------------------------ crashes


def test_torn_last_line_is_reported_apart_from_tampering_then_repaired(
    closed_log, make_log
) -> None:
    path, lines, _ = closed_log
    data = path.read_bytes()
    cut = len(lines[-1]) // 2 + 1  # half the last line and its newline
    path.write_bytes(data[:-cut])

    result = verify(path.parent)
    assert result.ok and result.first_bad is None
    assert result.torn_tail is not None and result.torn_tail.reason == "torn_tail"
    assert result.torn_tail.location.line == len(lines)
    assert "torn" in result.summary()

    log = make_log()  # the writer reopens: cuts the torn bytes, and says so on the chain
    log.append("received", durable=True)
    log.close()
    events = [entry(x) for x in lines_of(path)]
    repaired = [e for e in events if e["event"] == TORN_REPAIRED_EVENT]
    assert len(repaired) == 1
    assert repaired[0]["dropped_bytes"] == len(lines[-1]) + 1 - cut
    assert repaired[0]["dropped_sha256"] == sha(lines[-1][: len(lines[-1]) + 1 - cut])
    after = verify(path.parent)
    assert after.ok and after.torn_tail is None and after.entries == len(events)


def test_partial_line_inside_a_rotated_file_is_tampering(make_log, tmp_path: Path) -> None:
    log = make_log(max_file_bytes=4096, max_files=3)
    fill(log, 100)
    log.close()
    rotated = tmp_path / "audit" / "audit.log.1"
    rotated.write_bytes(rotated.read_bytes()[:-10])
    result = verify(tmp_path / "audit")
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.location.file == "audit.log.1"


_CHILD = """
import sys
from edge.clock import SystemClock
from edge.share.audit import AuditLog
log = AuditLog(sys.argv[1], SystemClock(), batch_interval_s=0.001).open()
log.append("received", durable=True, n=-1)
print("ready", flush=True)
i = 0
while True:
    log.append("received", n=i, topic="edge/v1/req/c/2/3/n/b")
    i += 1
    if i == 5000:
        print("flooding", flush=True)  # the parent kills it from here on, mid-stream
"""


def test_a_writer_killed_mid_stream_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(log_dir)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        assert child.stdout.readline().strip() == b"flooding"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=10)
    first = verify(log_dir)
    assert first.ok, first.summary()  # at most a torn tail, never a broken chain

    with AuditLog(log_dir, SystemClock()) as log:
        log.append("received", n=-2, durable=True)
    result = verify(log_dir)
    assert result.ok and result.torn_tail is None and result.from_genesis


_DISK_FULL_CHILD = """
import json, resource, signal, sys
from edge.clock import SystemClock
from edge.share.audit import AuditLog, AuditWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
log = AuditLog(sys.argv[1], SystemClock(), durable_timeout_s=5, max_pending=20).open()
_soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the "disk" fills up here
failed_at = None
for i in range(1000):
    try:
        log.append("received", durable=True, n=i, topic="edge/v1/req/c/2/3/n/b")
    except AuditWriteError:
        failed_at = i
        break
for i in range(1000, 1050):  # the disk is still full: 19 more fit in the queue, 31 do not
    log.append("received", n=i)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again: the writer retries
log.append("received", durable=True, n=-1)
log.close()
print(json.dumps({"failed_at": failed_at}))
"""


def test_a_full_disk_fails_durable_appends_then_recovers(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    done = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_CHILD, str(log_dir)],
        capture_output=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    failed_at = json.loads(done.stdout)["failed_at"]
    assert failed_at is not None  # the durable append said it was not on disk

    result = verify(log_dir)
    assert result.ok and result.torn_tail is None  # the failed write left no partial line
    numbers = [e["n"] for e in map(entry, lines_of(log_dir / "audit.log")) if "n" in e]
    # The entry that failed stayed queued and was written once the disk had room,
    # after the log's own notes of the failure and of what the full queue refused.
    assert numbers == [*range(failed_at + 1), *range(1000, 1019), -1]
    entries = [entry(x) for x in lines_of(log_dir / "audit.log")]
    events = [e["event"] for e in entries]
    assert events.index(WRITE_FAILED_EVENT) == events.index("received") + failed_at
    assert [e["count"] for e in entries if e["event"] == DROPPED_EVENT] == [31]


def test_a_counted_entry_refused_for_its_fields_is_not_counted(
    make_log, tmp_path: Path
) -> None:
    log = make_log(flood_threshold_per_min=2)
    with pytest.raises(TypeError):
        log.append_counted("rejected", "bad_alg", blob=b"footage")
    for n in (1, 2, 3, 4):
        log.append_counted("rejected", "bad_alg", n=n)  # 3 and 4 only counted
    log.close()
    events = [entry(x) for x in lines_of(tmp_path / "audit" / "audit.log")]
    assert [e["n"] for e in events if e["event"] == "rejected"] == [1, 2]
    assert [(e["count"], e["total"]) for e in events if e["event"] == "rejected_aggregate"] == [
        (2, 4)
    ]
