"""The ntfy notifier against a stand-in for an ntfy server.

A real ntfy server cannot be installed here; tests/ntfy_standin.py stands in for
it over real HTTP and checks what it receives against ntfy's documented publish
API (its docstring lists the pages and source files). The first tests check the
stand-in itself against the docs' own examples, so that passing against it means
something.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edge.share.notify import (
    NTFY_KIND_TAGS,
    NTFY_NOTICE_TAGS,
    NotifyConfigError,
    NotifyError,
    NtfyNotifier,
    parse_ntfy_url,
    read_token_file,
)
from edge.share.prompt import prompt_body
from ntfy_standin import (
    NTFY_EMOJI_EXCERPT,
    NtfyStandIn,
    RecordingServer,
    SelfSignedCert,
    sample_notice,
    sample_prompt,
)

TOKEN = "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "ntfy-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ntfy() -> Any:
    with NtfyStandIn(token=TOKEN) as server:
        yield server


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --- the stand-in, checked against the examples in docs.ntfy.sh/publish ----------


def test_standin_accepts_the_docs_publish_as_json_example() -> None:
    example = {
        "topic": "mytopic",
        "message": "Disk space is low at 5.1 GB",
        "title": "Low disk space alert",
        "tags": ["warning", "cd"],
        "priority": 4,
        "attach": "https://filesrv.lan/space.jpg",
        "filename": "diskspace.jpg",
        "click": "https://homecamera.lan/xasds1h2xsSsa/",
        "actions": [{"action": "view", "label": "Admin panel", "url": "https://filesrv.lan/admin"}],
    }
    with NtfyStandIn() as server:
        status, answer = _post(server.url + "/", json.dumps(example).encode())
    assert status == 200
    assert answer["event"] == "message" and answer["topic"] == "mytopic"
    assert isinstance(answer["id"], str) and isinstance(answer["time"], int)
    assert answer["actions"][0]["label"] == "Admin panel" and "id" in answer["actions"][0]


def test_standin_parses_the_docs_header_actions_like_their_json_form() -> None:
    """docs "Defining actions": the short header format and the JSON array say the same."""
    header = ("view, Open portal, https://home.nest.com/, clear=true; "
              "http, Turn down, https://api.nest.com/, body='{\"temperature\": 65}'")
    as_json = {
        "topic": "myhome",
        "message": "You left the house. Turn down the A/C?",
        "actions": [
            {"action": "view", "label": "Open portal", "url": "https://home.nest.com/",
             "clear": True},
            {"action": "http", "label": "Turn down", "url": "https://api.nest.com/",
             "body": "{\"temperature\": 65}"},
        ],
    }
    with NtfyStandIn() as server:
        status_h, _ = _post(server.url + "/myhome", b"You left the house. Turn down the A/C?",
                            {"Actions": header})
        status_j, _ = _post(server.url + "/", json.dumps(as_json).encode())
        assert (status_h, status_j) == (200, 200)
        by_header, by_json = server.published
    assert by_header == by_json == as_json


def test_standin_header_publishing_with_priority_names_and_tags() -> None:
    with NtfyStandIn() as server:
        status, answer = _post(server.url + "/phil_alerts",
                               b"Remote access to phils-laptop detected. Act right away.",
                               {"Title": "Unauthorized access detected", "Priority": "urgent",
                                "Tags": "warning,skull"})
        assert status == 200
        assert server.published == [{
            "topic": "phil_alerts",
            "message": "Remote access to phils-laptop detected. Act right away.",
            "title": "Unauthorized access detected", "priority": 5,
            "tags": ["warning", "skull"]}]
    assert answer["priority"] == 5


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"topic": "bad topic!"}, 400, 40009),
    ({"priority": 7}, 400, 40007),
    ({"priority": "high"}, 400, 40024),  # names only in the header; JSON takes an int
    ({"tags": "warning"}, 400, 40024),
    ({"titel": "typo"}, 400, 40024),
    ({"actions": [{"action": "view", "label": f"L{i}", "url": "https://a.example/"}
                  for i in range(4)]}, 400, 40018),
    ({"actions": [{"action": "view", "label": "No URL"}]}, 400, 40018),
    ({"actions": [{"action": "http", "label": "X", "url": "https://a.example/",
                   "method": "GET", "body": "x"}]}, 400, 40018),
    ({"actions": [{"action": "dance", "label": "X"}]}, 400, 40018),
    ({"message": "x" * 4096}, 413, 41301),  # a full 4,096-byte peek counts as over
    ({"click": "not a url"}, 400, 40000),
])
def test_standin_refuses_what_the_docs_do_not_allow(change: dict[str, Any], status: int,
                                                     code: int) -> None:
    message = {"topic": "porch-7f3a", "message": "hello", **change}
    with NtfyStandIn() as server:
        answer_status, answer = _post(server.url + "/", json.dumps(message).encode())
        assert server.published == []
    assert (answer_status, answer["code"]) == (status, code)
    assert answer["http"] == status and answer["error"]


def test_standin_checks_the_access_token() -> None:
    message = json.dumps({"topic": "porch-7f3a", "message": "hi"}).encode()
    with NtfyStandIn(token=TOKEN) as server:
        assert _post(server.url + "/", message)[1]["code"] == 40301  # anonymous: forbidden
        assert _post(server.url + "/", message,
                     {"Authorization": "Bearer tk_wrong"})[1]["code"] == 40101
        assert _post(server.url + "/", message, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        # docs: Basic auth with an empty user name carries a token too.
        assert _post(server.url + "/", message,
                     {"Authorization": "Basic OnRrX0FnUWRxN21WQm9GRDM3elFWTjI5Umh1TXpOSXoy"}
                     )[0] == 200
        assert len(server.published) == 2


# --- the notifier ----------------------------------------------------------------


def test_publishes_exactly_this_json_to_the_server_root(ntfy: NtfyStandIn,
                                                         token_file: Path) -> None:
    prompt = sample_prompt()
    NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file).send(prompt)

    assert ntfy.wait_for(1)
    request = ntfy.received[0]
    assert (request.method, request.path, request.status) == ("POST", "/", 200)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "topic": "porch-7f3a",
        "title": "Police request: Break-in on Hauptstraße",
        "message": prompt_body(prompt),
        "priority": 4,
        "tags": ["police_car"],
        "click": "https://cam.lan:8420/review/7?t=R3v13wT0k3n",
        "actions": [
            {"action": "view", "label": "Review",
             "url": "https://cam.lan:8420/review/7?t=R3v13wT0k3n"},
            {"action": "http", "label": "Deny", "url": "https://cam.lan:8420/deny/7",
             "method": "POST", "clear": True,
             "headers": {"Content-Type": "application/x-www-form-urlencoded"},
             "body": "token=D3nyT0k3n"},
            {"action": "view", "label": "Public posting",
             "url": "https://polizei.example/requests/2026-1234"},
        ],
    }
    assert ntfy.published == [request.json()]  # the stand-in accepted every field


def test_without_review_page_there_is_no_click_and_no_review_button(
        ntfy: NtfyStandIn, token_file: Path) -> None:
    NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file).send(
        sample_prompt(review_url=None, deny_url=None, deny_token=None))
    (message,) = ntfy.published
    assert "click" not in message
    assert [a["label"] for a in message["actions"]] == ["Public posting"]


def test_never_more_than_three_actions(ntfy: NtfyStandIn, token_file: Path) -> None:
    notifier = NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)
    for review in (None, "https://cam.lan/r"):
        for deny in (None, "https://cam.lan/d"):
            notifier.send(sample_prompt(review_url=review, deny_url=deny, deny_token=None))
    assert len(ntfy.published) == 4
    assert all(1 <= len(m["actions"]) <= 3 for m in ntfy.published)


def test_tags_are_emoji_short_codes_from_ntfys_list() -> None:
    assert set(NTFY_KIND_TAGS.values()) <= NTFY_EMOJI_EXCERPT
    assert set(NTFY_NOTICE_TAGS.values()) <= NTFY_EMOJI_EXCERPT


def test_fire_and_other_agencies_get_their_own_tag(ntfy: NtfyStandIn, token_file: Path) -> None:
    notifier = NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)
    notifier.send(sample_prompt(agency_kind="fire"))
    notifier.send(sample_prompt(agency_kind="other"))
    assert [m["tags"] for m in ntfy.published] == [["fire_engine"], ["rotating_light"]]


def test_missing_or_wrong_token_is_a_clear_final_error(ntfy: NtfyStandIn,
                                                       tmp_path: Path) -> None:
    with pytest.raises(NotifyError, match=r"HTTP 403: forbidden \(code 40301\)") as anonymous:
        NtfyNotifier(f"{ntfy.url}/porch-7f3a").send(sample_prompt())
    wrong = tmp_path / "wrong"
    wrong.write_text("tk_wrong\n")
    with pytest.raises(NotifyError, match=r"HTTP 401: unauthorized \(code 40101\)") as refused:
        NtfyNotifier(f"{ntfy.url}/porch-7f3a", wrong).send(sample_prompt())
    assert not anonymous.value.retryable and not refused.value.retryable
    assert ntfy.published == []


def test_server_trouble_is_retryable(ntfy: NtfyStandIn, token_file: Path) -> None:
    ntfy.fail_next(1, status=503)
    notifier = NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)
    with pytest.raises(NotifyError, match="HTTP 503") as failure:
        notifier.send(sample_prompt())
    assert failure.value.retryable
    notifier.send(sample_prompt())
    assert len(ntfy.published) == 1


def test_an_answer_that_is_not_ntfys_is_an_error(token_file: Path) -> None:
    with RecordingServer() as not_ntfy:  # answers 200 {} to everything
        with pytest.raises(NotifyError, match="without a message object"):
            NtfyNotifier(f"{not_ntfy.url}/porch-7f3a", token_file).send(sample_prompt())


def test_unreachable_server_is_an_error_within_the_timeout(token_file: Path) -> None:
    with RecordingServer() as server:
        port = server.port
    with pytest.raises(NotifyError, match=r"127\.0\.0\.1"):
        NtfyNotifier(f"http://127.0.0.1:{port}/porch-7f3a", token_file,
                     timeout_s=2).send(sample_prompt())


def test_notices_go_out_as_short_messages(ntfy: NtfyStandIn, token_file: Path) -> None:
    notifier = NtfyNotifier(f"{ntfy.url}/porch-7f3a", token_file)
    notifier.send_notice(sample_notice())
    notifier.send_notice(sample_notice(kind="upload_failed", detail="HTTP 503"))
    delivered, failed = ntfy.published
    assert delivered["title"] == "Delivered: Break-in on Hauptstraße"
    assert (delivered["priority"], delivered["tags"]) == (3, ["outbox_tray"])
    assert (failed["priority"], failed["tags"]) == (4, ["warning"])
    assert "actions" not in delivered and "click" not in delivered


def test_https_is_verified(tmp_path: Path, token_file: Path) -> None:
    cert = SelfSignedCert.create(str(tmp_path))
    with NtfyStandIn(token=TOKEN, tls=cert.server_context) as server:
        url = f"{server.url}/porch-7f3a"
        with pytest.raises(NotifyError, match="certificate not trusted"):
            NtfyNotifier(url, token_file).send(sample_prompt())
        assert server.published == []
        # Trusting that certificate (a self-hoster's own CA) makes it work.
        NtfyNotifier(url, token_file, ssl_context=cert.client_context()).send(sample_prompt())
        assert len(server.published) == 1


def test_plain_http_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture,
                                              token_file: Path) -> None:
    with caplog.at_level(logging.WARNING, logger="edge.share.notify"):
        NtfyNotifier("http://ntfy.lan/porch-7f3a", token_file)
    assert "prompts cross the network in the clear" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.share.notify"):
        NtfyNotifier("https://ntfy.example.org/porch-7f3a", token_file)
    assert caplog.text == ""


@pytest.mark.parametrize(("url", "server", "topic"), [
    ("https://ntfy.example.org/porch-7f3a", "https://ntfy.example.org/", "porch-7f3a"),
    ("https://ntfy.example.org/porch-7f3a/", "https://ntfy.example.org/", "porch-7f3a"),
    ("http://192.168.1.5:8080/porch_1", "http://192.168.1.5:8080/", "porch_1"),
    ("https://example.org/ntfy/porch", "https://example.org/ntfy/", "porch"),
])
def test_ntfy_url_splits_into_server_root_and_topic(url: str, server: str, topic: str) -> None:
    assert parse_ntfy_url(url) == (server, topic)


@pytest.mark.parametrize(("url", "reason"), [
    ("https://ntfy.example.org", "must end in a topic"),
    ("https://ntfy.example.org/", "must end in a topic"),
    ("https://ntfy.example.org/porch 7f3a", "not a usable URL"),
    ("https://ntfy.example.org/porch.7f3a", "must end in a topic"),
    ("https://ntfy.example.org/" + "a" * 65, "must end in a topic"),
    ("https://user:tk_x@ntfy.example.org/porch", "must not carry credentials"),
    ("https://ntfy.example.org/porch?auth=x", "must not have a ?query"),
    ("ftp://ntfy.example.org/porch", "must start with https://"),
    ("https://ntfy.example.org:99999/porch", "not a valid URL"),
])
def test_bad_ntfy_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(NotifyConfigError, match=re.escape(reason)):
        NtfyNotifier(url)


def test_token_file_is_read_bounded_and_stripped(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\r\n")
    path.chmod(0o600)
    assert read_token_file(path) == TOKEN
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edge.share.notify"):
        read_token_file(path)
    assert "readable by other users" in caplog.text


@pytest.mark.parametrize(("content", "reason"), [
    (None, "does not exist"),
    (b"", "is empty"),
    (b" \n\n", "is empty"),
    (b"tk_one tk_two", "alone on one line"),
    (b"tk_one\nX-Injected: 1", "alone on one line"),
    ("tk_ünïcode".encode(), "non-ASCII"),
    (b"x" * 2000, "larger than 1024 bytes"),
])
def test_bad_token_files_are_refused_with_a_reason(tmp_path: Path, content: bytes | None,
                                                   reason: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(NotifyConfigError, match=reason):
        NtfyNotifier("https://ntfy.example.org/porch-7f3a", path)


def test_token_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotifyConfigError, match="cannot be read"):
        read_token_file(tmp_path)
