"""From a plan to copy tasks, in the order a destination must receive them.

Images and indexes first, bundles last: imgpkg and kapp-controller read a bundle's referenced
images from the bundle's repository, so a bundle tag must never exist before they do. A bundle's
ImageLocations record (generated in memory, `transship.generated`) comes after the bundle: imgpkg
trusts it without checking, so it must only appear once everything it vouches for is there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from transship.endpoint import Endpoint, PushCheck
from transship.engine import CopyTask, TaskResult
from transship.errors import TransshipError
from transship.fsutil import write_atomic
from transship.generated import image_locations_endpoint
from transship.plan.attachments import attachment_phases
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.reference import Reference

EndpointFor = Callable[[str], Endpoint]


def source_endpoint(entry: PlanEntry, source_for: EndpointFor) -> Endpoint:
    """Where an entry is read from: its registry, or memory for images transship generates."""
    if entry.kind == EntryKind.IMAGE_LOCATIONS:
        return image_locations_endpoint(entry.locations)
    return source_for(Reference.parse(entry.source).registry)


def task_for(entry: PlanEntry, source_for: EndpointFor, dest_for: EndpointFor) -> CopyTask:
    """One plan entry as an engine task; a resolved digest pins the source."""
    src = Reference.parse(entry.source)
    dest = Reference.parse_repository(entry.destination)
    identifier = str(entry.source_digest) if entry.source_digest else src.identifier
    shown_tags = ",".join(entry.tags) if entry.tags else str(entry.source_digest or "")
    return CopyTask(
        source=source_endpoint(entry, source_for),
        source_repository=src.repository,
        source_identifier=identifier,
        dest=dest_for(dest.registry),
        dest_repository=dest.repository,
        dest_tags=entry.tags,
        label=f"{entry.source} -> {dest.name}:{shown_tags}",
        source_label=entry.source,
        dest_label=f"{dest.name}:{shown_tags}" if entry.tags else dest.name,
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


def write_images_lock(path: Path, results: Sequence[TaskResult]) -> None:
    """An imgpkg-style ImagesLock of the relocated references (by digest)."""
    images = []
    for result in results:
        if result.status == "failed" or result.digest is None:
            continue
        dest = (
            result.task.dest_label.rsplit(":", 1)[0]
            if result.task.dest_tags
            else (result.task.dest_label)
        )
        images.append(
            {
                "image": f"{dest}@{result.digest}",
                "annotations": {"kbld.carvel.dev/id": result.task.source_label},
            }
        )
    doc = {"apiVersion": "imgpkg.carvel.dev/v1alpha1", "kind": "ImagesLock", "images": images}
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))


async def preflight(task_phases: Sequence[Sequence[CopyTask]], parallel: int = 16) -> None:
    """Before moving bytes: can we push into every destination repository of the plan?

    Opens (and cancels) one upload per distinct registry repository. Every refusal is printed
    as its own line; the first one is raised, so the exit code says what kind it was.
    """
    targets: dict[tuple[int, str], tuple[PushCheck, str]] = {}
    for tasks in task_phases:
        for task in tasks:
            if isinstance(task.dest, PushCheck):
                targets.setdefault(
                    (id(task.dest), task.dest_repository), (task.dest, task.dest_repository)
                )
    limit = asyncio.Semaphore(parallel)

    async def check(registry: PushCheck, repository: str) -> TransshipError | None:
        async with limit:
            try:
                await registry.check_push(repository)
            except TransshipError as exc:
                return exc
            return None

    found = await asyncio.gather(*(check(r, repo) for r, repo in targets.values()))
    problems = [p for p in found if p is not None]
    for problem in problems:
        print(f"transship: preflight: {problem}", file=sys.stderr)
    if problems:
        first = problems[0]
        first.message = (
            f"preflight: {len(problems)} of {len(targets)} destination repositories refuse a "
            f"push; first: {first.message}"
        )
        first.args = (first.message,)
        raise first
