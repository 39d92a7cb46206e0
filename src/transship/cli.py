"""The command line: parses options, builds endpoints, runs the engine, renders the outcome.

Errors are rendered here, once: one line on stderr and the error's exit code (see README).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from transship import __version__
from transship.connect import RegistryPool, SideSettings, tkg_dest_defaults
from transship.engine import CopyEngine, CopyTask, EngineOptions, TaskResult
from transship.errors import ExitCode, TransshipError, UsageError
from transship.fsutil import write_atomic
from transship.manifest import Platform
from transship.plan._yaml import read_text
from transship.plan.imagelist import load_image_list
from transship.plan.model import Plan, PlanEntry
from transship.plan.oldscript import load_old_script
from transship.progress import LogObserver, RichObserver, summary_table
from transship.reference import Reference
from transship.relocate import phases, task_for, write_images_lock

F = TypeVar("F", bound=Callable[..., Any])


def side_options(side: str, what: str) -> Callable[[F], F]:
    """The TLS / auth options of one side: `--src-ca`, `--dest-creds`, …"""
    env = side.upper()

    def decorate(func: F) -> F:
        options = [
            click.option(
                f"--{side}-ca",
                metavar="FILE|BASE64",
                help=f"CA certificate of the {what} registry: a PEM file or its base64 (TKG form).",
            ),
            click.option(
                f"--{side}-insecure",
                is_flag=True,
                help=f"Do not verify the {what} registry's TLS certificate.",
            ),
            click.option(
                f"--{side}-plain-http",
                is_flag=True,
                help=f"Talk plain HTTP to the {what} registry (loopback falls back by itself).",
            ),
            click.option(
                f"--{side}-creds",
                metavar="USER:PASSWORD",
                envvar=f"TRANSSHIP_{env}_CREDS",
                show_envvar=True,
                help=f"Credentials for the {what} registry (default: ~/.docker/config.json).",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _settings(side: str, kwargs: dict[str, Any], connections: int) -> SideSettings:
    return SideSettings(
        side=side,
        ca=kwargs.pop(f"{side}_ca"),
        insecure=kwargs.pop(f"{side}_insecure"),
        plain_http=kwargs.pop(f"{side}_plain_http"),
        creds=kwargs.pop(f"{side}_creds"),
        max_connections=connections,
    )


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="transship")
def cli() -> None:
    """Bring container images into air-gapped OCI registries, byte for byte."""


@cli.command()
@click.argument("source", required=False)
@click.argument("destination", required=False)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Copy every entry of a plan file (transship plan -o).",
)
@click.option(
    "--images",
    "images_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Copy every image of a list (one reference per line, # comments).",
)
@click.option(
    "--script",
    "script_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Copy what a gen-publish-images.sh output file would have copied.",
)
@click.option(
    "--dest",
    "dest_prefix",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    metavar="PREFIX",
    help="Destination prefix for --images/--script: each image keeps its path below it.",
)
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
    _setup_logging(verbose, quiet)
    src_settings = _settings("src", kwargs, parallel)
    dest_settings = tkg_dest_defaults(_settings("dest", kwargs, parallel))
    chosen = [x for x in (plan_file, images_file, script_file) if x is not None]
    if source is not None or destination is not None:
        if chosen or source is None or destination is None:
            raise UsageError("give SOURCE and DESTINATION, or one of --plan/--images/--script")
        try:
            wanted = tuple(Platform.parse(p) for p in platforms)
        except ValueError as exc:
            raise UsageError(f"--platform: {exc}") from None
        plan_phases = [[_single_entry(source, destination)]]
    else:
        if len(chosen) != 1:
            raise UsageError("give SOURCE and DESTINATION, or one of --plan/--images/--script")
        if platforms:
            raise UsageError("--platform applies to a single SOURCE DESTINATION copy only")
        wanted = ()
        plan_phases = phases(_load_plan(plan_file, images_file, script_file, dest_prefix))

    async def run(sources: RegistryPool, dests: RegistryPool) -> list[TaskResult]:
        task_phases = [
            [replace(task_for(e, sources.get, dests.get), platforms=wanted) for e in group]
            for group in plan_phases
        ]
        return await _run_engine(task_phases, report, lock_output, quiet, parallel)

    return _execute(run, src_settings, dest_settings)


def _single_entry(source: str, destination: str) -> PlanEntry:
    src = Reference.parse(source)
    dst = Reference.parse(destination)
    if dst.digest is not None:
        raise UsageError(f"destination {destination!r} must not carry a digest (it is kept)")
    tag = dst.tag or (src.tag if src.digest is None or src.tag else None)
    return PlanEntry.create(str(src), dst.name, tags=(tag,) if tag else ())


def _load_plan(
    plan_file: Path | None, images_file: Path | None, script_file: Path | None, prefix: str | None
) -> Plan:
    if plan_file is not None:
        return Plan.from_yaml(read_text(plan_file), str(plan_file))
    if images_file is not None:
        if not prefix:
            raise UsageError("--images needs --dest PREFIX (or TKG_CUSTOM_IMAGE_REPOSITORY)")
        return load_image_list(images_file, prefix)
    assert script_file is not None
    return load_old_script(script_file, prefix)


def _execute(
    body: Callable[[RegistryPool, RegistryPool], Any],
    src_settings: SideSettings,
    dest_settings: SideSettings,
) -> int:
    async def main() -> list[TaskResult]:
        sources = RegistryPool(src_settings)
        dests = RegistryPool(dest_settings)
        try:
            result: list[TaskResult] = await body(sources, dests)
            return result
        finally:
            await sources.close()
            await dests.close()

    results = asyncio.run(main())
    return exit_code_for(results)


async def _run_engine(
    task_phases: Sequence[Sequence[CopyTask]],
    report: Path | None,
    lock_output: Path | None,
    quiet: bool,
    parallel: int,
) -> list[TaskResult]:
    console = Console(stderr=True)
    total = sum(len(p) for p in task_phases)
    observer: RichObserver | LogObserver
    if console.is_terminal and not quiet:
        observer = RichObserver(console, total)
    else:
        observer = LogObserver(total, quiet=quiet)
    engine = CopyEngine(EngineOptions(parallel_images=parallel), observer)
    start = time.monotonic()
    results: list[TaskResult] = []
    with observer:
        for tasks in task_phases:
            results += await engine.run(tasks)
    seconds = time.monotonic() - start
    if report is not None:
        write_report(report, results, seconds)
    if lock_output is not None:
        write_images_lock(lock_output, results)
    if not quiet:
        console.print(summary_table(results, engine.stats, seconds))
    return results


def write_report(path: Path, results: Sequence[TaskResult], seconds: float) -> None:
    entries = [
        {
            "source": r.task.source_label,
            "destination": r.task.dest_label,
            "digest": str(r.digest) if r.digest else None,
            "status": r.status,
            "bytes": r.bytes_sent,
            "seconds": round(r.seconds, 3),
            "error": str(r.error) if r.error else None,
        }
        for r in results
    ]
    doc = {"version": 1, "seconds": round(seconds, 3), "entries": entries}
    write_atomic(path, json.dumps(doc, indent=2) + "\n")


def exit_code_for(results: Sequence[TaskResult]) -> int:
    """0 if all went well; a single failure keeps its own code; otherwise partial (2)."""
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return ExitCode.OK
    if len(results) == 1 and failed[0].error is not None:
        error = failed[0].error
        print(f"transship: error: {error}", file=sys.stderr)
        return int(error.exit_code)
    return ExitCode.PARTIAL


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: no tracebacks for user mistakes, one line and a distinct exit code."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except TransshipError as exc:
        print(f"transship: error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        print("transship: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:
        print(f"transship: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))
    except KeyboardInterrupt:
        print("transship: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code) if isinstance(code, int) else 0)
