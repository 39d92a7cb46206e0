"""`load`: everything an archive holds, pushed where its plan said (or under --dest), bundles
last."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transship.digest import Digest
from transship.engine import CopyTask
from transship.errors import IncompleteError, TransshipError
from transship.layout import OCILayout, OCILayoutTar
from transship.layout.reader import LayoutReader
from transship.ops.archive import (
    MAX_BASE_CHAIN,
    PREFIX_COMMON,
    PREFIX_LEGACY,
    ArchiveInfo,
    base_beside,
    close_chain,
    completeness_problems,
    link_bases,
    load_tasks,
    open_archive,
    with_sizes,
)
from transship.ops.tasks import EndpointFor

log = logging.getLogger("transship.load")


@dataclass
class HintBases:
    """The bases `missing_blob_hint` opened beside an increment, by path, kept open (each
    base's reach walked once) until `close`. Once closed, a base opened for a late hint is
    closed again before that hint returns."""

    opened: dict[Path, OCILayout | OCILayoutTar] = field(default_factory=dict)
    closed: bool = False

    async def close(self) -> None:
        """Close every base, each even when closing another raised (that error is raised)."""
        self.closed = True
        bases, self.opened = list(self.opened.values()), {}
        async with contextlib.AsyncExitStack() as stack:
            for base in bases:
                stack.push_async_callback(base.close)


@dataclass
class LoadJob:
    """An archive opened for reading, with what `transship/archive.json` says about it."""

    layout: OCILayout | OCILayoutTar
    info: ArchiveInfo
    path: Path
    #: the bases `missing_blob_hint` opened beside an increment, kept (with what each holds,
    #: `LayoutReader.held`) until `close`
    hint_bases: HintBases = field(default_factory=HintBases)

    @classmethod
    def open(cls, archive: Path, *, finished: bool = False, repair: bool = False) -> LoadJob:
        """`finished`: refuse (exit 9) an archive that is not a finished save (`unfinished`)."""
        layout = open_archive(archive)
        try:
            info = ArchiveInfo.read(layout)
            job = cls(layout, info, archive)
            if finished:
                job.require_finished()
        except TransshipError:  # e.g. an incompatible format: refused, the archive closed
            asyncio.run(layout.close())
            raise
        layout.base_name = info.base
        if info.base:
            hints = job.hint_bases  # one for the job's life: `close` closes what it opened
            layout.missing_blob_hint = lambda digest: missing_blob_hint(
                archive, info.base, digest, repair, hints, layout.base
            )
        return job

    def unfinished(self) -> list[str]:
        """Why this is not a finished save (marked unfinished, or lacking images its plan
        lists); empty when it is, or when it is a plain layout with no plan to check against."""
        return completeness_problems(self.layout, self.info)

    def require_finished(self) -> None:
        """Refuse to load half an archive as if it were all of it (exit 9)."""
        problems = self.unfinished()
        if problems:
            raise IncompleteError("; ".join(problems))

    def prefix_warning(self, prefix: str | None) -> str | None:
        """Why `--dest` may not replace what the user expects, for archives that do not record
        the prefix their plan was made for; None when there is nothing to say."""
        if not prefix or self.info.prefix_origin not in (PREFIX_COMMON, PREFIX_LEGACY):
            return None
        return (
            f"{self.layout.label} does not record the destination prefix its plan was made "
            f"for (an older transship or plan wrote it): its names are relative to "
            f"{self.info.prefix!r}, the longest prefix its destinations share, and --dest "
            "replaces that; see `transship archive list`"
        )

    def planned(self, prefix: str | None, dest_for: EndpointFor) -> list[list[CopyTask]]:
        """Every named manifest as a task to `prefix` (or the planned prefix)/repository, from
        `index.json` alone (no manifest is read): what the run is to copy, known at once."""
        return load_tasks(self.layout, self.info, prefix, dest_for)

    async def sized(self, planned: list[list[CopyTask]]) -> tuple[list[list[CopyTask]], int]:
        """`planned`, each task with the bytes of its manifest graph (read from the archive's
        manifests), and the archive's unique bytes (for progress)."""
        return await with_sizes(self.layout, planned)

    async def read_bases(self) -> None:
        """`load --repair` of an increment: link the bases lying beside it (the chain `save
        --since` and `serve` follow, `ops.archive.link_bases`), so a blob the destination lost
        that the increment left out to a base is read from that base. Where a base is not
        there the chain ends, and such a blob is reported (`missing_blob_hint`). A base that
        is there but cannot be read from (unfinished, damaged) ends the chain too, with a
        warning: the repair may need nothing from it."""
        if not self.info.base:
            return
        try:
            await link_bases(self.layout, self.path, "load --repair")
        except TransshipError as error:  # the bases linked so far stay linked
            last: LayoutReader = self.layout
            while last.base is not None:
                last = last.base
            log.warning(
                "load --repair %s: not reading from the base %s beside it (%s); a blob the "
                "destination lost that only it holds is reported as missing",
                self.path, ArchiveInfo.read(last).base, error,
            )  # fmt: skip

    async def close(self) -> None:
        try:
            await close_chain(self.layout)
        finally:
            await self.hint_bases.close()


async def missing_blob_hint(
    archive: Path,
    base: str | None,
    digest: Digest,
    repair: bool,
    opened: HintBases | None = None,
    linked: LayoutReader | None = None,
) -> str:
    """Why an increment lacks `digest` and what to run: the chain of bases its archive.json
    files record (followed beside it, as `serve` and `save --since` do) and the one that holds
    the blob: one whose named manifests reach it (`LayoutReader.holds` of a base opened
    `reach_only`), as loading that base pushes only those; a blob it stores unnamed is not
    held. A repair (`--repair`: the images were loaded, the registry lost content) names
    `load BASE --repair` for that base; a plain load, loading the bases first, oldest first.
    `opened`: the bases opened by earlier calls, by path, kept open (each base's reach walked
    once) for the caller to close; None: each is closed before returning. `linked`: the chain
    `load --repair` linked below the increment already (`LoadJob.read_bases`): those bases are
    asked, not opened again."""
    chain: list[str] = []
    holder: str | None = None
    path, name = archive, base
    for _ in range(MAX_BASE_CHAIN):
        if not name or name in chain:
            break
        chain.append(name)
        beside = base_beside(path, name)
        if beside is None:
            break
        layout: LayoutReader
        ours: OCILayout | OCILayoutTar | None = None  # opened here, closed here
        if linked is not None:  # opened from `beside` by `link_bases`, closed with the chain
            layout, linked = linked, linked.base
        else:
            try:
                layout, close = await _open_hint_base(beside, opened)
            except TransshipError:
                break
            ours = layout if close else None
        try:
            stored = layout.blob_extents(digest) is not None
            if holder is None and stored and await layout.holds("", digest):
                holder = name
            name = ArchiveInfo.read(layout).base
        finally:
            if ours is not None:
                await ours.close()
        path = beside
    recorded = chain[0] + "".join(f" (saved on {n})" for n in chain[1:])
    said = f"this archive is incremental on top of {recorded}"
    oldest_first = ", then ".join(reversed(chain))
    if repair:
        if holder is not None:
            return f"{said}, and {holder} holds it: run `transship load {holder} --repair`"
        return (
            f"{said}, and none of them beside {archive.name} holds it: run `transship load "
            f"BASE --repair` with each of them, oldest first ({oldest_first})"
        )
    where = f" ({holder} holds it)" if holder is not None else ""
    return (
        f"{said}{where}; load those archives into the registry first, oldest first ({oldest_first})"
    )


async def _open_hint_base(
    path: Path, opened: HintBases | None
) -> tuple[OCILayout | OCILayoutTar, bool]:
    """The base at `path`, as loading it pushes it (`reach_only`), and whether the caller is
    to close it: from `opened` if an earlier call opened it, else opened now (and kept in
    `opened` while it is not closed)."""
    kept = opened.opened.get(path) if opened is not None else None
    if kept is not None:
        return kept, False
    layout = await _open_in_thread(path)
    layout.reach_only = True
    if opened is None or opened.closed:
        return layout, True
    kept = opened.opened.setdefault(path, layout)  # a concurrent call may have opened it meanwhile
    if kept is not layout:
        await layout.close()
    return kept, False


async def _open_in_thread(path: Path) -> OCILayout | OCILayoutTar:
    """`open_archive` in a thread; cancelled meanwhile, the archive the thread still opens is
    closed (after the thread ends: it cannot be stopped) before the cancellation goes on."""
    opening = asyncio.ensure_future(asyncio.to_thread(open_archive, path))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            layout = await opening
            await layout.close()
        raise
