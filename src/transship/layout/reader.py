"""The read half of an `Endpoint` over an OCI layout, shared by directories and tar archives.

Subclasses only say how to find a blob's bytes (`_open_blob_file`, `_blob_size`); naming, lookup
and verification live here once. Every byte handed out is checked against its digest, as the
registry endpoint does: a layout on a USB stick is as untrusted as a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from transship.digest import Digest, Hasher
from transship.errors import IntegrityError, LayoutError, NotFoundError, TransshipError, io_error
from transship.layout.index import LayoutIndex, ref_name
from transship.manifest import MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, Descriptor, Manifest, Referrer
from transship.streams import CHUNK


class BlobFile(Protocol):
    """An open blob: `size` bytes readable in order; `read` may block (run it in a thread)."""

    size: int

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class Extent(NamedTuple):
    """A run of a blob's bytes inside one file: what `sendfile` needs to serve it in place."""

    path: Path
    offset: int
    size: int


@dataclass(frozen=True)
class Reached:
    """One manifest `LayoutReader.walk_named` reached from a name in the index: read, or the
    error that kept it from being read (`manifest` None)."""

    repository: str
    tag: str
    depth: int  # 0: the manifest the index names; 1: a child of that index; …
    digest: Digest  # as named: by the index entry or by the parent index
    manifest: Manifest | None
    error: TransshipError | None = None

    @property
    def where(self) -> str:
        """`repository:tag`, then ` child` per level below it (as `archive verify` says it)."""
        return f"{self.repository}:{self.tag}" + " child" * self.depth


@dataclass
class _Walking:
    """An index `LayoutReader.walk_named` is below: its children left to walk."""

    reached: Reached
    children: Iterator[Descriptor]
    whole: bool  # nothing below it was cut by the depth limit (so far)


