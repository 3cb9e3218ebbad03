"""Fault: kill -9 of the daemon at random moments (seeded), many times, through
recording, requests, prompts, decisions and uploads; then restart it.

The daemon is a real process (`edge run`), with the real mosquitto and the tus
project's own upload server, reached through a TcpLink that throttles the upload
(tests/faults.py) so that a clip takes seconds to send and a kill can land in the
middle of it. Each round starts the daemon and picks a moment (seeded): during
start-up; while it only records; just after a request is published (verification,
storing, prompting); while the owner's decision is being made on the CLI and
followed by the daemon; while a clip is being uploaded. Then SIGKILL. Sometimes
the owner decides while the daemon is down. Every request has an intent drawn at
random: approve, deny, or leave pending.

After every kill and restart:
- nothing stored is lost: every segment ever listed is still listed and decrypts,
  and the footage listed before the kill exports (build_clip, as `edge export`)
  and decodes with its time strips in order;
- nothing was sent that was not approved: every upload the server has names an
  approved request;
- pending requests stay pending, denied ones never move, nothing fails or expires;
- the audit log verifies (a torn tail the writer repairs is fine).
At the end the daemon recovers by itself: every approved request is delivered
exactly once (one complete upload per file, a resumed tus upload being one
upload; the clip's SHA-256 is the manifest's), every published request is in the
store, `edge export` of all of it decodes, and `edge audit verify` passes.

``EDGE_FAULT_KILLS`` sets the number of kills (CI: 18; bench/faults.py: more),
``EDGE_FAULT_SEED`` the seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from broker import MosquittoBroker
from conftest import REPO_ROOT
from edge.buffer.clip import build_clip
from edge.buffer.ring import RingReader
from edge.clock import SystemClock
from edge.share.audit import verify as verify_audit
from edge.share.store import RequestStore
from edge.units import format_rfc3339_ms
from faults import (
    Camera,
    TcpLink,
    publish_request,
    request_payload,
    running_camera,
    tus_metadata,
    wait_until,
)
from uploadservers import TusServer
from videotools import decode

SEED = int(os.environ.get("EDGE_FAULT_SEED", "20261129"))
KILLS = int(os.environ.get("EDGE_FAULT_KILLS", "18"))
BUDGET_S = 60.0 + 7.0 * KILLS
UPLINK_BYTES_PER_S = 150_000  # a ~10 s clip (~500 kB here) takes seconds to send
WINDOW_S = 10
MOMENTS = ("startup", "record", "request", "decision", "upload")
MOMENT_WEIGHTS = (2, 1, 2, 3, 5)
INTENTS = ("approve", "deny", "leave")
INTENT_WEIGHTS = (3, 2, 1)


class Story:
    """What the test did and therefore expects; checks the camera's files against it."""

    def __init__(self, camera: Camera, broker: MosquittoBroker, tus: TusServer, link: TcpLink):
        self.camera = camera
        self.broker = broker
        self.tus = tus
        self.link = link
        self.intent: dict[str, str] = {}  # jti -> approve | deny | leave
        self.decided: set[str] = set()  # jtis whose decision the CLI has made
        self.segments: set[str] = set()  # every segment file ever listed
        self.moments: list[str] = []

    # -- acting

    def publish(self, rng: random.Random) -> str:
        now_s = time.time()
        payload, jti = request_payload(
            window_start_s=now_s - WINDOW_S - 1,
            window_end_s=now_s - 1,
            upload_url=f"http://127.0.0.1:{self.link.port}/files/",
        )
        self.intent[jti] = rng.choices(INTENTS, INTENT_WEIGHTS)[0]
        publish_request(self.broker, payload)
        return jti

    def records(self) -> dict[str, dict[str, object]]:
        """The store's rows by jti, read as `edge requests --all --json` reads them."""
        with RequestStore(self.camera.data_dir, SystemClock()) as store:
            return {str(row["jti"]): row for row in store.list(all=True) if row["jti"]}

    def undecided(self, intent: str | None = None) -> list[tuple[str, int]]:
        """Pending requests the owner will decide on (approve or deny), (jti, id)."""
        return [
            (jti, int(row["id"]))  # type: ignore[call-overload]
            for jti, row in self.records().items()
            if row["state"] == "pending"
            and self.intent[jti] != "leave"
            and (intent is None or self.intent[jti] == intent)
        ]

    def decide(self, jti: str, request_id: int) -> subprocess.Popen[bytes]:
        """The owner's decision on the CLI, as its own process (the daemon may die meanwhile)."""
        self.decided.add(jti)
        verb = "approve" if self.intent[jti] == "approve" else "deny"
        config = str(self.camera.config)
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", config, verb, str(request_id)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def wait_pending(self, jti: str, timeout_s: float = 30) -> int:
        row = wait_until(
            lambda: self.records().get(jti), timeout_s, "the request to be stored",
            describe=self.camera.log_tail,
        )
        assert row["state"] == "pending", row
        return int(row["id"])  # type: ignore[call-overload]

    # -- checking

    def check_footage(self) -> None:
        """Every segment ever listed is still listed and opens; the newest footage exports."""
        with RingReader.open(self.camera.data_dir) as reader:
            records = reader.overlapping(0, 2**62)
            listed = {r.file_name for r in records}
            lost = self.segments - listed
            assert not lost, f"{len(lost)} stored segments lost"
            self.segments |= listed
            assert reader.verify() == []
            if not records:
                return
            newest = max(records, key=lambda r: r.meta.last_frame_ms)
            start_ms = newest.meta.last_frame_ms - 8_000
            out = io.BytesIO()
            info = build_clip(reader, start_ms, newest.meta.last_frame_ms, out)
        assert info.skipped == ()
        assert info.last_frame_ms == newest.meta.last_frame_ms
        times = [frame.capture_time_ms for frame in decode(out.getvalue())]
        assert len(times) == info.frames
        assert times == sorted(times) and len(set(times)) == len(times)
        assert times[-1] == newest.meta.last_frame_ms

    def check_requests(self) -> None:
        """Nothing sent unless approved; no decision undone; nothing failed or expired."""
        records = self.records()
        for jti, row in records.items():
            state, intent = row["state"], self.intent[jti]
            assert state not in ("failed", "expired", "rejected", "not_matching"), row
            if intent == "leave" or jti not in self.decided:
                assert state == "pending", row
            elif intent == "deny":
                assert state in ("pending", "denied"), row
            else:
                assert state in ("pending", "approved", "delivered"), row
        approved_jtis = {j for j, r in records.items() if r["state"] in ("approved", "delivered")}
        sent_for = {
            tus_metadata(event["upload_metadata"]).get("request_id")
            for event in self.tus.requests()
            if event["method"] == "POST"
        }
        assert sent_for <= approved_jtis, sent_for - approved_jtis

    def check_audit(self) -> None:
        result = verify_audit(self.camera.data_dir / "audit")
        assert result.ok, result.summary()

    def check_all(self) -> None:
        self.check_footage()
        self.check_requests()
        self.check_audit()


