"""`transship verify`: is everything a plan promised at the destination, byte for byte?

Run it after `copy` or `load`, before pointing TKG at the registry: a missing child of an index
or a tag that moved shows up here, not as an ImagePullBackOff on a half-created cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import click

from transship.commands.common import (
    REPORT_FILE,
    SHARD,
    load_plan_source,
    parallel_option,
    plan_source_options,
    run_verify,
    setup_logging,
    shard_part,
    side_options,
    side_settings,
)
from transship.commands.rendering import print_result, wide_console
from transship.errors import ExitCode, UsageError, exit_code_of
from transship.fsutil import write_atomic
from transship.ops.verify import VerifyOptions
from transship.plan.shard import Shard
from transship.tkg.env import tkg_dest_defaults


@click.command()
@plan_source_options
@side_options("dest", "destination")
@side_options("src", "source")
@click.option(
    "--deep",
    is_flag=True,
    help="Also HEAD every blob of every manifest (config and layers).",
)
@click.option(
    "--no-resolve",
    is_flag=True,
    help="Do not ask the source for digests the plan lacks: check those entries for presence.",
)
@click.option(
    "--no-attachments",
    is_flag=True,
    help="Do not check signatures, attestations and referrers (for a copy --no-attachments).",
)
@SHARD
@parallel_option(32, "Requests in flight at once.")
@click.option(
    "--report",
    **REPORT_FILE,
    help="Write a JSON report: per entry the expected digest, status and every problem.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No table or summary: only the exit code.")
def verify(
    plan_file: Path | None,
    images_file: Path | None,
    script_file: Path | None,
    dest_prefix: str | None,
    deep: bool,
    no_resolve: bool,
    no_attachments: bool,
    shard: Shard | None,
    parallel: int,
    report: Path | None,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Check that every planned image is at the destination with the planned digest.

    For every entry of --plan, --images or --script: each planned tag exists and names the
    expected digest (the plan's sourceDigest, else the source's current digest, read with the
    --src-* options); every child of an index is there (HEAD by digest); with --deep every blob
    of every manifest is there too. Bundles are checked like images; the images a bundle
    references are checked as the plan's bundle-referenced entries. A list or script is first
    resolved as copy resolves it, so the images of its bundles and the signatures, attestations
    and referrers of its images are checked too (--no-resolve: only what is listed).

    After a sharded copy (--shard I/N on N hosts), verify the whole plan (no --shard): exit 0
    proves every shard finished; --shard I/N checks one part.

    Exit 0 when everything is there, 9 when anything is missing or different (the table and
    --report say what), or the usual error code when the registry cannot be checked at all.
    """
    setup_logging(verbose, quiet)
    dest_settings = tkg_dest_defaults(side_settings("dest", kwargs, parallel))
    src_settings = side_settings("src", kwargs, parallel)
    plan = load_plan_source(plan_file, images_file, script_file, dest_prefix, listing_ok=True)
    if plan is None:
        raise UsageError("give what to verify: --plan FILE, --images FILE or --script FILE")
    plan, _ = shard_part(plan, shard, quiet)  # one host's part; without --shard, all of it
    options = VerifyOptions(deep=deep, resolve=not no_resolve, parallel=parallel)
    # A list or old script is resolved as copy resolves it: what copy brought is checked.
    listed = plan_file is None and not no_resolve
    try:
        result = asyncio.run(
            run_verify(
                plan,
                src_settings,
                dest_settings,
                options,
                listed=listed,
                attachments=not no_attachments,
                quiet=quiet,
            )
        )
    except BaseException as exc:  # the registry could not be checked: the report says so
        if report is not None:
            with contextlib.suppress(Exception):  # never hide the run's own error behind it
                write_atomic(report, json.dumps(unchecked_report(exc), indent=2) + "\n")
        raise
    code = ExitCode.OK if result.complete else ExitCode.INCOMPLETE
    if report is not None:
        doc = {"version": 1, "exitCode": int(code), **result.to_dict()}
        write_atomic(report, json.dumps(doc, indent=2) + "\n")
    if not quiet:
        print_result(result, wide_console(stderr=False))
    return code


def unchecked_report(exc: BaseException) -> dict[str, Any]:
    """The report of a verify that ended before it could tell: its exit code and why, so a
    script reading the file never takes an old or missing answer for this run's."""
    return {
        "version": 1,
        "exitCode": exit_code_of(exc),
        "complete": False,
        "interrupted": isinstance(exc, KeyboardInterrupt),
        "error": str(exc) or type(exc).__name__,
        "entries": [],
    }


COMMANDS = [verify]
