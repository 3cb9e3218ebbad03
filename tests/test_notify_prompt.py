"""What a prompt says, as the owner reads it on a phone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from edge.share.prompt import (
    MAX_BODY_BYTES,
    clean_text,
    format_distance,
    format_duration,
    format_window,
    notice_body,
    notice_title,
    prompt_body,
    prompt_title,
    system_time_zone_name,
)
from ntfy_standin import sample_notice, sample_prompt


def _ms(zone: str, year: int, month: int, day: int, hour: int, minute: int,
        second: int = 0) -> int:
    moment = datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(zone))
    return int(moment.timestamp() * 1000)


def test_title_names_the_kind_of_agency_and_the_request() -> None:
    assert prompt_title(sample_prompt()) == "Police request: Break-in on Hauptstraße"
    assert prompt_title(sample_prompt(agency_kind="fire", title="Fire at the depot")) == \
        "Fire department request: Fire at the depot"
    assert prompt_title(sample_prompt(agency_kind="other")).startswith("Request for footage: ")


def test_body_reads_as_the_owner_needs_it() -> None:
    body = prompt_body(sample_prompt())
    assert body.splitlines() == [
        "Polizei Berlin (police) asks for footage from this camera.",
        "Window: Sat 28 Nov 14:05–14:35 (Europe/Berlin)",
        "Case: 2026-1234",
        "We are looking for footage of a grey van seen near Hauptstraße 12.",
        "Camera: about 120 m from the area's centre",
        "Footage held: 29 min 40 s of the 30 min window",
        "Decide by Mon 30 Nov 14:05 (Europe/Berlin). Nothing is sent unless you approve.",
        "Public posting: https://polizei.example/requests/2026-1234",
        "Request: 7   Log: 3fa9c2d1e0b4",
    ]
    # The secret links travel as buttons, not as text a lock screen would show.
    assert "R3v13wT0k3n" not in body and "D3nyT0k3n" not in body


def test_body_with_links_adds_review_link_and_device_commands() -> None:
    body = prompt_body(sample_prompt(), with_links=True)
    assert "Review: https://cam.lan:8420/review/7?t=R3v13wT0k3n" in body
    assert "On the device: edge approve 7 | edge deny 7" in body
    assert "D3nyT0k3n" not in body


def test_body_says_when_footage_is_not_kept_or_times_may_be_off() -> None:
    body = prompt_body(sample_prompt(footage_lost_to_pin_cap=True, footage_clock_unsynced=True))
    assert "Note: part of the window is not kept for you: the pin cap was reached." in body
    assert "recorded before the clock was synchronised" in body


def test_window_in_the_owners_time_zone() -> None:
    start = _ms("America/New_York", 2026, 11, 28, 8, 5)
    end = _ms("America/New_York", 2026, 11, 28, 8, 35)
    assert format_window(start, end, "America/New_York") == \
        "Sat 28 Nov 08:05–08:35 (America/New_York)"
    # The same instants for an owner in Berlin.
    assert format_window(start, end, "Europe/Berlin") == "Sat 28 Nov 14:05–14:35 (Europe/Berlin)"


def test_window_across_midnight_names_both_days() -> None:
    start = _ms("Europe/Berlin", 2026, 11, 28, 23, 50)
    end = _ms("Europe/Berlin", 2026, 11, 29, 0, 20)
    assert format_window(start, end, "Europe/Berlin") == \
        "Sat 28 Nov 23:50 – Sun 29 Nov 00:20 (Europe/Berlin)"


def test_window_shows_seconds_only_when_they_are_not_zero() -> None:
    start = _ms("Europe/Berlin", 2026, 11, 28, 14, 5, 30)
    end = _ms("Europe/Berlin", 2026, 11, 28, 14, 6)
    assert format_window(start, end, "Europe/Berlin") == \
        "Sat 28 Nov 14:05:30–14:06:00 (Europe/Berlin)"


def test_window_across_the_autumn_clock_change() -> None:
    # 25 Oct 2026: Berlin goes from 03:00 CEST back to 02:00 CET.
    start = _ms("UTC", 2026, 10, 25, 0, 30)  # 02:30 CEST
    end = _ms("UTC", 2026, 10, 25, 1, 30)  # 02:30 CET, one hour later
    assert format_window(start, end, "Europe/Berlin") == "Sun 25 Oct 02:30–02:30 (Europe/Berlin)"


@pytest.mark.parametrize(("duration_s", "text"), [
    (0, "none"), (0.4, "none"), (45, "45 s"), (60, "1 min"), (1780, "29 min 40 s"),
    (3600, "1 h"), (3900, "1 h 5 min"), (3961, "1 h 6 min"), (43200, "12 h"),
])
def test_durations(duration_s: float, text: str) -> None:
    assert format_duration(duration_s) == text


@pytest.mark.parametrize(("distance_m", "text"), [
    (0, "less than 10 m from the area's centre"),
    (123.4, "about 120 m from the area's centre"),
    (649.9, "about 650 m from the area's centre"),
    (1234, "about 1.2 km from the area's centre"),
])
def test_distances(distance_m: float, text: str) -> None:
    assert format_distance(distance_m) == text


def test_agency_text_cannot_smuggle_escapes_or_bidi_overrides() -> None:
    hostile = sample_prompt(
        agency_name="Police\x1b[2J\x1b]0;owned\x07 Dept\u202eevil",
        title="Help\u200b\u2066 us\r\nnow",
        description="line one\nline\x00 two\x9b31m",
        case_ref="A\tB",
    )
    texts = [prompt_title(hostile), prompt_body(hostile, with_links=True)]
    for text in texts:
        assert not any(ord(c) < 0x20 and c != "\n" for c in text)
        for banned in ("\x1b", "\x07", "\x9b", "\u202e", "\u2066", "\u200b", "\x00"):
            assert banned not in text
    assert prompt_title(hostile) == "Police request: Help us now"
    assert "Police[2J]0;owned Deptevil (police)" in texts[1]
    assert "Case: A B" in texts[1]


def test_clean_text_bounds_length() -> None:
    assert clean_text("x" * 50, max_chars=10) == "x" * 9 + "…"
    assert clean_text("  a \n\n b  ", max_chars=10, keep_newlines=True) == "a\nb"


def test_a_huge_description_still_fits_ntfys_message_limit() -> None:
    # 2,000 four-byte characters: 8,000 bytes of description.
    prompt = sample_prompt(description="🚓" * 2000, title="T" * 120)
    body = prompt_body(prompt, with_links=True)
    assert len(body.encode()) <= MAX_BODY_BYTES
    assert body.endswith("Request: 7   Log: 3fa9c2d1e0b4")  # the fixed lines survive whole
    assert "…" in body


def test_prompt_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="time zone"):
        sample_prompt(time_zone="Mars/Olympus")
    with pytest.raises(ValueError, match="window"):
        sample_prompt(window_end_ms=sample_prompt().window_start_ms)
    with pytest.raises(ValueError, match="agency_kind"):
        sample_prompt(agency_kind="army")
    with pytest.raises(ValueError, match="audit_head"):
        sample_prompt(audit_head="")
    with pytest.raises(ValueError, match="deny_token"):
        sample_prompt(deny_url=None)


def test_notices() -> None:
    delivered = sample_notice()
    assert notice_title(delivered) == "Delivered: Break-in on Hauptstraße"
    assert notice_body(delivered).splitlines() == [
        "The footage you approved for request 7 (Polizei Berlin) was delivered "
        "Sat 28 Nov 15:35 (Europe/Berlin).",
        "Log: 9d8c7b6a5f4e",
    ]
    expired = sample_notice(kind="expired", at_ms=sample_prompt().decide_by_ms)
    assert notice_title(expired) == "Expired: Break-in on Hauptstraße"
    assert "expired Mon 30 Nov 14:05 (Europe/Berlin) without a decision. Nothing was sent." \
        in notice_body(expired)
    failed = sample_notice(kind="upload_failed", detail="agency server answered HTTP 503")
    assert notice_title(failed) == "Upload failed: Break-in on Hauptstraße"
    assert "agency server answered HTTP 503" in notice_body(failed)


def test_system_time_zone_name_is_a_known_zone() -> None:
    ZoneInfo(system_time_zone_name())
