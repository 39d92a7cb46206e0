"""Images held in memory, and a read-only `Endpoint` over them.

transship serves the images it generates (imgpkg's ImageLocations record, `transship.imgpkg`)
through this endpoint, so the engine copies them like any other source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from transship.digest import Digest
from transship.errors import IntegrityError, NotFoundError, UsageError
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
    """A read-only `Endpoint` over `GeneratedImage`s: the source of copy tasks for them, and
    the endpoint the engine's unit tests copy from.

    Manifests are found by digest in any repository (they exist nowhere else) or by a tag given
    when the image was added; writes are refused.
    """

    def __init__(self, images: Sequence[GeneratedImage] = (), label: str = "generated") -> None:
        self.label = label
        self._manifests: dict[Digest, Manifest] = {}
        self._blobs: dict[Digest, bytes] = {}
        self._tags: dict[tuple[str, str], Digest] = {}
        for image in images:
            self.add(image)

    def add(self, image: GeneratedImage, repository: str = "", tags: Iterable[str] = ()) -> None:
        self._manifests[image.digest] = image.manifest
        self._blobs.update(image.blobs)
        for tag in tags:
            self._tags[(repository, tag)] = image.digest

    def _find(self, repository: str, identifier: str) -> Manifest | None:
        if ":" in identifier:
            return self._manifests.get(Digest.parse(identifier))
        digest = self._tags.get((repository, identifier))
        return self._manifests.get(digest) if digest else None

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        found = self._find(repository, identifier)
        if found is None:
            raise NotFoundError(
                f"{self.label}/{repository}@{identifier}: transship generates no such image "
                "(the plan may come from another transship version: plan again)"
            )
        return found

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        found = self._find(repository, identifier)
        return found.descriptor if found else None

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        raise UsageError(f"{self.label} is read-only")

    async def has_blob(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        data = self._blobs.get(digest)
        return data is not None and (size is None or len(data) == size)

    @asynccontextmanager
    async def open_blob(
        self, repository: str, descriptor: Descriptor
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self._blobs.get(descriptor.digest)
        if data is None:
            raise NotFoundError(f"{self.label}: no blob {descriptor.digest.short}")
        if len(data) != descriptor.size:
            raise IntegrityError(
                f"{self.label}: blob {descriptor.digest.short} has {len(data)} bytes, "
                f"the descriptor says {descriptor.size}"
            )

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        yield chunks()

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        raise UsageError(f"{self.label} is read-only")

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        return False

    async def list_tags(self, repository: str) -> list[str]:
        return sorted(tag for repo, tag in self._tags if repo == repository)

    async def list_referrers(
        self, repository: str, digest: Digest
    ) -> tuple[Referrer, ...] | None:
        """Manifests added here whose `subject` is `digest` (generated content has none yet)."""
        return tuple(
            Referrer(m.descriptor, m.artifact_type)
            for m in self._manifests.values()
            if m.subject is not None and m.subject.digest == digest
        )

    async def check_push(self, repository: str) -> None:
        raise UsageError(f"{self.label} is read-only")

    async def close(self) -> None:
        pass
