"""A part that fails to stop must not keep the daemon running.

CI caught `edge run` hanging after SIGTERM: paho-mqtt's loop_stop() raised
(a race inside paho, now handled in edge/share/mqtt.py), the exception skipped
every stop after it, and the consent and delivery threads it never stopped
kept the process alive until the test's 60 s ran out. Here a listener whose
stop raises stands in for any such bug; everything else is real: the daemon
built from a config, a virtual camera, a mosquitto broker, the ring on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from broker import MosquittoBroker
from edge.config import load_config
from edge.daemon import STATUS_FILE, Daemon
from edge.stopping import stop_in_order
from test_daemon_requests import write_daemon_config

WAIT_S = 30.0


def test_every_step_runs_past_one_that_raises_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def broken() -> None:
        ran.append("second")
        raise RuntimeError("a bug in the second part")

    failed = stop_in_order(
        [
            ("first", lambda: ran.append("first")),
            ("second", broken),
            ("third", lambda: ran.append("third")),
        ]
    )
    assert ran == ["first", "second", "third"]
    assert failed == ["second"]
    assert "stopping the second failed" in caplog.text
    assert "a bug in the second part" in caplog.text  # the traceback is logged


def test_a_listener_whose_stop_raises_does_not_keep_the_daemon_running(
    tmp_path: Path,
    broker: MosquittoBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_path = write_daemon_config(tmp_path, broker.port)
    caplog.set_level(logging.INFO)
    threads_before = set(threading.enumerate())
    daemon = Daemon.build(load_config(config_path))
    sharing = daemon.sharing
    assert sharing is not None
    listener_stop = sharing.listener.stop

    def broken_stop() -> None:
        listener_stop()  # the listener itself is stopped, so its threads end ...
        raise AttributeError("'NoneType' object has no attribute 'join'")  # ... then the bug

    monkeypatch.setattr(sharing.listener, "stop", broken_stop)
    exit_codes: list[int] = []
    runner = threading.Thread(target=lambda: exit_codes.append(daemon.run()), name="test-daemon")
    runner.start()
    deadline_s = time.monotonic() + WAIT_S
    while not (sharing.listener.stats.subscribed and daemon.recorder.stats.segments >= 1):
        assert runner.is_alive() and time.monotonic() < deadline_s, "the daemon did not get going"
        daemon.stop_event.wait(0.05)

    daemon.stop_event.set()  # what SIGTERM does
    runner.join(WAIT_S)
    assert not runner.is_alive(), "the daemon's stop hung"
    assert exit_codes == [1]  # systemd logs a failed stop, not a clean one
    left_running = [
        t.name
        for t in threading.enumerate()
        if t not in threads_before and t is not runner and not t.daemon
    ]
    assert left_running == [], "these would keep the process alive after main() returns"
    assert "stopping the MQTT listener failed" in caplog.text
    assert "stopped with errors in: MQTT listener" in caplog.text
    assert "stopped: " in caplog.text  # ... and the rest of the stop ran to its end
    assert not (tmp_path / "data" / STATUS_FILE).exists()
    # The parts after the listener were stopped and closed: the ring's index
    # and the request store open again in a new run without complaint.
    Daemon.build(load_config(config_path)).shutdown()
