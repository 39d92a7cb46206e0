"""Resolve a plan against the source registries: digests, sizes, kinds, and imgpkg bundles.

Offline planning only knows names. Before a long copy people want to know what the names are
(a digest, an image or an index, a bundle or not) and how much will move, and a bundle is only
copied correctly if every image its `.imgpkg/images.yml` lists lands, by digest, in the bundle's
destination repository (imgpkg-format.md §3, §7). So this module:

* resolves every entry's tag to a digest, concurrently but bounded (`ResolveOptions.parallel`
  requests in flight), reading manifests and image configs only, never layers;
* decides image / index / bundle from the content: the `dev.carvel.imgpkg.bundle` config label
  is the truth, the vendor script's component names only a hint (both disagreements warn);
* expands each bundle, recursively: every referenced image is planned into the *bundle's*
  destination repository by digest with imgpkg's `sha256-<hex>.imgpkg` tag, read from
  `<bundle repository>@<digest>` first and its original location second (as imgpkg does), and
  each completely expanded bundle gets its ImageLocations record (`transship.generated`);
* finds what is attached to every resolved manifest (cosign signatures, attestations, SBOMs,
  OCI 1.1 referrers) and plans it into the same destination repository
  (`transship.plan.attachments`, on unless `ResolveOptions.attachments` is False);
* counts what a copy will move: unique blobs and bytes versus a naive image-by-image copy.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.errors import HostDownError, NotFoundError, TransshipError
from transship.generated import (
    GENERATED_REGISTRY,
    ImageLocation,
    build_image_locations,
    image_locations_tag,
    imgpkg_tag,
)
from transship.manifest import Descriptor, Manifest
from transship.plan.errors import BundleError, PlanError
from transship.plan.imgpkg import (
    BUNDLE_LABEL,
    IMAGES_LOCK_FILE,
    IMGPKG_DIR,
    MAX_LAYER_BYTES,
    LockedImage,
    find_file,
    only_regular_file,
    parse_images_lock,
)
from transship.plan.model import EntryKind, Gap, Plan, PlanEntry
from transship.reference import Reference
from transship.retry import restarting
from transship.singleflight import SingleFlight

log = logging.getLogger("transship.plan")

EndpointFor = Callable[[str], Endpoint]
T = TypeVar("T")

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_INDEX_DEPTH = 4


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


@dataclass(frozen=True)
class ContentTotals:
    """The numbers people check before a long copy."""

    entries: int
    repositories: int
    bundles: int
    blobs: int | None  # unique blobs (configs and layers); None when not resolved
    bytes: int | None  # unique bytes: unique blobs + unique manifests
    naive_bytes: int | None  # every entry copied on its own, nothing shared
    attachments: int = 0  # attachment entries (signatures, attestations, referrers)

    @property
    def saved_bytes(self) -> int | None:
        """What de-duplication saves against copying image by image."""
        if self.bytes is None or self.naive_bytes is None:
            return None
        return self.naive_bytes - self.bytes


@dataclass(frozen=True)
class Resolution:
    """A resolved plan, the warnings people should read, and the totals."""

    plan: Plan
    warnings: tuple[str, ...]  # worth reading; gaps are listed in the plan, not repeated here
    totals: ContentTotals

    @property
    def gaps(self) -> tuple[Gap, ...]:
        return self.plan.gaps


def content_totals(plan: Plan, contents: dict[tuple[str, str], Content] | None) -> ContentTotals:
    """Totals of a plan; blob figures only when every entry's content is known."""
    base = plan.totals
    known = contents is not None and all(e.key in contents for e in plan.entries)
    if not known or contents is None:
        return ContentTotals(
            base.entries, base.repositories, base.bundles, None, None, None, base.attachments
        )
    blobs: dict[Digest, int] = {}
    manifests: dict[Digest, int] = {}
    naive = 0
    for entry in plan.entries:
        content = contents[entry.key]
        blobs.update(content.blobs)
        manifests.update(content.manifests)
        naive += content.size
    unique = sum(blobs.values()) + sum(manifests.values())
    return ContentTotals(
        base.entries, base.repositories, base.bundles, len(blobs), unique, naive, base.attachments
    )


