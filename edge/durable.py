"""Files that are whole on disk or not there at all, across a power cut.

A rename is only durable once the directory holding it is fsynced: without
that, a power cut can bring back the old name (or none) even though the file's
own bytes were fsynced.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_durably(temporary: Path, path: Path) -> None:
    """Moves an fsynced ``temporary`` onto ``path`` (same directory) and makes that last."""
    os.replace(temporary, path)
    fsync_dir(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Writes ``path`` all or nothing (mode 0600): a temporary beside it, fsync, rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    rename_durably(temporary, path)
