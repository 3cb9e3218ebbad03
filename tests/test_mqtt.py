"""The MQTT transport against a real mosquitto: topics, persistence, restarts, floods, crashes.

Every test runs the Debian mosquitto on a free port (tests/broker.py) and a
real paho publisher standing in for the request platform. Nothing is mocked.
Waiting is on events and conditions (the listener's wait_for, the handler's
condition, the broker's log), never on sleeps.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import MosquittoBroker
from conftest import REPO_ROOT
from edge.share.mqtt import (
    IncomingMessage,
    ListenerStats,
    RequestListener,
    subscription_topics,
)

# The vectors' camera (Seattle): geohash c23nb62q, so at precision 5 it listens
# on c, c/2, c/2/3, c/2/3/n and c/2/3/n/b/#.
CAMERA_LAT, CAMERA_LON, PRECISION = 47.6062, -122.3321, 5
TOPICS = subscription_topics(CAMERA_LAT, CAMERA_LON, PRECISION, "edge")
CELL_TOPIC = "edge/v1/req/c/2/3/n/b"  # the camera's own 5-cell
WAIT_S = 15.0


# ---------------------------------------------------------------- helpers


class Collector:
    """A handler that records what it is given; tests wait on it."""

    def __init__(self, before: Callable[[IncomingMessage], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._messages: list[IncomingMessage] = []
        self._before = before

    def __call__(self, message: IncomingMessage) -> None:
        if self._before is not None:
            self._before(message)
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    @property
    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self._messages]

    @property
    def messages(self) -> list[IncomingMessage]:
        with self._cond:
            return list(self._messages)

    def wait_for_payload(self, payload: bytes, count: int = 1, timeout_s: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(m.payload == payload for m in self._messages) >= count, timeout_s
            )


def make_listener(
    broker: MosquittoBroker,
    handler: Callable[[IncomingMessage], None],
    *,
    client_id: str = "camera-1",
    **kwargs: Any,
) -> RequestListener:
    kwargs.setdefault("topics", TOPICS)
    return RequestListener(broker.host, broker.port, client_id=client_id, handler=handler, **kwargs)


@contextlib.contextmanager
def listening(listener: RequestListener, *, subscribed: bool = True) -> Iterator[RequestListener]:
    """Starts the listener, waits until its subscriptions are granted, stops it afterwards."""
    listener.start()
    try:
        if subscribed:
            assert listener.wait_for(lambda s: s.subscribed, WAIT_S), listener.stats
        yield listener
    finally:
        listener.stop()


def wait_stats(listener: RequestListener, predicate: Callable[[ListenerStats], bool]) -> None:
    assert listener.wait_for(predicate, WAIT_S), listener.stats


def assert_nothing_redelivered(broker: MosquittoBroker, client_id: str) -> None:
    """A fresh listener on the same session gets only a new marker: everything was acked."""
    collector = Collector()
    with listening(make_listener(broker, collector, client_id=client_id)) as listener:
        with broker.publisher() as pub:
            pub.publish(CELL_TOPIC, b"marker")
        assert collector.wait_for_payload(b"marker")
        received = listener.stats.received  # dropped ones would count here, unhandled
    assert collector.payloads == [b"marker"]
    assert received == 1


class Spy:
    """A client subscribed to every topic: proves the camera publishes nothing."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._cond = threading.Condition()
        self.seen: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy")

        def on_connect(client: mqtt.Client, *_: object) -> None:
            client.subscribe("#", qos=1)

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            with self._cond:
                self.seen.append((msg.topic, bytes(msg.payload)))
                self._cond.notify_all()

        self._client.on_connect = on_connect
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert subscribed.wait(WAIT_S)

    def topics_until(self, marker_topic: str) -> list[str]:
        with self._cond:
            assert self._cond.wait_for(lambda: any(t == marker_topic for t, _ in self.seen), WAIT_S)
            return [t for t, _ in self.seen]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# ---------------------------------------------------------------- topics


def test_topics_are_the_specs_example() -> None:
    # assist-request-v1.md: d = c23nb…, k = 5.
    assert TOPICS == [
        "edge/v1/req/c",
        "edge/v1/req/c/2",
        "edge/v1/req/c/2/3",
        "edge/v1/req/c/2/3/n",
        "edge/v1/req/c/2/3/n/b/#",
    ]
    assert subscription_topics(CAMERA_LAT, CAMERA_LON, 2, "pfx") == [
        "pfx/v1/req/c",
        "pfx/v1/req/c/2/#",
    ]


