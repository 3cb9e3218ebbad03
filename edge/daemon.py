"""The composition root: builds every stage from the config, starts them, stops them in order.

Recording comes first and never depends on the network: a broker that is down
shows in the status, it does not stop the camera. Sharing (MQTT intake, owner
prompts, the review page, delivery) is added when the config enables it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.buffer.ring import Ring, RingError, RingFeed
from edge.buffer.segmenter import Segmenter
from edge.capture import open_source
from edge.capture.encoder import make_encoder
from edge.clock import Clock, SystemClock
from edge.config import Config
from edge.keys import KeyError_
from edge.recorder import Recorder
from edge.share.verify import Location, Policy, Trust
from edge.stopping import stop_in_order
from edge.systemd_notify import SystemdNotifier
from edge.units import format_rfc3339_ms

if TYPE_CHECKING:
    from edge.sharing import Sharing

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"  # the running daemon's health, for `edge status`
STATUS_INTERVAL_S = 2.0


class StartupError(Exception):
    """The daemon cannot start for a reason the owner can fix; one line."""


def verifier_inputs(config: Config) -> tuple[Trust, Policy, Location | None]:
    trust = Trust(config.trust.platform_keys)
    policy = Policy(
        max_window_s=config.policy.max_window_s,
        max_radius_m=config.policy.max_radius_m,
        allow_insecure_localhost=config.upload.allow_insecure_localhost,
    )
    location = None
    if config.device.latitude is not None and config.device.longitude is not None:
        location = Location(lat=config.device.latitude, lon=config.device.longitude)
    return trust, policy, location


def open_ring(config: Config, clock: Clock) -> Ring:
    try:
        return Ring.open(
            config.device.data_dir,
            max_bytes=config.buffer.max_bytes,
            max_age_s=config.buffer.max_age_s,
            clock=clock,
            owner_recipients=list(config.keys.owner_recipients),
            rotate_every_s=config.buffer.key_rotation_s,
            pin_cap_bytes=config.buffer.effective_pin_cap_bytes,
            keys_dir=config.keys_dir,
        )
    except (RingError, KeyError_) as exc:
        raise StartupError(str(exc)) from None
    except PermissionError as exc:
        raise StartupError(f"{exc.filename}: permission denied") from None


def build_recorder(
    config: Config, ring: Ring, clock: Clock, run_id: str
) -> tuple[Recorder, str]:
    """The recording pipeline, and the name of what encodes (for the status)."""
    camera = config.camera
    keyframe_interval = camera.fps * config.buffer.segment_seconds
    try:
        source = open_source(
            camera.source,  # type: ignore[arg-type]  # validated by the config loader
            camera.width,
            camera.height,
            Fraction(camera.fps),
            camera.device,
            camera.file,
            clock,
            bitrate_bps=camera.bitrate or None,
            keyframe_interval_frames=keyframe_interval,
        )
    except (OSError, ValueError) as exc:
        raise StartupError(f"camera ({camera.source}): {exc}") from None
    encoder = None
    if source.output == "raw":
        encoder = make_encoder(
            camera.encoder,  # type: ignore[arg-type]
            camera.width,
            camera.height,
            Fraction(camera.fps),
            crf=camera.crf,
            bitrate_bps=camera.bitrate or None,
            keyframe_interval_frames=keyframe_interval,
        )
    segmenter = Segmenter(
        sink=RingFeed(ring),
        camera=config.device.name,
        run_id=run_id,
        segment_seconds=config.buffer.segment_seconds,
    )
    encoder_name = encoder.name if encoder is not None else "the source's own H.264"
    return Recorder(source, segmenter, clock, encoder=encoder), encoder_name


def build_sharing(config: Config, ring: Ring, clock: Clock) -> Sharing | None:
    """The sharing side, when the config enables it. Imported only then: a camera that
    only records never loads the MQTT, web or notification code."""
    from edge.sharing import Sharing, sharing_disabled_reason

    disabled_reason = sharing_disabled_reason(config)
    if disabled_reason is not None:
        log.info("not listening for requests: %s", disabled_reason)
        return None
    from edge.share.mqtt import MqttSetupError
    from edge.share.notify import NotifyConfigError
    from edge.share.outbox import OutboxError
    from edge.share.store import StoreError

    try:
        return Sharing.build(config, ring, clock)
    except (NotifyConfigError, MqttSetupError, StoreError, OutboxError) as exc:
        raise StartupError(str(exc)) from None


@dataclass
class Daemon:
    """One `edge run`. Built by ``Daemon.build``; ``run`` blocks until stopped."""

    config: Config
    clock: Clock
    ring: Ring
    recorder: Recorder
    run_id: str
    encoder_name: str
    sharing: Sharing | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)
    status_write_failing: bool = field(default=False, init=False)  # said once per streak

    @classmethod
    def build(cls, config: Config, clock: Clock | None = None) -> Daemon:
        clock = clock or SystemClock()
        run_id = uuid.uuid4().hex[:12]
        ring = open_ring(config, clock)
        try:
            recorder, encoder_name = build_recorder(config, ring, clock, run_id)
            sharing = build_sharing(config, ring, clock)
        except BaseException:
            ring.close()
            raise
        return cls(
            config=config,
            clock=clock,
            ring=ring,
            recorder=recorder,
            run_id=run_id,
            encoder_name=encoder_name,
            sharing=sharing,
        )

    def status(self) -> dict[str, Any]:
        stats = self.recorder.stats
        sharing = self.sharing.status() if self.sharing is not None else {}
        return sharing | {
            "pid": os.getpid(),
            "run_id": self.run_id,
            "updated": format_rfc3339_ms(self.clock.now_ms()),
            "clock_synchronized": self.clock.is_synchronized(),
            "camera": {
                "source": self.config.camera.source,
                "encoder": self.encoder_name,
                "frames_captured": stats.frames_captured,
                "frames_dropped": stats.frames_dropped,
                "frames_encoded": stats.frames_encoded,
                "segments": stats.segments,
                "errors": stats.errors,
                "last_error": stats.last_error,
            },
        }

    def status_line(self) -> str:
        """One line for `systemctl status` (STATUS=)."""
        stats = self.recorder.stats
        parts = [
            f"recording {self.config.camera.width}x{self.config.camera.height}"
            f"@{self.config.camera.fps}: {stats.segments} segments, {stats.frames_dropped} dropped"
        ]
        if not self.clock.is_synchronized():
            parts.append("clock NOT synchronised")
        if self.sharing is not None:
            parts.extend(f"{name} {text}" for name, text in self.sharing.status()["parts"].items())
        return "; ".join(parts)

    def _write_status(self) -> None:
        """Writes the status file `edge status` reads. A full disk (another process may
        take the space the ring keeps free) must not stop recording: the write is
        skipped, said once, and tried again on the next tick."""
        path = self.config.device.data_dir / STATUS_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(self.status()))
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            if not self.status_write_failing:
                log.warning(
                    "cannot write %s (%s); `edge status` shows older figures until it can",
                    path,
                    exc.strerror or exc,
                )
            self.status_write_failing = True
            return
        if self.status_write_failing:
            log.info("status file written again")
        self.status_write_failing = False

    def run(self, duration_s: float | None = None) -> int:
        try:
            self.recorder.start()
        except RuntimeError as exc:  # picamera2 missing, or the camera would not start
            self.ring.close()
            raise StartupError(f"camera ({self.config.camera.source}): {exc}") from None
        if self.sharing is not None:
            self.sharing.start()
        self.notifier.ready(f"recording {self.config.camera.source} camera")
        log.info(
            "recording: %s camera %dx%d at %d fps into %s",
            self.config.camera.source,
            self.config.camera.width,
            self.config.camera.height,
            self.config.camera.fps,
            self.config.device.data_dir,
        )
        deadline_s = None if duration_s is None else self.clock.monotonic_s() + duration_s
        exit_code = 0
        last_frames = -1
        try:
            while not self.stop_event.is_set():
                wait_s = STATUS_INTERVAL_S
                if deadline_s is not None:
                    remaining_s = deadline_s - self.clock.monotonic_s()
                    if remaining_s <= 0:
                        break
                    wait_s = min(wait_s, remaining_s)
                if self.recorder.wait(0):
                    log.error("recording stopped: %s", self.recorder.stats.last_error)
                    exit_code = 1
                    break
                frames = self.recorder.stats.frames_captured
                if frames != last_frames:  # frames still arrive: tell the watchdog
                    self.notifier.watchdog()
                    last_frames = frames
                self._write_status()
                self.notifier.status(self.status_line())
                self.stop_event.wait(wait_s)
        finally:
            if not self.shutdown():
                exit_code = 1
        return exit_code

    def shutdown(self) -> bool:
        """Stops every part (past any that fails); False if one failed."""
        self.notifier.stopping()
        # Recording first: the segment in progress is closed and stored before
        # anything on the network side can make the stop slow (systemd's
        # TimeoutStopSec ends in SIGKILL, which would lose that segment).
        sharing_steps = self.sharing.stop_steps() if self.sharing is not None else []
        failed = stop_in_order(
            [("recorder", self.recorder.stop), *sharing_steps, ("ring", self.ring.close)]
        )
        if failed:
            log.error("stopped with errors in: %s (see the tracebacks above)", ", ".join(failed))
        stats = self.recorder.stats
        log.info(
            "stopped: %d frames, %d dropped, %d segments",
            stats.frames_captured,
            stats.frames_dropped,
            stats.segments,
        )
        try:
            (self.config.device.data_dir / STATUS_FILE).unlink()
        except FileNotFoundError:
            pass
        return not failed


def run_daemon(config: Config, duration_s: float | None = None) -> int:
    """`edge run`: the daemon in the foreground until SIGTERM/SIGINT or ``duration_s``."""
    daemon = Daemon.build(config)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stopping (%s)", signal.Signals(signum).name)
        daemon.stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return daemon.run(duration_s)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The running daemon's last status, or None when it is not running."""
    try:
        status = json.loads((data_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    pid = status.get("pid") if isinstance(status, dict) else None
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a daemon that died
    except PermissionError:
        pass
    return status
