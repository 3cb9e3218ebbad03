"""The commands other than `run` and `demo`: each reads the shared state under
``device.data_dir`` (or a payload) and prints a result. Errors a user can fix
are raised as ``UserError`` and shown by the CLI as one line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from edge.cli import UserError
from edge.clock import SystemClock
from edge.config import Config
from edge.priority import yield_to_recording
from edge.units import parse_time_ms

MAX_PAYLOAD_READ_BYTES = 1024 * 1024  # far above the spec's 65,536: too_large still judged


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _time_arg(text: str, name: str, now_ms: int) -> int:
    try:
        return parse_time_ms(text, now_ms)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}", exit_code=2) from None


def request_check(config: Config, payload_file: Path | None, now_text: str | None) -> int:
    from edge.daemon import verifier_inputs
    from edge.share.verify import check_exit_status, check_request, render_check

    now_ms = _time_arg(now_text, "--now", _now_ms()) if now_text else _now_ms()
    if payload_file is None:
        payload = sys.stdin.buffer.read(MAX_PAYLOAD_READ_BYTES + 1)
    else:
        try:
            with open(payload_file, "rb") as handle:
                payload = handle.read(MAX_PAYLOAD_READ_BYTES + 1)
        except OSError as exc:
            raise UserError(f"{payload_file}: cannot read: {exc.strerror}") from None
    trust, policy, location = verifier_inputs(config)
    if location is None:
        raise UserError(
            "device.latitude and device.longitude are not set: a request cannot be matched "
            "without the camera's location",
            exit_code=2,
        )
    verdict = check_request(
        payload, now_s=now_ms / 1000, trust=trust, policy=policy, location=location
    )
    verdict = _as_duplicate_if_taken(config, verdict)
    print(render_check(verdict))
    return check_exit_status(verdict)


def _as_duplicate_if_taken(config: Config, verdict: Any) -> Any:
    """As the daemon would: a request this camera already accepted is a duplicate."""
    from edge.share.store import DB_NAME, RequestStore, StoreError
    from edge.share.verify import Accepted, Rejected

    if not isinstance(verdict, Accepted) or not (config.device.data_dir / DB_NAME).exists():
        return verdict
    try:
        with RequestStore(config.device.data_dir, SystemClock()) as store:
            taken = store.seen(verdict.request.iss, verdict.request.jti)
    except (StoreError, PermissionError):
        return verdict  # a store we cannot read says nothing either way
    if not taken:
        return verdict
    request = verdict.request
    return Rejected("duplicate", request.iss, request.jti, "already accepted by this camera")


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _open_reader(config: Config) -> Any:
    from edge.buffer.ring import RingReader

    if not config.device.data_dir.is_dir():
        raise UserError(
            f"{config.device.data_dir} does not exist: nothing recorded yet (start `edge run`)"
        )
    try:
        return RingReader.open(config.device.data_dir, keys_dir=config.keys_dir)
    except PermissionError as exc:
        raise UserError(
            f"{exc.filename}: permission denied (run as the owner of data_dir)"
        ) from None


def status(config: Config, *, as_json: bool) -> int:
    from edge.daemon import read_status

    with _open_reader(config) as reader:
        buffer = reader.status()
    running = read_status(config.device.data_dir)
    requests = _request_counts(config)
    if as_json:
        _print_json(
            {
                "buffer": buffer.as_json(),
                "daemon": running,
                "requests": requests,
            }
        )
        return 0
    print(_status_text(buffer, running, requests))
    return 0


def _request_counts(config: Config) -> dict[str, int] | None:
    from edge.share.store import DB_NAME, RequestStore

    if not (config.device.data_dir / DB_NAME).exists():
        return None
    with RequestStore(config.device.data_dir, SystemClock()) as store:
        return store.counts()


def _status_text(
    buffer: Any, running: dict[str, Any] | None, requests: dict[str, int] | None
) -> str:
    from edge.units import format_bytes, format_rfc3339_ms

    lines = []
    if running is None:
        lines.append("daemon:   not running")
    else:
        camera = running.get("camera", {})
        lines.append(
            f"daemon:   running (pid {running.get('pid')}), clock "
            + ("synchronised" if running.get("clock_synchronized") else "NOT synchronised")
        )
        lines.append(
            f"camera:   {camera.get('source')} ({camera.get('encoder')}): "
            f"{camera.get('frames_captured')} frames, "
            f"{camera.get('frames_dropped')} dropped, {camera.get('segments')} segments"
            + (f"; last error: {camera['last_error']}" if camera.get("last_error") else "")
        )
        for name, part in running.get("parts", {}).items():
            if name != "requests":  # read fresh from the store below
                lines.append(f"{name + ':':<9} {part}")
    if buffer.segments == 0:
        lines.append("buffer:   empty")
    else:
        lines.append(
            f"buffer:   {buffer.segments} segments, {format_bytes(buffer.bytes)}, "
            f"{format_rfc3339_ms(buffer.oldest_ms)} to {format_rfc3339_ms(buffer.newest_ms)}"
        )
        if len(buffer.spans) > 1:
            lines.append(f"          {len(buffer.spans) - 1} gap(s):")
            for before, after in zip(buffer.spans, buffer.spans[1:], strict=False):
                lines.append(
                    f"          no footage {format_rfc3339_ms(before.end_ms)} to "
                    f"{format_rfc3339_ms(after.start_ms)}"
                )
    if requests is not None:
        shown = ", ".join(f"{count} {state}" for state, count in requests.items() if count)
        lines.append(f"requests: {shown or 'none'}")
    return "\n".join(lines)


def export(config: Config, start_text: str, end_text: str, output: Path) -> int:
    from edge.buffer.clip import NoFootage, build_clip
    from edge.durable import replacing_durably
    from edge.units import format_rfc3339_ms

    yield_to_recording()  # it builds a clip beside the recording daemon
    now_ms = _now_ms()
    start_ms = _time_arg(start_text, "--start", now_ms)
    end_ms = _time_arg(end_text, "--end", now_ms)
    if end_ms <= start_ms:
        raise UserError("--end must be after --start", exit_code=2)
    if output.exists() and output.is_dir():
        raise UserError(f"{output} is a directory; give a file name such as clip.mp4", exit_code=2)
    with _open_reader(config) as reader:
        # Written as .NAME.part, fsynced, then renamed: the name only ever holds a
        # whole clip, even across a power cut, and the clip is on the disk (or the
        # USB stick) once this says it is written. Mode 0600: it is footage.
        temporary = output.with_name(f".{output.name}.part")
        try:
            with replacing_durably(output, temporary=temporary) as out:
                info = build_clip(reader, start_ms, end_ms, out)
        except NoFootage as exc:
            raise UserError(f"no footage: {exc}") from None
        except OSError as exc:
            raise UserError(f"{output}: cannot write: {exc.strerror or exc}") from None
    print(
        f"wrote {output}: {info.frames} frames, {format_rfc3339_ms(info.first_frame_ms)} to "
        f"{format_rfc3339_ms(info.last_frame_ms)}, sha256 {info.sha256}"
    )
    for gap in info.gaps:
        print(
            f"note: no footage from {format_rfc3339_ms(gap.after_ms)} to "
            f"{format_rfc3339_ms(gap.before_ms)}; the clip jumps across it"
        )
    for skipped in info.skipped:
        print(
            f"warning: skipped footage {format_rfc3339_ms(skipped.first_frame_ms)} to "
            f"{format_rfc3339_ms(skipped.last_frame_ms)}: {skipped.reason}",
            file=sys.stderr,
        )
    if not info.clock_synced:
        print(
            "warning: some of this footage was recorded before the clock was synchronised; "
            "its times may be wrong",
            file=sys.stderr,
        )
    return 0


def keys_init(config: Config) -> int:
    from edge.keys import init_keys

    try:
        created = init_keys(config.keys_dir)
    except PermissionError as exc:
        raise UserError(f"{exc.filename}: permission denied") from None
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"all keys already exist in {config.keys_dir}; nothing changed")
    return 0


def _store(config: Config) -> Any:
    from edge.share.store import DB_NAME, RequestStore, StoreError

    if not (config.device.data_dir / DB_NAME).exists():
        raise UserError("no requests yet: the daemon has not taken any in")
    try:
        return RequestStore(config.device.data_dir, SystemClock())
    except StoreError as exc:
        raise UserError(str(exc)) from None


def list_requests(config: Config, *, as_json: bool, show_all: bool) -> int:
    from edge.share.store import DB_NAME

    if not (config.device.data_dir / DB_NAME).exists():
        rows: list[dict[str, Any]] = []
    else:
        with _store(config) as store:
            rows = store.list(all=show_all)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no requests" + ("" if show_all else " (--all shows rejected ones too)"))
        return 0
    print(f"{'ID':>5}  {'STATE':<12} {'RECEIVED':<20} {'AGENCY / REASON'}")
    for row in rows:
        what = row.get("agency") or row.get("reason") or ""
        if row["state"] == "rejected" and row.get("reason"):
            what = row["reason"]
        print(f"{row['id']:>5}  {row['state']:<12} {row['received'][:19]:<20} {what}")
    return 0


def _decisions(config: Config, store: Any) -> Any:
    from edge.buffer.ring import RingReader
    from edge.share.consent import Decisions
    from edge.share.footage import RingFootage
    from edge.share.outbox import Outbox

    reader = RingReader.open(config.device.data_dir, keys_dir=config.keys_dir)
    outbox = Outbox(config.device.data_dir / "outbox", config.keys_dir)
    return reader, Decisions(store, outbox, RingFootage(reader), SystemClock())


def _local_id(text: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise UserError(f"{text!r} is not a request id (see `edge requests`)", exit_code=2)
    return int(text)


def _who() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def approve(
    config: Config, request_id: str, start: str | None, end: str | None, sha256: str | None
) -> int:
    from edge.share.review_backend import ClipError, DecisionError
    from edge.units import format_rfc3339_ms

    yield_to_recording()  # it builds a clip beside the recording daemon
    local_id = _local_id(request_id)
    now_ms = _now_ms()
    start_ms = _time_arg(start, "--start", now_ms) if start else None
    end_ms = _time_arg(end, "--end", now_ms) if end else None
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UserError("--sha256 must be 64 hexadecimal characters", exit_code=2)
    with _store(config) as store:
        reader, decisions = _decisions(config, store)
        with reader:
            try:
                clip = decisions.approve(
                    local_id,
                    start_ms=start_ms,
                    end_ms=end_ms,
                    sha256=sha256,
                    channel="cli",
                    decided_by=_who(),
                    require_shown=False,
                )
            except (DecisionError, ClipError) as exc:
                raise UserError(str(exc)) from None
    print(
        f"approved request {local_id}: footage {format_rfc3339_ms(clip.first_frame_ms)} to "
        f"{format_rfc3339_ms(clip.last_frame_ms)}, {clip.size_bytes} bytes, sha256 {clip.sha256}"
    )
    print("the daemon uploads it to the agency; `edge requests` shows when it is delivered")
    return 0


def deny(config: Config, request_id: str) -> int:
    from edge.share.review_backend import DecisionError

    local_id = _local_id(request_id)
    with _store(config) as store:
        reader, decisions = _decisions(config, store)
        with reader:
            try:
                decisions.deny(local_id, channel="cli", decided_by=_who())
            except DecisionError as exc:
                raise UserError(str(exc)) from None
    print(f"denied request {local_id}: nothing is sent, now or later")
    return 0


def audit_verify(config: Config, head: str | None) -> int:
    from edge.share.audit import verify

    log_dir = config.device.data_dir / "audit"
    if not log_dir.is_dir():
        raise UserError(f"{log_dir} does not exist: no audit log yet")
    try:
        result = verify(log_dir, head=head)
    except ValueError as exc:
        raise UserError(str(exc), exit_code=2) from None
    for note in result.notes:
        print(f"note: {note}")
    if result.ok:
        print(result.summary())
        return 0
    print(f"edge: audit log: {result.summary()}", file=sys.stderr)
    return 1
