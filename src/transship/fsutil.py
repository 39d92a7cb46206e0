"""Durable file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("transship.fsutil")


def fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable: after a crash the new name is there, or the old."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc), else by the
    classic set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_a_new_file(fd: int) -> None:
    """`mkstemp` makes 0600 files; what transship writes for people and other tools (layouts,
    archives, plans, reports) gets the mode any new file gets: 0666 less the umask."""
    os.fchmod(fd, 0o666 & ~current_umask())


def make_parent(path: Path) -> None:
    """Create the directories `path` goes in. A file where one of them should be is said as
    such ('a.txt is not a directory'), not as mkdir's 'File exists', which names no culprit."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = unwritable(path) if isinstance(exc, FileExistsError | NotADirectoryError) else None
        raise OSError(errno.ENOTDIR if why else exc.errno, why or exc.strerror, str(path)) from None


def write_atomic(path: Path, data: bytes | str, *, private: bool = False) -> None:
    """Write to a temporary file in the same directory, fsync, rename over `path`, then fsync
    the directory so the rename itself survives a crash (`atomic_file`). The file gets the
    umask's mode like any new file, or 0600 if `private` (a key, a file that may hold
    passwords, a cache). An error names `path` as the user gave it, never the temporary."""
    payload = data.encode() if isinstance(data, str) else data
    try:
        with atomic_file(path, private=private) as handle:
            handle.write(payload)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


@contextlib.contextmanager
def atomic_file(path: Path, *, private: bool = False) -> Iterator[BinaryIO]:
    """`write_atomic` for a file written piece by piece (an archive): a temporary file in
    `path`'s directory (created if need be, `make_parent`), with the mode any new file gets
    (0600 if `private`), fsynced and renamed over `path` when the block ends, then the
    directory fsynced; removed if the block raises. Errors are the caller's to name. Once
    renamed the file is complete and in place: a failing fsync of the directory after that
    is a warning (the new name may not survive a crash), not an error that would report a
    finished file as failed."""
    make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:  # owns the descriptor from here: closed whatever fails
            if not private:
                share_like_a_new_file(out.fileno())
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        log.warning(
            "%s is written, but syncing its directory failed (%s): after a crash it may be "
            "missing; check it then",
            path, exc.strerror or exc,
        )  # fmt: skip


def unwritable(path: Path) -> str | None:
    """Why `write_atomic(path, ...)` would fail for want of permission or a place, checked
    before a long run rather than after it; None when it looks writable."""
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in the library's own chunks (SHA256SUMS lines)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
