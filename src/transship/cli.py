"""The command line: the `transship` group and the one place errors are rendered.

Each subcommand lives in `transship.commands`; errors reach `main` as `TransshipError`s and are
printed once: one line on stderr and the error's exit code (see README).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from transship.buildinfo import adopt_system_roots, import_http_client, version_line
from transship.commands import all_commands, command
from transship.errors import ExitCode, TransshipError, as_outcome
from transship.harbor.advice import install as install_harbor_advice


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit()


class _Commands(click.Group):
    """Imports the subcommands on first use: `--version` starts without loading aiohttp & co.,
    and running one command imports that command's module only (start-up counts in a no-op
    rerun); `--help` and a misspelt name load them all."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import_http_client()
            for found in all_commands():
                self.add_command(found)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if not self._loaded and cmd_name not in self.commands:
            import_http_client()  # before a command module imports it
            found = command(cmd_name)
            if found is not None:
                self.add_command(found)
        if cmd_name not in self.commands:
            self._load()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Caches (they only save work) are kept in $XDG_CACHE_HOME/transship, else "
    "~/.cache/transship; TRANSSHIP_NO_CACHE=1 turns them off.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and the commit it was built from.",
)
def cli() -> None:
    """Bring container images into air-gapped OCI registries, byte for byte."""


install_harbor_advice()  # registries answer in their dialects; errors are rendered with that


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: no tracebacks for user mistakes, one line and a distinct exit code."""
    adopt_system_roots()
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:  # click's own Ctrl-C (at a prompt)
        outcome = as_outcome(KeyboardInterrupt())
    except click.ClickException as exc:
        outcome = int(ExitCode.USAGE), f"error: {exc.format_message()}"
    except (TransshipError, KeyboardInterrupt, OSError) as exc:
        outcome = as_outcome(exc)
    else:
        sys.exit(int(code) if isinstance(code, int) else 0)
    assert outcome is not None
    exit_code, line = outcome
    print(f"transship: {line}", file=sys.stderr)
    sys.exit(exit_code)
