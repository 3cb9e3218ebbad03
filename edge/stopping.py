"""Stopping in order, all the way: one part that fails to stop must not leave the others running.

A part whose stop raises is a bug, logged with its traceback; the parts after
it still stop, so the process exits instead of hanging on threads nobody
stopped (systemd would end that with SIGKILL, TimeoutStopSec later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], object]]


def stop_in_order(steps: Sequence[Step]) -> list[str]:
    """Runs every step in order; returns the names of those that raised."""
    failed: list[str] = []
    for name, stop in steps:
        try:
            stop()
        except Exception:
            log.exception("stopping the %s failed; stopping the rest", name)
            failed.append(name)
    return failed
