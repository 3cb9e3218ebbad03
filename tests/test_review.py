"""The owner's review page, driven through Flask's test client and over real HTTP(S).

The consent service behind the page is tests/review_standin.py (it stands in for the
lead's service until that lands); clips are real H.264 MP4s sealed with age on disk,
tokens a real TokenStore on disk, and streamed clips are checked with a real decoder.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient

from edge.clock import ManualClock
from edge.share.notify import NtfyNotifier
from edge.share.prompt import Prompt
from edge.share.review import (
    CONTENT_SECURITY_POLICY,
    ClipError,
    DecisionError,
    RateLimit,
    RequestView,
    ReviewLimits,
    ReviewServer,
    create_app,
)
from edge.share.tokens import TokenStore
from review_standin import (
    DECIDE_BY_MS,
    NOW_MS,
    WINDOW_END_MS,
    WINDOW_START_MS,
    StandInConsent,
    request_view,
)


@dataclass
class Setup:
    client: FlaskClient
    backend: StandInConsent
    tokens: TokenStore
    clock: ManualClock
    review_token: str
    deny_token: str
    tmp_path: Path


def make_setup(tmp_path: Path, limits: ReviewLimits | None = None) -> Setup:
    clock = ManualClock(NOW_MS)
    tokens = TokenStore(tmp_path / "tokens.db")
    backend = StandInConsent(tmp_path / "outbox", tokens, clock)
    backend.add(request_view())
    app = create_app(backend, tokens, clock, limits=limits)
    return Setup(
        client=app.test_client(), backend=backend, tokens=tokens, clock=clock,
        review_token=tokens.issue("r7k2", "review", DECIDE_BY_MS),
        deny_token=tokens.issue("r7k2", "deny", DECIDE_BY_MS),
        tmp_path=tmp_path,
    )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path)


def field_value(page: str, name: str) -> str:
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', page)
    assert match, f"no field {name}"
    return html.unescape(match.group(1))


def clip_src(page: str) -> str:
    match = re.search(r'<video[^>]*src="([^"]+)"', page)
    assert match, "no video on the page"
    return html.unescape(match.group(1))


def decoded_frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4), "r") as container:
        return len(list(container.decode(video=0)))


# --- Opening the link --------------------------------------------------------------------


def test_page_shows_the_request_in_the_owners_time_zone_and_spends_nothing(setup: Setup) -> None:
    response = setup.client.get(f"/r/{setup.review_token}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for text in ("Springfield Police Department (police)", "Hit and run on Elm Street",
                 "Sat 28 Nov 14:05:00–14:05:04 (Europe/Berlin)",  # 13:05Z in Berlin
                 "SPD-2026-1182", "about 120 m from the area&#39;s centre",
                 "4 s of the 4 s window", "until Mon 30 Nov 15:00 (Europe/Berlin)",
                 "https://police.example.org/cases/1182", "prompted (ntfy)",
                 "edge approve r7k2"):
        assert text in page, text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    clip = setup.backend.clip("r7k2", WINDOW_START_MS, WINDOW_END_MS)
    assert field_value(page, "sha256") == clip.sha256
    assert clip.sha256 in page  # shown to the owner, not just hidden in the form
    assert clip_src(page) == (f"/r/{setup.review_token}/clip.mp4"
                              f"?start={WINDOW_START_MS}&end={WINDOW_END_MS}")
    # Opening it again works: a GET (a link preview, say) spends nothing.
    assert setup.client.get(f"/r/{setup.review_token}").status_code == 200
    assert setup.tokens.peek(setup.review_token, NOW_MS).request_id == "r7k2"
    assert setup.backend.decisions == []


def test_every_response_carries_the_security_headers(setup: Setup) -> None:
    for path in (f"/r/{setup.review_token}", "/r/forged-token-forged-token-forged",
                 "/nowhere", "/static/review.css"):
        headers = setup.client.get(path).headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Frame-Options"] == "DENY"
    for directive in ("default-src 'none'", "media-src 'self'", "style-src 'self'",
                      "form-action 'self'", "frame-ancestors 'none'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert "script" not in CONTENT_SECURITY_POLICY  # no script at all: default-src 'none'
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    assert "<script" not in page and "style=" not in page and "<style" not in page


def test_agency_text_is_escaped_and_cleaned(setup: Setup) -> None:
    setup.backend.add(request_view("evil", title='<img src=x onerror="alert(1)">\u202eevil',
                                   public_url="javascript:alert(1)",
                                   description="<script>alert(2)</script>"))
    token = setup.tokens.issue("evil", "review", DECIDE_BY_MS)
    page = setup.client.get(f"/r/{token}").get_data(as_text=True)
    assert "<img" not in page and "<script>alert" not in page and "\u202e" not in page
    assert "&lt;img src=x" in page
    assert 'href="javascript:' not in page


# --- The clip ------------------------------------------------------------------------------


def test_clip_streams_the_decrypted_mp4_whole_and_by_range(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    whole = setup.client.get(clip_src(page))
    assert whole.status_code == 200
    assert whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Accept-Ranges"] == "bytes"
    body = whole.get_data()
    clip = setup.backend.clip("r7k2", WINDOW_START_MS, WINDOW_END_MS)
    assert hashlib.sha256(body).hexdigest() == clip.sha256
    assert int(whole.headers["Content-Length"]) == len(body) == clip.size_bytes
    assert decoded_frames(body) == 40  # 4 s at 10 fps, through a real decoder

    part = setup.client.get(clip_src(page), headers={"Range": "bytes=100-9099"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-9099/{len(body)}"
    assert part.get_data() == body[100:9100]
    tail = setup.client.get(clip_src(page), headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.get_data() == body[-500:]
    beyond = setup.client.get(clip_src(page), headers={"Range": f"bytes={len(body)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(body)}"


def test_clip_outside_the_window_or_of_a_decided_request_is_refused(setup: Setup) -> None:
    base = f"/r/{setup.review_token}/clip.mp4"
    wider = setup.client.get(f"{base}?start={WINDOW_START_MS - 1000}&end={WINDOW_END_MS}")
    assert wider.status_code == 400
    assert setup.client.get(f"{base}?start=abc&end=1").status_code == 400
    assert setup.client.get(base).status_code == 400
    setup.tokens.issue("r7k2", "review", DECIDE_BY_MS)
    setup.backend.deny("r7k2", channel="cli")  # decided elsewhere; revokes the tokens
    assert setup.client.get(
        f"{base}?start={WINDOW_START_MS}&end={WINDOW_END_MS}").status_code == 403


def test_no_plaintext_footage_reaches_the_disk(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    assert len(setup.client.get(clip_src(page)).get_data()) > 4096
    on_disk = b"".join(path.read_bytes() for path in setup.tmp_path.rglob("*")
                       if path.is_file())
    for plaintext in setup.backend.plaintexts:
        middle = len(plaintext) // 2
        assert plaintext[middle: middle + 256] not in on_disk


def test_a_window_without_footage_says_so_and_still_lets_the_owner_deny(setup: Setup) -> None:
    def no_footage(request_id: str, start_ms: int, end_ms: int) -> object:
        raise ClipError("no footage of that window: the buffer holds none")

    setup.backend.clip = no_footage  # type: ignore[method-assign,assignment]
    response = setup.client.get(f"/r/{setup.review_token}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "no footage of that window" in page
    assert "<video" not in page and 'id="approve"' not in page and 'id="deny"' in page
    denied = setup.client.post(f"/r/{setup.review_token}/deny",
                               data={"csrf": field_value(page, "csrf")})
    assert denied.status_code == 303


# --- Narrowing -----------------------------------------------------------------------------


def test_narrowing_rerenders_with_that_windows_clip(setup: Setup) -> None:
    response = setup.client.get(f"/r/{setup.review_token}",
                                query_string={"from": "2026-11-28T14:05:01",
                                              "to": "2026-11-28T14:05:03"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    narrow = setup.backend.clip("r7k2", WINDOW_START_MS + 1000, WINDOW_START_MS + 3000)
    whole = setup.backend.clip("r7k2", WINDOW_START_MS, WINDOW_END_MS)
    assert narrow.sha256 != whole.sha256
    assert field_value(page, "sha256") == narrow.sha256
    assert field_value(page, "from") == "2026-11-28T14:05:01"
    assert "Sat 28 Nov 14:05:01–14:05:03 (Europe/Berlin) (narrowed by you)" in page
    assert clip_src(page).endswith(f"start={WINDOW_START_MS + 1000}&end={WINDOW_START_MS + 3000}")
    assert decoded_frames(setup.client.get(clip_src(page)).get_data()) == 20


def test_widening_or_nonsense_is_refused_with_a_reason(setup: Setup) -> None:
    for start, end, reason in [
        ("2026-11-28T14:04:59", "2026-11-28T14:05:03", "can only be narrowed"),
        ("2026-11-28T14:05:01", "2026-11-28T14:05:05", "can only be narrowed"),
        ("2026-11-28T14:05:03", "2026-11-28T14:05:01", "at least a second"),
        ("yesterday", "2026-11-28T14:05:03", "not a date and time"),
        ("2026-11-28T14:05:01+05:00", "2026-11-28T14:05:03", "not a date and time"),
        ("", "2026-11-28T14:05:03", "Give the start"),
        ("x" * 5000, "2026-11-28T14:05:03", "Give the start"),
    ]:
        response = setup.client.get(f"/r/{setup.review_token}",
                                    query_string={"from": start, "to": end})
        assert response.status_code == 400, (start, end)
        page = response.get_data(as_text=True)
        assert reason in page, (start, reason)
        assert "x" * 100 not in page
    # The page offered again is the whole window's, and nothing wider was ever built.
    built = [(clip.first_frame_ms, clip.last_frame_ms) for clip in
             setup.backend._requests["r7k2"].clips.values()]
    assert all(WINDOW_START_MS <= first and last < WINDOW_END_MS for first, last in built)


# --- Deciding on the page ------------------------------------------------------------------


def test_approve_spends_the_link_and_shows_the_outcome_and_history(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}",
                            query_string={"from": "2026-11-28T14:05:01",
                                          "to": "2026-11-28T14:05:04"}).get_data(as_text=True)
    form = {name: field_value(page, name) for name in ("csrf", "start", "end", "sha256")}
    assert (form["start"], form["end"]) == (str(WINDOW_START_MS + 1000), str(WINDOW_END_MS))
    setup.clock.advance_ms(5_000)
    response = setup.client.post(f"/r/{setup.review_token}/approve", data=form)
    assert response.status_code == 303
    assert setup.backend.decisions == [("r7k2", "approved", "review")]
    assert setup.backend.view("r7k2").approved_window == (WINDOW_START_MS + 1000,  # type: ignore[union-attr]
                                                          WINDOW_END_MS)
    status = setup.client.get(response.headers["Location"])
    assert status.status_code == 200
    text = status.get_data(as_text=True)
    assert "Approved: the clip is being sent" in text
    assert "Approved window: Sat 28 Nov 14:05:01–14:05:04 (Europe/Berlin)" in text
    assert "15:00:05" in text and "approved (review)" in text  # the history, Berlin time
    assert "<video" not in text and "<form" not in text  # read-only
    # The link is used up: a second decision and a second visit are refused.
    again = setup.client.post(f"/r/{setup.review_token}/approve", data=form)
    assert again.status_code == 403
    assert setup.client.get(f"/r/{setup.review_token}").status_code == 403
    assert setup.backend.decisions == [("r7k2", "approved", "review")]


def test_deny_on_the_page(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    sealed = list((setup.tmp_path / "outbox").iterdir())
    assert sealed
    response = setup.client.post(f"/r/{setup.review_token}/deny",
                                 data={"csrf": field_value(page, "csrf")})
    assert response.status_code == 303
    assert setup.backend.decisions == [("r7k2", "denied", "review")]
    assert "Denied: nothing is sent" in setup.client.get(
        response.headers["Location"]).get_data(as_text=True)
    assert not any(path.exists() for path in sealed)  # the stand-in drops the sealed clip
    # The prompt's deny action died with the request.
    assert setup.client.post(f"/a/{setup.deny_token}").status_code == 403


def test_a_post_without_the_right_csrf_token_is_refused_and_spends_nothing(
        setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    form = {name: field_value(page, name) for name in ("csrf", "start", "end", "sha256")}
    other = setup.tokens.issue("r7k2", "review", DECIDE_BY_MS)
    other_csrf = field_value(setup.client.get(f"/r/{other}").get_data(as_text=True), "csrf")
    for csrf in (None, "", other_csrf, form["csrf"][:-1]):
        data = dict(form)
        if csrf is None:
            del data["csrf"]
        else:
            data["csrf"] = csrf
        for action in ("approve", "deny"):
            response = setup.client.post(f"/r/{setup.review_token}/{action}", data=data)
            assert response.status_code == 403, (csrf, action)
    # A browser that says the form came from another site is refused even with the token.
    cross = setup.client.post(f"/r/{setup.review_token}/approve", data=form,
                              headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert setup.backend.decisions == []
    assert setup.tokens.peek(setup.review_token, NOW_MS).purpose == "review"
    # The right token still works afterwards.
    ok = setup.client.post(f"/r/{setup.review_token}/approve", data=form,
                           headers={"Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 303


def test_a_changed_clip_is_shown_again_before_anything_is_spent(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    form = {name: field_value(page, name) for name in ("csrf", "start", "end", "sha256")}
    form["sha256"] = "0" * 64
    response = setup.client.post(f"/r/{setup.review_token}/approve", data=form)
    assert response.status_code == 409
    assert "The clip changed since you watched it" in response.get_data(as_text=True)
    wider = dict(form, start=str(WINDOW_START_MS - 1000))
    assert setup.client.post(f"/r/{setup.review_token}/approve", data=wider).status_code == 400
    assert setup.backend.decisions == []
    assert setup.tokens.peek(setup.review_token, NOW_MS).request_id == "r7k2"


def test_a_decision_refused_by_the_backend_says_why_and_how_to_decide_on_the_device(
        setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    form = {name: field_value(page, name) for name in ("csrf", "start", "end", "sha256")}

    def refuse(request_id: str, **_: object) -> None:
        raise DecisionError("the outbox is full <b>now</b>")

    setup.backend.approve = refuse  # type: ignore[method-assign]
    response = setup.client.post(f"/r/{setup.review_token}/approve", data=form)
    assert response.status_code == 409
    text = response.get_data(as_text=True)
    assert "the outbox is full &lt;b&gt;now&lt;/b&gt; This link is used up." in text
    assert "On the device: edge approve r7k2 or edge deny r7k2." in text
    assert 'id="approve"' not in text  # the status page: nothing more to press


def test_a_link_past_the_deadline_decides_nothing(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    form = {name: field_value(page, name) for name in ("csrf", "start", "end", "sha256")}
    setup.clock.advance_ms(DECIDE_BY_MS - NOW_MS)  # the token expires with the request
    response = setup.client.post(f"/r/{setup.review_token}/approve", data=form)
    assert response.status_code == 403
    assert setup.backend.decisions == []


def test_bodies_over_16_kib_are_refused(setup: Setup) -> None:
    page = setup.client.get(f"/r/{setup.review_token}").get_data(as_text=True)
    response = setup.client.post(f"/r/{setup.review_token}/deny",
                                 data={"csrf": field_value(page, "csrf"), "pad": "x" * 20_000})
    assert response.status_code == 413
    assert setup.backend.decisions == []


# --- The prompt's Deny action --------------------------------------------------------------


def test_deny_action_with_the_token_in_the_path(setup: Setup) -> None:
    response = setup.client.post(f"/a/{setup.deny_token}")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "Denied. Nothing will be sent.\n"
    assert setup.backend.decisions == [("r7k2", "denied", "prompt-action")]
    assert setup.client.post(f"/a/{setup.deny_token}").status_code == 403
    assert setup.client.get(f"/r/{setup.review_token}").status_code == 403


def test_deny_action_with_the_token_in_the_body(setup: Setup) -> None:
    assert setup.client.get("/a").status_code == 405  # a GET never decides
    response = setup.client.post("/a", data=setup.deny_token.encode(),
                                 content_type="text/plain")
    assert response.status_code == 200
    assert setup.backend.decisions == [("r7k2", "denied", "prompt-action")]


def test_the_ntfy_deny_action_as_published_denies_over_http(tmp_path: Path) -> None:
    """The "Deny" button of the ntfy message edge publishes, pressed as the ntfy app does:
    the action's method, URL, headers and body, sent to the running server."""
    clock = ManualClock(NOW_MS)
    tokens = TokenStore(tmp_path / "tokens.db")
    backend = StandInConsent(tmp_path / "outbox", tokens, clock)
    backend.add(request_view())
    server = ReviewServer("127.0.0.1:0", backend, tokens, clock)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        view = backend.view("r7k2")
        assert view is not None
        prompt = Prompt(
            request_id="r7k2", agency_name=view.agency_name, agency_kind="police",
            title=view.title, description=view.description, case_ref=view.case_ref,
            public_url=view.public_url, window_start_ms=view.window_start_ms,
            window_end_ms=view.window_end_ms, time_zone=view.time_zone,
            distance_m=view.distance_m, footage_held_s=view.footage_held_s,
            footage_lost_to_pin_cap=False, footage_clock_unsynced=False,
            decide_by_ms=view.decide_by_ms,
            review_url=f"{base}/r/{tokens.issue('r7k2', 'review', DECIDE_BY_MS)}",
            deny_url=f"{base}/a", deny_token=tokens.issue("r7k2", "deny", DECIDE_BY_MS),
            audit_head="a1b2c3d4")
        message = NtfyNotifier("https://ntfy.invalid/porch").prompt_message(prompt)
        [deny] = [action for action in message["actions"] if action["label"] == "Deny"]
        press = urllib.request.Request(deny["url"], data=deny.get("body", "").encode(),
                                       method=deny.get("method", "POST"),
                                       headers=deny.get("headers", {}))
        with urllib.request.urlopen(press, timeout=10) as answer:
            assert answer.status == 200
        assert backend.decisions == [("r7k2", "denied", "prompt-action")]
        with pytest.raises(urllib.error.HTTPError) as again:
            urllib.request.urlopen(press, timeout=10)
        assert again.value.code == 403
    finally:
        server.stop()


