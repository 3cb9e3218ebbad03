"""Request intake under load: a real mosquitto, a real flood, the floor beside it.

    python bench/requests.py [--duration-s 30] [--rate 1000] [--garbage-rate 2000]
                             [--stage both|all|floor|transport|judge]

Each stage runs the same load against a fresh mosquitto on this machine, with
the camera side in its own process (so its CPU and RSS are its own) and the
publisher in another. ``both`` (the default) runs floor and judge; ``all`` adds
transport.

- floor: a bare paho subscriber (auto-ack, no queue, no work): the broker
  round trip alone.
- transport: edge.share.mqtt.RequestListener with a handler that only records
  the arrival (queue, worker thread, manual ack after the handler).
- judge: the daemon's own intake, wired as edge/sharing.py wires it:
  ``Intake`` (verify with edge.share.verify, match against the ring's footage
  through ``RingFootage``, keep in ``RequestStore``, audit in ``AuditLog``) as
  the RequestListener's handler, while the daemon's recording path
  (edge.daemon.build_recorder: the virtual camera at 1280x720, 30 fps, encoded
  and sealed into a real ``Ring``) records in the same process. ``on_pending``,
  which the daemon points at the owner prompt (consent), only notes the time
  here: the prompt is the consent issue's work, not the intake's.

The load, all on topics the camera subscribes to: --rate requests per second,
of which --matching-fraction are matching (a 300 m circle on the camera, a
window covering the last 5 minutes, so the footage recorded since the camera
process started) and the rest near misses (circles of 100..600 m whose centre
is 2..8 km away, inside the jurisdiction); plus --garbage-rate messages of 64..1023
random bytes. In the judge stage the requests are real: signed with Ed25519
as they are sent (one agency certificate for all, a fresh jti each, helpers
from tests/signing.py). In floor and transport they are stand-ins of the same
size carrying a header (kind, publish time).

Latency is publish -> handler (floor, transport) or publish -> ``pending``
stored (judge, matching requests) and publish -> ``not_matching`` stored (judge,
all requests): CLOCK_MONOTONIC is system-wide, so the two processes agree. The
judge camera reports its CPU while recording alone (before the flood) and
during the flood, per thread, its RSS, messages dropped by the listener,
matching requests lost, and frames the recording path dropped.

Goals (issue 4): no matching request lost, p99 within 250 ms of the floor, the
recording path drops no frame. Run it alone: other load shows in the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # broker.py (real mosquitto), signing.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py

import paho.mqtt.client as mqtt  # noqa: E402
from _common import (  # noqa: E402
    cpu_s,
    load_text,
    percentile,
    proc_status_mb,
    threads_cpu_delta,
    threads_cpu_s,
)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edge.share.mqtt import (  # noqa: E402
    DEFAULT_QUEUE_SIZE,
    IncomingMessage,
    RequestListener,
    subscription_topics,
)

CAMERA_LAT, CAMERA_LON, PRECISION = 47.6062, -122.3321, 5  # geohash c23nb62q; tests' LOCATION
PUBLISH_TOPICS = [  # coarser, own and finer cells, all ones the camera hears
    "edge/v1/req/c/2/3",
    "edge/v1/req/c/2/3/n/b",
    "edge/v1/req/c/2/3/n/b/6/2",
]
_HEADER = struct.Struct("!cdI")  # kind, publish time (monotonic s), sequence
TICK_S = 0.01
STAGES = ("floor", "transport", "judge")


# ---------------------------------------------------------------- signed requests


class SignedRequests:
    """Real assistance requests, signed as they are sent (tests/signing.py's keys and claims).

    One agency certificate (signed once by the platform key) for all of them,
    as a real agency sends; each request has its own jti and is signed anew.
    """

    def __init__(self, seed: int) -> None:
        from signing import REQUEST_HEADER, make_cert, request_claims

        now_s = time.time()
        self._header = REQUEST_HEADER
        self._cert = make_cert(now_s=now_s)  # valid from a minute ago for a year
        self._template = request_claims(now_s=now_s)
        self._rng = random.Random(seed)

    def make(self, matching: bool) -> tuple[str, bytes]:
        """(jti, MQTT payload) of a request posted now."""
        from edge.share.jws import sign_compact
        from signing import AGENCY_KEY, circle, rfc3339

        now_s = time.time()
        jti = str(uuid.uuid4())
        claims = dict(self._template)
        claims["jti"] = jti
        claims["public_url"] = f"https://platform.example.org/r/{jti}"
        claims["iat"] = int(now_s)
        claims["exp"] = int(now_s) + 3 * 86_400
        if matching:
            # The camera's own spot; the footage of the last 5 minutes (the camera
            # process records from before the flood starts).
            claims["area"] = circle(CAMERA_LAT, CAMERA_LON, 300)
            claims["window"] = {"start": rfc3339(now_s - 300), "end": rfc3339(now_s)}
        else:
            # A near miss: 2..8 km away in any direction (the jurisdiction is
            # +-0.5 degrees around the camera), never covering it.
            distance_m = self._rng.uniform(2000, 8000)
            bearing = self._rng.uniform(0, 2 * math.pi)
            lat = CAMERA_LAT + distance_m * math.cos(bearing) / 111_320
            lon = CAMERA_LON + distance_m * math.sin(bearing) / (
                111_320 * math.cos(math.radians(CAMERA_LAT))
            )
            radius_m = round(self._rng.uniform(100, 600), 1)
            claims["area"] = circle(round(lat, 6), round(lon, 6), radius_m)
            claims["window"] = {"start": rfc3339(now_s - 2400), "end": rfc3339(now_s - 600)}
        token = sign_compact(self._header, claims, AGENCY_KEY)
        return jti, json.dumps({"cert": self._cert, "request": token}).encode()

    def self_check(self) -> None:
        """Both kinds pass verification with the expected location match, or the bench
        would measure rejections instead of requests."""
        from edge.share.verify import Accepted, Policy, check_request
        from signing import LOCATION, trust_for

        for matching in (True, False):
            _, payload = self.make(matching)
            verdict = check_request(
                payload, now_s=time.time(), trust=trust_for(), policy=Policy(), location=LOCATION
            )
            if not isinstance(verdict, Accepted) or verdict.location_match != matching:
                raise SystemExit(f"bench request (matching={matching}) judged {verdict!r}")


# ---------------------------------------------------------------- publisher process


def _publish(port: int, stage: str, duration_s: float, rate: int, garbage_rate: int,
             matching_fraction: float) -> None:
    rng = random.Random(7)
    signed = SignedRequests(seed=11)
    signed.self_check()
    # Stand-ins (floor, transport) are the size of a real signed request.
    request_bytes = len(signed.make(False)[1])
    filler = rng.randbytes(request_bytes)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(5000)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    infos = []
    sent_requests = sent_garbage = sent_matching = 0
    published_s: dict[str, tuple[float, bool]] = {}  # judge: jti -> (publish time, matching)
    every = max(round(1 / matching_fraction), 1) if matching_fraction > 0 else 0
    pace = threading.Event()  # never set: its wait() paces the ticks
    start_s = time.monotonic()
    tick = 0
    behind_s = 0.0  # how late the publisher itself ran (a loaded machine shows here)
    while True:
        tick += 1
        due_s = start_s + tick * TICK_S
        elapsed_s = due_s - start_s
        if elapsed_s > duration_s:
            break
        behind_s = max(behind_s, time.monotonic() - due_s)
        want_requests = int(rate * elapsed_s)
        want_garbage = int(garbage_rate * elapsed_s)
        while sent_requests < want_requests:
            matching = every > 0 and sent_requests % every == every - 1
            sent_matching += matching
            topic = PUBLISH_TOPICS[sent_requests % 3]
            if stage == "judge":
                jti, payload = signed.make(matching)
                published_s[jti] = (time.monotonic(), matching)
            else:
                header = _HEADER.pack(b"M" if matching else b"N", time.monotonic(), sent_requests)
                payload = header + filler[: request_bytes - len(header)]
            infos.append(client.publish(topic, payload, qos=1))
            sent_requests += 1
        while sent_garbage < want_garbage:
            payload = b"G" + rng.randbytes(63 + sent_garbage % 961)
            infos.append(client.publish(PUBLISH_TOPICS[sent_garbage % 3], payload, qos=1))
            sent_garbage += 1
        pace.wait(max(due_s - time.monotonic(), 0))
    for info in infos:
        info.wait_for_publish(30)
    acked_after_s = time.monotonic() - start_s
    unacked = sum(not info.is_published() for info in infos)
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"requests": sent_requests, "garbage": sent_garbage,
                      "matching": sent_matching, "unacked": unacked,
                      "request_bytes": request_bytes,
                      "publisher_behind_s": behind_s,
                      "all_acked_after_s": acked_after_s,
                      "published_s": published_s}), flush=True)


# ---------------------------------------------------------------- camera process: floor, transport


class _Arrivals:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.count = 0
        self.latencies_s: dict[str, list[float]] = {"M": [], "N": []}

    def record(self, payload: bytes) -> None:
        now_s = time.monotonic()
        with self.lock:
            self.count += 1
            if payload[:1] in (b"M", b"N"):
                kind, sent_s, _seq = _HEADER.unpack_from(payload)
                self.latencies_s[kind.decode()].append(now_s - sent_s)
            self.lock.notify_all()


def _listener_stats(listener: RequestListener) -> dict[str, int]:
    s = listener.stats
    return {"received": s.received, "dropped_overflow": s.dropped_overflow,
            "dropped_oversize": s.dropped_oversize, "handled": s.handled,
            "handler_errors": s.handler_errors}


def _drained(expected: int) -> Any:
    return lambda s: (s.received >= expected and s.queued == 0 and
                      s.handled + s.handler_errors + s.dropped_overflow + s.dropped_oversize
                      >= s.received)


def _camera(stage: str, port: int, queue_size: int) -> None:
    arrivals = _Arrivals()
    topics = subscription_topics(CAMERA_LAT, CAMERA_LON, PRECISION, "edge")
    ready = threading.Event()
    stats: dict[str, Any] = {}
    if stage == "floor":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-floor",
                             protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = lambda c, u, m: arrivals.record(bytes(m.payload))
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = 65535  # as the listener asks: the same broker window
        client.connect("127.0.0.1", port, properties=properties)
        client.loop_start()
        ready.wait(10)
    else:
        def handler(message: IncomingMessage) -> None:
            arrivals.record(message.payload)

        listener = RequestListener("127.0.0.1", port, client_id="bench-camera", topics=topics,
                                   handler=handler, queue_size=queue_size)
        listener.start()
        listener.wait_for(lambda s: s.subscribed, 10)
    cpu0_s, wall0_s = cpu_s(), time.monotonic()
    print("READY", flush=True)
    expected = int(sys.stdin.readline().split()[1])  # "expect N" once publishing is done
    cpu1_s, wall1_s = cpu_s(), time.monotonic()
    # Then let the backlog drain (not counted in CPU per second of load).
    if stage == "floor":
        with arrivals.lock:
            arrivals.lock.wait_for(lambda: arrivals.count >= expected, 30)
        client.disconnect()
        client.loop_stop()
    else:
        listener.wait_for(_drained(expected), 30)
        stats = _listener_stats(listener)
        listener.stop()
    with arrivals.lock:
        result = {
            "stage": stage,
            "handled": arrivals.count,
            "latencies_matching_s": arrivals.latencies_s["M"],
            "latencies_requests_s": arrivals.latencies_s["N"] + arrivals.latencies_s["M"],
            "cpu_fraction": (cpu1_s - cpu0_s) / (wall1_s - wall0_s),
            "max_rss_mb": proc_status_mb("VmHWM"),
            "listener": stats,
        }
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- camera process: judge


def _judge_config(data_dir: Path, port: int, unsynced_footage: str) -> Any:
    from edge.config import parse_config
    from signing import PLATFORM_KEY, public_b64

    return parse_config(f"""
[device]
data_dir = "{data_dir}"
latitude = {CAMERA_LAT}
longitude = {CAMERA_LON}
timezone = "UTC"
[camera]
source = "virtual"
width = 1280
height = 720
fps = 30
[mqtt]
host = "127.0.0.1"
port = {port}
geohash_precision = {PRECISION}
client_id = "bench-camera"
[trust]
platform_keys = ["{public_b64(PLATFORM_KEY)}"]
[policy]
unsynced_footage = "{unsynced_footage}"
""")


def _judge_camera(port: int, queue_size: int, data_dir: Path, quiet_s: float) -> None:
    from edge.clock import SystemClock
    from edge.daemon import build_recorder, open_ring
    from edge.share.audit import AuditLog
    from edge.share.footage import RingFootage
    from edge.share.intake import Intake, IntakeSettings
    from edge.share.store import RequestStore
    from edge.share.verify import Location, Policy, Trust

    clock = SystemClock()
    # A container's clock may not say it is synchronised; then "exclude" would
    # judge every request "unsynced_footage_only" (the test daemon does the same).
    unsynced = "exclude" if clock.is_synchronized() else "warn"
    config = _judge_config(data_dir, port, unsynced)
    stop = threading.Event()  # never set: its wait() paces the polls below

    # Recording first, exactly as the daemon builds it.
    ring = open_ring(config, clock)
    recorder, encoder_name = build_recorder(config, ring, clock, run_id="bench")
    recorder.start()
    deadline_s = time.monotonic() + 60
    while recorder.stats.segments < 1:  # the matching requests need footage in the ring
        if time.monotonic() > deadline_s or recorder.wait(0):
            raise SystemExit(f"no segment recorded within 60 s: {recorder.stats}")
        stop.wait(0.1)

    # The intake, wired as edge/sharing.py wires it (Sharing.build).
    assert config.device.latitude is not None and config.device.longitude is not None
    location = Location(lat=config.device.latitude, lon=config.device.longitude)
    policy = Policy(
        max_window_s=config.policy.max_window_s,
        max_radius_m=config.policy.max_radius_m,
        allow_insecure_localhost=config.upload.allow_insecure_localhost,
    )
    exclude_unsynced = config.policy.unsynced_footage == "exclude"
    footage = RingFootage(ring)
    audit = AuditLog(config.device.data_dir / "audit", clock).open()
    store = RequestStore(config.device.data_dir, clock)
    pending_s: list[tuple[int, float]] = []  # (local id, monotonic time it was pending)

    def on_pending(request_id: int) -> None:  # the daemon's consent.prompt, here a stopwatch
        pending_s.append((request_id, time.monotonic()))

    intake = Intake(
        IntakeSettings(
            trust=Trust(config.trust.platform_keys),
            policy=policy,
            location=location,
            decision_timeout_s=config.policy.decision_timeout_s,
            exclude_unsynced=exclude_unsynced,
        ),
        store,
        audit,
        footage,
        clock,
        on_pending=on_pending,
    )
    not_matching_s: dict[str, float] = {}  # jti -> monotonic time stored as not_matching
    outcomes: dict[str, int] = {}

    def handle(messages: list[IncomingMessage]) -> None:
        # As sharing.py's handler: what has queued, judged and stored in one go.
        batch_outcomes = intake.handle_batch([(m.topic, m.payload) for m in messages])
        stored_s = time.monotonic()
        # The bench's own note, after the daemon's work: one dict entry each.
        for outcome in batch_outcomes:
            outcomes[outcome.state] = outcomes.get(outcome.state, 0) + 1
            if outcome.state == "not_matching":
                not_matching_s[outcome.verdict.request.jti] = stored_s  # type: ignore[union-attr]

    mqtt_config = config.mqtt
    listener = RequestListener(
        mqtt_config.host,
        mqtt_config.port,
        client_id=mqtt_config.client_id,
        topics=subscription_topics(
            location.lat, location.lon, mqtt_config.geohash_precision, mqtt_config.topic_prefix
        ),
        batch_handler=handle,
        queue_size=queue_size,
    )
    listener.start()
    if not listener.wait_for(lambda s: s.subscribed, 10):
        raise SystemExit(f"camera did not subscribe: {listener.stats.last_error}")

    # Collector pauses stop every thread of the process: note each one's length.
    gc_pauses: list[tuple[int, float, float]] = []  # (generation, start, seconds)
    gc_started_s = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started_s[0] = time.monotonic()
        else:
            now_s = time.monotonic()
            gc_pauses.append((info["generation"], now_s, now_s - gc_started_s[0]))

    gc.callbacks.append(on_gc)

    # Recording alone (the listener idle): the CPU the flood adds to.
    threads0, cpu0_s, wall0_s = threads_cpu_s(), cpu_s(), time.monotonic()
    stop.wait(quiet_s)
    threads1, cpu1_s, wall1_s = threads_cpu_s(), cpu_s(), time.monotonic()
    before = recorder.stats
    rss_before_mb = proc_status_mb("VmRSS")
    print("READY", flush=True)
    expected = int(sys.stdin.readline().split()[1])  # "expect N" once publishing is done
    threads2, cpu2_s, wall2_s = threads_cpu_s(), cpu_s(), time.monotonic()
    during = recorder.stats
    drained = listener.wait_for(_drained(expected), 120)
    drain_s = time.monotonic() - wall2_s
    gc.callbacks.remove(on_gc)
    after = recorder.stats
    stats = _listener_stats(listener)
    listener.stop()
    recorder.stop()
    final = recorder.stats
    audit_stats = audit.stats()
    counts = store.counts()
    pending_by_jti: dict[str, float] = {}
    for request_id, at_s in pending_s:
        record = store.get(request_id)
        if record is not None and record.jti is not None:
            pending_by_jti[record.jti] = at_s
    store.close()
    audit.close()
    ring_segments = len(ring.overlapping(0, 2**62))
    ring.close()
    quiet_wall_s, flood_wall_s = wall1_s - wall0_s, wall2_s - wall1_s
    print(json.dumps({
        "stage": "judge",
        "unsynced_footage": unsynced,
        "encoder": encoder_name,
        "handled": stats["handled"],
        "drained": drained,
        "drain_s": drain_s,
        "pending_s": pending_by_jti,
        "not_matching_s": not_matching_s,
        "outcomes": outcomes,
        "store_counts": counts,
        "cpu_fraction": (cpu2_s - cpu1_s) / flood_wall_s,
        "cpu_fraction_recording_alone": (cpu1_s - cpu0_s) / quiet_wall_s,
        "threads_flood": {k: v / flood_wall_s
                          for k, v in threads_cpu_delta(threads1, threads2).items()},
        "threads_quiet": {k: v / quiet_wall_s
                          for k, v in threads_cpu_delta(threads0, threads1).items()},
        "rss_before_flood_mb": rss_before_mb,
        "gc_pauses": [(generation, at_s - wall1_s, pause_s)
                      for generation, at_s, pause_s in gc_pauses if at_s >= wall1_s],
        "max_rss_mb": proc_status_mb("VmHWM"),
        "listener": stats,
        "audit": {"lines": audit_stats.lines_written, "fsyncs": audit_stats.fsyncs,
                  "counted": audit_stats.counted, "dropped": audit_stats.dropped},
        "recorder": {
            "dropped_before_flood": before.frames_dropped,
            "dropped_during_flood": during.frames_dropped - before.frames_dropped,
            "dropped_by_source_during_flood":
                during.frames_dropped_by_source - before.frames_dropped_by_source,
            "dropped_during_drain": after.frames_dropped - during.frames_dropped,
            "dropped_total": final.frames_dropped,
            "captured_total": final.frames_captured,
            "captured_during_flood": during.frames_captured - before.frames_captured,
            "flood_wall_s": flood_wall_s,
            "segments": final.segments,
            "ring_segments": ring_segments,
            "errors": final.errors,
            "last_error": final.last_error,
        },
    }), flush=True)


# ---------------------------------------------------------------- driver


def _run_stage(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    from broker import MosquittoBroker

    with tempfile.TemporaryDirectory(prefix="edge-bench-requests-") as directory, \
            MosquittoBroker(Path(directory) / "broker",
                            extra_config=["max_queued_messages 0"]) as broker:
        me = [sys.executable, str(Path(__file__).resolve())]
        camera_args = ["--camera", stage, "--port", str(broker.port),
                       "--queue-size", str(args.queue_size)]
        if stage == "judge":
            camera_args += ["--data-dir", str(Path(directory) / "camera"),
                            "--quiet-s", str(args.quiet_s)]
        camera = subprocess.Popen([*me, *camera_args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert camera.stdin is not None and camera.stdout is not None
        if camera.stdout.readline().strip() != "READY":
            camera.kill()
            raise SystemExit(f"{stage}: camera process did not get ready")
        published = subprocess.run(
            [*me, "--publish", "--port", str(broker.port), "--stage", stage,
             "--duration-s", str(args.duration_s),
             "--rate", str(args.rate), "--garbage-rate", str(args.garbage_rate),
             "--matching-fraction", str(args.matching_fraction)],
            capture_output=True, text=True,
        )
        if published.returncode != 0:
            camera.kill()
            sys.stderr.write(published.stderr)
            raise SystemExit(f"{stage}: publisher failed")
        sent = json.loads(published.stdout)
        expected = sent["requests"] + sent["garbage"]
        camera.stdin.write(f"expect {expected}\n")
        camera.stdin.flush()
        line = camera.stdout.readline()
        camera.wait(60)
        if not line:
            raise SystemExit(f"{stage}: camera process failed (exit {camera.returncode})")
        result: dict[str, Any] = json.loads(line)
    published_s = sent.pop("published_s")
    result["sent"] = sent
    if stage == "judge":
        _join_judge(result, published_s)
    return result


def _join_judge(result: dict[str, Any], published_s: dict[str, list[Any]]) -> None:
    """Latencies from the publisher's publish times and the camera's stored times, by jti."""
    pending, not_matching = result.pop("pending_s"), result.pop("not_matching_s")
    matching_sent = {jti for jti, (_, matching) in published_s.items() if matching}
    result["latencies_matching_s"] = [
        at_s - published_s[jti][0] for jti, at_s in pending.items() if jti in matching_sent
    ]
    result["latencies_requests_s"] = [
        at_s - published_s[jti][0] for jti, at_s in (pending | not_matching).items()
        if jti in published_s
    ]
    # (seconds into the flood it was published, latency): when the slow ones happen.
    first_s = min(at_s for at_s, _ in published_s.values())
    result["timeline_s"] = sorted(
        (published_s[jti][0] - first_s, at_s - published_s[jti][0])
        for jti, at_s in (pending | not_matching).items()
        if jti in published_s
    )
    result["pending_not_sent_as_matching"] = len(set(pending) - matching_sent)
    result["matching_not_pending"] = len(matching_sent - set(pending))


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    request_bytes = results[0]["sent"]["request_bytes"]
    print(f"\nload: {args.duration_s:g} s of {args.rate}/s requests ({request_bytes} B, "
          f"{args.matching_fraction:.0%} matching) + {args.garbage_rate}/s garbage; "
          f"queue_size {args.queue_size}; mosquitto on 127.0.0.1; {load_text()} at the end")
    header = (f"{'stage':<10} {'sent':>8} {'handled':>8} {'dropped':>8} {'cpu':>6} {'rss MB':>7} "
              f"{'match p50':>10} {'match p99':>10} {'req p50':>9} {'req p99':>9} {'lost M':>7}")
    print(header)
    for r in results:
        sent = r["sent"]
        total = sent["requests"] + sent["garbage"]
        m, q = r["latencies_matching_s"], r["latencies_requests_s"]
        dropped = r["listener"].get("dropped_overflow", 0) + r["listener"].get(
            "dropped_oversize", 0)
        print(f"{r['stage']:<10} {total:>8} {r['handled']:>8} {dropped:>8} "
              f"{r['cpu_fraction']:>6.0%} {r['max_rss_mb']:>7.1f} "
              f"{percentile(m, .5) * 1e3:>8.1f}ms {percentile(m, .99) * 1e3:>8.1f}ms "
              f"{percentile(q, .5) * 1e3:>7.1f}ms {percentile(q, .99) * 1e3:>7.1f}ms "
              f"{sent['matching'] - len(m):>7}")
    for r in results:
        sent = r["sent"]
        print(f"{r['stage']}: publisher ran up to {sent['publisher_behind_s'] * 1e3:.0f} ms behind "
              f"its schedule; broker acked the last publish {sent['all_acked_after_s']:.1f} s "
              f"after the start ({args.duration_s:g} s of load); unacked {sent['unacked']}")
    by_stage = {r["stage"]: r for r in results}
    judge = by_stage.get("judge")
    if judge is not None:
        _report_judge(judge)
    floor = by_stage.get("floor")
    if floor is None:
        return
    for stage in ("transport", "judge"):
        other = by_stage.get(stage)
        if other is None:
            continue
        for label, key, what in (
            ("matching", "latencies_matching_s", "pending" if stage == "judge" else "handler"),
            ("all requests", "latencies_requests_s", "stored" if stage == "judge" else "handler"),
        ):
            f99, t99 = percentile(floor[key], .99), percentile(other[key], .99)
            verdict = "OK" if t99 - f99 <= 0.250 else "MISSED"
            print(f"p99 {label} (publish -> {what}): "
                  f"{stage} {t99 * 1e3:.1f} ms vs floor {f99 * 1e3:.1f} ms "
                  f"(+{(t99 - f99) * 1e3:.1f} ms); goal within 250 ms: {verdict}")
        print(f"camera CPU: {stage} {other['cpu_fraction']:.0%} vs floor "
              f"{floor['cpu_fraction']:.0%} of one core")


def _report_judge(r: dict[str, Any]) -> None:
    rec, listener, sent = r["recorder"], r["listener"], r["sent"]
    lost = r["matching_not_pending"]
    stored = {state: n for state, n in r["store_counts"].items() if n}
    print(f"judge: outcomes {r['outcomes']} (the store keeps {stored}: rejected rows are capped); "
          f"listener {listener}; "
          f"drained {'yes' if r['drained'] else 'NO'} {r['drain_s']:.1f} s after the last ack; "
          f"unsynced_footage = {r['unsynced_footage']}; encoder {r['encoder']}")
    busy_s = rec["flood_wall_s"] + r["drain_s"]
    print(f"judge: the intake judged {r['handled'] / busy_s:.0f} messages/s over the flood and "
          f"drain ({r['handled']} in {busy_s:.1f} s; offered "
          f"{(sent['requests'] + sent['garbage']) / rec['flood_wall_s']:.0f}/s)")
    print(f"judge: matching requests lost {lost} of {sent['matching']} "
          f"(goal 0: {'OK' if lost == 0 else 'MISSED'}); pending that were not sent as matching "
          f"{r['pending_not_sent_as_matching']}; audit {r['audit']}")
    flood_drops = rec["dropped_during_flood"] + rec["dropped_during_drain"]
    print(f"judge: recording 1280x720@30 dropped {flood_drops} frame(s) during the flood and drain "
          f"({rec['dropped_by_source_during_flood']} skipped by the camera itself), "
          f"{rec['dropped_before_flood']} before it, {rec['dropped_total']} of "
          f"{rec['captured_total']} in all; captured {rec['captured_during_flood']} frames in "
          f"{rec['flood_wall_s']:.1f} s of flood; {rec['segments']} segments "
          f"(goal 0 dropped: {'OK' if flood_drops == 0 else 'MISSED'}); errors {rec['errors']}")
    print(f"judge: camera process CPU {r['cpu_fraction_recording_alone']:.0%} of one core "
          f"recording alone, {r['cpu_fraction']:.0%} during the flood; RSS "
          f"{r['rss_before_flood_mb']:.0f} MB before the flood, peak {r['max_rss_mb']:.0f} MB")
    by_second: dict[int, list[float]] = {}
    for published_at_s, latency_s in r["timeline_s"]:
        by_second.setdefault(int(published_at_s), []).append(latency_s)
    print("judge: p99 publish -> stored, ms, by second of the flood (a queue climbs, a stall "
          "spikes): " + " ".join(f"{percentile(v, .99) * 1e3:.0f}" for _, v in
                                 sorted(by_second.items())))
    pauses = r["gc_pauses"]
    full = [(at_s, pause_s) for generation, at_s, pause_s in pauses if generation == 2]
    print(f"judge: garbage collector during flood and drain: {len(pauses)} collections, "
          f"{sum(p for _, _, p in pauses) * 1e3:.0f} ms in all, longest "
          f"{max((p for _, _, p in pauses), default=0) * 1e3:.1f} ms; full (gen 2): " + (", ".join(
              f"{pause_s * 1e3:.0f} ms at {at_s:.1f} s" for at_s, pause_s in full) or "none"))
    quiet, flood = r["threads_quiet"], r["threads_flood"]
    names = sorted(set(quiet) | set(flood), key=lambda n: -flood.get(n, 0))
    print("judge: CPU per thread, % of one core (recording alone -> flood): " + ", ".join(
        f"{name} {quiet.get(name, 0):.0%}->{flood.get(name, 0):.0%}"
        for name in names if max(quiet.get(name, 0), flood.get(name, 0)) >= 0.005))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000, help="requests per second")
    parser.add_argument("--garbage-rate", type=int, default=2000, help="garbage per second")
    parser.add_argument("--matching-fraction", type=float, default=0.01)
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE)
    parser.add_argument("--quiet-s", type=float, default=5.0,
                        help="judge: seconds of recording alone measured before the flood")
    parser.add_argument("--stage", choices=["both", "all", *STAGES], default="both",
                        help="both = floor + judge; all = floor + transport + judge")
    parser.add_argument("--camera", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.camera == "judge":
        _judge_camera(args.port, args.queue_size, args.data_dir, args.quiet_s)
        return
    if args.camera:
        _camera(args.camera, args.port, args.queue_size)
        return
    if args.publish:
        _publish(args.port, args.stage, args.duration_s, args.rate, args.garbage_rate,
                 args.matching_fraction)
        return
    stages = {"both": ["floor", "judge"], "all": list(STAGES)}.get(args.stage, [args.stage])
    print(f"edge request intake bench: stages {', '.join(stages)}; {load_text()} at the start")
    _report([_run_stage(stage, args) for stage in stages], args)


if __name__ == "__main__":
    main()
