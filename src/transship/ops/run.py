"""Running task phases through the engine: the part `copy`, `save` and `load` share."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transship.engine import CopyEngine, CopyTask, EngineOptions, Observer, Stats, TaskResult
from transship.errors import DependencyError, HostDownError, TransshipError


@dataclass
class RunOutcome:
    """Every task's result, the engine's accounting and the wall time."""

    results: list[TaskResult]
    stats: Stats
    seconds: float
    #: a registry found down: the run stopped starting work; the caller ends with this one
    #: error (exit 6) after its report, not with a failure per entry
    stopped: HostDownError | None = None
    #: cut short by Ctrl-C: `results` has the unfinished tasks as "interrupted"/"not-started"
    interrupted: bool = False


async def run_phases(
    task_phases: Sequence[Sequence[CopyTask]],
    options: EngineOptions | None = None,
    observer: Observer | None = None,
    on_interrupt: Callable[[RunOutcome], None] | None = None,
) -> RunOutcome:
    """Run the phases in order (see `CopyEngine.run_phases`); one failure never stops others,
    a registry that is down (`HostDownError`) stops them all (`RunOutcome.stopped`).

    Cancelled (Ctrl-C: `asyncio.run` cancels the run), `on_interrupt` is given what was done
    so far and the cancellation goes on: it must end the run, so `asyncio.run` raises
    KeyboardInterrupt and the CLI exits 130."""
    engine = CopyEngine(options, observer)
    start = time.monotonic()
    try:
        results = await engine.run_phases(task_phases)
    except asyncio.CancelledError:
        if on_interrupt is not None:
            seconds = time.monotonic() - start
            # the engine has stopped its shared work (`CopyEngine._stop_shared_work`), so the
            # counters are final; a copy all the same, so the summary printed now and the
            # report written on the way out read the very same numbers
            stats = dataclasses.replace(engine.stats)
            on_interrupt(RunOutcome(engine.so_far(), stats, seconds, engine.stopped, True))
        raise
    return RunOutcome(results, engine.stats, time.monotonic() - start, engine.stopped)


def shared_failure(results: Sequence[TaskResult]) -> TransshipError | None:
    """The one failure that stands for the whole run, or None when the run is partial.

    Every task failed and their own failures (not those only skipped because something they
    depend on failed) share one exit code: a wrong password, an unknown CA or a missing
    project fails every image alike, and a script must see 3, 5 or 4 as it does for a
    single image, not "partial" (2). Any task copied or already there, or failures of
    different kinds, keep the run partial."""
    if not results or any(r.status != "failed" or r.error is None for r in results):
        return None
    own = [r.error for r in results if not isinstance(r.error, DependencyError)]
    if not own or len({e.exit_code for e in own if e is not None}) != 1:
        return None
    return own[0]
