"""Before moving bytes: can we push into every destination repository of a run?"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from transship.endpoint import PushCheck
from transship.engine import CopyTask
from transship.errors import HostDownError, PreflightError, TransshipError


async def preflight(task_phases: Sequence[Sequence[CopyTask]], parallel: int = 16) -> int:
    """Ask each distinct destination repository whose endpoint can tell (`PushCheck`) whether
    a push would land; returns how many were asked.

    Raises `PreflightError` listing every refusal; its exit code is the first refusal's, so a
    script can tell "no permission" from "unreachable".
    """
    targets: dict[tuple[int, str], tuple[PushCheck, str]] = {}
    for tasks in task_phases:
        for task in tasks:
            if isinstance(task.dest, PushCheck):
                targets.setdefault(
                    (id(task.dest), task.dest_repository), (task.dest, task.dest_repository)
                )
    limit = asyncio.Semaphore(parallel)

    async def check(endpoint: PushCheck, repository: str) -> TransshipError | None:
        async with limit:
            try:
                await endpoint.check_push(repository)
            except HostDownError:
                raise  # one line for the registry, not one per repository
            except TransshipError as exc:
                return exc
            return None

    found = await asyncio.gather(*(check(e, repo) for e, repo in targets.values()))
    problems = tuple(p for p in found if p is not None)
    if problems:
        raise PreflightError(problems, len(targets))
    return len(targets)
