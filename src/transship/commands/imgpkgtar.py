"""imgpkg tars on the command line: options and rendering over `transship.ops.imgpkgtar`.

`load` (commands.archive) asks `imgpkg_targets` first; anything that is not imgpkg input goes
on to the OCI-archive path untouched. `plan imgpkg-tars` lists what such a load pushes and what
de-duplication across the tars saves.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transship.commands.common import (
    BeforeEngine,
    before_engine,
    execute,
    rate_limit,
    run_engine,
    run_report_for,
    setup_logging,
)
from transship.commands.harbor import after_push
from transship.commands.rendering import PLAIN
from transship.connect import RegistryPool, SideSettings
from transship.engine import TaskResult
from transship.errors import UsageError
from transship.fsutil import write_atomic
from transship.harbor.projects import ProjectSettings
from transship.imgpkg.fromtar import FROMTAR_YAML, TarLoad, TarTarget
from transship.imgpkg.totar import FROMTAR_SCRIPT
from transship.ops.imgpkgtar import (
    TarLoadJob,
    folder_refusal,
    imgpkg_targets,
    save_imgpkg_tars,
    tar_folder_error,
    tar_listing,
)
from transship.ops.tasks import EndpointFor
from transship.plan.model import Plan, PlanEntry
from transship.progress import human_bytes

__all__ = [
    "folder_refusal",
    "imgpkg_targets",
    "load_imgpkg_tars",
    "plan_imgpkg_tars",
    "save_tar_set",
    "tar_folder_error",
]


def summary_line(load: TarLoad) -> str:
    return (
        f"{len(load.tars)} imgpkg tars, {len(load.rows)} manifests to push; the tars hold "
        f"{human_bytes(load.stored_bytes)}, {human_bytes(load.unique_bytes)} unique: "
        f"de-duplication saves {human_bytes(load.saved_bytes)}"
    )


def load_imgpkg_tars(
    targets: list[TarTarget],
    dest_settings: SideSettings,
    *,
    parallel: int,
    report: Path | None,
    lock_output: Path | None,
    preflight: bool,
    quiet: bool,
    projects: ProjectSettings,
    limit_rate: int | None = None,
    repair: bool = False,
) -> int:
    """Push every tar as one engine run; exit codes as `copy` (9 if the final check finds a
    hole)."""
    console = Console(stderr=True)
    record = run_report_for(report)

    async def run(_sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        job = TarLoadJob.open(targets, dests.get)
        try:
            if not quiet:
                console.print(summary_line(job.load), **PLAIN)
            pending = BeforeEngine(record, quiet)
            pending.planned(job.phases)
            with pending.watch():  # Ctrl-C until the engine runs: every image not started
                await before_engine(
                    job.phases, projects, dests, preflight=preflight, quiet=quiet, parallel=parallel
                )
            results = await run_engine(
                job.phases,
                record,
                lock_output,
                quiet,
                parallel,
                job.load.send_bytes,
                limit_rate,
                repair=repair,
            )
            await after_push(results)
            results = await job.finish(results, parallel)
            if record is not None:  # written with these results: holes are in it
                record.seconds = job.seconds
            return results
        finally:
            await job.close()

    return execute(run, SideSettings(side="src"), dest_settings, record)


@click.command("imgpkg-tars")
@click.argument("archive", required=False, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--script",
    "script_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A publish-images-fromtar.sh (imgpkg copy --tar … --to-repo … lines).",
)
@click.option(
    "--tars",
    "tars_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Where the script's tars are (default: beside the script).",
)
@click.option(
    "--dest",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    metavar="PREFIX|REPO",
    help="Destination: the repository for one tar, the prefix for a directory or script.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the listing as JSON to FILE (atomically); verify --plan FILE re-checks the load.",
)
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
def plan_imgpkg_tars(
    archive: Path | None,
    script_file: Path | None,
    tars_dir: Path | None,
    dest: str | None,
    output: Path | None,
    verbose: int,
    quiet: bool,
) -> int:
    """What a `load` of imgpkg tars pushes, and the bytes de-duplication across tars saves.

    ARCHIVE is one imgpkg tar or a download-bundle directory; or give --script. Reads only
    the tars' manifest.json (and bundle layers); nothing is contacted.
    """
    setup_logging(verbose, quiet)
    targets = imgpkg_targets(archive, script_file, tars_dir, dest)
    if targets is None:
        if archive is not None and archive.is_dir():
            raise tar_folder_error(archive)
        raise UsageError(f"{archive}: not an imgpkg tar nor a download-bundle directory")
    load, doc = tar_listing(targets)
    try:
        if output is not None:
            write_atomic(output, json.dumps(doc, indent=2) + "\n")
        else:
            table = Table(title="imgpkg tars: what load pushes")
            for column in ("tar", "destination", "tags", "digest", "kind"):
                table.add_column(column)
            for row in load.rows:
                tags = ", ".join(t for t in row.tags if not t.endswith(".imgpkg")) or "-"
                table.add_row(Text(row.tar), row.destination, tags, row.digest.short, row.kind)
            Console().print(table)
        if not quiet:
            print(summary_line(load), file=sys.stderr)
    finally:
        for tar in load.tars:
            tar.release()
    return 0


async def save_tar_set(
    plan: Plan,
    prefix: str,
    source_for: EndpointFor,
    out_dir: Path,
    quiet: bool,
    held_back: Sequence[PlanEntry] = (),
    limit_rate: int | None = None,
) -> list[TaskResult]:
    """`save --format imgpkg-tars`, rendered: what was written, then each failure
    (`limit_rate`: `--limit-rate`, paced across every tar)."""
    outcome = await save_imgpkg_tars(
        plan, prefix, source_for, out_dir, held_back, rate_limit(limit_rate)
    )
    if not quiet:
        Console(stderr=True).print(
            f"wrote {outcome.written} of {outcome.tars} imgpkg tars, {FROMTAR_YAML} and "
            f"{FROMTAR_SCRIPT} to {out_dir}",
            **PLAIN,
        )
        for result in outcome.results:
            if result.error is not None:
                print(f"transship: error: {result.error}", file=sys.stderr)
    return outcome.results
