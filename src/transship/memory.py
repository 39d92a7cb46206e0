"""Images held in memory, and a read-only `Endpoint` over them.

transship serves the images it generates (imgpkg's ImageLocations record, `transship.imgpkg`)
through this endpoint, so the engine copies them like any other source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from transship.digest import Digest, Hasher
from transship.errors import NotFoundError, RegistryError, UsageError
from transship.manifest import Descriptor, Manifest, Referrer


@dataclass(frozen=True)
class GeneratedImage:
    """A single-platform image whose every byte is held in memory."""

    manifest: Manifest
    blobs: dict[Digest, bytes] = field(repr=False)

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @property
    def size(self) -> int:
        """Manifest plus blobs: what a copy of it sends."""
        return self.manifest.size + sum(len(data) for data in self.blobs.values())


class MemoryEndpoint:
    """An `Endpoint` whose every byte is in memory: the source of the images transship
    generates, and (writable) the destination the engine's unit tests copy into.

    Read-only (the default), manifests are found by digest in any repository (they exist
    nowhere else) or by a tag given when the image was added, and writes are refused. Writable,
    it keeps what each repository holds, as a registry does: a blob lands in a repository by
    `put_blob` or `mount_blob`, and every byte is hashed on the way in and out.
    """

    def __init__(
        self,
        images: Sequence[GeneratedImage] = (),
        label: str = "generated",
        *,
        writable: bool = False,
    ) -> None:
        self.label = label
        self.writable = writable
        self._manifests: dict[Digest, Manifest] = {}
        self._blobs: dict[Digest, bytes] = {}
        self._tags: dict[tuple[str, str], Digest] = {}
        #: writable: which repositories hold which blobs and manifests
        self._held: dict[str, set[Digest]] = {}
        for image in images:
            self.add(image)

    def add(self, image: GeneratedImage, repository: str = "", tags: Iterable[str] = ()) -> None:
        self._manifests[image.digest] = image.manifest
        self._blobs.update(image.blobs)
        held = self._held.setdefault(repository, set())
        held.add(image.digest)
        held.update(image.blobs)
        for tag in tags:
            self._tags[(repository, tag)] = image.digest

    def _holds(self, repository: str, digest: Digest) -> bool:
        return not self.writable or digest in self._held.get(repository, set())

    def _find(self, repository: str, identifier: str) -> Manifest | None:
        if ":" in identifier:
            digest: Digest | None = Digest.parse(identifier)
        else:
            digest = self._tags.get((repository, identifier))
        if digest is None or not self._holds(repository, digest):
            return None
        return self._manifests.get(digest)

    def _check_writable(self) -> None:
        if not self.writable:
            raise UsageError(f"{self.label} is read-only")

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        found = self._find(repository, identifier)
        if found is None:
            raise NotFoundError(
                f"{self.label}/{repository}@{identifier}: no such image here"
                + (
                    ""
                    if self.writable
                    else " (the plan may come from another transship version: plan again)"
                )
            )
        return found

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        found = self._find(repository, identifier)
        return found.descriptor if found else None

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        """Store the manifest; like a registry, refuse one whose content is not all here."""
        self._check_writable()
        held = self._held.setdefault(repository, set())
        missing = [d.digest for d in manifest.manifests if d.digest not in held]
        missing += [b.digest for b in manifest.blobs() if not b.urls and b.digest not in held]
        if missing:
            raise RegistryError(
                f"{self.label}/{repository}: manifest {manifest.digest.short} refers to "
                f"{missing[0].short}, which is not in the repository",
                status=400,
                codes=("MANIFEST_BLOB_UNKNOWN",),
            )
        self._manifests[manifest.digest] = manifest
        held.add(manifest.digest)
        if tag is not None:
            self._tags[(repository, tag)] = manifest.digest

    async def has_blob(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        data = self._blobs.get(digest)
        if data is None or not self._holds(repository, digest):
            return False
        return size is None or len(data) == size

    @asynccontextmanager
    async def open_blob(
        self, repository: str, descriptor: Descriptor
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self._blobs.get(descriptor.digest)
        if data is None or not self._holds(repository, descriptor.digest):
            raise NotFoundError(f"{self.label}: no blob {descriptor.digest.short}")

        async def chunks() -> AsyncIterator[bytes]:
            hasher = Hasher(descriptor.digest, descriptor.size)
            hasher.update(data)  # already in memory: one chunk, verified before it is handed out
            hasher.verify(f"{self.label}: blob")
            yield data

        yield chunks()

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        """Keep the blob only if every byte hashed to its digest (nothing lands otherwise)."""
        self._check_writable()
        hasher = Hasher(descriptor.digest, descriptor.size)
        parts: list[bytes] = []
        async for chunk in chunks:
            hasher.update(chunk)
            parts.append(chunk)
        hasher.verify(f"{self.label}: upload of blob")
        self._blobs[descriptor.digest] = b"".join(parts)
        self._held.setdefault(repository, set()).add(descriptor.digest)
        return hasher.size

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Writable: True when the blob is already here or in `from_repository`."""
        if not self.writable:
            return False
        held = self._held.setdefault(repository, set())
        if digest in held:
            return True
        if digest in self._held.get(from_repository, set()) and digest in self._blobs:
            held.add(digest)
            return True
        return False

    async def list_tags(self, repository: str) -> list[str]:
        return sorted(tag for repo, tag in self._tags if repo == repository)

    async def existing_tags(self, repository: str) -> frozenset[str] | None:
        """`TagIndex`: None when nothing at all is held in `repository`."""
        if not any(self._holds(repository, d) for d in self._manifests):
            return None
        return frozenset(await self.list_tags(repository))

    async def list_referrers(self, repository: str, digest: Digest) -> tuple[Referrer, ...] | None:
        """Manifests held here whose `subject` is `digest`: an endpoint that indexes them."""
        return tuple(
            Referrer(m.descriptor, m.artifact_type)
            for d, m in self._manifests.items()
            if m.subject is not None and m.subject.digest == digest and self._holds(repository, d)
        )

    async def check_push(self, repository: str) -> None:
        self._check_writable()

    async def close(self) -> None:
        pass
