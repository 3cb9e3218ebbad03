"""The owner's consent: prompts, decisions, and everything that follows a decision.

Decisions come from three places (the CLI on the device, the review page, a
prompt's "Deny" action) and all go through ``Decisions``: a guarded state
change in the request store, bound for an approval to the SHA-256 of the
sealed clip the owner was shown. The store is the one truth shared by the CLI
and the daemon.

``ConsentService`` runs in the daemon. It prompts the owner when a request
becomes pending (pinning its footage, issuing single-use tokens), and its
worker ("edge-consent") follows the store's changes, whichever process made
them: it writes them to the audit log, revokes tokens, unpins footage, deletes
clips that will never be sent, sweeps expired requests and hands approved ones
to delivery. What it has handled is kept in the store, so a restart neither
repeats nor skips a step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from edge.buffer.clip import NoFootage, SegmentSource
from edge.buffer.ring import PinCapExceeded
from edge.clock import Clock
from edge.share.audit import AuditLog
from edge.share.geo import LonLat, distance_m
from edge.share.notify import PromptDispatcher
from edge.share.outbox import Outbox, OutboxClip, OutboxError
from edge.share.prompt import Notice, Prompt
from edge.share.review_backend import ClipError, DecisionError, RequestView
from edge.share.store import FINAL_STATES, RequestRecord, RequestStore
from edge.share.tokens import TokenStore
from edge.share.verify import Location

log = logging.getLogger(__name__)

HANDLED_REV_COUNTER = "consent_handled_rev"
HOUSEKEEPING_INTERVAL_S = 600.0  # replay cache and spent tokens pruned this often
POLL_INTERVAL_S = 0.5  # a decision on the CLI reaches the daemon within a second


class Pinning(Protocol):
    """Holding a pending request's footage back from eviction (the ring)."""

    def pin(self, window_start_ms: int, window_end_ms: int, owner_id: str) -> int: ...

    def unpin(self, owner_id: str) -> None: ...


class FootageSource(SegmentSource, Protocol):
    def footage_ms(self, start_ms: int, end_ms: int, *, synced_only: bool) -> int: ...


@dataclass(frozen=True)
class ClipView:
    """A sealed clip as the review page plays it (edge.share.review.ClipHandle)."""

    clip: OutboxClip
    outbox: Outbox

    @property
    def sha256(self) -> str:
        return self.clip.sha256

    @property
    def size_bytes(self) -> int:
        return self.clip.size_bytes

    @property
    def first_frame_ms(self) -> int:
        return self.clip.first_frame_ms

    @property
    def last_frame_ms(self) -> int:
        return self.clip.last_frame_ms

    def open(self) -> Iterator[bytes]:
        return self.outbox.open_plaintext(self.clip)


def _pin_owner(request_id: int) -> str:
    return f"request-{request_id}"


