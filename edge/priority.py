"""Recording comes first: the bulk work of sharing runs at a lower CPU priority.

On Linux, nice is per thread, and a thread or child process inherits its
creator's: lowering it where delivery starts, or for a whole `edge approve`,
covers the threads and age children that work starts. An upload may wait; a
frame cannot.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10


def yield_to_recording() -> None:
    """Lowers the calling thread's CPU priority by BACKGROUND_NICE (at most to 19)."""
    try:
        thread_id = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, niceness + BACKGROUND_NICE))
    except OSError as error:
        log.debug("could not lower this thread's priority: %s", error)
