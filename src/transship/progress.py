"""Presentation of a run: rich bars on a terminal, periodic log lines otherwise, and a summary.

The engine reports events through `Observer`; only this module decides how they look. rich is
imported where a bar or a table is drawn: a quiet run (`-q`, a no-op rerun from a script)
draws neither and does not pay for its import.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from transship.engine import CopyTask, Stats, TaskResult
from transship.manifest import Descriptor

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID
    from rich.table import Table


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_duration(seconds: float) -> str:
    """`M:SS`, or `H:MM:SS` from an hour on: what an ETA reads like."""
    whole = max(round(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(done: int, total: int | None, elapsed: float, kept: int = 0) -> float | None:
    """Seconds left at the average rate so far; None while there is nothing to go on.
    `kept` of `done` were not transferred this run (a resumed save's): not in the rate."""
    moved = done - kept
    if total is None or moved <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) / (moved / elapsed)


def bytes_detail(done: int, total: int | None, elapsed: float, kept: int = 0) -> str:
    """`90.0 MB / 117.0 MB  12.0 MB/s  ETA 0:02`: done out of the total, rate, time left
    (the rate of the bytes transferred: `kept` bytes of `done` are not)."""
    rate = max(done - kept, 0) / max(elapsed, 1e-6)
    text = human_bytes(done) if total is None else f"{human_bytes(done)} / {human_bytes(total)}"
    text += f"  {human_bytes(rate)}/s"
    eta = eta_seconds(done, total, elapsed, kept)
    if eta is not None:
        text += f"  ETA {format_duration(eta)}"
    return text


class ByteBudget:
    """Bytes sent out of the bytes still to send, counted down from the plan's sizes.

    A task starts with a share of the estimate: its plan size (its whole manifest graph),
    scaled so the shares add up to the plan's unique bytes, since a blob several images share
    is sent once. When a task finishes its share is replaced by what it really sent, so blobs
    the destination already had, mounted, or got from another task drop out: once every task
    is done the total is exact. Unknown without sizes (a single copy, an unresolved plan).
    """

    def __init__(self, tasks: Iterable[CopyTask], unique_bytes: int | None = None) -> None:
        sizes = {id(t): t.size for t in tasks if t.size is not None}
        naive = sum(sizes.values())
        estimate = naive if unique_bytes is None else min(unique_bytes, naive)
        scale = estimate / naive if naive else 0.0
        self.known = bool(sizes)
        self.done = 0  # bytes read from sources into destinations, retries included
        #: of `done`, bytes a stopped earlier save had written and this run kept
        self.kept = 0
        self._shares = {key: size * scale for key, size in sizes.items()}
        self._total = float(estimate)

    def sent(self, nbytes: int) -> None:
        self.done += nbytes

    def resumed(self, nbytes: int) -> None:
        """Bytes of a blob kept from an earlier run: done, but not transferred now."""
        self.done += nbytes
        self.kept += nbytes

    def finished(self, result: TaskResult) -> None:
        self._total += result.bytes_sent - self._shares.pop(id(result.task), 0.0)

    @property
    def total(self) -> int | None:
        """Bytes sent plus bytes still to send (never below what was sent)."""
        return max(round(self._total), self.done) if self.known else None


