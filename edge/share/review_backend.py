"""The consent service as the review page sees it, and what the page shows of a request.

Apart from edge/share/review.py (the page itself, Flask and cheroot) so that
the consent service, and a daemon with the review page off (the default), do
not load a web framework they never use: some 15 MB of memory on a Pi.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

RequestState = Literal["pending", "approved", "denied", "expired", "delivered", "failed"]
REQUEST_STATES: tuple[str, ...] = (
    "pending", "approved", "denied", "expired", "delivered", "failed",
)


@dataclass(frozen=True)
class RequestView:
    """What the page shows about one request. Times are Unix ms (UTC)."""

    request_id: str  # the short local id (`edge approve ID`)
    agency_name: str
    agency_kind: str  # "police" | "fire" | "other"
    title: str
    description: str
    case_ref: str | None
    public_url: str
    window_start_ms: int  # the window the agency asked for
    window_end_ms: int
    time_zone: str  # the owner's, an IANA name such as "Europe/Berlin"
    distance_m: float  # from the camera to the centre of the requested area
    footage_held_s: float  # footage of the window the buffer holds
    decide_by_ms: int
    state: RequestState
    history: Sequence[tuple[int, str]] = ()  # (timestamp_ms, event text), oldest first
    approved_window: tuple[int, int] | None = None  # (start_ms, end_ms) once approved
    footage_lost_to_pin_cap: bool = False  # part of the window is not kept (pin cap)
    footage_clock_unsynced: bool = False  # some of it predates clock synchronisation


class ClipHandle(Protocol):
    """A sealed clip in the outbox, as the page plays it and the approval binds to it."""

    @property
    def sha256(self) -> str:
        """Lower-case hex SHA-256 of the plaintext MP4 (what the owner watches)."""
        ...

    @property
    def size_bytes(self) -> int:
        """Length of the plaintext MP4."""
        ...

    @property
    def first_frame_ms(self) -> int: ...

    @property
    def last_frame_ms(self) -> int: ...

    def open(self) -> Iterator[bytes]:
        """The plaintext MP4 from its first byte, decrypted chunk by chunk as it is read.

        Nothing may be written to disk. The page may stop reading at any point;
        an iterator with a ``close()`` (a generator) is closed then.
        """
        ...


class DecisionError(Exception):
    """A decision the backend refused; the message is shown to the owner as it is."""


class ClipError(Exception):
    """No clip can be made of that window (no footage, say); the message is shown."""


class ReviewBackend(Protocol):
    """The consent service, as the review page sees it. Called from server worker threads."""

    def view(self, request_id: str) -> RequestView | None:
        """The request as it stands now; None if there is no such request (any more)."""
        ...

    def clip(self, request_id: str, start_ms: int, end_ms: int) -> ClipHandle:
        """Builds (or reuses: called for every page view and every range request) the
        sealed clip of that window; raises ClipError when none can be made (or
        DecisionError when the request is no longer pending)."""
        ...

    def approve(self, request_id: str, *, start_ms: int, end_ms: int, sha256: str,
                channel: str) -> None:
        """Raises DecisionError if the request is not pending, the window is wider than
        the one asked for, or the clip of that window does not have that SHA-256."""
        ...

    def deny(self, request_id: str, *, channel: str) -> None:
        """Raises DecisionError if the request is not pending."""
        ...
