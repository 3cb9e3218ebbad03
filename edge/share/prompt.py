"""What a prompt to the owner says, and how it reads on a phone.

A ``Prompt`` carries everything the owner needs to decide on one pending request:
who asks (agency name and kind, from the certificate), what for, for which window,
how far the camera is from the area's centre, how much footage it holds, until when
the owner can decide, the links to act, and the audit log's current head (so the
owner holds a copy of it outside the device).

No image or video ever goes into a prompt: push services are third parties. The
text here is all a notifier sends.

Agency-supplied text is signed but still untrusted: it is cleaned of control and
format characters (terminal escapes, bidi overrides, zero-width characters) before
it is shown anywhere, and cut to length.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

AgencyKind = Literal["police", "fire", "other"]
NoticeKind = Literal["delivered", "expired", "upload_failed"]

AGENCY_KINDS: tuple[str, ...] = ("police", "fire", "other")
NOTICE_KINDS: tuple[str, ...] = ("delivered", "expired", "upload_failed")

# ntfy takes up to 4,096 bytes of message; longer ones become attachments
# (docs.ntfy.sh/publish, "Limitations"). Its server peeks 4,096 bytes and treats
# a body that fills them as over the limit (server.go, handlePublishBody), so a
# rendered body stays well below: 4,000 bytes.
MAX_BODY_BYTES = 4000
# Shown on a phone: a long description is cut here; the review page shows it whole.
DESCRIPTION_MAX_CHARS = 500
TITLE_MAX_CHARS = 160

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_KIND_HEADINGS = {
    "police": "Police request",
    "fire": "Fire department request",
    "other": "Request for footage",
}
_KIND_NOUNS = {"police": "police", "fire": "fire department", "other": "agency"}


@dataclass(frozen=True)
class Prompt:
    """One pending request, as the owner is told about it. Times are Unix ms (UTC)."""

    request_id: str  # the short local id (`edge approve ID`)
    agency_name: str
    agency_kind: AgencyKind
    title: str
    description: str
    case_ref: str | None
    public_url: str
    window_start_ms: int
    window_end_ms: int
    time_zone: str  # the owner's, an IANA name such as "Europe/Berlin"
    distance_m: float  # from the camera to the centre of the requested area
    footage_held_s: float  # footage of the window the buffer holds now
    footage_lost_to_pin_cap: bool  # part of the window is not pinned (cap reached)
    footage_clock_unsynced: bool  # some of it was recorded before the clock was synchronised
    decide_by_ms: int
    review_url: str | None  # carries a single-use token; None when the review page is off
    deny_url: str | None  # where the "Deny" action POSTs; None: no such action
    deny_token: str | None  # single-use token for the deny action, sent in the POST body
    audit_head: str  # the audit chain's current head, short hash

    def __post_init__(self) -> None:
        if not self.request_id or len(self.request_id) > 64:
            raise ValueError("Prompt.request_id must be 1-64 characters")
        if self.agency_kind not in AGENCY_KINDS:
            raise ValueError(f"Prompt.agency_kind must be one of {AGENCY_KINDS}")
        if self.window_end_ms <= self.window_start_ms:
            raise ValueError("Prompt window ends before it starts")
        if self.distance_m < 0 or self.footage_held_s < 0:
            raise ValueError("Prompt.distance_m and footage_held_s must not be negative")
        if not self.audit_head or len(self.audit_head) > 64 or not self.audit_head.isalnum():
            raise ValueError("Prompt.audit_head must be a short hash (1-64 letters/digits)")
        if self.deny_token is not None and self.deny_url is None:
            raise ValueError("Prompt.deny_token given without deny_url")
        zone(self.time_zone)  # raises ValueError for an unknown zone


@dataclass(frozen=True)
class Notice:
    """A short follow-up on a request the owner was prompted about."""

    kind: NoticeKind
    request_id: str
    agency_name: str
    title: str
    time_zone: str
    at_ms: int  # when it happened
    audit_head: str
    detail: str | None = None  # e.g. why an upload failed

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueError(f"Notice.kind must be one of {NOTICE_KINDS}")
        if not self.request_id or len(self.request_id) > 64:
            raise ValueError("Notice.request_id must be 1-64 characters")
        if not self.audit_head or len(self.audit_head) > 64 or not self.audit_head.isalnum():
            raise ValueError("Notice.audit_head must be a short hash (1-64 letters/digits)")
        zone(self.time_zone)


def zone(name: str) -> ZoneInfo:
    """The named time zone; ValueError naming it when it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (example: \"Europe/Berlin\")") from None


