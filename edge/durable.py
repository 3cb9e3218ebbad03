"""Files that are whole on disk or not there at all, across a power cut.

A file is written under a temporary name and fsynced before it takes its real
name; the rename is only durable once the directory holding it is fsynced too:
without that, a power cut can bring back the old name (or none) even though the
file's own bytes were on disk.
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


def write_synced(path: Path, data: bytes | bytearray | memoryview, *, mode: int = 0o600) -> None:
    """Creates ``path`` (it must not exist) holding ``data``, fsynced; on failure removes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits we want (never adds any)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def rename_durably(temporary: Path, path: Path) -> None:
    """Moves an fsynced ``temporary`` onto ``path`` (same directory) and makes that last."""
    os.replace(temporary, path)
    fsync_dir(path.parent)


def write_durably(
    path: Path, data: bytes | bytearray | memoryview, *, temporary: Path | None = None
) -> None:
    """Writes ``path`` all or nothing (mode 0600) through ``temporary``, a name beside
    it (by default ``.NAME.tmp``; one left by a crash is ours and replaced)."""
    temporary = temporary or path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    write_synced(temporary, data)
    rename_durably(temporary, path)
