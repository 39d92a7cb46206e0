"""imgpkg tars as a source and a target: `load` of one tar, a from-tar script or a
download-bundle directory; `plan imgpkg-tars` (what such a load pushes, what de-duplication
saves); `save --format imgpkg-tars`. The format is the imgpkg wing's (`transship.imgpkg`);
here it becomes results for the CLI to render. Nothing here prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transship.digest import Digest
from transship.engine import CopyTask, TaskResult
from transship.errors import LayoutError, UsageError
from transship.imgpkg.fromtar import (
    TarLoad,
    TarTarget,
    check_complete,
    is_download_bundle_dir,
    looks_like_imgpkg_tar,
    plan_load,
    single_target,
    targets_from_directory,
    targets_from_script,
)
from transship.imgpkg.totar import tar_jobs, write_tar_set
from transship.layout.archive import is_oci_archive_tar
from transship.layout.index import LAYOUT_FILE
from transship.layout.volumes import find_parts_file
from transship.memory import MemoryEndpoint
from transship.ops.save import PLACEHOLDER
from transship.ops.tasks import EndpointFor
from transship.plan._yaml import Node
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.ratelimit import TokenBucket
from transship.reference import Reference

log = logging.getLogger("transship.imgpkg")


def imgpkg_targets(
    archive: Path | None, script: Path | None, tars_dir: Path | None, dest: str | None
) -> list[TarTarget] | None:
    """The tars to load, or None when the input is not imgpkg's (an OCI archive)."""
    if script is not None:
        if archive is not None:
            raise UsageError("give --script or an ARCHIVE, not both")
        return targets_from_script(script, tars_dir, dest)
    if archive is None:
        raise UsageError("give an ARCHIVE or --script publish-images-fromtar.sh")
    if tars_dir is not None:
        raise UsageError("--tars goes with --script")
    if is_download_bundle_dir(archive):
        return targets_from_directory(archive, dest)
    if looks_like_imgpkg_tar(archive):
        return [single_target(archive, dest)]
    return None


def tar_folder_error(directory: Path) -> UsageError:
    """A folder of imgpkg tars without publish-images-fromtar.yaml: nothing says which tar
    goes to which repository."""
    return UsageError(
        f"{directory}: a directory of imgpkg tars needs publish-images-fromtar.yaml "
        "(which tar goes to which repository); give one tar with --dest, or the "
        "from-tar script with --script"
    )


def folder_refusal(path: Path) -> UsageError | LayoutError | None:
    """For a directory given as ARCHIVE that is no OCI layout: what to say when it holds tars
    rather than being an archive itself, or None (opening it as an archive says what is wrong).

    A folder of split volumes is said about first (its missing `.parts` list is the useful
    news, a stray tar beside the volumes notwithstanding); a folder holding an OCI archive tar
    (`save -o FILE.tar`) names that file; only a folder whose tars include imgpkg tars and no
    OCI archive is taken for a folder of imgpkg tars."""
    if not path.is_dir() or (path / LAYOUT_FILE).exists():
        return None
    try:
        if find_parts_file(path) is not None:
            return None  # a folder of volumes with their list: read as the archive
    except LayoutError as exc:  # volumes without their `.parts` list: say which file to copy
        return exc
    tars = sorted(p for p in path.glob("*.tar") if p.is_file())
    archives = [p for p in tars if is_oci_archive_tar(p)]
    if len(archives) == 1:
        return UsageError(
            f"{path} is a folder holding an OCI archive: give the archive file {archives[0]}"
        )
    if archives:
        names = ", ".join(str(p) for p in archives)
        return UsageError(
            f"{path} is a folder holding {len(archives)} OCI archives: give one archive file "
            f"({names})"
        )
    if any(looks_like_imgpkg_tar(p) for p in tars):
        return tar_folder_error(path)
    return None


@dataclass
class TarLoadJob:
    """A load of imgpkg tars, opened and planned: the caller runs `load.phases` through the
    engine (with progress), then `finish` checks the destination and times the stages."""

    load: TarLoad
    started: float
    planned: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, targets: Sequence[TarTarget], dest_for: EndpointFor) -> TarLoadJob:
        start = time.monotonic()
        return cls(plan_load(targets, dest_for), start)

    @property
    def phases(self) -> list[list[CopyTask]]:
        return self.load.phases

    async def finish(self, results: Sequence[TaskResult], parallel: int) -> list[TaskResult]:
        """Every result checked against the destination (a hole fails its entry: exit 9)."""
        pushed = time.monotonic()
        checked = await check_complete(results, parallel)
        done = time.monotonic()
        log.info(
            "imgpkg tars: read in %.2f s, pushed in %.2f s, checked in %.2f s",
            self.planned - self.started,
            pushed - self.planned,
            done - pushed,
        )
        return checked

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    async def close(self) -> None:
        await self.load.close()


