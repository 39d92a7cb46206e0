"""Click callbacks for paths that name archives, light enough for every command (serve too)."""

from __future__ import annotations

from pathlib import Path

import click


def existing_archives(
    ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]
) -> tuple[Path, ...]:
    """`--base`/`--since OLD_ARCHIVE`: each must exist; the name a split save was given
    (`FILE.tar`, now `FILE.tar.001`, …) is refused saying which file to give instead."""
    from transship.layout.volumes import split_name_hint

    for path in value:
        if not path.exists():
            hint = split_name_hint(path)
            raise click.BadParameter(f"{path} does not exist{hint}", ctx=ctx, param=param)
    return value
