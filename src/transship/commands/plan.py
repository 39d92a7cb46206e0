"""`transship plan …`: work out what to copy, and how much, before copying.

Every subcommand ends the same way: the plan is resolved against the source registries (digests,
sizes, bundle detection and expansion, attached signatures/attestations/referrers unless
`--no-attachments`) unless `--no-resolve`, written with `-o` (atomically) or
printed to stdout, and summarised for people on stderr. `transship copy --plan FILE` consumes it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from transship.commands.common import (
    OUTPUT_FILE,
    parallel_option,
    setup_logging,
    side_options,
    side_settings,
)
from transship.commands.imgpkgtar import plan_imgpkg_tars
from transship.connect import RegistryPool
from transship.errors import ExitCode, UsageError
from transship.fsutil import write_atomic
from transship.plan._yaml import MAX_PLAN_BYTES
from transship.plan.imagelist import load_image_list
from transship.plan.model import NOT_REGISTRY_NOTE, EntryKind, Plan
from transship.plan.reader import ResolveOptions
from transship.plan.resolve import Resolution, resolve_plan, unresolved
from transship.progress import human_bytes
from transship.tkg.bom import DEFAULT_SOURCE_PREFIX
from transship.tkg.release import TkgRelease, plan_from_files, plan_tkg_release
from transship.tkg.script import load_old_script

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _common_options(func: F) -> F:
    """Output, resolution and source-registry options every `plan` subcommand takes."""
    options = [
        click.option(
            "-o",
            "--output",
            **OUTPUT_FILE,
            help="Write the plan to FILE (atomically) instead of stdout.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["yaml", "json"]),
            default="yaml",
            show_default=True,
            help="Plan format.",
        ),
        click.option(
            "--no-resolve",
            is_flag=True,
            help="Do not ask the registries: no digests, sizes or bundle expansion.",
        ),
        click.option(
            "--no-attachments",
            is_flag=True,
            help="Leave signatures, attestations, SBOMs and other OCI referrers (cosign's "
            "sha256-<hex>.sig/.att/.sbom tags, referrers API and tag schema) behind.",
        ),
        click.option(
            "--keep-going",
            is_flag=True,
            help="Turn per-image failures into warnings and list them as gaps (exit code 2).",
        ),
        parallel_option(16, "Registry requests in flight."),
        click.option("-v", "--verbose", count=True, help="More logging (-vv for debug)."),
        click.option("-q", "--quiet", is_flag=True, help="No summary or warnings, only errors."),
    ]
    func = side_options("src", "source")(func)
    for option in reversed(options):
        func = option(func)
    return func


#: `plan tkg` and `plan bom`: where TKG's images go, as its own variable names it
_TKG_DEST = click.option(
    "--dest",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    required=True,
    metavar="PREFIX",
    help="Destination prefix (env TKG_CUSTOM_IMAGE_REPOSITORY).",
)


@click.group()
def plan() -> None:
    """Write a reviewable plan: every image to copy, where it goes, digests and sizes."""


@plan.command("tkg")
@click.option(
    "--source",
    envvar="TKG_IMAGE_REPO",
    default=DEFAULT_SOURCE_PREFIX,
    show_default=True,
    metavar="REPO",
    help="Registry prefix holding tkg-compatibility, tkg-bom, … (env TKG_IMAGE_REPO).",
)
@click.option("--tkg-version", required=True, metavar="VERSION", help="TKG version, e.g. v1.5.3.")
@_TKG_DEST
@click.option(
    "--tkr",
    "tkrs",
    multiple=True,
    metavar="VERSION",
    help="Only these TKRs (repeatable; the default TKR is always included).",
)
@click.option(
    "--all-tkrs",
    is_flag=True,
    help="Every v* tag of tkr-bom and both compatibility repositories (the old script's walk).",
)
@_common_options
def plan_tkg(
    source: str,
    tkg_version: str,
    dest: str,
    tkrs: tuple[str, ...],
    all_tkrs: bool,
    **kwargs: Any,
) -> int:
    """A TKG release, read from the registry the way TKG reads it.

    tkg-compatibility (highest vN) → tkg-bom:VERSION → tkr-compatibility (highest vN) → each
    tkr-bom, then every image of every BOM under --dest, bundles expanded.
    """
    if tkrs and all_tkrs:
        raise UsageError("give --tkr or --all-tkrs, not both")
    release = TkgRelease(source, tkg_version, dest, tkrs, all_tkrs)
    return _run(
        lambda pool, options: plan_tkg_release(
            release, pool.get, options, resolve=not kwargs["no_resolve"]
        ),
        kwargs,
    )


@plan.command("images")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dest",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    required=True,
    metavar="PREFIX",
    help="Destination prefix; each image keeps its path below it.",
)
@_common_options
def plan_images(file: Path, dest: str, **kwargs: Any) -> int:
    """An image list: one reference per line, # comments."""
    return _resolve_offline_plan(load_image_list(file, dest), kwargs)