class LayoutReader:
    """get/head manifest, has/open blob, mount and tags over `_index` and the blob primitives."""

    label: str
    _index: LayoutIndex
    #: an incremental archive: blobs that live in this base archive (read or written)
    base: LayoutReader | None = None
    base_name: str | None = None
    #: linked as a base below an increment (`ops.archive.link_bases`): only the blobs and
    #: manifests its NAMED manifests reach count as held for the increment: one left unnamed
    #: in its store (a resumed save dropped the names that used it) would never be pushed by
    #: loading this base. False: every stored blob counts
    reach_only: bool = False
    #: what its named manifests reach (`named_reach`), walked the first time `held_digests`
    #: needs it and kept: opening a chain to check it or to read from it walks nothing
    held: frozenset[Digest] | None = None
    _held_lock: asyncio.Lock | None = None
    #: set by whoever knows where the bases lie (`ops.load`): what to say when a blob an
    #: increment left out to its bases is asked for (which base holds it, what to run)
    missing_blob_hint: Callable[[Digest], Awaitable[str]] | None = None

    #: the layout's own files (`oci-layout`, `index.json`) as read when it was opened: what a
    #: finished save's `transship/SHA256SUMS` lists them by (`ops.finished`)
    opened_files: dict[str, bytes]

    def entries(self) -> list[tuple[str, str, Descriptor]]:
        """Every (repository, tag, descriptor) the layout names."""
        return self._index.entries()

    def read_extra(self, name: str) -> bytes | None:
        """A file of transship's own beside the layout (`transship/NAME`), None if absent."""
        raise NotImplementedError

    # -- storage primitives -----------------------------------------------------------------

    def _blob_size(self, digest: Digest) -> int | None:
        """Size of the stored blob, None if absent. Must be cheap: no reading."""
        raise NotImplementedError

    def _open_blob_file(self, digest: Digest) -> BlobFile | None:
        """Open the stored blob for reading, None if absent (blocking: called in a thread)."""
        raise NotImplementedError

    def blob_extents(self, digest: Digest) -> list[Extent] | None:
        """Where the stored blob's bytes lie, in order (several runs when it spans split
        volumes); None if absent. Lets a server send them in place, with no copy."""
        raise NotImplementedError

    # -- manifests --------------------------------------------------------------------------

    def _where(self, repository: str, identifier: str) -> str:
        if ":" in identifier and repository:
            return f"{self.label}:{repository}@{identifier}"
        if ":" in identifier:
            return f"{self.label}@{identifier}"
        return f"{self.label}:{ref_name(repository, identifier)}"

    def _read_manifest(self, digest: Digest, where: str) -> bytes | None:
        try:
            handle = self._open_blob_file(digest)
            if handle is None:
                return None
            try:
                if handle.size > MAX_MANIFEST_BYTES:
                    raise IntegrityError(
                        f"{where}: manifest is {handle.size} bytes, "
                        f"over the {MAX_MANIFEST_BYTES} limit"
                    )
                parts = []
                remaining = handle.size
                while remaining > 0:
                    part = handle.read(remaining)
                    if not part:
                        break
                    parts.append(part)
                    remaining -= len(part)
                return b"".join(parts)
            finally:
                handle.close()
        except OSError as exc:
            raise io_error(f"{where}: reading manifest", exc) from None

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """By tag through index.json, by digest straight from the blob store; always verified."""
        where = self._where(repository, identifier)
        media_type: str | None = None
        size: int | None = None
        if ":" in identifier:
            digest = Digest.parse(identifier)
        else:
            found = self._index.lookup(repository, identifier)
            if found is None:
                raise NotFoundError(f"manifest {where} not found")
            digest, media_type, size = found.digest, found.media_type, found.size
        raw = await asyncio.to_thread(self._read_manifest, digest, where)
        if raw is None:
            raise NotFoundError(f"manifest {where} not found (no blob {digest.short})")
        actual = Digest.of(raw, digest.algorithm)
        if actual != digest:
            raise IntegrityError(
                f"{where}: manifest bytes hash to {actual.short}, not {digest.short}"
            )
        if size is not None and size != len(raw):
            raise IntegrityError(f"{where}: manifest has {len(raw)} bytes, index.json says {size}")
        return Manifest.parse(raw, media_type, where)

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        """None when absent or damaged, so the engine copies it again rather than trusting it."""
        if ":" not in identifier:
            found = self._index.lookup(repository, identifier)
            if found is None or self._blob_size(found.digest) != found.size:
                return None
            return Descriptor(found.media_type, found.digest, found.size)
        digest = Digest.parse(identifier)
        size = self._blob_size(digest)
        if size is None or size > MAX_MANIFEST_BYTES:
            return None
        where = self._where(repository, identifier)
        raw = await asyncio.to_thread(self._read_manifest, digest, where)
        if raw is None or Digest.of(raw, digest.algorithm) != digest:
            return None
        try:
            manifest = Manifest.parse(raw, None, where)
        except TransshipError:
            return None  # a blob, not a manifest: a registry would say 404 too
        return Descriptor(manifest.media_type, digest, len(raw))

    async def walk_named(
        self, *, by_tag: bool = False, max_depth: int | None = MAX_INDEX_DEPTH
    ) -> AsyncGenerator[Reached, None]:
        """Every manifest the named manifests reach: depth first, an index's children (to
        `max_depth`; None: no limit) before the index itself, so a caller checking each one's
        blobs checks them in the order the graph is copied.

        Each is read (verified) and yielded once: a digest already walked is neither read nor
        yielded again, with two exceptions. `by_tag`: a named one is read by its tag, checked
        against its index entry (digest and size), every time the index names it. And one a
        name reaches higher up than where `max_depth` cut its first walk short is walked (read
        and yielded) again from there: the limit counts from the shallowest place a manifest
        is reached. A manifest that cannot be read is yielded with its error each time it is
        named, and nothing below it is walked. The walk keeps its own stack (no recursion): a
        hostile chain of indexes thousands deep is walked, not a RecursionError."""
        #: digest → (the depth its walk began at, nothing below it was cut by `max_depth`)
        walked: dict[Digest, tuple[int, bool]] = {}
        for repository, tag, descriptor in self.entries():
            stack: list[_Walking] = []
            named: tuple[Digest, int] | None = (descriptor.digest, 0)
            while named is not None or stack:
                if named is not None:
                    digest, depth = named
                    named = None
                    before = walked.get(digest)
                    done = before is not None and (before[1] or before[0] <= depth)
                    if done and stack:  # cut below there: cut below here too
                        stack[-1].whole = stack[-1].whole and bool(before and before[1])
                    if done and not (by_tag and depth == 0):
                        continue
                    identifier = tag if by_tag and depth == 0 else str(digest)
                    try:
                        manifest = await self.get_manifest(repository, identifier)
                    except TransshipError as exc:
                        yield Reached(repository, tag, depth, digest, None, exc)
                        continue
                    if done:  # a name read by tag, its graph walked already
                        continue
                    cut = max_depth is not None and depth >= max_depth and bool(manifest.manifests)
                    children = iter(() if cut else manifest.manifests)
                    reached = Reached(repository, tag, depth, digest, manifest)
                    stack.append(_Walking(reached, children, not cut))
                    continue
                top = stack[-1]
                child = next(top.children, None)
                if child is not None:
                    named = (child.digest, top.reached.depth + 1)
                    continue
                stack.pop()
                walked[top.reached.digest] = (top.reached.depth, top.whole)
                if stack:
                    stack[-1].whole = stack[-1].whole and top.whole
                yield top.reached

    async def named_reach(self) -> frozenset[Digest]:
        """Every manifest, config and layer digest the layout's named manifests reach (index
        children, to `MAX_INDEX_DEPTH`, as the engine copies), reading manifests only (no blob
        is hashed). A named manifest that cannot be read reaches nothing; the archive's checks
        report it."""
        reached: set[Digest] = set()
        async for step in self.walk_named():
            if step.manifest is not None:
                reached.add(step.digest)
                reached.update(blob.digest for blob in step.manifest.blobs() if not blob.urls)
        return frozenset(reached)

    async def list_referrers(self, repository: str, digest: Digest) -> tuple[Referrer, ...] | None:
        """None: a layout has no referrers API; a tag-schema index (`sha256-<hex>`) it holds
        is found through `list_tags`, as on a registry without the API."""
        return None

    async def check_push(self, repository: str) -> None:
        """A push would be refused unless a writable subclass says otherwise."""
        raise LayoutError(f"{self.label} is read-only")

    async def list_tags(self, repository: str) -> list[str]:
        return self._index.tags(repository)

    async def existing_tags(self, repository: str) -> frozenset[str] | None:
        """`TagIndex`: the index's tags for `repository` (a layout names no repository
        without a tag, so an empty answer is never "missing": digests are still HEADed)."""
        return frozenset(self._index.tags(repository))

    # -- blobs ------------------------------------------------------------------------------

    async def has_blob(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        """One store for every repository; `size`, when given, must match too.

        Saving on top of a base archive, a blob the base holds (`holds`: one its named
        manifests reach) counts as present: the increment then carries only what the base
        lacks.
        """
        found = self._blob_size(digest)
        if found is not None and (size is None or found == size):
            return True
        return self.base is not None and await self.base.holds(repository, digest, size)

    async def held_digests(self) -> frozenset[Digest] | None:
        """As a base (`reach_only`): what its named manifests reach, walked once, on the first
        call (concurrent callers wait for that one walk), then kept in `held`. None when
        every stored blob counts."""
        if not self.reach_only:
            return None
        if self.held is None:
            if self._held_lock is None:
                self._held_lock = asyncio.Lock()
            async with self._held_lock:
                if self.held is None:
                    self.held = await self.named_reach()
        return self.held

    async def holds(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        """As a base below an increment: `has_blob`, but only a blob its named manifests
        reach (`held_digests`) counts, here and in its own bases; loading it pushes exactly
        those."""
        held = await self.held_digests()
        if held is not None and digest not in held:
            return self.base is not None and await self.base.holds(repository, digest, size)
        return await self.has_blob(repository, digest, size)

    def _stored_below(self, digest: Digest) -> bool:
        """Some base linked below stores the blob, named or not (what `open_blob` reads)."""
        base = self.base
        while base is not None:
            if base._blob_size(digest) is not None:
                return True
            base = base.base
        return False

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Every repository shares the store: present is mounted."""
        return await self.has_blob(repository, digest)

    @asynccontextmanager
    async def open_blob(
        self, repository: str, descriptor: Descriptor
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        where = f"blob {self.label}@{descriptor.digest.short}"
        try:
            handle = await asyncio.to_thread(self._open_blob_file, descriptor.digest)
        except OSError as exc:
            raise io_error(where, exc) from None
        if handle is None:
            base = self.base
            if base is not None and self._stored_below(descriptor.digest):
                # left out to a base linked below (`ops.archive.link_bases`): read it there,
                # verified as any blob (bytes a base holds unnamed are as good as named ones)
                async with base.open_blob(repository, descriptor) as chunks:
                    yield chunks
                return
            if self.base_name and self.missing_blob_hint is not None:
                hint = await self.missing_blob_hint(descriptor.digest)
                raise NotFoundError(f"{where} not found: {hint}")
            if self.base_name:
                raise NotFoundError(
                    f"{where} not found: this archive is incremental on top of "
                    f"{self.base_name}; load that archive (and the bases it was saved on, in "
                    "order) into the registry first"
                )
            raise NotFoundError(f"{where} not found")
        try:
            if handle.size != descriptor.size:
                raise IntegrityError(
                    f"{where}: stored blob has {handle.size} bytes, "
                    f"the descriptor says {descriptor.size}"
                )
            yield self._verified_chunks(handle, descriptor, where)
        finally:
            handle.close()

    async def _verified_chunks(
        self, handle: BlobFile, descriptor: Descriptor, where: str
    ) -> AsyncIterator[bytes]:
        hasher = Hasher(descriptor.digest, descriptor.size)
        try:
            while chunk := await asyncio.to_thread(_read_hashed, handle, hasher):
                yield chunk
            hasher.verify("blob")
        except IntegrityError as exc:
            raise IntegrityError(f"{self.label}: {exc.message}") from None
        except OSError as exc:
            raise io_error(where, exc) from None


def _read_hashed(handle: BlobFile, hasher: Hasher) -> bytes:
    """Read and hash one chunk off the event loop (hashlib releases the GIL on big buffers)."""
    chunk = handle.read(CHUNK)
    if chunk:
        hasher.update(chunk)
    return chunk
