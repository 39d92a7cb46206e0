"""Subcommands: each module defines `COMMANDS`, a list of click commands the CLI registers."""

from __future__ import annotations

import importlib
import pkgutil

import click

#: the module of each top-level command, so that running one imports only what it needs:
#: `transship copy` loads neither the archive server (aiohttp.web) nor the TKG wing nor the
#: CA checker (tests/test_cli_imports.py checks this list against `all_commands`)
MODULES = {
    "archive": "archive",
    "ca": "ca",
    "copy": "copy",
    "load": "archive",
    "plan": "plan",
    "save": "archive",
    "serve": "serve",
    "tkg": "tkg",
    "verify": "verify",
}


def command(name: str) -> click.Command | None:
    """The command called `name`, importing only its module; None if it is not in `MODULES`."""
    module_name = MODULES.get(name)
    if module_name is None:
        return None
    module = importlib.import_module(f"{__name__}.{module_name}")
    found: list[click.Command] = getattr(module, "COMMANDS", [])
    return next((c for c in found if c.name == name), None)


def all_commands() -> list[click.Command]:
    """Every command of every module in this package, in module-name order."""
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += getattr(module, "COMMANDS", [])
    return found
