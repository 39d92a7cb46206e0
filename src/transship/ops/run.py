"""Running task phases through the engine: the part `copy`, `save` and `load` share."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from transship.engine import CopyEngine, CopyTask, EngineOptions, Observer, Stats, TaskResult
from transship.errors import HostDownError


@dataclass
class RunOutcome:
    """Every task's result, the engine's accounting and the wall time."""

    results: list[TaskResult]
    stats: Stats
    seconds: float
    #: a registry found down: the run stopped starting work; the caller ends with this one
    #: error (exit 6) after its report, not with a failure per entry
    stopped: HostDownError | None = None


async def run_phases(
    task_phases: Sequence[Sequence[CopyTask]],
    options: EngineOptions | None = None,
    observer: Observer | None = None,
) -> RunOutcome:
    """Run the phases in order (see `CopyEngine.run_phases`); one failure never stops others,
    a registry that is down (`HostDownError`) stops them all (`RunOutcome.stopped`)."""
    engine = CopyEngine(options, observer)
    start = time.monotonic()
    results = await engine.run_phases(task_phases)
    return RunOutcome(results, engine.stats, time.monotonic() - start, engine.stopped)
