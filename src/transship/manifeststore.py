"""Manifests read from source registries, kept on disk by digest across runs.

`transship plan -o plan.yaml` reads every manifest of the plan; `copy --plan plan.yaml` is
another process and used to GET them all again (~290 GETs for the TKG corpus). What a digest
names never changes, so a source `Registry` keeps each manifest it fetched here (by tag or by
digest) and answers a later lookup *by digest* from the file; a lookup by tag always goes to
the registry (tags move).

One file per manifest, `<root>/manifests/<algorithm>/<hex>` (`transship.cachedir`): the
manifest's media type on the first line (the body may lack `mediaType`; the type came from the
GET's Content-Type), the places it was read from on the second (`host/repository`, space
separated), then its exact bytes. Every read re-hashes the bytes against the file's name, so a
damaged or edited file is removed and the manifest fetched again: nothing read here is trusted
more than a GET (and so writes need no fsync, only a rename).

A lookup names where it would GET (`origin`) and is answered only if the manifest was read from
there: the bytes are one content whatever the repository, but whether a repository holds that
manifest is the registry's to say, so a reference naming the wrong repository fails as it would
without the store, instead of being served bytes read from another one.

Bounded: at most `MAX_BYTES`, and entries unused for `MAX_AGE` are dropped. The one directory
scan that enforces this happens when a run writes its first entry. A store that cannot be
written (read-only, full disk) is given up for the run with a debug line; it never fails a copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from transship.cachedir import cache_dir
from transship.digest import Digest
from transship.errors import TransshipError
from transship.manifest import Manifest

log = logging.getLogger("transship.cache")

#: the store's size cap; a scan that finds it above `PRUNE_ABOVE` of that prunes down to
#: `PRUNE_TO`, so a store a run left nearly full still has room for the next run's entries
MAX_BYTES = 256 * 1024 * 1024
PRUNE_ABOVE = 0.9
PRUNE_TO = 0.75
#: an entry unused (not written or read) this long is dropped at the next scan
MAX_AGE = 30 * 24 * 3600.0
#: a temporary file this old was left by a killed run
_STALE_TMP = 3600.0


class ManifestStore:
    """Content-addressed manifests under `directory` (see the module's docstring)."""

    def __init__(
        self, directory: Path, *, max_bytes: int = MAX_BYTES, max_age: float = MAX_AGE
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.hits = 0
        self.writes = 0
        self._scanned = False
        self._broken = False
        self._total = 0  # bytes in the store: the scan's count plus this run's writes
        self._made: set[str] = set()  # algorithm directories known to exist

    def path(self, digest: Digest) -> Path:
        return self.directory / digest.algorithm / digest.hex

    def get(self, digest: Digest, where: str, *, origin: str) -> Manifest | None:
        """The manifest named `digest`, if kept as read from `origin` and its bytes still hash
        to it; else None (a file that does not verify is removed)."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("manifest store: %s not read: %s", path, exc)
            return None
        kept = _parse(data, digest, where)
        if kept is None:
            log.debug("manifest store: %s does not verify; removed", path)
            _remove(path)
            return None
        manifest, origins = kept
        if origin not in origins:
            return None
        with contextlib.suppress(OSError):  # read-only: it simply ages
            os.utime(path)  # in use: keeps it from being pruned by age
        self.hits += 1
        return manifest

    def put(self, manifest: Manifest, digest: Digest | None = None, *, origin: str) -> None:
        """Keep `manifest` under `digest` (its sha256 by default) as read from `origin`:
        atomically, best effort."""
        if self._broken:
            return
        key = digest or manifest.digest
        path = self.path(key)
        origins = {origin}
        try:
            if not self._scanned:
                self._scanned = True
                self._total = self.prune()
            try:
                kept = _parse(path.read_bytes(), key, str(path))
            except FileNotFoundError:
                kept = None
            if kept is not None and kept[0].raw == manifest.raw:
                if origin in kept[1]:
                    os.utime(path)  # kept already (a plan read again): only mark it used
                    return
                origins |= kept[1]  # the same manifest read from one more place
            data = b"\n".join(
                [manifest.media_type.encode(), " ".join(sorted(origins)).encode(), manifest.raw]
            )
            if self._total + len(data) > self.max_bytes:
                log.debug("manifest store full (%d bytes): %s not kept", self._total, key)
                return
            if key.algorithm not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(key.algorithm)
            _write(path, data)
        except OSError as exc:  # read-only, full, or not a directory: no store for this run
            log.debug("manifest store %s not written, off for this run: %s", self.directory, exc)
            self._broken = True
            return
        self._total += len(data)
        self.writes += 1

    def prune(self) -> int:
        """One scan: drop entries unused for `max_age` and temporary files a killed run left,
        then, when the rest is above `PRUNE_ABOVE` of `max_bytes`, the least recently used
        until it is within `PRUNE_TO`. Returns the bytes left."""
        now = time.time()
        kept: list[tuple[float, int, str]] = []
        try:
            algorithms = [e for e in os.scandir(self.directory) if e.is_dir()]
        except FileNotFoundError:
            return 0
        for algorithm in algorithms:
            with os.scandir(algorithm.path) as entries:
                for entry in entries:
                    try:
                        info = entry.stat()
                    except OSError:
                        continue  # removed by another run meanwhile
                    if entry.name.startswith("."):
                        if now - info.st_mtime > _STALE_TMP:
                            _remove(Path(entry.path))
                    elif now - info.st_mtime > self.max_age:
                        _remove(Path(entry.path))
                    else:
                        kept.append((info.st_mtime, info.st_size, entry.path))
        total = sum(size for _, size, _ in kept)
        if total > self.max_bytes * PRUNE_ABOVE:
            kept.sort()
            for _, size, name in kept:
                if total <= self.max_bytes * PRUNE_TO:
                    break
                _remove(Path(name))
                total -= size
        return total


def _parse(data: bytes, digest: Digest, where: str) -> tuple[Manifest, frozenset[str]] | None:
    """The manifest in a store file and where it was read from, or None unless its bytes
    hash to `digest` and its type line is the type they parse as."""
    type_line, newline, rest = data.partition(b"\n")
    origins_line, newline2, raw = rest.partition(b"\n")
    if not newline or not newline2 or Digest.of(raw, digest.algorithm) != digest:
        return None
    try:
        media_type = type_line.decode("ascii")
        origins = frozenset(origins_line.decode("utf-8").split())
        manifest = Manifest.parse(raw, media_type, where)
    except (TransshipError, UnicodeDecodeError):
        return None
    return (manifest, origins) if manifest.media_type == media_type else None


def _write(path: Path, data: bytes) -> None:
    """Temporary file in the same directory, then rename: readers see all of it or nothing.
    No fsync: a file a crash left damaged fails its digest and is fetched again."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        _remove(Path(tmp))
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("manifest store: %s not removed: %s", path, exc)


_opened: dict[Path, ManifestStore] = {}


def default_store() -> ManifestStore | None:
    """The store under the cache root (`transship.cachedir`), one per directory in a process
    so a run scans it at most once; None when caches are off or there is no home."""
    directory = cache_dir("manifests")
    if directory is None:
        return None
    store = _opened.get(directory)
    if store is None:
        store = _opened[directory] = ManifestStore(directory)
    return store
