"""Recording comes first: the bulk work of sharing runs at a lower CPU priority.

On Linux, nice is per thread, and a thread or child process inherits its
creator's: lowering it where delivery starts, or for a whole `edge approve`,
covers the threads that work starts. A clip is built ``in_background``, on a
thread of its own, whoever asks for it. An upload may wait; a frame cannot.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")

BACKGROUND_NICE = 10


# The main thread's niceness when this is first imported (before anything has
# yielded): recording's, which background work stays below.
_RECORDING_NICE = os.getpriority(os.PRIO_PROCESS, os.getpid())


def yield_to_recording() -> None:
    """Lowers the calling thread's CPU priority to BACKGROUND_NICE below recording's
    (at most to 19). Once is enough: a thread already there stays where it is."""
    try:
        thread_id = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread_id)
        background = min(19, _RECORDING_NICE + BACKGROUND_NICE)
        if niceness < background:
            os.setpriority(os.PRIO_PROCESS, thread_id, background)
    except OSError as error:
        log.debug("could not lower this thread's priority: %s", error)


def in_background(work: Callable[[], _T], *, name: str) -> _T:
    """``work()`` on a thread of its own at the lower priority, waited for; returns
    what it returns or raises what it raises. The calling thread keeps its own
    priority (an unprivileged thread can lower its priority, never raise it back)."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        yield_to_recording()
        try:
            outcome.append((True, work()))
        except BaseException as error:  # handed to the caller, as if it ran there
            outcome.append((False, error))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    finished, value = outcome[0]
    if not finished:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
