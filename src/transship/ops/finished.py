"""A save rerun onto the archive it already finished: nothing to do, or refused saying why.

`read_finished` reads the archive at the output cheaply — `archive.json`, the carried
`plan.yaml`, `SHA256SUMS`, the index and every manifest it names, each blob's presence and size
(not its hash: `archive verify` does that) — and refuses, before any registry is asked, one
that is damaged, unfinished, not a transship save, or saved with other options (another
`--since` base, `--split-size`, `--include-tool`). Once the run's list is resolved, `same_save`
compares the carried plan's entries and the digests the index holds with what this run would
save: equal, the archive is left as it is; otherwise one line says what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transship.digest import Digest
from transship.errors import (
    IncompatibleArchiveError,
    IntegrityError,
    NotFoundError,
    TransshipError,
    UsageError,
)
from transship.fsutil import file_sha256
from transship.layout import OCILayout, OCILayoutTar
from transship.layout.index import INDEX_FILE, LAYOUT_FILE, TOOL_FILE
from transship.layout.reader import Reached
from transship.layout.volumes import PARTS_SUFFIX
from transship.ops.archive import (
    ArchiveInfo,
    archive_tags,
    close_chain,
    completeness_problems,
    open_archive,
    open_base_chain,
    relative_repository,
)
from transship.ops.save import SaveTarget
from transship.ops.selfcopy import carried_tool
from transship.ops.tasks import EndpointFor, source_endpoint, source_identifier
from transship.plan.model import Plan, PlanEntry
from transship.reference import Reference

_REMEDY = "remove it or choose another name"
#: transship's own files whose SHA256SUMS line is checked against what the archive holds
#: (besides `oci-layout` and `index.json`)
_CHECKED_EXTRAS = ("archive.json", "plan.yaml")


@dataclass(frozen=True)
class FinishedSave:
    """What a finished archive at a save's output holds, read and checked (`read_finished`)."""

    path: Path
    info: ArchiveInfo
    plan: Plan
    held: dict[tuple[str, str], Digest]  # (repository, tag) → the manifest index.json names


def _refuse(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} {why}; {_REMEDY}")


def _damaged(path: Path, why: str) -> IntegrityError:
    """A damaged archive at the output is exit code 7, as anywhere else."""
    return IntegrityError(f"{path} {why}; {_REMEDY}")


async def read_finished(target: SaveTarget) -> FinishedSave:
    """The finished archive at `target`'s output (`SaveTarget.finished`), checked cheaply;
    a UsageError naming why when it cannot be the same save whatever the list resolves to."""
    path = target.finished
    assert path is not None, "read_finished needs a finished archive at the output"
    _check_options(path, target)
    try:
        layout = open_archive(path)
    except IntegrityError as exc:  # cut short, a header overwritten: never taken for the save
        raise _damaged(path, f"exists but is damaged ({exc})") from None
    except (IncompatibleArchiveError, UsageError):
        raise
    except TransshipError as exc:
        raise _refuse(path, f"exists but cannot be read as a finished save ({exc})") from None
    try:
        if target.since is not None:  # its own errors are its own (checked before, as a base)
            layout.base = await open_base_chain(target.since)
    except BaseException:
        await close_chain(layout)
        raise
    try:
        return await _read(path, layout, target)
    except (IncompatibleArchiveError, IntegrityError, UsageError):
        raise
    except TransshipError as exc:
        raise _refuse(path, f"exists but cannot be read as a finished save ({exc})") from None
    finally:
        await close_chain(layout)


def _check_options(path: Path, target: SaveTarget) -> None:
    """The archive's form against this run's: one tar, or volumes of the same size."""
    split = path.name.endswith(PARTS_SUFFIX)
    if not target.is_tar or split == bool(target.part_size):
        if split and target.part_size:
            sizes = _part_sizes(path)
            same = bool(sizes) and all(s == target.part_size for s in sizes[:-1])
            if not same or sizes[-1] > target.part_size:
                raise _refuse(
                    path,
                    f"holds this save cut into volumes of {sizes[0] if sizes else 0} bytes, not "
                    f"the {target.part_size} of --split-size",
                )
        return
    if split:
        raise _refuse(path, "holds a save cut into volumes (--split-size); this run writes one tar")
    raise _refuse(path, "holds a save in one tar; this run cuts it into volumes (--split-size)")


