"""Prompt senders: ntfy, a webhook, the console, and the dispatcher that drives them.

Each notifier turns a ``Prompt`` (or a follow-up ``Notice``) into one message and
sends it, raising ``NotifyError`` with a reason when it cannot. The
``PromptDispatcher`` sends every prompt to every enabled notifier from worker
threads, retries each failed notifier on its own with exponential backoff until
the owner's decision deadline, and reports every attempt to a hook (the daemon
records "prompted" in the audit log from it). It never blocks its caller.

No image or video goes into any message: push services are third parties.

ntfy (docs.ntfy.sh/publish, followed exactly):
  POST the message as JSON to the server's root URL (not the topic URL), with
  ``topic``, ``title``, ``message`` (at most 4,096 bytes), ``priority`` (int 1-5;
  4 = high), ``tags`` (emoji short codes from docs.ntfy.sh/emojis), ``click``
  (opened when the notification is tapped) and ``actions`` (at most three):
  ``view`` "Review" opens the review page; ``http`` "Deny" POSTs
  ``token=<deny token>`` (form-encoded) to the deny URL and clears the
  notification once that succeeds; ``view`` "Public posting" opens the agency's
  public post. Authenticated with ``Authorization: Bearer <token>``; the token is
  read from a file, never from the URL.

Webhook (for Home Assistant and scripts): one JSON POST per prompt or notice;
any 2xx answer is success, redirects are not followed. ``title``,
``description``, ``case_ref`` and ``agency.name`` are the agency's text as
signed (JSON-escaped, otherwise untouched); ``text`` holds the same prompt
cleaned for display. Schema, version 1::

  {"version": 1, "event": "prompt",
   "request_id": "7",
   "agency": {"name": "...", "kind": "police" | "fire" | "other"},
   "title": "...", "description": "...", "case_ref": "..." | null,
   "public_url": "https://...",
   "window": {"start": "2026-11-28T14:05:00+01:00", "end": "...",
              "start_ms": 1795871100000, "end_ms": 1795872900000,
              "time_zone": "Europe/Berlin", "text": "Sat 28 Nov 14:05–14:35 (Europe/Berlin)"},
   "distance_m": 123.4,
   "footage": {"held_s": 1780.0, "lost_to_pin_cap": false, "clock_unsynchronized": false},
   "decide_by": "2026-11-30T14:05:00+01:00", "decide_by_ms": 1796043900000,
   "review_url": "https://..." | null,
   "deny": {"url": "https://...", "method": "POST",
            "content_type": "application/x-www-form-urlencoded",
            "body": "token=..."} | null,
   "audit_head": "3fa9c2d1e0b4",
   "text": {"title": "Police request: ...", "body": "..."}}

  {"version": 1, "event": "notice", "kind": "delivered" | "expired" | "upload_failed",
   "request_id": "7", "agency": {"name": "..."}, "title": "...",
   "at": "2026-11-28T15:00:00+01:00", "at_ms": 1795874400000, "time_zone": "Europe/Berlin",
   "detail": "..." | null, "audit_head": "...", "text": {"title": "...", "body": "..."}}

Plain ``http://`` URLs are allowed (ntfy is often self-hosted on the LAN) with a
warning: the prompt then crosses the network in the clear. ``https://`` is
always verified against the system's trust store (or the given SSL context).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import ssl
import stat
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit

from edge.clock import Clock
from edge.share.prompt import (
    Notice,
    Prompt,
    format_moment,
    format_window,
    notice_body,
    notice_title,
    prompt_body,
    prompt_title,
    zone,
)

logger = logging.getLogger(__name__)

USER_AGENT = "edge-notify/1"
# From docs.ntfy.sh/publish: "You can define up to three user actions".
NTFY_MAX_ACTIONS = 3
# Newer ntfy servers read at most 2 x 4,096 bytes of JSON; the message itself is
# kept under 4,096 bytes by the renderer.
NTFY_MAX_JSON_BYTES = 8192
NTFY_TOPIC_RE = re.compile(r"[-_A-Za-z0-9]{1,64}")  # docs.ntfy.sh/publish, "Picking a topic"
NTFY_PRIORITY_HIGH = 4
NTFY_PRIORITY_DEFAULT = 3
# Emoji short codes, each checked against docs.ntfy.sh/emojis (docs/emojis.md).
NTFY_KIND_TAGS = {"police": "police_car", "fire": "fire_engine", "other": "rotating_light"}
NTFY_NOTICE_TAGS = {"delivered": "outbox_tray", "expired": "hourglass",
                    "upload_failed": "warning"}

MAX_TOKEN_FILE_BYTES = 1024
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 10.0
WEBHOOK_SCHEMA_VERSION = 1

# Answers worth retrying: timeouts, rate limits and server-side trouble. Any
# other 4xx means the message or the credentials are wrong; sending the same
# request again cannot help.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})


class NotifyError(Exception):
    """A prompt could not be delivered; ``reason`` says why, for the log."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class NotifyConfigError(ValueError):
    """A notifier cannot be built from its settings (bad URL, unreadable token file)."""


