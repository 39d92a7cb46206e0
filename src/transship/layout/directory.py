"""`OCILayout`: an OCI Image Layout directory as an `Endpoint`, so `save` and `load` are `copy`.

Writes never leave a partial file under a final name: a blob streams into `.transship-tmp/`,
is hashed on the way, fsynced and renamed into `blobs/<alg>/<hex>` only if digest and size
match. `index.json` is rewritten atomically, at most every `flush_interval` seconds and on
`close()`, after fsyncing the blob directories it refers to: a killed `save` loses at most the
last few tags, and a rerun finds every finished blob in place.

A writable layout is locked (`flock` on the directory) so two writers cannot interleave their
`index.json` rewrites; that lock is also what makes removing a crashed run's temp files safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from transship.digest import Digest, Hasher, RestOpener
from transship.errors import IntegrityError, LayoutError, TransshipError, io_error
from transship.fsutil import fsync_dir, share_like_a_new_file, write_atomic
from transship.layout.index import (
    EXTRA_DIR,
    INDEX_FILE,
    LAYOUT_BYTES,
    LAYOUT_FILE,
    MAX_EXTRA_BYTES,
    MAX_INDEX_BYTES,
    MAX_LAYOUT_FILE_BYTES,
    UNFINISHED,
    LayoutIndex,
    check_layout_file,
)
from transship.layout.locking import lock_now
from transship.layout.pacing import FlushPacer
from transship.layout.reader import BlobFile, Extent
from transship.layout.writer import LayoutWriter
from transship.manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest
from transship.streams import CHUNK, in_batches, read_bounded

log = logging.getLogger("transship.layout")

TMP_DIR = ".transship-tmp"
PARTIAL_SUFFIX = ".partial"


def empty_but_for_a_save(path: Path) -> bool:
    """Whether a directory without `oci-layout` may become a layout: empty, or holding only
    what a save writes first (its temporary folder, and `transship/` once it holds the
    unfinished marker). A `transship/` without the marker is someone's (the unpacked tool),
    never written into."""
    for entry in path.iterdir():
        if entry.name == TMP_DIR:
            continue
        if entry.name == EXTRA_DIR and (entry / UNFINISHED).is_file():
            continue
        return False
    return True


class _FileBlob:
    """A blob file opened for reading; `size` from fstat, so it is the bytes we will read."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    def read(self, n: int) -> bytes:
        return self._handle.read(n)

    def close(self) -> None:
        self._handle.close()


