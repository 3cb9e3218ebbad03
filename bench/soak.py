"""Soak: the daemon for an hour at 720p30, a request every minute, uploads to tus.

    python bench/soak.py [--minutes 60] [--request-every 60] [--seed 7]
                         [--width 1280 --height 720 --fps 30] [--max-bytes 1GB]

Needs mosquitto and tests/tus_server/node_modules (`npm ci --prefix tests/tus_server`).

Runs ``edge run`` as a real process (the virtual camera) with the real mosquitto
and the tus project's own server (tests/broker.py, tests/uploadservers.py), all
through the fault suite's harness (tests/faults.py). Every ``--request-every``
seconds a signed request for the last 25 s is published; once it is pending, the
owner approves or denies it at random (seeded), on the CLI. ``--max-bytes`` is
small enough that an hour also evicts.

The baseline is the daemon itself, early in the same run: its resident set
(/proc/PID/status VmRSS) and open file descriptors (/proc/PID/fd) once the first
approved request has been delivered (clip building, sealing, uploading and
SQLite have all been through once: steady state), against the same at the end.
Also printed: the figures right after start, the highest seen (sampled every
5 s), and the frames dropped in each minute (from the daemon's status file), to
tell a steady shortfall from a moment of contention. Targets: growth within
10 %, no frame dropped, no request lost (every published request is in the
store, every approved one delivered exactly once, every denied one sent nothing).
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the fault suite's harness and servers

from broker import MosquittoBroker  # noqa: E402
from faults import (  # noqa: E402
    Camera,
    process_figures,
    publish_request,
    request_payload,
    tus_metadata,
    wait_until,
)
from uploadservers import TusServer  # noqa: E402

GROWTH_LIMIT = 1.10
WINDOW_S = 25
SAMPLE_EVERY_S = 5.0


@dataclass
class Figures:
    rss_kib: int
    fds: int
    frames_dropped: int = 0  # the daemon's own count so far (status.json), for when drops happen

    def __str__(self) -> str:
        return f"RSS {self.rss_kib / 1024:7.1f} MiB, {self.fds:3d} open files"


@dataclass
class Soak:
    camera: Camera
    broker: MosquittoBroker
    tus: TusServer
    rng: random.Random
    intents: dict[str, str] = field(default_factory=dict)  # jti -> approve | deny
    samples: list[Figures] = field(default_factory=list)

    def figures(self) -> Figures:
        status = self.camera.daemon_status() or {}
        dropped = int(status.get("camera", {}).get("frames_dropped", 0))
        return Figures(*process_figures(self.camera.pid), frames_dropped=dropped)

    def request(self) -> None:
        """Publishes one request, waits until it is pending, decides it as the owner."""
        now_s = time.time()
        payload, jti = request_payload(
            window_start_s=now_s - WINDOW_S - 1,
            window_end_s=now_s - 1,
            upload_url=f"{self.tus.url}/",
        )
        self.intents[jti] = self.rng.choice(("approve", "deny"))
        publish_request(self.broker, payload)
        record = wait_until(
            lambda: next((r for r in self.camera.requests() if r["jti"] == jti), None),
            60,
            "the request to be taken in",
        )
        if record["state"] != "pending":
            print(f"  request {record['id']} is {record['state']}, not pending", flush=True)
            return
        verb = self.intents[jti]
        result = self.camera.edge(verb, str(record["id"]))
        print(
            f"  {time.strftime('%H:%M:%S')} request {record['id']}: {verb}"
            + ("" if result.returncode == 0 else f" FAILED: {result.stderr.decode().strip()}"),
            flush=True,
        )

    def delivered_all(self) -> bool:
        states = {r["jti"]: r["state"] for r in self.camera.requests()}
        return all(
            states.get(jti) == ("delivered" if intent == "approve" else "denied")
            for jti, intent in self.intents.items()
        )


def service_environment() -> dict[str, str]:
    """The ``Environment=`` of systemd/edge.service: the daemon runs here as it is
    installed (MALLOC_ARENA_MAX, which sets its memory use). A line may hold several
    assignments, quoted as systemd allows (``Environment="A=1 2" B=3``)."""
    unit = (REPO_ROOT / "systemd" / "edge.service").read_text()
    environment: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line.removeprefix("Environment=")):
                name, _, value = assignment.partition("=")
                environment[name] = value
    return environment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument(
        "--request-every", type=float, default=60.0, metavar="S",
        help="seconds between requests; 0 for none (recording only)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--max-bytes", default="1GB")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="edge-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    requests = "no requests"
    if args.request_every > 0:
        requests = f"a request every {args.request_every:g} s"
    print(
        f"soak: {args.minutes:g} min at {args.width}x{args.height}@{args.fps}, {requests} "
        f"(seed {args.seed}), max_bytes {args.max_bytes}; in {work}",
        flush=True,
    )
    broker = MosquittoBroker(work / "broker")
    tus = TusServer(work / "uploads")
    broker.start()
    tus.start()
    camera = Camera(
        work / "camera",
        broker_port=broker.port,
        camera={"width": args.width, "height": args.height, "fps": args.fps},
        buffer={"segment_seconds": 2, "max_bytes": args.max_bytes},
    )
    soak = Soak(camera, broker, tus, random.Random(args.seed))
    stop = threading.Event()
    try:
        camera.start(env=service_environment())
        camera.wait_ready(subscribed=True)
        at_start = soak.figures()
        wait_until(lambda: camera.frames() >= (WINDOW_S + 2) * args.fps, 60, "footage")
        started_s = time.monotonic()
        end_s = started_s + args.minutes * 60
        next_request_s = started_s if args.request_every > 0 else math.inf
        next_sample_s = started_s
        baseline: Figures | None = None
        while time.monotonic() < end_s:
            now_s = time.monotonic()
            if now_s >= next_request_s:
                soak.request()
                next_request_s += args.request_every
            if baseline is None and "approve" in soak.intents.values() and soak.delivered_all():
                baseline = soak.figures()
                print(f"  baseline (first approved request delivered): {baseline}", flush=True)
            if now_s >= next_sample_s:
                soak.samples.append(soak.figures())
                next_sample_s += SAMPLE_EVERY_S
            stop.wait(max(0.0, min(next_request_s, next_sample_s, end_s) - time.monotonic()))
        wait_until(soak.delivered_all, 180, "the last deliveries")
        at_end = soak.figures()
        status = camera.status()
        exit_code = camera.stop()
        records = {str(r["jti"]): r for r in camera.requests()}
        creations = [
            tus_metadata(e["upload_metadata"]).get("request_id")
            for e in tus.requests()
            if e["method"] == "POST"
        ]
    finally:
        camera.close()
        tus.stop()
        broker.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    baseline = baseline or at_start
    peak = Figures(max(s.rss_kib for s in soak.samples), max(s.fds for s in soak.samples))
    approved = [j for j, i in soak.intents.items() if i == "approve"]
    lost = [j for j in soak.intents if j not in records]
    wrong = [
        j
        for j, intent in soak.intents.items()
        if j in records
        and records[j]["state"] != ("delivered" if intent == "approve" else "denied")
    ]
    sent_for_denied = [j for j in creations if soak.intents.get(str(j)) != "approve"]
    sent_twice = [j for j in approved if creations.count(j) != 2]  # clip + manifest, once
    camera_status = status["daemon"]["camera"]
    rss_ratio = at_end.rss_kib / baseline.rss_kib
    fd_ratio = at_end.fds / baseline.fds
    print()
    print(f"after start:      {at_start}")
    print(f"baseline:         {baseline}")
    print(f"end:              {at_end}")
    print(f"highest sampled:  {peak}")
    per_minute = soak.samples[:: max(1, round(60 / SAMPLE_EVERY_S))]
    print("RSS each minute:  " + " ".join(f"{s.rss_kib / 1024:.1f}" for s in per_minute) + " MiB")
    drops = [b.frames_dropped - a.frames_dropped for a, b in itertools.pairwise(per_minute)]
    print("frames dropped each minute: " + " ".join(str(d) for d in drops))
    print(f"growth end/baseline: RSS {rss_ratio:.3f}x, open files {fd_ratio:.3f}x "
          f"(target <= {GROWTH_LIMIT:.2f}x)")
    print(
        f"frames: {camera_status['frames_captured']} captured, "
        f"{camera_status['frames_dropped']} dropped, {camera_status['segments']} segments; "
        f"buffer {status['buffer']['segments']} segments, {status['buffer']['bytes']} bytes, "
        f"{status['buffer']['dropped_segments']} dropped"
    )
    print(
        f"requests: {len(soak.intents)} published, {len(approved)} approved, "
        f"{len(soak.intents) - len(approved)} denied; lost {len(lost)}, wrong state {len(wrong)}, "
        f"uploads for denied {len(sent_for_denied)}, approved not uploaded exactly once "
        f"{len(sent_twice)}; daemon exit code {exit_code}"
    )
    ok = (
        rss_ratio <= GROWTH_LIMIT
        and fd_ratio <= GROWTH_LIMIT
        and camera_status["frames_dropped"] == 0
        and not (lost or wrong or sent_for_denied or sent_twice)
        and exit_code == 0
    )
    print("soak: OK" if ok else "soak: TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