def system_time_zone_name() -> str:
    """The system's IANA time zone name (for `device.timezone = ""`), "UTC" if unknown.

    Reads $TZ, then /etc/timezone (Debian), then the /etc/localtime symlink.
    """
    candidates: list[str] = []
    tz_env = os.environ.get("TZ", "").lstrip(":")
    if tz_env:
        candidates.append(tz_env)
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="ascii", errors="replace")
                          [:100].strip())
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        try:
            zone(name)
        except ValueError:
            continue
        return name
    return "UTC"


def clean_text(text: str, *, max_chars: int, keep_newlines: bool = False) -> str:
    """Untrusted text made safe to show: no control or format characters, bounded.

    Removes C0/C1 controls (terminal escapes), format characters (bidi overrides,
    zero-width joiners), private-use and surrogate code points; folds whitespace.
    """
    kept: list[str] = []
    for char in text:
        if char == "\n" and keep_newlines:
            kept.append("\n")
        elif char in "\t\r\n\f\v" or unicodedata.category(char) in ("Zs", "Zl", "Zp"):
            kept.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs", "Cn"):
            continue
        else:
            kept.append(char)
    lines = ["".join(kept)] if not keep_newlines else "".join(kept).split("\n")
    folded = [" ".join(line.split()) for line in lines]
    result = "\n".join(line for line in folded if line) if keep_newlines else folded[0]
    if len(result) > max_chars:
        result = result[: max_chars - 1].rstrip() + "…"
    return result


def format_time(timestamp_ms: int, tz: ZoneInfo, *, seconds: bool = False) -> str:
    """'Sat 28 Nov 14:05' in the given zone (English names, independent of the locale)."""
    local = datetime.fromtimestamp(timestamp_ms / 1000, tz)
    clock = f"{local:%H:%M:%S}" if seconds else f"{local:%H:%M}"
    return f"{_DAY_NAMES[local.weekday()]} {local.day} {_MONTH_NAMES[local.month - 1]} {clock}"


def format_window(start_ms: int, end_ms: int, time_zone: str) -> str:
    """'Sat 28 Nov 14:05–14:35 (Europe/Berlin)'; both dates when it spans midnight."""
    tz = zone(time_zone)
    start = datetime.fromtimestamp(start_ms / 1000, tz)
    end = datetime.fromtimestamp(end_ms / 1000, tz)
    # Seconds are shown only when they matter, so the text never rounds a window.
    seconds = bool(start.second or end.second or start_ms % 1000 or end_ms % 1000)
    first = format_time(start_ms, tz, seconds=seconds)
    if start.date() == end.date():
        last = f"{end:%H:%M:%S}" if seconds else f"{end:%H:%M}"
        return f"{first}–{last} ({time_zone})"
    return f"{first} – {format_time(end_ms, tz, seconds=seconds)} ({time_zone})"


def format_moment(timestamp_ms: int, time_zone: str) -> str:
    """'Mon 30 Nov 14:05 (Europe/Berlin)'."""
    return f"{format_time(timestamp_ms, zone(time_zone))} ({time_zone})"


def format_duration(duration_s: float) -> str:
    """'45 s', '29 min 40 s', '1 h 5 min': at most two units, rounded to the second."""
    total_s = round(duration_s)
    if total_s <= 0:
        return "none"
    hours, rest = divmod(total_s, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "min"), (secs, "s")]
    shown = [f"{value} {unit}" for value, unit in parts if value][:2]
    return " ".join(shown)


def format_distance(distance_m: float) -> str:
    """'about 120 m from the area's centre' (10 m steps; km past 1 km)."""
    if distance_m < 10:
        return "less than 10 m from the area's centre"
    if distance_m < 1000:
        return f"about {round(distance_m / 10) * 10:.0f} m from the area's centre"
    return f"about {distance_m / 1000:.1f} km from the area's centre"