class Decisions:
    """The owner's decisions, the same from every channel and every process."""

    def __init__(
        self, store: RequestStore, outbox: Outbox, footage: SegmentSource, clock: Clock
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._footage = footage
        self._clock = clock

    def pending(self, request_id: int) -> RequestRecord:
        record = self._store.get(request_id)
        if record is None:
            raise DecisionError(f"there is no request {request_id}")
        if record.state != "pending":
            raise DecisionError(f"request {request_id} is {record.state}, not pending")
        if record.decide_by_ms is not None and self._clock.now_ms() >= record.decide_by_ms:
            raise DecisionError(f"request {request_id} has expired")
        return record

    def window(
        self, record: RequestRecord, start_ms: int | None, end_ms: int | None
    ) -> tuple[int, int]:
        """The window to share: the request's, or a narrower one. Never wider."""
        assert record.window_start_ms is not None and record.window_end_ms is not None
        start = record.window_start_ms if start_ms is None else start_ms
        end = record.window_end_ms if end_ms is None else end_ms
        if start < record.window_start_ms or end > record.window_end_ms:
            raise DecisionError("the window may be narrowed, never widened")
        if start >= end:
            raise DecisionError("the window must end after it starts")
        return start, end

    def clip(self, request_id: int, start_ms: int | None, end_ms: int | None) -> OutboxClip:
        """The sealed clip of (a narrowing of) a pending request's window, made once."""
        record = self.pending(request_id)
        start, end = self.window(record, start_ms, end_ms)
        try:
            return self._outbox.build(request_id, self._footage, start, end)
        except NoFootage as exc:
            raise ClipError(f"no footage of that window: {exc}") from None
        except OutboxError as exc:
            raise ClipError(str(exc)) from None

    def approve(
        self,
        request_id: int,
        *,
        start_ms: int | None,
        end_ms: int | None,
        sha256: str | None,
        channel: str,
        decided_by: str,
        require_shown: bool,
    ) -> OutboxClip:
        """Approves sharing exactly one sealed clip.

        ``require_shown``: the clip must already exist (the review page made it
        when the owner opened it) rather than be made now. ``sha256``, when
        given, must be that clip's: what is sent is what the owner saw.
        """
        record = self.pending(request_id)
        start, end = self.window(record, start_ms, end_ms)
        clip = self._outbox.find(request_id, start, end)
        if clip is None:
            if require_shown:
                raise DecisionError("open the clip of this window before approving it")
            clip = self.clip(request_id, start, end)
        if sha256 is not None and sha256.lower() != clip.sha256:
            raise DecisionError(
                f"the clip of that window has SHA-256 {clip.sha256}, not the one given: "
                "the footage changed since it was looked at; look again before approving"
            )
        won = self._store.transition(
            request_id,
            {"pending"},
            "approved",
            decided_ms=self._clock.now_ms(),
            decided_by=decided_by,
            decision_channel=channel,
            approved_start_ms=start,
            approved_end_ms=end,
            clip_sha256=clip.sha256,
        )
        if not won:
            latest = self._store.get(request_id)
            raise DecisionError(
                f"request {request_id} is {latest.state if latest else 'gone'}, not pending"
            )
        return clip

    def deny(self, request_id: int, *, channel: str, decided_by: str) -> None:
        self.pending(request_id)
        won = self._store.transition(
            request_id,
            {"pending"},
            "denied",
            decided_ms=self._clock.now_ms(),
            decided_by=decided_by,
            decision_channel=channel,
        )
        if not won:
            latest = self._store.get(request_id)
            raise DecisionError(
                f"request {request_id} is {latest.state if latest else 'gone'}, not pending"
            )


@dataclass(frozen=True)
class ConsentSettings:
    location: Location
    time_zone: str
    review_url: str  # "" = no review page: prompts carry no links
    exclude_unsynced: bool


class ConsentService:
    """The daemon's side of consent; implements edge.share.review.ReviewBackend."""

    def __init__(
        self,
        settings: ConsentSettings,
        store: RequestStore,
        tokens: TokenStore,
        audit: AuditLog,
        footage: FootageSource,
        pinning: Pinning,
        outbox: Outbox,
        dispatcher: PromptDispatcher,
        clock: Clock,
        on_approved: Callable[[int], None] = lambda _id: None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._tokens = tokens
        self._audit = audit
        self._footage = footage
        self._pinning = pinning
        self._outbox = outbox
        self._dispatcher = dispatcher
        self._clock = clock
        self._on_approved = on_approved
        self.decisions = Decisions(store, outbox, footage, clock)
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards _pin_lost; taken by intake and review threads
        self._pin_lost: set[int] = set()
        self._step_lock = threading.Lock()  # one round at a time (worker, or a test's call)
        self._housekept_at_s: float | None = None
        self._thread = threading.Thread(target=self._run, name="edge-consent")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._catch_up_on_start()
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Look at the store now (a decision was just made in this process)."""
        self._wake.set()

    # -- prompting (intake thread) -----------------------------------------------------

    def prompt(self, request_id: int) -> None:
        """A request became pending: hold its footage, and ask the owner."""
        record = self._store.get(request_id)
        if record is None or record.state != "pending" or record.request is None:
            return
        assert record.window_start_ms is not None and record.window_end_ms is not None
        if not self._pin_window(request_id, record.window_start_ms, record.window_end_ms):
            with self._lock:
                self._pin_lost.add(request_id)
        expires_ms = record.decide_by_ms or record.exp_ms or self._clock.now_ms()
        self._tokens.revoke_request(str(request_id))  # a re-prompt makes the old links void
        review_url = deny_url = deny_token = None
        base = self._settings.review_url.rstrip("/")
        if base:
            review_token = self._tokens.issue(str(request_id), "review", expires_ms)
            deny_token = self._tokens.issue(str(request_id), "deny", expires_ms)
            review_url = f"{base}/r/{review_token}"
            deny_url = f"{base}/a"
        self._audit.append("prompted", durable=True, id=request_id)
        view = self._view(record)
        prompt = Prompt(
            request_id=str(request_id),
            agency_name=view.agency_name,
            agency_kind=view.agency_kind,  # type: ignore[arg-type]
            title=view.title,
            description=view.description,
            case_ref=view.case_ref,
            public_url=view.public_url,
            window_start_ms=view.window_start_ms,
            window_end_ms=view.window_end_ms,
            time_zone=view.time_zone,
            distance_m=view.distance_m,
            footage_held_s=view.footage_held_s,
            footage_lost_to_pin_cap=view.footage_lost_to_pin_cap,
            footage_clock_unsynced=view.footage_clock_unsynced,
            decide_by_ms=view.decide_by_ms,
            review_url=review_url,
            deny_url=deny_url,
            deny_token=deny_token,
            audit_head=self._audit.head(),
        )
        self._dispatcher.submit(prompt)

    def _pin_window(self, request_id: int, start_ms: int, end_ms: int) -> bool:
        """Holds the window's footage back from eviction; True if all of it.

        Past the pin cap, as much of the window as fits is held, its newest part
        (found by halving), and the owner is told the rest may be lost.
        """
        owner = _pin_owner(request_id)
        try:
            self._pinning.pin(start_ms, end_ms, owner)
            return True
        except PinCapExceeded as exc:
            log.warning("request %s: not all its footage can be held back: %s", request_id, exc)
        too_early, fits = start_ms, end_ms  # pinning from too_early fails; from fits, nothing
        for _ in range(16):
            middle = (too_early + fits) // 2
            if fits - too_early <= 1000 or middle >= end_ms:
                break
            try:
                self._pinning.pin(middle, end_ms, owner)
                fits = middle
            except PinCapExceeded:
                too_early = middle
        return False

    # -- ReviewBackend (review server threads) -----------------------------------------

    def view(self, request_id: str) -> RequestView | None:
        record = self._record(request_id)
        return None if record is None or record.request is None else self._view(record)

    def clip(self, request_id: str, start_ms: int, end_ms: int) -> ClipView:
        record = self._record(request_id)
        if record is None:
            raise ClipError("there is no such request")
        return ClipView(self.decisions.clip(record.id, start_ms, end_ms), self._outbox)

    def approve(
        self, request_id: str, *, start_ms: int, end_ms: int, sha256: str, channel: str
    ) -> None:
        record = self._record(request_id)
        if record is None:
            raise DecisionError("there is no such request")
        self.decisions.approve(
            record.id,
            start_ms=start_ms,
            end_ms=end_ms,
            sha256=sha256,
            channel=channel,
            decided_by="owner",
            require_shown=True,
        )
        self.wake()

    def deny(self, request_id: str, *, channel: str) -> None:
        record = self._record(request_id)
        if record is None:
            raise DecisionError("there is no such request")
        self.decisions.deny(record.id, channel=channel, decided_by="owner")
        self.wake()

    def _record(self, request_id: str) -> RequestRecord | None:
        return self._store.get(int(request_id)) if request_id.isdigit() else None

    def _view(self, record: RequestRecord) -> RequestView:
        request: dict[str, Any] = record.request or {}
        assert record.window_start_ms is not None and record.window_end_ms is not None
        centre = request.get("area_centre") or [0.0, 0.0]
        distance = distance_m(self._settings.location.point, LonLat(centre[0], centre[1]))
        held_ms = self._footage.footage_ms(
            record.window_start_ms, record.window_end_ms, synced_only=False
        )
        synced_ms = self._footage.footage_ms(
            record.window_start_ms, record.window_end_ms, synced_only=True
        )
        with self._lock:
            pin_lost = record.id in self._pin_lost
        approved = None
        if record.approved_start_ms is not None and record.approved_end_ms is not None:
            approved = (record.approved_start_ms, record.approved_end_ms)
        return RequestView(
            request_id=str(record.id),
            agency_name=str(request.get("agency_name", record.agency_name or "")),
            agency_kind=str(request.get("agency_kind", "other")),
            title=str(request.get("title", "")),
            description=str(request.get("description", "")),
            case_ref=request.get("case_ref"),
            public_url=str(request.get("public_url", "")),
            window_start_ms=record.window_start_ms,
            window_end_ms=record.window_end_ms,
            time_zone=self._settings.time_zone,
            distance_m=distance,
            footage_held_s=held_ms / 1000,
            decide_by_ms=record.decide_by_ms or record.exp_ms or 0,
            state=record.state,  # type: ignore[arg-type]
            history=_history(record),
            approved_window=approved,
            footage_lost_to_pin_cap=pin_lost,
            footage_clock_unsynced=synced_ms < held_ms,
        )

    # -- following the store (edge-consent thread) -------------------------------------

    def _catch_up_on_start(self) -> None:
        """Pending requests whose prompt may not have reached the owner are asked again."""
        for record in self._store.in_states(["pending"]):
            self.prompt(record.id)

    def _run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.step()
            except Exception:
                log.exception("consent worker: step failed; trying again")
            self._wake.wait(POLL_INTERVAL_S)
            self._wake.clear()

    def step(self) -> None:
        """One round: expire what is overdue, then act on every change not yet handled."""
        with self._step_lock:
            now_ms = self._clock.now_ms()
            self._store.sweep_expired(now_ms)
            handled_rev = self._store.get_counter(HANDLED_REV_COUNTER)
            new_rev, changed = self._store.changes_since(handled_rev)
            for record in changed:
                self._follow(record)
            if new_rev != handled_rev:
                self._store.set_counter(HANDLED_REV_COUNTER, new_rev)
            monotonic_s = self._clock.monotonic_s()
            if (
                self._housekept_at_s is None
                or monotonic_s - self._housekept_at_s >= HOUSEKEEPING_INTERVAL_S
            ):
                self._housekept_at_s = monotonic_s
                self._store.prune_replay(now_ms)
                self._tokens.prune(now_ms)

    def _follow(self, record: RequestRecord) -> None:
        request_id = record.id
        if record.state == "pending" or self._store.was_followed(request_id, record.state):
            return  # prompted on intake; and each later state is acted on once
        self._act_on(record)
        # Marked after acting: a crash in between repeats an audit line rather than
        # losing it; delivery waits for this mark, so the approval is logged first.
        self._store.mark_followed(request_id, record.state)
        if record.state == "approved":
            self._on_approved(request_id)

    def _act_on(self, record: RequestRecord) -> None:
        request_id = record.id
        if record.state in ("approved", "denied"):
            approved = record.state == "approved"
            what_was_approved: dict[str, object] = {}
            if approved:
                what_was_approved = {
                    "start": record.approved_start_ms,
                    "end": record.approved_end_ms,
                    "clip_sha256": record.clip_sha256,
                }
            self._audit.append(
                "decided",
                durable=True,
                id=request_id,
                decision=record.state,
                channel=record.decision_channel,
                by=record.decided_by,
                **what_was_approved,
            )
            self._close_request(record, keep_clip=approved)
        elif record.state == "expired":
            self._audit.append("expired", durable=True, id=request_id, reason=record.reason)
            self._close_request(record, keep_clip=False)
            self._notice(record, "expired")
        elif record.state in FINAL_STATES:
            self._close_request(record, keep_clip=False)

    def _close_request(self, record: RequestRecord, *, keep_clip: bool) -> None:
        self._tokens.revoke_request(str(record.id))
        self._pinning.unpin(_pin_owner(record.id))
        with self._lock:
            self._pin_lost.discard(record.id)
        keep = None
        if (
            keep_clip
            and record.approved_start_ms is not None
            and record.approved_end_ms is not None
        ):
            keep = self._outbox.find(record.id, record.approved_start_ms, record.approved_end_ms)
        # An approved request keeps its clip and whatever delivery has made of it.
        self._outbox.delete_request(record.id, keep=keep, clips_only=keep_clip)

    def _notice(self, record: RequestRecord, kind: str, detail: str | None = None) -> None:
        request = record.request or {}
        self._dispatcher.submit_notice(
            Notice(
                kind=kind,  # type: ignore[arg-type]
                request_id=str(record.id),
                agency_name=str(request.get("agency_name", record.agency_name or "")),
                title=str(request.get("title", "")),
                time_zone=self._settings.time_zone,
                at_ms=self._clock.now_ms(),
                audit_head=self._audit.head(),
                detail=detail,
            )
        )

    def notify_delivery(self, record: RequestRecord, delivered: bool, detail: str | None) -> None:
        self._notice(record, "delivered" if delivered else "upload_failed", detail)


def _history(record: RequestRecord) -> list[tuple[int, str]]:
    events = [(record.received_ms, "request received and checked")]
    if record.decided_ms is not None:
        decision = "denied" if record.state == "denied" else "approved"
        channel = {"cli": "on the device", "review": "on the review page"}.get(
            record.decision_channel or "", f"by {record.decision_channel}"
        )
        events.append((record.decided_ms, f"{decision} {channel}"))
    if record.state in ("delivered", "failed", "expired"):
        events.append((record.updated_ms, record.state))
    return events
