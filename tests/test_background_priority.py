"""Sharing's bulk work runs below the recording's CPU priority (Linux nice, per thread)."""

from __future__ import annotations

import os
import threading

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
