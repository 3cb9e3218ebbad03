"""Sharing's bulk work runs below the recording's CPU priority (Linux nice, per thread)."""

from __future__ import annotations

import os
import threading

import pytest

from edge import priority


def nice_of_thread(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def test_the_delivery_thread_and_what_it_starts_yield_to_recording() -> None:
    recording_nice = nice_of_thread(threading.get_native_id())
    seen: dict[str, int] = {}

    def started_by_delivery() -> None:
        seen["its worker"] = nice_of_thread(threading.get_native_id())

    def delivery_thread() -> None:
        priority.yield_to_recording()  # as the delivery thread does first
        seen["delivery"] = nice_of_thread(threading.get_native_id())
        worker = threading.Thread(target=started_by_delivery)
        worker.start()
        worker.join()

    thread = threading.Thread(target=delivery_thread)
    thread.start()
    thread.join()
    expected = min(19, recording_nice + priority.BACKGROUND_NICE)
    assert seen == {"delivery": expected, "its worker": expected}
    assert nice_of_thread(threading.get_native_id()) == recording_nice  # this thread untouched


def test_yielding_twice_stays_at_the_background_priority() -> None:
    recording_nice = nice_of_thread(threading.get_native_id())
    seen: list[int] = []

    def twice() -> None:
        for _ in range(2):
            priority.yield_to_recording()
            seen.append(nice_of_thread(threading.get_native_id()))

    thread = threading.Thread(target=twice)
    thread.start()
    thread.join()
    expected = min(19, recording_nice + priority.BACKGROUND_NICE)
    assert seen == [expected, expected]


def test_work_in_background_runs_below_recording_and_gives_back_its_result_or_error() -> None:
    recording_nice = nice_of_thread(threading.get_native_id())
    expected = min(19, recording_nice + priority.BACKGROUND_NICE)

    def work() -> tuple[int, str]:
        return nice_of_thread(threading.get_native_id()), threading.current_thread().name

    assert priority.in_background(work, name="edge-test-work") == (expected, "edge-test-work")

    def failing() -> None:
        raise LookupError("no such clip")

    with pytest.raises(LookupError, match="no such clip"):
        priority.in_background(failing, name="edge-test-work")
    assert nice_of_thread(threading.get_native_id()) == recording_nice  # the caller's as it was
