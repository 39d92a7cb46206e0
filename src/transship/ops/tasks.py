"""From a plan to copy tasks, in the order a destination must receive them.

Images and indexes first, bundles last: imgpkg and kapp-controller read a bundle's referenced
images from the bundle's repository, so a bundle tag must never exist before they do. A bundle's
ImageLocations record (generated in memory, `transship.imgpkg.locations`) comes after the
bundle: imgpkg trusts it without checking, so it must only appear once everything it vouches
for is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from transship.endpoint import Endpoint
from transship.engine import CopyTask
from transship.errors import UsageError
from transship.imgpkg.locations import image_locations_endpoint
from transship.manifest import Platform
from transship.plan.attachments import attachment_phases
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.reference import Reference

EndpointFor = Callable[[str], Endpoint]


def source_endpoint(entry: PlanEntry, source_for: EndpointFor) -> Endpoint:
    """Where an entry is read from: its registry, or memory for images transship generates."""
    if entry.kind == EntryKind.IMAGE_LOCATIONS:
        return image_locations_endpoint(entry.locations)
    return source_for(Reference.parse(entry.source).registry)


def source_identifier(entry: PlanEntry) -> str:
    """What the source is asked for: the resolved digest when the plan has one, else the tag."""
    if entry.source_digest:
        return str(entry.source_digest)
    return Reference.parse(entry.source).identifier


def task_for(
    entry: PlanEntry,
    source_for: EndpointFor,
    dest_for: EndpointFor,
    platforms: tuple[Platform, ...] = (),
) -> CopyTask:
    """One plan entry as an engine task; a resolved digest pins the source."""
    src = Reference.parse(entry.source)
    dest = Reference.parse_repository(entry.destination)
    return CopyTask(
        source=source_endpoint(entry, source_for),
        source_repository=src.repository,
        source_identifier=source_identifier(entry),
        dest=dest_for(dest.registry),
        dest_repository=dest.repository,
        dest_tags=entry.tags,
        platforms=platforms,
        source_reference=entry.source,
        size=entry.size,
    )


def phases(plan: Plan) -> list[list[PlanEntry]]:
    """Entries grouped so that each group may run only after the previous one finished:
    images, then bundles, then ImageLocations records, then attachments (signatures,
    attestations, referrers) after the manifests they are attached to."""
    later = (EntryKind.BUNDLE, EntryKind.IMAGE_LOCATIONS, EntryKind.ATTACHMENT)
    first = [e for e in plan.entries if e.kind not in later]
    bundles = [e for e in plan.entries if e.kind == EntryKind.BUNDLE]
    records = [e for e in plan.entries if e.kind == EntryKind.IMAGE_LOCATIONS]
    groups = (first, bundles, records, *attachment_phases(plan.entries))
    return [group for group in groups if group]


def copy_phases(
    plan: Plan,
    source_for: EndpointFor,
    dest_for: EndpointFor,
    platforms: tuple[Platform, ...] = (),
) -> list[list[CopyTask]]:
    """The plan as engine tasks, registry to registry, in its phases."""
    return [[task_for(e, source_for, dest_for, platforms) for e in group] for group in phases(plan)]


def without_attachments(plan: Plan) -> Plan:
    """The plan without its attachment entries (`--no-attachments` over a resolved plan)."""
    kept = tuple(e for e in plan.entries if e.kind != EntryKind.ATTACHMENT)
    # the prefix stays; unique_bytes becomes an estimate (attachments are small)
    return replace(plan, entries=kept, gaps=())


def single_entry(source: str, destination: str) -> PlanEntry:
    """`copy SOURCE DESTINATION` as a plan entry: the destination's tag, else the source's."""
    src = Reference.parse(source)
    dst = Reference.parse(destination)
    if dst.digest is not None:
        raise UsageError(f"destination {destination!r} must not carry a digest (it is kept)")
    tag = dst.tag or (src.tag if src.digest is None or src.tag else None)
    return PlanEntry.create(str(src), dst.name, tags=(tag,) if tag else ())
