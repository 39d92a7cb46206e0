"""Rendering shared by several commands (tables and consoles); no command lives here."""

from __future__ import annotations

from typing import TypedDict

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from transship.ops.verify import BLOB_MISSING, CHILD_MISSING, VerifyResult

MAX_ROWS = 200


class _Plain(TypedDict):
    markup: bool
    highlight: bool
    soft_wrap: bool


#: `console.print` keywords for a line holding what a user named (a path, a reference) or a
#: message quoting it: printed as it is, on one line (no markup to eat `[old]` or to raise on
#: `[/x]`, no highlighting, never wrapped in a log)
PLAIN = _Plain(markup=False, highlight=False, soft_wrap=True)


def problems_table(result: VerifyResult, limit: int = MAX_ROWS) -> Table:
    """What is missing or different, one row per problem (the report has them all)."""
    table = Table(title="missing or different at the destination")
    for column in ("problem", "at the destination", "expected", "found", "detail / source"):
        table.add_column(column, overflow="fold")
    rows = result.problems
    for check, problem in rows[:limit]:
        detail = problem.detail or f"from {check.entry.source}"
        table.add_row(
            problem.kind,
            problem.reference,
            problem.expected.short if problem.expected else "",
            problem.found.short if problem.found else "",
            Text(detail),  # a registry's or the system's words: no markup
        )
    if len(rows) > limit:
        table.caption = f"… and {len(rows) - limit} more: see --report"
    return table


def wide_console(*, stderr: bool, fit: RenderableType | None = None) -> Console:
    """A terminal's own width; for logs and pipes 200 columns, or as many as `fit` (a table)
    needs to print each of its rows on one line: references are not folded, grep finds them."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    width = max(console.width, 200)
    if fit is not None:
        width = max(width, Console(width=_UNBOUNDED, stderr=stderr).measure(fit).maximum)
    return Console(stderr=stderr, width=width)


#: the width a table is measured in: wider than any row it could hold
_UNBOUNDED = 1 << 20


def print_result(result: VerifyResult, console: Console) -> None:
    if result.problems:
        console.print(problems_table(result))
    for bundle in result.unexpanded_bundles():
        console.print(
            f"note: bundle {bundle.destination} was not expanded in the plan: the images it "
            "references were not checked (plan it with resolution to list them)",
            **PLAIN,
        )
    console.print(result.summary(), **PLAIN)
    lost = {BLOB_MISSING, CHILD_MISSING}
    if any(problem.kind in lost for _check, problem in result.problems):
        console.print(
            "hint: a manifest is there but content below it is not: `transship copy --repair` "
            "(or `load --repair` from the archive) with the same input sends what is missing; "
            "a plain copy or load trusts the manifest",
            **PLAIN,
        )