def prompt_title(prompt: Prompt) -> str:
    """'Police request: <title>'."""
    title = clean_text(prompt.title, max_chars=TITLE_MAX_CHARS) or "(no title)"
    return f"{_KIND_HEADINGS[prompt.agency_kind]}: {title}"


def prompt_body(prompt: Prompt, *, with_links: bool = False,
                max_bytes: int = MAX_BODY_BYTES) -> str:
    """The text a person reads on a phone; at most ``max_bytes`` of UTF-8.

    ``with_links`` adds the review link and the device commands (console, logs);
    push messages carry the links as a click URL and action buttons instead.
    """
    agency = clean_text(prompt.agency_name, max_chars=200) or "An unnamed agency"
    window_s = (prompt.window_end_ms - prompt.window_start_ms) / 1000
    head = [
        f"{agency} ({_KIND_NOUNS[prompt.agency_kind]}) asks for footage from this camera.",
        f"Window: {format_window(prompt.window_start_ms, prompt.window_end_ms, prompt.time_zone)}",
    ]
    if prompt.case_ref:
        head.append(f"Case: {clean_text(prompt.case_ref, max_chars=64)}")
    tail = [
        f"Camera: {format_distance(prompt.distance_m)}",
        f"Footage held: {format_duration(prompt.footage_held_s)} of the "
        f"{format_duration(window_s)} window",
    ]
    if prompt.footage_lost_to_pin_cap:
        tail.append("Note: part of the window is not kept for you: the pin cap was reached.")
    if prompt.footage_clock_unsynced:
        tail.append("Note: some of it was recorded before the clock was synchronised; "
                    "its times may be off.")
    tail.append(f"Decide by {format_moment(prompt.decide_by_ms, prompt.time_zone)}. "
                "Nothing is sent unless you approve.")
    tail.append(f"Public posting: {clean_text(prompt.public_url, max_chars=300)}")
    if with_links:
        if prompt.review_url:
            tail.append(f"Review: {prompt.review_url}")
        tail.append(f"On the device: edge approve {prompt.request_id} | "
                    f"edge deny {prompt.request_id}")
    tail.append(f"Request: {prompt.request_id}   Log: {prompt.audit_head}")

    # The description gets whatever room the fixed lines leave.
    fixed = "\n".join(head + tail)
    room = max_bytes - len(fixed.encode()) - 2  # two newlines around it
    description = clean_text(prompt.description, max_chars=DESCRIPTION_MAX_CHARS,
                             keep_newlines=True)
    description = _cut_utf8(description, room)
    body = "\n".join([*head, description, *tail] if description else head + tail)
    return _cut_utf8(body, max_bytes)


def notice_title(notice: Notice) -> str:
    title = clean_text(notice.title, max_chars=TITLE_MAX_CHARS) or "(no title)"
    heading = {"delivered": "Delivered", "expired": "Expired",
               "upload_failed": "Upload failed"}[notice.kind]
    return f"{heading}: {title}"


def notice_body(notice: Notice, *, max_bytes: int = MAX_BODY_BYTES) -> str:
    agency = clean_text(notice.agency_name, max_chars=200) or "an unnamed agency"
    when = format_moment(notice.at_ms, notice.time_zone)
    if notice.kind == "delivered":
        text = f"The footage you approved for request {notice.request_id} ({agency}) " \
               f"was delivered {when}."
    elif notice.kind == "expired":
        text = f"Request {notice.request_id} from {agency} expired {when} without " \
               "a decision. Nothing was sent."
    else:
        text = f"The upload for request {notice.request_id} ({agency}) failed {when}."
    lines = [text]
    if notice.detail:
        lines.append(clean_text(notice.detail, max_chars=500))
    lines.append(f"Log: {notice.audit_head}")
    return _cut_utf8("\n".join(lines), max_bytes)


def _cut_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    if max_bytes <= 0:
        return ""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    ellipsis = "…".encode()
    cut = encoded[: max(0, max_bytes - len(ellipsis))].decode("utf-8", errors="ignore")
    return cut.rstrip() + "…"
