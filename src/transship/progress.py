"""Presentation of a run: rich bars on a terminal, periodic log lines otherwise, and a summary.

The engine reports events through `Observer`; only this module decides how they look.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from transship.engine import CopyTask, Stats, TaskResult
from transship.manifest import Descriptor


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class RichObserver:
    """Two live rows: images done/total, and bytes sent with rate and active transfers."""

    def __init__(self, console: Console, total_tasks: int) -> None:
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
        self._bytes: TaskID = self.progress.add_task("bytes", total=None, detail="")
        self.total = total_tasks
        self.done = 0
        self.sent = 0
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
        self.progress.update(self._images, advance=1, detail=f"{self.done}/{self.total}")
        if result.status == "failed" and self.total != 1:
            self.progress.console.print(f"[red]failed[/] {result.task.label}: {result.error}")

    def blob_started(self, descriptor: Descriptor) -> None:
        self.active += 1

    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None:
        self.sent += nbytes
        self._describe()

    def blob_finished(self, descriptor: Descriptor) -> None:
        self.active -= 1
        self._describe()

    def _describe(self) -> None:
        rate = self.sent / max(time.monotonic() - self.start, 1e-6)
        detail = f"{human_bytes(self.sent)}  {human_bytes(rate)}/s  {self.active} active"
        self.progress.update(self._bytes, detail=detail)


class LogObserver:
    """Plain lines for logs and CI: one per finished image, plus a heartbeat every interval."""

    def __init__(self, total_tasks: int, interval: float = 10.0, quiet: bool = False) -> None:
        self.total = total_tasks
        self.done = 0
        self.bytes = 0
        self.interval = interval
        self.quiet = quiet
        self.start = time.monotonic()
        self._last = self.start

    def __enter__(self) -> LogObserver:
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
        what = result.task.label
        if result.status == "failed":
            if self.total > 1:  # a single failure is reported once, by the CLI
                print(f"[{self.done}/{self.total}] failed {what}: {result.error}", file=sys.stderr)
        else:
            self._emit(f"[{self.done}/{self.total}] {result.status} {what}")

    def blob_started(self, descriptor: Descriptor) -> None:
        pass

    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None:
        self.bytes += nbytes
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            rate = self.bytes / max(now - self.start, 1e-6)
            self._emit(
                f"progress: {self.done}/{self.total} images, {human_bytes(self.bytes)} "
                f"sent, {human_bytes(rate)}/s"
            )

    def blob_finished(self, descriptor: Descriptor) -> None:
        pass


def summary_table(results: Sequence[TaskResult], stats: Stats, seconds: float) -> Table:
    """The final summary: images, blobs, bytes, time and effective rate."""
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
    table.add_row("effective rate", f"{human_bytes(stats.bytes_uploaded / max(seconds, 1e-6))}/s")
    table.add_row("bytes downloaded again", human_bytes(stats.bytes_refetched))
    if stats.retries:
        table.add_row("retries", str(stats.retries))
    return table
