"""The one interface the copy engine speaks: any source to any sink.

Like regclient's schemes and containers/image's transports, a registry and an on-disk OCI layout
both implement `Endpoint`, so `copy`, `save` and `load` are the same engine with different ends.
Repositories are plain paths (`tkg/antrea`); the endpoint knows its own host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from transship.digest import Digest, Hasher, RestOpener
from transship.manifest import Descriptor, Manifest, Referrer


class BlobStream(Protocol):
    """A blob being read: iterate to get chunks; the endpoint verifies the digest at the end."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class Endpoint(Protocol):
    """What the engine needs from a place that holds images."""

    #: human-readable location, for messages ("registry.local:5000", "oci:/media/usb/tkg")
    label: str

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """Fetch by tag or digest; the bytes are checked against a requested digest."""
        ...

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        """The descriptor of a manifest, or None if it is not there."""
        ...

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        """Store the exact bytes under their digest, and under `tag` if given."""
        ...

    async def has_blob(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        """True if the blob is present in `repository` (with `size` bytes, when given)."""
        ...

    def open_blob(
        self, repository: str, descriptor: Descriptor
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a blob's bytes; the iterator raises IntegrityError on a digest/size mismatch."""
        ...

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        """Store a blob from a stream; returns bytes written. Nothing lands if the hash is wrong."""
        ...

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Make a blob of another repository of this endpoint available; False if refused."""
        ...

    async def list_tags(self, repository: str) -> list[str]:
        """All tags of a repository (empty if the repository does not exist)."""
        ...

    async def list_referrers(self, repository: str, digest: Digest) -> tuple[Referrer, ...] | None:
        """Manifests whose `subject` is `digest` (OCI 1.1), or None when this endpoint has no
        referrers API; the referrers tag schema (a `sha256-<hex>` tag) then stands in for it.

        Pushing a referrer is `put_manifest` by digest: an endpoint with an API indexes it from
        its `subject` by itself.
        """
        ...

    async def close(self) -> None:
        """Release connections and file handles; write any pending index."""
        ...


@runtime_checkable
class PushCheck(Protocol):
    """Optional capability: say before any byte moves whether a push would be accepted."""

    async def check_push(self, repository: str) -> None:
        """Raise what a real push into `repository` would raise; return if it would land."""
        ...


@runtime_checkable
class TagIndex(Protocol):
    """Optional capability: which tags a repository holds, in one answer (or a few pages).

    The engine asks it once per destination repository instead of one HEAD per planned tag:
    a tag that is absent needs no HEAD, and a missing repository (None) holds no manifests at
    all. A tag that is present is still HEADed, since the list cannot say where it points.
    """

    async def existing_tags(self, repository: str) -> frozenset[str] | None:
        """The repository's tags, or None when the repository does not exist."""
        ...


@runtime_checkable
class RepositoryIndex(Protocol):
    """Optional capability: which repositories exist under a prefix, in one answer (or a few
    pages), where a `TagIndex` would take a tag list per repository.

    The engine asks it once per destination, at the first check, for the common prefix of the
    plan's repositories there: a repository it lacks needs no tag list and no HEAD. It may be
    wrong only in one direction that matters: a repository it wrongly calls missing costs work,
    never correctness (each blob's transfer begins with a mount from that very repository,
    which answers "already here", and pushing a manifest's same bytes again changes nothing,
    unless the registry refuses to re-push immutable tags).
    """

    async def existing_repositories(self, prefix: str, *, max_pages: int) -> frozenset[str] | None:
        """The repositories whose names start with `prefix`, or None when the endpoint cannot
        say within `max_pages` requests (not allowed, no such API, too many names)."""
        ...


@runtime_checkable
class RangeSource(Protocol):
    """Optional capability: stream a blob from a byte offset (`Range: bytes=N-`)."""

    def open_blob_at(
        self, repository: str, descriptor: Descriptor, hasher: Hasher
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream the blob from byte `hasher.size`; `hasher` holds the bytes before it and
        verifies the whole blob at the end (IntegrityError as `open_blob`'s)."""
        ...


@runtime_checkable
class ResumingSink(Protocol):
    """Optional capability: keep a blob's bytes written before a run was stopped, and on the
    next transfer of that digest continue after them (`save`'s layouts)."""

    async def put_blob_resuming(
        self, repository: str, descriptor: Descriptor, open_rest: RestOpener
    ) -> tuple[int, int]:
        """As `put_blob`, the stream opened by `open_rest` from the first byte not kept (0
        when nothing is). Returns (bytes stored, bytes kept from an earlier run)."""
        ...
