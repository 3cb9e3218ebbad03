"""The one clock every stage takes its time from.

Wall-clock time labels footage; it is never used to time an interval, because a
Pi without an RTC jumps when NTP answers. Intervals use ``monotonic_s``.
Tests inject a ``Clock`` of their own instead of patching ``time``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time, milliseconds since the Unix epoch (UTC)."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...

    def is_synchronized(self) -> bool:
        """Whether the wall clock is synchronised (NTP), as ``timedatectl`` reports it."""
        ...


# struct timex from <sys/timex.h> (Linux, 64-bit and 32-bit alike: longs throughout).
class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


_STA_UNSYNC = 0x0040
_MAXERROR_UNSYNCED_US = 16_000_000  # systemd's threshold (src/basic/time-util.c, ntp_synced)


def kernel_clock_synchronized() -> bool:
    """The kernel's adjtimex status, read the way systemd-timedated reads it.

    Read-only (``modes = 0``). Returns False where adjtimex is unavailable: an
    unknown clock is treated as unsynchronised, the cautious answer.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        timex = _Timex()
        timex.modes = 0
        if libc.adjtimex(ctypes.byref(timex)) < 0:
            return False
    except (OSError, AttributeError):
        return False
    if timex.maxerror >= _MAXERROR_UNSYNCED_US:
        return False
    return not (timex.status & _STA_UNSYNC)


class SystemClock:
    """The real clock. Synchronisation is re-read at most once a second."""

    def __init__(self) -> None:
        self._synced_checked_at_s = -1e9
        self._synced = False

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        return time.monotonic()

    def is_synchronized(self) -> bool:
        now_s = time.monotonic()
        if now_s - self._synced_checked_at_s >= 1.0:
            self._synced = kernel_clock_synchronized()
            self._synced_checked_at_s = now_s
        return self._synced


class ManualClock:
    """A clock a test moves by hand; stands in for the system clock in tests."""

    def __init__(self, now_ms: int, synchronized: bool = True) -> None:
        self._now_ms = now_ms
        self._monotonic_s = 1000.0
        self.synchronized = synchronized

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic_s(self) -> float:
        return self._monotonic_s

    def is_synchronized(self) -> bool:
        return self.synchronized

    def advance_ms(self, delta_ms: int) -> None:
        self._now_ms += delta_ms
        self._monotonic_s += delta_ms / 1000.0

    def jump_wall_ms(self, delta_ms: int) -> None:
        """Move only the wall clock, as NTP stepping the clock does."""
        self._now_ms += delta_ms