def finished(process: subprocess.Popen[bytes], *, must_succeed: bool = False) -> None:
    out, err = process.communicate(timeout=60)
    if must_succeed:
        assert process.returncode == 0, (out + err).decode()


def one_round(story: Story, rng: random.Random, pause: threading.Event) -> str:
    """Starts the daemon, brings it to a random moment, and kills it there."""
    camera = story.camera
    camera.start()
    moment = rng.choices(MOMENTS, MOMENT_WEIGHTS)[0]
    deciding: subprocess.Popen[bytes] | None = None
    if moment == "startup":
        # Imports, key checks, ring reconcile, audit repair, store, broker connect.
        pause.wait(rng.uniform(0.2, 3.0))
    else:
        camera.wait_ready(subscribed=True)
        story.check_footage()  # after the restart: nothing stored was lost
        if moment == "record":
            pause.wait(rng.uniform(0.5, 3.0))
        elif moment == "request":
            story.publish(rng)
            pause.wait(rng.uniform(0.0, 1.5))  # verifying, storing, prompting
        elif moment == "decision":
            if not story.undecided():
                story.wait_pending(story.publish(rng))
            candidates = story.undecided()
            if candidates:
                deciding = story.decide(*rng.choice(candidates))
                pause.wait(rng.uniform(0.0, 2.5))  # the CLI, then the daemon following it
        elif moment == "upload":
            records = story.records()
            if not any(r["state"] == "approved" for r in records.values()):
                todo = story.undecided("approve")
                if not todo:
                    jti = story.publish(rng)
                    story.intent[jti] = "approve"
                    todo = [(jti, story.wait_pending(jti))]
                finished(story.decide(*todo[0]), must_succeed=True)
            sent = story.link.upstream_bytes
            try:
                story.link.wait_for(
                    lambda: story.link.upstream_bytes > sent + 4096, 20, "upload bytes"
                )
            except AssertionError:
                pass  # the upload finished already (a small clip): kill anyway
            pause.wait(rng.uniform(0.0, 2.5))
    camera.kill()
    if rng.random() < 0.7:
        # A power cut takes the network with it: what the daemon had written to its
        # socket but the link had not passed on yet is lost too. (A bare kill -9
        # lets the kernel send it: both happen.)
        story.link.cut()
    if deciding is not None:
        finished(deciding)  # whatever it printed: the store is the truth
    if rng.random() < 0.25:
        # The owner decides while the daemon is down.
        candidates = story.undecided()
        if candidates:
            finished(story.decide(*rng.choice(candidates)), must_succeed=True)
    story.check_requests()
    story.check_audit()
    return moment


