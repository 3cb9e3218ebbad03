"""A worker thread for the ring: work beside the work it checks.

The ring decrypts a segment on the worker while the reading thread goes on (the
clip builder hashes what it has written so far): hashlib lets go of Python's
interpreter lock while it hashes a large buffer, so the two share two cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")


class Worker:
    """One worker thread, started on first use; jobs run in the order given."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

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
