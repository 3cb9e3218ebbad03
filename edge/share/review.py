"""The owner's review page, served by the daemon on the LAN.

A prompt carries a link ``/r/<token>``: opening it (GET) spends nothing, so a
link preview does no harm. The page shows who asks, for what and for which
window (in the owner's time zone), plays the clip that would be sent (decrypted
on the fly by the backend and streamed, never written in the clear), lets the
owner narrow the window, and offers Approve and Deny. A decision (POST) spends
the token; the browser is then sent to a read-only status page (``/s/<receipt>``)
that shows the outcome and the request's history.

The ntfy "Deny" action POSTs to ``/a`` (token in the body) or ``/a/<token>``; it
is authenticated by its own single-use deny token.

Security, in short (the reasons sit next to the code):
- every response: a Content-Security-Policy that allows only our own stylesheet
  and media (no script at all), nosniff, no referrer (tokens are in URLs), no
  caching, no framing;
- the page's forms carry a CSRF token, an HMAC of the page's token under a key
  that lives only in this process's memory;
- bodies at most 16 KiB; rate limits per client address on every token lookup,
  on failed lookups, and on POSTs;
- every refusal of a token reads the same, whatever the reason.

Thread-safety: Flask handles each request on one of the server's worker
threads; the shared state here (rate limits, receipts, the stream count) is
guarded by its own lock. The backend and the token store are called from those
worker threads and must be thread-safe.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from math import ceil
from pathlib import Path
from typing import Any

from cheroot import wsgi
from flask import Flask, Response, redirect, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_range_header

from edge.clock import Clock
from edge.share.prompt import (
    clean_text,
    format_distance,
    format_duration,
    format_moment,
    format_time,
    format_window,
    zone,
)
from edge.share.review_backend import (
    ClipError,
    ClipHandle,
    DecisionError,
    RequestView,
    ReviewBackend,
)
from edge.share.tokens import TokenError, TokenStore

log = logging.getLogger(__name__)

# --- Limits ------------------------------------------------------------------------------

MAX_BODY_BYTES = 16 * 1024
MAX_HEADER_BYTES = 16 * 1024
# Tokens are secrets.token_urlsafe(32): 43 characters. Anything else is refused
# before it reaches the database.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_LOCAL_TIME_MAX_CHARS = 32
# A decided request's status page stays reachable this long after the decision
# (in memory only: a restart forgets it, and the owner uses `edge requests`).
RECEIPT_LIFETIME_S = 7 * 24 * 3600.0
_MAX_RECEIPTS = 256
# Streams decrypt on the fly: a Pi serves a few at once, not dozens.
MAX_CONCURRENT_STREAMS = 4
_STREAM_CHUNK_BYTES = 64 * 1024

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; media-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Tokens travel in URLs: never hand them to another site in a Referer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    # Other sites may not embed the clip or the page, nor keep a handle on our window.
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

_INVALID_LINK = "This link is not valid, or it has expired, or it was used already."


@dataclass
class _Bucket:
    level: float
    updated_s: float


@dataclass(frozen=True)
class RateLimit:
    burst: int  # requests allowed at once
    per_s: float  # sustained rate


@dataclass(frozen=True)
class ReviewLimits:
    """Rate limits per client address. Guessing a 256-bit token is hopeless; these cap
    the cost of trying, and of a flood, on a small computer."""

    lookups: RateLimit = RateLimit(burst=120, per_s=2.0)  # any request naming a token
    failures: RateLimit = RateLimit(burst=10, per_s=1 / 60)  # tokens that did not check out
    posts: RateLimit = RateLimit(burst=10, per_s=1 / 10)  # decisions


class _RateLimiter:
    """Token buckets per client address; the oldest addresses are forgotten past a cap."""

    def __init__(self, clock: Clock, limit: RateLimit, max_clients: int = 4096) -> None:
        self._clock = clock
        self._limit = limit
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _refilled(self, client: str) -> _Bucket:
        now_s = self._clock.monotonic_s()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(level=float(self._limit.burst), updated_s=now_s)
            self._buckets[client] = bucket
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            elapsed_s = max(0.0, now_s - bucket.updated_s)
            bucket.level = min(float(self._limit.burst),
                               bucket.level + elapsed_s * self._limit.per_s)
            bucket.updated_s = now_s
            self._buckets.move_to_end(client)
        return bucket

    def take(self, client: str) -> bool:
        """Spends one unit; False when the client has none left."""
        with self._lock:
            bucket = self._refilled(client)
            if bucket.level < 1.0:
                return False
            bucket.level -= 1.0
            return True

    def has_room(self, client: str) -> bool:
        with self._lock:
            return self._refilled(client).level >= 1.0

    def retry_after_s(self) -> int:
        return max(1, ceil(1 / self._limit.per_s))


@dataclass
class _Receipts:
    """Read-only status links handed out after a decision made on the page."""

    clock: Clock
    entries: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, request_id: str) -> str:
        receipt = secrets.token_urlsafe(32)
        with self.lock:
            self.entries[receipt] = (request_id, self.clock.monotonic_s() + RECEIPT_LIFETIME_S)
            while len(self.entries) > _MAX_RECEIPTS:
                self.entries.popitem(last=False)
        return receipt

    def lookup(self, receipt: str) -> str | None:
        with self.lock:
            # A dict lookup by the receipt itself: hashing, not comparing, so no
            # timing difference tells how much of a guess was right.
            entry = self.entries.get(receipt)
            if entry is None:
                return None
            request_id, expires_s = entry
            if self.clock.monotonic_s() >= expires_s:
                del self.entries[receipt]
                return None
            return request_id


class _RedactingFlask(Flask):
    """Flask whose error log names the route, never the path (it holds the token)."""

    def log_exception(self, exc_info: Any) -> None:
        rule = request.url_rule.rule if request.url_rule is not None else "?"
        self.logger.error("Exception on %s [%s]", rule, request.method, exc_info=exc_info)


class _Refusal(Exception):
    """Ends a request early with a page (or text) and a status."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# --- The application ---------------------------------------------------------------------