def unresolved(plan: Plan) -> Resolution:
    """`--no-resolve`: the plan as named, bundles marked as not expanded."""
    entries = tuple(
        replace(e, expanded=False) if e.kind is EntryKind.BUNDLE and e.expanded is None else e
        for e in plan.entries
    )
    offline = replace(plan, entries=entries)
    warnings: tuple[str, ...] = ()
    if any(e.kind is EntryKind.BUNDLE for e in entries):
        warnings = (
            "bundles were not expanded (--no-resolve): the images they reference are not in "
            "the plan; plan again with registry access to include them",
        )
    return Resolution(offline, warnings, content_totals(offline, None))


async def resolve_plan(
    plan: Plan,
    source_for: EndpointFor,
    options: ResolveOptions | None = None,
    *,
    reader: SourceReader | None = None,
) -> Resolution:
    """Resolve every entry of `plan` against the source registries (see the module doc).

    `reader` shares what an earlier step already read (its cache and request limit).
    """
    options = options or ResolveOptions()
    reader = reader or SourceReader(source_for, options.parallel)
    try:
        return await _Resolver(reader, options).run(plan)
    finally:
        reader.cancel_pending()


# --- reading the source -------------------------------------------------------------------


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

    async def blob(self, ref: Reference, descriptor: Descriptor, limit: int) -> bytes:
        """A small blob (config, bundle or BOM layer) in memory, refusing big ones up front."""
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
        raw = await self.blob(ref, config, MAX_CONFIG_BYTES)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return {}  # an artifact whose config is not JSON: not a bundle
        inner = doc.get("config") if isinstance(doc, dict) else None
        labels = inner.get("Labels") if isinstance(inner, dict) else None
        if not isinstance(labels, dict):
            return {}
        return {str(k): str(v) for k, v in labels.items()}

    async def single_layer(self, resolved: Resolved, what: str) -> bytes:
        """The one layer of a bundle or BOM image; anything else is not readable."""
        manifest = resolved.manifest
        if manifest.is_index:
            raise BundleError(f"{what} {resolved.reference}: is an image index, not one image")
        if len(manifest.layers) != 1:
            raise BundleError(
                f"{what} {resolved.reference}: has {len(manifest.layers)} layers; imgpkg "
                "writes exactly one"
            )
        return await self.blob(resolved.reference, manifest.layers[0], MAX_LAYER_BYTES)

    async def images_lock(self, bundle: Resolved) -> tuple[LockedImage, ...]:
        """The bundle's `.imgpkg/images.yml`, parsed; one-line errors name the bundle."""
        where = f"bundle {bundle.reference}"
        layer = await self.single_layer(bundle, "bundle")
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


# --- resolving a plan ---------------------------------------------------------------------


@dataclass
class _Outcome:
    """What resolving one plan entry produced."""

    entries: list[PlanEntry] = field(default_factory=list)
    contents: dict[tuple[str, str], Content] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, entry: PlanEntry, content: Content) -> None:
        self.entries.append(entry)
        self.contents[entry.key] = content


