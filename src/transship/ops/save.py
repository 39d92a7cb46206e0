"""`save`: a plan's images into an OCI layout directory, or a tar of one cut into volumes.

A tar is built as `FILE.tar.partial/` (a layout directory, so a killed save resumes from the
blobs and index entries on disk), then checksummed (`transship/SHA256SUMS`), packed and
optionally split. With `--include-tool` the single-file transship travels inside it
(`transship.ops.selfcopy`). Nothing here prints: the caller renders the estimate and the outcome.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from transship.engine import CopyTask, TaskResult
from transship.errors import StorageError, UsageError
from transship.fsutil import write_atomic
from transship.layout import OCILayout, OCILayoutTar, write_tar
from transship.layout.index import TOOL_FILE
from transship.layout.volumes import split_archive
from transship.ops.archive import (
    ArchiveInfo,
    checksum_list,
    measure,
    open_archive,
    save_task,
    save_tasks,
    source_points,
)
from transship.ops.selfcopy import check_split_size, place_tool
from transship.ops.tasks import EndpointFor
from transship.plan.model import Plan, PlanEntry

PARTIAL_SUFFIX = ".partial"
#: the prefix of a list saved without --dest: load must be told where to go
PLACEHOLDER = "archive.local"
#: transship's own files listed in SHA256SUMS besides every blob
_OWN_FILES = ("oci-layout", "index.json", "transship/archive.json", "transship/plan.yaml")


@dataclass(frozen=True)
class SaveTarget:
    """Where a save writes: a layout directory, or `FILE.tar` (optionally in volumes)."""

    output: Path
    part_size: int | None = None
    since: Path | None = None  # an incremental save: blobs this archive holds are left out
    tool: Path | None = None  # the single-file transship to carry (`--include-tool`)

    @property
    def is_tar(self) -> bool:
        return self.output.suffix == ".tar"

    @property
    def layout_dir(self) -> Path:
        """The directory the engine writes: the output itself, or `FILE.tar.partial/`."""
        if self.is_tar:
            return self.output.with_name(self.output.name + PARTIAL_SUFFIX)
        return self.output

    def check(self, *, dry_run: bool) -> None:
        """Refuse what cannot work before any registry is asked."""
        if self.part_size and not self.is_tar:
            raise UsageError("--split-size needs -o FILE.tar")
        if self.tool is not None and self.part_size:
            check_split_size(self.tool, self.part_size)
        if self.is_tar and self.output.exists() and not self.layout_dir.exists() and not dry_run:
            raise UsageError(f"{self.output} exists; remove it or choose another name")


@dataclass(frozen=True)
class SaveEstimate:
    """What a save would write, and the free space where it would write it."""

    bytes: int
    blobs: int
    manifests: int
    free: int
    where: Path
    packing: bool  # a tar needs the space twice while it is packed

    @property
    def needed(self) -> int:
        return self.bytes * (2 if self.packing else 1)

    def require_space(self) -> None:
        if self.needed > self.free:
            raise StorageError(f"not enough free space at {self.where}")


@dataclass(frozen=True)
class Written:
    """What a finished save left behind."""

    path: Path
    blobs: int | None = None  # blobs packed into the tar (None for a directory)
    volumes: tuple[Path, ...] = ()


def archive_info(
    plan: Plan, prefix: str | None, target: SaveTarget, *, placeholder: bool = False
) -> ArchiveInfo:
    """`transship/archive.json` for this plan and target: names relative to `prefix` (an
    explicit --dest), else to the prefix the plan was made for. `placeholder`: `prefix` stands
    for "no destination known" (a list saved without --dest), so load will need --dest."""
    info = ArchiveInfo.for_plan(plan, prefix, placeholder=placeholder)
    if target.since is not None:
        info = replace(info, base=target.since.name)
    return info


def existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


async def estimate(
    plan: Plan, target: SaveTarget, source_for: EndpointFor
) -> SaveEstimate:
    """Bytes, blobs and manifests a save would write (reading manifests only), and free space."""
    base = open_archive(target.since) if target.since else None
    layout_dir = target.layout_dir
    try:
        existing = OCILayout(layout_dir, writable=False) if layout_dir.exists() else base
        if existing is not None and base is not None:
            existing.base = base
        size, blobs, manifests = await measure(source_points(plan, source_for), existing)
        size += target.tool.stat().st_size if target.tool else 0
    finally:
        if base is not None:
            await base.close()
    where = existing_parent(layout_dir)
    free = shutil.disk_usage(where).free
    return SaveEstimate(size, blobs, manifests, free, where, target.is_tar)


@dataclass
class SaveJob:
    """An open layout with the plan's tasks; `finish` seals it once the engine ran them."""

    plan: Plan
    info: ArchiveInfo
    target: SaveTarget
    layout: OCILayout
    base: OCILayout | OCILayoutTar | None
    tasks: list[list[CopyTask]] = field(default_factory=list)

    @classmethod
    def open(
        cls, plan: Plan, info: ArchiveInfo, target: SaveTarget, source_for: EndpointFor
    ) -> SaveJob:
        base = open_archive(target.since) if target.since else None
        layout = OCILayout(target.layout_dir, writable=True)
        layout.base = base
        job = cls(plan, info, target, layout, base)
        layout.write_extra("archive.json", info.to_json())
        layout.write_extra("plan.yaml", plan.to_yaml())
        job.tasks = save_tasks(plan, info, source_for, layout)
        return job

    def held_back(
        self, entries: Sequence[PlanEntry], source_for: EndpointFor
    ) -> list[TaskResult]:
        """Results for bundles that could not be expanded: failed, never saved thin."""
        return [
            TaskResult(
                save_task(entry, self.info, source_for, self.layout),
                "failed",
                error=UsageError(f"bundle {entry.source} could not be expanded"),
            )
            for entry in entries
        ]

    async def close(self) -> None:
        await self.layout.close()
        if self.base is not None:
            await self.base.close()

    async def finish(self) -> Written:
        """After a run without failures (and `close`): checksums, then pack and split a tar."""
        layout_dir = self.target.layout_dir
        place_tool(self.target.tool, layout_dir)  # None: drops one a resumed run left there
        own = [*_OWN_FILES, TOOL_FILE] if self.target.tool else list(_OWN_FILES)
        sums = checksum_list(layout_dir, own)
        write_atomic(layout_dir / "transship" / "SHA256SUMS", sums)
        if not self.target.is_tar:
            return Written(layout_dir)
        output = self.target.output
        blobs = await asyncio.to_thread(write_tar, layout_dir, output)
        shutil.rmtree(layout_dir)
        volumes: tuple[Path, ...] = ()
        if self.target.part_size:
            parts = await asyncio.to_thread(split_archive, output, self.target.part_size)
            volumes = tuple(parts)
        return Written(output, blobs, volumes)