class OCILayout(LayoutWriter):
    """One layout directory; all repositories share its blob store (see `transship.layout`)."""

    def __init__(self, path: Path | str, *, writable: bool, flush_interval: float = 2.0) -> None:
        self.path = Path(path)
        self.label = f"oci:{self.path}"
        self.writable = writable
        self.flush_interval = flush_interval
        #: (repository, tag) → annotations for its index.json entry (`save`: source, destination)
        self.annotations: dict[tuple[str, str], dict[str, str]] = {}
        self._lock_fd: int | None = None
        self._changes = 0  # index generations: changed vs. saved
        self._saved = 0
        self._dirs_to_sync: set[Path] = set()
        self._flush_lock = asyncio.Lock()
        self._pacer = FlushPacer(self.flush, flush_interval)
        self._closed = False
        self._partials_busy: set[Digest] = set()  # digests a transfer now writes a partial of
        try:
            self._index = self._open()
        except OSError as exc:
            self._unlock()
            raise io_error(f"{self.label}: opening layout", exc) from None
        except BaseException:
            self._unlock()
            raise

    # -- opening ----------------------------------------------------------------------------

    def _open(self) -> LayoutIndex:
        layout_file = self.path / LAYOUT_FILE
        if self.writable:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            if not layout_file.exists():
                if not empty_but_for_a_save(self.path):
                    raise LayoutError(
                        f"{self.label}: not an OCI layout (no {LAYOUT_FILE} file) and not "
                        "empty; refusing to write into it"
                    )
                write_atomic(layout_file, LAYOUT_BYTES)
            self._clean_tmp()
        elif not self.path.is_dir():
            raise LayoutError(f"{self.label}: no such directory")
        elif not layout_file.is_file():
            raise LayoutError(f"{self.label}: not an OCI layout (no {LAYOUT_FILE} file)")
        layout = read_layout_file(layout_file, MAX_LAYOUT_FILE_BYTES)
        check_layout_file(layout, self.label)
        index_file = self.path / INDEX_FILE
        if index_file.exists():
            raw = read_layout_file(index_file, MAX_INDEX_BYTES)
            self.opened_files = {LAYOUT_FILE: layout, INDEX_FILE: raw}
            return LayoutIndex.parse(raw, self.label)
        self.opened_files = {LAYOUT_FILE: layout}
        if not self.writable:
            raise LayoutError(f"{self.label}: not an OCI layout (no {INDEX_FILE} file)")
        index = LayoutIndex.empty()
        write_atomic(index_file, index.serialize())
        return index

    def _lock(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            lock_now(fd, f"{self.label}: another writer holds this layout (open elsewhere)")
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _clean_tmp(self) -> None:
        """Temp files of a killed run: safe to delete, we hold the writer lock. A blob's
        partial file (named by its digest) stays, for the transfer of that blob to continue
        (`put_blob_resuming`); a finished save drops the rest (`drop_partials`, before `close`)."""
        tmp = self.path / TMP_DIR
        if tmp.is_dir():
            for leftover in tmp.iterdir():
                # a symlink named like a partial file is never written through: it goes too
                if _partial_digest(leftover.name) is None or not _plain_file(leftover):
                    leftover.unlink(missing_ok=True)

    # -- storage primitives -----------------------------------------------------------------

    def read_extra(self, name: str) -> bytes | None:
        path = self.path / EXTRA_DIR / name
        if not path.is_file():
            return None
        return read_layout_file(path, MAX_EXTRA_BYTES)

    def write_extra(self, name: str, data: bytes | str) -> None:
        """Write `transship/NAME` atomically (the plan, the checksum list)."""
        self._check_writable()
        write_atomic(self.path / EXTRA_DIR / name, data)

    def _blob_path(self, digest: Digest) -> Path:
        """Only ever built from a validated Digest: algorithm and hex are safe path parts."""
        return self.path / "blobs" / digest.algorithm / digest.hex

    def _blob_size(self, digest: Digest) -> int | None:
        try:
            st = os.stat(self._blob_path(digest))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise io_error(f"{self.label}: blob {digest.short}", exc) from None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _open_blob_file(self, digest: Digest) -> BlobFile | None:
        try:
            handle = open(self._blob_path(digest), "rb")  # noqa: SIM115 - closed by _FileBlob
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _FileBlob(handle)

    def blob_extents(self, digest: Digest) -> list[Extent] | None:
        """Only a regular file inside the layout: a symlink out of it (to a secret beside the
        archive) is absent, so a server never sends bytes from outside the archive."""
        path = self._blob_path(digest)
        real = os.path.realpath(path)
        root = os.path.realpath(self.path)
        if not real.startswith(root + os.sep):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        return [Extent(Path(real), 0, st.st_size)] if stat.S_ISREG(st.st_mode) else None

    def _temp_file(self) -> tuple[BinaryIO, Path]:
        tmp_dir = self.path / TMP_DIR
        tmp_dir.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-")
        share_like_a_new_file(fd)  # a blob of a layout others read (serve, skopeo, load)
        return os.fdopen(fd, "wb"), Path(name)

    def _publish(self, handle: BinaryIO, tmp: Path, final: Path) -> None:
        """fsync, then rename: the final name only ever holds complete, verified bytes."""
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        self._dirs_to_sync.add(final.parent)

    def _check_writable(self, *, content: bool = False) -> None:
        """`content` makes no difference: a layout open for writing takes anything."""
        if not self.writable:
            raise LayoutError(f"{self.label} is opened read-only")
        if self._closed:
            raise LayoutError(f"{self.label} is closed")

    # -- writing ----------------------------------------------------------------------------

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        """Stream into a temp file, hashing; rename into place only if digest and size match."""
        self._check_writable()
        where = f"writing blob {descriptor.digest.short} to {self.label}"
        hasher = Hasher(descriptor.digest, descriptor.size)
        try:
            handle, tmp = await asyncio.to_thread(self._temp_file)
        except OSError as exc:
            raise io_error(where, exc) from None
        try:
            async with contextlib.aclosing(in_batches(chunks)) as batches:
                async for pieces in batches:
                    await asyncio.to_thread(_write_hashed, handle, hasher, pieces)
            hasher.verify("blob")
            await asyncio.to_thread(self._publish, handle, tmp, self._blob_path(descriptor.digest))
        except BaseException as exc:
            handle.close()
            tmp.unlink(missing_ok=True)
            if isinstance(exc, IntegrityError):
                raise IntegrityError(f"{self.label}: {exc.message}") from None
            if isinstance(exc, OSError):
                raise io_error(where, exc) from None
            raise
        return hasher.size

    async def put_blob_resuming(
        self, repository: str, descriptor: Descriptor, open_rest: RestOpener
    ) -> tuple[int, int]:
        """As `put_blob`, into `.transship-tmp/<alg>-<hex>.partial`, which stays when the
        transfer is stopped (killed, interrupted, its source gone): the next transfer of the
        digest re-reads and hashes what it holds and has `open_rest` send only the rest. The
        kept bytes are never trusted: the whole blob is verified before it is renamed into
        place, and a partial file that fails is removed (the engine's retry starts at 0).
        One transfer per digest writes it; another one at the same time uses a temp file."""
        self._check_writable()
        digest = descriptor.digest
        if digest in self._partials_busy:
            hasher = Hasher(digest, descriptor.size)
            async with open_rest(hasher) as chunks:
                return await self.put_blob(repository, descriptor, chunks), 0
        self._partials_busy.add(digest)
        try:
            return await self._put_resuming(descriptor, open_rest)
        finally:
            self._partials_busy.discard(digest)

    async def _put_resuming(self, descriptor: Descriptor, open_rest: RestOpener) -> tuple[int, int]:
        digest = descriptor.digest
        where = f"writing blob {digest.short} to {self.label}"
        tmp = self.path / TMP_DIR / f"{digest.algorithm}-{digest.hex}{PARTIAL_SUFFIX}"
        # shielded: a Ctrl-C while the thread opens the file closes what it opened
        opening = asyncio.ensure_future(asyncio.to_thread(self._open_partial, tmp, descriptor))
        try:
            handle, hasher = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise
        except OSError as exc:
            raise io_error(where, exc) from None
        kept = hasher.size
        if kept:
            log.info("%s: continuing %s after the %d bytes kept", self.label, digest.short, kept)
        try:
            async with (
                open_rest(hasher.copy()) as chunks,
                contextlib.aclosing(in_batches(chunks)) as batches,
            ):
                async for pieces in batches:
                    await asyncio.to_thread(_write_hashed, handle, hasher, pieces)
            hasher.verify("blob")
            await asyncio.to_thread(self._publish, handle, tmp, self._blob_path(digest))
        except BaseException as exc:
            handle.close()
            if isinstance(exc, IntegrityError) or not hasher.size:  # wrong, or nothing kept
                tmp.unlink(missing_ok=True)
            if isinstance(exc, IntegrityError):  # what it held is wrong: start over next time
                raise IntegrityError(f"{self.label}: {exc.message}") from None
            if isinstance(exc, OSError):
                raise io_error(where, exc) from None
            raise
        return hasher.size, kept

    @staticmethod
    def _open_partial(tmp: Path, descriptor: Descriptor) -> tuple[BinaryIO, Hasher]:
        """The partial file of a blob, its bytes re-read and hashed, positioned after them:
        at most all but the last byte is kept (so the rest is never empty), and nothing of
        one longer than the blob."""
        tmp.parent.mkdir(exist_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(tmp))
        except BaseException:
            os.close(fd)
            raise
        handle = os.fdopen(fd, "r+b")
        try:
            share_like_a_new_file(fd)
            hasher = Hasher(descriptor.digest, descriptor.size)
            size = os.fstat(fd).st_size
            keep = min(size, descriptor.size - 1) if size <= descriptor.size else 0
            left = keep
            while left > 0:
                data = handle.read(min(CHUNK, left))
                if not data:
                    break
                hasher.update(data)
                left -= len(data)
            handle.truncate(hasher.size)
            handle.seek(hasher.size)
        except BaseException:
            handle.close()
            raise
        return handle, hasher

    def _store_manifest(self, manifest: Manifest) -> None:
        final = self._blob_path(manifest.digest)
        if self._blob_size(manifest.digest) == len(manifest.raw):
            handle = self._open_blob_file(manifest.digest)
            if handle is not None:
                try:
                    if handle.read(MAX_MANIFEST_BYTES + 1) == manifest.raw:
                        return  # already there (a manifest pushed under several tags)
                finally:
                    handle.close()
        out, tmp = self._temp_file()
        try:
            out.write(manifest.raw)
            self._publish(out, tmp, final)
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise

    async def _store_manifest_bytes(self, repository: str, manifest: Manifest, where: str) -> None:
        try:
            await asyncio.to_thread(self._store_manifest, manifest)
        except OSError as exc:
            raise io_error(f"{where}: writing manifest", exc) from None

    # -- index.json -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Make every finished blob durable, then rewrite index.json atomically."""
        async with self._flush_lock:
            if self._saved == self._changes and not self._dirs_to_sync:
                return
            generation = self._changes
            data = self._index.serialize() if self._saved != generation else None
            dirs = set(self._dirs_to_sync)
            self._dirs_to_sync -= dirs
            try:
                await asyncio.to_thread(self._write_index, data, dirs)
            except BaseException as exc:  # failed, or cancelled (Ctrl-C): the next flush
                self._dirs_to_sync |= dirs  # syncs them (close's, after a cancelled one)
                if isinstance(exc, OSError):
                    raise io_error(f"{self.label}: writing {INDEX_FILE}", exc) from None
                raise
            self._saved = generation
            self._pacer.flushed()

    def _write_index(self, data: bytes | None, dirs: set[Path]) -> None:
        for directory in sorted(dirs):
            fsync_dir(directory)
        if data is not None:
            write_atomic(self.path / INDEX_FILE, data)  # fsyncs the layout directory too

    def drop_partials(self) -> None:
        """A save that finished needs no partly written blob any more (one of an image an
        earlier run's plan listed and this one does not): the temp directory's files go.
        Only while this writer holds the lock (before `close`): a save that takes the lock
        next may have partial files of its own there."""
        self._check_writable()
        tmp = self.path / TMP_DIR
        if tmp.is_dir():
            for leftover in tmp.iterdir():
                leftover.unlink(missing_ok=True)

    async def close(self) -> None:
        """Write the pending index, drop the temp directory if empty, release the lock."""
        if self._closed:
            return
        try:
            await self._pacer.cancel()
            if self.writable:
                await self.flush()
                with contextlib.suppress(OSError):
                    (self.path / TMP_DIR).rmdir()
        finally:
            self._closed = True
            self._unlock()


def _close_opened(opening: asyncio.Future[tuple[BinaryIO, Hasher]]) -> None:
    """The partial file a cancelled transfer's thread opened after all: closed."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[0].close()


def _plain_file(path: Path) -> bool:
    """A regular file itself, not a symlink to one."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _partial_digest(name: str) -> Digest | None:
    """The digest a partial file `<alg>-<hex>.partial` is of, or None for any other name."""
    if not name.endswith(PARTIAL_SUFFIX):
        return None
    algorithm, _, hex_ = name.removesuffix(PARTIAL_SUFFIX).partition("-")
    try:
        return Digest.parse(f"{algorithm}:{hex_}")
    except TransshipError:
        return None


def _write_hashed(handle: BinaryIO, hasher: Hasher, pieces: list[bytes]) -> None:
    """Hash and write off the event loop; an oversize stream raises before it is written."""
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    hasher.update(data)
    handle.write(data)


def read_layout_file(path: Path, limit: int) -> bytes:
    """A layout file (`oci-layout`, `index.json`, an extra) whole, refused past `limit`."""
    with open(path, "rb") as handle:
        data = read_bounded(handle, limit)
    if len(data) > limit:
        raise LayoutError(f"{path}: larger than {limit} bytes; not a layout file")
    return data
