"""The command line: the `transship` group and the one place errors are rendered.

Each subcommand lives in `transship.commands`; errors reach `main` as `TransshipError`s and are
printed once: one line on stderr and the error's exit code (see README).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from transship import __version__
from transship.commands import all_commands
from transship.errors import ExitCode, TransshipError
from transship.harbor.advice import install as install_harbor_advice


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="transship")
def cli() -> None:
    """Bring container images into air-gapped OCI registries, byte for byte."""


for _command in all_commands():
    cli.add_command(_command)
install_harbor_advice()  # registries answer in their dialects; errors are rendered with that


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
