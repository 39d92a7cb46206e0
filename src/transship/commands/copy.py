"""`transship copy`: registry to registry, one image or a whole plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from transship.commands.common import (
    SHARD,
    BeforeEngine,
    before_engine,
    execute,
    load_plan_source,
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
from transship.connect import RegistryPool
from transship.engine import TaskResult
from transship.errors import UsageError
from transship.manifest import Platform
from transship.ops.tasks import copy_phases, single_entry, task_for, without_attachments
from transship.plan.model import Plan, PlanEntry
from transship.plan.shard import Shard
from transship.reference import without_userinfo
from transship.tkg.env import tkg_dest_defaults


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
@click.option(
    "--no-attachments",
    is_flag=True,
    help="Leave signatures, attestations and referrers behind (copied by default).",
)
@SHARD
@push_options
@project_options
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
    no_attachments: bool,
    repair: bool,
    shard: Shard | None,
    preflight: bool,
    limit_rate: int | None,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Copy images registry to registry, byte for byte, each blob once.

    Either SOURCE DESTINATION (one image or index; DESTINATION without a tag takes the
    source's tag, a source given by digest only is pushed by digest), or a whole set with
    --plan, --images or --script (with --shard I/N, only part I of N of it).
    """
    setup_logging(verbose, quiet)
    projects = project_settings(kwargs)
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
        if shard is not None:
            raise UsageError("--shard splits a plan: give --plan, --images or --script")
        if dest_prefix and _given_on_command_line("dest_prefix"):
            # TKG_CUSTOM_IMAGE_REPOSITORY set in the environment is no mistake; the option is.
            # DESTINATION is not parsed yet: quote it with any user:password@ masked
            shown = without_userinfo(destination) or destination
            raise UsageError(
                "--dest PREFIX applies to --plan, --images and --script; a single copy goes to "
                f"DESTINATION ({shown}): drop --dest, or write the prefix into DESTINATION"
            )
        single: Plan | None = Plan((single_entry(source, destination),))
        # resolved as a list is: a bundle brings its images, an image its attachments
        resolve = True
        cut = None
    else:
        if plan is None:
            raise UsageError("give SOURCE and DESTINATION, or one of --plan/--images/--script")
        if platforms:
            raise UsageError("--platform applies to a single SOURCE DESTINATION copy only")
        wanted = ()
        single = None
        # A list or an old script names tags only: resolve it like `transship plan` does, so
        # bundles are found by their label and copied with every image they reference.
        resolve = plan_file is None
        # A list is cut before it is resolved (each host resolves its part only): bundles,
        # their images and attachments all land in the repository they were listed for.
        plan, cut = shard_part(plan, shard, quiet)

    record = run_report_for(report)

    async def run(sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        chosen = single or plan
        assert chosen is not None
        held_back: list[PlanEntry] = []
        pending = BeforeEngine(record, quiet)
        with pending.watch():  # Ctrl-C until the engine runs: every entry not started
            pending.planned(copy_phases(chosen, sources.get, dests.get, wanted))  # as listed
            if resolve:
                chosen, held_back = await resolve_listed(
                    chosen, sources, parallel, quiet, attachments=not no_attachments
                )
            elif no_attachments:
                chosen = without_attachments(chosen)
            task_phases = copy_phases(chosen, sources.get, dests.get, wanted)
            pending.planned(task_phases)
            await before_engine(
                task_phases, projects, dests, preflight=preflight, quiet=quiet, parallel=parallel
            )
        account = None
        if cut is not None:
            from transship.ops.shard import ShardAccount  # --shard only

            account = ShardAccount(cut, sources.get, parallel, chosen)
        results = await run_engine(
            task_phases,
            record,
            lock_output,
            quiet,
            parallel,
            chosen.unique_bytes,
            limit_rate,
            account,
            repair=repair,
        )
        await after_push(results)
        for entry in held_back:  # counted as failed: the exit code says partial
            task = task_for(entry, sources.get, dests.get)
            results.append(TaskResult(task, "failed", error=UsageError(entry.source)))
        return results

    return execute(run, src_settings, dest_settings, record)


def _given_on_command_line(name: str) -> bool:
    context = click.get_current_context(silent=True)
    if context is None:
        return True
    return context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


COMMANDS = [copy]
