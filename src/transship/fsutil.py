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
    the directory so the rename itself survives a crash. The file gets the umask's mode like
    any new file, or 0600 if `private` (a key, a file that may hold passwords, a cache)."""
    payload = data.encode() if isinstance(data, str) else data
    make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # named as the user gave it, not by the temporary file
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        if not private:
            share_like_a_new_file(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """`write_atomic` for a file written piece by piece (an archive): a temporary file in
    `path`'s directory (created if need be), with the mode any new file gets, fsynced and
    renamed over `path` when the block ends, then the directory fsynced; removed if the block
    raises. Errors are the caller's to name. Once renamed the file is complete and in place:
    a failing fsync of the directory after that is a warning (the new name may not survive a
    crash), not an error that would report a finished file as failed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        share_like_a_new_file(fd)
        with os.fdopen(fd, "wb") as out:
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