@plan.command("script")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dest",
    envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
    metavar="PREFIX",
    help="Destination prefix for --to-tar exports that no line imports.",
)
@_common_options
def plan_script(file: Path, dest: str | None, **kwargs: Any) -> int:
    """The output of gen-publish-images.sh (imgpkg copy lines), without its duplicates."""
    return _resolve_offline_plan(load_old_script(file, dest), kwargs)


@plan.command("bom")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_TKG_DEST
@click.option(
    "--source",
    envvar="TKG_IMAGE_REPO",
    metavar="PREFIX",
    help="Read from this prefix instead of the BOMs' imageRepository (env TKG_IMAGE_REPO).",
)
@_common_options
def plan_bom(files: tuple[Path, ...], dest: str, source: str | None, **kwargs: Any) -> int:
    """BOM files: one TKG BOM, its TKR BOMs and compatibility files, in any order."""
    return _resolve_offline_plan(plan_from_files(files, dest, source), kwargs)


# --- shared -------------------------------------------------------------------------------


def _resolve_offline_plan(offline: Plan, kwargs: dict[str, Any]) -> int:
    if kwargs["no_resolve"]:
        return _finish(unresolved(offline), kwargs)
    return _run(lambda pool, options: resolve_plan(offline, pool.get, options), kwargs)


def _run(
    body: Callable[[RegistryPool, ResolveOptions], Awaitable[Resolution]], kwargs: dict[str, Any]
) -> int:
    """Open the source registries, run `body`, close them, then write and summarise."""
    setup_logging(kwargs["verbose"], kwargs["quiet"])
    settings = side_settings("src", kwargs, kwargs["parallel"])
    options = ResolveOptions(
        parallel=kwargs["parallel"],
        keep_going=kwargs["keep_going"],
        attachments=not kwargs["no_attachments"],
    )

    async def main() -> Resolution:
        pool = RegistryPool(settings)
        try:
            return await body(pool, options)
        finally:
            await pool.close()

    return _finish(asyncio.run(main()), kwargs)


def _finish(resolution: Resolution, kwargs: dict[str, Any]) -> int:
    plan = resolution.plan
    text = plan.to_json() if kwargs["fmt"] == "json" else plan.to_yaml()
    if len(text.encode()) > MAX_PLAN_BYTES:  # copy/save/verify --plan would refuse it
        raise UsageError(
            f"the plan of {len(plan.entries)} entries is {len(text.encode())} bytes, more than "
            f"the {MAX_PLAN_BYTES} a plan file may have; plan the list in parts"
        )
    output: Path | None = kwargs["output"]
    if output is not None:
        write_atomic(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not kwargs["quiet"]:
        searched = not (kwargs["no_resolve"] or kwargs["no_attachments"])
        _summarise(resolution, output, searched)
    return int(ExitCode.PARTIAL) if plan.gaps else int(ExitCode.OK)


def _summarise(resolution: Resolution, output: Path | None, attachments: bool = True) -> None:
    """Warnings, gaps, non-registry content and the totals table, for people, on stderr."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    plan = resolution.plan
    for warning in resolution.warnings:
        console.print(f"transship: warning: {warning}", markup=False)
    for gap in plan.gaps:
        what = gap.reason if gap.source in gap.reason else f"{gap.source}: {gap.reason}"
        console.print(f"transship: gap: {what}", markup=False)
    if plan.not_registry_content:
        console.print(f"{NOT_REGISTRY_NOTE}:", markup=False)
        for artifact in plan.not_registry_content:
            console.print(f"  {artifact.kind}: {artifact.name}", markup=False)
    console.print(totals_table(resolution, attachments))
    if output is not None:
        console.print(f"plan written to {output}", markup=False)


def totals_table(resolution: Resolution, attachments: bool = True) -> Table:
    """Entries, repositories, bundles, attachments, and bytes: unique versus image-by-image.

    `attachments`: whether they were looked for, so that none found and none asked for differ.
    """
    totals = resolution.totals
    plan = resolution.plan
    table = Table(title="plan", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("entries", str(totals.entries))
    table.add_row("repositories", str(totals.repositories))
    table.add_row("bundles", str(totals.bundles))
    expanded = sum(1 for e in plan.entries if e.kind is EntryKind.BUNDLE_REFERENCED)
    if expanded:
        table.add_row("images referenced by bundles", str(expanded))
    locations = sum(1 for e in plan.entries if e.kind is EntryKind.IMAGE_LOCATIONS)
    if locations:
        table.add_row("ImageLocations records", str(locations))
    if attachments or totals.attachments:
        table.add_row("attachments", str(totals.attachments))
    else:
        table.add_row("attachments", "not looked for")
    if totals.blobs is not None and totals.bytes is not None and totals.naive_bytes is not None:
        table.add_row("unique blobs", str(totals.blobs))
        table.add_row("bytes to copy (each blob once)", human_bytes(totals.bytes))
        table.add_row("bytes image by image", human_bytes(totals.naive_bytes))
        table.add_row("saved by de-duplication", human_bytes(totals.saved_bytes or 0))
    else:
        table.add_row("bytes", "unknown (not resolved)")
    if plan.gaps:
        table.add_row("gaps", str(len(plan.gaps)))
    return table


COMMANDS = [plan]


plan.add_command(plan_imgpkg_tars)  # transship.commands.imgpkgtar
