"""`save`: a plan's images into an OCI layout directory, or a tar of one cut into volumes.

A tar is written in place (`transship.layout.tarsink`: `FILE.tar.partial` or its volumes, with
a journal beside it, so a killed save resumes from the blobs already in it and the archive
needs its own size on disk, not twice that), then checksummed (`transship/SHA256SUMS`), sealed
and renamed. With `--include-tool` the single-file transship travels inside it, first
(`transship.ops.selfcopy`). Nothing here prints: the caller renders the estimate and outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from transship.engine import CopyTask, TaskResult
from transship.errors import StorageError, UsageError
from transship.fsutil import file_sha256, fsync_dir, write_atomic
from transship.layout import OCILayout, OCILayoutTar
from transship.layout.directory import empty_but_for_a_save
from transship.layout.index import EXTRA_DIR, INDEX_FILE, LAYOUT_FILE, TOOL_FILE, UNFINISHED
from transship.layout.reader import LayoutReader
from transship.layout.tarsink import (
    TarSink,
    is_sealed,
    journal_path,
    partial_path,
    read_journal_blobs,
)
from transship.layout.volumes import PARTS_SUFFIX
from transship.memory import MemoryEndpoint
from transship.ops.archive import (
    UNFINISHED_TEXT,
    ArchiveInfo,
    archive_tags,
    checksum_list,
    close_chain,
    measure,
    open_base_chain,
    relative_repository,
    save_task,
    save_tasks,
    source_points,
)
from transship.ops.selfcopy import check_split_size, place_tool
from transship.ops.tasks import EndpointFor, phases
from transship.plan.model import Plan, PlanEntry

log = logging.getLogger(__name__)

#: the prefix of a list saved without --dest: load must be told where to go
PLACEHOLDER = "archive.local"
#: transship's own files listed in SHA256SUMS besides every blob
_OWN_FILES = ("oci-layout", "index.json", "transship/archive.json", "transship/plan.yaml")


#: the smallest `--split-size`: below it a typo (`10` for `10G`) makes thousands of files
MIN_PART_SIZE = 64 * 1024


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
    def partial(self) -> Path:
        """Where the output grows: the directory itself, or `FILE.tar.partial` (its volumes
        `FILE.tar.partial.001`, …), beside the journal a resumed run reads."""
        return partial_path(self.output) if self.is_tar else self.output

    @property
    def sealed(self) -> bool:
        """A tar an earlier run completed and was stopped while renaming (`SaveJob.sealed`)."""
        return self.is_tar and is_sealed(self.output)

    @property
    def unfinished_marker(self) -> Path:
        """A directory's `transship/INCOMPLETE`, there from a save's start to its finish."""
        return self.output / EXTRA_DIR / UNFINISHED

    @property
    def parts_file(self) -> Path:
        """`FILE.tar.parts`: the volume list of a tar saved in volumes."""
        return self.output.with_name(self.output.name + PARTS_SUFFIX)

    @property
    def finished(self) -> Path | None:
        """A finished save at the output: a layout directory without `transship/INCOMPLETE`,
        `FILE.tar` or `FILE.tar.parts` with no journal beside it (`transship.ops.finished`
        tells whether it holds what this run would save); None when there is none, or an
        unfinished one this run resumes."""
        if not self.is_tar:
            layout = any((self.output / name).exists() for name in (LAYOUT_FILE, INDEX_FILE))
            return self.output if layout and not self.unfinished_marker.exists() else None
        if journal_path(self.output).exists():
            return None
        for done in (self.output, self.parts_file):
            if done.exists():
                return done
        return None

    def check(self, *, dry_run: bool) -> None:
        """Refuse what cannot work before any registry is asked. A finished archive at the
        output is not refused here: a rerun of the same save is told so once its list is
        resolved, another save refused then (`transship.ops.finished`); an unfinished one is
        resumed."""
        if self.part_size and not self.is_tar:
            raise UsageError("--split-size needs -o FILE.tar")
        if self.part_size and self.part_size < MIN_PART_SIZE:  # `10` meant 10G: 20,000 files
            raise UsageError(
                f"--split-size {self.part_size} bytes is too small: volumes are cut for "
                f"removable media, give at least {MIN_PART_SIZE // 1024}K (e.g. 4G or 700M)"
            )
        if self.tool is not None and self.part_size:
            check_split_size(self.tool, self.part_size)
        if dry_run or not self.is_tar or journal_path(self.output).exists():
            return
        if self.output.exists() and self.parts_file.exists():  # two archives: which one?
            raise UsageError(f"{self.output} exists; remove it or choose another name")


@dataclass(frozen=True)
class SaveEstimate:
    """What a save would write, and the free space where it would write it."""

    bytes: int
    blobs: int
    manifests: int
    free: int
    where: Path

    def require_space(self) -> None:
        if self.bytes > self.free:
            raise StorageError(f"not enough free space at {self.where}")


@dataclass(frozen=True)
class Written:
    """What a finished save left behind."""

    path: Path
    blobs: int | None = None  # blobs in the tar, manifests included (None for a directory)
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


def planned_tasks(
    plan: Plan, info: ArchiveInfo, target: SaveTarget, source_for: EndpointFor
) -> list[list[CopyTask]]:
    """The save's tasks as they will read before the archive is opened (`SaveJob.open`), into
    a stand-in labelled as the archive will be: what a run stopped while it resolves its list
    names as not started."""
    label = f"oci-archive:{target.output}" if target.is_tar else f"oci:{target.output}"
    stand_in = MemoryEndpoint(label=label)
    return [[save_task(e, info, source_for, stand_in) for e in group] for group in phases(plan)]


def existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


async def estimate(plan: Plan, target: SaveTarget, source_for: EndpointFor) -> SaveEstimate:
    """Bytes, blobs and manifests a save would write (reading manifests only), and free space."""
    base = await open_base_chain(target.since) if target.since else None
    try:
        own: LayoutReader | None = None  # what an earlier run of this save wrote
        if target.is_tar:
            own = read_journal_blobs(target.output)
        elif target.output.exists():
            own = OCILayout(target.output, writable=False)
        size, blobs, manifests = await measure(source_points(plan, source_for), own, base)
        size += target.tool.stat().st_size if target.tool else 0
    finally:
        await close_chain(base)
    where = existing_parent(target.partial)
    free = shutil.disk_usage(where).free
    return SaveEstimate(size, blobs, manifests, free, where)


@dataclass
class SaveJob:
    """An open layout with the plan's tasks; `finish` seals it once the engine ran them."""

    plan: Plan
    info: ArchiveInfo
    target: SaveTarget
    layout: OCILayout | TarSink
    base: OCILayout | OCILayoutTar | None
    tasks: list[list[CopyTask]] = field(default_factory=list)
    #: a layout directory finished by `close(finished=True)`, under its lock
    _written: Written | None = field(default=None, init=False, repr=False)

    @classmethod
    async def open(
        cls, plan: Plan, info: ArchiveInfo, target: SaveTarget, source_for: EndpointFor
    ) -> SaveJob:
        base = await open_base_chain(target.since) if target.since else None
        layout: OCILayout | TarSink
        if target.is_tar:
            layout = TarSink(target.output, part_size=target.part_size, tool=target.tool)
        else:
            mark_unfinished(target.output)
            layout = OCILayout(target.output, writable=True)
        layout.base = base
        job = cls(plan, info, target, layout, base)
        layout.write_extra("archive.json", info.to_json())
        layout.write_extra("plan.yaml", plan.to_yaml())
        job.tasks = save_tasks(plan, info, source_for, layout)
        if not job.sealed:
            job._forget_unplanned()
        return job

    def _forget_unplanned(self) -> None:
        """A save resumed with another plan (another `--shard`, a changed list) must not
        carry what the earlier run wrote for names this plan does not list: the archive's
        index would name images its `plan.yaml` does not, and `load` would push them."""
        keep = {
            (relative_repository(entry.destination, self.info.prefix), tag)
            for entry in self.plan.entries
            for tag in archive_tags(entry)
        }
        dropped = self.layout.retain_tags(keep)
        if dropped:
            names = ", ".join(f"{repo}:{tag}" for repo, tag in dropped[:3])
            more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
            log.warning(
                "%s: an earlier run of this save wrote %s%s, which this plan does not list; "
                "left out of the archive (their blobs stay in it: remove %s to save afresh)",
                self.target.output,
                names,
                more,
                self.target.partial.name + "*" if self.target.is_tar else "it",
            )

    def held_back(self, entries: Sequence[PlanEntry], source_for: EndpointFor) -> list[TaskResult]:
        """Results for bundles that could not be expanded: failed, never saved thin."""
        return [
            TaskResult(
                save_task(entry, self.info, source_for, self.layout),
                "failed",
                error=UsageError(f"bundle {entry.source} could not be expanded"),
            )
            for entry in entries
        ]

    @property
    def sealed(self) -> bool:
        """An earlier run completed the tar and was stopped while renaming it into place:
        `finish` publishes it, nothing is fetched (`check_sealed` first)."""
        return isinstance(self.layout, TarSink) and self.layout.sealed

    def check_sealed(self) -> None:
        """Refuse to publish a sealed tar that lacks an image this plan wants (the plan
        changed after the run that sealed it was stopped)."""
        held_by = {(repo, tag): desc for repo, tag, desc in self.layout.entries()}
        for entry in self.plan.entries:
            repository = relative_repository(entry.destination, self.info.prefix)
            for tag in archive_tags(entry):
                held = held_by.get((repository, tag))
                if held is None or (
                    entry.source_digest is not None and held.digest != entry.source_digest
                ):
                    partial = self.target.partial.name
                    raise UsageError(
                        f"{self.target.output}: an earlier run of this save already completed "
                        f"it without {repository}:{tag} as this plan wants it; run that save "
                        f"again unchanged, or remove {partial}* and its journal to start over"
                    )

    async def close(self, *, finished: bool = False) -> None:
        """Release the layout; `finished` (the run had no failures, `finish` comes next): a
        layout directory is finished here, while its lock is still held (a save that takes
        the lock next must find its own INCOMPLETE marker and partial blobs untouched):
        index.json written, the partial blobs dropped, then the tool, SHA256SUMS, and the
        INCOMPLETE marker removed last."""
        try:
            if finished and isinstance(self.layout, OCILayout):
                await self.layout.flush()
                self.layout.drop_partials()
                self._written = self._finish_directory()
        finally:
            await self.layout.close()
            await close_chain(self.base)

    async def finish(self) -> Written:
        """After a run without failures (and `close(finished=True)`): a tar's checksums, then
        its seal (which locks it again); a layout directory was finished by `close`."""
        if isinstance(self.layout, TarSink):
            sink = self.layout
            sums = "" if sink.sealed else sink_checksums(sink, self.target.tool)
            volumes = await asyncio.to_thread(sink.seal, {"SHA256SUMS": sums.encode()})
            return Written(self.target.output, sink.blob_count(), volumes)
        if self._written is None:
            raise RuntimeError("finish() of a layout directory not closed as finished")
        return self._written

    def _finish_directory(self) -> Written:
        layout_dir = self.target.output
        place_tool(self.target.tool, layout_dir)  # None: drops one a resumed run left there
        own = [*_OWN_FILES, TOOL_FILE] if self.target.tool else list(_OWN_FILES)
        sums = checksum_list(layout_dir, own)
        write_atomic(layout_dir / EXTRA_DIR / "SHA256SUMS", sums)
        self.target.unfinished_marker.unlink(missing_ok=True)  # finished: last, and durable
        fsync_dir(self.target.unfinished_marker.parent)
        return Written(layout_dir)


