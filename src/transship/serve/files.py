"""The archive's files as they were when indexed: held open, their identity recorded.

A blob is served from the path and offset found at start. If the file is then replaced (a new
save written over the same name) or truncated, reading that path again would send other bytes
under the blob's digest, or fewer bytes than the Content-Length promised. So at index time each
file holding blobs is opened once and kept open (up to a budget of descriptors), and its
identity (device, inode, size, mtime) is recorded. A request reads through a fresh handle on
the same open file (`/proc/self/fd/N`: its own offset, the same inode), so a replace by rename
changes nothing that is served; a file changed in place (same inode rewritten, truncated) no
longer has the recorded identity and is refused: 503 and one log line, until serve restarts.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from pathlib import Path
from typing import BinaryIO, NamedTuple

from transship.serve.errors import APIError

log = logging.getLogger("transship.serve")

#: descriptors kept for connections, the layout readers and the rest
_SPARE_FDS = 256


class Identity(NamedTuple):
    """What tells a file from the one indexed: a rewrite changes mtime, a replace the inode."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def differs(self, other: Identity) -> str:
        """How `other` differs, in words for the log ("" when it does not)."""
        if (other.dev, other.ino) != (self.dev, self.ino):
            return "replaced by another file"
        if other.size != self.size:
            return f"size {self.size} → {other.size} bytes"
        if other.mtime_ns != self.mtime_ns:
            return "rewritten: modification time changed"
        return ""


class ChangedOnDisk(APIError):
    """A file changed after indexing: a 503, never bytes read from it. The client is told
    what happened; the log (`log_line`) names the file, which the client is not told."""

    def __init__(self, label: str, path: Path, how: str) -> None:
        super().__init__(
            "UNAVAILABLE",
            message="the served archive changed on disk since the server started; "
            "it must be restarted",
        )
        where = f"archive {label}" if str(path) in label else f"archive {label}: {path}"
        self.log_line = f"{where} changed on disk; restart serve ({how})"


class _Pinned(NamedTuple):
    identity: Identity
    fd: int | None  # None past the descriptor budget: reopened by name, identity checked


def default_budget() -> int:
    """How many files to hold open: half the soft descriptor limit, less a spare."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(0, soft // 2 - _SPARE_FDS)


class PinnedFiles:
    """The files blobs are read from, as indexed; `open` gives a checked handle on one."""

    def __init__(self, label: str, budget: int | None = None) -> None:
        self.label = label
        self.budget = default_budget() if budget is None else budget
        self._files: dict[Path, _Pinned] = {}
        self._held = 0  # files in `_files` held open
        self._reported: set[Path] = set()  # one log line per changed (or replaced) file
        self._lock = threading.Lock()  # `pin` from request threads (a file unreadable at start)

    def pin(self, path: Path) -> None:
        """Record the file (open it while the budget lasts); called at index time."""
        with self._lock:
            if path in self._files:
                return
            if self._held < self.budget:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    identity = Identity.of(os.fstat(fd))
                except BaseException:
                    os.close(fd)
                    raise
                self._files[path] = _Pinned(identity, fd)
                self._held += 1
            else:
                self._files[path] = _Pinned(Identity.of(os.stat(path)), None)

    def open(self, path: Path) -> BinaryIO:
        """A handle of its own on the file as indexed; ChangedOnDisk if it is not that file.

        Blocking (open, fstat): call it in a thread."""
        pinned = self._files.get(path)
        if pinned is None:  # not indexed (cannot happen for a served blob): pin it now
            self.pin(path)
            pinned = self._files[path]
        handle: BinaryIO | None = None
        if pinned.fd is not None:
            try:
                handle = open(f"/proc/self/fd/{pinned.fd}", "rb")  # noqa: SIM115 - returned
            except OSError:  # no /proc (or not ours to read): the name, checked as if unheld
                handle = None
        if handle is None:
            handle = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        try:
            self._check(path, pinned.identity, Identity.of(os.fstat(handle.fileno())))
        except BaseException:
            handle.close()
            raise
        if pinned.fd is not None:
            self._note_replaced(path, pinned.identity)
        return handle

    def check(self, path: Path) -> None:
        """ChangedOnDisk if the file is no longer as indexed (after a short read, a mismatch)."""
        pinned = self._files.get(path)
        if pinned is None:
            return
        if pinned.fd is not None:
            now = Identity.of(os.fstat(pinned.fd))
        else:
            try:
                now = Identity.of(os.stat(path))
            except FileNotFoundError:
                raise self._changed(path, "removed") from None
        self._check(path, pinned.identity, now)

    def _check(self, path: Path, indexed: Identity, now: Identity) -> None:
        how = indexed.differs(now)
        if how:
            raise self._changed(path, how)

    def _changed(self, path: Path, how: str) -> ChangedOnDisk:
        error = ChangedOnDisk(self.label, path, how)
        if path not in self._reported:
            self._reported.add(path)
            log.error("%s", error.log_line)
        return error

    def _note_replaced(self, path: Path, indexed: Identity) -> None:
        """A held file whose name now shows another file: still served as indexed; say so once."""
        if path in self._reported:
            return
        try:
            now = Identity.of(os.stat(path))
        except OSError:
            now = None
        if now is None or (now.dev, now.ino) != (indexed.dev, indexed.ino):
            self._reported.add(path)
            log.warning(
                "archive %s: %s was replaced on disk; still serving the file as indexed "
                "(restart serve to serve the new one)",
                self.label,
                path,
            )

    def close(self) -> None:
        for pinned in self._files.values():
            if pinned.fd is not None:
                os.close(pinned.fd)
        self._files.clear()
        self._held = 0
