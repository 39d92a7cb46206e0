"""Pacing of a state file's rewrites: an OCI layout's index.json, a tar's save journal.

Rewriting (with fsyncs) after every landed blob would cost more than the blobs; never
rewriting would lose a killed run's progress. So a change is written at once when the last
write is `interval` old, else by one deferred write once it is (progress that need not be
written at once, such as a blob in flight, only ever schedules the deferred write); the first
change is always written at once, because nothing may depend on how long the machine has been up
(`time.monotonic()` counts from boot, and CI machines are freshly booted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from transship.errors import TransshipError

log = logging.getLogger(__name__)


class FlushPacer:
    """Calls `flush` at most once per `interval` while changes come in, and once more after."""

    def __init__(self, flush: Callable[[], Awaitable[None]], interval: float) -> None:
        self._flush = flush
        self.interval = interval
        self._last: float | None = None  # monotonic time of the last write; None: never
        self._deferred: asyncio.Task[None] | None = None
        self._again = False  # changed while the deferred write was running
        self._flushing = False  # the deferred task is inside `flush` (not asleep)
        self._stopping = False  # `cancel` waits for the running write: no write after it

    async def changed(self) -> None:
        """Something changed: write now if the last write is old enough, else defer it."""
        if self._due() <= 0:
            await self._flush()
        else:
            self.schedule()

    def schedule(self) -> None:
        """Something changed that need not be written at once (a blob in flight): the
        deferred write, when due, covers it; never writes inline (the caller goes on)."""
        if self._deferred is not None:
            self._again = True  # changed while the deferred write runs: one more after it
            return
        self._deferred = asyncio.create_task(self._later())

    def flushed(self) -> None:
        """The owner wrote its state (called by its `flush`)."""
        self._last = time.monotonic()

    def _due(self) -> float:
        """Seconds until a write is due (0 or less: now)."""
        if self._last is None:
            return 0.0
        return self._last + self.interval - time.monotonic()

    async def _later(self) -> None:
        failed = False
        try:
            while True:
                # after a failed write `interval` too: not an fsync and a warning per MiB
                await asyncio.sleep(self.interval if failed else max(0.0, self._due()))
                self._again = False
                self._flushing = True
                try:
                    await self._flush()
                    failed = False
                except TransshipError as exc:  # the owner's close() flushes again and raises
                    log.warning("%s", exc)
                    failed = True
                finally:
                    self._flushing = False
                if not self._again or self._stopping:
                    return
        finally:
            if self._deferred is asyncio.current_task():
                self._deferred = None

    async def cancel(self) -> None:
        """Drop a deferred write not yet begun (the owner is closing and writes for itself).

        One already writing is waited for, never cancelled: cancelled, it would release the
        owner's flush lock while its thread still writes, so an older state (index.json, the
        journal) could land after the owner's last write, or touch files the owner closes."""
        task = self._deferred
        if task is None:
            return
        self._stopping = True
        try:
            if not self._flushing:
                task.cancel()  # asleep (or not started): nothing of it runs any more
            await asyncio.wait([task])  # a cancel of this wait leaves the write running
            if not task.cancelled():
                task.result()
        finally:
            self._stopping = False
            if task.done() and self._deferred is task:  # cancelled before it ever ran
                self._deferred = None
