"""A plan written back in the vendor's layout: one imgpkg tar per image, plus the from-tar
script and YAML, for a site that must use `upload-bundle` or `imgpkg copy --tar`.

Shape (tanzu-framework `isolated-cluster`, `gen-publish-images-totar.sh`): each plan entry
becomes `<repository path with / replaced by ->-<tag>.tar` holding that image or index
(`imgpkg copy -i`); a bundle's tar also holds every image the plan puts into the bundle's
repository (`imgpkg copy -b`, root-bundle label set). `publish-images-fromtar.yaml` maps each tar
to its repository path below the destination prefix; `publish-images-fromtar.sh` has one
`imgpkg copy --tar NAME --to-repo PREFIX/PATH` line per tar. ImageLocations records are not
written (imgpkg and `transship load` make them on import); attachments are left out, as imgpkg
leaves cosign signatures out by default.

A tar that already exists and opens cleanly is kept, so a killed run resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transship.errors import TransshipError, UsageError
from transship.fsutil import write_atomic
from transship.imgpkg.fromtar import FROMTAR_YAML, EndpointFor
from transship.imgpkg.tarball import ROOT_BUNDLE_LABEL, ImgpkgTar
from transship.imgpkg.tarwriter import TarSource, write_imgpkg_tar
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.ratelimit import TokenBucket
from transship.reference import Reference

FROMTAR_SCRIPT = "publish-images-fromtar.sh"
_SKIPPED = (EntryKind.BUNDLE_REFERENCED, EntryKind.IMAGE_LOCATIONS, EntryKind.ATTACHMENT)


@dataclass(frozen=True)
class TarJob:
    """One tar to write: its file name, its repository below the prefix, what goes in."""

    name: str
    relative: str
    entry: PlanEntry
    sources: tuple[TarSource, ...]


def _relative(destination: str, prefix: str) -> str:
    if not destination.startswith(f"{prefix}/"):
        raise UsageError(f"plan entry goes to {destination}, not under {prefix}")
    return destination[len(prefix) + 1 :]


def _source(
    entry: PlanEntry,
    source_for: EndpointFor,
    *,
    tag: str = "",
    orig_ref: str = "",
    labels: tuple[tuple[str, str], ...] = (),
) -> TarSource:
    ref = Reference.parse(entry.source)
    identifier = str(entry.source_digest) if entry.source_digest else ref.identifier
    return TarSource(
        source_for(ref.registry),
        ref.repository,
        identifier,
        f"{ref.registry}/{ref.repository}",
        tag=tag,
        orig_ref=orig_ref,
        labels=labels,
    )


def tar_jobs(plan: Plan, prefix: str, source_for: EndpointFor) -> list[TarJob]:
    """One job per plan entry that is not pushed as part of another (bundle images go into
    their bundle's tar); names unique, as two tars of one name would overwrite each other."""
    prefix = prefix.rstrip("/")
    referenced: dict[str, list[PlanEntry]] = {}
    for entry in plan.entries:
        if entry.kind is EntryKind.BUNDLE_REFERENCED:
            referenced.setdefault(entry.destination, []).append(entry)
    jobs: dict[str, TarJob] = {}
    for entry in plan.entries:
        if entry.kind in _SKIPPED:
            continue
        relative = _relative(entry.destination, prefix)
        tag = Reference.parse(entry.source).tag or ""
        label = tag or (entry.source_digest.hex[:12] if entry.source_digest else "latest")
        name = f"{relative.replace('/', '-')}-{label}.tar"
        sources = [_source(entry, source_for, tag=tag)]
        if entry.kind is EntryKind.BUNDLE:
            sources[0] = _source(entry, source_for, tag=tag, labels=((ROOT_BUNDLE_LABEL, ""),))
            sources += [
                _source(image, source_for, orig_ref=image.source)
                for image in referenced.get(entry.destination, [])
            ]
        if name in jobs:
            raise UsageError(f"two plan entries would both be written to {name}")
        jobs[name] = TarJob(name, relative, entry, tuple(sources))
    return list(jobs.values())


def fromtar_yaml(jobs: Sequence[TarJob]) -> str:
    """`publish-images-fromtar.yaml` as download-bundle writes it (keys sorted)."""
    return "".join(f"{job.name}: {job.relative}\n" for job in sorted(jobs, key=lambda j: j.name))


def fromtar_script(jobs: Sequence[TarJob], prefix: str, variable: str | None = None) -> str:
    """`publish-images-fromtar.sh`: one `imgpkg copy --tar` per tar into `prefix`, or, when
    the destination is not known yet, into `${variable}` (the script refuses to run unset)."""
    lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
    root = prefix.rstrip("/")
    if variable is not None:
        lines.append(f"# set {variable} to the destination REGISTRY/PROJECT before running")
        root = f'"${{{variable}:?set {variable} to the destination REGISTRY/PROJECT}}"'
    for job in sorted(jobs, key=lambda j: j.name):
        lines.append(f"imgpkg copy --tar {job.name} --to-repo {root}/{job.relative}")
    return "\n".join(lines) + "\n"


async def _complete(path: Path) -> bool:
    """An existing tar that opens cleanly (all digests checked) was finished by an earlier run."""
    if not path.is_file():
        return False
    try:
        tar = ImgpkgTar(path)
    except TransshipError:
        return False
    await tar.close()
    return True


async def write_tar_set(
    jobs: Sequence[TarJob],
    out_dir: Path,
    prefix: str,
    parallel: int = 4,
    variable: str | None = None,
    rate_limit: TokenBucket | None = None,
) -> list[tuple[TarJob, TransshipError | None]]:
    """Write every tar (those already complete are kept), then the YAML and the script
    (`variable`: see `fromtar_script`; `rate_limit`: `--limit-rate`, across all tars)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = asyncio.Semaphore(parallel)

    async def one(job: TarJob) -> tuple[TarJob, TransshipError | None]:
        async with limit:
            path = out_dir / job.name
            if await _complete(path):
                return job, None
            try:
                await write_imgpkg_tar(path, job.sources, rate_limit)
            except TransshipError as exc:
                return job, exc
            return job, None

    results = list(await asyncio.gather(*(one(job) for job in jobs)))
    write_atomic(out_dir / FROMTAR_YAML, fromtar_yaml(jobs))
    write_atomic(out_dir / FROMTAR_SCRIPT, fromtar_script(jobs, prefix, variable))
    return results
