"""The dispatcher: every notifier, retried on its own, never blocking the caller.

Real HTTP throughout: ntfy goes to the ntfy stand-in (a real ntfy server cannot
be installed here), the webhook to a recording server. Time runs on the real
clock with backoff settings in tens of milliseconds; tests wait on events set
by the report hook, never on sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.clock import SystemClock
from edge.share.notify import (
    Backoff,
    DeliveryReport,
    NtfyNotifier,
    PromptDispatcher,
    WebhookNotifier,
)
from ntfy_standin import NtfyStandIn, RecordingServer, sample_notice, sample_prompt

TOKEN = "tk_dispatch"
FAST = Backoff(first_delay_s=0.05, factor=2.0, max_delay_s=0.2)


class Reports:
    """Collects delivery reports; lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[DeliveryReport] = []

    def __call__(self, report: DeliveryReport) -> None:
        with self._cond:
            self.items.append(report)
            self._cond.notify_all()

    def wait_final(self, notifier: str, count: int = 1, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self.of(notifier, final=True)) >= count, timeout_s)

    def wait_count(self, count: int, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= count, timeout_s)

    def of(self, notifier: str, *, final: bool | None = None) -> list[DeliveryReport]:
        return [r for r in self.items
                if r.notifier == notifier and (final is None or r.final == final)]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


@pytest.fixture
def ntfy() -> Iterator[NtfyStandIn]:
    with NtfyStandIn(token=TOKEN) as server:
        yield server


def _future_prompt(seconds: float = 3600, **changes: Any) -> Any:
    return sample_prompt(decide_by_ms=SystemClock().now_ms() + int(seconds * 1000), **changes)


def _dispatcher(notifiers: list[Any], reports: Reports, **options: Any) -> PromptDispatcher:
    options.setdefault("backoff", FAST)
    return PromptDispatcher(notifiers, clock=SystemClock(), on_report=reports, **options)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_delay_s=5, factor=2, max_delay_s=60)
    assert [backoff.delay_s(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff.delay_s(10_000) == 60
    with pytest.raises(ValueError):
        Backoff(first_delay_s=0)
    with pytest.raises(ValueError):
        backoff.delay_s(0)


def test_retries_with_backoff_until_ntfy_takes_it(ntfy: NtfyStandIn, token_file: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    ntfy.fail_next(2, status=503)
    reports = Reports()
    dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)], reports)
    dispatcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="edge.share.notify"):
            assert dispatcher.submit(_future_prompt())
            assert reports.wait_final("ntfy")
    finally:
        dispatcher.stop()
    first, second, third = reports.of("ntfy")
    assert [(r.attempt, r.delivered, r.final) for r in (first, second, third)] == [
        (1, False, False), (2, False, False), (3, True, True)]
    assert "HTTP 503" in (first.error or "") and third.error is None
    # Each wait is at least the backoff delay: 0.05 s, then 0.1 s.
    assert second.monotonic_s - first.monotonic_s >= 0.05
    assert third.monotonic_s - second.monotonic_s >= 0.1
    assert len(ntfy.received) == 3 and len(ntfy.published) == 1
    assert caplog.text.count("retrying in") == 2  # each failure is logged


def test_each_notifier_is_retried_on_its_own(ntfy: NtfyStandIn, token_file: Path) -> None:
    ntfy.fail_next(1, status=502)
    reports = Reports()
    with RecordingServer() as hook:
        dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file),
                                  WebhookNotifier(hook.url)], reports)
        dispatcher.start()
        try:
            dispatcher.submit(_future_prompt())
            assert reports.wait_final("ntfy") and reports.wait_final("webhook")
        finally:
            dispatcher.stop()
        assert len(hook.received) == 1  # the webhook was not sent again for ntfy's failure
    assert [r.attempt for r in reports.of("webhook")] == [1]
    assert [(r.attempt, r.delivered) for r in reports.of("ntfy")] == [(1, False), (2, True)]


def test_a_hanging_service_neither_blocks_the_caller_nor_the_others(token_file: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def hang(*_: Any) -> tuple[int, dict[str, Any] | None]:
        entered.set()
        release.wait(10)
        return 503, {"error": "late"}

    reports = Reports()
    with RecordingServer(hang) as stuck, RecordingServer() as hook:
        dispatcher = _dispatcher([NtfyNotifier(f"{stuck.url}/porch-7f3a", token_file,
                                               timeout_s=20),
                                  WebhookNotifier(hook.url)], reports)
        dispatcher.start()
        try:
            started = time.monotonic()
            assert dispatcher.submit(_future_prompt())
            assert time.monotonic() - started < 0.5  # only queued
            assert entered.wait(5)  # the ntfy attempt is under way, and hangs
            assert reports.wait_final("webhook")  # delivered all the same
            assert reports.of("ntfy") == []
        finally:
            release.set()
            dispatcher.stop()


def test_gives_up_at_the_decision_deadline(ntfy: NtfyStandIn, token_file: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    ntfy.fail_next(1000, status=503)
    reports = Reports()
    dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)], reports,
                             backoff=Backoff(first_delay_s=0.1, factor=2, max_delay_s=1))
    dispatcher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="edge.share.notify"):
            assert dispatcher.submit(_future_prompt(seconds=0.5))
            assert reports.wait_final("ntfy")
    finally:
        dispatcher.stop()
    attempts = reports.of("ntfy")
    assert attempts[-1].final and not attempts[-1].delivered
    assert 2 <= len(attempts) <= 4  # 0, 0.1, 0.3 s; the next (0.7 s) is past the deadline
    assert "the decision deadline comes first" in caplog.text
    assert ntfy.published == []


