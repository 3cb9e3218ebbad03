"""Request intake under load, transport part: a real mosquitto, a real flood, the floor beside it.

    python bench/requests.py [--duration-s 30] [--rate 1000] [--garbage-rate 2000]

Runs the same load twice, each against a fresh mosquitto on this machine, with
the camera side in its own process (so its CPU and RSS are its own) and the
publisher in another:

- floor: a bare paho subscriber (auto-ack, no queue, no work): the broker
  round trip alone.
- transport: edge.share.mqtt.RequestListener with a handler that only records
  the arrival (queue, worker thread, manual ack after the handler).

All messages go to topics the camera subscribes to. "Requests" are ~2 KB
payloads (the size of a signed request), of which --matching-fraction are
marked as matching; garbage is 64..1023 random bytes. Latency is publish ->
handler for the matching ones (CLOCK_MONOTONIC is system-wide, so the two
processes' clocks agree). Judging (verify, match, store) is not in this
script yet: it plugs in as the transport stage's handler (see `_make_handler`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tests/broker.py: the real-mosquitto helper

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edge.share.mqtt import (  # noqa: E402
    DEFAULT_QUEUE_SIZE,
    IncomingMessage,
    RequestListener,
    subscription_topics,
)

CAMERA_LAT, CAMERA_LON, PRECISION = 47.6062, -122.3321, 5  # geohash c23nb62q
PUBLISH_TOPICS = [  # coarser, own and finer cells, all ones the camera hears
    "edge/v1/req/c/2/3",
    "edge/v1/req/c/2/3/n/b",
    "edge/v1/req/c/2/3/n/b/6/2",
]
_HEADER = struct.Struct("!cdI")  # kind, publish time (monotonic s), sequence
REQUEST_BYTES = 2000
TICK_S = 0.01


# ---------------------------------------------------------------- publisher process


def _publish(port: int, duration_s: float, rate: int, garbage_rate: int,
             matching_fraction: float) -> None:
    rng = random.Random(7)
    filler = bytes(rng.getrandbits(8) for _ in range(REQUEST_BYTES))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(5000)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    infos = []
    sent_requests = sent_garbage = sent_matching = 0
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
            kind = b"M" if matching else b"N"
            sent_matching += matching
            header = _HEADER.pack(kind, time.monotonic(), sent_requests)
            payload = header + filler[: REQUEST_BYTES - len(header)]
            infos.append(client.publish(PUBLISH_TOPICS[sent_requests % 3], payload, qos=1))
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
                      "publisher_behind_s": behind_s,
                      "all_acked_after_s": acked_after_s}), flush=True)


# ---------------------------------------------------------------- camera process


class _Recorder:
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


def _make_handler(recorder: _Recorder) -> Any:
    # The judge (verify, match, store) goes here once it exists as one callable.
    def handler(message: IncomingMessage) -> None:
        recorder.record(message.payload)

    return handler


def _camera(stage: str, port: int, queue_size: int) -> None:
    recorder = _Recorder()
    topics = subscription_topics(CAMERA_LAT, CAMERA_LON, PRECISION, "edge")
    ready = threading.Event()
    stats: dict[str, Any] = {}
    if stage == "floor":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-floor",
                             protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = lambda c, u, m: recorder.record(bytes(m.payload))
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = 65535  # as the listener asks: the same broker window
        client.connect("127.0.0.1", port, properties=properties)
        client.loop_start()
        ready.wait(10)
    else:
        listener = RequestListener("127.0.0.1", port, client_id="bench-camera", topics=topics,
                                   handler=_make_handler(recorder), queue_size=queue_size)
        listener.start()
        listener.wait_for(lambda s: s.subscribed, 10)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0_s = time.monotonic()
    print("READY", flush=True)
    expected = int(sys.stdin.readline().split()[1])  # "expect N" once publishing is done
    wall1_s = time.monotonic()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    # Then let the backlog drain (not counted in CPU per second of load).
    if stage == "floor":
        with recorder.lock:
            recorder.lock.wait_for(lambda: recorder.count >= expected, 30)
        client.disconnect()
        client.loop_stop()
    else:
        listener.wait_for(
            lambda s: s.received >= expected and s.queued == 0
            and s.handled + s.dropped_overflow + s.dropped_oversize >= s.received, 30)
        s = listener.stats
        stats = {"received": s.received, "dropped_overflow": s.dropped_overflow,
                 "dropped_oversize": s.dropped_oversize, "handled": s.handled}
        listener.stop()
    cpu_s = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    with recorder.lock:
        result = {
            "stage": stage,
            "handled": recorder.count,
            "latencies_matching_s": recorder.latencies_s["M"],
            "latencies_requests_s": recorder.latencies_s["N"] + recorder.latencies_s["M"],
            "cpu_fraction": cpu_s / (wall1_s - wall0_s),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "listener": stats,
        }
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def _run_stage(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    from broker import MosquittoBroker

    with tempfile.TemporaryDirectory() as directory, \
            MosquittoBroker(Path(directory), extra_config=["max_queued_messages 0"]) as broker:
        me = [sys.executable, str(Path(__file__).resolve())]
        camera = subprocess.Popen(
            [*me, "--camera", stage, "--port", str(broker.port),
             "--queue-size", str(args.queue_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert camera.stdin is not None and camera.stdout is not None
        if camera.stdout.readline().strip() != "READY":
            raise SystemExit(f"{stage}: camera process did not get ready")
        published = subprocess.run(
            [*me, "--publish", "--port", str(broker.port), "--duration-s", str(args.duration_s),
             "--rate", str(args.rate), "--garbage-rate", str(args.garbage_rate),
             "--matching-fraction", str(args.matching_fraction)],
            capture_output=True, text=True, check=True,
        )
        sent = json.loads(published.stdout)
        expected = sent["requests"] + sent["garbage"]
        camera.stdin.write(f"expect {expected}\n")
        camera.stdin.flush()
        result: dict[str, Any] = json.loads(camera.stdout.readline())
        camera.wait(30)
    result["sent"] = sent
    return result


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nload: {args.duration_s:g} s of {args.rate}/s requests (~{REQUEST_BYTES} B, "
          f"{args.matching_fraction:.0%} matching) + {args.garbage_rate}/s garbage; "
          f"queue_size {args.queue_size}; mosquitto 2.0 on 127.0.0.1, {os.cpu_count()} CPUs")
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
              f"{_percentile(m, .5) * 1e3:>8.1f}ms {_percentile(m, .99) * 1e3:>8.1f}ms "
              f"{_percentile(q, .5) * 1e3:>7.1f}ms {_percentile(q, .99) * 1e3:>7.1f}ms "
              f"{sent['matching'] - len(m):>7}")
    for r in results:
        sent = r["sent"]
        print(f"{r['stage']}: publisher ran up to {sent['publisher_behind_s'] * 1e3:.0f} ms behind "
              f"its schedule; broker acked the last publish {sent['all_acked_after_s']:.1f} s "
              f"after the start ({args.duration_s:g} s of load); unacked {sent['unacked']}; "
              f"load average at the end {os.getloadavg()[0]:.2f}")
    if len(results) == 2:
        floor, transport = results
        for label, key in (("matching", "latencies_matching_s"), ("all requests",
                                                                  "latencies_requests_s")):
            f99, t99 = _percentile(floor[key], .99), _percentile(transport[key], .99)
            print(f"p99 {label}: transport {t99 * 1e3:.1f} ms vs floor {f99 * 1e3:.1f} ms "
                  f"(+{(t99 - f99) * 1e3:.1f} ms, x{t99 / f99:.2f}); goal: within 250 ms")
        t_cpu, f_cpu = transport["cpu_fraction"], floor["cpu_fraction"]
        print(f"camera CPU: transport {t_cpu:.0%} vs floor {f_cpu:.0%} (x{t_cpu / f_cpu:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000, help="requests per second")
    parser.add_argument("--garbage-rate", type=int, default=2000, help="garbage per second")
    parser.add_argument("--matching-fraction", type=float, default=0.01)
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE)
    parser.add_argument("--stage", choices=["both", "floor", "transport"], default="both")
    parser.add_argument("--camera", choices=["floor", "transport"], help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.camera:
        _camera(args.camera, args.port, args.queue_size)
        return
    if args.publish:
        _publish(args.port, args.duration_s, args.rate, args.garbage_rate, args.matching_fraction)
        return
    stages = ["floor", "transport"] if args.stage == "both" else [args.stage]
    _report([_run_stage(stage, args) for stage in stages], args)


if __name__ == "__main__":
    main()
