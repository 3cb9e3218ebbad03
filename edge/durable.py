"""Files that are whole on disk or not there at all, across a power cut.

A file is written under a temporary name and fsynced before it takes its real
name; the rename is only durable once the directory holding it is fsynced too:
without that, a power cut can bring back the old name (or none) even though the
file's own bytes were on disk.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A long file (a clip) has its pages sent to disk as it grows, every this many
# bytes, so that the fsync at its end waits for the last few megabytes only:
# a clip's whole fsync at once took as long as building it.
WRITEBACK_BYTES = 8 << 20


class SyncedFile:
    """A new file being written, fsynced when its block ends. Writes are unbuffered
    and whole (a short write is retried)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._unsent_bytes = 0  # written since writeback was last started

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self._fd, view) :]
        self._unsent_bytes += total
        if self._unsent_bytes >= WRITEBACK_BYTES:
            self._start_writeback()
        return total

    def _start_writeback(self) -> None:
        # Starts writing back what is dirty, without waiting (and drops the pages
        # already clean: a clip is not read again soon). Python has no
        # sync_file_range(); this is the portable way to the same start.
        self._unsent_bytes = 0
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # only advice: the fsync at the end still makes it durable


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some filesystems (FAT on a USB stick, some FUSE ones) cannot sync a
        # directory: there is nothing more to be done for the rename there.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
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
def replacing_durably(path: Path, *, temporary: Path | None = None) -> Iterator[SyncedFile]:
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
def _created_synced(path: Path, mode: int) -> Iterator[SyncedFile]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits we want (never adds any)
        yield SyncedFile(fd)
        os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
