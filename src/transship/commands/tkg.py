"""`transship tkg config`: the exact settings that point TKG at the relocated registry.

Emitted only after checking that the destination holds what TKG will ask for, because TKG fails
late and obscurely (a management cluster half-created, an ImagePullBackOff) when it does not.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from transship.commands.common import (
    load_plan_source,
    parallel_option,
    run_verify,
    setup_logging,
    side_options,
    side_settings,
)
from transship.commands.rendering import PLAIN, print_result, wide_console
from transship.connect import RegistryPool, SideSettings
from transship.errors import IncompleteError, TransshipError
from transship.ops.verify import VerifyOptions
from transship.plan.model import Plan
from transship.reference import Reference, parse_prefix
from transship.remote.tls import load_ca
from transship.tkg.ca import refuse_private_key, tkg_ca_form
from transship.tkg.config import (
    CA_CERTIFICATE_KEY,
    COMPATIBILITY_PATH_KEY,
    DEFAULT_COMPATIBILITY_PATH,
    REPOSITORY_KEY,
    SKIP_TLS_VERIFY_KEY,
    TkgSettings,
    compatibility_repository,
    require_tkg_release,
    write_cluster_config,
)
from transship.tkg.env import tkg_dest_defaults

FORCE_HINT = "copy or load the missing content first, or pass --force to emit the settings anyway"


@click.group("tkg")
def tkg_group() -> None:
    """Point Tanzu Kubernetes Grid at a relocated registry."""


@tkg_group.command("config")
@click.option(
    "--dest",
    "dest",
    envvar=REPOSITORY_KEY,
    show_envvar=True,
    required=True,
    metavar="HOST/PROJECT",
    help="The relocated prefix (what TKG_CUSTOM_IMAGE_REPOSITORY will hold).",
)
@click.option(
    "--ca",
    "--dest-ca",
    "ca",
    envvar=CA_CERTIFICATE_KEY,
    show_envvar=True,
    metavar="FILE|BASE64",
    help="The registry's CA: a PEM file or its base64; emitted as base64, used for the check.",
)
@click.option(
    "--skip-tls-verify",
    "--dest-insecure",
    "skip_tls_verify",
    is_flag=True,
    help="Tell TKG (and the check) not to verify the registry's certificate "
    f"(also when {SKIP_TLS_VERIFY_KEY}=true, as for verify, copy and load).",
)
@click.option(
    "--dest-creds",
    metavar="USER:PASSWORD",
    envvar="TRANSSHIP_DEST_CREDS",
    show_envvar=True,
    help="Credentials for the check (default: ~/.docker/config.json). Never emitted.",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path),
    help="Check this plan (or the plan an archive carries) is complete at the destination "
    "first (as transship verify).",
)
@click.option(
    "--images",
    "images_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check this image list (kept below --dest) first.",
)
@click.option(
    "--script",
    "script_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check what this gen-publish-images.sh output copies first.",
)
@side_options("src", "source")
@click.option(
    "--no-resolve",
    is_flag=True,
    help="Entries without a digest in the plan: check presence only, do not ask the source.",
)
@click.option(
    "--compatibility-path",
    envvar=COMPATIBILITY_PATH_KEY,
    show_envvar=True,
    default=DEFAULT_COMPATIBILITY_PATH,
    show_default=True,
    help="Where TKG finds tkg-compatibility, relative to --dest (emitted when not the default).",
)
@click.option(
    "--write-cluster-config",
    "cluster_config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Set the keys in this cluster configuration YAML (comments and other keys are kept) "
    "instead of printing tanzu commands.",
)
@click.option("--force", is_flag=True, help="Emit the settings even if the check fails.")
@parallel_option(32, "Requests in flight at once.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only the settings (and errors).")
def tkg_config(
    dest: str,
    ca: str | None,
    skip_tls_verify: bool,
    dest_creds: str | None,
    plan_file: Path | None,
    images_file: Path | None,
    script_file: Path | None,
    no_resolve: bool,
    compatibility_path: str,
    cluster_config: Path | None,
    force: bool,
    parallel: int,
    verbose: int,
    quiet: bool,
    **kwargs: Any,
) -> int:
    """Print the `tanzu config set env.…` commands for TKG_CUSTOM_IMAGE_REPOSITORY,
    _SKIP_TLS_VERIFY and _CA_CERTIFICATE (or write them into a cluster configuration file).

    Before anything is emitted the destination is checked, with the same trust and credentials:
    with --plan/--images/--script, every entry must be there with its digest (as transship
    verify); without, DEST/tkg-compatibility must have a v<N> tag, which is the first thing TKG
    reads. If the check fails the settings are refused (exit 9, or the connection error's own
    code) unless --force, which turns the failure into a warning.

    Standard output holds only the commands, so `transship tkg config … | sh` applies them.
    """
    setup_logging(verbose, quiet)
    repository = parse_prefix(dest, "--dest", need_path=True)
    # TKG's own variables are destination defaults exactly as for verify, copy and load; what
    # is emitted is what the check used, so --force never turns the operator's `true` to false
    dest_settings = tkg_dest_defaults(
        SideSettings(
            side="dest",
            ca=ca,
            insecure=skip_tls_verify,
            creds=dest_creds,
            max_connections=parallel,
        )
    )
    ca_base64: str | None = None
    if dest_settings.ca:
        bundle = load_ca(dest_settings.ca, given_as=dest_settings.ca_from or "--ca")
        refuse_private_key(bundle)
        ca_base64 = tkg_ca_form(bundle)
    settings = TkgSettings(
        repository, dest_settings.insecure, ca_base64, compatibility_path.strip("/")
    )
    compatibility = compatibility_repository(settings)
    plan = load_plan_source(  # a plan elsewhere is refused by _check_plan: exit 9
        plan_file, images_file, script_file, repository, plan_below_prefix=False, listing_ok=True
    )
    if plan is not None and plan.destination_prefix:  # e.g. the plan an archive carried
        plan = plan.rerooted(repository)  # moved below --dest as `load --dest` moved it
    src_settings = side_settings("src", kwargs, parallel)
    console = Console(stderr=True)
    try:
        if plan is not None:
            _check_plan(plan, repository, src_settings, dest_settings, no_resolve, parallel, quiet)
        else:
            tag = asyncio.run(_check_release(dest_settings, compatibility))
            if not quiet:
                console.print(
                    f"transship: checked: {compatibility.name}:{tag} is there (TKG reads it first)",
                    **PLAIN,
                )
    except TransshipError as exc:
        if not force:
            raise
        console.print(
            f"transship: warning: {exc.message}; emitting the settings anyway (--force)",
            **PLAIN,
        )
    if cluster_config is not None:
        keys = write_cluster_config(cluster_config, settings)
        if not quiet:
            console.print(
                f"transship: set {', '.join(keys)} in {cluster_config}",
                **PLAIN,
            )
    else:
        for line in settings.tanzu_commands():
            click.echo(line)
    return 0


def _check_plan(
    plan: Plan,
    repository: str,
    src_settings: SideSettings,
    dest_settings: SideSettings,
    no_resolve: bool,
    parallel: int,
    quiet: bool,
) -> None:
    """The plan must be complete at the destination, and it must be the destination's plan."""
    prefix = repository + "/"
    inside = [e for e in plan.entries if e.destination.startswith(prefix)]
    if plan.entries and not inside:
        raise IncompleteError(
            f"none of the plan's {len(plan.entries)} entries go below {repository} "
            f"(e.g. {plan.entries[0].destination})",
            hint="give the --dest the plan was copied to",
        )
    options = VerifyOptions(resolve=not no_resolve, parallel=parallel)
    result = asyncio.run(run_verify(plan, src_settings, dest_settings, options))
    console = wide_console(stderr=True)
    if not result.complete:
        print_result(result, console)
        raise IncompleteError(f"the destination is incomplete: {result.summary()}", hint=FORCE_HINT)
    if not quiet:
        console.print(f"transship: checked: {result.summary()}", **PLAIN)


async def _check_release(dest_settings: SideSettings, compatibility: Reference) -> str:
    pool = RegistryPool(dest_settings)
    try:
        return await require_tkg_release(pool.get(compatibility.registry), compatibility)
    finally:
        await pool.close()


COMMANDS = [tkg_group]
