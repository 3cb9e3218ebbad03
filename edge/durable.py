"""Files that are whole on disk or not there at all, across a power cut.

A file is written under a temporary name and fsynced before it takes its real
name; the rename is only durable once the directory holding it is fsynced too:
without that, a power cut can bring back the old name (or none) even though the
file's own bytes were on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes | bytearray | memoryview, *, mode: int = 0o600) -> None:
    """Creates ``path`` (it must not exist) holding ``data``, fsynced; on failure removes it."""
    with _created_synced(path, mode) as out:
        out.write(data)


def rename_durably(temporary: Path, path: Path) -> None:
    """Moves an fsynced ``temporary`` onto ``path`` (same directory) and makes that last."""
    os.replace(temporary, path)
    fsync_dir(path.parent)


@contextmanager
def replacing_durably(path: Path, *, temporary: Path | None = None) -> Iterator[BinaryIO]:
    """A new file (mode 0600) to write that takes the place of ``path`` when the block
    ends without an error, all or nothing; on an error it is removed. It is written
    as ``temporary``, a name beside ``path`` (by default ``.NAME.tmp``; one left by
    a crash is ours and replaced)."""
    temporary = temporary or path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with _created_synced(temporary, 0o600) as out:
        yield out
    rename_durably(temporary, path)


def write_durably(
    path: Path, data: bytes | bytearray | memoryview, *, temporary: Path | None = None
) -> None:
    """Writes ``path`` all or nothing (mode 0600): ``replacing_durably`` with ``data``."""
    with replacing_durably(path, temporary=temporary) as out:
        out.write(data)


@contextmanager
def _created_synced(path: Path, mode: int) -> Iterator[BinaryIO]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits we want (never adds any)
        with open(fd, "wb") as out:  # buffered: a short write is retried, never lost
            yield out
            out.flush()
            os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
