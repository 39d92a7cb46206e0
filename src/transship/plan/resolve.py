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
  each completely expanded bundle gets its ImageLocations record (`transship.imgpkg.locations`);
* finds what is attached to every resolved manifest (cosign signatures, attestations, SBOMs,
  OCI 1.1 referrers) and plans it into the same destination repository
  (`transship.plan.attachments`, on unless `ResolveOptions.attachments` is False);
* counts what a copy will move: unique blobs and bytes versus a naive image-by-image copy.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field, replace
from typing import TypeVar

from transship.digest import Digest
from transship.errors import HostDownError, TransshipError
from transship.imgpkg.bundle import (
    BUNDLE_LABEL,
)
from transship.imgpkg.locations import (
    imgpkg_tag,
)
from transship.imgpkg.walk import BundleWalk, locations_content
from transship.plan.attachments import find_attachments
from transship.plan.model import EntryKind, Gap, Plan, PlanEntry
from transship.plan.reader import (
    Content,
    EndpointFor,
    Resolved,
    ResolveOptions,
    SourceReader,
)
from transship.reference import Reference

log = logging.getLogger("transship.plan")

T = TypeVar("T")


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
            outcome.add(entry, locations_content(entry.locations))
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
                walk = BundleWalk(self.reader, entry.destination, outcome, self.options.keep_going)
                complete = await walk.walk(resolved)
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
                    "bundle; it is taken with every image it references"
                )
            return EntryKind.BUNDLE
        if hinted:
            outcome.warnings.append(
                f"{entry.source}: listed as an imgpkg bundle but has no {BUNDLE_LABEL} label; "
                "copying it as a plain image"
            )
        return EntryKind.IMAGE
