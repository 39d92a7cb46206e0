"""`transship copy`: registry to registry, one image or a whole plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from transship.commands.common import (
    execute,
    load_plan_source,
    plan_source_options,
    run_engine,
    setup_logging,
    side_options,
    side_settings,
)
from transship.connect import RegistryPool, tkg_dest_defaults
from transship.engine import TaskResult
from transship.errors import UsageError
from transship.manifest import Platform
from transship.plan.model import PlanEntry
from transship.reference import Reference
from transship.relocate import phases, task_for


@click.command()
@click.argument("source", required=False)
@click.argument("destination", required=False)
@plan_source_options
@side_options("src", "source")
@side_options("dest", "destination")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="From a multi-arch index copy only this platform's image (as crane does).",
)
@click.option("--parallel", default=16, show_default=True, help="Images in flight at once.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JSON report: per entry source, destination, digest, status, bytes.",
)
@click.option(
    "--lock-output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write an imgpkg ImagesLock of the relocated references.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def copy(
    source: str | None,
    destination: str | None,
    plan_file: Path | None,
    images_file: Path | None,
    script_file: Path | None,
    dest_prefix: str | None,
    platforms: tuple[str, ...],
    parallel: int,
    report: Path | None,
    lock_output: Path | None,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Copy images registry to registry, byte for byte, each blob once.

    Either SOURCE DESTINATION (one image or index; DESTINATION without a tag takes the
    source's tag, a source given by digest only is pushed by digest), or a whole set with
    --plan, --images or --script.
    """
    setup_logging(verbose, quiet)
    src_settings = side_settings("src", kwargs, parallel)
    dest_settings = tkg_dest_defaults(side_settings("dest", kwargs, parallel))
    plan = load_plan_source(plan_file, images_file, script_file, dest_prefix)
    if source is not None or destination is not None:
        if plan is not None or source is None or destination is None:
            raise UsageError("give SOURCE and DESTINATION, or one of --plan/--images/--script")
        try:
            wanted = tuple(Platform.parse(p) for p in platforms)
        except ValueError as exc:
            raise UsageError(f"--platform: {exc}") from None
        plan_phases = [[_single_entry(source, destination)]]
    else:
        if plan is None:
            raise UsageError("give SOURCE and DESTINATION, or one of --plan/--images/--script")
        if platforms:
            raise UsageError("--platform applies to a single SOURCE DESTINATION copy only")
        wanted = ()
        plan_phases = phases(plan)

    async def run(sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        task_phases = [
            [replace(task_for(e, sources.get, dests.get), platforms=wanted) for e in group]
            for group in plan_phases
        ]
        return await run_engine(task_phases, report, lock_output, quiet, parallel)

    return execute(run, src_settings, dest_settings)


def _single_entry(source: str, destination: str) -> PlanEntry:
    src = Reference.parse(source)
    dst = Reference.parse(destination)
    if dst.digest is not None:
        raise UsageError(f"destination {destination!r} must not carry a digest (it is kept)")
    tag = dst.tag or (src.tag if src.digest is None or src.tag else None)
    return PlanEntry.create(str(src), dst.name, tags=(tag,) if tag else ())


COMMANDS = [copy]
