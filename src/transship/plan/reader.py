"""Reading source content for planning: each manifest and config once, bounded, shared.

`transship.plan.resolve` (entries, bundles) and `transship.plan.attachments` (signatures,
referrers) both read through one `SourceReader`, so neither needs the other's internals.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.errors import BundleError, PlanError
from transship.imgpkg.bundle import (
    BUNDLE_LABEL,
    IMAGES_LOCK_FILE,
    IMGPKG_DIR,
    MAX_LAYER_BYTES,
    LockedImage,
    find_file,
    only_regular_file,
    parse_images_lock,
)
from transship.manifest import MAX_INDEX_DEPTH, Descriptor, Manifest
from transship.reference import Reference
from transship.retry import restarting
from transship.singleflight import SingleFlight

EndpointFor = Callable[[str], Endpoint]
T = TypeVar("T")

MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ResolveOptions:
    parallel: int = 16  # registry requests in flight
    keep_going: bool = False  # per-entry failures become warnings and plan gaps
    expand_bundles: bool = True
    attachments: bool = True  # signatures, attestations, SBOMs and referrers travel along


@dataclass(frozen=True)
class Content:
    """What one manifest graph holds: manifests and distributable blobs, digest → size."""

    manifests: dict[Digest, int] = field(default_factory=dict)
    blobs: dict[Digest, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(self.manifests.values()) + sum(self.blobs.values())


@dataclass(frozen=True)
class Resolved:
    """One manifest as the source registry has it, and what it references."""

    reference: Reference  # where it was read, pinned to its digest
    manifest: Manifest
    content: Content
    labels: dict[str, str]  # image config labels (empty for an index)

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @property
    def is_bundle(self) -> bool:
        """imgpkg's rule (`bundle/validation.go`): the label key is present; never an index."""
        return not self.manifest.is_index and BUNDLE_LABEL in self.labels


