"""Single flight: each key's work runs once, and everyone asking for it shares the outcome.

Planning reads each manifest and config once however many entries name it; the engine moves
each blob and child manifest once per destination repository however many tasks need it;
verify asks each question once. The work runs in its own task, so a caller that is cancelled
(one failing entry of many) does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Shared work per key. `keep=True` remembers outcomes (results and errors) for the run;
    `keep=False` forgets a key once its work is done, so a later ask starts it afresh."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self._work: dict[K, asyncio.Future[T]] = {}

    async def run(self, key: K, make: Callable[[], Awaitable[T]]) -> T:
        """`make()`'s outcome for `key`, starting it unless it already runs (or ran)."""
        work = self._work.get(key)
        if work is None:
            work = asyncio.ensure_future(make())
            work.add_done_callback(_retrieve)  # every asker re-raises; none may be left
            if self.keep:
                work.add_done_callback(lambda done: self._settle(key, done))
            else:
                work.add_done_callback(lambda done: self._drop(key, done))
            self._work[key] = work
        return await asyncio.shield(work)

    def started(self, key: K) -> bool:
        """Whether `key`'s work runs or (when kept) ran: asking again costs nothing."""
        return key in self._work

    def alias(self, key: K, same_as: K) -> None:
        """Let `key` share the work of `same_as` (a tag resolved to its digest)."""
        work = self._work.get(same_as)
        if work is not None:
            self._work.setdefault(key, work)

    def forget(self, key: K) -> None:
        """The next ask for `key` starts the work again (its outcome went stale)."""
        self._work.pop(key, None)

    def cancel_pending(self) -> list[asyncio.Future[T]]:
        """Cancel work nobody waits for any more (the run is over); returns what was cancelled,
        for a caller that must wait until it has really stopped."""
        pending = [work for work in self._work.values() if not work.done()]
        for work in pending:
            work.cancel()
        return pending

    def _settle(self, key: K, done: asyncio.Future[T]) -> None:
        """Keep a finished outcome in a bare future, not the task that made it: a task keeps
        its coroutine, its context and a place in asyncio's task set, which on a plan of
        thousands of images is megabytes of memory for answers already known."""
        if self._work.get(key) is not done or done.cancelled():
            return
        settled: asyncio.Future[T] = done.get_loop().create_future()
        error = done.exception()
        if error is not None:
            settled.set_exception(error)
            settled.exception()  # retrieved: every asker re-raises it
        else:
            settled.set_result(done.result())
        self._work[key] = settled

    def _drop(self, key: K, done: asyncio.Future[T]) -> None:
        if self._work.get(key) is done:
            del self._work[key]


def _retrieve(done: asyncio.Future[T]) -> None:
    if not done.cancelled():
        done.exception()