def test_coarser_and_finer_cells_arrive_once_each_and_other_cells_do_not(
    broker: MosquittoBroker,
) -> None:
    inside = {
        "edge/v1/req/c": b"coarsest",  # a 1-cell containing the camera's 5-cell
        "edge/v1/req/c/2/3/n": b"coarser",
        CELL_TOPIC: b"same cell",
        "edge/v1/req/c/2/3/n/b/6/2/q": b"finer",  # an 8-cell inside it
    }
    outside = {
        "edge/v1/req/c/2/3/n/c": b"neighbouring cell",
        "edge/v1/req/c/2/3/n/c/6": b"finer, in the neighbour",
        "edge/v1/req/9": b"another 1-cell",
        "other/v1/req/c/2/3/n/b": b"another prefix",
        "edge/v1/req": b"no cell at all",
        "edge/v2/req/c/2/3/n/b": b"another version",
    }
    collector = Collector()
    with listening(make_listener(broker, collector)) as listener, broker.publisher() as pub:
        for topic, payload in [*outside.items(), *inside.items()]:
            pub.publish(topic, payload)
        pub.publish(CELL_TOPIC, b"last")  # one publisher, one subscriber: arrives last
        assert collector.wait_for_payload(b"last")
        stats = listener.stats
    assert sorted(collector.payloads) == sorted([*inside.values(), b"last"])
    assert {m.topic for m in collector.messages} == {*inside, CELL_TOPIC}
    assert stats.received == stats.handled == len(inside) + 1
    assert all(m.qos == 1 for m in collector.messages)


# ---------------------------------------------------------------- sessions, restarts


def test_request_published_while_camera_is_off_arrives_when_it_comes_back(
    broker: MosquittoBroker,
) -> None:
    # First run: the broker learns the session (subscriptions) of "camera-1".
    with listening(make_listener(broker, Collector())):
        pass
    with broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"while you were away")
    broker.restart()  # and the broker itself restarts meanwhile: its persistence keeps it

    collector = Collector()
    with listening(make_listener(broker, collector)) as listener:
        assert collector.wait_for_payload(b"while you were away")
        wait_stats(listener, lambda s: s.handled == 1)
    # Another client id has no such session.
    other = Collector()
    with listening(make_listener(broker, other, client_id="camera-2")), broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"marker")
        assert other.wait_for_payload(b"marker")
    assert other.payloads == [b"marker"]


def test_broker_crash_mid_run_is_survived_and_subscriptions_restored(
    broker: MosquittoBroker,
) -> None:
    collector = Collector()
    with listening(make_listener(broker, collector)) as listener:
        with broker.publisher() as pub:
            pub.publish(CELL_TOPIC, b"before")
        assert collector.wait_for_payload(b"before")

        broker.kill()  # SIGKILL: nothing saved, so the broker forgets the session
        wait_stats(listener, lambda s: not s.connected and not s.subscribed)
        assert "lost" in (listener.stats.last_error or "")

        broker.start()  # same port
        wait_stats(listener, lambda s: s.subscribed)  # re-subscribed in on_connect
        with broker.publisher() as pub:
            pub.publish("edge/v1/req/c/2", b"after")
            pub.publish("edge/v1/req/c/2/3/n/b/z", b"after, finer")
        assert collector.wait_for_payload(b"after")
        assert collector.wait_for_payload(b"after, finer")
    assert collector.payloads == [b"before", b"after", b"after, finer"]


def test_message_being_judged_during_a_broker_restart_is_judged_again_and_acked_once(
    broker: MosquittoBroker,
) -> None:
    # At least once: the copy in the handler when the link drops is not acked
    # on the new link (its packet id belongs to the old one); the broker resends
    # it, the store recognises it, and that copy is acked.
    entered, release = threading.Event(), threading.Event()

    def hold_first(message: IncomingMessage) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(WAIT_S)

    collector = Collector(before=hold_first)
    with listening(make_listener(broker, collector)) as listener:
        with broker.publisher() as pub:
            pub.publish(CELL_TOPIC, b"judge me")
        assert entered.wait(WAIT_S)
        broker.restart()  # SIGTERM: the unacked message is saved with the session
        wait_stats(listener, lambda s: s.subscribed and s.received == 2)  # resent copy
        release.set()
        assert collector.wait_for_payload(b"judge me", count=2)
        wait_stats(listener, lambda s: s.handled == 2 and s.queued == 0)
    assert_nothing_redelivered(broker, "camera-1")


# ---------------------------------------------------------------- size and floods


def test_oversize_payloads_are_dropped_and_counted(broker: MosquittoBroker) -> None:
    collector = Collector()
    with listening(make_listener(broker, collector)) as listener, broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"a" * 65_536)  # exactly the spec's limit: taken
        pub.publish(CELL_TOPIC, b"b" * 65_537)  # one byte over: dropped here, counted
        pub.publish(CELL_TOPIC, b"c" * 1_048_576)  # far over: the broker never sends it
        pub.publish(CELL_TOPIC, b"valid")
        assert collector.wait_for_payload(b"valid")
        stats = listener.stats
    assert [len(p) for p in collector.payloads] == [65_536, 5]
    assert (stats.received, stats.dropped_oversize, stats.handled) == (3, 1, 2)
    assert_nothing_redelivered(broker, "camera-1")  # the dropped one was acked