class SourceReader:
    """Bounded, de-duplicated reads from source endpoints: each manifest and config once."""

    def __init__(self, source_for: EndpointFor, parallel: int) -> None:
        self.source_for = source_for
        self._slots = asyncio.Semaphore(max(1, parallel))
        self._once: SingleFlight[tuple[str, ...], object] = SingleFlight()

    def cancel_pending(self) -> None:
        self._once.cancel_pending()

    async def _shared(self, key: tuple[str, ...], make: Callable[[], Awaitable[T]]) -> T:
        """Run `make()` once per key; concurrent and later callers share its result."""
        return cast(T, await self._once.run(key, make))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            return await call()

    async def cached(self, key: tuple[str, ...], call: Callable[[], Awaitable[T]]) -> T:
        """One request per key for the whole run, within the request limit (tag lists,
        referrers): callers outside this module share the reader's cache and slots."""
        return await self._shared(key, lambda: self._call(call))

    async def manifest(self, ref: Reference) -> Manifest:
        endpoint = self.source_for(ref.registry)
        key = ("manifest", ref.registry, ref.repository, ref.identifier)
        return await self._shared(
            key, lambda: self._call(lambda: endpoint.get_manifest(ref.repository, ref.identifier))
        )

    async def blob(
        self, ref: Reference, descriptor: Descriptor, limit: int, *, keep: bool = True
    ) -> bytes:
        """A small blob (config, bundle or BOM layer) in memory, refusing big ones up front.

        `keep=False` reads it without keeping the bytes for the run: callers that keep what
        they parsed from it instead (labels, a lock file) hold a few bytes per image, not a
        config's kilobytes, so memory stays small per tag on plans of thousands of images.
        """
        if descriptor.size > limit:
            raise BundleError(
                f"{ref}: blob {descriptor.digest.short} is {descriptor.size} bytes, over the "
                f"{limit} byte limit for metadata"
            )
        endpoint = self.source_for(ref.registry)

        async def read() -> bytes:
            parts: list[bytes] = []
            async with endpoint.open_blob(ref.repository, descriptor) as chunks:
                async for chunk in chunks:
                    parts.append(chunk)
            return b"".join(parts)

        # A body that failed its digest is read again, under the engine's policy.
        if not keep:
            return await self._call(lambda: restarting(read))
        key = ("blob", ref.registry, ref.repository, str(descriptor.digest))
        return await self._shared(key, lambda: self._call(lambda: restarting(read)))

    async def list_tags(self, registry: str, repository: str) -> list[str]:
        endpoint = self.source_for(registry)
        return await self._call(lambda: endpoint.list_tags(repository))

    async def resolve(self, ref: Reference) -> Resolved:
        """The manifest at `ref`, its content (children and blob sizes) and config labels."""
        key = ("resolve", ref.registry, ref.repository, ref.identifier)
        resolved = await self._shared(key, lambda: self._resolve(ref))
        pinned = ("resolve", ref.registry, ref.repository, str(resolved.digest))
        self._once.alias(pinned, key)  # a later read by digest is free
        return resolved

    async def _resolve(self, ref: Reference) -> Resolved:
        manifest = await self.manifest(ref)
        pinned = Reference(ref.registry, ref.repository, ref.tag, manifest.digest)
        content = Content({manifest.digest: manifest.size})
        labels: dict[str, str] = {}
        if manifest.is_index:
            await self._add_children(pinned, manifest, content, depth=1)
        else:
            _add_blobs(manifest, content)
            labels = await self.labels(pinned, manifest)
        return Resolved(pinned, manifest, content, labels)

    async def _add_children(
        self, ref: Reference, index: Manifest, content: Content, depth: int
    ) -> None:
        if depth > MAX_INDEX_DEPTH:
            raise BundleError(f"{ref}: index nesting deeper than {MAX_INDEX_DEPTH} levels")
        children = await asyncio.gather(
            *(self.manifest(ref.with_digest(child.digest)) for child in index.manifests)
        )
        for child in children:
            content.manifests[child.digest] = child.size
            if child.is_index:
                await self._add_children(ref, child, content, depth + 1)
            else:
                _add_blobs(child, content)

    async def labels(self, ref: Reference, manifest: Manifest) -> dict[str, str]:
        """`config.Labels` of an image's config blob (imgpkg reads bundle-ness from here)."""
        config = manifest.config
        if config is None or config.size > MAX_CONFIG_BYTES:
            return {}
        key = ("labels", ref.registry, ref.repository, str(config.digest))
        return await self._shared(key, lambda: self._labels(ref, config))

    async def _labels(self, ref: Reference, config: Descriptor) -> dict[str, str]:
        raw = await self.blob(ref, config, MAX_CONFIG_BYTES, keep=False)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return {}  # an artifact whose config is not JSON: not a bundle
        inner = doc.get("config") if isinstance(doc, dict) else None
        labels = inner.get("Labels") if isinstance(inner, dict) else None
        if not isinstance(labels, dict):
            return {}
        return {str(k): str(v) for k, v in labels.items()}

    async def single_layer(self, resolved: Resolved, what: str, *, keep: bool = True) -> bytes:
        """The one layer of a bundle or BOM image; anything else is not readable."""
        manifest = resolved.manifest
        if manifest.is_index:
            raise BundleError(f"{what} {resolved.reference}: is an image index, not one image")
        if len(manifest.layers) != 1:
            raise BundleError(
                f"{what} {resolved.reference}: has {len(manifest.layers)} layers; imgpkg "
                "writes exactly one"
            )
        return await self.blob(resolved.reference, manifest.layers[0], MAX_LAYER_BYTES, keep=keep)

    async def images_lock(self, bundle: Resolved) -> tuple[LockedImage, ...]:
        """The bundle's `.imgpkg/images.yml`, parsed (once per bundle; its layer is not kept);
        one-line errors name the bundle."""
        ref = bundle.reference
        key = ("images-lock", ref.registry, ref.repository, str(bundle.digest))
        return await self._shared(key, lambda: self._images_lock(bundle))

    async def _images_lock(self, bundle: Resolved) -> tuple[LockedImage, ...]:
        where = f"bundle {bundle.reference}"
        layer = await self.single_layer(bundle, "bundle", keep=False)
        path = f"{IMGPKG_DIR}/{IMAGES_LOCK_FILE}"
        raw = find_file(layer, path, where)
        if raw is None:
            raise BundleError(f"{where}: no {path} in its layer; not a readable imgpkg bundle")
        try:
            return parse_images_lock(raw.decode("utf-8-sig"), f"{where} {path}")
        except UnicodeDecodeError:
            raise BundleError(f"{where}: {path} is not UTF-8 text") from None
        except PlanError as exc:
            raise BundleError(str(exc)) from None

    async def single_file(self, ref: Reference, what: str) -> tuple[str, Resolved]:
        """The text of a one-file image (TKG BOM / compatibility) and where it was read."""
        resolved = await self.resolve(ref)
        layer = await self.single_layer(resolved, what)
        found = only_regular_file(layer, f"{what} {resolved.reference}")
        try:
            return found.data.decode("utf-8-sig"), resolved
        except UnicodeDecodeError:
            raise BundleError(f"{what} {ref}: {found.name} is not UTF-8 text") from None


def image_content(manifest: Manifest) -> Content:
    """An image manifest's content without reading anything else (no config labels)."""
    content = Content({manifest.digest: manifest.size})
    _add_blobs(manifest, content)
    return content


def _add_blobs(manifest: Manifest, content: Content) -> None:
    for blob in manifest.blobs():
        if not blob.urls:  # foreign layers are never copied, so never counted
            content.blobs[blob.digest] = blob.size
