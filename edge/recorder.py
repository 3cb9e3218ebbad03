"""The recording pipeline: source -> bounded queue -> encoder -> segmenter -> sink.

Two named threads share one stop event:

- ``edge-capture`` reads the source and puts frames on a bounded queue. It
  never waits for anything downstream: when the queue is full the frame is
  dropped, counted and logged (and, for an encoded source, every packet after
  it up to the next key frame, which could not be decoded without it).
- ``edge-encode`` takes frames off the queue, encodes raw ones, and feeds the
  segmenter, which hands finished segments to the sink.

``stop()`` stops the source, lets the encode thread finish what was captured,
flushes the encoder and closes the last segment, so nothing captured is lost.
An exception on either thread is logged with its traceback, kept in
``error`` and counted in ``stats``, and stops the recorder; ``wait`` returns
then, so whoever supervises (the daemon) can act on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge.buffer.segmenter import Segmenter
from edge.capture.types import EncodedPacket, RawFrame, Source, VideoEncoder
from edge.clock import Clock

log = logging.getLogger(__name__)

DEFAULT_QUEUE_FRAMES = 10  # about a third of a second at 30 fps; 14 MB of 720p frames
READ_TIMEOUT_S = 0.5  # how long one source read may block; bounds how late a stop is seen
DROP_LOG_INTERVAL_S = 5.0
STOP_TIMEOUT_S = 30.0

_END = object()  # queue marker: capture has finished, drain and close


@dataclass(frozen=True, slots=True)
class RecorderStats:
    frames_captured: int  # frames read from the source
    frames_dropped: int  # lost anywhere before encoding: queue overflow plus the source's own
    frames_dropped_by_source: int  # of those, lost in the source (late reads, its own buffer)
    frames_encoded: int  # packets handed to the segmenter
    segments: int  # segments handed to the sink
    errors: int
    last_error: str | None


class Recorder:
    """Built and started by the daemon; ``stats`` may be read from any thread."""

    def __init__(
        self,
        source: Source,
        segmenter: Segmenter,
        clock: Clock,
        encoder: VideoEncoder | None = None,
        queue_frames: int = DEFAULT_QUEUE_FRAMES,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        if source.output == "raw" and encoder is None:
            raise ValueError("a source of raw frames needs an encoder")
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be at least 1, got {queue_frames}")
        self._source = source
        self._segmenter = segmenter
        self._clock = clock
        self._encoder = encoder
        self._on_failure = on_failure
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_frames)
        self._stop_event = threading.Event()
        self._encode_exited = threading.Event()  # the encode thread takes nothing more
        self._done = threading.Event()  # both threads have finished
        self._lock = threading.Lock()  # guards _started/_stopped and the error fields
        self._started = False
        self._stopped = False
        self._error: BaseException | None = None
        self._errors = 0
        # Counters: each written by one thread only (captured/dropped: capture thread;
        # encoded: encode thread), read by anyone.
        self._captured = 0
        self._dropped = 0
        self._encoded = 0
        self._capture_thread = threading.Thread(target=self._capture_loop, name="edge-capture")
        self._encode_thread = threading.Thread(target=self._encode_loop, name="edge-encode")

    @property
    def stats(self) -> RecorderStats:
        with self._lock:
            errors, error = self._errors, self._error
        source_dropped = self._source.dropped_frames
        return RecorderStats(
            frames_captured=self._captured,
            frames_dropped=self._dropped + source_dropped,
            frames_dropped_by_source=source_dropped,
            frames_encoded=self._encoded,
            segments=self._segmenter.segments_emitted,
            errors=errors,
            last_error=None if error is None else f"{type(error).__name__}: {error}",
        )

    @property
    def error(self) -> BaseException | None:
        with self._lock:
            return self._error

    def start(self) -> None:
        with self._lock:
            if self._started:
                raise RuntimeError("recorder already started")
            self._started = True
        self._source.start()
        self._encode_thread.start()
        self._capture_thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops capture, finishes encoding what was captured, emits the last segment."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
        self._stop_event.set()
        self._source.stop()
        self._capture_thread.join(timeout_s)
        self._encode_thread.join(timeout_s)
        if self._capture_thread.is_alive() or self._encode_thread.is_alive():
            log.error("recorder threads did not finish within %.0f s", timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once both threads have finished (after ``stop`` or a failure)."""
        return self._done.wait(timeout_s)

    # --- capture thread ---------------------------------------------------------------

    def _capture_loop(self) -> None:
        skip_to_keyframe = False  # after dropping an encoded packet
        last_drop_log_s: float | None = None
        drops_since_log = 0
        try:
            while True:
                # After a stop, keep reading what the source still holds (picamera2 hands
                # over its last packets as it stops); a stopped source then returns None.
                item = self._source.read(READ_TIMEOUT_S)
                if item is None:
                    if self._stop_event.is_set():
                        break
                    continue
                self._captured += 1
                if skip_to_keyframe:
                    assert isinstance(item, EncodedPacket)
                    if not item.is_keyframe:
                        self._dropped += 1
                        drops_since_log += 1
                        continue
                    skip_to_keyframe = False
                try:
                    self._queue.put_nowait(item)
                    continue
                except queue.Full:
                    pass
                self._dropped += 1
                drops_since_log += 1
                skip_to_keyframe = isinstance(item, EncodedPacket)
                now_s = self._clock.monotonic_s()
                if last_drop_log_s is None or now_s - last_drop_log_s >= DROP_LOG_INTERVAL_S:
                    log.warning(
                        "encoding is falling behind: queue of %d frames full, dropped %d frame(s)"
                        " (%d in all)",
                        self._queue.maxsize,
                        drops_since_log,
                        self._dropped,
                    )
                    last_drop_log_s = now_s
                    drops_since_log = 0
        except BaseException as exc:
            self._fail("capture", exc)
        finally:
            self._put_end_marker()

    def _put_end_marker(self) -> None:
        # Blocking put: the encode thread is draining. If it has failed, nobody will.
        while not self._encode_exited.is_set():
            try:
                self._queue.put(_END, timeout=0.2)
                return
            except queue.Full:
                continue

    # --- encode thread ----------------------------------------------------------------

    def _encode_loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    break
                if isinstance(item, RawFrame):
                    assert self._encoder is not None
                    for packet in self._encoder.encode(item):
                        self._segment(packet)
                else:
                    assert isinstance(item, EncodedPacket)
                    self._segment(item)
            if self._encoder is not None:
                for packet in self._encoder.flush():
                    self._segment(packet)
            self._segmenter.close()
        except BaseException as exc:
            self._fail("encode", exc)
            self._close_after_failure()
        finally:
            self._encode_exited.set()
            self._capture_thread.join()
            self._done.set()

    def _close_after_failure(self) -> None:
        # Keep what was already segmented: emit the segment in progress if the
        # segmenter can still do it.
        try:
            self._segmenter.close()
        except Exception:
            log.exception("could not close the last segment after the failure")

    def _segment(self, packet: EncodedPacket) -> None:
        self._segmenter.add(packet)
        self._encoded += 1

    # --- both -------------------------------------------------------------------------

    def _fail(self, stage: str, exc: BaseException) -> None:
        log.error("recorder %s thread failed; stopping the recording", stage, exc_info=exc)
        with self._lock:
            self._errors += 1
            if self._error is None:
                self._error = exc
        self._stop_event.set()
        self._source.stop()
        if self._on_failure is not None:
            try:
                self._on_failure(exc)
            except Exception:
                log.exception("recorder failure callback failed")
