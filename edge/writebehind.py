"""Write-behind: a stream's writes carried out on a thread of its own.

Sealing with age and writing to a file both let go of Python's lock (the AEAD
of ``cryptography`` >= 50, and every system call), so a clip can be sealed on
one core while it is built on another. ``WriteBehind`` hands each piece it is
given to ``target.write`` on its thread, in order, while the caller goes on.

Pieces are kept, not copied, until they are written: they must not change
afterwards (``bytes``, or views of ``bytes``, as the clip builder writes). At
most ``max_pending_bytes`` wait at once (more than that and ``write`` waits),
so memory stays bounded whatever the length of the stream.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol


class Target(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


DEFAULT_MAX_PENDING_BYTES = 2 << 20  # a few segments: the sealing keeps up with the build


class WriteBehind:
    """Call ``write`` with pieces, then ``close`` (which waits for the rest); on any
    error of the caller's, ``abort``. An error of the thread's (a full disk) is
    raised by the next ``write`` or by ``close``; nothing after it is written."""

    def __init__(
        self,
        target: Target,
        *,
        name: str,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self._target = target
        self._max_pending_bytes = max_pending_bytes
        self._changed = threading.Condition()
        self._pieces: deque[bytes | memoryview] = deque()
        self._pending_bytes = 0
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> int:
        size = memoryview(data).nbytes
        with self._changed:
            # One piece larger than the bound still goes, alone.
            while (
                self._error is None
                and self._pending_bytes
                and self._pending_bytes + size > self._max_pending_bytes
            ):
                self._changed.wait()
            if self._error is not None:
                raise self._error
            if self._closing:
                raise ValueError("write to a closed WriteBehind")
            self._pieces.append(data)
            self._pending_bytes += size
            self._changed.notify_all()
        return size

    def close(self) -> None:
        """Waits until every piece is written; raises the thread's error, if any."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drops what is not yet written and waits for the thread to end."""
        with self._changed:
            self._closing = True
            self._pieces.clear()
            self._pending_bytes = 0
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pieces and not self._closing:
                    self._changed.wait()
                if not self._pieces:
                    return
                data = self._pieces.popleft()
            try:
                self._target.write(data)
            except BaseException as error:  # handed to the caller, who decides
                with self._changed:
                    self._error = error
                    self._pieces.clear()
                    self._pending_bytes = 0
                    self._changed.notify_all()
                return
            with self._changed:
                self._pending_bytes -= memoryview(data).nbytes
                self._changed.notify_all()
