"""Consent: prompts, decisions from every channel, races, expiry and restarts.

Real parts throughout: a ring of real sealed segments, the SQLite request and
token stores, the audit log, the outbox, and the console notifier writing into a
buffer (the terminal it stands in for is the only thing not real here). The
clock is a ManualClock standing in for the system clock.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.clock import ManualClock
from edge.share.audit import AuditLog, verify
from edge.share.consent import ConsentService, ConsentSettings, Decisions
from edge.share.footage import RingFootage
from edge.share.intake import Intake, IntakeSettings
from edge.share.notify import ConsoleNotifier, DeliveryReport, PromptDispatcher
from edge.share.outbox import Outbox
from edge.share.review_backend import DecisionError
from edge.share.store import RequestStore
from edge.share.tokens import TokenError, TokenStore
from edge.share.verify import Location, Policy
from edge.units import format_rfc3339_ms
from ringtools import RunSpec, make_segments, open_ring, put_all
from signing import PLATFORM_KEY, make_payload, trust_for

SPEC = RunSpec(count=6)  # 6 s of footage from T0
LOCATION = Location(lat=47.6062, lon=-122.3321)
NOW_MS = SPEC.start_ms + 60_000


@dataclass
class Camera:
    data_dir: Path
    clock: ManualClock
    consent: ConsentService
    intake: Intake
    store: RequestStore
    tokens: TokenStore
    audit: AuditLog
    outbox: Outbox
    ring: object
    console: io.StringIO
    prompted: threading.Event
    closers: list


def start_camera(
    data_dir: Path, clock: ManualClock, *, fill: bool, pin_cap_bytes: int = 1 << 28
) -> Camera:
    ring = open_ring(data_dir, clock, pin_cap_bytes=pin_cap_bytes)
    if fill:
        put_all(ring, make_segments(SPEC))
    footage = RingFootage(ring)
    audit = AuditLog(data_dir / "audit", clock).open()
    store = RequestStore(data_dir, clock)
    tokens = TokenStore(data_dir / "tokens.db")
    outbox = Outbox(data_dir / "outbox", data_dir / "keys")
    console = io.StringIO()
    prompted = threading.Event()

    def on_report(report: DeliveryReport) -> None:
        if report.message == "prompt" and report.delivered:
            prompted.set()

    dispatcher = PromptDispatcher([ConsoleNotifier(console)], clock=clock, on_report=on_report)
    dispatcher.start()
    consent = ConsentService(
        ConsentSettings(LOCATION, "UTC", "http://127.0.0.1:8420", exclude_unsynced=False),
        store,
        tokens,
        audit,
        footage,
        ring,
        outbox,
        dispatcher,
        clock,  # type: ignore[arg-type]
    )
    intake = Intake(
        IntakeSettings(trust_for(PLATFORM_KEY), Policy(), LOCATION, 48 * 3600, False),
        store,
        audit,
        footage,
        clock,
        on_pending=consent.prompt,
    )

    def close() -> None:
        consent.stop()
        dispatcher.stop()
        tokens.close()
        store.close()
        audit.close()
        ring.close()

    return Camera(
        data_dir,
        clock,
        consent,
        intake,
        store,
        tokens,
        audit,
        outbox,
        ring,
        console,
        prompted,
        [close],
    )


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[Camera]:
    clock = ManualClock(NOW_MS)
    cam = start_camera(tmp_path / "data", clock, fill=True)
    yield cam
    for close in cam.closers:
        close()


def take_in_request(cam: Camera) -> int:
    payload = make_payload(
        now_s=cam.clock.now_ms() / 1000,
        location=LOCATION,
        request_overrides={
            "window": {
                "start": format_rfc3339_ms(SPEC.start_ms),
                "end": format_rfc3339_ms(SPEC.start_ms + 5_000),
            }
        },
    )
    outcome = cam.intake.handle("edge/v1/req/c/2/3/n/b", payload)
    assert outcome.state == "pending", outcome
    assert outcome.request_id is not None
    return outcome.request_id


def test_pending_request_is_prompted_pinned_and_has_working_tokens(camera: Camera) -> None:
    request_id = take_in_request(camera)
    assert camera.prompted.wait(10)
    text = camera.console.getvalue()
    assert "Package theft on Elm St" in text and f"Request: {request_id}" in text
    assert camera.audit.head() in text or "Log:" in text
    pins = camera.ring.status().pins  # type: ignore[attr-defined]
    assert [p.owner_id for p in pins] == [f"request-{request_id}"]
    link = text.split("http://127.0.0.1:8420/r/")[1].split()[0] if "/r/" in text else None
    # The console shows the review link only when it fits; the token store knows it anyway.
    if link:
        assert camera.tokens.peek(link, camera.clock.now_ms()).request_id == str(request_id)


def test_approve_and_deny_at_once_exactly_one_wins(camera: Camera) -> None:
    request_id = take_in_request(camera)
    decisions = [
        Decisions(
            RequestStore(camera.data_dir, camera.clock),
            camera.outbox,
            RingFootage(camera.ring),
            camera.clock,
        )  # type: ignore[arg-type]
        for _ in range(2)
    ]
    decisions[0].clip(request_id, None, None)  # the owner looked at the clip first
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def approve() -> None:
        barrier.wait()
        try:
            decisions[0].approve(
                request_id,
                start_ms=None,
                end_ms=None,
                sha256=None,
                channel="review",
                decided_by="owner",
                require_shown=True,
            )
            outcomes.append("approved")
        except DecisionError:
            outcomes.append("lost")

    def deny() -> None:
        barrier.wait()
        try:
            decisions[1].deny(request_id, channel="cli", decided_by="owner")
            outcomes.append("denied")
        except DecisionError:
            outcomes.append("lost")

    threads = [threading.Thread(target=approve), threading.Thread(target=deny)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) in (["approved", "lost"], ["denied", "lost"])
    camera.consent.step()
    record = camera.store.get(request_id)
    assert record is not None
    assert record.state in ("approved", "denied")
    assert camera.ring.status().pins == ()  # type: ignore[attr-defined]
    if record.state == "denied":
        assert camera.outbox.clips_of(request_id) == []
    else:
        assert len(camera.outbox.clips_of(request_id)) == 1


def test_approve_twice_and_after_a_deny_are_refused(camera: Camera) -> None:
    request_id = take_in_request(camera)
    decisions = camera.consent.decisions
    decisions.approve(
        request_id,
        start_ms=None,
        end_ms=None,
        sha256=None,
        channel="cli",
        decided_by="owner",
        require_shown=False,
    )
    with pytest.raises(DecisionError, match="approved, not pending"):
        decisions.approve(
            request_id,
            start_ms=None,
            end_ms=None,
            sha256=None,
            channel="cli",
            decided_by="owner",
            require_shown=False,
        )
    with pytest.raises(DecisionError):
        decisions.deny(request_id, channel="cli", decided_by="owner")


def test_approval_is_bound_to_the_clip_shown_and_never_widens(camera: Camera) -> None:
    request_id = take_in_request(camera)
    record = camera.store.get(request_id)
    assert record is not None and record.window_start_ms is not None
    start, end = record.window_start_ms, record.window_end_ms
    assert end is not None
    with pytest.raises(DecisionError, match="open the clip"):
        camera.consent.approve(
            str(request_id), start_ms=start, end_ms=end, sha256="0" * 64, channel="review"
        )
    clip = camera.consent.clip(str(request_id), start + 1000, end - 1000)
    with pytest.raises(DecisionError, match="narrowed, never widened"):
        camera.consent.approve(
            str(request_id), start_ms=start - 1, end_ms=end, sha256=clip.sha256, channel="review"
        )
    with pytest.raises(DecisionError, match="SHA-256"):
        camera.consent.approve(
            str(request_id),
            start_ms=start + 1000,
            end_ms=end - 1000,
            sha256="0" * 64,
            channel="review",
        )
    camera.consent.approve(
        str(request_id),
        start_ms=start + 1000,
        end_ms=end - 1000,
        sha256=clip.sha256,
        channel="review",
    )
    approved = camera.store.get(request_id)
    assert approved is not None and approved.state == "approved"
    assert (approved.approved_start_ms, approved.approved_end_ms) == (start + 1000, end - 1000)
    assert approved.clip_sha256 == clip.sha256
    assert b"".join(clip.open()) == b"".join(camera.outbox.open_plaintext(clip.clip))


def test_undecided_request_expires_sends_nothing_and_its_tokens_die(camera: Camera) -> None:
    request_id = take_in_request(camera)
    assert camera.prompted.wait(10)
    review_token = camera.tokens.issue(str(request_id), "review", camera.clock.now_ms() + 10**9)
    camera.consent.clip(str(request_id), None, None)  # type: ignore[arg-type]
    camera.clock.advance_ms(48 * 3600 * 1000 + 1)  # past the decision deadline
    with pytest.raises(DecisionError, match="expired"):
        camera.consent.decisions.approve(
            request_id,
            start_ms=None,
            end_ms=None,
            sha256=None,
            channel="cli",
            decided_by="owner",
            require_shown=False,
        )
    camera.consent.step()
    record = camera.store.get(request_id)
    assert record is not None and record.state == "expired"
    assert camera.outbox.clips_of(request_id) == []
    assert camera.ring.status().pins == ()  # type: ignore[attr-defined]
    with pytest.raises(TokenError):
        camera.tokens.peek(review_token, camera.clock.now_ms())
    with pytest.raises(DecisionError):
        camera.consent.deny(str(request_id), channel="prompt-action")


def test_restart_in_every_state_neither_repeats_nor_skips(tmp_path: Path) -> None:
    clock = ManualClock(NOW_MS)
    data_dir = tmp_path / "data"
    cam = start_camera(data_dir, clock, fill=True)
    pending_id = take_in_request(cam)
    approved_id = take_in_request(cam)
    denied_id = take_in_request(cam)
    cam.consent.decisions.approve(
        approved_id,
        start_ms=None,
        end_ms=None,
        sha256=None,
        channel="cli",
        decided_by="owner",
        require_shown=False,
    )
    cam.consent.decisions.deny(denied_id, channel="cli", decided_by="owner")
    # A crash before the daemon handled those decisions: nothing but the store knows.
    for close in cam.closers:
        close()

    again = start_camera(data_dir, clock, fill=False)
    try:
        again.consent.start()  # re-prompts what is still pending
        assert again.prompted.wait(10)
        assert f"Request: {pending_id}" in again.console.getvalue()
        again.consent.step()
        again.consent.step()  # a second round finds nothing new to do
        states = {i: again.store.get(i).state for i in (pending_id, approved_id, denied_id)}  # type: ignore[union-attr]
        assert states == {pending_id: "pending", approved_id: "approved", denied_id: "denied"}
        assert len(again.outbox.clips_of(approved_id)) == 1
        assert again.outbox.clips_of(denied_id) == []
    finally:
        for close in again.closers:
            close()
    result = verify(data_dir / "audit")
    assert result.ok, result.summary()
    log_text = "".join(p.read_text() for p in sorted((data_dir / "audit").glob("audit.log*")))
    assert log_text.count('"decision":"approved"') == 1
    assert log_text.count('"decision":"denied"') == 1


def test_past_the_pin_cap_the_newest_footage_is_held_and_the_owner_told(tmp_path: Path) -> None:
    segment_bytes = max(len(segment.mp4) for segment in make_segments(SPEC))
    cam = start_camera(
        tmp_path / "data", ManualClock(NOW_MS), fill=True, pin_cap_bytes=3 * segment_bytes
    )
    try:
        request_id = take_in_request(cam)
        assert cam.prompted.wait(10)
        assert "pin cap was reached" in cam.console.getvalue()
        (pin,) = cam.ring.status().pins  # type: ignore[attr-defined]
        record = cam.store.get(request_id)
        assert record is not None and record.window_start_ms is not None
        assert pin.owner_id == f"request-{request_id}"
        assert record.window_start_ms < pin.start_ms < pin.end_ms == record.window_end_ms
        view = cam.consent.view(str(request_id))
        assert view is not None and view.footage_lost_to_pin_cap
    finally:
        for close in cam.closers:
            close()
