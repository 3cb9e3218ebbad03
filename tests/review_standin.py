"""A stand-in for the lead's consent service, for the review page's tests.

It implements edge.share.review.ReviewBackend over real parts: clips are real
H.264 MP4s (fragmented, as the ring's clip builder makes them) encoded with
PyAV, sealed with age (pyrage) into an outbox folder on disk and decrypted in
memory when the page streams them; tokens live in a real TokenStore on disk.
Only the consent logic itself is stood in for, until the lead's service lands:
states, history and the checks approve() and deny() make, as the issue says.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyrage

from edge.clock import Clock
from edge.share.review_backend import ClipError, DecisionError, RequestView
from edge.share.tokens import TokenStore

CLIP_FPS = 10
CLIP_WIDTH, CLIP_HEIGHT = 320, 240
_OPEN_CHUNK_BYTES = 4096  # small, so that byte ranges cross chunks in tests


# A request as the consent service would describe it: asked at 14:00 UTC for four
# seconds of 13:05 UTC; the owner lives in Berlin (UTC+1 in November).
NOW_MS = int(datetime(2026, 11, 28, 14, 0, tzinfo=UTC).timestamp() * 1000)
WINDOW_START_MS = int(datetime(2026, 11, 28, 13, 5, tzinfo=UTC).timestamp() * 1000)
WINDOW_END_MS = WINDOW_START_MS + 4_000
DECIDE_BY_MS = NOW_MS + 48 * 3600 * 1000


def request_view(request_id: str = "r7k2", **changes: object) -> RequestView:
    fields: dict[str, object] = dict(
        request_id=request_id,
        agency_name="Springfield Police Department",
        agency_kind="police",
        title="Hit and run on Elm Street",
        description="A grey van hit a cyclist.\nWe look for footage of the van.",
        case_ref="SPD-2026-1182",
        public_url="https://police.example.org/cases/1182",
        window_start_ms=WINDOW_START_MS,
        window_end_ms=WINDOW_END_MS,
        time_zone="Europe/Berlin",
        distance_m=123.0,
        footage_held_s=4.0,
        decide_by_ms=DECIDE_BY_MS,
        state="pending",
        history=((NOW_MS - 60_000, "received"), (NOW_MS - 59_000, "prompted (ntfy)")),
    )
    fields.update(changes)
    return RequestView(**fields)  # type: ignore[arg-type]


def make_h264_mp4(start_ms: int, end_ms: int, *, fps: int = CLIP_FPS,
                  width: int = CLIP_WIDTH, height: int = CLIP_HEIGHT) -> bytes:
    """A real fragmented MP4 (H.264 Constrained Baseline, yuv420p) of the window: a bar
    whose position depends on the wall-clock time, so each window is its own clip."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as mp4:
        stream = mp4.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"profile": "baseline", "preset": "ultrafast", "g": str(fps)}
        stream.codec_context.time_base = Fraction(1, 1000)
        frame_ms = 1000 // fps
        for at_ms in range(start_ms, end_ms, frame_ms):
            picture = np.full((height, width, 3), 30, np.uint8)
            x = (at_ms // frame_ms * 7) % (width - 24)
            picture[:, x:x + 24] = (230, 200, 40)
            picture[: height // 8, : (at_ms // 100) % width] = 255  # a progress line
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p")
            frame.pts = at_ms - start_ms
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                mp4.mux(packet)
        for packet in stream.encode():
            mp4.mux(packet)
    return out.getvalue()


@dataclass(frozen=True)
class SealedClip:
    """A clip sealed in the outbox; ClipHandle for the page."""

    path: Path
    identity: pyrage.x25519.Identity
    sha256: str
    size_bytes: int
    first_frame_ms: int
    last_frame_ms: int
    opened: list[int] = field(default_factory=list)  # one entry per open(), for tests

    def open(self) -> Iterator[bytes]:
        self.opened.append(1)
        # pyrage decrypts a whole buffer in memory; the real service streams age's
        # chunks. Either way no plaintext reaches the disk.
        plaintext = pyrage.decrypt(self.path.read_bytes(), [self.identity])
        for offset in range(0, len(plaintext), _OPEN_CHUNK_BYTES):
            yield plaintext[offset: offset + _OPEN_CHUNK_BYTES]


@dataclass
class _Request:
    view: RequestView
    clips: dict[tuple[int, int], SealedClip] = field(default_factory=dict)


class StandInConsent:
    """ReviewBackend over real files; stands in for the lead's consent service."""

    def __init__(self, outbox: Path, tokens: TokenStore, clock: Clock) -> None:
        self._outbox = outbox
        self._outbox.mkdir(parents=True, exist_ok=True)
        self._tokens = tokens
        self._clock = clock
        self._identity = pyrage.x25519.Identity.generate()
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self.decisions: list[tuple[str, str, str]] = []  # (request_id, decision, channel)
        self.plaintexts: list[bytes] = []  # every clip built, to prove none is on disk

    def add(self, view: RequestView) -> None:
        with self._lock:
            self._requests[view.request_id] = _Request(view=view)

    def view(self, request_id: str) -> RequestView | None:
        with self._lock:
            entry = self._requests.get(request_id)
            return entry.view if entry else None

    def clip(self, request_id: str, start_ms: int, end_ms: int) -> SealedClip:
        with self._lock:
            entry = self._requests.get(request_id)
            if entry is None:
                raise ClipError("no such request")
            view = entry.view
            if start_ms < view.window_start_ms or end_ms > view.window_end_ms:
                raise ClipError("that window is wider than the one asked for")
            if (start_ms, end_ms) in entry.clips:
                return entry.clips[(start_ms, end_ms)]
            plaintext = make_h264_mp4(start_ms, end_ms)
            self.plaintexts.append(plaintext)
            path = self._outbox / f"{request_id}-{start_ms}-{end_ms}.mp4.age"
            path.write_bytes(pyrage.encrypt(plaintext, [self._identity.to_public()]))
            frame_ms = 1000 // CLIP_FPS
            clip = SealedClip(
                path=path, identity=self._identity,
                sha256=hashlib.sha256(plaintext).hexdigest(), size_bytes=len(plaintext),
                first_frame_ms=start_ms,
                last_frame_ms=start_ms + ((end_ms - start_ms - 1) // frame_ms) * frame_ms)
            entry.clips[(start_ms, end_ms)] = clip
            return clip

    def approve(self, request_id: str, *, start_ms: int, end_ms: int, sha256: str,
                channel: str) -> None:
        with self._lock:
            entry = self._pending(request_id)
            view = entry.view
            if start_ms < view.window_start_ms or end_ms > view.window_end_ms:
                raise DecisionError("The window is wider than the one asked for.")
            clip = entry.clips.get((start_ms, end_ms))
            if clip is None or clip.sha256 != sha256:
                raise DecisionError("That is not the clip of this window.")
            self._decide(entry, "approved", channel, approved=(start_ms, end_ms))

    def deny(self, request_id: str, *, channel: str) -> None:
        with self._lock:
            entry = self._pending(request_id)
            for clip in entry.clips.values():
                clip.path.unlink(missing_ok=True)
            entry.clips.clear()
            self._decide(entry, "denied", channel)

    def _pending(self, request_id: str) -> _Request:
        entry = self._requests.get(request_id)
        if entry is None:
            raise DecisionError("There is no such request.")
        if entry.view.state != "pending":
            raise DecisionError(f"The request is {entry.view.state} already.")
        if self._clock.now_ms() >= entry.view.decide_by_ms:
            raise DecisionError("The time to decide is over.")
        return entry

    def _decide(self, entry: _Request, state: str, channel: str, *,
                approved: tuple[int, int] | None = None) -> None:
        now_ms = self._clock.now_ms()
        event = f"{state} ({channel})"
        entry.view = replace(entry.view, state=state,  # type: ignore[arg-type]
                             history=(*entry.view.history, (now_ms, event)),
                             approved_window=approved)
        self.decisions.append((entry.view.request_id, state, channel))
        # As the issue says: a decided request's tokens stop working.
        self._tokens.revoke_request(entry.view.request_id)
