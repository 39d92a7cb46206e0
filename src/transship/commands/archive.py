"""`transship save`, `load` and `archive verify|list`: across the air gap on removable media."""

from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from transship.airgap import (
    ArchiveInfo,
    checksum_list,
    load_tasks,
    measure,
    open_archive,
    save_task,
    save_tasks,
    source_points,
)
from transship.commands.common import (
    execute,
    load_plan_source,
    plan_source_options,
    push_options,
    resolve_listed,
    run_engine,
    setup_logging,
    side_options,
    side_settings,
)
from transship.commands.imgpkgtar import imgpkg_targets, load_imgpkg_tars, save_imgpkg_tars
from transship.connect import RegistryPool, SideSettings, tkg_dest_defaults
from transship.digest import Digest
from transship.engine import TaskResult
from transship.errors import ExitCode, IntegrityError, TransshipError, UsageError
from transship.fsutil import write_atomic
from transship.layout import OCILayout, OCILayoutTar, write_tar
from transship.layout.reader import LayoutReader
from transship.layout.volumes import parse_size, split_archive
from transship.manifest import Manifest
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.progress import human_bytes
from transship.relocate import preflight as check_destinations

PARTIAL_SUFFIX = ".partial"


@click.command()
@plan_source_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="A layout directory, or FILE.tar (built in FILE.tar.partial/, then packed).",
)
@side_options("src", "source")
@click.option(
    "--split-size",
    metavar="SIZE",
    help="With FILE.tar: cut it into volumes of SIZE (4G, 700M) for removable media.",
)
@click.option(
    "--since",
    "since",
    type=click.Path(exists=True, path_type=Path),
    metavar="OLD_ARCHIVE",
    help="Incremental: write only blobs OLD_ARCHIVE does not hold (load OLD first).",
)
@click.option(
    "--no-attachments",
    is_flag=True,
    help="Leave signatures, attestations and referrers behind (saved by default).",
)
@click.option("--dry-run", is_flag=True, help="Only print the bytes to write and check free disk.")
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["oci", "imgpkg-tars"]),
    default="oci",
    show_default=True,
    help="imgpkg-tars: -o DIR gets one imgpkg tar per image plus publish-images-fromtar.yaml/.sh "
    "(for upload-bundle).",
)
@click.option("--parallel", default=16, show_default=True, help="Images in flight at once.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON.")
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
def save(
    plan_file: Path | None,
    images_file: Path | None,
    script_file: Path | None,
    dest_prefix: str | None,
    output: Path,
    split_size: str | None,
    since: Path | None,
    no_attachments: bool,
    dry_run: bool,
    out_format: str,
    parallel: int,
    report: Path | None,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Save a plan's images into an OCI image layout (directory or tar), each blob once.

    Interrupted? Run the same command again: blobs already written and verified are kept.
    """
    setup_logging(verbose, quiet)
    # Inside the archive, names are relative to the destination prefix; an image list
    # without one keeps each image's path below a placeholder host.
    prefix = dest_prefix or (None if plan_file else "archive.local")
    plan = load_plan_source(plan_file, images_file, script_file, prefix)
    if plan is None:
        raise UsageError("save needs one of --plan, --images or --script")
    src_settings = side_settings("src", kwargs, parallel)
    if out_format == "imgpkg-tars" and (split_size or since or dry_run):
        raise UsageError("--format imgpkg-tars takes none of --split-size, --since, --dry-run")
    is_tar = output.suffix == ".tar" and out_format == "oci"
    part_size = parse_size(split_size) if split_size else None
    if part_size and not is_tar:
        raise UsageError("--split-size needs -o FILE.tar")
    base = open_archive(since) if since else None
    layout_dir = output.with_name(output.name + PARTIAL_SUFFIX) if is_tar else output
    if is_tar and output.exists() and not layout_dir.exists() and not dry_run:
        raise UsageError(f"{output} exists; remove it or choose another name")
    console = Console(stderr=True)
    listed = plan

    async def run(sources: RegistryPool, _dests: RegistryPool) -> list[TaskResult]:
        plan = listed
        held_back: list[PlanEntry] = []
        if plan_file is None:  # a list or a script: resolve it, so bundles travel whole
            plan, held_back = await resolve_listed(
                plan, sources, parallel, quiet, attachments=not no_attachments
            )
        elif no_attachments:
            kept = tuple(e for e in plan.entries if e.kind != EntryKind.ATTACHMENT)
            plan = Plan(kept, plan.sources)
        info = ArchiveInfo.for_plan(plan, prefix)
        if base is not None:
            info = replace(info, base=since.name if since else None)
        if out_format == "imgpkg-tars":  # transship.commands.imgpkgtar
            return await save_imgpkg_tars(plan, info.prefix, sources.get, output, quiet, held_back)
        if dry_run:
            existing = OCILayout(layout_dir, writable=False) if layout_dir.exists() else base
            if existing is not None and base is not None:
                existing.base = base
            points = source_points(plan, sources.get)
            size, blobs, manifests = await measure(points, existing)
            free = shutil.disk_usage(_existing_parent(layout_dir)).free
            console.print(
                f"save would write {human_bytes(size)} ({blobs} blobs, {manifests} manifests) "
                f"to {output}; free space there: {human_bytes(free)}"
                + (" (twice that while packing the tar)" if is_tar else "")
            )
            if size * (2 if is_tar else 1) > free:
                raise UsageError(f"not enough free space at {_existing_parent(layout_dir)}")
            return []
        layout = OCILayout(layout_dir, writable=True)
        layout.base = base
        try:
            layout.write_extra("archive.json", info.to_json())
            layout.write_extra("plan.yaml", plan.to_yaml())
            results = await run_engine(
                save_tasks(plan, info, sources.get, layout), report, None, quiet, parallel
            )
        finally:
            await layout.close()
            if base is not None:
                await base.close()
        for entry in held_back:  # counted as failed, never saved thin: the exit code says so
            task = save_task(entry, info, sources.get, layout)
            error = UsageError(f"bundle {entry.source} could not be expanded")
            results.append(TaskResult(task, "failed", error=error))
        if any(r.status == "failed" for r in results):
            return results
        sums = checksum_list(
            layout_dir,
            ["oci-layout", "index.json", "transship/archive.json", "transship/plan.yaml"],
        )
        write_atomic(layout_dir / "transship" / "SHA256SUMS", sums)
        if is_tar:
            blobs = await asyncio.to_thread(write_tar, layout_dir, output)
            shutil.rmtree(layout_dir)
            written = f"{output} ({blobs} blobs)"
            if part_size:
                parts = await asyncio.to_thread(split_archive, output, part_size)
                written = f"{len(parts)} volumes {parts[0].name}… ({blobs} blobs)"
            if not quiet:
                console.print(f"wrote {written}")
        return results

    return execute(run, src_settings, SideSettings(side="dest"))  # no destination registry


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


@click.command()
@click.argument("archive", type=click.Path(path_type=Path), required=False)
@click.option(
    "--dest",
    "dest_prefix",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    metavar="PREFIX",
    help="Registry/project to load into; each image keeps its path below it "
    "(for one imgpkg tar: the repository, as imgpkg's --to-repo).",
)
@click.option(
    "--script",
    "fromtar_script",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Load the imgpkg tars of a publish-images-fromtar.sh, as one plan.",
)
@click.option(
    "--tars",
    "tars_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="With --script: where its tars are (default: beside the script).",
)
@side_options("dest", "destination")
@push_options
def load(
    archive: Path | None,
    dest_prefix: str | None,
    fromtar_script: Path | None,
    tars_dir: Path | None,
    parallel: int,
    report: Path | None,
    lock_output: Path | None,
    preflight: bool,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Push everything in ARCHIVE to a registry, under --dest.

    ARCHIVE: an OCI layout directory or tar (transship save), an imgpkg tar (imgpkg copy
    --to-tar), or a download-bundle directory (publish-images-fromtar.yaml); or give --script
    publish-images-fromtar.sh. Sets of imgpkg tars load as one plan, each blob sent once.
    """
    setup_logging(verbose, quiet)
    dest_settings = tkg_dest_defaults(side_settings("dest", kwargs, parallel))
    # -- imgpkg tars (transship.imgpkg): handled apart, OCI archives fall through ----------
    targets = imgpkg_targets(archive, fromtar_script, tars_dir, dest_prefix)
    if targets is not None:
        return load_imgpkg_tars(
            targets,
            dest_settings,
            parallel=parallel,
            report=report,
            lock_output=lock_output,
            preflight=preflight,
            quiet=quiet,
        )
    assert archive is not None
    # -- end imgpkg tars --------------------------------------------------------------------
    layout = open_archive(archive)
    info = ArchiveInfo.read(layout)
    layout.base_name = info.base

    async def run(_sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        try:
            phases = load_tasks(layout, info, dest_prefix, dests.get)
            if preflight:
                await check_destinations(phases, parallel)
            return await run_engine(phases, report, lock_output, quiet, parallel)
        finally:
            await layout.close()

    return execute(run, SideSettings(side="src"), dest_settings)  # no source registry


@click.group("archive")
def archive_group() -> None:
    """Inspect archives written by `transship save` (or any OCI layout)."""


@archive_group.command("list")
@click.argument("archive", type=click.Path(path_type=Path))
def archive_list(archive: Path) -> int:
    """Show what ARCHIVE holds: repository, tags, digest, media type."""
    layout = open_archive(archive)
    table = Table(title=f"{layout.label}")
    for column in ("repository", "tag", "digest", "media type"):
        table.add_column(column)
    for repository, tag, descriptor in layout.entries():
        table.add_row(repository, tag, descriptor.digest.short, descriptor.media_type)
    Console().print(table)
    asyncio.run(layout.close())
    return 0


@archive_group.command("verify")
@click.argument("archive", type=click.Path(path_type=Path))
def archive_verify(archive: Path) -> int:
    """Re-hash every blob offline and check every manifest's references are present."""
    layout = open_archive(archive)
    info = ArchiveInfo.read(layout)
    try:
        problems = layout.verify_volumes() if isinstance(layout, OCILayoutTar) else []
        found, blobs, manifests = asyncio.run(_verify_archive(layout))
        problems += found
    finally:
        asyncio.run(layout.close())
    if info.base:
        in_base = [p for p in problems if p.endswith("is missing")]
        problems = [p for p in problems if not p.endswith("is missing")]
        if in_base:
            print(f"{len(in_base)} blobs are expected from the base archive {info.base}")
    for problem in problems:
        print(f"transship: {problem}", file=sys.stderr)
    corrupt = any("does not match" in p or "bytes" in p for p in problems)
    print(
        f"{layout.label}: {manifests} manifests and {blobs} blobs checked, "
        f"{len(problems)} problem(s)"
    )
    if not problems:
        return ExitCode.OK
    return ExitCode.INTEGRITY if corrupt else ExitCode.INCOMPLETE


async def _verify_archive(layout: LayoutReader) -> tuple[list[str], int, int]:
    problems: list[str] = []
    checked_blobs: set[Digest] = set()
    checked_manifests: set[Digest] = set()

    async def check_manifest(repository: str, identifier: str, where: str) -> None:
        try:
            manifest: Manifest = await layout.get_manifest(repository, identifier)
        except TransshipError as exc:
            problems.append(f"{where}: {exc}")
            return
        if manifest.digest in checked_manifests:
            return
        checked_manifests.add(manifest.digest)
        for child in manifest.manifests:
            await check_manifest(repository, str(child.digest), f"{where} child")
        for blob in manifest.blobs():
            if blob.urls or blob.digest in checked_blobs:
                continue
            checked_blobs.add(blob.digest)
            if not await layout.has_blob(repository, blob.digest):
                problems.append(f"{where}: blob {blob.digest.short} is missing")
                continue
            try:
                async with layout.open_blob(repository, blob) as chunks:
                    async for _ in chunks:
                        pass
            except IntegrityError as exc:
                problems.append(f"{where}: {exc}")

    for repository, tag, _descriptor in layout.entries():
        await check_manifest(repository, tag, f"{repository}:{tag}")
    return problems, len(checked_blobs), len(checked_manifests)


COMMANDS = [save, load, archive_group]