def create_app(backend: ReviewBackend, tokens: TokenStore, clock: Clock, *,
               limits: ReviewLimits | None = None,
               stop_event: threading.Event | None = None) -> Flask:
    """The review page as a WSGI application (tests drive it with Flask's test client).

    ``stop_event``: once set, open clip streams end at their next chunk (the server
    sets it on stop).
    """
    limits = limits or ReviewLimits()
    stop_event = stop_event or threading.Event()
    app = _RedactingFlask(__name__, template_folder="review_templates",
                          static_folder="review_static", static_url_path="/static")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        MAX_FORM_PARTS=20,
        SEND_FILE_MAX_AGE_DEFAULT=0,
    )
    # The CSRF key lives only in memory: a restart makes open forms stale (the owner
    # reloads), and nothing on disk lets anyone compute a form token.
    csrf_key = secrets.token_bytes(32)
    lookups = _RateLimiter(clock, limits.lookups)
    failures = _RateLimiter(clock, limits.failures)
    posts = _RateLimiter(clock, limits.posts)
    receipts = _Receipts(clock)
    streams = threading.BoundedSemaphore(MAX_CONCURRENT_STREAMS)

    def csrf_for(token: str) -> str:
        mac = hmac.new(csrf_key, b"edge-review-csrf\0" + token.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def client() -> str:
        # The peer's address as the server saw it; headers such as X-Forwarded-For
        # are the client's to forge, so they are not read.
        return request.remote_addr or "?"

    def rate_limited(limiter: _RateLimiter) -> _Refusal:
        return _Refusal(429, "Too many requests from this device. Wait a minute and try again.",
                        (("Retry-After", str(limiter.retry_after_s())),))

    def check_token(token: str, purpose: str) -> str:
        """The request id the token grants, without spending it; refusals all alike."""
        who = client()
        if not failures.has_room(who):
            raise rate_limited(failures)
        if not lookups.take(who):
            raise rate_limited(lookups)
        try:
            if not _TOKEN_RE.fullmatch(token):
                raise TokenError("malformed")
            grant = tokens.peek(token, clock.now_ms())
            if grant.purpose != purpose:
                raise TokenError("wrong purpose")
        except TokenError:
            failures.take(who)
            raise _Refusal(403, _INVALID_LINK) from None
        return grant.request_id

    def spend_token(token: str, purpose: str) -> str:
        who = client()
        try:
            if not _TOKEN_RE.fullmatch(token):
                raise TokenError("malformed")
            return tokens.spend(token, clock.now_ms(), purpose=purpose).request_id
        except TokenError:
            failures.take(who)
            raise _Refusal(403, _INVALID_LINK) from None

    def view_of(request_id: str) -> RequestView:
        view = backend.view(request_id)
        if view is None:
            # The token was good but the request is gone: say no more than for a bad token.
            raise _Refusal(403, _INVALID_LINK)
        return view

    def check_post(token: str) -> None:
        """What every decision made by the page's forms must pass, before anything is spent."""
        if not posts.take(client()):
            raise rate_limited(posts)
        # Browsers say where a request comes from (only to HTTPS or localhost pages);
        # anything but our own page is refused outright.
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site != "same-origin":
            raise _Refusal(403, "This form may only be sent from the review page itself.")
        sent = request.form.get("csrf", "")
        if not hmac.compare_digest(sent.encode(), csrf_for(token).encode()):
            raise _Refusal(403, "This form is out of date (the camera may have restarted). "
                                "Open the link again and decide there.")

    def render_review(token: str, view: RequestView, start_ms: int, end_ms: int, *,
                      error: str | None = None, status: int = 200,
                      local_start: str | None = None, local_end: str | None = None
                      ) -> Response:
        clip: ClipHandle | None = None
        clip_error: str | None = None
        try:
            clip = backend.clip(view.request_id, start_ms, end_ms)
        except (ClipError, DecisionError) as exc:
            clip_error = clean_text(str(exc), max_chars=300) or "No clip can be made."
        tz = zone(view.time_zone)
        narrowed = (start_ms, end_ms) != (view.window_start_ms, view.window_end_ms)
        context = _page_context(view) | {
            "token": token,
            "csrf": csrf_for(token),
            "error": error,
            "clip": clip,
            "clip_error": clip_error,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "narrowed": narrowed,
            "chosen_window": format_window(start_ms, end_ms, view.time_zone),
            "clip_frames": (format_window(clip.first_frame_ms, clip.last_frame_ms,
                                          view.time_zone) if clip else None),
            "clip_duration": (format_duration((clip.last_frame_ms - clip.first_frame_ms)
                                              / 1000) if clip else None),
            "clip_size": _format_size(clip.size_bytes) if clip else None,
            "input_min": _local_input(view.window_start_ms, tz, round_up=True),
            "input_max": _local_input(view.window_end_ms, tz, round_up=False),
            "input_start": local_start or _local_input(start_ms, tz, round_up=True),
            "input_end": local_end or _local_input(end_ms, tz, round_up=False),
        }
        return Response(render_template("review.html", **context), status=status,
                        mimetype="text/html")

    def render_status(view: RequestView, *, notice: str | None = None,
                      status: int = 200) -> Response:
        return Response(render_template("status.html", notice=notice, **_page_context(view)),
                        status=status, mimetype="text/html")

    @app.errorhandler(_Refusal)
    def refused(exc: _Refusal) -> Response:
        if request.path == "/a" or request.path.startswith("/a/"):  # the prompt's action
            response = Response(exc.message + "\n", status=exc.status, mimetype="text/plain")
        else:
            response = Response(render_template("error.html", message=exc.message),
                                status=exc.status, mimetype="text/html")
        for name, value in exc.headers:
            response.headers[name] = value
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Unexpected exceptions arrive here as a 500, after Flask has logged them with
        # their traceback (see _RedactingFlask.log_exception).
        code = exc.code or 500
        message = _HTTP_MESSAGES.get(code, "That request could not be handled.")
        response = Response(render_template("error.html", message=message), status=code,
                            mimetype="text/html")
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in _SECURITY_HEADERS.items():
            response.headers[name] = value
        return response

    @app.get("/r/<token>")
    def review(token: str) -> Response:
        request_id = check_token(token, "review")
        view = view_of(request_id)
        if view.state != "pending":
            return render_status(view)
        # The narrowing form's fields, in the owner's local time.
        start_text = request.args.get("from")
        end_text = request.args.get("to")
        if start_text is None and end_text is None:
            return render_review(token, view, view.window_start_ms, view.window_end_ms)
        try:
            start_ms, end_ms = _parse_local_window(start_text or "", end_text or "", view)
        except ValueError as exc:
            return render_review(token, view, view.window_start_ms, view.window_end_ms,
                                 error=str(exc), status=400,
                                 local_start=_bounded(start_text), local_end=_bounded(end_text))
        return render_review(token, view, start_ms, end_ms)

    @app.route("/r/<token>/clip.mp4", methods=["GET", "HEAD"])
    def clip_stream(token: str) -> Response:
        request_id = check_token(token, "review")
        view = view_of(request_id)
        if view.state != "pending":
            raise _Refusal(404, "The clip is not offered any more: the request was decided.")
        try:
            start_ms = _parse_ms(request.args.get("start", ""))
            end_ms = _parse_ms(request.args.get("end", ""))
            _check_within(start_ms, end_ms, view)
        except ValueError as exc:
            raise _Refusal(400, str(exc)) from None
        try:
            handle = backend.clip(request_id, start_ms, end_ms)
        except (ClipError, DecisionError) as exc:
            raise _Refusal(404, clean_text(str(exc), max_chars=300)) from None
        return _clip_response(handle, streams, stop_event)

    @app.post("/r/<token>/approve")
    def approve(token: str) -> ResponseReturnValue:
        request_id = check_token(token, "review")
        check_post(token)
        view = view_of(request_id)
        if view.state != "pending":
            return render_status(view, notice="This request was decided already.", status=409)
        try:
            start_ms = _parse_ms(request.form.get("start", ""))
            end_ms = _parse_ms(request.form.get("end", ""))
            _check_within(start_ms, end_ms, view)
        except ValueError as exc:
            return render_review(token, view, view.window_start_ms, view.window_end_ms,
                                 error=str(exc), status=400)
        sha256 = request.form.get("sha256", "")
        if not _SHA256_RE.fullmatch(sha256):
            return render_review(token, view, start_ms, end_ms, status=400,
                                 error="The form did not say which clip you watched.")
        # The same check the backend makes, made here first so that a clip that
        # changed costs the owner nothing: the token is still unspent.
        try:
            current = backend.clip(request_id, start_ms, end_ms).sha256
        except (ClipError, DecisionError) as exc:
            return render_review(token, view, start_ms, end_ms, status=409,
                                 error=clean_text(str(exc), max_chars=300))
        if current != sha256:
            return render_review(token, view, start_ms, end_ms, status=409,
                                 error="The clip changed since you watched it. Watch this "
                                       "one and decide again.")
        spend_token(token, "review")
        try:
            backend.approve(request_id, start_ms=start_ms, end_ms=end_ms, sha256=sha256,
                            channel="review")
        except DecisionError as exc:
            return decision_refused(request_id, exc)
        log.info("request %s approved on the review page", request_id)
        return redirect(f"/s/{receipts.issue(request_id)}", code=303)

    @app.post("/r/<token>/deny")
    def deny(token: str) -> ResponseReturnValue:
        request_id = check_token(token, "review")
        check_post(token)
        view = view_of(request_id)
        if view.state != "pending":
            return render_status(view, notice="This request was decided already.", status=409)
        spend_token(token, "review")
        try:
            backend.deny(request_id, channel="review")
        except DecisionError as exc:
            return decision_refused(request_id, exc)
        log.info("request %s denied on the review page", request_id)
        return redirect(f"/s/{receipts.issue(request_id)}", code=303)

    def decision_refused(request_id: str, exc: DecisionError) -> Response:
        log.warning("request %s: decision on the review page refused: %s", request_id, exc)
        message = (clean_text(str(exc), max_chars=300) or "The decision was refused.") + \
            " This link is used up."
        view = backend.view(request_id)
        if view is None:
            raise _Refusal(409, message)
        if view.state == "pending":
            message += f" On the device: edge approve {request_id} or edge deny {request_id}."
        return render_status(view, notice=message, status=409)

    @app.get("/s/<receipt>")
    def status(receipt: str) -> Response:
        who = client()
        if not failures.has_room(who):
            raise rate_limited(failures)
        if not lookups.take(who):
            raise rate_limited(lookups)
        request_id = receipts.lookup(receipt) if _TOKEN_RE.fullmatch(receipt) else None
        if request_id is None:
            failures.take(who)
            raise _Refusal(403, _INVALID_LINK)
        return render_status(view_of(request_id))

    def deny_action(token: str) -> Response:
        who = client()
        if not failures.has_room(who):
            raise rate_limited(failures)
        if not posts.take(who):
            raise rate_limited(posts)
        request_id = spend_token(token.strip(), "deny")
        try:
            backend.deny(request_id, channel="prompt-action")
        except DecisionError as exc:
            log.warning("request %s: deny action refused: %s", request_id, exc)
            return Response(clean_text(str(exc), max_chars=300) + "\n", status=409,
                            mimetype="text/plain")
        log.info("request %s denied by the prompt's action", request_id)
        return Response("Denied. Nothing will be sent.\n", mimetype="text/plain")

    @app.post("/a/<token>")
    def deny_action_in_path(token: str) -> Response:
        return deny_action(token)

    @app.post("/a")
    def deny_action_in_body() -> Response:
        # ntfy's http action sends its `body` as is; a form field works too.
        token = request.form.get("token") if request.mimetype == \
            "application/x-www-form-urlencoded" else None
        if token is None:
            token = request.get_data(cache=False)[:256].decode("ascii", "replace")
        return deny_action(token)

    return app


# --- Streaming the clip ------------------------------------------------------------------


def _clip_response(handle: ClipHandle, streams: threading.BoundedSemaphore,
                   stop_event: threading.Event) -> Response:
    """The clip, whole or one byte range of it (so the player can seek)."""
    size = handle.size_bytes
    first, last = 0, size - 1
    status = 200
    headers = {"Accept-Ranges": "bytes"}
    ranges = parse_range_header(request.headers.get("Range"))
    if ranges is not None:
        span = ranges.range_for_length(size)
        if span is None:
            if len(ranges.ranges) == 1:
                raise _Refusal(416, "That part of the clip does not exist.",
                               (("Content-Range", f"bytes */{size}"),))
            # Several ranges at once: answer with the whole clip, as HTTP allows.
        else:
            first, last = span[0], span[1] - 1
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    if request.method == "HEAD":
        return Response(b"", status=status, headers=headers, mimetype="video/mp4")
    if not streams.acquire(blocking=False):
        raise _Refusal(503, "The camera is busy streaming. Try again in a moment.",
                       (("Retry-After", "2"),))
    body = _stream_slice(handle, first, last, streams, stop_event)
    return Response(body, status=status, headers=headers, mimetype="video/mp4",
                    direct_passthrough=True)


def _stream_slice(handle: ClipHandle, first: int, last: int,
                  streams: threading.BoundedSemaphore,
                  stop_event: threading.Event) -> Iterator[bytes]:
    """Bytes first..last (inclusive) of the decrypted clip. Decrypts from the start and
    drops what comes before ``first``: the clip is a stream, not a seekable file."""
    chunks = handle.open()
    try:
        position = 0
        for chunk in chunks:
            if stop_event.is_set():
                return
            chunk_end = position + len(chunk)
            if chunk_end > first:
                piece = chunk[max(0, first - position): last + 1 - position]
                for offset in range(0, len(piece), _STREAM_CHUNK_BYTES):
                    yield piece[offset: offset + _STREAM_CHUNK_BYTES]
            position = chunk_end
            if position > last:
                return
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        streams.release()


# --- Helpers -----------------------------------------------------------------------------


def _page_context(view: RequestView) -> dict[str, Any]:
    """What every page about a request shows, cleaned (agency text is untrusted)."""
    tz = zone(view.time_zone)
    window_s = (view.window_end_ms - view.window_start_ms) / 1000
    public_url = clean_text(view.public_url, max_chars=300)
    approved = view.approved_window
    return {
        "view": view,
        "kind_heading": {"police": "Police request", "fire": "Fire department request"}
        .get(view.agency_kind, "Request for footage"),
        "agency": clean_text(view.agency_name, max_chars=200) or "An unnamed agency",
        "agency_kind": {"police": "police", "fire": "fire department"}
        .get(view.agency_kind, "agency"),
        "title": clean_text(view.title, max_chars=160) or "(no title)",
        "description": clean_text(view.description, max_chars=10_000, keep_newlines=True),
        "case_ref": clean_text(view.case_ref, max_chars=64) if view.case_ref else None,
        "public_url": public_url,
        # Only an http(s) address becomes a link; anything else is shown as text.
        "public_url_is_link": public_url.startswith(("https://", "http://")),
        "window": format_window(view.window_start_ms, view.window_end_ms, view.time_zone),
        "distance": format_distance(view.distance_m),
        "footage_held": f"{format_duration(view.footage_held_s)} of the "
                        f"{format_duration(window_s)} window",
        "decide_by": format_moment(view.decide_by_ms, view.time_zone),
        "state_text": _STATE_TEXT.get(view.state, view.state),
        "approved_window": (format_window(approved[0], approved[1], view.time_zone)
                            if approved else None),
        "history": [(format_time(at_ms, tz, seconds=True),
                     clean_text(text, max_chars=500)) for at_ms, text in view.history],
    }


_HTTP_MESSAGES = {
    400: "That request could not be understood.",
    404: "There is nothing here.",
    405: "That is not how this address is used.",
    413: "That request is too large.",
    500: "Something went wrong on the camera. Its log says what.",
}

_STATE_TEXT = {
    "pending": "Waiting for your decision",
    "approved": "Approved: the clip is being sent",
    "denied": "Denied: nothing is sent",
    "expired": "Expired without a decision: nothing is sent",
    "delivered": "Approved and delivered",
    "failed": "Approved, but the upload failed",
}


def _format_size(size_bytes: int) -> str:
    if size_bytes < 1_000_000:
        return f"{size_bytes / 1000:.0f} kB"
    return f"{size_bytes / 1_000_000:.1f} MB"


def _bounded(text: str | None) -> str | None:
    return text[:_LOCAL_TIME_MAX_CHARS] if text is not None else None


def _local_input(timestamp_ms: int, tz: Any, *, round_up: bool) -> str:
    """A datetime-local value (to the second) in the owner's zone, rounded inwards so
    that the default form values never name a wider window than the one asked for."""
    seconds = -(-timestamp_ms // 1000) if round_up else timestamp_ms // 1000
    return datetime.fromtimestamp(seconds, tz).strftime("%Y-%m-%dT%H:%M:%S")


def _parse_local(text: str, time_zone: str, what: str) -> int:
    """A datetime-local value ("2026-11-28T14:05" or with seconds) in the owner's zone."""
    if not text or len(text) > _LOCAL_TIME_MAX_CHARS:
        raise ValueError(f"Give the {what} as a date and time.")
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"The {what} is not a date and time.") from None
    if local.tzinfo is not None:
        raise ValueError(f"The {what} is not a date and time.")
    return round(local.replace(tzinfo=zone(time_zone)).timestamp() * 1000)


def _parse_local_window(start_text: str, end_text: str, view: RequestView) -> tuple[int, int]:
    start_ms = _parse_local(start_text, view.time_zone, "start")
    end_ms = _parse_local(end_text, view.time_zone, "end")
    _check_within(start_ms, end_ms, view)
    return start_ms, end_ms


def _parse_ms(text: str) -> int:
    if not text.isdigit() or len(text) > 16:
        raise ValueError("The window is not given in the expected form.")
    return int(text)


def _check_within(start_ms: int, end_ms: int, view: RequestView) -> None:
    """The owner may share less than was asked for, never more."""
    if end_ms - start_ms < 1000:
        raise ValueError("The window must end at least a second after it starts.")
    if start_ms < view.window_start_ms or end_ms > view.window_end_ms:
        raise ValueError("The window can only be narrowed, not widened: choose times within "
                         + format_window(view.window_start_ms, view.window_end_ms,
                                         view.time_zone) + ".")


# --- The server ----------------------------------------------------------------------------


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'{listen!r} is not HOST:PORT (example: "0.0.0.0:8420")')
    return host.strip("[]"), int(port)


