"""A layout inside a tar file: read in place (no second copy on the stick), and written once.

`OCILayoutTar` indexes the archive's members once (name → data offset and size) and reads a blob
with `os.pread` at its offset, so many tasks read one file descriptor concurrently without a
shared seek position. The archive is untrusted: a member that could mean anything but "a regular
file at a relative path, once" is refused with a one-line error naming it, even though nothing
is ever extracted or written while reading.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from transship.digest import Digest, Hasher
from transship.errors import (
    IntegrityError,
    InvalidDigestError,
    LayoutError,
    UnsafeArchiveError,
    io_error,
)
from transship.fsutil import atomic_file
from transship.layout.directory import read_layout_file
from transship.layout.index import (
    EXTRA_DIR,
    INDEX_FILE,
    LAYOUT_FILE,
    MAX_EXTRA_BYTES,
    MAX_INDEX_BYTES,
    MAX_LAYOUT_FILE_BYTES,
    TOOL_FILE,
    LayoutIndex,
    check_layout_file,
)
from transship.layout.locking import lock_now
from transship.layout.reader import BlobFile, Extent, LayoutReader
from transship.layout.volumes import Volumes, find_parts_file
from transship.manifest import Descriptor, Manifest
from transship.streams import CHUNK

MAX_MEMBERS = 1_000_000
MAX_MEMBER_BYTES = 1 << 40  # 1 TiB: no layer is that big; a header saying so is hostile

#: leading bytes of a compressed stream: a tar (OCI archive or imgpkg tar) read in place must
#: not be one
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


def refuse_compressed(head: bytes, label: str, why: str) -> None:
    """A tar compressed as a whole (known by its first bytes, `head`) is refused, saying
    what it is, `why` that will not do, and what to do."""
    for magic, kind in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise LayoutError(f"{label}: {kind}-compressed; {why}, decompress it first")


def looks_like_archive(path: Path) -> bool:
    """Whether `path` is read as an archive rather than a text file where either may be
    given (`--plan`): a directory, a tar (its first header's magic), a compressed file
    (`OCILayoutTar` then says to decompress it) or a split archive's `.parts` list. A file
    named like a volume (`*.001`) is one only when it starts with a tar header or its `.parts`
    list is beside it: a plan may be named `plan.001` too (a later volume starts anywhere)."""
    if path.is_dir():
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(tarfile.BLOCKSIZE)
    except OSError:
        return False  # the text reader says why it cannot be read
    if head[257:262] == b"ustar" or any(head.startswith(m) for m in COMPRESSED_MAGIC):
        return True  # a first volume without its list: reading it says the list is missing
    try:
        return find_parts_file(path) is not None
    except LayoutError:  # named like a volume, no list beside it, no tar header: text
        return False


def is_oci_archive_tar(path: Path) -> bool:
    """Whether `path` is a tar holding an OCI layout (an `oci-layout` member at its top),
    as `save -o FILE.tar` or `skopeo copy oci-archive:` write it. Only member headers are read
    (the data is skipped); anything unreadable is no such archive."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            for count, info in enumerate(tar):
                if count >= MAX_MEMBERS:
                    return False
                if info.isfile() and info.name.removeprefix("./") == LAYOUT_FILE:
                    return True
    except (OSError, tarfile.TarError, ValueError, EOFError, OverflowError, struct.error):
        return False
    return False


class TarMember:
    """A member's bytes: `pread` at an absolute offset, so concurrent readers never interfere.

    Public for every tar read in place (`OCILayoutTar`, the imgpkg wing's `ImgpkgTar`)."""

    def __init__(self, pread: Callable[[int, int], bytes], offset: int, size: int) -> None:
        self._pread = pread
        self._offset = offset
        self._pos = 0
        self.size = size

    def read(self, n: int) -> bytes:
        n = min(n, self.size - self._pos)
        if n <= 0:
            return b""
        data = self._pread(n, self._offset + self._pos)
        if not data:
            raise LayoutError(f"archive ends inside a member (at offset {self._offset})")
        self._pos += len(data)
        return data

    def close(self) -> None:
        pass


def scan_tar(
    path: Path, file_size: int, fileobj: BinaryIO | None = None
) -> dict[str, tuple[int, int]]:
    """Regular files by normalised name → (data offset, size); refuses anything unsafe.

    A tar damaged after its first header (a header overwritten, its checksum wrong, the file
    cut short) is an `IntegrityError` naming the offset: `tarfile` takes a bad header for the
    end of the archive, so where its scan stopped is checked to be the end-of-archive blocks.
    A file that is no tar at all stays a `LayoutError` (the wrong file was named)."""
    files: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    try:
        tar = tarfile.open(  # noqa: SIM115 - closed by the `with` below, once it opened
            path if fileobj is None else None, mode="r:", fileobj=fileobj
        )
    except tarfile.TarError as exc:
        if _holds_tar_headers(path, fileobj):
            raise _damaged(path, f"unreadable member header ({exc})", 0) from None
        raise LayoutError(f"{path}: not a readable tar archive ({exc})") from None
    except (ValueError, EOFError, OverflowError, struct.error) as exc:
        raise _damaged(path, f"unreadable member header ({exc})", 0) from None
    with tar:
        try:
            for count, info in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise UnsafeArchiveError(f"{path}: more than {MAX_MEMBERS} members")
                name = _check_member(path, info, seen, file_size)
                if name is not None:
                    files[name] = (info.offset_data, info.size)
        except (tarfile.TarError, ValueError, EOFError, OverflowError, struct.error) as exc:
            raise _damaged(path, f"unreadable member header ({exc})", tar.offset) from None
        _check_end(path, tar)
    return files


def _damaged(path: Path, what: str, offset: int) -> IntegrityError:
    return IntegrityError(
        f"{path}: damaged tar archive: {what} at byte {offset}; copy it again from its source "
        "media (or save it again)"
    )


def _check_end(path: Path, tar: tarfile.TarFile) -> None:
    """Where the scan stopped must be a zero block with only zeros after it: a header that
    is garbage, has a wrong checksum or was cut off ends `tarfile`'s scan as silently as the
    real end does, and a zeroed one looks like the end."""
    end = tar.offset
    handle = tar.fileobj
    assert handle is not None
    handle.seek(end)
    block = handle.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        raise _damaged(path, "cut short: no end-of-archive blocks", end)
    if block.count(0) != len(block):
        raise _damaged(path, "unreadable member header", end)
    while chunk := handle.read(CHUNK):
        if chunk.count(0) != len(chunk):
            raise _damaged(path, "members after a zeroed header", end)


def _holds_tar_headers(path: Path, fileobj: BinaryIO | None) -> bool:
    """Whether a file whose first header is unreadable has tar headers after it (damaged),
    or none in its first 64 KiB (not a tar at all)."""
    try:
        if fileobj is None:
            with open(path, "rb") as handle:
                head = handle.read(1 << 16)
        else:
            fileobj.seek(0)
            head = fileobj.read(1 << 16)
    except OSError:
        return False
    blocks = range(0, len(head), tarfile.BLOCKSIZE)
    return any(head[at + 257 : at + 262] == b"ustar" for at in blocks)  # the magic field


def _check_member(path: Path, info: tarfile.TarInfo, seen: set[str], file_size: int) -> str | None:
    """The normalised name of a regular file, None for a directory; raises for the rest."""
    name = info.name

    def refuse(reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{path}: refusing tar member {name!r}: {reason}")

    if not name:
        raise refuse("empty name")
    if name.startswith("/"):
        raise refuse("absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise refuse("'..' path component")
    if info.issym():
        raise refuse(f"symbolic link (to {info.linkname!r})")
    if info.islnk():
        raise refuse(f"hard link (to {info.linkname!r})")
    if info.ischr() or info.isblk():
        raise refuse("device node")
    if info.isfifo():
        raise refuse("FIFO")
    if info.issparse():
        raise refuse("sparse file")
    if not (info.isdir() or info.isreg()):
        raise refuse(f"unsupported member type {info.type!r}")
    norm = "/".join(p for p in parts if p not in ("", "."))
    if norm:
        if norm in seen:
            raise refuse("duplicate member")
        seen.add(norm)
    if info.isdir():
        return None
    if info.size > MAX_MEMBER_BYTES:
        raise refuse(f"size {info.size} is over the {MAX_MEMBER_BYTES} bytes any member may have")
    if info.offset_data + info.size > file_size:
        raise _damaged(
            path,
            f"member {name!r} ({info.size} bytes) cut short by the end of the file",
            info.offset_data,
        )
    return norm


class OCILayoutTar(LayoutReader):
    """A read-only `Endpoint` over an OCI layout packed in an (uncompressed) tar file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.label = f"oci-archive:{self.path}"
        self._volumes: Volumes | None = None
        self._fd = -1
        try:
            parts_file = find_parts_file(self.path)
            if parts_file is not None:
                self._volumes = Volumes(parts_file)
            else:
                self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise io_error(f"{self.label}: opening archive", exc) from None
        try:
            self._blobs, self._index = self._load()
        except OSError as exc:
            self._release()
            raise io_error(f"{self.label}: reading archive", exc) from None
        except (LayoutError, IntegrityError):
            damaged = self.verify_volumes()  # a cut or flipped volume is the likelier cause
            self._release()
            if damaged:
                raise IntegrityError(f"{self.label}: {'; '.join(damaged)}") from None
            raise
        except BaseException:
            self._release()
            raise
        self._closed = False

    def _pread(self, n: int, offset: int) -> bytes:
        if self._volumes is not None:
            return self._volumes.pread(n, offset)
        return os.pread(self._fd, n, offset)

    def _release(self) -> None:
        if self._volumes is not None:
            self._volumes.close()
        elif self._fd >= 0:
            os.close(self._fd)

    def verify_volumes(self) -> list[str]:
        """Re-hash split volumes against their list (nothing to do for a single tar)."""
        return self._volumes.verify() if self._volumes is not None else []

    def _load(self) -> tuple[dict[Digest, tuple[int, int]], LayoutIndex]:
        if self._volumes is not None:
            size = self._volumes.size
            reader: BinaryIO | None = io.BufferedReader(self._volumes.reader(), CHUNK)
        else:
            size = os.fstat(self._fd).st_size
            reader = None
        refuse_compressed(self._pread(8, 0), self.label, "transship reads tar archives in place")
        files = scan_tar(self.path, size, reader)
        self._extras = {
            name.removeprefix(f"{EXTRA_DIR}/"): where
            for name, where in files.items()
            if (name.startswith(f"{EXTRA_DIR}/") and name.count("/") == 1) or name == TOOL_FILE
        }
        blobs: dict[Digest, tuple[int, int]] = {}
        for name, where in files.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "blobs":
                try:
                    blobs[Digest.parse(f"{parts[1]}:{parts[2]}")] = where
                except InvalidDigestError:
                    continue  # not addressable by any digest, so never read
        layout = self._member(files, LAYOUT_FILE, MAX_LAYOUT_FILE_BYTES)
        check_layout_file(layout, self.label)
        raw = self._member(files, INDEX_FILE, MAX_INDEX_BYTES)
        self.opened_files = {LAYOUT_FILE: layout, INDEX_FILE: raw}
        return blobs, LayoutIndex.parse(raw, self.label)

    def _member(self, files: dict[str, tuple[int, int]], name: str, limit: int) -> bytes:
        found = files.get(name)
        if found is None:
            raise LayoutError(f"{self.label}: not an OCI layout archive (no top-level {name})")
        offset, size = found
        if size > limit:
            raise LayoutError(f"{self.label}: {name} is over {limit} bytes")
        return TarMember(self._pread, offset, size).read(size)

    def read_extra(self, name: str) -> bytes | None:
        found = self._extras.get(name)
        if found is None:
            return None
        offset, size = found
        if size > MAX_EXTRA_BYTES:
            raise LayoutError(f"{self.label}: {EXTRA_DIR}/{name} is over {MAX_EXTRA_BYTES} bytes")
        return TarMember(self._pread, offset, size).read(size)

    def _blob_size(self, digest: Digest) -> int | None:
        found = self._blobs.get(digest)
        return found[1] if found else None

    def _open_blob_file(self, digest: Digest) -> BlobFile | None:
        found = self._blobs.get(digest)
        return TarMember(self._pread, *found) if found else None

    def blob_extents(self, digest: Digest) -> list[Extent] | None:
        found = self._blobs.get(digest)
        if found is None:
            return None
        offset, size = found
        if self._volumes is not None:
            return self._volumes.extents(offset, size)
        return [Extent(self.path, offset, size)]

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        raise LayoutError(f"{self.label} is read-only; save into a layout directory instead")

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        raise LayoutError(f"{self.label} is read-only; save into a layout directory instead")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()


class _HashingReader(io.RawIOBase):
    """What tarfile copies from: the blob file, hashed on the way through."""

    def __init__(self, handle: BinaryIO, hasher: Hasher) -> None:
        super().__init__()
        self._handle = handle
        self._hasher = hasher

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        self._hasher.update(data)
        return data


def write_tar(layout_dir: Path | str, tar_path: Path | str) -> int:
    """Pack a layout directory into `tar_path` atomically; returns the number of blobs.

    Each blob is stored once, re-verified against its digest while it is copied (a damaged
    stick is caught before the archive is shipped). Only `oci-layout`, `index.json`,
    `transship/*` and `blobs/<alg>/<hex>` go in, in a fixed order with fixed metadata: the same
    layout gives the same bytes. A carried tool (`transship/bin/transship`) goes first, so it
    sits whole at a known offset in the first volume of a split archive (`tool_head_size`).
    Refuses while another process holds the layout's writer lock.
    """
    src = Path(layout_dir)
    dest = Path(tar_path)
    label = f"oci:{src}"
    try:
        lock_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise io_error(f"{label}: opening layout", exc) from None
    try:
        lock_now(
            lock_fd, f"{label}: another writer holds this layout (open elsewhere)", shared=True
        )
        return _write_tar_locked(src, dest, label)
    except OSError as exc:
        raise io_error(f"{label}: writing {dest}", exc) from None
    finally:
        os.close(lock_fd)


def _write_tar_locked(src: Path, dest: Path, label: str) -> int:
    layout = read_layout_file(src / LAYOUT_FILE, MAX_LAYOUT_FILE_BYTES)
    check_layout_file(layout, label)
    index = read_layout_file(src / INDEX_FILE, MAX_INDEX_BYTES)
    LayoutIndex.parse(index, label)  # refuse to pack an index nobody could read back
    blobs: list[tuple[str, Digest, Path]] = []
    blob_root = src / "blobs"
    for alg_dir in sorted(blob_root.iterdir()) if blob_root.is_dir() else []:
        if not alg_dir.is_dir():
            continue
        for blob in sorted(alg_dir.iterdir()):
            try:
                digest = Digest.parse(f"{alg_dir.name}:{blob.name}")
            except InvalidDigestError:
                continue  # not a blob (a stray temp file of another tool)
            if blob.is_file():
                blobs.append((f"blobs/{digest.algorithm}/{digest.hex}", digest, blob))
    algorithms = sorted({digest.algorithm for _, digest, _ in blobs})
    with (
        atomic_file(dest) as out,
        tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar,
    ):
        tool = src / TOOL_FILE
        carried = tool.is_file()
        if carried:
            _add_tool(tar, tool)
        tar.addfile(member_info(LAYOUT_FILE, len(layout)), io.BytesIO(layout))
        tar.addfile(member_info(INDEX_FILE, len(index)), io.BytesIO(index))
        extras = sorted(p for p in (src / EXTRA_DIR).glob("*") if p.is_file())
        if extras and not carried:
            tar.addfile(member_info(EXTRA_DIR, 0, directory=True))
        for extra in extras:
            data = read_layout_file(extra, MAX_EXTRA_BYTES)
            info = member_info(f"{EXTRA_DIR}/{extra.name}", len(data))
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(member_info("blobs", 0, directory=True))
        for algorithm in algorithms:
            tar.addfile(member_info(f"blobs/{algorithm}", 0, directory=True))
        for arcname, digest, blob in blobs:
            with open(blob, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                hasher = Hasher(digest, size)
                tar.addfile(member_info(arcname, size), _HashingReader(handle, hasher))
            try:
                hasher.verify("blob")
            except IntegrityError as exc:
                raise IntegrityError(f"{label}: {exc.message}") from None
    return len(blobs)


def tool_head_size(tool_size: int) -> int:
    """Bytes from the start of the tar to the end of a carried tool of `tool_size` bytes:
    three 512-byte headers (`transship/`, `transship/bin/`, the file), then its padded data."""
    return 3 * tarfile.BLOCKSIZE + -(-tool_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _add_tool(tar: tarfile.TarFile, tool: Path) -> None:
    tar.addfile(member_info(EXTRA_DIR, 0, directory=True))
    tar.addfile(member_info(TOOL_FILE.rsplit("/", 1)[0], 0, directory=True))
    with open(tool, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        tar.addfile(member_info(TOOL_FILE, size, executable=True), handle)


def member_info(
    name: str, size: int, *, directory: bool = False, executable: bool = False
) -> tarfile.TarInfo:
    """A member's fixed metadata (mtime 0, root, 0644/0755): the same content, the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o755 if executable else 0o644
    return info
