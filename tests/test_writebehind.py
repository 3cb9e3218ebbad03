"""Write-behind (edge/writebehind.py): pieces written in order on a thread, memory
bounded, the thread's errors handed back to the caller."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from edge.writebehind import WriteBehind


class Recording:
    """A target that keeps what it is given; ``gate`` (when set) holds each write
    until the test lets it go, and ``fail_at`` makes that write fail as a full
    disk would."""

    def __init__(self, *, gated: bool = False, fail_at: int | None = None) -> None:
        self.written: list[bytes] = []
        self.threads: set[str] = set()
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0) if gated else None
        self.fail_at = fail_at

    def write(self, data: bytes | memoryview) -> int:
        self.threads.add(threading.current_thread().name)
        self.entered.release()
        if self.gate is not None:
            assert self.gate.acquire(timeout=10), "the test never let the write go"
        if self.fail_at is not None and len(self.written) == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written.append(bytes(data))
        return len(data)


def test_pieces_arrive_whole_and_in_order_on_the_thread() -> None:
    target = Recording()
    behind = WriteBehind(target, name="edge-test-behind")
    pieces = [bytes([n]) * (n * 1000 + 1) for n in range(50)]
    for piece in pieces:
        assert behind.write(memoryview(piece)) == len(piece)
    behind.close()
    assert target.written == pieces
    assert target.threads == {"edge-test-behind"}


def test_a_writer_ahead_of_its_target_waits_at_the_bound() -> None:
    target = Recording(gated=True)
    behind = WriteBehind(target, name="edge-test-behind", max_pending_bytes=3000)
    behind.write(b"a" * 1000)  # taken by the thread, held at the gate
    assert target.entered.acquire(timeout=10)
    behind.write(b"b" * 1000)
    behind.write(b"c" * 1000)  # 3000 waiting: the bound
    fourth_done = threading.Event()

    def fourth() -> None:
        behind.write(b"d" * 1000)
        fourth_done.set()

    writer = threading.Thread(target=fourth)
    writer.start()
    assert not fourth_done.wait(0.3)  # would be over the bound: it waits
    target.gate.release()  # type: ignore[union-attr]  # the first piece is written
    assert fourth_done.wait(10)
    for _ in range(3):
        target.gate.release()  # type: ignore[union-attr]
    writer.join()
    behind.close()
    assert [piece[:1] for piece in target.written] == [b"a", b"b", b"c", b"d"]


def test_a_piece_larger_than_the_bound_still_goes_alone() -> None:
    target = Recording()
    behind = WriteBehind(target, name="edge-test-behind", max_pending_bytes=10)
    behind.write(b"x" * 1000)
    behind.close()
    assert target.written == [b"x" * 1000]


def test_the_threads_error_reaches_the_caller_and_nothing_after_it_is_written() -> None:
    target = Recording(fail_at=2)
    # A bound of one piece: each write waits for the one before, so the failure
    # of the third is seen by the fourth at the latest.
    behind = WriteBehind(target, name="edge-test-behind", max_pending_bytes=100)
    with pytest.raises(OSError, match="No space left") as raised:
        for n in range(1000):
            behind.write(bytes([n % 256]) * 100)
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="No space left"):
        behind.close()
    assert len(target.written) == 2  # the pieces before the failure, none after


def test_an_error_in_the_last_pieces_is_raised_by_close() -> None:
    target = Recording(fail_at=0)
    behind = WriteBehind(target, name="edge-test-behind")
    behind.write(b"only piece")
    with pytest.raises(OSError, match="No space left"):
        behind.close()
    assert target.written == []


def test_abort_drops_what_is_waiting_and_ends_the_thread() -> None:
    target = Recording(gated=True)
    behind = WriteBehind(target, name="edge-test-behind")
    behind.write(b"first")
    assert target.entered.acquire(timeout=10)  # under way, held at the gate
    behind.write(b"second")
    behind.write(b"third")
    aborter = threading.Thread(target=behind.abort)
    aborter.start()
    # abort() drops the waiting pieces at once, then waits for the write under way.
    deadline = time.monotonic() + 10
    while behind._pieces and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not behind._pieces
    target.gate.release()  # type: ignore[union-attr]
    aborter.join(10)
    assert not aborter.is_alive()
    assert target.written == [b"first"]
    with pytest.raises(ValueError, match="closed"):
        behind.write(b"late")
