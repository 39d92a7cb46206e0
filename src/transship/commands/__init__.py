"""Subcommands: each module defines `COMMANDS`, a list of click commands the CLI registers."""

from __future__ import annotations

import importlib
import pkgutil

import click


def all_commands() -> list[click.Command]:
    """Every command of every module in this package, in module-name order."""
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += getattr(module, "COMMANDS", [])
    return found