def _part_sizes(parts_file: Path) -> list[int]:
    try:
        doc = json.loads(parts_file.read_text())
        return [int(part["size"]) for part in doc["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise _refuse(parts_file, "exists but is not a volume list") from None


async def _read(path: Path, layout: OCILayout | OCILayoutTar, target: SaveTarget) -> FinishedSave:
    info = ArchiveInfo.read(layout)
    if not info.recorded:
        raise _refuse(path, "holds a layout transship save did not write (no archive.json)")
    if info.base != (target.since.name if target.since else None):
        was = f"on top of {info.base}" if info.base else "whole (no --since)"
        now = f"--since {target.since.name}" if target.since else "no --since"
        raise _refuse(path, f"holds a save made {was}; this run: {now}")
    problems = completeness_problems(layout, info)
    if problems:
        raise _refuse(path, f"holds an unfinished save ({problems[0]})")
    raw_plan = layout.read_extra("plan.yaml")
    raw_sums = layout.read_extra("SHA256SUMS")
    if raw_plan is None or raw_sums is None:
        raise _refuse(path, "holds an unfinished save (no transship/plan.yaml or SHA256SUMS)")
    sums = _sums(raw_sums)
    own = {
        **layout.opened_files,
        **{f"transship/{name}": layout.read_extra(name) or b"" for name in _CHECKED_EXTRAS},
    }
    for name in (LAYOUT_FILE, INDEX_FILE, *(f"transship/{n}" for n in _CHECKED_EXTRAS)):
        if sums.get(name) != hashlib.sha256(own.get(name, b"")).hexdigest():
            raise _damaged(path, f"is damaged ({name} does not match transship/SHA256SUMS)")
    carried = sums.get(TOOL_FILE)
    if carried is not None:  # listed: the file must be there, of the sha256 listed
        _note, tool_problems, _damaged_tool = carried_tool(layout)
        if tool_problems:
            raise _damaged(path, f"is damaged ({tool_problems[0]})")
    if carried is None and target.tool is not None:
        raise _refuse(path, "carries no transship; this run adds it (--include-tool)")
    if carried is not None and target.tool is None:
        raise _refuse(path, "carries transship (--include-tool); this run does not")
    if carried is not None and target.tool is not None and file_sha256(target.tool) != carried:
        raise _refuse(path, "carries another transship build than this one (--include-tool)")
    held = {(repository, tag): desc.digest for repository, tag, desc in layout.entries()}
    await _check_graph(path, layout, info)
    plan = Plan.from_yaml(raw_plan.decode(errors="replace"), f"{layout.label}:transship/plan.yaml")
    return FinishedSave(path, info, plan, held)


def _sums(raw: bytes) -> dict[str, str]:
    out = {}
    for line in raw.decode(errors="replace").splitlines():
        digest, _sep, name = line.partition("  ")
        if name:
            out[name] = digest
    return out


async def _check_graph(path: Path, layout: OCILayout | OCILayoutTar, info: ArchiveInfo) -> None:
    """Every manifest the index names and those below (verified: they are small) and every
    blob there, of the size it says; a blob an increment left out to its base (`info.base`)
    must be held there still."""
    async with contextlib.aclosing(layout.walk_named()) as walk:  # left at the first problem
        async for reached in walk:
            await _check_reached(path, layout, info, reached)


async def _check_reached(
    path: Path, layout: OCILayout | OCILayoutTar, info: ArchiveInfo, reached: Reached
) -> None:
    """One manifest the walk reached: read, and every blob it names there (or in the base)."""
    repository, tag, manifest = reached.repository, reached.tag, reached.manifest
    if manifest is None:
        if isinstance(reached.error, NotFoundError):  # named by the index or by an index
            raise _damaged(
                path,
                f"is damaged: manifest {reached.digest.short} of {repository}:{tag} is missing",
            )
        if isinstance(reached.error, IntegrityError):
            raise _damaged(path, f"is damaged ({reached.error})")
        assert reached.error is not None
        raise reached.error
    for blob in manifest.blobs():
        if not blob.urls and not await layout.has_blob(repository, blob.digest, blob.size):
            if layout.base is not None and layout.blob_extents(blob.digest) is None:
                base = info.base or "its base"  # left out to the base, not there now
                raise UsageError(
                    f"{path} is intact but its base {base} no longer holds blob "
                    f"{blob.digest.short} of {repository}:{tag} (was {base} re-saved?); "
                    "restore the base it was saved on"
                )
            raise _damaged(
                path,
                f"is damaged: blob {blob.digest.short} of {repository}:{tag} is missing or "
                f"not {blob.size} bytes",
            )


def _comparable(entry: PlanEntry) -> dict[str, Any]:
    """What makes two entries the same save, but for the digest (`same_save` compares it with
    the index's): all but where the list named it and its size."""
    out = entry.to_dict()
    for key in ("origins", "size", "sourceDigest"):
        out.pop(key, None)
    return out


def _names(entry: PlanEntry, prefix: str) -> Iterator[tuple[str, str]]:
    repository = relative_repository(entry.destination, prefix)
    for tag in archive_tags(entry):
        yield repository, tag


async def same_save(
    finished: FinishedSave,
    plan: Plan,
    info: ArchiveInfo,
    source_for: EndpointFor,
    held_back: Sequence[PlanEntry] = (),
    parallel: int = 16,
) -> int:
    """How many images `finished` holds, when it holds exactly what this run (its list
    resolved: `plan`, `info`) would save; otherwise a UsageError saying what differs. An
    entry without a digest (a plan file's) is asked of its source, as the save would (HEAD,
    `parallel` at once).
    `held_back`: bundles this run could not expand (`ops.listed`); what the archive holds in
    their repositories is not compared (the caller fails them, saying so)."""
    path = finished.path
    unexpanded = {e.destination for e in held_back}
    if (finished.info.prefix, finished.info.prefix_origin) != (info.prefix, info.prefix_origin):
        raise _refuse(
            path,
            f"holds images named below {finished.info.prefix or '(none)'}; this run names "
            f"them below {info.prefix or '(none)'}",
        )
    carried = {(e.destination, archive_tags(e)): e for e in finished.plan.entries}
    differ: dict[str, str] = {}  # the image's first name → what differs
    wanted: set[tuple[str, str]] = set()
    rows = []
    for entry in plan.entries:
        names = list(_names(entry, info.prefix))
        wanted.update(names)
        rows.append((entry, names, carried.pop((entry.destination, archive_tags(entry)), None)))
    asked = await _source_digests(
        [e for e, _, was in rows if was is not None and _comparable(was) == _comparable(e)],
        source_for,
        parallel,
    )
    for entry, names, was in rows:
        first = f"{names[0][0]}:{names[0][1]}"
        if was is None or _comparable(was) != _comparable(entry):
            differ[first] = f"{first} is not in its plan as this run lists it"
            continue
        digest = entry.source_digest or asked[id(entry)]
        for name in names:
            held = finished.held.get(name)
            if held != digest or was.source_digest not in (None, digest):
                there = held.short if held else "nothing"
                differ[first] = f"{first}: it holds {there}, the source now {digest.short}"
                break
    for entry in carried.values():  # in the archive's plan, not in this run's
        names = list(_names(entry, finished.info.prefix))
        if entry.destination in unexpanded:  # a held-back bundle, its images, their locations
            wanted.update(names)
            continue
        wanted.update(names)
        first = f"{names[0][0]}:{names[0][1]}"
        differ[first] = f"{first} is not listed by this run"
    for repository, tag in sorted(set(finished.held) - wanted):
        differ.setdefault(f"{repository}:{tag}", f"{repository}:{tag} is not listed by this run")
    if differ:
        n = len(differ)
        what = f"{n} image{'s' if n > 1 else ''} differ{'' if n > 1 else 's'}"
        raise _refuse(path, f"holds another plan: {what} ({next(iter(differ.values()))})")
    return len(plan.entries)


async def _source_digests(
    entries: Sequence[PlanEntry], source_for: EndpointFor, parallel: int
) -> dict[int, Digest]:
    """The digest each entry without one names at its source now (by `id`): HEADs, at most
    `parallel` at once, never a manifest read."""
    gate = asyncio.Semaphore(max(1, parallel))

    async def ask(entry: PlanEntry) -> tuple[int, Digest]:
        async with gate:
            endpoint = source_endpoint(entry, source_for)
            repository = Reference.parse(entry.source).repository
            found = await endpoint.head_manifest(repository, source_identifier(entry))
        if found is None:
            raise NotFoundError(f"manifest {entry.source} not found at its source")
        return id(entry), found.digest

    pending = [entry for entry in entries if entry.source_digest is None]
    return dict(await asyncio.gather(*(ask(entry) for entry in pending)))