class RichObserver:
    """Two live rows: images done/total, and bytes sent out of the total, rate, ETA, transfers."""

    def __init__(self, console: Console, total_tasks: int, budget: ByteBudget) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._images: TaskID = self.progress.add_task(
            "images", total=total_tasks, detail=f"0/{total_tasks}"
        )
        self._bytes: TaskID = self.progress.add_task("bytes", total=budget.total, detail="")
        self.total = total_tasks
        self.budget = budget
        self.done = 0
        self.active = 0
        self.start = time.monotonic()

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._describe()
        self.progress.stop()

    def task_started(self, task: CopyTask) -> None:
        pass

    def task_finished(self, result: TaskResult) -> None:
        self.done += 1
        self.budget.finished(result)
        self.progress.update(self._images, advance=1, detail=f"{self.done}/{self.total}")
        if result.status == "failed" and self.total != 1:
            from rich.text import Text

            line = Text.assemble(("failed", "red"), f" {result.task.label}: {result.error}")
            self.progress.console.print(line, highlight=False)  # the error's words, as they are
        self._describe()

    def blob_started(self, descriptor: Descriptor) -> None:
        self.active += 1

    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None:
        self.budget.sent(nbytes)
        self._describe()

    def blob_kept(self, descriptor: Descriptor, nbytes: int) -> None:
        self.budget.resumed(nbytes)
        self._describe()

    def blob_finished(self, descriptor: Descriptor) -> None:
        self.active -= 1
        self._describe()

    def blob_landed(self, descriptor: Descriptor) -> None:
        pass

    def _describe(self) -> None:
        elapsed = time.monotonic() - self.start
        detail = bytes_detail(self.budget.done, self.budget.total, elapsed, self.budget.kept)
        detail += f"  {self.active} active"
        self.progress.update(
            self._bytes, completed=self.budget.done, total=self.budget.total, detail=detail
        )


class LogObserver:
    """Plain lines for logs and CI: the total to send at the start, one line per finished
    image, and a heartbeat (bytes out of the total, rate, ETA) every interval."""

    def __init__(
        self, total_tasks: int, budget: ByteBudget, interval: float = 10.0, quiet: bool = False
    ) -> None:
        self.total = total_tasks
        self.budget = budget
        self.done = 0
        self.interval = interval
        self.quiet = quiet
        self.start = time.monotonic()
        self._last = self.start

    def __enter__(self) -> LogObserver:
        if self.budget.total is not None:
            self._emit(
                f"progress: 0/{self.total} images, {human_bytes(self.budget.total)} to send "
                f"({self.budget.total} bytes)"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _emit(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def task_started(self, task: CopyTask) -> None:
        pass

    def task_finished(self, result: TaskResult) -> None:
        self.done += 1
        self.budget.finished(result)
        what = result.task.label
        if result.status == "failed":
            if self.total > 1:  # a single failure is reported once, by the CLI
                print(f"[{self.done}/{self.total}] failed {what}: {result.error}", file=sys.stderr)
        else:
            self._emit(f"[{self.done}/{self.total}] {result.status} {what}")

    def blob_started(self, descriptor: Descriptor) -> None:
        pass

    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None:
        self.budget.sent(nbytes)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            detail = bytes_detail(
                self.budget.done, self.budget.total, now - self.start, self.budget.kept
            )
            self._emit(f"progress: {self.done}/{self.total} images, {detail}")

    def blob_kept(self, descriptor: Descriptor, nbytes: int) -> None:
        self.budget.resumed(nbytes)

    def blob_finished(self, descriptor: Descriptor) -> None:
        pass

    def blob_landed(self, descriptor: Descriptor) -> None:
        pass


def summary_table(results: Sequence[TaskResult], stats: Stats, seconds: float) -> Table:
    """The final summary: images, blobs, bytes, time and effective rate."""
    from rich.table import Table

    count = {s: sum(1 for r in results if r.status == s) for s in ("copied", "skipped", "failed")}
    table = Table(title="transship summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "images copied / skipped / failed",
        f"{count['copied']} / {count['skipped']} / {count['failed']}",
    )
    table.add_row(
        "blobs sent / mounted / already there",
        f"{stats.blobs_uploaded} / {stats.blobs_mounted} / {stats.blobs_present}",
    )
    table.add_row(
        "manifests pushed / already there", f"{stats.manifests_pushed} / {stats.manifests_present}"
    )
    table.add_row("bytes sent", human_bytes(stats.bytes_uploaded))
    table.add_row("time", f"{seconds:.1f} s")
    moved = stats.bytes_uploaded - stats.bytes_resumed  # kept bytes were not transferred now
    table.add_row("effective rate", f"{human_bytes(moved / max(seconds, 1e-6))}/s")
    table.add_row("bytes downloaded again", human_bytes(stats.bytes_refetched))
    if stats.bytes_resumed:
        table.add_row("kept from partly saved blobs", human_bytes(stats.bytes_resumed))
    if stats.retries:
        table.add_row("retries", str(stats.retries))
    return table
