"""`transship save`, `load` and `archive verify|list|plan`: across the air gap on media."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transship.commands.archivepaths import existing_archives
from transship.commands.common import (
    LIMIT_RATE,
    REPORT_FILE,
    SHARD,
    BeforeEngine,
    before_engine,
    execute,
    load_plan_source,
    parallel_option,
    plan_source_options,
    push_options,
    resolve_listed,
    run_engine,
    run_report_for,
    setup_logging,
    shard_part,
    side_options,
    side_settings,
)
from transship.commands.harbor import after_push, project_options, project_settings
from transship.commands.imgpkgtar import (
    folder_refusal,
    imgpkg_targets,
    load_imgpkg_tars,
    save_tar_set,
)
from transship.commands.rendering import PLAIN, wide_console
from transship.connect import RegistryPool, SideSettings
from transship.engine import CopyTask, Stats, TaskResult
from transship.errors import IncompatibleArchiveError, IntegrityError, UsageError
from transship.fsutil import write_atomic
from transship.layout.volumes import parse_size
from transship.ops.archive import (
    PREFIX_COMMON,
    ArchiveInfo,
    carried_plan_bytes,
    close_chain,
    destination_prefix,
    open_base_chain,
)
from transship.ops.finished import FinishedSave, read_finished, same_save
from transship.ops.load import LoadJob
from transship.ops.run import RunOutcome
from transship.ops.save import (
    PLACEHOLDER,
    SaveJob,
    SaveTarget,
    archive_info,
    estimate,
    planned_tasks,
)
from transship.ops.selfcopy import running_tool
from transship.ops.shard import ShardAccount
from transship.ops.tasks import without_attachments
from transship.ops.verify import ArchiveCheck, verify_archive
from transship.plan.model import Plan, PlanEntry
from transship.plan.shard import Shard
from transship.progress import human_bytes, summary_table
from transship.tkg.env import tkg_dest_defaults


@click.command()
@plan_source_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="A layout directory, or FILE.tar (written in place as FILE.tar.partial, then renamed).",
)
@side_options("src", "source")
@click.option(
    "--split-size",
    metavar="SIZE",
    help="With FILE.tar: cut it into volumes of SIZE (4G, 700M) for removable media.",
)
@click.option(
    "--since",
    "since_given",
    type=click.Path(path_type=Path),
    callback=existing_archives,
    multiple=True,  # only to refuse a repeat (`_one_since`): an archive records one base
    metavar="OLD_ARCHIVE",
    help="Incremental: write only blobs OLD_ARCHIVE does not hold (load OLD first); when OLD is "
    "itself an increment, neither what its bases beside it hold.",
)
@click.option(
    "--no-attachments",
    is_flag=True,
    help="Leave signatures, attestations and referrers behind (saved by default).",
)
@click.option(
    "--include-tool",
    is_flag=True,
    help="Carry this single-file transship in the archive as transship/bin/transship.",
)
@click.option("--dry-run", is_flag=True, help="Only print the bytes to write and check free disk.")
@SHARD
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["oci", "imgpkg-tars"]),
    default="oci",
    show_default=True,
    help="imgpkg-tars: -o DIR gets one imgpkg tar per image plus publish-images-fromtar.yaml/.sh "
    "(for upload-bundle).",
)
@parallel_option(16, "Images in flight at once.")
@click.option("--report", **REPORT_FILE, help="Write JSON.")
@LIMIT_RATE
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
def save(
    plan_file: Path | None,
    images_file: Path | None,
    script_file: Path | None,
    dest_prefix: str | None,
    output: Path,
    split_size: str | None,
    since_given: tuple[Path, ...],
    no_attachments: bool,
    include_tool: bool,
    dry_run: bool,
    shard: Shard | None,
    out_format: str,
    parallel: int,
    report: Path | None,
    limit_rate: int | None,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Save a plan's images into an OCI image layout (directory or tar), each blob once
    (with --shard I/N, only part I of N of them: one archive per host).

    Interrupted? Run the same command again: blobs already written and verified are kept.
    """
    setup_logging(verbose, quiet)
    since = _one_since(since_given)
    # Inside the archive, names are relative to the destination prefix; an image list
    # without one keeps each image's path below a placeholder host.
    prefix = dest_prefix or (None if plan_file else PLACEHOLDER)
    plan = load_plan_source(plan_file, images_file, script_file, prefix)
    if plan is None:
        raise UsageError("save needs one of --plan, --images or --script")
    # every part's archive names its repositories relative to the same prefix: the whole
    # plan's (a plan that records none falls back to the prefix its destinations share)
    whole_prefix = destination_prefix(plan) if shard and not plan.destination_prefix else ""
    plan, cut = shard_part(plan, shard, quiet)  # a list is cut before it is resolved
    src_settings = side_settings("src", kwargs, parallel)
    imgpkg_tars = out_format == "imgpkg-tars"
    if imgpkg_tars and (split_size or since or dry_run or include_tool):
        raise UsageError(
            "--format imgpkg-tars takes none of --split-size, --since, --dry-run, --include-tool"
        )
    tool = running_tool() if include_tool else None
    target = SaveTarget(output, parse_size(split_size) if split_size else None, since, tool)
    if not imgpkg_tars:
        target.check(dry_run=dry_run)
    if since is not None:
        asyncio.run(check_base_chain(since))  # a bad --since is refused before any request
    console = Console(stderr=True)
    listed = plan
    # imgpkg tars are written without the engine; a dry run writes nothing: no report
    record = None if imgpkg_tars or dry_run else run_report_for(report)

    def info_for(plan: Plan) -> ArchiveInfo:
        # a plan file carries the prefix it was made for; --dest given with it overrides it
        info = archive_info(
            plan,
            dest_prefix if plan_file else None,
            target,
            placeholder=not (dest_prefix or plan_file),
        )
        if whole_prefix and info.prefix_origin == PREFIX_COMMON:
            info = replace(archive_info(plan, whole_prefix, target), prefix_origin=PREFIX_COMMON)
        return info

    async def run(sources: RegistryPool, _dests: RegistryPool) -> list[TaskResult]:
        plan = listed
        held_back: list[PlanEntry] = []
        started = time.monotonic()
        # a finished archive at the output: refused now if it cannot be this save whatever
        # the list resolves to (damaged, other options), else compared once it is resolved
        finished = None
        if not (imgpkg_tars or dry_run) and target.finished is not None:
            finished = await read_finished(target)
        # an archive an earlier run sealed is only renamed into place: nothing to resolve
        sealed = not (imgpkg_tars or dry_run) and target.sealed
        if plan_file is None and not sealed:  # a list or a script: resolved, bundles go whole
            pending = BeforeEngine(record, quiet)
            engine_ahead = not (imgpkg_tars or dry_run)  # with or without --report
            if engine_ahead:
                pending.planned(planned_tasks(plan, info_for(plan), target, sources.get))
            with pending.watch() if engine_ahead else contextlib.nullcontext():
                plan, held_back = await resolve_listed(
                    plan, sources, parallel, quiet, attachments=not no_attachments
                )
        elif no_attachments:
            plan = without_attachments(plan)
        info = info_for(plan)
        if imgpkg_tars:  # transship.ops.imgpkgtar
            return await save_tar_set(
                plan, info.prefix, sources.get, output, quiet, held_back, limit_rate
            )
        if dry_run:
            rerun = await _finished_rerun(target, plan, info, sources, held_back, parallel)
            if rerun is not None:  # what the real rerun would say: nothing written
                console.print(
                    f"save would write nothing: {output} {_holds(held_back)} ({rerun} images)",
                    **PLAIN,
                )
                return []
            found = await estimate(plan, target, sources.get)
            console.print(
                f"save would write {human_bytes(found.bytes)} ({found.blobs} blobs, "
                f"{found.manifests} manifests) to {output}; free space there: "
                f"{human_bytes(found.free)}",
                **PLAIN,
            )
            found.require_space()
            return []
        if finished is not None:  # a rerun of a save that finished: nothing to write
            count = await same_save(finished, plan, info, sources.get, held_back, parallel)
            if not quiet:
                console.print(
                    f"{output} {_holds(held_back)} ({count} images); nothing to do", **PLAIN
                )
            skipped = already_saved(finished, planned_tasks(plan, info, target, sources.get))
            unexpanded = replace(plan, entries=tuple(held_back))  # failed, as SaveJob.held_back
            done = skipped + [
                TaskResult(task, "failed", error=UsageError(f"bundle {task.source_reference} "
                           "could not be expanded"))
                for group in planned_tasks(unexpanded, info, target, sources.get)
                for task in group
            ]  # fmt: skip
            stats = Stats(manifests_present=len(skipped))
            seconds = time.monotonic() - started
            if record is not None:
                record.outcome = RunOutcome(done, stats, seconds)
            if not quiet:
                console.print(summary_table(done, stats, seconds))
            return done
        job = await SaveJob.open(plan, info, target, sources.get)
        account = None if cut is None else ShardAccount(cut, sources.get, parallel, plan)
        succeeded = False
        try:
            if job.sealed:  # killed while renaming: finish that, as a save that ended so
                job.check_sealed()
                results: list[TaskResult] = []
            else:
                results = await run_engine(
                    job.tasks, record, None, quiet, parallel, plan.unique_bytes, limit_rate, account
                )
            results += job.held_back(held_back, sources.get)  # failed: the exit code says so
            succeeded = not any(r.status == "failed" for r in results)
        finally:
            await job.close(finished=succeeded)
        if not succeeded:
            return results
        written = await job.finish()
        if written.volumes and not quiet:
            console.print(
                f"wrote {len(written.volumes)} volumes {written.volumes[0].name}… "
                f"({written.blobs} blobs, manifests included)",
                **PLAIN,
            )
        elif written.blobs is not None and not quiet:
            console.print(
                f"wrote {written.path} ({written.blobs} blobs, manifests included)", **PLAIN
            )
        return results

    return execute(run, src_settings, SideSettings(side="dest"), record)  # no dest registry


