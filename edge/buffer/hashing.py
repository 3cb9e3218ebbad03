"""SHA-256 on a worker thread, beside the work it checks.

hashlib lets go of Python's interpreter lock while it hashes a large buffer, so
a hash on a worker runs on another core while the calling thread decrypts,
seals or writes (pyrage holds the lock throughout). The ring hashes each sealed
segment this way as it writes or decrypts it, and the clip builder its output.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_MAX_QUEUED_UPDATES = 8  # bounds the buffers a streaming hash keeps alive
_T = TypeVar("_T")


class HashWorker:
    """One worker thread, started on first use; jobs run in the order given."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def sha256(self, data: bytes | memoryview) -> Future[bytes]:
        return self.submit(lambda: hashlib.sha256(data).digest())

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()

    def submit(self, job: Callable[[], _T]) -> Future[_T]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._name)
            return self._executor.submit(job)


class StreamingSha256:
    """hashlib.sha256 fed on a worker: ``update`` returns at once, ``hexdigest`` waits.

    The caller must not change a buffer after handing it over (bytes and views
    of bytes never change)."""

    def __init__(self, name: str) -> None:
        self._hash = hashlib.sha256()
        self._worker = HashWorker(name)
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes | memoryview) -> None:
        while len(self._pending) >= _MAX_QUEUED_UPDATES:
            self._pending.popleft().result()
        self._pending.append(self._worker.submit(lambda: self._hash.update(data)))

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._hash.hexdigest()

    def close(self) -> None:
        """Ends the worker (after what was queued); hexdigest must come before."""
        self._pending.clear()
        self._worker.close()
