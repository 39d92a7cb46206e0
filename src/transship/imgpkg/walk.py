"""The bundle walk: an imgpkg bundle expanded into every image it references, recursively.

A bundle is only copied correctly if every image its `.imgpkg/images.yml` lists lands, by digest,
in the bundle's destination repository (imgpkg-format.md §3, §7), so every referenced image is
planned there by digest with imgpkg's `sha256-<hex>.imgpkg` tag, read from
`<bundle repository>@<digest>` first and its original location second (as imgpkg does), and each
completely expanded bundle gets its ImageLocations record (`transship.imgpkg.locations`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from transship.digest import Digest
from transship.errors import HostDownError, NotFoundError, TransshipError
from transship.imgpkg.bundle import IMAGES_LOCK_FILE, IMGPKG_DIR, LockedImage
from transship.imgpkg.locations import (
    GENERATED_REGISTRY,
    ImageLocation,
    build_image_locations,
    image_locations_tag,
    imgpkg_tag,
)
from transship.plan.model import EntryKind, Gap, PlanEntry
from transship.plan.reader import Content, Resolved, SourceReader
from transship.reference import Reference


class PlanSink(Protocol):
    """Where a walk puts what it plans: entries with their content, and gaps."""

    gaps: list[Gap]

    def add(self, entry: PlanEntry, content: Content) -> None: ...


def locations_content(locations: Iterable[ImageLocation]) -> Content:
    """What copying the ImageLocations image of `locations` moves."""
    image = build_image_locations(locations)
    return Content({image.digest: image.manifest.size}, blob_sizes(image.blobs))


def blob_sizes(blobs: dict[Digest, bytes]) -> dict[Digest, int]:
    return {digest: len(data) for digest, data in blobs.items()}


class BundleWalk:
    """One root bundle's expansion into its destination repository (imgpkg copy -b)."""

    def __init__(
        self, reader: SourceReader, destination: str, outcome: PlanSink, keep_going: bool
    ) -> None:
        self.reader = reader
        self.destination = destination
        self.outcome = outcome
        self.keep_going = keep_going
        self.walked: dict[Digest, asyncio.Future[bool]] = {}

    async def walk(self, bundle: Resolved) -> bool:
        """Plan everything below `bundle`; True when nothing is missing (ImageLocations added)."""
        known = self.walked.get(bundle.digest)
        if known is not None:
            return await asyncio.shield(known)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.walked[bundle.digest] = future
        try:
            complete = await self._walk(bundle)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: other walkers re-raise it themselves
            raise
        future.set_result(complete)
        return complete

    async def _walk(self, bundle: Resolved) -> bool:
        try:
            locked = await self.reader.images_lock(bundle)
        except TransshipError as exc:
            return self._missing(str(bundle.reference), exc, str(bundle.reference))
        rows: dict[Digest, LockedImage] = {}
        for image in locked:  # imgpkg keys its cache by digest: the last spelling wins
            assert image.reference.digest is not None
            rows[image.reference.digest] = image
        results = await asyncio.gather(*(self._child(bundle, row) for row in rows.values()))
        found = {r.digest: r for r in results if r is not None}
        nested = [r for r in found.values() if r.is_bundle]
        walked = await asyncio.gather(*(self.walk(r) for r in nested))
        deeper = {r.digest: done for r, done in zip(nested, walked, strict=True)}
        for resolved in found.values():
            self._add_referenced(bundle, resolved, deeper.get(resolved.digest))
        complete = len(found) == len(rows) and all(deeper.values())
        if complete:
            locations = [
                ImageLocation(row.image, found[digest].is_bundle) for digest, row in rows.items()
            ]
            self._add_locations(bundle, locations)
        return complete

    async def _child(self, bundle: Resolved, row: LockedImage) -> Resolved | None:
        """Resolve one images.yml row where imgpkg looks: the bundle's repository, then origin."""
        digest = row.reference.digest
        assert digest is not None
        local = Reference(bundle.reference.registry, bundle.reference.repository, None, digest)
        candidates = [local] if local == row.reference else [local, row.reference]
        failure: TransshipError | None = None
        for candidate in candidates:
            try:
                return await self.reader.resolve(candidate)
            except HostDownError:
                raise
            except TransshipError as exc:
                failure = exc
        assert failure is not None
        if len(candidates) > 1:
            failure = NotFoundError(
                f"bundle {bundle.reference}: {row.image} is neither in {local.name} nor "
                f"readable at its original location ({failure})"
            )
        self._missing(row.image, failure, f"{bundle.reference} {IMGPKG_DIR}/{IMAGES_LOCK_FILE}")
        return None

    def _add_referenced(self, bundle: Resolved, resolved: Resolved, expanded: bool | None) -> None:
        """An image the bundle needs, by digest, in the bundle's destination repository."""
        entry = PlanEntry.create(
            str(resolved.reference.with_tag(None)),
            self.destination,
            kind=EntryKind.BUNDLE_REFERENCED,
            tags=(imgpkg_tag(resolved.digest),),
            origins=(f"{bundle.reference} {IMGPKG_DIR}/{IMAGES_LOCK_FILE}",),
            source_digest=resolved.digest,
            size=resolved.content.size,
            expanded=expanded,
        )
        self.outcome.add(entry, resolved.content)

    def _missing(self, source: str, exc: TransshipError, origin: str) -> bool:
        """A hole below a bundle: fatal, or a gap (and no ImageLocations) with --keep-going."""
        if not self.keep_going or isinstance(exc, HostDownError):
            raise exc
        self.outcome.gaps.append(Gap(source, str(exc), (origin,)))
        return False

    def _add_locations(self, bundle: Resolved, locations: Sequence[ImageLocation]) -> None:
        image = build_image_locations(locations)
        source = f"{GENERATED_REGISTRY}/{bundle.reference.repository}@{image.digest}"
        entry = PlanEntry.create(
            source,
            self.destination,
            kind=EntryKind.IMAGE_LOCATIONS,
            tags=(image_locations_tag(bundle.digest), imgpkg_tag(image.digest)),
            origins=(f"ImageLocations of {bundle.reference}",),
            source_digest=image.digest,
            size=image.size,
            locations=locations,
        )
        content = Content({image.digest: image.manifest.size}, blob_sizes(image.blobs))
        self.outcome.add(entry, content)