@pytest.mark.slow
def test_kill_9_at_random_moments(
    tmp_path: Path, broker: MosquittoBroker, tus: TusServer
) -> None:
    started_s = time.monotonic()
    rng = random.Random(SEED)
    link = TcpLink(tus.port, upstream_bytes_per_s=UPLINK_BYTES_PER_S)
    camera = Camera(tmp_path / "camera", broker_port=broker.port)
    story = Story(camera, broker, tus, link)
    pause = threading.Event()  # never set: waits out random moments
    try:
        with running_camera(camera):
            # Some footage first, so that the first requests match.
            camera.start()
            camera.wait_ready(subscribed=True)
            wait_until(lambda: camera.frames() >= WINDOW_S * 10, 40, "footage for requests")
            camera.kill()
            for _ in range(KILLS):
                story.moments.append(one_round(story, rng, pause))
                story.check_all()

            # The daemon recovers by itself; the owner decides what is left.
            camera.start()
            camera.wait_ready(subscribed=True)
            for jti, request_id in story.undecided():
                finished(story.decide(jti, request_id), must_succeed=True)
            final_state = {"approve": "delivered", "deny": "denied", "leave": "pending"}

            def settled() -> dict[str, dict[str, object]] | None:
                rows = story.records()
                done = all(r["state"] == final_state[story.intent[j]] for j, r in rows.items())
                return rows if done else None

            records = wait_until(
                settled,
                90,
                "every approved request delivered",
                describe=lambda: str({j[:8]: r["state"] for j, r in story.records().items()}),
            )
            assert set(records) == set(story.intent), "a published request was lost"
            story.check_all()
            check_each_delivered_once(tus, records)

            # What a user runs: status, export of everything recorded, audit verify.
            status = camera.status()
            assert status["daemon"]["camera"]["frames_dropped"] == 0
            assert status["buffer"]["segments"] == len(story.segments)
            assert camera.stop() == 0
            export = tmp_path / "all.mp4"
            printed = camera.export(
                status["buffer"]["oldest"], status["buffer"]["newest"], export
            )
            assert "skipped" not in printed
            times = [frame.capture_time_ms for frame in decode(export)]
            assert times == sorted(times) and len(set(times)) == len(times)
            assert format_rfc3339_ms(times[-1]) == status["buffer"]["newest"]
            camera.audit_verify()
    finally:
        link.close()
    elapsed_s = time.monotonic() - started_s
    counts = {m: story.moments.count(m) for m in MOMENTS}
    intents = {i: list(story.intent.values()).count(i) for i in INTENTS}
    patches = [e for e in tus.requests() if e["method"] == "PATCH"]
    resumed = [e for e in patches if e["upload_offset"] not in ("0", None)]
    print(
        f"{KILLS} kills {counts}; {len(story.intent)} requests {intents}; "
        f"{len(resumed)} uploads resumed from an offset; "
        f"{len(story.segments)} segments; {elapsed_s:.1f} s"
    )
    assert elapsed_s < BUDGET_S, f"took {elapsed_s:.1f} s, budget {BUDGET_S:.0f} s"


def check_each_delivered_once(tus: TusServer, records: dict[str, dict[str, object]]) -> None:
    """One complete upload per file of each delivery, nothing for any other request.

    A kill between the server creating an upload and the daemon saving its URL can
    leave an empty upload behind (the agency never receives a byte of it); the
    bytes themselves go once."""
    by_name: dict[str, list[tuple[int, Path]]] = {}
    for info_path in tus.storage_dir.glob("*.json"):
        info = json.loads(info_path.read_text())
        name = (info.get("metadata") or {}).get("filename", info["id"])
        by_name.setdefault(name, []).append((int(info["size"]), tus.storage_dir / info["id"]))
    expected: dict[str, str | None] = {}
    for row in records.values():
        if row["state"] == "delivered":
            expected[f"{row['delivery_id']}.mp4"] = str(row["clip_sha256"])
            expected[f"{row['delivery_id']}.manifest.jws"] = None
    assert set(by_name) == set(expected), set(by_name) ^ set(expected)
    for name, uploads in by_name.items():
        complete = [path for size, path in uploads if path.stat().st_size == size]
        assert len(complete) == 1, (name, uploads)
        empty = [path for size, path in uploads if path.stat().st_size == 0]
        assert len(complete) + len(empty) == len(uploads), (name, uploads)
        if empty:
            print(f"{name}: {len(empty)} empty upload(s) left by a kill right after creation")
        if expected[name] is not None:
            assert hashlib.sha256(complete[0].read_bytes()).hexdigest() == expected[name]
