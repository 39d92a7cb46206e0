"""`TarSink`: `save -o FILE.tar` written straight into the tar (or its volumes), resumably.

Packing a finished layout directory needs the archive's space twice; this endpoint needs it
once. Each blob's size is known from its descriptor, so its member (header + padded data) gets
a region of the tar before the first byte arrives: concurrent transfers stream into disjoint
regions with `pwrite`, hashed on the way. The header is written only after the digest checked
out; a transfer stopped without a digest failure keeps its region, and the bytes it wrote, for
the next transfer of its digest (`_held`), which re-reads them and fetches only the rest; one
whose digest failed leaves its region free for the retry (same size), or for any blob whose
member has exactly that length.

What has landed is recorded in a journal beside the tar (`FILE.tar.partial.journal`, rewritten
atomically at most every `flush_interval` seconds, after an fsync of the data it lists): the
members with their offsets, the free and in-flight regions one by one, the tar's reserved end,
and the index entries. A killed save reruns from it: the tar is cut back to the journal's end,
a blob the journal lists as partly written (`partials`) keeps its region and its synced bytes
for its digest, other regions nobody finished are free again, and every landed blob is present
without being fetched. `seal` writes the trailing members
(`oci-layout`, `index.json`, `transship/*`), frees the region of any kept partial blob this
run did not need (cut off at the end), fills any region left free with a harmless
`transship/unused/<offset>` member, ends the tar, records in the journal that it is sealed
(size, and the `.parts` document of volumes), then renames it (each volume) into place and drops
the journal: a run stopped in between is finished by its rerun without fetching anything.

Volumes (`--split-size`) are the same byte stream cut at `part_size`: `FILE.tar.partial.001`, …
become `FILE.tar.001`, … beside `FILE.tar.parts` (`transship.layout.volumes`), so a member may
span two volumes exactly as a split tar's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tarfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transship.digest import Digest, Hasher, RestOpener
from transship.errors import IntegrityError, LayoutError, TransshipError, io_error
from transship.fsutil import fsync_dir, make_parent, write_atomic
from transship.layout.archive import TarMember, member_info
from transship.layout.index import (
    EXTRA_DIR,
    INDEX_FILE,
    LAYOUT_BYTES,
    LAYOUT_FILE,
    TOOL_FILE,
    LayoutIndex,
)
from transship.layout.locking import lock_now
from transship.layout.pacing import FlushPacer
from transship.layout.reader import BlobFile, Extent, LayoutReader
from transship.layout.volumes import PARTS_FORMAT, PARTS_SUFFIX
from transship.layout.writer import LayoutWriter
from transship.manifest import Descriptor, Manifest
from transship.streams import CHUNK, in_batches

log = logging.getLogger("transship.layout")

PARTIAL_SUFFIX = ".partial"
JOURNAL_SUFFIX = ".journal"
JOURNAL_FORMAT = "transship-tar-journal/v1"
#: a sealed journal (the tar complete, being renamed into place) has a format of its own, so
#: that a transship which does not know sealing refuses it instead of resuming it (which
#: would cut back and re-create volumes already renamed away)
SEALED_FORMAT = "transship-tar-journal/v2-sealed"
BLOCK = tarfile.BLOCKSIZE
UNUSED_DIR = f"{EXTRA_DIR}/unused"
#: the longest filler member: a ustar header's size field holds at most 8 GiB - 1
MAX_FILL = 8 * 1024**3 - BLOCK


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def member_header(
    name: str, size: int, *, directory: bool = False, executable: bool = False
) -> bytes:
    """The header block(s) of a member, as `write_tar` writes them (PAX only when needed)."""
    info = member_info(name, size, directory=directory, executable=executable)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(frozen=True)
class Member:
    """A complete member of the tar: its header at `offset`, its data at `data`."""

    name: str
    offset: int
    data: int
    size: int

    @property
    def end(self) -> int:
        return self.data + padded(self.size)

    def to_json(self) -> list[object]:
        return [self.name, self.offset, self.data, self.size]


def partial_path(output: Path) -> Path:
    """The tar while it is written (one file), or the stem of its partial volumes."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX + JOURNAL_SUFFIX)