def _holds(held_back: list[PlanEntry]) -> str:
    return "already holds this plan" if not held_back else "holds the rest of this plan"


async def _finished_rerun(
    target: SaveTarget,
    plan: Plan,
    info: ArchiveInfo,
    sources: RegistryPool,
    held_back: list[PlanEntry],
    parallel: int,
) -> int | None:
    """For `save --dry-run`: how many images the finished archive at the output holds when a
    real rerun would find it holds this plan and do nothing (the same checks, read only);
    None when there is none, or it holds something else (the dry run measures then, as
    before: only the real run refuses)."""
    if target.finished is None:
        return None
    try:
        finished = await read_finished(target)
        return await same_save(finished, plan, info, sources.get, held_back, parallel)
    except (UsageError, IntegrityError, IncompatibleArchiveError):
        return None


def already_saved(finished: FinishedSave, tasks: list[list[CopyTask]]) -> list[TaskResult]:
    """The save's tasks as the finished archive holds them: skipped, as a rerun of a copy
    reports what the destination already has."""
    return [
        TaskResult(task, "skipped", finished.held.get((task.dest_repository, task.dest_tags[0])))
        for group in tasks
        for task in group
    ]


def _one_since(given: tuple[Path, ...]) -> Path | None:
    """One `--since`: an archive records one base (archive.json `base`, which `load`, `serve`
    and `archive verify` follow); a base's own bases are followed from it, beside it."""
    if len(given) > 1:
        raise UsageError(
            f"--since given {len(given)} times; give it once, the newest archive: the bases "
            "it was saved on are followed from it (found beside it by name)"
        )
    return given[0] if given else None


