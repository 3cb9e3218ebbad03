"""age encryption and decryption of a whole clip in a child process.

pyrage holds Python's interpreter lock for as long as it encrypts or decrypts,
and so does the decryption of the segments a clip is built from; in the daemon's
own process they would take turns on one core. In a child process of its own
(the same Python, ``-I``, pyrage) the work runs on another core, beside the
build or the upload. Plaintext only ever passes through a pipe (kernel memory);
keys go to the child on its standard input, never on its command line.

- ``Sealer``: plaintext written to ``stdin`` comes out as age, to one recipient,
  in a file the caller opened (mode 0600, its own temporary name).
- ``open_unsealed``: the plaintext of an age file, read as the child decrypts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pyrage

_PIPE_BYTES = 1 << 20  # fewer wake-ups than the 64 KiB default; Linux's usual cap
_MAX_ERROR_BYTES = 4096

# Either way: the key on stdin's first line(s) up to an empty line, then the data.
_CHILD = """
import os
import sys
import pyrage
from pyrage import x25519

def keys():
    lines = []
    while line := sys.stdin.buffer.readline().strip():
        lines.append(line.decode())
    return lines

os.nice(10)  # bulk work for sharing: the recording in the parent comes first
try:
    if sys.argv[1] == "seal":
        recipients = [x25519.Recipient.from_str(key) for key in keys()]
        pyrage.encrypt_io(sys.stdin.buffer, sys.stdout.buffer, recipients)
    else:
        identities = [x25519.Identity.from_str(key) for key in keys()]
        with open(sys.argv[2], "rb") as sealed:
            pyrage.decrypt_io(sealed, sys.stdout.buffer, identities)
    sys.stdout.buffer.flush()
except BrokenPipeError:
    sys.exit(0)  # the reader went away on purpose
except Exception as error:
    sys.exit(f"{type(error).__name__}: {error}")
"""


class AgeChildError(ValueError):
    """The child could not seal or open the clip; the message is its own."""


class Sealer:
    """A sealing child writing age to ``sealed_fd``; write the plaintext to ``stdin``,
    then ``finish()``. On any error, ``abort()``."""

    def __init__(self, recipient: pyrage.x25519.Recipient, sealed_fd: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD, "seal"],
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


def open_unsealed(path: Path, identities: list[pyrage.x25519.Identity]) -> IO[bytes]:
    """The plaintext of the age file at ``path``, decrypted by a child as it is read.

    A file that does not open raises AgeChildError when its end is read; closing
    early ends the child."""
    process = subprocess.Popen(
        [sys.executable, "-I", "-c", _CHILD, "open", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        # A few hundred bytes: fits the pipe, so this never waits on the child.
        process.stdin.write("".join(f"{identity}\n" for identity in identities).encode() + b"\n")
        process.stdin.close()
    except BaseException:
        _end(process)
        raise
    return io.BufferedReader(_ChildOutput(process, f"the sealed clip {path.name} does not open"))


class _ChildOutput(io.RawIOBase):
    def __init__(self, process: subprocess.Popen[bytes], failure: str) -> None:
        super().__init__()
        assert process.stdout is not None
        self._process = process
        self._fd = process.stdout.fileno()
        self._failure = failure
        self._ended = False  # the child has been reaped: later reads are at the end too
        _widen(self._fd)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._ended:
            return 0
        data = os.read(self._fd, len(buffer))
        if not data:
            self._ended = True
            _wait(self._process, self._failure)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            _end(self._process)
        super().close()


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
