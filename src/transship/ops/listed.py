"""Resolving an image list or old script for `copy` and `save`, without stopping at one image.

`transship plan` stops at the first image it cannot read; a copy of a list should not. Here an
entry that could not be resolved is copied as listed (the engine retries and reports it), and a
bundle that could not be expanded is held back, never copied thin.
"""

from __future__ import annotations

from dataclasses import dataclass

from transship.ops.listcache import ListCache
from transship.ops.tasks import EndpointFor
from transship.plan.attachments import without_attachments_of
from transship.plan.model import EntryKind, Gap, Plan, PlanEntry
from transship.plan.reader import ResolveOptions
from transship.plan.resolve import resolve_plan


@dataclass(frozen=True)
class ListedResolution:
    """What to copy, what was held back, and what the caller should tell people."""

    plan: Plan
    held_back: tuple[PlanEntry, ...]  # bundles that could not be expanded: counted as failed
    warnings: tuple[str, ...]
    not_copied: tuple[Gap, ...]  # found while resolving (not listed), but unreadable


async def resolve_listed(
    plan: Plan,
    source_for: EndpointFor,
    parallel: int,
    *,
    attachments: bool,
    cache: ListCache | None = None,
) -> ListedResolution:
    """Resolve a list or script as `transship plan` would, keeping going past failures.

    With a `cache`, a rerun of the same list reuses the last resolution while none of the
    tags it depends on has moved (`ops.listcache`); a resolution with gaps is never kept.
    """
    if cache is not None:
        reused = await cache.load(plan, source_for, parallel, attachments=attachments)
        if reused is not None:
            return ListedResolution(reused.plan, (), reused.warnings, ())
    resolution = await resolve_plan(
        plan,
        source_for,
        ResolveOptions(parallel=parallel, keep_going=True, attachments=attachments),
    )
    resolved = resolution.plan
    present = {e.source for e in resolved.entries}
    listed = {e.source: e for e in plan.entries}
    retry = [listed[g.source] for g in resolved.gaps if g.source in listed]
    retry = [e for e in retry if e.source not in present]
    not_copied = tuple(gap for gap in resolved.gaps if gap.source not in listed)
    held_back = tuple(
        e for e in resolved.entries if e.kind == EntryKind.BUNDLE and e.expanded is False
    )
    held = {id(e) for e in held_back}  # by identity: `in held_back` compared every field
    kept = without_attachments_of((e for e in resolved.entries if id(e) not in held), held_back)
    result = ListedResolution(
        Plan(
            kept + tuple(retry),
            resolved.sources,
            destination_prefix=resolved.destination_prefix,
            unique_bytes=resolved.unique_bytes,  # an estimate if some were held back
        ),
        held_back,
        tuple(resolution.warnings),
        not_copied,
    )
    if cache is not None and not resolved.gaps and not held_back:
        cache.store(plan, result.plan, result.warnings, attachments=attachments)
    return result
