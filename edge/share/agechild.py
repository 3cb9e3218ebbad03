"""age encryption of a whole clip in a child process, beside the build.

Encryption holds Python's interpreter lock while it works; in the daemon's own
process it would take turns on one core with the clip builder. In a child
process of its own (the same Python, ``-I``, edge/buffer/agefile.py's
``AgeWriter``, at a lower priority) it runs on another core. Plaintext only
ever passes through a pipe (kernel memory); the recipient goes to the child on
its standard input.

``Sealer``: plaintext written to ``stdin`` comes out as age, to one recipient,
in a file the caller opened (mode 0600, its own temporary name).
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
from pathlib import Path
from typing import IO

import pyrage

from edge.priority import BACKGROUND_NICE

_PIPE_BYTES = 1 << 20  # fewer wake-ups than the 64 KiB default; Linux's usual cap
_MAX_ERROR_BYTES = 4096

# The recipient on stdin's first line(s) up to an empty line, then the plaintext.
_CHILD = """
import os
import sys

os.nice(int(sys.argv[1]))  # bulk work for sharing: recording comes first
sys.path.insert(0, sys.argv[2])  # where this edge is: -I leaves the environment out
from edge.buffer.agefile import AgeWriter

def keys():
    lines = []
    while line := sys.stdin.buffer.readline().strip():
        lines.append(line.decode())
    return lines

def start_writeback():
    # The caller fsyncs the file at the end; asking the kernel to write back what
    # is sealed so far (it drops those pages from the cache once written) spreads
    # that wait over the build: the fsync of a whole clip at once took longer
    # than building it. Not a file (a pipe, in tests): nothing to do.
    sys.stdout.buffer.flush()
    try:
        os.posix_fadvise(1, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True

try:
    sealer = AgeWriter(sys.stdout.buffer, keys())
    unsynced, writeback = 0, True
    while block := sys.stdin.buffer.read1(1 << 20):
        sealer.write(block)
        unsynced += len(block)
        if writeback and unsynced >= 8 << 20:
            writeback, unsynced = start_writeback(), 0
    sealer.close()
    sys.stdout.buffer.flush()
except Exception as error:
    sys.exit(f"{type(error).__name__}: {error}")
"""
_EDGE_ROOT = str(Path(__file__).resolve().parents[2])


class AgeChildError(ValueError):
    """The child could not seal or open the clip; the message is its own."""


class Sealer:
    """A sealing child writing age to ``sealed_fd``; write the plaintext to ``stdin``,
    then ``finish()``. On any error, ``abort()``."""

    def __init__(self, recipient: pyrage.x25519.Recipient, sealed_fd: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD, str(BACKGROUND_NICE), _EDGE_ROOT],
            stdin=subprocess.PIPE,
            stdout=sealed_fd,
            stderr=subprocess.PIPE,
        )
        assert self._process.stdin is not None
        self.stdin: IO[bytes] = self._process.stdin
        _widen(self.stdin.fileno())
        self.stdin.write(f"{recipient}\n\n".encode())

    def finish(self) -> None:
        """Ends the plaintext and waits; raises AgeChildError if the child failed."""
        with contextlib.suppress(BrokenPipeError):  # it failed early: its status says why
            self.stdin.close()
        _wait(self._process, "could not seal the clip")

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        _end(self._process)


def _widen(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


def _wait(process: subprocess.Popen[bytes], failure: str) -> None:
    """Reaps the child; raises its message if it failed."""
    assert process.stderr is not None
    problem = process.stderr.read(_MAX_ERROR_BYTES).decode(errors="replace").strip()
    process.stderr.close()
    if process.wait() != 0:
        raise AgeChildError(f"{failure}: {problem or f'exit status {process.returncode}'}")


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