class ReviewServer:
    """The review page on ``listen`` ("host:port"; port 0 picks a free one), served by
    cheroot, over HTTPS when a certificate and key are given.

    cheroot, not waitress: waitress queues a response's pending output in memory up to
    1 MiB and then in a temporary file, which for a decrypted clip would put footage in
    the clear on disk; and it has no TLS. cheroot (CherryPy's server) writes from the
    worker thread straight to the socket and does TLS with the standard ``ssl`` module.

    Threads: ``start()`` binds and serves on the thread "review-server"; cheroot's
    workers call the app. ``stop()`` (any thread) ends open streams at their next
    chunk and returns once the server thread has ended.
    """

    def __init__(self, listen: str, backend: ReviewBackend, tokens: TokenStore, clock: Clock,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 limits: ReviewLimits | None = None) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        self._bind = _split_listen(listen)
        self._tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None \
            else None
        self._stop_event = threading.Event()
        self.app = create_app(backend, tokens, clock, limits=limits,
                              stop_event=self._stop_event)
        self._lock = threading.Lock()  # guards _server and _thread (start/stop callers)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("ReviewServer already started")
            server = _Server(self._bind, self.app, numthreads=8, server_name="edge",
                                 timeout=10, shutdown_timeout=2)
            server.max_request_header_size = MAX_HEADER_BYTES
            server.max_request_body_size = MAX_BODY_BYTES
            if self._tls is not None:
                server.ssl_adapter = _tls_adapter(*self._tls)
            server.prepare()  # binds now, so that .port is known and errors surface here
            self.port = server.bind_addr[1]
            self._server = server
            self._thread = threading.Thread(target=self._serve, name="review-server",
                                            daemon=True)
            self._thread.start()
        log.info("review page on %s://%s:%d", self.scheme, self._bind[0], self.port)

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            log.exception("review page server failed")

    def stop(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
        if server is None or thread is None:
            return
        self._stop_event.set()  # streams end at their next chunk...
        server.cut_responses()  # ...or at once, if blocked sending to a stalled client
        server.stop()
        thread.join(timeout=10)


class _Server(wsgi.Server):
    """cheroot's server, logging to our log and able to cut responses short on stop.

    cheroot's own stop waits for its workers, and a worker blocked sending to a phone
    that stopped reading only notices at its socket timeout: stop() would take
    seconds. So the sockets of responses in progress are known (the gateway below
    registers them; any worker thread) and shut down on stop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = _Gateway
        self._responding: set[socket.socket] = set()
        self._responding_lock = threading.Lock()

    def error_log(self, msg: str = "", level: int = logging.INFO,
                  traceback: bool = False) -> None:
        """cheroot's own messages (bad requests, broken connections) into our log."""
        log.log(level, "review server: %s", msg, exc_info=traceback)

    def responding(self, conn_socket: socket.socket, active: bool) -> None:
        with self._responding_lock:
            if active:
                self._responding.add(conn_socket)
            else:
                self._responding.discard(conn_socket)

    def cut_responses(self) -> None:
        with self._responding_lock:
            sockets = list(self._responding)
        for conn_socket in sockets:
            try:
                conn_socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already: nothing to cut


class _Gateway(wsgi.Gateway_10):
    def respond(self) -> None:
        server: _Server = self.req.server
        conn_socket = self.req.conn.socket
        server.responding(conn_socket, True)
        try:
            super().respond()
        finally:
            server.responding(conn_socket, False)


def _tls_adapter(cert: Path, key: Path) -> Any:
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    for path in (cert, key):
        if not path.is_file():
            raise ValueError(f"review TLS file {path} does not exist")
    adapter = BuiltinSSLAdapter(str(cert), str(key))
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    return adapter