async def check_base_chain(since: Path) -> None:
    """A bad `--since` is refused, a base missing from its chain said once, before any request."""
    await close_chain(await open_base_chain(since, warn=True))


@click.command()
@click.argument("archive", type=click.Path(path_type=Path), required=False)
@click.option(
    "--dest",
    "dest_prefix",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    metavar="PREFIX",
    help="Replace the planned destination prefix (default: load where the plan said); for "
    "one imgpkg tar: the repository, as imgpkg's --to-repo.",
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
@project_options
def load(
    archive: Path | None,
    dest_prefix: str | None,
    fromtar_script: Path | None,
    tars_dir: Path | None,
    parallel: int,
    report: Path | None,
    lock_output: Path | None,
    preflight: bool,
    limit_rate: int | None,
    repair: bool,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Push everything in ARCHIVE to a registry: where its plan said, or with --dest PREFIX
    replacing the destination prefix the plan was made for.

    ARCHIVE: an OCI layout directory or tar (transship save), an imgpkg tar (imgpkg copy
    --to-tar), or a download-bundle directory (publish-images-fromtar.yaml); or give --script
    publish-images-fromtar.sh. Sets of imgpkg tars load as one plan, each blob sent once.
    """
    setup_logging(verbose, quiet)
    projects = project_settings(kwargs)
    dest_settings = tkg_dest_defaults(side_settings("dest", kwargs, parallel))
    targets = imgpkg_targets(archive, fromtar_script, tars_dir, dest_prefix)
    if targets is not None:  # imgpkg tars (transship.ops.imgpkgtar); OCI archives go on
        return load_imgpkg_tars(
            targets,
            dest_settings,
            parallel=parallel,
            report=report,
            lock_output=lock_output,
            preflight=preflight,
            quiet=quiet,
            projects=projects,
            limit_rate=limit_rate,
            repair=repair,
        )
    assert archive is not None  # imgpkg_targets refuses neither ARCHIVE nor --script
    if refusal := folder_refusal(archive):  # not "not an OCI layout": what the folder needs
        raise refusal
    job = LoadJob.open(archive, finished=True, repair=repair)
    warning = job.prefix_warning(dest_prefix)
    if warning and not quiet:
        print(f"transship: warning: {warning}", file=sys.stderr)

    record = run_report_for(report)

    async def run(_sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        try:
            phases = job.planned(dest_prefix, dests.get)  # index.json only: known at once
            pending = BeforeEngine(record, quiet)
            pending.planned(phases)
            with pending.watch():  # Ctrl-C until the engine runs: every image not started
                if repair:
                    await job.read_bases()
                phases, unique = await job.sized(phases)  # reads the archive's manifests
                pending.planned(phases)
                await before_engine(
                    phases, projects, dests, preflight=preflight, quiet=quiet, parallel=parallel
                )
            results = await run_engine(
                phases, record, lock_output, quiet, parallel, unique, limit_rate, repair=repair
            )
            await after_push(results)
            return results
        finally:
            await job.close()

    return execute(run, SideSettings(side="src"), dest_settings, record)  # no source registry


@click.group("archive")
def archive_group() -> None:
    """Inspect archives written by `transship save` (or any OCI layout)."""


@archive_group.command("list")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    help="json: one object per entry, full digests, for scripts.",
)
def archive_list(archive: Path, fmt: str) -> int:
    """Show what ARCHIVE holds: repository, tags, digest, media type."""
    job = LoadJob.open(archive)
    try:
        info = job.info
        entries = list(job.layout.entries())
        if fmt == "json":
            rows = [
                {"repository": r, "tag": t, "digest": str(d.digest), "mediaType": d.media_type,
                 "size": d.size}
                for r, t, d in entries
            ]  # fmt: skip
            doc = {"archive": job.layout.label, "prefix": info.prefix, "entries": rows}
            click.echo(json.dumps(doc, indent=2))
            return 0
        prefix = f" (names relative to {info.prefix})" if info.prefix else ""
        title = Text(f"{job.layout.label}{prefix}")  # a path: no markup in it
        table = Table(title=title, min_width=title.cell_len)  # in a pipe, not folded either
        for column in ("repository", "tag", "digest", "media type"):
            table.add_column(column, overflow="fold")  # folded, never cut: names stay whole
        for repository, tag, descriptor in entries:
            table.add_row(repository, tag, descriptor.digest.short, descriptor.media_type)
        wide_console(stderr=False, fit=table).print(table)  # in a pipe, a row per entry
        return 0
    finally:
        asyncio.run(job.close())


@archive_group.command("plan")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it to FILE (atomically) instead of standard output.",
)
def archive_plan(archive: Path, output: Path | None) -> int:
    """Print the plan ARCHIVE carries (transship/plan.yaml, byte for byte): also from a split
    archive, whose plan lies in its last volume. `verify --plan ARCHIVE` reads it directly."""
    raw = asyncio.run(carried_plan_bytes(archive))
    if output is not None:
        write_atomic(output, raw)
    else:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
    return 0


@archive_group.command("verify")
@click.argument("archive", type=click.Path(path_type=Path))
def archive_verify(archive: Path) -> int:
    """Re-hash every blob offline and check every manifest's references are present."""
    job = LoadJob.open(archive)
    print(f"{job.layout.label}: {job.info.compatibility()}")
    try:
        unfinished = job.unfinished()
        check = asyncio.run(verify_archive(job.layout, job.info.base, unfinished, job.path))
    finally:
        asyncio.run(job.close())
    print_archive_check(check)
    return int(check.exit_code)


def print_archive_check(check: ArchiveCheck) -> None:
    if check.from_base:
        print(
            f"{check.from_base} blobs are held by the base archive {check.base} beside it "
            "(images it names reach them; `archive verify` of it re-hashes them)"
        )
    if check.unchecked:
        print(
            f"{check.unchecked} blobs are expected from the base archive "
            f"{check.unchecked_base}, not checked: it is not beside the archive that names it "
            "as its base (put it there to check them)"
        )
    if check.tool_note:
        print(f"{check.label}: {check.tool_note}")
    for problem in check.problems:
        print(f"transship: {problem}", file=sys.stderr)
    print(
        f"{check.label}: {check.manifests} manifests and {check.blobs} blobs checked, "
        f"{len(check.problems)} problem(s)"
    )


COMMANDS = [save, load, archive_group]
