"""Where blobs landed at each destination, remembered across runs.

Within a run the engine uploads a shared blob once and mounts it everywhere else, mounting from
wherever it first landed. A run killed part-way forgets that: on the rerun another task may
reach the blob first and, asking only its own repository, send it again. The log closes that
gap: the repository where each blob first landed in a run (uploaded, or mounted from an older
run's home) is appended as `repository digest` to a small file per destination, and a rerun
mounts from the repository the log names. A stale or lost log is harmless: the mount is
refused (one request, after which the run stops asking the log) and the blob is uploaded, as
without it.

Lines are appended with O_APPEND (whole lines, so concurrent runs interleave safely); a torn
last line after a kill is ignored; a log over `MAX_BYTES` starts afresh.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from transship.cachedir import cache_dir
from transship.digest import Digest
from transship.errors import InvalidDigestError

log = logging.getLogger(__name__)

#: a log this large is dropped at the next run's start (about 100k blobs)
MAX_BYTES = 8 * 1024 * 1024


def default_directory() -> Path | None:
    """`$XDG_CACHE_HOME/transship/landed`, else `~/.cache/transship/landed`; None when caches
    are off (`TRANSSHIP_NO_CACHE`) or there is no home (`transship.cachedir`)."""
    return cache_dir("landed")


class LandedLog:
    """One append-only file per destination (named by a hash of its label)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._homes: dict[str, dict[Digest, str]] = {}
        self._files: dict[str, int] = {}
        self._broken = False
        self._distrusted: set[str] = set()

    def _path(self, label: str) -> Path:
        name = hashlib.sha256(label.encode()).hexdigest()[:24]
        return self.directory / f"{name}.log"

    def homes(self, label: str) -> dict[Digest, str]:
        """digest → the repository it last landed in at `label`, as earlier runs recorded."""
        if label in self._distrusted:
            return {}
        if label in self._homes:
            return self._homes[label]
        found: dict[Digest, str] = {}
        path = self._path(label)
        try:
            if path.stat().st_size > MAX_BYTES:
                path.unlink()
            else:
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    repository, _, text = line.partition(" ")
                    try:
                        found[Digest.parse(text)] = repository
                    except InvalidDigestError:
                        continue  # a torn last line, or damage: that entry is simply unknown
        except OSError:
            pass  # no log yet, or unreadable: nothing is known
        self._homes[label] = found
        return found

    def distrust(self, label: str) -> None:
        """A remembered home refused the mount: `label` is another registry now (same address,
        new storage), so its log is not asked again in this run; each entry costs a request."""
        self._distrusted.add(label)

    def record(self, label: str, repository: str, digest: Digest) -> None:
        """Append one line; an unwritable log is given up for the run (a debug line, no error)."""
        if self._broken:
            return
        try:
            fd = self._files.get(label)
            if fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path(label), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                self._files[label] = fd
                end = os.lseek(fd, 0, os.SEEK_END)
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    os.write(fd, b"\n")  # a killed run's torn line stays a line of its own
            os.write(fd, f"{repository} {digest}\n".encode())
        except OSError as exc:
            log.debug("landed log not written: %s", exc)
            self._broken = True

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