def tar_listing(targets: Sequence[TarTarget]) -> tuple[TarLoad, dict[str, Any]]:
    """`plan imgpkg-tars`: what a load pushes, as the JSON document; nothing is contacted
    (a stand-in endpoint per destination registry). The caller releases `load.tars`."""
    load = plan_load(targets, lambda host: MemoryEndpoint(label=host))
    doc: dict[str, Any] = {
        "tars": len(load.tars),
        "storedBytes": load.stored_bytes,
        "uniqueBytes": load.unique_bytes,
        "savedBytes": load.saved_bytes,
        "push": [
            {
                "tar": row.tar,
                "destination": row.destination,
                "tags": list(row.tags),
                "digest": str(row.digest),
                "kind": row.kind,
            }
            for row in load.rows
        ],
    }
    return load, doc


#: the keys of `plan imgpkg-tars -o`'s document (`tar_listing`) and of each row it pushes
_LISTING_KEYS = frozenset({"tars", "storedBytes", "uniqueBytes", "savedBytes", "push"})
_ROW_KEYS = frozenset({"tar", "destination", "tags", "digest", "kind"})


def is_tar_listing(root: Node) -> bool:
    """Whether a `--plan` document is `plan imgpkg-tars -o`'s listing rather than a plan."""
    return root.has("push") and root.has("tars") and not root.has("apiVersion")


def plan_from_listing(root: Node) -> Plan:
    """`plan imgpkg-tars -o`'s listing as the plan of what that load pushed, every manifest
    pinned to its digest, so `verify --plan` re-checks such a load later. The tars are no
    registry: each entry's source names the pushed manifest itself (never read, the digest is
    known), which is why `copy` and `save` refuse a listing."""
    root.only_keys(_LISTING_KEYS)
    entries = []
    for row in root.child("push").elements():
        row.only_keys(_ROW_KEYS)
        destination = row.child("destination").string()
        listed = row.get("tags")
        tags = [tag.string() for tag in listed.elements()] if listed is not None else []
        try:
            digest = Digest.parse(row.child("digest").string())
            kind = EntryKind(row.child("kind").string())
            entries.append(
                PlanEntry.create(
                    f"{destination}@{digest}",
                    destination,
                    kind=kind,
                    tags=tags,
                    source_digest=digest,
                    expanded=True if kind is EntryKind.BUNDLE else None,  # its images are rows
                )
            )
        except (UsageError, ValueError) as exc:
            raise row.error(str(exc)) from None
    return Plan(tuple(entries), sources=(root.file,))


#: what a from-tar script saved without a destination pushes under (TKG's own setting)
PREFIX_VARIABLE = "TKG_CUSTOM_IMAGE_REPOSITORY"


@dataclass
class TarSetOutcome:
    """`save --format imgpkg-tars`: one result per tar (and a failure per bundle that could
    not be expanded), so the exit code is `save`'s."""

    results: list[TaskResult]
    tars: int

    @property
    def written(self) -> int:
        return self.tars - sum(1 for r in self.results if r.status == "failed")


async def save_imgpkg_tars(
    plan: Plan,
    prefix: str,
    source_for: EndpointFor,
    out_dir: Path,
    held_back: Sequence[PlanEntry] = (),
    rate_limit: TokenBucket | None = None,
) -> TarSetOutcome:
    """One imgpkg tar per entry, plus the from-tar YAML and script, in `out_dir`
    (`rate_limit`: `--limit-rate`'s bucket, which every layer read draws from)."""
    if out_dir.suffix == ".tar":
        raise UsageError(f"{out_dir}: --format imgpkg-tars writes a directory of tars")
    jobs = tar_jobs(plan, prefix, source_for)
    # saved from a list without --dest: the script pushes where TKG's own variable says
    variable = PREFIX_VARIABLE if prefix == PLACEHOLDER else None
    written = await write_tar_set(jobs, out_dir, prefix, variable=variable, rate_limit=rate_limit)
    where = MemoryEndpoint(label=f"imgpkg-tars:{out_dir}")
    results = []
    for job, error in written:
        source = job.sources[0]
        task = CopyTask(
            source=source.endpoint,
            source_repository=source.repository,
            source_identifier=source.identifier,
            dest=where,
            dest_repository=job.name,
            source_reference=job.entry.source,
        )
        results.append(TaskResult(task, "failed" if error else "copied", error=error))
    for entry in held_back:  # never written thin: counted as failed
        ref = Reference.parse(entry.source)
        task = CopyTask(
            source=source_for(ref.registry),
            source_repository=ref.repository,
            source_identifier=ref.identifier,
            dest=where,
            dest_repository=entry.destination,
            source_reference=entry.source,
        )
        error = UsageError(f"bundle {entry.source} could not be expanded")
        results.append(TaskResult(task, "failed", error=error))
    return TarSetOutcome(results, len(jobs))
