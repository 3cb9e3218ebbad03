"""A recording HTTP server that STANDS IN FOR A REAL NTFY SERVER.

A real ntfy server cannot be installed on these machines (no Go toolchain, no
ntfy package, no internet beyond package registries), so the notifier tests
publish to this stand-in over real HTTP on a free local port instead. It is the
only stand-in in these tests.

It accepts ONLY what ntfy's documented publish API accepts and checks every
published field against the documentation, line by line:

- docs.ntfy.sh/publish ("Publish as JSON": PUT/POST the JSON object to the root
  URL, its field table; "Message priority"; "Tags & emojis"; "Click action";
  "Action buttons": at most three, `view`/`broadcast`/`http`/`copy` and their
  field tables; "Access tokens": `Authorization: Bearer <token>`;
  "Limitations": message 4,096 bytes, title 1 KB, all tags 512 bytes;
  "List of all parameters": the X-* headers and their aliases);
- docs.ntfy.sh/subscribe/api ("JSON message format": the answer's fields);
- ntfy's source for what the docs leave open: server/server.go
  (transformBodyJSON: JSON bodies up to 2 x 4,096 bytes, topic regex),
  server/actions.go (actionsMax = 3, label and url required, no body with
  GET/HEAD, the simple `X-Actions` format), server/errors.go (error answers
  `{"code": 40101, "http": 401, "error": "unauthorized", "link": ...}`).

Where the stand-in is STRICTER than ntfy, so that a mistake of ours cannot pass
unnoticed, it says so in its error text ("stand-in:"):
- a JSON field or action key the docs do not list is refused (ntfy's Go decoder
  silently drops it: a misspelt field would vanish without a word);
- priority 0 is refused (the docs allow 1-5; ntfy treats 0 as "not set");
- a message of 4,096 bytes or more, or not UTF-8, is refused (ntfy would turn it
  into a file attachment, never what a prompt wants);
- a tag containing a comma is refused (ntfy joins JSON tags with commas and
  splits them again, so it would become two tags).
Not modelled: query-parameter publishing, RFC 2047 encoded headers, e-mail,
calls, delays, caching, Firebase, rate limits, attachments by upload.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

MESSAGE_LIMIT_BYTES = 4096  # docs: "Each message can be up to 4,096 bytes long"
JSON_BODY_LIMIT_BYTES = 2 * MESSAGE_LIMIT_BYTES  # server.go: MessageLimit*2 for JSON
TITLE_LIMIT_BYTES = 1024  # docs: "The message title is limited to 1 KB"
TAGS_LIMIT_BYTES = 512  # docs: "all tags combined to 512 bytes"
ACTIONS_MAX = 3  # docs: "up to three user actions"; actions.go: actionsMax = 3
CACHE_DURATION_S = 12 * 3600  # docs: messages are cached for 12 hours by default
TOPIC_RE = re.compile(r"[-_A-Za-z0-9]{1,64}")  # docs: "Picking a topic"
PRIORITY_NAMES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}

# docs "Publish as JSON" field table: name -> JSON type.
JSON_FIELDS: dict[str, type] = {
    "topic": str, "message": str, "title": str, "tags": list, "priority": int,
    "actions": list, "click": str, "attach": str, "markdown": bool, "icon": str,
    "filename": str, "delay": str, "timezone": str, "email": str, "call": str,
    "sequence_id": str,
}
# docs "Action buttons" field tables: action -> {field: type}, and required fields.
ACTION_FIELDS: dict[str, dict[str, type]] = {
    "view": {"action": str, "label": str, "url": str, "clear": bool},
    "broadcast": {"action": str, "label": str, "intent": str, "extras": dict, "clear": bool},
    "http": {"action": str, "label": str, "url": str, "method": str, "headers": dict,
             "body": str, "clear": bool},
    "copy": {"action": str, "label": str, "value": str, "clear": bool},
}
ACTION_REQUIRED = {"view": ("label", "url"), "broadcast": ("label",),
                   "http": ("label", "url"), "copy": ("label", "value")}
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}

# Header aliases, from docs "List of all parameters" (case-insensitive).
HEADER_ALIASES = {
    "title": ("x-title", "title", "ti", "t"),
    "priority": ("x-priority", "priority", "prio", "p"),
    "tags": ("x-tags", "tags", "tag", "ta"),
    "click": ("x-click", "click"),
    "actions": ("x-actions", "actions", "action"),
    "attach": ("x-attach", "attach", "a"),
    "icon": ("x-icon", "icon"),
    "filename": ("x-filename", "filename", "file", "f"),
    "markdown": ("x-markdown", "markdown", "md"),
    "message": ("x-message", "message", "m"),
}

# Some emoji short codes, copied from docs.ntfy.sh/emojis (binwiederhier/ntfy
# docs/emojis.md); tests check our tags against this excerpt.
NTFY_EMOJI_EXCERPT = frozenset({
    "police_car", "oncoming_police_car", "fire_engine", "ambulance", "rotating_light",
    "warning", "hourglass", "hourglass_flowing_sand", "outbox_tray", "inbox_tray",
    "heavy_check_mark", "skull", "loudspeaker", "tada", "+1", "-1", "no_entry",
    "triangular_flag_on_post", "video_camera", "camera", "lock", "key", "bell",
})


class Reject(Exception):
    """An answer ntfy gives to a request it refuses (server/errors.go shape)."""

    def __init__(self, status: int, code: int, error: str, link: str = "") -> None:
        super().__init__(error)
        self.status, self.code, self.error, self.link = status, code, error, link

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"code": self.code, "http": self.status, "error": self.error}
        if self.link:
            answer["link"] = self.link
        return answer


def _bad_json(detail: str) -> Reject:
    return Reject(400, 40024, f"invalid request: request body must be valid JSON ({detail})")


def _bad_actions(detail: str) -> Reject:
    return Reject(400, 40018, f"invalid request: actions invalid, {detail}",
                  "https://ntfy.sh/docs/publish/#action-buttons")


def _bad_priority() -> Reject:
    return Reject(400, 40007, "invalid priority parameter",
                  "https://ntfy.sh/docs/publish/#message-priority")


@dataclass
class Received:
    """One request the server received, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int
    answer: dict[str, Any] | None
    published: dict[str, Any] | None = None  # the message as ntfy understood it
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, Any] | None]]