class _Resolver:
    """All entries at once; the first failure stops the rest unless --keep-going."""

    def __init__(self, reader: SourceReader, options: ResolveOptions) -> None:
        self.reader = reader
        self.options = options

    async def run(self, plan: Plan) -> Resolution:
        tasks = [asyncio.ensure_future(self._entry(entry)) for entry in plan.entries]
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # plan order, so the error shown does not depend on timing
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure
        outcomes = [task.result() for task in tasks]
        entries = [e for o in outcomes for e in o.entries]
        contents = {k: c for o in outcomes for k, c in o.contents.items()}
        gaps = [g for o in outcomes for g in o.gaps]
        warnings = [w for o in outcomes for w in o.warnings]
        if self.options.attachments:
            # imported here: attachments builds on this module's reader and content model
            from transship.plan.attachments import find_attachments

            found = await find_attachments(entries, contents, self.reader, self.options)
            entries += found.entries
            contents.update(found.contents)
            gaps += found.gaps
            warnings += found.warnings
        resolved = Plan(
            entries=tuple(entries),
            sources=plan.sources,
            created=plan.created,
            not_registry_content=plan.not_registry_content,
            gaps=(*plan.gaps, *gaps),
            destination_prefix=plan.destination_prefix,
        )
        unique = tuple(dict.fromkeys(warnings))
        totals = content_totals(resolved, contents)
        return Resolution(replace(resolved, unique_bytes=totals.bytes), unique, totals)

    async def _entry(self, entry: PlanEntry) -> _Outcome:
        outcome = _Outcome()
        try:
            await self._resolve_entry(entry, outcome)
        except TransshipError as exc:
            where = f" (from {entry.origins[0]})" if entry.origins else ""
            if isinstance(exc, HostDownError):  # not this entry's fault: stop, whatever keep_going
                raise
            if not self.options.keep_going:
                shown = copy.copy(exc)  # the error may be shared by entries: never mutate it
                shown.message = f"{exc.message}{where}"
                raise shown from None
            outcome.entries.clear()
            outcome.contents.clear()
            outcome.gaps.append(Gap(entry.source, str(exc), entry.origins))
        return outcome

    async def _resolve_entry(self, entry: PlanEntry, outcome: _Outcome) -> None:
        if entry.kind is EntryKind.IMAGE_LOCATIONS:  # already generated: nothing to ask
            image = build_image_locations(entry.locations)
            outcome.add(entry, Content({image.digest: image.manifest.size}, _sizes(image.blobs)))
            return
        ref = Reference.parse(entry.source)
        if entry.source_digest is not None:
            ref = ref.with_digest(entry.source_digest)
        resolved = await self.reader.resolve(ref)
        kind = self._kind(entry, resolved, outcome)
        tags = entry.tags
        if kind is EntryKind.BUNDLE:
            tags = (*tags, imgpkg_tag(resolved.digest))
        done = replace(
            entry,
            kind=kind,
            tags=tuple(sorted(set(tags))),
            source_digest=resolved.digest,
            size=resolved.content.size,
        )
        if kind is EntryKind.BUNDLE:
            if self.options.expand_bundles:
                complete = await _BundleWalk(self, entry.destination, outcome).walk(resolved)
                done = replace(done, expanded=complete)
            else:
                done = replace(done, expanded=False)
        outcome.add(done, resolved.content)

    def _kind(self, entry: PlanEntry, resolved: Resolved, outcome: _Outcome) -> EntryKind:
        """The content decides; disagreements with the names are worth a warning."""
        hinted = entry.kind is EntryKind.BUNDLE
        if entry.kind in (EntryKind.METADATA, EntryKind.BUNDLE_REFERENCED, EntryKind.ATTACHMENT):
            return entry.kind
        if resolved.manifest.is_index:
            if hinted:
                outcome.warnings.append(
                    f"{entry.source}: listed as an imgpkg bundle but is an image index; "
                    "copying it as an index"
                )
            return EntryKind.INDEX
        if resolved.is_bundle:
            if not hinted:
                outcome.warnings.append(
                    f"{entry.source}: carries the {BUNDLE_LABEL} label, so it is an imgpkg "
                    "bundle; copying it with every image it references"
                )
            return EntryKind.BUNDLE
        if hinted:
            outcome.warnings.append(
                f"{entry.source}: listed as an imgpkg bundle but has no {BUNDLE_LABEL} label; "
                "copying it as a plain image"
            )
        return EntryKind.IMAGE


def _sizes(blobs: dict[Digest, bytes]) -> dict[Digest, int]:
    return {digest: len(data) for digest, data in blobs.items()}


class _BundleWalk:
    """One root bundle's expansion into its destination repository (imgpkg copy -b)."""

    def __init__(self, resolver: _Resolver, destination: str, outcome: _Outcome) -> None:
        self.resolver = resolver
        self.reader = resolver.reader
        self.destination = destination
        self.outcome = outcome
        self.walked: SingleFlight[Digest, bool] = SingleFlight()

    async def walk(self, bundle: Resolved) -> bool:
        """Plan everything below `bundle`; True when nothing is missing (ImageLocations added)."""
        return await self.walked.run(bundle.digest, lambda: self._walk(bundle))

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
        if not self.resolver.options.keep_going or isinstance(exc, HostDownError):
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
        content = Content({image.digest: image.manifest.size}, _sizes(image.blobs))
        self.outcome.add(entry, content)
