"""Ctrl-C ends a run with exit 130 even when closing its connections fails on the way out:
the close error is dropped (logged), never the outcome. `execute` run for real under
`asyncio.run`, interrupted by a real SIGINT; the pools' close made to fail (no registry is
reached: the body never asks one)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from transship.commands.common import RunReport, close_all, execute
from transship.connect import RegistryPool, SideSettings
from transship.engine import TaskResult
from transship.errors import ExitCode, RegistryError, exit_code_of


def _failing_close(closed: list[str]) -> Callable[[RegistryPool], Awaitable[None]]:
    async def close(self: RegistryPool) -> None:
        closed.append(self.settings.side)
        raise RegistryError("closing the HTTP session failed")

    return close


def test_ctrl_c_stays_exit_130_when_closing_the_sessions_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    closed: list[str] = []
    monkeypatch.setattr(RegistryPool, "close", _failing_close(closed))

    async def body(_sources: RegistryPool, _dests: RegistryPool) -> list[TaskResult]:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C: asyncio.run cancels the run
        await asyncio.sleep(60)
        raise AssertionError("not cancelled")

    report = RunReport(tmp_path / "report.json")
    with pytest.raises(KeyboardInterrupt) as raised:
        execute(body, SideSettings(side="src"), SideSettings(side="dest"), report)
    assert exit_code_of(raised.value) == ExitCode.INTERRUPTED
    assert closed == ["src", "dest"]  # both closed, though the first failed
    doc = json.loads(report.path.read_text())
    assert doc["exitCode"] == 130 and doc["interrupted"] is True, doc


def test_an_error_of_the_run_is_not_replaced_by_a_close_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[str] = []
    monkeypatch.setattr(RegistryPool, "close", _failing_close(closed))

    async def body(_sources: RegistryPool, _dests: RegistryPool) -> list[TaskResult]:
        raise ValueError("the run's own error")

    with pytest.raises(ValueError, match="the run's own error"):
        execute(body, SideSettings(side="src"), SideSettings(side="dest"))
    assert closed == ["src", "dest"]


def test_close_all_after_a_run_that_went_through_raises_the_first_close_error() -> None:
    called: list[int] = []

    def closer(i: int, fails: bool) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            called.append(i)
            if fails:
                raise RegistryError(f"close {i} failed")

        return close

    closers = [closer(1, True), closer(2, True), closer(3, False)]
    with pytest.raises(RegistryError, match="close 1 failed"):
        asyncio.run(close_all(closers, None))
    assert called == [1, 2, 3]
    called.clear()
    asyncio.run(close_all(closers, asyncio.CancelledError()))  # dropped: the run's outcome wins
    assert called == [1, 2, 3]
