"""The webhook and console notifiers, and what no notification may ever carry.

The webhook goes to a real local HTTP server that records what it receives
(tests/ntfy_standin.py RecordingServer); ntfy goes to the ntfy stand-in (a real
ntfy server cannot be installed here).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from edge.share.notify import (
    ConsoleNotifier,
    NotifyConfigError,
    NotifyError,
    NtfyNotifier,
    WebhookNotifier,
    build_notifiers,
)
from edge.share.prompt import prompt_body
from ntfy_standin import NtfyStandIn, RecordingServer, sample_notice, sample_prompt


def test_webhook_posts_the_documented_schema() -> None:
    prompt = sample_prompt()
    with RecordingServer() as hook:
        WebhookNotifier(f"{hook.url}/api/webhook/edge-7f3a?src=cam").send(prompt)
        (request,) = hook.received
    assert (request.method, request.path) == ("POST", "/api/webhook/edge-7f3a?src=cam")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "version": 1,
        "event": "prompt",
        "request_id": "7",
        "agency": {"name": "Polizei Berlin", "kind": "police"},
        "title": "Break-in on Hauptstraße",
        "description": "We are looking for footage of a grey van seen near Hauptstraße 12.",
        "case_ref": "2026-1234",
        "public_url": "https://polizei.example/requests/2026-1234",
        "window": {
            "start": "2026-11-28T14:05:00+01:00",
            "end": "2026-11-28T14:35:00+01:00",
            "start_ms": 1_795_871_100_000,
            "end_ms": 1_795_872_900_000,
            "time_zone": "Europe/Berlin",
            "text": "Sat 28 Nov 14:05–14:35 (Europe/Berlin)",
        },
        "distance_m": 123.4,
        "footage": {"held_s": 1780.0, "lost_to_pin_cap": False, "clock_unsynchronized": False},
        "decide_by": "2026-11-30T14:05:00+01:00",
        "decide_by_ms": 1_796_043_900_000,
        "review_url": "https://cam.lan:8420/review/7?t=R3v13wT0k3n",
        "deny": {"url": "https://cam.lan:8420/deny/7", "method": "POST",
                 "content_type": "application/x-www-form-urlencoded",
                 "body": "token=D3nyT0k3n"},
        "audit_head": "3fa9c2d1e0b4",
        "text": {"title": "Police request: Break-in on Hauptstraße",
                 "body": prompt_body(prompt)},
    }


def test_webhook_notice() -> None:
    with RecordingServer() as hook:
        WebhookNotifier(hook.url + "/hook").send_notice(sample_notice(kind="expired"))
        payload = hook.received[0].json()
    assert payload["version"] == 1 and payload["event"] == "notice"
    assert payload["kind"] == "expired" and payload["request_id"] == "7"
    assert payload["at"] == "2026-11-28T15:35:00+01:00"
    assert payload["text"]["title"] == "Expired: Break-in on Hauptstraße"


def test_webhook_without_review_page_or_deny_link() -> None:
    with RecordingServer() as hook:
        WebhookNotifier(hook.url).send(sample_prompt(review_url=None, deny_url=None,
                                                     deny_token=None))
        payload = hook.received[0].json()
    assert payload["review_url"] is None and payload["deny"] is None
    assert hook.received[0].path == "/"


def test_webhook_credentials_in_the_url_become_basic_auth() -> None:
    with RecordingServer() as hook:
        WebhookNotifier(hook.url.replace("://", "://edge:s%3Acret@") + "/hook").send(
            sample_prompt())
        header = hook.received[0].headers["authorization"]
    assert header == "Basic " + base64.b64encode(b"edge:s:cret").decode()


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True),
                                                   (400, False), (404, False)])
def test_webhook_errors(status: int, retryable: bool) -> None:
    with RecordingServer(lambda *_: (status, {"error": "no"})) as hook:
        with pytest.raises(NotifyError, match=f"HTTP {status}") as failure:
            WebhookNotifier(hook.url).send(sample_prompt())
    assert failure.value.retryable is retryable


def test_webhook_does_not_follow_redirects() -> None:
    with RecordingServer() as elsewhere, \
            RecordingServer(lambda *_: (302, None)) as hook:
        # http.server cannot set Location through this handler; the status alone must stop it.
        with pytest.raises(NotifyError, match="redirects") as failure:
            WebhookNotifier(hook.url).send(sample_prompt())
        assert elsewhere.received == []
    assert not failure.value.retryable


def test_webhook_any_2xx_is_success() -> None:
    with RecordingServer(lambda *_: (204, None)) as hook:
        WebhookNotifier(hook.url).send(sample_prompt())
        assert len(hook.received) == 1


@pytest.mark.parametrize("url", ["", "ftp://h/x", "https://", "https://h/x#frag",
                                 "https://h:0x/"])
def test_bad_webhook_urls(url: str) -> None:
    with pytest.raises(NotifyConfigError, match=r"notify\.webhook_url"):
        WebhookNotifier(url)


def test_console_prints_a_readable_box_and_logs_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="edge.share.notify"):
        ConsoleNotifier(stream, width=76).send(sample_prompt())
    lines = stream.getvalue().splitlines()
    assert lines[0] == "┌" + "─" * 74 + "┐" and lines[-1] == "└" + "─" * 74 + "┘"
    assert all(len(line) == 76 and line[0] == "│" and line[-1] == "│" for line in lines[1:-1])
    text = "\n".join(line[2:-2].rstrip() for line in lines[1:-1])
    assert text.startswith("Police request: Break-in on Hauptstraße\n\n"
                           "Polizei Berlin (police) asks for footage from this camera.\n")
    assert "Window: Sat 28 Nov 14:05–14:35 (Europe/Berlin)" in text
    assert "Review: https://cam.lan:8420/review/7?t=R3v13wT0k3n" in text
    assert "On the device: edge approve 7 | edge deny 7" in text
    assert "Request: 7   Log: 3fa9c2d1e0b4" in text
    (record,) = [r for r in caplog.records if r.name == "edge.share.notify"]
    assert record.getMessage() == (
        "Prompt for request 7: Police request: Break-in on Hauptstraße; "
        "decide by Mon 30 Nov 14:05 (Europe/Berlin); log head 3fa9c2d1e0b4")


def test_console_falls_back_to_ascii_on_an_ascii_terminal() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="replace")
    ConsoleNotifier(stream).send_notice(sample_notice())
    stream.flush()
    first = raw.getvalue().decode("ascii").splitlines()[0]
    assert re.fullmatch(r"\+-+\+", first)


def test_console_wraps_long_lines_inside_the_box() -> None:
    stream = io.StringIO()
    ConsoleNotifier(stream, width=40).send(sample_prompt(description="word " * 200))
    assert all(len(line) == 40 for line in stream.getvalue().splitlines())


def test_build_notifiers_follows_the_config(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tk_x\n")
    token.chmod(0o600)
    notifiers = build_notifiers(ntfy_url="https://ntfy.example.org/porch-7f3a",
                                ntfy_token_file=token, webhook_url="https://ha.lan/api/w",
                                console=True)
    assert [n.name for n in notifiers] == ["ntfy", "webhook", "console"]
    assert build_notifiers() == []
    with pytest.raises(NotifyConfigError, match="ntfy_url is empty"):
        build_notifiers(ntfy_token_file=token)


# --- no image or video, ever ------------------------------------------------------

_MEDIA_KEYS = re.compile(r"attach|icon|filename|image|video|thumb|clip|snapshot|media|file",
                         re.IGNORECASE)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=_-]{120,}")
_MEDIA_MAGIC = ("\xff\xd8\xff", "\x89PNG", "ftyp", "moof", "mdat", "GIF8", "RIFF",
                "age-encryption.org")


def _strings_and_keys(value: Any) -> tuple[list[str], list[str]]:
    if isinstance(value, dict):
        keys, strings = list(value), []
        for item in value.values():
            more_strings, more_keys = _strings_and_keys(item)
            strings += more_strings
            keys += more_keys
        return strings, keys
    if isinstance(value, list):
        strings, keys = [], []
        for item in value:
            more_strings, more_keys = _strings_and_keys(item)
            strings += more_strings
            keys += more_keys
        return strings, keys
    return ([value] if isinstance(value, str) else []), []


def _assert_no_media(raw: bytes) -> None:
    assert len(raw) < 8192, "a notification is a few hundred bytes of text"
    text = raw.decode("utf-8")  # text, not binary data
    try:
        strings, keys = _strings_and_keys(json.loads(text))
    except ValueError:
        strings, keys = [text], []
    assert not [k for k in keys if _MEDIA_KEYS.search(k)], keys
    for string in strings:
        assert "data:" not in string
        assert not _BASE64_RUN.search(string), string
        for magic in _MEDIA_MAGIC:
            assert magic not in string


def test_no_notification_carries_image_or_video_data(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tk_x\n")
    token.chmod(0o600)
    prompts = [sample_prompt(), sample_prompt(footage_lost_to_pin_cap=True,
                                              footage_clock_unsynced=True,
                                              review_url=None, deny_url=None, deny_token=None)]
    notices = [sample_notice(kind=k) for k in ("delivered", "expired", "upload_failed")]
    with NtfyStandIn(token="tk_x") as ntfy, RecordingServer() as hook:
        ntfy_notifier = NtfyNotifier(f"{ntfy.url}/porch-7f3a", token)
        webhook = WebhookNotifier(hook.url)
        console_out = io.StringIO()
        console = ConsoleNotifier(console_out)
        for notifier in (ntfy_notifier, webhook, console):
            for prompt in prompts:
                notifier.send(prompt)
            for notice in notices:
                notifier.send_notice(notice)
        assert len(ntfy.published) == len(hook.received) == 5
        for request in ntfy.received + hook.received:
            _assert_no_media(request.body)
        for message in ntfy.published:
            assert set(message) <= {"topic", "title", "message", "priority", "tags", "click",
                                    "actions"}
            assert {a["action"] for a in message.get("actions", [])} <= {"view", "http"}
    _assert_no_media(console_out.getvalue().encode())