class _Store:
    """The tar's bytes at logical offsets: one file, or volumes of `part_size` bytes each."""

    def __init__(self, output: Path, part_size: int | None) -> None:
        self.output = output
        self.part_size = part_size
        self._fds: dict[int, int] = {}

    def path(self, number: int) -> Path:
        """Partial file of volume `number` (0-based); the single file when not split."""
        partial = partial_path(self.output)
        if self.part_size is None:
            return partial
        return partial.with_name(f"{partial.name}.{number + 1:03d}")

    def final(self, number: int) -> Path:
        return self.output.with_name(f"{self.output.name}.{number + 1:03d}")

    def existing(self) -> list[int]:
        """Volume numbers that have a partial file on disk."""
        if self.part_size is None:
            return [0] if self.path(0).is_file() else []
        stem = partial_path(self.output).name + "."
        found = []
        for p in self.output.parent.glob(f"{partial_path(self.output).name}.[0-9][0-9][0-9]"):
            found.append(int(p.name.removeprefix(stem)) - 1)
        return sorted(found)

    def _fd(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is None:
            fd = os.open(self.path(number), os.O_RDWR | os.O_CREAT, 0o644)
            self._fds[number] = fd
        return fd

    def lock(self) -> None:
        """One writer per archive: an exclusive flock on the first (or only) partial file."""
        lock_now(
            self._fd(0), f"{self.path(0)}: another save is writing this archive (open elsewhere)"
        )

    def _runs(self, offset: int, n: int) -> Iterable[tuple[int, int, int]]:
        """(volume, local offset, length) runs of bytes [offset, offset + n)."""
        if self.part_size is None:
            yield 0, offset, n
            return
        while n > 0:
            number, local = divmod(offset, self.part_size)
            take = min(n, self.part_size - local)
            yield number, local, take
            offset += take
            n -= take

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        done = 0
        for number, local, take in self._runs(offset, len(view)):
            fd = self._fd(number)
            end = done + take
            while done < end:
                done += os.pwrite(fd, view[done:end], local + done - (end - take))

    def pread(self, n: int, offset: int) -> bytes:
        out = bytearray()
        for number, local, take in self._runs(offset, n):
            data = os.pread(self._fd(number), take, local)
            out += data
            if len(data) < take:
                break
        return bytes(out)

    def size(self) -> int:
        """Logical bytes present on disk (the end of the furthest volume's data)."""
        size = 0
        for number in self.existing():
            base = number * (self.part_size or 0)
            size = max(size, base + os.stat(self.path(number)).st_size)
        return size

    def truncate(self, size: int) -> None:
        """Make the store exactly `size` bytes: cut (or zero-extend) every volume to fit."""
        if self.part_size is None:
            os.ftruncate(self._fd(0), size)
            return
        count = max(1, -(-size // self.part_size))
        for number in self.existing():
            if number >= count:
                self._close_one(number)
                self.path(number).unlink()
        for number in range(count):
            os.ftruncate(self._fd(number), min(self.part_size, size - number * self.part_size))

    def sync(self) -> None:
        for fd in list(self._fds.values()):
            os.fsync(fd)

    def _close_one(self, number: int) -> None:
        fd = self._fds.pop(number, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for number in list(self._fds):
            self._close_one(number)


class TarSink(LayoutWriter):
    """A writable `Endpoint` whose store is the tar itself (see the module docstring)."""

    def __init__(
        self,
        output: Path,
        *,
        part_size: int | None = None,
        tool: Path | None = None,
        flush_interval: float = 2.0,
    ) -> None:
        self.output = output
        self.part_size = part_size
        self.tool = tool
        self.flush_interval = flush_interval
        self.label = f"oci-archive:{output}"
        self.journal = journal_path(output)
        #: (repository, tag) → annotations for its index.json entry (`save`: source, destination)
        self.annotations: dict[tuple[str, str], dict[str, str]] = {}
        self._members: dict[str, Member] = {}
        self._blobs: dict[Digest, Member] = {}
        self._free: list[tuple[int, int]] = []  # (offset, length) regions nobody holds
        self._reserved: dict[int, int] = {}  # offset → length of regions being written
        #: digests being written now: a second writer of one waits for it (one member each)
        self._landing: dict[Digest, asyncio.Event] = {}
        #: digest → [region offset, data offset, bytes written, region length] being written
        self._inflight: dict[Digest, list[int]] = {}
        #: digest → (region offset, region length, data offset, bytes kept): a transfer that
        #: was stopped (this run or a killed one), its region kept for the digest to continue
        self._held: dict[Digest, tuple[int, int, int, int]] = {}
        self._end = 0
        self._extras: dict[str, bytes] = {}
        self._tool_id: dict[str, object] | None = None
        self._changes = 0
        self._saved = 0
        self._flush_lock = asyncio.Lock()
        self._pacer = FlushPacer(self.flush, flush_interval)
        self._closed = False
        #: set once the tar is complete on disk: its size and, for volumes, the `.parts`
        #: document; what is left is renaming it into place (`_publish`)
        self._sealed: dict[str, Any] | None = None
        self._store = _Store(output, part_size)
        try:
            self._open()
        except OSError as exc:
            self._store.close()
            raise io_error(f"{self.label}: opening {partial_path(output)}", exc) from None
        except BaseException:
            self._store.close()
            raise

    # -- opening and resuming ---------------------------------------------------------------

    def _open(self) -> None:
        partial = partial_path(self.output)
        if partial.is_dir():
            raise LayoutError(
                f"{partial}/ is an unfinished save of an older transship (a layout directory); "
                f"finish it with that version, or remove it to start over"
            )
        self._tool_id = _tool_id(self.tool) if self.tool is not None else None
        make_parent(self.output)
        if self.journal.exists():
            doc = self._read_journal()
            if "sealed" in doc:  # killed while publishing: `publish` finishes it
                self._adopt_sealed(doc)
                return
            self._check_resumable()
            self._store.lock()
            self._resume(doc)
            return
        if self._store.existing():
            names = ", ".join(self._store.path(n).name for n in self._store.existing())
            raise LayoutError(
                f"{names} beside {self.output.name} but no {self.journal.name}: not a save this "
                "transship can resume; remove it to start over"
            )
        self._store.lock()
        self._index = LayoutIndex.empty()
        self._begin()

    def _begin(self) -> None:
        """A fresh tar: the carried tool first (whole in the first volume), then `blobs/`."""
        offset = 0
        if self.tool is not None:
            offset = self._put_dir(EXTRA_DIR, offset)
            offset = self._put_dir(TOOL_FILE.rsplit("/", 1)[0], offset)
            offset = self._put_tool(self.tool, offset)
        offset = self._put_dir("blobs", offset)
        offset = self._put_dir("blobs/sha256", offset)
        self._end = offset
        self._store.truncate(offset)
        self._store.sync()
        self._write_journal(self._snapshot())

    def _put_dir(self, name: str, offset: int) -> int:
        header = member_header(name, 0, directory=True)
        self._store.pwrite(header, offset)
        self._land(Member(name, offset, offset + len(header), 0))
        return offset + len(header)

    def _put_tool(self, tool: Path, offset: int) -> int:
        size = tool.stat().st_size
        header = member_header(TOOL_FILE, size, executable=True)
        data = offset + len(header)
        written = 0
        with tool.open("rb") as src:
            while chunk := src.read(CHUNK):
                self._store.pwrite(chunk, data + written)
                written += len(chunk)
        if written != size:
            raise LayoutError(f"{tool} changed while it was copied into the archive")
        self._store.pwrite(header, offset)
        member = Member(TOOL_FILE, offset, data, size)
        self._store.pwrite(bytes(member.end - data - size), data + size)
        self._land(member)
        return member.end

    def _read_journal(self) -> dict[str, Any]:
        """The journal, checked to belong to this save (format, `--split-size`, tool)."""
        where = self.journal
        try:
            doc = json.loads(self.journal.read_bytes())
            if not isinstance(doc, dict) or doc.get("format") not in (
                JOURNAL_FORMAT,
                SEALED_FORMAT,
            ):
                raise ValueError(f"not a {JOURNAL_FORMAT} journal")
            if ("sealed" in doc) != (doc["format"] == SEALED_FORMAT):
                raise ValueError("sealed and format disagree")
            doc["members"] = [
                Member(str(n), int(o), int(d), int(s)) for n, o, d, s in doc["members"]
            ]
            doc["end"] = int(doc["end"])
            doc["regions"] = sorted((int(o), int(n)) for o, n in doc.get("regions", []))
            doc["partials"] = [
                (_journal_digest(d), int(o), int(data), int(w), int(n))
                for d, o, data, w, n in doc.get("partials", [])
            ]
            doc["index"] = LayoutIndex.parse(json.dumps(doc["index"]).encode(), str(where))
            if "sealed" in doc:
                doc["sealed"] = _check_sealed(doc["sealed"], doc["part_size"])
            part_size, tool = doc["part_size"], doc["tool"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LayoutError(
                f"{where}: damaged save journal ({exc}); remove it and "
                f"{partial_path(self.output).name}* to start the save over"
            ) from None
        if part_size != self.part_size:
            said = f"--split-size {part_size} bytes" if part_size else "no --split-size"
            raise LayoutError(
                f"{where}: this save was begun with {said}; rerun it the same way, or remove "
                f"{partial_path(self.output).name}* to start over"
            )
        if tool != self._tool_id:
            said = "with --include-tool of another build" if tool else "without --include-tool"
            if self._tool_id is None:
                said = "with --include-tool"
            raise LayoutError(
                f"{where}: this save was begun {said}; rerun it the same way, or remove "
                f"{partial_path(self.output).name}* to start over"
            )
        return doc

    def _check_resumable(self) -> None:
        """A journal without the sealed record resumes only the partial files it describes:
        none renamed into place yet (a transship that did not record sealing, stopped while
        renaming), and no volume missing in between (resuming would re-create it empty)."""
        finished = [self.output, self.output.with_name(self.output.name + PARTS_SUFFIX)]
        if self.part_size is not None:
            finished += sorted(self.output.parent.glob(f"{self.output.name}.[0-9][0-9][0-9]"))
        for done in finished:
            if done.exists():
                raise LayoutError(
                    f"{done} exists beside {self.journal.name}, left over from a save stopped "
                    f"while putting its archive in place: remove {self.output.name}* to save again"
                )
        existing = self._store.existing()
        if existing and existing != list(range(len(existing))):
            missing = sorted(set(range(existing[-1] + 1)) - set(existing))
            raise LayoutError(
                f"{self._store.path(missing[0])} is missing from the unfinished save "
                f"{self.journal.name} describes: remove {partial_path(self.output).name}* "
                "to start over"
            )

    def _adopt_sealed(self, doc: dict[str, Any]) -> None:
        """A save killed after sealing: the tar is complete; nothing is read or written until
        `seal` publishes it."""
        for member in doc["members"]:
            self._land(member)
        self._end = doc["end"]
        self._index = doc["index"]
        self._sealed = doc["sealed"]
        log.info("%s: sealed by an earlier run, only renaming it into place", self.label)

    @property
    def sealed(self) -> bool:
        """The tar was completed by an earlier run that was stopped while renaming it."""
        return self._sealed is not None

    def _resume(self, doc: dict[str, Any]) -> None:
        where = self.journal
        members: list[Member] = doc["members"]
        end: int = doc["end"]
        regions: list[tuple[int, int]] = doc["regions"]
        index: LayoutIndex = doc["index"]
        on_disk = self._store.size()
        taken = 0
        for member in sorted(members, key=lambda m: m.offset):
            if member.offset < taken or member.data < member.offset or member.size < 0:
                raise LayoutError(f"{where}: damaged save journal (members overlap); remove it")
            if member.data + member.size > on_disk or member.end > end:
                raise LayoutError(
                    f"{where}: {member.name} lies past the end of the partial tar ({on_disk} "
                    f"bytes); remove {partial_path(self.output).name}* and the journal to start "
                    "over"
                )
            if member.offset > taken:
                self._free += _split_gap(taken, member.offset, regions)
            taken = member.end
            self._land(member)
        if end > taken:
            self._free += _split_gap(taken, end, regions)
        for digest, offset, data, kept, length in doc["partials"]:
            region = (offset, length)
            if (
                region in self._free
                and kept > 0
                and offset < data
                and data + kept <= min(offset + length, on_disk)
            ):
                self._free.remove(region)
                self._held[digest] = (offset, length, data, kept)
        # the tar ends after its last member or kept partial blob: a free run after is cut off
        self._end = max([taken, *(o + n for o, n, _, _ in self._held.values())])
        self._free = [r for r in self._free if r[0] + r[1] <= self._end]
        self._index = index
        self._store.truncate(self._end)
        log.info("%s: resuming, %d blobs already in the tar", self.label, len(self._blobs))

    # -- bookkeeping --------------------------------------------------------------------------

    def _land(self, member: Member) -> None:
        self._members[member.name] = member
        parts = member.name.split("/")
        if len(parts) == 3 and parts[0] == "blobs":
            with contextlib.suppress(TransshipError):
                self._blobs[Digest.parse(f"{parts[1]}:{parts[2]}")] = member

    def _reserve(self, length: int) -> int:
        """A region of `length` bytes: a free one of exactly that length (what a transfer whose
        digest failed left, or a region nobody finished before a kill), else at the end. Free
        regions are not split: a small blob arriving first would take the space its own blob
        needs again."""
        for i, (offset, free) in enumerate(self._free):
            if free == length:
                del self._free[i]
                self._reserved[offset] = length
                return offset
        offset = self._end
        self._end += length
        self._reserved[offset] = length
        return offset

    def _release(self, offset: int, length: int) -> None:
        """A region nobody will finish: free, kept apart from its neighbours (so the retry of
        its own blob fits it exactly); free regions at the end are cut off."""
        self._reserved.pop(offset, None)
        self._free.append((offset, length))
        self._free.sort()
        while self._free and sum(self._free[-1]) == self._end:
            self._end = self._free.pop()[0]

    def _drop_partial(self, offset: int, length: int) -> None:
        """A partly written blob's region freed: the journal stops listing it in `partials`
        within `flush_interval` (a rerun would re-read bytes nobody wants, or bad ones)."""
        self._release(offset, length)
        self._changes += 1
        self._pacer.schedule()

    def _snapshot(self, sealed: dict[str, Any] | None = None) -> bytes:
        held = self._held.values() if sealed is None else ()
        doc: dict[str, Any] = {
            "format": JOURNAL_FORMAT if sealed is None else SEALED_FORMAT,
            "archive": self.output.name,
            "part_size": self.part_size,
            "tool": self._tool_id,
            "end": self._end,
            "members": [m.to_json() for m in self._members.values()],
            #: free, in-flight and held regions, so a rerun's blobs find theirs again
            "regions": sorted(
                [*self._free, *self._reserved.items(), *((o, n) for o, n, _, _ in held)]
            ),
            #: [digest, region, data, bytes written, region length] of every blob partly
            #: written (only bytes written before this snapshot: `flush` syncs them first)
            "partials": sorted(
                [[str(d), o, data, w, n] for d, (o, n, data, w) in self._held.items()]
                + [[str(d), o, data, w, n] for d, (o, data, w, n) in self._inflight.items() if w]
            ),
            "index": json.loads(self._index.serialize()),
        }
        if sealed is not None:
            doc["sealed"] = sealed
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def _write_journal(self, data: bytes) -> None:
        write_atomic(self.journal, data)

    # -- LayoutReader primitives --------------------------------------------------------------

    def read_extra(self, name: str) -> bytes | None:
        return self._extras.get(name)

    def extras(self) -> dict[str, bytes]:
        """`transship/NAME` files written so far, by NAME."""
        return dict(self._extras)

    def write_extra(self, name: str, data: bytes | str) -> None:
        """`transship/NAME`, written into the tar when it is sealed."""
        self._check_writable()
        self._extras[name] = data.encode() if isinstance(data, str) else data

    def _blob_size(self, digest: Digest) -> int | None:
        found = self._blobs.get(digest)
        return found.size if found else None

    def _open_blob_file(self, digest: Digest) -> BlobFile | None:
        found = self._blobs.get(digest)
        return TarMember(self._store.pread, found.data, found.size) if found else None

    def blob_extents(self, digest: Digest) -> list[Extent] | None:
        return None  # not served while it is written

    def _check_writable(self, *, content: bool = False) -> None:
        if self._closed:
            raise LayoutError(f"{self.label} is closed")
        if content and self._sealed is not None:
            raise LayoutError(f"{self.label} is sealed: nothing more goes into it")

    # -- writing ------------------------------------------------------------------------------

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        """Stream into the blob's own region, hashing; the header goes in only if it matched.

        One writer per digest: the engine sends a digest once per repository, and a tar holds
        it once, so a second transfer waits for the first and is only streamed if that failed.
        """

        @contextlib.asynccontextmanager
        async def given(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
            yield chunks

        stored, _ = await self._one_writer(descriptor, given, resume=False)
        return stored

    async def put_blob_resuming(
        self, repository: str, descriptor: Descriptor, open_rest: RestOpener
    ) -> tuple[int, int]:
        """As `put_blob`; the bytes an earlier transfer of the digest wrote into its region
        and the journal lists as synced (`partials`) are re-read and hashed, and only the rest
        is asked of `open_rest`. Never trusted: a whole blob that fails its digest frees the
        region, and the engine's retry starts at byte 0. Returns (stored, kept)."""
        return await self._one_writer(descriptor, open_rest, resume=True)

    async def _one_writer(
        self, descriptor: Descriptor, open_rest: RestOpener, *, resume: bool
    ) -> tuple[int, int]:
        self._check_writable(content=True)
        digest = descriptor.digest
        while (landing := self._landing.get(digest)) is not None:
            await landing.wait()
        if digest in self._blobs:
            return descriptor.size, 0  # landed meanwhile
        self._landing[digest] = landing = asyncio.Event()
        try:
            return await self._put_blob(descriptor, open_rest, resume)
        finally:
            del self._landing[digest]
            landing.set()

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """As every layout's, after any transfer of `digest` under way has ended: the engine
        asks this before opening its source, so a second transfer waits here, not holding a
        source GET it would drop."""
        while (landing := self._landing.get(digest)) is not None:
            await landing.wait()
        return await super().mount_blob(repository, digest, from_repository)

    async def _put_blob(
        self, descriptor: Descriptor, open_rest: RestOpener, resume: bool
    ) -> tuple[int, int]:
        """Into the blob's region: the one its stopped transfer left (`resume`: its bytes
        kept, re-read and hashed), else a new one; `open_rest` gives the bytes after those."""
        digest = descriptor.digest
        name = f"blobs/{digest.algorithm}/{digest.hex}"
        where = f"writing blob {digest.short} to {self.label}"
        await self._ensure_dir(f"blobs/{digest.algorithm}")
        header = member_header(name, descriptor.size)
        length = len(header) + padded(descriptor.size)
        hasher = Hasher(digest, descriptor.size)
        held = self._held.pop(digest, None)
        if resume and held is not None and held[1:3] == (length, held[0] + len(header)):
            offset, data = held[0], held[2]
            self._reserved[offset] = length
            keep = min(held[3], descriptor.size - 1)
            # in flight while re-read, its kept bytes counted as written: a journal written
            # meanwhile still lists them, and a stop here keeps them for the next transfer
            self._inflight[digest] = [offset, data, keep, length]
            try:
                await asyncio.to_thread(self._hash_kept, hasher, data, keep)
            except BaseException as exc:
                del self._inflight[digest]
                if isinstance(exc, IntegrityError):
                    self._drop_partial(offset, length)
                else:
                    self._reserved.pop(offset, None)
                    self._held[digest] = held
                if isinstance(exc, OSError):
                    raise io_error(where, exc) from None
                raise
        else:
            if held is not None:  # a whole stream, or a journal entry that does not fit
                self._drop_partial(held[0], held[1])
            offset = self._reserve(length)
            data = offset + len(header)
        kept = written = hasher.size
        if kept:
            log.info("%s: continuing %s after the %d bytes kept", self.label, digest.short, kept)
        #: for the journal: what of this region is written (synced by the next flush)
        self._inflight[digest] = [offset, data, written, length]
        writing: asyncio.Future[None] | None = None

        async def in_thread(*args: Any) -> None:
            """Shielded: a cancelled transfer waits for its thread before freeing the region."""
            nonlocal writing
            writing = asyncio.ensure_future(asyncio.to_thread(*args))
            await asyncio.shield(writing)

        def wrote(size: int) -> None:
            nonlocal written
            written += size
            self._inflight[digest][2] = written
            self._changes += 1  # the journal keeps up (every `flush_interval`), deferred:
            self._pacer.schedule()  # an inline flush would stall this stream on an fsync

        try:
            async with (
                open_rest(hasher.copy()) as chunks,
                contextlib.aclosing(in_batches(chunks)) as batches,
            ):
                async for pieces in batches:
                    await in_thread(self._write_hashed, hasher, pieces, data + written)
                    wrote(sum(len(piece) for piece in pieces))
            hasher.verify("blob")
            tail = bytes(length - len(header) - descriptor.size)
            await in_thread(self._seal_member, header, offset, tail, data + written)
        except BaseException as exc:
            try:
                if writing is not None:
                    if not writing.done():
                        await asyncio.wait([writing])
                    if not writing.cancelled():
                        writing.exception()  # retrieved: its error (if any) is `exc` already
            finally:
                del self._inflight[digest]
                if written and not isinstance(exc, IntegrityError):
                    # stopped, not wrong: the next transfer of the digest continues it
                    self._reserved.pop(offset, None)
                    self._held[digest] = (offset, length, data, written)
                    self._changes += 1
                    self._pacer.schedule()  # the journal says so within `flush_interval`
                else:
                    self._drop_partial(offset, length)
            if isinstance(exc, IntegrityError):
                raise IntegrityError(f"{self.label}: {exc.message}") from None
            if isinstance(exc, OSError):
                raise io_error(where, exc) from None
            raise
        del self._inflight[digest]
        self._reserved.pop(offset, None)
        self._land(Member(name, offset, data, descriptor.size))
        self._changes += 1
        await self._pacer.changed()
        return hasher.size, kept

    def _hash_kept(self, hasher: Hasher, data: int, keep: int) -> None:
        """Re-read and hash the first `keep` bytes of a region (fewer if the tar is short)."""
        while hasher.size < keep:
            piece = self._store.pread(min(CHUNK, keep - hasher.size), data + hasher.size)
            if not piece:
                return
            hasher.update(piece)

    def _write_hashed(self, hasher: Hasher, pieces: list[bytes], offset: int) -> None:
        """Hash and write off the event loop; an oversize stream raises before it is written."""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        hasher.update(data)
        self._store.pwrite(data, offset)

    def _seal_member(self, header: bytes, offset: int, tail: bytes, tail_at: int) -> None:
        if tail:
            self._store.pwrite(tail, tail_at)
        self._store.pwrite(header, offset)

    async def _ensure_dir(self, name: str) -> None:
        if name not in self._members:
            header = member_header(name, 0, directory=True)
            offset = self._reserve(len(header))
            await asyncio.to_thread(self._store.pwrite, header, offset)
            self._reserved.pop(offset, None)
            self._land(Member(name, offset, offset + len(header), 0))

    async def _store_manifest_bytes(self, repository: str, manifest: Manifest, where: str) -> None:
        await self.put_blob(repository, manifest.descriptor, _once(manifest.raw))

    # -- the journal --------------------------------------------------------------------------

    async def flush(self) -> None:
        """fsync the data of every landed member, then rewrite the journal that lists them."""
        wanted = self._changes
        async with self._flush_lock:
            # a flush that ran while this one waited for the lock may already cover `wanted`
            if self._saved >= wanted or self._sealed is not None:
                return
            generation = self._changes
            snapshot = self._snapshot()  # taken before the sync: lists only synced members
            try:
                await asyncio.to_thread(self._store.sync)
                await asyncio.to_thread(self._write_journal, snapshot)
            except OSError as exc:
                raise io_error(f"{self.label}: writing {self.journal.name}", exc) from None
            self._saved = generation
            self._pacer.flushed()

    async def close(self) -> None:
        """Journal what landed and release the tar; `seal` may still finish it afterwards."""
        if self._closed:
            return
        try:
            await self._pacer.cancel()
            await self.flush()
        finally:
            self._closed = True
            self._store.close()

    # -- sealing ------------------------------------------------------------------------------

    def blob_count(self) -> int:
        return len(self._blobs)

    def blob_digests(self) -> list[Digest]:
        return sorted(self._blobs, key=str)

    def seal(self, extras: dict[str, bytes]) -> tuple[Path, ...]:
        """After `close` of a run without failures: trailing members, end of archive, rename.

        `extras` (such as `SHA256SUMS`) join the ones written before. Returns the volumes
        (empty for one tar). Blocking: run it in a thread. A tar an earlier run sealed is only
        published (`extras` are already in it).
        """
        where = f"{self.label}: finishing"
        try:
            if self._sealed is not None:
                with self._journal_lock():
                    return self._publish()
            self._store.lock()
            return self._seal({**self._extras, **extras})
        except OSError as exc:
            raise io_error(where, exc) from None
        finally:
            self._store.close()

    def own_files(self) -> dict[str, bytes]:
        """`oci-layout` and `index.json` as the sealed tar will hold them."""
        return {LAYOUT_FILE: LAYOUT_BYTES, INDEX_FILE: self._index.serialize()}

    def _seal(self, extras: dict[str, bytes]) -> tuple[Path, ...]:
        # a kept partial blob this run did not need is free space: cut off at the end,
        # else filled like any other free region
        for offset, length, _, _ in list(self._held.values()):
            self._release(offset, length)
        self._held = {}
        for offset, length in self._gaps():
            self._fill(offset, length)
        self._free = []
        offset = self._end
        trailing: list[tuple[str, bytes | None]] = list(self.own_files().items())
        if EXTRA_DIR not in self._members:
            trailing.append((EXTRA_DIR, None))
        trailing += [(f"{EXTRA_DIR}/{name}", extras[name]) for name in sorted(extras)]
        for name, data in trailing:
            if data is None:
                header = member_header(name, 0, directory=True)
                self._store.pwrite(header, offset)
                offset += len(header)
                continue
            header = member_header(name, len(data))
            block = header + data + bytes(padded(len(data)) - len(data))
            self._store.pwrite(block, offset)
            offset += len(block)
        total = offset + 2 * BLOCK  # two zero blocks end the archive
        total = -(-total // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
        self._store.pwrite(bytes(total - offset), offset)
        self._store.truncate(total)
        self._store.sync()
        # Recorded before the first rename, so that a run killed while publishing is finished
        # by the next one (`_publish`) instead of being cut back to the journal's end.
        parts = self._parts_doc(total) if self.part_size is not None else None
        sealed = {"size": total, "parts": parts}
        self._write_journal(self._snapshot(sealed))
        self._sealed = sealed
        return self._publish()

    def _gaps(self) -> list[tuple[int, int]]:
        """Every run of [0, end) that no member covers: what `_free` says, computed afresh
        from the members so that no region can be left without a header."""
        gaps = []
        taken = 0
        for member in sorted(self._members.values(), key=lambda m: m.offset):
            if member.offset > taken:
                gaps.append((taken, member.offset - taken))
            taken = max(taken, member.end)
        if self._end > taken:
            gaps.append((taken, self._end - taken))
        return gaps

    def _fill(self, offset: int, length: int) -> None:
        """A region left free: zeroed `transship/unused/<offset>` members (each under ustar's
        8 GiB), which every tar reader skips over like any other file (never a blob, never an
        extra)."""
        end = offset + length
        while offset < end:
            take = min(end - offset, MAX_FILL)
            header = member_header(f"{UNUSED_DIR}/{offset}", take - BLOCK)
            if len(header) != BLOCK:  # such a name needs no PAX header; refuse rather than misfit
                raise LayoutError(f"{self.label}: cannot fill a free region at {offset}")
            self._store.pwrite(header, offset)
            zeros = bytes(min(CHUNK, take - BLOCK))
            at = offset + BLOCK
            while at < offset + take:
                n = min(len(zeros), offset + take - at)
                self._store.pwrite(zeros[:n], at)
                at += n
            offset += take

    def _parts_doc(self, total: int) -> dict[str, Any]:
        """The `.parts` document of the sealed volumes (hashed from the partial files)."""
        assert self.part_size is not None
        parts: list[dict[str, object]] = []
        for number in range(-(-total // self.part_size)):
            path = self._store.path(number)
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
            size = path.stat().st_size
            parts.append(
                {"name": self._store.final(number).name, "size": size, "sha256": digest.hexdigest()}
            )
        return {"format": PARTS_FORMAT, "archive": self.output.name, "size": total, "parts": parts}

    @contextlib.contextmanager
    def _journal_lock(self) -> Iterator[None]:
        """One publisher of a sealed tar: an exclusive flock on its journal, the one file
        that stays in place until the very end (a partial file is what gets renamed away)."""
        try:
            fd = os.open(self.journal, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # another rerun published it meanwhile: `_place` checks what it left
        try:
            if fd is not None:
                lock_now(fd, f"{self.journal}: another save is finishing this archive")
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def _publish(self) -> tuple[Path, ...]:
        """Rename the sealed tar (each volume) into place, write `.parts`, drop the journal.
        Each step can be repeated: a rerun after a kill at any point finishes the rest."""
        sealed = self._sealed
        assert sealed is not None
        if self.part_size is None:
            self._place(self._store.path(0), self.output, sealed["size"])
            fsync_dir(self.output.parent)
            self._drop_journal()
            return ()
        doc = sealed["parts"]
        paths = []
        for number, part in enumerate(doc["parts"]):
            final = self._store.final(number)
            if part["name"] != final.name:
                raise LayoutError(f"{self.journal}: damaged save journal (volume {part['name']})")
            self._place(self._store.path(number), final, part["size"])
            paths.append(final)
        fsync_dir(self.output.parent)
        write_atomic(
            self.output.with_name(self.output.name + PARTS_SUFFIX), json.dumps(doc, indent=2) + "\n"
        )
        self._drop_journal()
        return tuple(paths)

    def _drop_journal(self) -> None:
        """The last step: durable, or a power cut could bring the sealed journal back and a
        later save of a changed list republish this archive as its own."""
        self.journal.unlink(missing_ok=True)
        fsync_dir(self.output.parent)

    def _place(self, partial: Path, final: Path, size: int) -> None:
        """`partial` renamed to `final` if still there, after checking it has its sealed size."""
        try:
            found = partial.stat().st_size
        except FileNotFoundError:
            found = None
        if found is not None and found != size:
            raise LayoutError(
                f"{partial}: {found} bytes, but {self.journal.name} says it was sealed at "
                f"{size}; remove {partial_path(self.output).name}* to start the save over"
            )
        if found is not None:
            with contextlib.suppress(FileNotFoundError):  # renamed by a rerun meanwhile
                os.replace(partial, final)
        if not final.is_file() or final.stat().st_size != size:
            raise LayoutError(
                f"{final}: missing or not the {size} bytes {self.journal.name} says it was "
                f"sealed with; remove the journal and {self.output.name}* to start the save over"
            )


def is_sealed(output: Path) -> bool:
    """Whether an earlier save completed `output` and was stopped while renaming it into
    place (so the rerun needs nothing from its source). Cheap; `TarSink` checks it fully."""
    try:
        doc = json.loads(journal_path(output).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "sealed" in doc


def read_journal_blobs(output: Path) -> TarSinkView | None:
    """What an unfinished direct save already holds (for `save --dry-run`), or None."""
    journal = journal_path(output)
    if not journal.is_file():
        return None
    try:
        doc = json.loads(journal.read_bytes())
        members = [(str(m[0]), int(m[3])) for m in doc["members"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    view = TarSinkView()
    for name, size in members:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs":
            with contextlib.suppress(TransshipError):
                view.sizes[Digest.parse(f"{parts[1]}:{parts[2]}")] = size
    return view


class TarSinkView(LayoutReader):
    """The blobs an unfinished direct save holds, for the estimate: presence and size only."""

    def __init__(self) -> None:
        self.label = "unfinished save"
        self._index = LayoutIndex.empty()
        self.sizes: dict[Digest, int] = {}

    def _blob_size(self, digest: Digest) -> int | None:
        return self.sizes.get(digest)

    async def close(self) -> None:
        pass


def _split_gap(start: int, stop: int, regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The free regions of [start, stop): the journal's own where they fit inside it, the
    rest as one region each."""
    out = []
    pos = start
    for offset, length in regions:
        if offset >= pos and offset + length <= stop and length > 0:
            if offset > pos:
                out.append((pos, offset - pos))
            out.append((offset, length))
            pos = offset + length
    if pos < stop:
        out.append((pos, stop - pos))
    return out


def _journal_digest(text: Any) -> Digest:
    """A digest the journal lists; a malformed one makes the journal damaged (ValueError)."""
    try:
        return Digest.parse(str(text))
    except TransshipError:
        raise ValueError(f"bad digest {str(text)[:80]!r} in partials") from None


def _check_sealed(sealed: Any, part_size: Any) -> dict[str, Any]:
    """The journal's record of a sealed tar: its size, and for volumes the `.parts` doc."""
    if not isinstance(sealed, dict) or not isinstance(sealed.get("size"), int):
        raise ValueError("bad sealed record")
    parts = sealed.get("parts")
    if (parts is None) != (part_size is None):
        raise ValueError("sealed record does not fit --split-size")
    if parts is not None:
        if not isinstance(parts, dict) or parts.get("format") != PARTS_FORMAT:
            raise ValueError("bad sealed volume list")
        for part in parts["parts"]:
            if not isinstance(part["name"], str) or not isinstance(part["size"], int):
                raise ValueError("bad sealed volume")
    return sealed


def _tool_id(tool: Path) -> dict[str, object]:
    with tool.open("rb") as handle:
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"size": tool.stat().st_size, "sha256": sha}


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
