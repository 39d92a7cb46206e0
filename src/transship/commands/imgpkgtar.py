"""imgpkg tars on the command line: `load` of one tar, a from-tar script or a download-bundle
directory, and `plan imgpkg-tars` listing what such a load pushes and what de-duplication saves.

`load` (commands.archive) hands its arguments here first (`load_imgpkg_tars`); anything that is
not imgpkg input goes back to the OCI-archive path untouched.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from transship.commands.common import (
    execute,
    run_engine,
    setup_logging,
    write_report,
)
from transship.connect import RegistryPool, SideSettings
from transship.engine import CopyTask, TaskResult
from transship.errors import UsageError
from transship.fsutil import write_atomic
from transship.generated import GeneratedEndpoint
from transship.imgpkg.fromtar import (
    FROMTAR_YAML,
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
from transship.imgpkg.totar import FROMTAR_SCRIPT, tar_jobs, write_tar_set
from transship.plan.model import Plan, PlanEntry
from transship.progress import human_bytes
from transship.reference import Reference
from transship.relocate import EndpointFor
from transship.relocate import preflight as check_destinations

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
        raise UsageError("load needs an ARCHIVE (or --script publish-images-fromtar.sh)")
    if tars_dir is not None:
        raise UsageError("--tars goes with --script")
    if is_download_bundle_dir(archive):
        return targets_from_directory(archive, dest)
    if looks_like_imgpkg_tar(archive):
        return [single_target(archive, dest)]
    return None


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
) -> int:
    """Push every tar as one engine run; exit codes as `copy` (9 if the final check finds a
    hole)."""
    console = Console(stderr=True)

    async def run(_sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        start = time.monotonic()
        load = plan_load(targets, dests.get)
        planned = time.monotonic()
        try:
            if not quiet:
                console.print(summary_line(load))
            if preflight:
                await check_destinations(load.phases, parallel)
            results = await run_engine(load.phases, None, lock_output, quiet, parallel)
            pushed = time.monotonic()
            results = await check_complete(results, parallel)
            done = time.monotonic()
            log.info(
                "imgpkg tars: read in %.2f s, pushed in %.2f s, checked in %.2f s",
                planned - start,
                pushed - planned,
                done - pushed,
            )
            if report is not None:
                write_report(report, results, done - start)
            return results
        finally:
            await load.close()

    return execute(run, SideSettings(side="src"), dest_settings)


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
    help="Write the listing as JSON to FILE (atomically).",
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
        raise UsageError(f"{archive}: not an imgpkg tar nor a download-bundle directory")
    # nothing is contacted: a stand-in endpoint per destination registry
    load = plan_load(targets, lambda host: GeneratedEndpoint(label=host))
    try:
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
        if output is not None:
            write_atomic(output, json.dumps(doc, indent=2) + "\n")
        else:
            table = Table(title="imgpkg tars: what load pushes")
            for column in ("tar", "destination", "tags", "digest", "kind"):
                table.add_column(column)
            for row in load.rows:
                tags = ", ".join(t for t in row.tags if not t.endswith(".imgpkg")) or "-"
                table.add_row(row.tar, row.destination, tags, row.digest.short, row.kind)
            Console().print(table)
        if not quiet:
            print(summary_line(load), file=sys.stderr)
    finally:
        for tar in load.tars:
            tar.release()
    return 0


async def save_imgpkg_tars(
    plan: Plan,
    prefix: str,
    source_for: EndpointFor,
    out_dir: Path,
    quiet: bool,
    held_back: Sequence[PlanEntry] = (),
) -> list[TaskResult]:
    """`save --format imgpkg-tars`: one imgpkg tar per entry, plus the from-tar YAML and
    script; one result per tar (and a failure per bundle that could not be expanded), so the
    exit code is `save`'s."""
    if out_dir.suffix == ".tar":
        raise UsageError(f"{out_dir}: --format imgpkg-tars writes a directory of tars")
    jobs = tar_jobs(plan, prefix, source_for)
    written = await write_tar_set(jobs, out_dir, prefix)
    where = GeneratedEndpoint(label=f"imgpkg-tars:{out_dir}")
    results = []
    for job, error in written:
        source = job.sources[0]
        task = CopyTask(
            source=source.endpoint,
            source_repository=source.repository,
            source_identifier=source.identifier,
            dest=where,
            dest_repository=job.relative,
            label=f"{job.entry.source} -> {out_dir / job.name}",
            source_label=job.entry.source,
            dest_label=str(out_dir / job.name),
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
            label=entry.source,
        )
        error = UsageError(f"bundle {entry.source} could not be expanded")
        results.append(TaskResult(task, "failed", error=error))
    if not quiet:
        failed = sum(1 for r in results if r.status == "failed")
        Console(stderr=True).print(
            f"wrote {len(jobs) - failed} of {len(jobs)} imgpkg tars, {FROMTAR_YAML} and "
            f"{FROMTAR_SCRIPT} to {out_dir}"
        )
        for result in results:
            if result.error is not None:
                print(f"transship: error: {result.error}", file=sys.stderr)
    return results