class Notifier(Protocol):
    """Sends prompts and notices to the owner through one channel."""

    @property
    def name(self) -> str:
        """Short channel name for logs and reports: "ntfy", "webhook", "console"."""
        ...

    def send(self, prompt: Prompt) -> None:
        """Delivers one prompt or raises ``NotifyError``."""
        ...

    def send_notice(self, notice: Notice) -> None:
        """Delivers one follow-up notice or raises ``NotifyError``."""
        ...


# --- HTTP plumbing (stdlib only) -------------------------------------------------


@dataclass(frozen=True)
class _HttpTarget:
    scheme: str
    host: str
    port: int | None
    path: str  # path and query to request

    def describe(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{self.host}{port}"


def _split_http_url(url: str, setting: str) -> SplitResult:
    """``url`` split and checked: http(s), a host, no fragment. NotifyConfigError if not."""
    if not url or len(url) > 2000 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise NotifyConfigError(f"{setting}: not a usable URL (empty, too long or has spaces)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as error:
        raise NotifyConfigError(f"{setting}: not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise NotifyConfigError(f"{setting}: must start with https:// (or http://)")
    if not parts.hostname:
        raise NotifyConfigError(f"{setting}: has no host name")
    if parts.fragment:
        raise NotifyConfigError(f"{setting}: must not have a #fragment")
    return parts


def _warn_if_cleartext(parts: SplitResult, setting: str) -> None:
    if parts.scheme == "http":
        logger.warning("%s uses plain http://%s: prompts cross the network in the clear, "
                       "readable by anyone on the path", setting, parts.hostname)


def _post(target: _HttpTarget, body: bytes, headers: dict[str, str], timeout_s: float,
          ssl_context: ssl.SSLContext | None) -> tuple[int, dict[str, str], bytes]:
    """One POST; (status, lower-cased headers, body up to MAX_RESPONSE_BYTES)."""
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
        connection = http.client.HTTPSConnection(target.host, target.port, timeout=timeout_s,
                                                 context=context)
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    all_headers = {"User-Agent": USER_AGENT, "Content-Length": str(len(body)), **headers}
    try:
        connection.request("POST", target.path, body=body, headers=all_headers)
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES)
        answer_headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, answer_headers, data
    except ssl.SSLCertVerificationError as error:
        raise NotifyError(f"{target.describe()}: TLS certificate not trusted "
                          f"({error.verify_message})") from None
    except TimeoutError:
        raise NotifyError(f"{target.describe()}: no answer within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as error:
        raise NotifyError(f"{target.describe()}: {type(error).__name__}: {error}") from None
    finally:
        connection.close()


def _status_error(status: int, what: str, detail: str) -> NotifyError:
    retryable = status >= 500 or status in _RETRYABLE_STATUSES
    text = f"{what} answered HTTP {status}"
    if detail:
        text += f": {detail}"
    return NotifyError(text, retryable=retryable)


def _short(text: str, max_chars: int = 200) -> str:
    """Untrusted server text fit for one log line."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    return printable[:max_chars]


def _iso(timestamp_ms: int, time_zone: str) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, zone(time_zone)).isoformat()


# --- ntfy ------------------------------------------------------------------------


def parse_ntfy_url(url: str) -> tuple[str, str]:
    """'https://ntfy.example.org/porch-7f3a' -> ('https://ntfy.example.org/', 'porch-7f3a').

    The last path segment is the topic; what comes before it is the server's root
    (which may sit under a path, 'https://example.org/ntfy/porch' -> root
    'https://example.org/ntfy/'). NotifyConfigError when it is not of that form.
    """
    setting = "notify.ntfy_url"
    parts = _split_http_url(url, setting)
    if parts.username is not None or parts.password is not None:
        raise NotifyConfigError(f"{setting}: must not carry credentials; put the access "
                                "token in notify.ntfy_token_file")
    if parts.query:
        raise NotifyConfigError(f"{setting}: must not have a ?query")
    segments = parts.path.rstrip("/").split("/")
    topic = unquote(segments[-1]) if len(segments) > 1 else ""
    if not NTFY_TOPIC_RE.fullmatch(topic):
        raise NotifyConfigError(
            f"{setting}: must end in a topic of 1-64 letters, digits, '-' or '_', "
            "e.g. \"https://ntfy.example.org/porch-7f3a\"")
    root_path = "/".join(segments[:-1]) + "/"
    return f"{parts.scheme}://{parts.netloc}{root_path}", topic


def read_token_file(path: Path, setting: str = "notify.ntfy_token_file") -> str:
    """The access token held in ``path``: bounded read, stripped, one printable word."""
    try:
        with path.open("rb") as file:
            mode = stat.S_IMODE(path.stat().st_mode)
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotifyConfigError(f"{setting}: {path} does not exist") from None
    except PermissionError:
        raise NotifyConfigError(f"{setting}: {path} cannot be read (permission denied)") from None
    except OSError as error:
        raise NotifyConfigError(f"{setting}: {path} cannot be read ({error.strerror})") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise NotifyConfigError(f"{setting}: {path} is larger than {MAX_TOKEN_FILE_BYTES} "
                                "bytes; it should hold the access token alone")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise NotifyConfigError(f"{setting}: {path} holds non-ASCII bytes; it should "
                                "hold the access token alone") from None
    if not token:
        raise NotifyConfigError(f"{setting}: {path} is empty")
    # A space, newline or control character would let the file forge extra headers.
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise NotifyConfigError(f"{setting}: {path} must hold the token alone on one line")
    if mode & 0o077:
        logger.warning("%s: %s is readable by other users (mode %o); chmod 600 it",
                       setting, path, mode)
    return token


class NtfyNotifier:
    """Publishes prompts to an ntfy topic as JSON at the server's root URL."""

    def __init__(self, url: str, token_file: Path | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not 0 < timeout_s <= 300:
            raise NotifyConfigError("ntfy timeout must be in (0, 300] seconds")
        self.server_url, self.topic = parse_ntfy_url(url)
        parts = urlsplit(self.server_url)
        _warn_if_cleartext(parts, "notify.ntfy_url")
        self._target = _HttpTarget(parts.scheme, parts.hostname or "", parts.port,
                                   parts.path or "/")
        self._token = read_token_file(token_file) if token_file is not None else None
        self._timeout_s = timeout_s
        self._ssl_context = ssl_context

    @property
    def name(self) -> str:
        return "ntfy"

    def prompt_message(self, prompt: Prompt) -> dict[str, Any]:
        """The JSON object published for ``prompt`` (docs.ntfy.sh/publish/#publish-as-json)."""
        actions: list[dict[str, Any]] = []
        if prompt.review_url:
            actions.append({"action": "view", "label": "Review", "url": prompt.review_url})
        if prompt.deny_url:
            deny: dict[str, Any] = {"action": "http", "label": "Deny", "url": prompt.deny_url,
                                    "method": "POST", "clear": True}
            if prompt.deny_token:
                deny["headers"] = {"Content-Type": "application/x-www-form-urlencoded"}
                deny["body"] = urlencode({"token": prompt.deny_token})
            actions.append(deny)
        actions.append({"action": "view", "label": "Public posting", "url": prompt.public_url})
        message: dict[str, Any] = {
            "topic": self.topic,
            "title": prompt_title(prompt),
            "message": prompt_body(prompt),
            "priority": NTFY_PRIORITY_HIGH,
            "tags": [NTFY_KIND_TAGS[prompt.agency_kind]],
            "actions": actions[:NTFY_MAX_ACTIONS],
        }
        if prompt.review_url:
            message["click"] = prompt.review_url
        return message

    def notice_message(self, notice: Notice) -> dict[str, Any]:
        priority = NTFY_PRIORITY_HIGH if notice.kind == "upload_failed" else NTFY_PRIORITY_DEFAULT
        return {
            "topic": self.topic,
            "title": notice_title(notice),
            "message": notice_body(notice),
            "priority": priority,
            "tags": [NTFY_NOTICE_TAGS[notice.kind]],
        }

    def send(self, prompt: Prompt) -> None:
        self._publish(self.prompt_message(prompt))

    def send_notice(self, notice: Notice) -> None:
        self._publish(self.notice_message(notice))

    def _publish(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, ensure_ascii=False).encode()
        if len(body) > NTFY_MAX_JSON_BYTES:
            raise NotifyError(f"ntfy message is {len(body)} bytes, over ntfy's "
                              f"{NTFY_MAX_JSON_BYTES}", retryable=False)
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        status, _, data = _post(self._target, body, headers, self._timeout_s, self._ssl_context)
        answer = _json_object(data)
        if status != 200:
            # ntfy answers errors as {"code": 40101, "http": 401, "error": "unauthorized"}.
            detail = ""
            if answer is not None and isinstance(answer.get("error"), str):
                detail = _short(answer["error"])
                if isinstance(answer.get("code"), int):
                    detail += f" (code {answer['code']})"
            raise _status_error(status, f"ntfy at {self._target.describe()}", detail)
        if answer is None or not isinstance(answer.get("id"), str) \
                or answer.get("event") != "message":
            raise NotifyError(f"ntfy at {self._target.describe()} answered 200 without a "
                              "message object; is notify.ntfy_url an ntfy server?")


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --- webhook ---------------------------------------------------------------------


def webhook_prompt_payload(prompt: Prompt) -> dict[str, Any]:
    """The webhook's JSON for a prompt (schema in this module's docstring)."""
    deny = None
    if prompt.deny_url:
        deny = {"url": prompt.deny_url, "method": "POST",
                "content_type": "application/x-www-form-urlencoded",
                "body": urlencode({"token": prompt.deny_token}) if prompt.deny_token else ""}
    return {
        "version": WEBHOOK_SCHEMA_VERSION,
        "event": "prompt",
        "request_id": prompt.request_id,
        "agency": {"name": prompt.agency_name, "kind": prompt.agency_kind},
        "title": prompt.title,
        "description": prompt.description,
        "case_ref": prompt.case_ref,
        "public_url": prompt.public_url,
        "window": {
            "start": _iso(prompt.window_start_ms, prompt.time_zone),
            "end": _iso(prompt.window_end_ms, prompt.time_zone),
            "start_ms": prompt.window_start_ms,
            "end_ms": prompt.window_end_ms,
            "time_zone": prompt.time_zone,
            "text": format_window(prompt.window_start_ms, prompt.window_end_ms,
                                  prompt.time_zone),
        },
        "distance_m": prompt.distance_m,
        "footage": {"held_s": prompt.footage_held_s,
                    "lost_to_pin_cap": prompt.footage_lost_to_pin_cap,
                    "clock_unsynchronized": prompt.footage_clock_unsynced},
        "decide_by": _iso(prompt.decide_by_ms, prompt.time_zone),
        "decide_by_ms": prompt.decide_by_ms,
        "review_url": prompt.review_url,
        "deny": deny,
        "audit_head": prompt.audit_head,
        "text": {"title": prompt_title(prompt), "body": prompt_body(prompt)},
    }


def webhook_notice_payload(notice: Notice) -> dict[str, Any]:
    return {
        "version": WEBHOOK_SCHEMA_VERSION,
        "event": "notice",
        "kind": notice.kind,
        "request_id": notice.request_id,
        "agency": {"name": notice.agency_name},
        "title": notice.title,
        "at": _iso(notice.at_ms, notice.time_zone),
        "at_ms": notice.at_ms,
        "time_zone": notice.time_zone,
        "detail": notice.detail,
        "audit_head": notice.audit_head,
        "text": {"title": notice_title(notice), "body": notice_body(notice)},
    }


class WebhookNotifier:
    """POSTs each prompt and notice as JSON to one URL (Home Assistant, scripts)."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not 0 < timeout_s <= 300:
            raise NotifyConfigError("webhook timeout must be in (0, 300] seconds")
        parts = _split_http_url(url, "notify.webhook_url")
        _warn_if_cleartext(parts, "notify.webhook_url")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self._target = _HttpTarget(parts.scheme, parts.hostname or "", parts.port, path)
        self._basic_auth: str | None = None
        if parts.username is not None:
            # user:password@ in the URL becomes HTTP Basic auth, as browsers do.
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._basic_auth = base64.b64encode(pair.encode()).decode("ascii")
        self._timeout_s = timeout_s
        self._ssl_context = ssl_context

    @property
    def name(self) -> str:
        return "webhook"

    def send(self, prompt: Prompt) -> None:
        self._post(webhook_prompt_payload(prompt))

    def send_notice(self, notice: Notice) -> None:
        self._post(webhook_notice_payload(notice))

    def _post(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if self._basic_auth is not None:
            headers["Authorization"] = f"Basic {self._basic_auth}"
        status, answer_headers, _ = _post(self._target, body, headers, self._timeout_s,
                                          self._ssl_context)
        if 200 <= status < 300:
            return
        where = f"webhook at {self._target.describe()}"
        if 300 <= status < 400:
            location = quote(answer_headers.get("location", "?"), safe=":/?&=%#@+")
            raise NotifyError(f"{where} redirects (HTTP {status} to {_short(location)}); "
                              "edge does not follow redirects, set the final URL",
                              retryable=False)
        raise _status_error(status, where, "")


# --- console ---------------------------------------------------------------------


class ConsoleNotifier:
    """A readable box on the terminal, and one log line, per prompt (`edge demo`)."""

    def __init__(self, stream: TextIO | None = None, *,
                 log: logging.Logger | None = None, width: int = 76) -> None:
        if not 40 <= width <= 200:
            raise NotifyConfigError("console width must be 40-200 columns")
        self._stream = stream
        self._log = log if log is not None else logger
        self._width = width
        self._lock = threading.Lock()  # one box at a time, whichever thread prints

    @property
    def name(self) -> str:
        return "console"

    def send(self, prompt: Prompt) -> None:
        self._print(prompt_title(prompt), prompt_body(prompt, with_links=True))
        self._log.info("Prompt for request %s: %s; decide by %s; log head %s",
                       prompt.request_id, prompt_title(prompt),
                       format_moment(prompt.decide_by_ms, prompt.time_zone), prompt.audit_head)

    def send_notice(self, notice: Notice) -> None:
        self._print(notice_title(notice), notice_body(notice))
        self._log.info("Notice for request %s: %s", notice.request_id, notice_title(notice))

    def render_box(self, title: str, body: str) -> str:
        """The box as text; ASCII when the stream cannot encode box-drawing characters."""
        inner = self._width - 4
        lines: list[str] = []
        for paragraph in [title, "", *body.split("\n")]:
            lines.extend(textwrap.wrap(paragraph, inner, break_long_words=True,
                                       break_on_hyphens=False) or [""])
        top, side, bottom = "┌─┐", "│", "└─┘"
        encoding = getattr(self._stream or sys.stdout, "encoding", None) or "utf-8"
        try:
            (top + side + bottom).encode(encoding)
        except (UnicodeEncodeError, LookupError):
            top, side, bottom = "+-+", "|", "+-+"
        rows = [top[0] + top[1] * (inner + 2) + top[2]]
        rows += [f"{side} {line.ljust(inner)} {side}" for line in lines]
        rows.append(bottom[0] + bottom[1] * (inner + 2) + bottom[2])
        return "\n".join(rows) + "\n"

    def _print(self, title: str, body: str) -> None:
        stream = self._stream or sys.stdout
        text = self.render_box(title, body)
        with self._lock:
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError) as error:  # closed or broken terminal
                raise NotifyError(f"console: cannot write ({error})") from None


def build_notifiers(*, ntfy_url: str = "", ntfy_token_file: Path | None = None,
                    webhook_url: str = "", console: bool = False,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Notifier]:
    """The notifiers the `[notify]` config enables, in a fixed order."""
    notifiers: list[Notifier] = []
    if ntfy_url:
        notifiers.append(NtfyNotifier(ntfy_url, ntfy_token_file, timeout_s=timeout_s))
    elif ntfy_token_file is not None:
        raise NotifyConfigError("notify.ntfy_token_file is set but notify.ntfy_url is empty")
    if webhook_url:
        notifiers.append(WebhookNotifier(webhook_url, timeout_s=timeout_s))
    if console:
        notifiers.append(ConsoleNotifier())
    return notifiers


# --- dispatcher ------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between attempts on one notifier: first, x factor, capped.

    No jitter: one camera retrying one service causes no thundering herd.
    """

    first_delay_s: float = 5.0
    factor: float = 2.0
    max_delay_s: float = 300.0

    def __post_init__(self) -> None:
        if self.first_delay_s <= 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError("Backoff needs 0 < first_delay_s <= max_delay_s")
        if self.factor < 1:
            raise ValueError("Backoff.factor must be >= 1")

    def delay_s(self, failures: int) -> float:
        """Wait after the ``failures``-th failed attempt in a row (1, 2, ...)."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        exponent = min(failures - 1, 64)  # past this the cap holds anyway
        return float(min(self.max_delay_s, self.first_delay_s * self.factor ** exponent))


@dataclass(frozen=True)
class DeliveryReport:
    """One attempt to deliver one message through one notifier."""

    request_id: str
    notifier: str  # "ntfy", "webhook", "console"
    message: str  # "prompt", or the notice kind ("delivered", "expired", "upload_failed")
    attempt: int  # 1 for the first attempt
    delivered: bool
    final: bool  # no further attempt follows for this message on this notifier
    error: str | None = None
    monotonic_s: float = 0.0  # when the attempt ended (the dispatcher's clock)


ReportHook = Callable[[DeliveryReport], None]


@dataclass
class _Job:
    message: Prompt | Notice
    attempts: int
    due_s: float  # monotonic
    deadline_s: float  # monotonic; no attempt starts after it


class _Lane:
    """One notifier with its own queue and worker thread.

    A slow or failing service (a 10 s timeout, an outage) then never delays the
    prompts on the others. ``put`` is called from any thread; the worker thread
    alone calls the notifier and the report hook.
    """

    def __init__(self, notifier: Notifier, clock: Clock, backoff: Backoff,
                 report: Callable[[DeliveryReport], None], stop_event: threading.Event,
                 max_pending: int, thread_name: str) -> None:
        self.notifier = notifier
        self._clock = clock
        self._backoff = backoff
        self._report = report
        self._stop = stop_event
        self._max_pending = max_pending
        # Guards _jobs; waited on so that a new job or stop() wakes the worker at once.
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def put(self, job: _Job) -> bool:
        with self._cond:
            if len(self._jobs) >= self._max_pending:
                return False
            self._jobs.append(job)
            self._cond.notify()
        return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._next_due_job()
            if job is not None:
                self._attempt(job)

    def _next_due_job(self) -> _Job | None:
        """The next job once it is due; None when woken early (new job, stop)."""
        with self._cond:
            if self._stop.is_set():
                return None
            if not self._jobs:
                self._cond.wait()
                return None
            job = min(self._jobs, key=lambda j: j.due_s)
            wait_s = job.due_s - self._clock.monotonic_s()
            if wait_s > 0:
                self._cond.wait(min(wait_s, 60.0))
                return None
            self._jobs.remove(job)
            return job

    def _attempt(self, job: _Job) -> None:
        name = self.notifier.name
        kind = "prompt" if isinstance(job.message, Prompt) else job.message.kind
        request_id = job.message.request_id
        job.attempts += 1
        error: str | None = None
        retryable = True
        try:
            if isinstance(job.message, Prompt):
                self.notifier.send(job.message)
            else:
                self.notifier.send_notice(job.message)
        except NotifyError as failure:
            error, retryable = failure.reason, failure.retryable
        except Exception as failure:  # a bug in one notifier must not end the lane
            logger.exception("%s notifier failed unexpectedly on request %s", name, request_id)
            error = f"unexpected {type(failure).__name__}: {failure}"
        now_s = self._clock.monotonic_s()
        if error is None:
            logger.info("%s for request %s delivered via %s (attempt %d)",
                        kind, request_id, name, job.attempts)
            self._report(DeliveryReport(request_id, name, kind, job.attempts, True, True,
                                        None, now_s))
            return
        next_due_s = now_s + self._backoff.delay_s(job.attempts)
        if not retryable or next_due_s >= job.deadline_s or self._stop.is_set():
            why = "not retryable" if not retryable else \
                "stopping" if self._stop.is_set() else "the decision deadline comes first"
            logger.error("%s for request %s via %s failed (attempt %d): %s; giving up (%s)",
                         kind, request_id, name, job.attempts, error, why)
            self._report(DeliveryReport(request_id, name, kind, job.attempts, False, True,
                                        error, now_s))
            return
        logger.warning("%s for request %s via %s failed (attempt %d): %s; retrying in %.0f s",
                       kind, request_id, name, job.attempts, error, next_due_s - now_s)
        self._report(DeliveryReport(request_id, name, kind, job.attempts, False, False,
                                    error, now_s))
        job.due_s = next_due_s
        if not self.put(job):
            logger.error("%s queue full; dropping the retry for request %s", name, request_id)


class PromptDispatcher:
    """Sends prompts and notices to every enabled notifier, retrying each on its own.

    ``submit`` and ``submit_notice`` only queue and return at once, from any
    thread. Each notifier has a named worker thread ("edge-notify-ntfy", ...) that
    makes the attempts; all stop on one stop event. ``on_report`` is called on
    those worker threads after every attempt: keep it short (write the audit
    entry, no network). A prompt is retried until its decision deadline; a notice
    for ``notice_retry_s``. Queued messages are dropped on stop (the request stays
    pending; the daemon may prompt again after a restart).
    """

    def __init__(self, notifiers: Sequence[Notifier], *, clock: Clock,
                 on_report: ReportHook | None = None, backoff: Backoff | None = None,
                 notice_retry_s: float = 6 * 3600.0, max_pending: int = 256,
                 thread_name_prefix: str = "edge-notify") -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"notifier names must be unique, got {names}")
        if notice_retry_s <= 0 or max_pending < 1:
            raise ValueError("notice_retry_s and max_pending must be positive")
        self._clock = clock
        self._on_report = on_report
        self._notice_retry_s = notice_retry_s
        self._stop = threading.Event()
        self._state_lock = threading.Lock()  # guards _started against double start
        self._started = False
        backoff = backoff if backoff is not None else Backoff()
        self._lanes = [
            _Lane(n, clock, backoff, self._report, self._stop, max_pending,
                  f"{thread_name_prefix}-{n.name}")
            for n in notifiers
        ]

    @property
    def notifier_names(self) -> list[str]:
        return [lane.notifier.name for lane in self._lanes]

    def start(self) -> None:
        with self._state_lock:
            if self._started:
                raise RuntimeError("PromptDispatcher already started")
            if self._stop.is_set():
                raise RuntimeError("PromptDispatcher cannot restart after stop()")
            self._started = True
        if not self._lanes:
            logger.warning("No notifier is enabled ([notify] in the config): the owner "
                           "gets no prompts; decide with `edge requests` and `edge approve`")
        for lane in self._lanes:
            lane.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops every worker; waits up to ``timeout_s`` for attempts under way."""
        self._stop.set()
        for lane in self._lanes:
            lane.wake()
        for lane in self._lanes:
            if lane.thread.is_alive():
                lane.thread.join(timeout_s)
                if lane.thread.is_alive():
                    logger.warning("%s is still in an attempt after %.0f s; left behind",
                                   lane.thread.name, timeout_s)

    def submit(self, prompt: Prompt) -> bool:
        """Queues ``prompt`` for every notifier; False if none took it."""
        remaining_s = (prompt.decide_by_ms - self._clock.now_ms()) / 1000
        if remaining_s <= 0:
            logger.error("Not prompting for request %s: its decision deadline has passed",
                         prompt.request_id)
            return False
        # The deadline becomes a monotonic instant now, so a wall-clock jump (NTP
        # answering on a Pi without an RTC) cannot stretch or cut the retries.
        return self._enqueue(prompt, remaining_s)

    def submit_notice(self, notice: Notice) -> bool:
        """Queues a follow-up notice for every notifier; False if none took it."""
        return self._enqueue(notice, self._notice_retry_s)

    def pending(self) -> int:
        """Messages queued or waiting for a retry, over all notifiers."""
        return sum(lane.pending() for lane in self._lanes)

    def _enqueue(self, message: Prompt | Notice, retry_for_s: float) -> bool:
        if self._stop.is_set():
            logger.error("Dispatcher stopped; not sending anything for request %s",
                         message.request_id)
            return False
        now_s = self._clock.monotonic_s()
        taken = False
        for lane in self._lanes:
            if lane.put(_Job(message, 0, now_s, now_s + retry_for_s)):
                taken = True
            else:
                logger.error("%s queue is full; request %s is not sent through it",
                             lane.notifier.name, message.request_id)
        return taken

    def _report(self, report: DeliveryReport) -> None:
        if self._on_report is None:
            return
        try:
            self._on_report(report)
        except Exception:
            logger.exception("Delivery report hook failed for request %s", report.request_id)
