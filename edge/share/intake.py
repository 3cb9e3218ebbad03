"""The intake: one MQTT payload in, judged, matched and stored before it is acknowledged.

Runs on the MQTT listener's worker thread (never on paho's network thread).
A payload is verified (edge.share.verify), then matched: the camera must lie in
the request's area and hold footage overlapping its window. The outcome is
stored (edge.share.store) and written to the audit log; a matching request
becomes ``pending`` and ``on_pending`` is told its local id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge.clock import Clock
from edge.share.audit import AuditLog
from edge.share.geo import distance_m
from edge.share.store import Acceptance, AcceptedState, AcceptResult, Rejection, RequestStore
from edge.share.verify import (
    Accepted,
    Location,
    Policy,
    Rejected,
    Trust,
    Verdict,
    VerifiedRequest,
    check_request,
)

log = logging.getLogger(__name__)

REJECTIONS_STORED_PER_MINUTE = 60


class FootageIndex(Protocol):
    """How much footage the buffer holds of a window (the ring's time index)."""

    def footage_ms(self, start_ms: int, end_ms: int, *, synced_only: bool) -> int: ...


@dataclass(frozen=True)
class IntakeSettings:
    trust: Trust
    policy: Policy
    location: Location
    decision_timeout_s: float
    exclude_unsynced: bool  # policy.unsynced_footage == "exclude"


def request_to_json(request: VerifiedRequest) -> dict[str, Any]:
    """The verified request as the store keeps it (and later stages read it back)."""
    fields = {
        name: getattr(request, name)
        for name in request.__dataclass_fields__
        if name not in ("area", "upload_hosts")
    }
    fields["area"] = request.area.to_geojson()
    fields["area_centre"] = [request.centre.lon, request.centre.lat]
    fields["upload_hosts"] = list(request.upload_hosts)
    return fields


@dataclass(frozen=True)
class IntakeOutcome:
    verdict: Verdict
    state: str  # rejected | duplicate | not_matching | pending
    request_id: int | None


class Intake:
    def __init__(
        self,
        settings: IntakeSettings,
        store: RequestStore,
        audit: AuditLog,
        footage: FootageIndex,
        clock: Clock,
        on_pending: Callable[[int], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._audit = audit
        self._footage = footage
        self._clock = clock
        self._on_pending = on_pending
        # Used by the listener's one worker thread only.
        self._rejection_minute = -1
        self._rejections_this_minute: dict[str, int] = {}

    def _rejections_to_store(self, reason: str, now_ms: int) -> bool:
        """Whether this rejection gets a row of its own in the store.

        The first ``REJECTIONS_STORED_PER_MINUTE`` per reason and minute do (they
        show in `edge requests --all`); past that, in a flood, a rejection is only
        counted in the audit log, as the spec allows, so garbage costs no write.
        """
        minute = now_ms // 60_000
        if minute != self._rejection_minute:
            self._rejection_minute = minute
            self._rejections_this_minute.clear()
        count = self._rejections_this_minute.get(reason, 0) + 1
        self._rejections_this_minute[reason] = count
        return count <= REJECTIONS_STORED_PER_MINUTE

    def judge(self, payload: bytes, now_ms: int) -> Verdict:
        s = self._settings
        return check_request(
            payload, now_s=now_ms / 1000, trust=s.trust, policy=s.policy, location=s.location
        )

    def handle(self, topic: str, payload: bytes) -> IntakeOutcome:
        """Judges and stores one message. Returns once the outcome is on disk."""
        return self.handle_batch([(topic, payload)])[0]

    def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> list[IntakeOutcome]:
        """Judges each (topic, payload) and stores them all in one transaction.

        Returns once every outcome is on disk (a pending request fsynced), so
        the caller may then acknowledge the messages. Under a flood this is what
        keeps the cost per message near the cost of verifying it.
        """
        now_ms = self._clock.now_ms()
        outcomes: list[IntakeOutcome | None] = [None] * len(messages)
        rejections: list[Rejection] = []
        accepted: list[tuple[int, Accepted, Acceptance]] = []
        for position, (topic, payload) in enumerate(messages):
            verdict = self.judge(payload, now_ms)
            if isinstance(verdict, Rejected):
                if self._rejections_to_store(verdict.reason, now_ms):
                    rejections.append(
                        Rejection(
                            reason=verdict.reason,
                            received_ms=now_ms,
                            topic=topic,
                            iss=verdict.iss,
                            jti=verdict.jti,
                            detail=verdict.detail,
                        )
                    )
                # Counted per reason and minute under a flood (audit.append_counted).
                self._audit.append_counted(
                    "rejected", verdict.reason, iss=verdict.iss, jti=verdict.jti
                )
                # DEBUG: a flood must not flood the journal too; counts are in the audit log.
                log.debug("rejected a request (%s): %s", verdict.reason, verdict.detail)
                outcomes[position] = IntakeOutcome(verdict, "rejected", None)
            else:
                accepted.append((position, verdict, self._acceptance(verdict, topic, now_ms)))
        if rejections:
            self._store.reject_many(rejections)
        if accepted:
            results = self._store.accept_many(
                [acceptance for _, _, acceptance in accepted],
                # A pending request is on disk before the owner is asked; a request
                # that does not match sends nothing, and a flood of them must not
                # cost an fsync each.
                durable=any(acceptance.state == "pending" for _, _, acceptance in accepted),
            )
            for (position, verdict, acceptance), result in zip(accepted, results, strict=True):
                outcomes[position] = self._record(verdict, acceptance, result)
        for outcome in outcomes:
            if outcome is not None and outcome.state == "pending":
                assert outcome.request_id is not None
                self._on_pending(outcome.request_id)
        return [outcome for outcome in outcomes if outcome is not None]

    def _acceptance(self, verdict: Accepted, topic: str, now_ms: int) -> Acceptance:
        request = verdict.request
        reason = None
        if not verdict.location_match:
            reason = "outside_area"
        else:
            held_ms = self._footage.footage_ms(
                request.window_start_ms,
                request.window_end_ms,
                synced_only=self._settings.exclude_unsynced,
            )
            if held_ms <= 0:
                reason = "no_footage"
                if self._settings.exclude_unsynced and self._footage.footage_ms(
                    request.window_start_ms, request.window_end_ms, synced_only=False
                ):
                    # policy.unsynced_footage = "exclude": times recorded before the
                    # clock was synchronised cannot be trusted to be in the window.
                    reason = "unsynced_footage_only"
        state: AcceptedState = "pending" if reason is None else "not_matching"
        return Acceptance(
            iss=request.iss,
            jti=request.jti,
            state=state,
            # The whole request is kept only where it is needed (to prompt and
            # deliver): under a flood of near misses it would be ~2 KB a row of
            # writes to the card for nothing.
            request=request_to_json(request) if state == "pending" else {},
            exp_ms=int(request.exp_s * 1000),
            window_start_ms=request.window_start_ms,
            window_end_ms=request.window_end_ms,
            agency_name=request.agency_name,
            topic=topic,
            received_ms=now_ms,
            decide_by_ms=now_ms + int(self._settings.decision_timeout_s * 1000),
            reason=reason,
        )

    def _record(
        self, verdict: Accepted, acceptance: Acceptance, result: AcceptResult
    ) -> IntakeOutcome:
        if result.duplicate:
            return IntakeOutcome(verdict, "duplicate", result.id)  # not logged twice (spec)
        request = verdict.request
        distance = distance_m(self._settings.location.point, request.centre)
        details = {
            "id": result.id,
            "iss": request.iss,
            "jti": request.jti,
            "agency": request.agency_name,
            "distance_m": round(distance),
        }
        if acceptance.state == "pending":
            self._audit.append("pending", durable=True, **details)
        else:
            assert acceptance.reason is not None
            self._audit.append_counted("not_matching", acceptance.reason, **details)
        log.log(
            logging.INFO if acceptance.state == "pending" else logging.DEBUG,
            "request %s from %s (%s): %s%s",
            result.id,
            request.agency_name,
            request.jti,
            acceptance.state,
            f" ({acceptance.reason})" if acceptance.reason else "",
        )
        return IntakeOutcome(verdict, acceptance.state, result.id)