def test_tokens_only_work_for_their_own_purpose(setup: Setup) -> None:
    assert setup.client.post(f"/a/{setup.review_token}").status_code == 403
    assert setup.client.get(f"/r/{setup.deny_token}").status_code == 403
    assert setup.client.post("/a", data={"token": setup.review_token}).status_code == 403
    assert setup.backend.decisions == []


# --- Refusals say nothing more than the token proves ------------------------------------------


def test_forged_expired_and_orphaned_tokens_are_refused_alike(setup: Setup) -> None:
    orphan = setup.tokens.issue("gone", "review", DECIDE_BY_MS)  # no such request
    short = setup.tokens.issue("r7k2", "review", NOW_MS + 1_000)
    setup.clock.advance_ms(1_000)
    forged = setup.review_token[:-2] + ("AA" if not setup.review_token.endswith("AA") else "BB")
    answers = {(response.status_code, response.get_data())
               for response in (setup.client.get(f"/r/{token}")
                                for token in (forged, short, orphan, "x", "%00" * 50))}
    assert len(answers) == 1
    status, body = answers.pop()
    assert status == 403 and b"This link is not valid" in body


def test_unexpected_failures_are_logged_without_the_token(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    def broken(request_id: str) -> RequestView:
        raise RuntimeError("database is locked")

    setup.backend.view = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        response = setup.client.get(f"/r/{setup.review_token}")
    assert response.status_code == 500
    assert b"Something went wrong" in response.get_data()
    assert setup.review_token.encode() not in response.get_data()
    assert "database is locked" in caplog.text  # the traceback is there...
    assert setup.review_token not in caplog.text  # ...the token is not


# --- Rate limits ----------------------------------------------------------------------------


def test_failed_lookups_are_capped_per_client(tmp_path: Path) -> None:
    limits = ReviewLimits(failures=RateLimit(burst=3, per_s=1 / 60))
    setup = make_setup(tmp_path, limits)
    guesser = {"REMOTE_ADDR": "192.0.2.7"}
    for attempt in range(3):
        assert setup.client.get(f"/r/guess-guess-guess-guess-{attempt:04d}",
                                environ_base=guesser).status_code == 403
    blocked = setup.client.get(f"/r/{setup.review_token}", environ_base=guesser)
    assert blocked.status_code == 429 and blocked.headers["Retry-After"] == "60"
    # Another device is not affected, and the guesser recovers with time.
    assert setup.client.get(f"/r/{setup.review_token}").status_code == 200
    setup.clock.advance_ms(60_000)
    assert setup.client.get(f"/r/{setup.review_token}", environ_base=guesser).status_code == 200


def test_posts_are_capped_per_client(tmp_path: Path) -> None:
    limits = ReviewLimits(posts=RateLimit(burst=2, per_s=1 / 10))
    setup = make_setup(tmp_path, limits)
    codes = [setup.client.post(f"/r/{setup.review_token}/deny", data={"csrf": "bad"}).status_code
             for _ in range(3)]
    assert codes == [403, 403, 429]


# --- Over real HTTP and HTTPS -------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.local")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "review.crt", tmp_path / "review.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_server_serves_page_and_clip_and_stops_promptly(tmp_path: Path, tls: bool) -> None:
    clock = ManualClock(NOW_MS)
    tokens = TokenStore(tmp_path / "tokens.db")
    backend = StandInConsent(tmp_path / "outbox", tokens, clock)
    backend.add(request_view())
    token = tokens.issue("r7k2", "review", DECIDE_BY_MS)
    cert, key = _self_signed(tmp_path) if tls else (None, None)
    server = ReviewServer("127.0.0.1:0", backend, tokens, clock, tls_cert=cert, tls_key=key)
    server.start()
    try:
        assert server.port > 0
        context = None
        if tls:
            context = ssl.create_default_context(cafile=str(cert))
        base = f"{'https' if tls else 'http'}://localhost:{server.port}"
        with urllib.request.urlopen(f"{base}/r/{token}", context=context, timeout=10) as page:
            assert page.status == 200
            src = clip_src(page.read().decode())
        with urllib.request.urlopen(f"{base}{src}", context=context, timeout=10) as clip:
            body = clip.read()
        assert hashlib.sha256(body).hexdigest() == backend.clip(
            "r7k2", WINDOW_START_MS, WINDOW_END_MS).sha256
        oversized = urllib.request.Request(f"{base}/a", data=b"x" * 20_000, method="POST")
        # cheroot answers 413 and closes without reading the body; over TLS the client,
        # still sending, may see the connection end before it reads the answer.
        with pytest.raises((urllib.error.HTTPError, urllib.error.URLError)) as refused:
            urllib.request.urlopen(oversized, context=context, timeout=10)
        if isinstance(refused.value, urllib.error.HTTPError):
            assert refused.value.code == 413
        else:
            assert tls
        assert backend.decisions == []
    finally:
        started_s = time.monotonic()
        server.stop()
        assert time.monotonic() - started_s < 5
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/r/{token}", timeout=2)


@dataclass
class EndlessClip:
    """A clip far longer than any socket buffer: a phone that stops reading stalls it."""

    closed: threading.Event
    sha256: str = "0" * 64
    size_bytes: int = 1 << 40
    first_frame_ms: int = WINDOW_START_MS
    last_frame_ms: int = WINDOW_END_MS

    def open(self) -> Iterator[bytes]:
        try:
            while True:
                yield bytes(64 * 1024)
        finally:
            self.closed.set()


def test_stop_is_prompt_while_a_stalled_client_holds_a_stream(tmp_path: Path) -> None:
    clock = ManualClock(NOW_MS)
    tokens = TokenStore(tmp_path / "tokens.db")
    backend = StandInConsent(tmp_path / "outbox", tokens, clock)
    backend.add(request_view())
    endless = EndlessClip(closed=threading.Event())
    backend.clip = lambda request_id, start_ms, end_ms: endless  # type: ignore[assignment,method-assign,return-value]
    token = tokens.issue("r7k2", "review", DECIDE_BY_MS)
    server = ReviewServer("127.0.0.1:0", backend, tokens, clock)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as phone:
        phone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        phone.sendall(f"GET /r/{token}/clip.mp4?start={WINDOW_START_MS}&end={WINDOW_END_MS} "
                      "HTTP/1.1\r\nHost: camera\r\n\r\n".encode())
        assert phone.recv(100).startswith(b"HTTP/1.1 200 OK")
        # The phone reads no more; the server soon blocks sending to it.
        started_s = time.monotonic()
        server.stop()
        assert time.monotonic() - started_s < 2
    assert endless.closed.wait(5)  # the backend's decrypting iterator was closed


def test_server_refuses_half_a_tls_pair(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        ReviewServer("127.0.0.1:0", StandInConsent(tmp_path, TokenStore(tmp_path / "t.db"),
                                                   ManualClock(0)),
                     TokenStore(tmp_path / "t.db"), ManualClock(0), tls_cert=tmp_path / "c")
    with pytest.raises(ValueError, match="HOST:PORT"):
        ReviewServer("8420", None, None, ManualClock(0))  # type: ignore[arg-type]


def test_a_daemon_with_the_review_page_off_does_not_load_its_web_framework() -> None:
    # The page is off by default; Flask and cheroot would cost ~10 MB of a Pi's
    # memory for nothing. A fresh interpreter imports what `edge run` imports.
    script = (
        "import sys; import edge.cli, edge.daemon, edge.sharing, edge.share.consent;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'werkzeug', 'cheroot'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