def test_a_refusal_is_not_retried(ntfy: NtfyStandIn, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("tk_wrong")
    reports = Reports()
    dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", wrong)], reports)
    dispatcher.start()
    try:
        dispatcher.submit(_future_prompt())
        assert reports.wait_final("ntfy")
    finally:
        dispatcher.stop()
    (only,) = reports.of("ntfy")
    assert (only.attempt, only.delivered, only.final) == (1, False, True)
    assert "401" in (only.error or "")


def test_a_prompt_past_its_deadline_is_not_sent(ntfy: NtfyStandIn, token_file: Path) -> None:
    reports = Reports()
    dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)], reports)
    dispatcher.start()
    try:
        assert dispatcher.submit(_future_prompt(seconds=-1)) is False
        assert dispatcher.pending() == 0
    finally:
        dispatcher.stop()
    assert ntfy.received == [] and reports.items == []


def test_notices_go_through_the_same_notifiers(ntfy: NtfyStandIn, token_file: Path) -> None:
    reports = Reports()
    with RecordingServer() as hook:
        dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file),
                                  WebhookNotifier(hook.url)], reports)
        dispatcher.start()
        try:
            for kind in ("delivered", "expired", "upload_failed"):
                assert dispatcher.submit_notice(sample_notice(kind=kind))
            assert reports.wait_final("ntfy", 3) and reports.wait_final("webhook", 3)
        finally:
            dispatcher.stop()
        assert sorted(r.json()["kind"] for r in hook.received) == \
            ["delivered", "expired", "upload_failed"]
    assert sorted(m["title"].split(":")[0] for m in ntfy.published) == \
        ["Delivered", "Expired", "Upload failed"]
    assert {r.message for r in reports.items} == {"delivered", "expired", "upload_failed"}


def test_stop_is_prompt_while_a_retry_waits(ntfy: NtfyStandIn, token_file: Path) -> None:
    ntfy.fail_next(1, status=503)
    reports = Reports()
    dispatcher = _dispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)], reports,
                             backoff=Backoff(first_delay_s=60, max_delay_s=60))
    dispatcher.start()
    dispatcher.submit(_future_prompt())
    assert ntfy.wait_for(1)
    assert reports.wait_count(1)  # the first attempt failed; a retry waits 60 s
    started = time.monotonic()
    dispatcher.stop(timeout_s=5)
    assert time.monotonic() - started < 1.0
    assert [t for t in threading.enumerate() if t.name.startswith("edge-notify")] == []
    assert dispatcher.submit(_future_prompt()) is False


def test_a_failing_report_hook_does_not_stop_delivery(ntfy: NtfyStandIn, token_file: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    delivered = threading.Event()
    calls: list[DeliveryReport] = []

    def hook(report: DeliveryReport) -> None:
        calls.append(report)
        if len(calls) == 1:
            raise RuntimeError("audit log unavailable")
        delivered.set()

    dispatcher = PromptDispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)],
                                  clock=SystemClock(), on_report=hook, backoff=FAST)
    dispatcher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="edge.share.notify"):
            dispatcher.submit(_future_prompt())
            dispatcher.submit(_future_prompt(request_id="8"))
            assert delivered.wait(5)
    finally:
        dispatcher.stop()
    assert [c.request_id for c in calls] == ["7", "8"]
    assert "Delivery report hook failed for request 7" in caplog.text
    assert "audit log unavailable" in caplog.text  # with its traceback


def test_worker_threads_are_named_and_start_once(ntfy: NtfyStandIn, token_file: Path) -> None:
    dispatcher = PromptDispatcher([NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)],
                                  clock=SystemClock())
    dispatcher.start()
    try:
        assert "edge-notify-ntfy" in [t.name for t in threading.enumerate()]
        with pytest.raises(RuntimeError):
            dispatcher.start()
    finally:
        dispatcher.stop()


def test_no_notifier_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = PromptDispatcher([], clock=SystemClock())
    with caplog.at_level(logging.WARNING, logger="edge.share.notify"):
        dispatcher.start()
    assert "No notifier is enabled" in caplog.text
    assert dispatcher.submit(_future_prompt()) is False
    dispatcher.stop()