def test_flood_of_garbage_with_a_slow_handler_does_not_stop_a_valid_request(
    broker: MosquittoBroker,
) -> None:
    queue_size, garbage_count = 50, 3000
    entered, release = threading.Event(), threading.Event()

    def slow_first(message: IncomingMessage) -> None:
        if message.payload == b"first":
            entered.set()
            assert release.wait(WAIT_S)  # the judge is stuck on this one throughout the flood

    collector = Collector(before=slow_first)
    listener = make_listener(broker, collector, queue_size=queue_size)
    with listening(listener), broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"first")
        assert entered.wait(WAIT_S)
        garbage = [(CELL_TOPIC, os.urandom(64 + i % 900)) for i in range(garbage_count)]
        pub.publish_many([*garbage, (CELL_TOPIC, b"valid request")])
        wait_stats(listener, lambda s: s.received == garbage_count + 2)
        release.set()
        assert collector.wait_for_payload(b"valid request")
        wait_stats(listener, lambda s: s.queued == 0 and s.handled == queue_size + 1)
        stats = listener.stats
    # The oldest went first: the queue ends with the newest, the valid one last.
    assert stats.dropped_overflow == garbage_count + 1 - queue_size
    assert collector.payloads[0] == b"first"
    assert collector.payloads[-1] == b"valid request"
    assert collector.payloads[1:-1] == [p for _, p in garbage[-(queue_size - 1) :]]
    assert_nothing_redelivered(broker, "camera-1")  # dropped ones were acked too


def test_queue_is_bounded_in_bytes_too(broker: MosquittoBroker) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_first(message: IncomingMessage) -> None:
        if message.payload == b"first":
            entered.set()
            assert release.wait(WAIT_S)

    collector = Collector(before=slow_first)
    listener = make_listener(broker, collector, queue_bytes=65_536)  # one maximal payload
    big = [bytes([i]) * 20_000 for i in range(10)]
    with listening(listener), broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"first")
        assert entered.wait(WAIT_S)
        pub.publish_many([*((CELL_TOPIC, p) for p in big), (CELL_TOPIC, b"valid request")])
        wait_stats(listener, lambda s: s.received == 12)
        release.set()
        assert collector.wait_for_payload(b"valid request")
        stats = listener.stats
    # 3 x 20,000 bytes + the valid one fit in 65,536; the 7 oldest were dropped.
    assert stats.dropped_overflow == 7
    assert collector.payloads == [b"first", *big[7:], b"valid request"]


# ---------------------------------------------------------------- handler outcomes, crashes


def test_handler_that_raises_is_logged_with_traceback_and_not_redelivered(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    def judge(message: IncomingMessage) -> None:
        if message.payload == b"poison":
            raise RuntimeError("judge crashed")

    collector = Collector(before=judge)
    with listening(make_listener(broker, collector)) as listener, broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"poison")
        pub.publish(CELL_TOPIC, b"fine")
        assert collector.wait_for_payload(b"fine")  # the worker carried on
        wait_stats(listener, lambda s: s.handler_errors == 1 and s.handled == 1)
    failures = [r for r in caplog.records if r.name == "edge.share.mqtt" and r.exc_info]
    assert len(failures) == 1 and "judge crashed" in str(failures[0].exc_info)
    assert_nothing_redelivered(broker, "camera-1")


_CRASHING_CAMERA = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
from edge.share.mqtt import RequestListener, subscription_topics

def judge_forever(message):
    print("GOT", message.payload.decode(), flush=True)
    threading.Event().wait()  # never returns: no ack; the test kills us here