def mark_unfinished(layout_dir: Path) -> None:
    """`transship/INCOMPLETE` before the layout's own files: a kill at any moment leaves a
    directory that cannot pass for a finished save. Nothing is written into a directory that
    is neither a layout nor empty (opening it as a layout refuses it next)."""
    foreign = (
        layout_dir.is_dir()
        and not (layout_dir / LAYOUT_FILE).exists()
        and not empty_but_for_a_save(layout_dir)
    )
    if not foreign:
        write_atomic(layout_dir / EXTRA_DIR / UNFINISHED, UNFINISHED_TEXT)


def sink_checksums(sink: TarSink, tool: Path | None) -> str:
    """`SHA256SUMS` of a tar written in place: the same lines `checksum_list` gives a layout
    directory, from the bytes the tar will hold (blobs are named by their hash)."""
    own = {**sink.own_files(), **{f"transship/{k}": v for k, v in sink.extras().items()}}
    lines = [f"{hashlib.sha256(own[name]).hexdigest()}  {name}" for name in _OWN_FILES]
    if tool is not None:
        lines.append(f"{file_sha256(tool)}  {TOOL_FILE}")
    for digest in sink.blob_digests():
        if digest.algorithm == "sha256":
            lines.append(f"{digest.hex}  blobs/sha256/{digest.hex}")
    return "\n".join(lines) + "\n"