class RecordingServer:
    """A real threaded HTTP(S) server on a free local port that records every request.

    ``handle`` decides the answer (status, JSON object or None); the default
    answers 200 ``{}``. ``fail_next(n)`` makes the next n requests answer 503
    first, as an overloaded or restarting server would.
    """

    max_body_bytes = 1024 * 1024

    def __init__(self, handler: Handler | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._cond = threading.Condition()  # guards received and the failure counter
        self.received: list[Received] = []
        self._fail_remaining = 0
        self._fail_status = 503
        outer = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer._serve(self)

            do_PUT = do_GET = do_DELETE = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean; everything is in `received`

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RequestHandler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        # A short poll interval so that shutdown() returns at once.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        name="test-recording-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._cond:
            self._fail_remaining, self._fail_status = count, status

    def wait_for(self, count: int, timeout_s: float = 5.0) -> bool:
        """True once ``count`` requests have been received (waits on a condition)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= count, timeout_s)

    def handle(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, Any] | None]:
        if self._handler is not None:
            return self._handler(method, path, headers, body)
        return 200, {}

    def published_by_last_handle(self) -> dict[str, Any] | None:
        """What the last ``handle`` call on this thread accepted, for the record."""
        return None

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        headers = {key.lower(): value for key, value in request.headers.items()}
        length_text = headers.get("content-length", "0")
        status: int
        answer: dict[str, Any] | None
        published: dict[str, Any] | None = None
        error: str | None = None
        body = b""
        if not length_text.isdigit():
            status, answer = 411, {"error": "Content-Length required"}
        elif int(length_text) > self.max_body_bytes:
            status, answer = 413, {"error": "body too large"}
            request.close_connection = True
        else:
            body = request.rfile.read(int(length_text))
            with self._cond:
                failing = self._fail_remaining > 0
                if failing:
                    self._fail_remaining -= 1
                    fail_status = self._fail_status
            if failing:
                status, answer = fail_status, {"code": 50001, "http": fail_status,
                                               "error": "stand-in: failing on purpose"}
            else:
                try:
                    status, answer = self.handle(request.command, request.path, headers, body)
                    published = self.published_by_last_handle()
                except Reject as reject:
                    status, answer, error = reject.status, reject.body(), reject.error
        # Recorded before answering, so a client that got its answer finds it recorded.
        with self._cond:
            self.received.append(Received(request.command, request.path, headers, body,
                                          status, answer, published, error))
            self._cond.notify_all()
        data = json.dumps(answer).encode() + b"\n" if answer is not None else b""
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


class NtfyStandIn(RecordingServer):
    """Stands in for an ntfy server with one access token for writing.

    ``token=None`` is a server without access control. ``published`` lists the
    messages it accepted, as ntfy understood them (JSON and header publishing
    give the same shape).
    """

    def __init__(self, token: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(None, tls)
        self.token = token
        self._local = threading.local()

    def published_by_last_handle(self) -> dict[str, Any] | None:
        return getattr(self._local, "published", None)

    @property
    def published(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r.published for r in self.received if r.published is not None]

    def handle(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, Any] | None]:
        self._local.published = None
        route = urlsplit(path)
        if method not in ("POST", "PUT"):
            raise Reject(404, 40401, "page not found")
        if route.query:
            raise Reject(400, 40000, "stand-in: query-parameter publishing is not modelled")
        self._authenticate(headers)
        if route.path == "/":
            message = parse_json_publish(body)
        else:
            message = parse_header_publish(route.path, headers, body)
        self._authorize()
        self._local.published = message
        return 200, answer_for(message)

    def _authenticate(self, headers: dict[str, str]) -> None:
        """docs "Access tokens": Bearer, or Basic with an empty user and the token."""
        if self.token is None:
            return
        value = headers.get("authorization", "").strip()
        self._local.authenticated = False
        if not value:
            return  # anonymous: refused below, as ntfy refuses writes to a protected topic
        scheme, _, credential = value.partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic":
            import base64
            import binascii

            try:
                user, _, credential = base64.b64decode(credential, validate=True) \
                    .decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Reject(401, 40101, "unauthorized",
                             "https://ntfy.sh/docs/publish/#authentication") from None
            if user:
                raise Reject(401, 40101, "unauthorized",
                             "https://ntfy.sh/docs/publish/#authentication")
        elif scheme.lower() != "bearer":
            return  # ntfy ignores other schemes: the visitor stays anonymous
        if not secrets.compare_digest(credential.encode(), self.token.encode()):
            raise Reject(401, 40101, "unauthorized",
                         "https://ntfy.sh/docs/publish/#authentication")
        self._local.authenticated = True

    def _authorize(self) -> None:
        if self.token is not None and not getattr(self._local, "authenticated", False):
            raise Reject(403, 40301, "forbidden", "https://ntfy.sh/docs/publish/#authentication")


def parse_json_publish(body: bytes) -> dict[str, Any]:
    """A JSON publish (POST/PUT to the root URL), validated field by field."""
    if len(body) > JSON_BODY_LIMIT_BYTES:
        raise Reject(413, 41303, "JSON body too large")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _bad_json(str(error)) from None
    if not isinstance(value, dict):
        raise _bad_json("not a JSON object")
    for key, item in value.items():
        if key not in JSON_FIELDS:
            raise _bad_json(f"stand-in: field {key!r} is not in ntfy's JSON field table "
                            "(ntfy would silently drop it)")
        expected = JSON_FIELDS[key]
        if not isinstance(item, expected) or (expected is int and isinstance(item, bool)):
            raise _bad_json(f"field {key!r} must be a JSON {expected.__name__}")
    topic = value.get("topic")
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise Reject(400, 40009, "invalid request: topic invalid")
    message: dict[str, Any] = {"topic": topic}
    if "message" in value:
        message["message"] = value["message"]
    if "title" in value:
        message["title"] = value["title"]
    if "priority" in value:
        if value["priority"] not in (1, 2, 3, 4, 5):
            raise _bad_priority()
        message["priority"] = value["priority"]
    if "tags" in value:
        message["tags"] = value["tags"]
    if "click" in value:
        message["click"] = value["click"]
    if "actions" in value:
        message["actions"] = [_check_action(a) for a in _limit_actions(value["actions"])]
    for key in ("attach", "icon", "filename", "markdown", "delay", "timezone", "email",
                "call", "sequence_id"):
        if key in value:
            message[key] = value[key]
    return _check_message(message)


def parse_header_publish(path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A publish to the topic URL with X-* headers (docs "List of all parameters")."""
    topic = path.lstrip("/")
    if not TOPIC_RE.fullmatch(topic):
        raise Reject(400, 40009, "invalid request: topic invalid")

    def header(name: str) -> str | None:
        for alias in HEADER_ALIASES[name]:
            if alias in headers:
                return headers[alias].strip()
        return None

    if len(body) >= MESSAGE_LIMIT_BYTES:
        raise Reject(413, 41301, "stand-in: message of 4,096 bytes or more (ntfy would deliver "
                     "it as a file attachment, not as notification text)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject(400, 40011, "stand-in: message not UTF-8 (ntfy would deliver it as a "
                     "file attachment)") from None
    message: dict[str, Any] = {"topic": topic, "message": header("message") or text}
    if (title := header("title")) is not None:
        message["title"] = title
    if (priority := header("priority")) is not None:
        if priority in ("1", "2", "3", "4", "5"):
            message["priority"] = int(priority)
        elif priority.lower() in PRIORITY_NAMES:
            message["priority"] = PRIORITY_NAMES[priority.lower()]
        else:
            raise _bad_priority()
    if (tags := header("tags")) is not None:
        message["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
    if (click := header("click")) is not None:
        message["click"] = click
    if (actions := header("actions")) is not None:
        if actions.startswith("["):
            try:
                parsed = json.loads(actions)
            except ValueError as error:
                raise _bad_actions(f"JSON error: {error}") from None
            if not isinstance(parsed, list):
                raise _bad_actions("not a JSON array")
        else:
            parsed = parse_simple_actions(actions)
        message["actions"] = [_check_action(a) for a in _limit_actions(parsed)]
    for name in ("attach", "icon", "filename"):
        if (item := header(name)) is not None:
            message[name] = item
    if (markdown := header("markdown")) is not None:
        message["markdown"] = markdown.lower() in ("1", "yes", "true")
    return _check_message(message)


def _limit_actions(actions: list[Any]) -> list[Any]:
    if len(actions) > ACTIONS_MAX:
        raise _bad_actions(f"only {ACTIONS_MAX} actions allowed")
    return actions


def _check_action(action: Any) -> dict[str, Any]:
    """One action against its field table in docs "Action buttons"."""
    if not isinstance(action, dict):
        raise _bad_actions("an action must be a JSON object")
    kind = action.get("action")
    if not isinstance(kind, str) or kind.lower() not in ACTION_FIELDS:
        raise _bad_actions(f"parameter 'action' cannot be {kind!r}, valid values are "
                           "'view', 'broadcast', 'http' and 'copy'")
    kind = kind.lower()
    fields = ACTION_FIELDS[kind]
    for key, item in action.items():
        if key not in fields:
            raise _bad_actions(f"stand-in: key {key!r} is not a field of the {kind!r} action")
        if not isinstance(item, fields[key]):
            raise _bad_actions(f"field {key!r} of a {kind!r} action must be a "
                               f"{fields[key].__name__}")
    for key in ACTION_REQUIRED[kind]:
        if not action.get(key):
            raise _bad_actions(f"parameter '{key}' is required for action '{kind}'")
    if "url" in action and not _is_uri(action["url"]):
        raise _bad_actions(f"parameter 'url' is not a URL: {action['url']!r}")
    if kind == "http":
        if urlsplit(action["url"]).scheme not in ("http", "https"):
            raise _bad_actions("the url of an 'http' action must be http:// or https://")
        method = str(action.get("method", "POST")).upper()
        if method not in HTTP_METHODS:
            raise _bad_actions(f"stand-in: method {method!r} is not an HTTP method")
        if method in ("GET", "HEAD") and action.get("body"):
            raise _bad_actions(f"parameter 'body' cannot be set if method is {method}")
        for name, item in action.get("headers", {}).items():
            if not isinstance(name, str) or not isinstance(item, str):
                raise _bad_actions("headers must be a map of strings")
    if kind == "broadcast":
        for name, item in action.get("extras", {}).items():
            if not isinstance(name, str) or not isinstance(item, str):
                raise _bad_actions("extras must be a map of strings")
    return dict(action, action=kind)


def _check_message(message: dict[str, Any]) -> dict[str, Any]:
    """Limits from docs "Limitations", and the click URL."""
    text = message.get("message", "")
    # server.go peeks 4,096 bytes; a body that fills them counts as over the limit
    # (LimitReached = read == limit), and becomes an attachment.
    if len(text.encode()) >= MESSAGE_LIMIT_BYTES:
        raise Reject(413, 41301, "stand-in: message of 4,096 bytes or more (ntfy would deliver "
                     "it as a file attachment, not as notification text)")
    if len(message.get("title", "").encode()) > TITLE_LIMIT_BYTES:
        raise Reject(400, 40000, "invalid request: title too long (1 KB at most)")
    tags = message.get("tags", [])
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise _bad_json("tags must be non-empty strings")
        if "," in tag:
            raise _bad_json(f"stand-in: tag {tag!r} holds a comma; ntfy would split it")
    if len(",".join(tags).encode()) > TAGS_LIMIT_BYTES:
        raise Reject(400, 40000, "invalid request: tags too long (512 bytes at most)")
    if "click" in message and not _is_uri(message["click"]):
        raise Reject(400, 40000, f"stand-in: click is not a URL: {message['click']!r}")
    if "attach" in message and urlsplit(message["attach"]).scheme not in ("http", "https"):
        raise Reject(400, 40013, "invalid request: attachment URL is invalid",
                     "https://ntfy.sh/docs/publish/#attachments")
    if "icon" in message and urlsplit(message["icon"]).scheme not in ("http", "https"):
        raise Reject(400, 40021, "invalid request: icon URL is invalid",
                     "https://ntfy.sh/docs/publish/#icons")
    return message


def _is_uri(value: str) -> bool:
    """docs "Click action": http(s), mailto:, geo:, ntfy://, app links: any scheme."""
    if any(c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*", parts.scheme or ""):
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.hostname)
    return bool(parts.netloc or parts.path)


def answer_for(message: dict[str, Any]) -> dict[str, Any]:
    """ntfy's answer to a publish: the message object (docs "JSON message format")."""
    now_s = int(time.time())
    alphabet = string.ascii_letters + string.digits
    answer: dict[str, Any] = {
        "id": "".join(secrets.choice(alphabet) for _ in range(12)),
        "time": now_s,
        "expires": now_s + CACHE_DURATION_S,
        "event": "message",
        "topic": message["topic"],
    }
    for key in ("title", "tags", "click", "icon"):
        if key in message:
            answer[key] = message[key]
    if message.get("priority", 3) != 3:
        answer["priority"] = message["priority"]
    if "actions" in message:
        answer["actions"] = [
            {"id": "".join(secrets.choice(alphabet) for _ in range(10)), **a}
            for a in message["actions"]
        ]
    answer["message"] = message.get("message") or "triggered"  # docs: empty -> "triggered"
    return answer


_ACTION_KEY_RE = re.compile(r"([-.\w]+)\s*=\s*")


def parse_simple_actions(text: str) -> list[dict[str, Any]]:
    """The `X-Actions` short format, parsed as server/actions.go parses it.

    ``view, Open portal, https://home.nest.com/, clear=true; http, Turn down, https://..``
    """
    actions: list[dict[str, Any]] = []
    pos, end = 0, len(text)
    while pos < end:
        action: dict[str, Any] = {}
        section = 0
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            key = ""
            match = _ACTION_KEY_RE.match(text, pos)
            if match:
                key, pos = match.group(1), match.end()
            if pos < end and text[pos] in "\"'":
                quote, start = text[pos], pos + 1
                pos = start
                while True:
                    if pos >= end:
                        raise _bad_actions(f"unexpected end of input, quote started at "
                                           f"position {start}")
                    if text[pos] == quote and (pos == start or text[pos - 1] != "\\"):
                        break
                    pos += 1
                value = text[start:pos].replace("\\" + quote, quote)
                pos += 1
                while pos < end and text[pos] in " \t\r\n":
                    pos += 1
                if pos < end and text[pos] not in ",;":
                    raise _bad_actions(f"unexpected character {text[pos]!r} at position {pos}")
            else:
                start = pos
                while pos < end and text[pos] not in ",;":
                    pos += 1
                value = text[start:pos].strip()
            last = pos >= end or text[pos] == ";"
            pos += 1
            _populate_action(action, section, key, value)
            if last:
                break
            section += 1
        actions.append(action)
    return actions


def _populate_action(action: dict[str, Any], section: int, key: str, value: str) -> None:
    if not key:
        kind = str(action.get("action", "")).lower()
        if section == 0:
            key = "action"
        elif section == 1:
            key = "label"
        elif section == 2 and kind in ("view", "http"):
            key = "url"
        elif section == 2 and kind == "copy":
            key = "value"
        else:
            raise _bad_actions(f"term {value!r} unknown")
    if key.startswith("headers."):
        action.setdefault("headers", {})[key.removeprefix("headers.")] = value
    elif key.startswith("extras."):
        action.setdefault("extras", {})[key.removeprefix("extras.")] = value
    elif key.lower() == "clear":
        if value.lower() not in ("true", "yes", "1", "false", "no", "0"):
            raise _bad_actions(f"parameter 'clear' cannot be {value!r}, only boolean values "
                               "are allowed (true/yes/1/false/no/0)")
        action["clear"] = value.lower() in ("true", "yes", "1")
    elif key.lower() in ("action", "label", "url", "method", "body", "intent", "value"):
        action[key.lower()] = value
    else:
        raise _bad_actions(f"key {key!r} unknown")


@dataclass
class SelfSignedCert:
    """A throwaway certificate for 127.0.0.1, to test that https is verified."""

    cert_file: str
    key_file: str
    server_context: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(self.cert_file, self.key_file)

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this certificate alone."""
        return ssl.create_default_context(cafile=self.cert_file)

    @classmethod
    def create(cls, directory: str) -> SelfSignedCert:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test ntfy")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_file, key_file = f"{directory}/cert.pem", f"{directory}/key.pem"
        with open(cert_file, "wb") as out:
            out.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return cls(cert_file, key_file)


# --- Sample messages shared by the notifier tests ----------------------------------

# Sat 28 Nov 2026, 14:05-14:35 in Berlin (13:05-13:35 UTC); decide by Mon 30 Nov 14:05.
SAMPLE_WINDOW_START_MS = 1_795_871_100_000
SAMPLE_WINDOW_END_MS = 1_795_872_900_000
SAMPLE_DECIDE_BY_MS = 1_796_043_900_000


def sample_prompt(**changes: Any) -> Any:
    """A realistic prompt; keyword arguments replace fields."""
    from dataclasses import replace

    from edge.share.prompt import Prompt

    prompt = Prompt(
        request_id="7",
        agency_name="Polizei Berlin",
        agency_kind="police",
        title="Break-in on Hauptstraße",
        description="We are looking for footage of a grey van seen near Hauptstraße 12.",
        case_ref="2026-1234",
        public_url="https://polizei.example/requests/2026-1234",
        window_start_ms=SAMPLE_WINDOW_START_MS,
        window_end_ms=SAMPLE_WINDOW_END_MS,
        time_zone="Europe/Berlin",
        distance_m=123.4,
        footage_held_s=1780.0,
        footage_lost_to_pin_cap=False,
        footage_clock_unsynced=False,
        decide_by_ms=SAMPLE_DECIDE_BY_MS,
        review_url="https://cam.lan:8420/review/7?t=R3v13wT0k3n",
        deny_url="https://cam.lan:8420/deny/7",
        deny_token="D3nyT0k3n",
        audit_head="3fa9c2d1e0b4",
    )
    return replace(prompt, **changes)


def sample_notice(**changes: Any) -> Any:
    from dataclasses import replace

    from edge.share.prompt import Notice

    notice = Notice(kind="delivered", request_id="7", agency_name="Polizei Berlin",
                    title="Break-in on Hauptstraße", time_zone="Europe/Berlin",
                    at_ms=SAMPLE_WINDOW_END_MS + 3_600_000, audit_head="9d8c7b6a5f4e")
    return replace(notice, **changes)