listener = RequestListener(
    "127.0.0.1", int(sys.argv[2]), client_id=sys.argv[3],
    topics=subscription_topics(47.6062, -122.3321, 5, "edge"), handler=judge_forever,
)
listener.start()
print("SUBSCRIBED" if listener.wait_for(lambda s: s.subscribed, 15) else "TIMEOUT", flush=True)
threading.Event().wait()
"""


def test_camera_killed_before_ack_gets_the_request_again(broker: MosquittoBroker) -> None:
    spy = Spy(broker)
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_CAMERA, str(REPO_ROOT), str(broker.port), "camera-9"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_child() -> None:
        for line in child.stdout or []:
            lines.put(line.strip())

    threading.Thread(target=read_child, daemon=True).start()
    try:
        assert lines.get(timeout=WAIT_S) == "SUBSCRIBED"
        with broker.publisher() as pub:
            pub.publish(CELL_TOPIC, b"req-1")
        assert lines.get(timeout=WAIT_S) == "GOT req-1"  # in the judge, not acked
    finally:
        child.kill()
        child.wait(WAIT_S)

    collector = Collector()
    with listening(make_listener(broker, collector, client_id="camera-9")) as listener:
        assert collector.wait_for_payload(b"req-1")  # redelivered by the broker
        wait_stats(listener, lambda s: s.handled == 1)
    # Nothing but the request itself went over the broker: no will, no presence.
    with broker.publisher() as pub:
        pub.publish("spy/end", b"")
    assert spy.topics_until("spy/end") == [CELL_TOPIC, "spy/end"]
    spy.close()


# ---------------------------------------------------------------- connection state


def test_stop_is_prompt_and_state_honest_when_no_broker_listens(tmp_path: Path) -> None:
    down = MosquittoBroker(tmp_path / "down")
    down.start()
    down.stop()  # a port where nothing listens any more
    listener = make_listener(down, Collector())
    listener.start()
    wait_stats(listener, lambda s: s.last_error is not None)
    stats = listener.stats
    assert not stats.connected and not stats.subscribed
    assert "refused" in (stats.last_error or "").lower()
    stopper = threading.Thread(target=listener.stop)
    stopper.start()
    stopper.join(3.0)  # paho's backoff sleeps in steps of at most 1 s
    assert not stopper.is_alive()


def test_broker_helper_keeps_its_port_and_shows_its_log(broker: MosquittoBroker) -> None:
    # tests/broker.py is shared: check the parts other tests lean on.
    port = broker.port
    cursor = broker.log_cursor()
    with listening(make_listener(broker, Collector(), client_id="camera-log")):
        line = broker.wait_for_log(r"New client connected .* as camera-log \(p5, c0", after=cursor)
    assert "camera-log" in line  # MQTT 5, clean start off
    broker.restart()
    assert broker.port == port and broker.running
    with pytest.raises(TimeoutError, match="no mosquitto log line"):
        broker.wait_for_log("never printed", after=broker.log_cursor(), timeout_s=0.2)


def test_batch_handler_gets_what_has_queued_and_every_message_is_acked(
    broker: MosquittoBroker,
) -> None:
    entered, release = threading.Event(), threading.Event()
    batches: list[list[bytes]] = []
    done = threading.Condition()

    def judge(messages: list[IncomingMessage]) -> None:
        if messages[0].payload == b"first":
            entered.set()
            assert release.wait(WAIT_S)  # the rest queue up meanwhile
        with done:
            batches.append([m.payload for m in messages])
            done.notify_all()

    listener = RequestListener(
        broker.host,
        broker.port,
        client_id="camera-1",
        topics=TOPICS,
        batch_handler=judge,
        max_batch=40,
    )
    payloads = [b"m%03d" % i for i in range(100)]
    with listening(listener), broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"first")
        assert entered.wait(WAIT_S)
        pub.publish_many([(CELL_TOPIC, p) for p in payloads])
        wait_stats(listener, lambda s: s.received == 101)
        release.set()
        wait_stats(listener, lambda s: s.handled == 101 and s.queued == 0)
    assert batches[0] == [b"first"]
    assert [p for batch in batches[1:] for p in batch] == payloads  # in order, once each
    assert max(len(batch) for batch in batches) == 40  # bounded, and really batched
    assert_nothing_redelivered(broker, "camera-1")


def test_a_burst_of_mixed_sizes_arrives_whole_in_order_across_socket_reads(
    broker: MosquittoBroker,
) -> None:
    """A burst of back-to-back messages, from a few bytes up to the 64 KiB limit,
    lands many packets in one TCP read and splits others across reads. Each must
    come out once, whole, in order."""
    import random

    rng = random.Random(11)
    sizes = [rng.choice([1, 17, 127, 128, 1_600, 16_383, 16_384, 40_000, 65_000, 65_536])
             for _ in range(300)]
    payloads = [b"%05d:" % i + rng.randbytes(max(0, size - 6)) for i, size in enumerate(sizes)]
    entered, release = threading.Event(), threading.Event()
    first = b"first"

    def hold_the_first(message: IncomingMessage) -> None:
        if message.payload == first:
            entered.set()
            assert release.wait(WAIT_S)  # the burst piles up in the socket meanwhile

    collector = Collector(before=hold_the_first)
    listener = make_listener(broker, collector, queue_size=1000, queue_bytes=64 * 1024 * 1024)
    with listening(listener), broker.publisher() as pub:
        pub.publish(CELL_TOPIC, first)
        assert entered.wait(WAIT_S)
        pub.publish_many([(CELL_TOPIC, p) for p in payloads])
        release.set()
        wait_stats(listener, lambda s: s.handled == len(payloads) + 1)
    assert collector.payloads == [first, *payloads]
    assert listener.stats.dropped_oversize == 0
