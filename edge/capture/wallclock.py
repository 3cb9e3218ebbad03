"""Labels moments on the monotonic clock with wall-clock time.

Sources schedule and measure frames on the monotonic clock (it never jumps) and
label them with the wall clock (what footage is indexed by). The offset between
the two is read once and kept, so labels are exactly as evenly spaced as the
frames, with no reading jitter; it is re-read when the wall clock is stepped
(NTP answering on a Pi without an RTC), so labels follow the corrected clock.
Slewing moves both clocks alike and leaves the offset alone.
"""

from __future__ import annotations

import logging

from edge.clock import Clock

log = logging.getLogger(__name__)

STEP_THRESHOLD_MS = 50.0  # a larger change in the offset is a clock step, not reading noise


class WallClockMapper:
    """Called from one thread (the source's)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._offset_ms: float | None = None  # wall ms minus monotonic ms

    def wall_ms(self, monotonic_s: float) -> int:
        """The wall-clock time, in ms since the epoch, of a moment on the monotonic clock."""
        observed_ms = self._clock.now_ms() - self._clock.monotonic_s() * 1000.0
        if self._offset_ms is None:
            self._offset_ms = observed_ms
        elif abs(observed_ms - self._offset_ms) > STEP_THRESHOLD_MS:
            log.warning(
                "wall clock stepped by %+.0f ms; labelling frames from now on with the new time",
                observed_ms - self._offset_ms,
            )
            self._offset_ms = observed_ms
        return round(self._offset_ms + monotonic_s * 1000.0)

    def synchronized(self) -> bool:
        return self._clock.is_synchronized()
