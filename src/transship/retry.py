"""The one retry policy: how many tries, how long between them, and how `Retry-After` counts.

The wire layer (`transship.remote`) applies it to every request it can resend (connection
errors, 5xx, 429, a token fetch, a cut or corrupt body it holds whole, a cut blob download it
resumes with `Range`); the engine applies the same policy to what only it can see (a streamed
blob that failed its digest, an upload the registry refused as damaged). Pure: no I/O here
except the sleep, so the numbers are unit-tested.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from transship.errors import IntegrityError, RetryableError

T = TypeVar("T")

#: how a backoff is waited out: `asyncio.sleep`, or one that can end it early by raising
Sleep = Callable[[float], Awaitable[None]]


#: the longest a `Retry-After` answer can make us wait (a registry asking for an hour is
#: answered sooner; the request then fails if it is still refused)
RETRY_AFTER_CAP = 120.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), never < 0.

    `now` is the wall clock (`time.time()`) the date is measured from; None when unparseable.
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None,
    retry_after_cap: float = RETRY_AFTER_CAP,
) -> float:
    """Exponential backoff with full jitter after `attempt` earlier failures (0-based);
    `Retry-After` wins when it asks for longer, up to `retry_after_cap`."""
    delay = random.uniform(0, min(cap, base * (2 ** min(attempt, 32))))
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_cap))
    return delay


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more tries after the first, spaced by `backoff_delay`."""

    retries: int = 5
    base: float = 0.5
    cap: float = 30.0
    retry_after_cap: float = RETRY_AFTER_CAP

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        return backoff_delay(attempt, self.base, self.cap, retry_after, self.retry_after_cap)

    def attempts(self, sleep: Sleep | None = None) -> Attempts:
        """A fresh budget for one operation; `sleep` waits out each backoff (the wire layer
        passes its host's `HostHealth.pause`, which wakes and raises once the host is down)."""
        return Attempts(self, sleep)


class Attempts:
    """One operation's budget: on a failure, `if not a.left: raise`, else `await a.pause()`."""

    def __init__(self, policy: RetryPolicy, sleep: Sleep | None = None) -> None:
        self.policy = policy
        self.failures = 0
        self._sleep: Sleep = sleep or asyncio.sleep

    @property
    def left(self) -> bool:
        """Whether another try is allowed after the failure being handled."""
        return self.failures < self.policy.retries

    async def pause(self, retry_after: float | None = None) -> None:
        """Count the failure and wait before the next try."""
        delay = self.policy.delay(self.failures, retry_after)
        self.failures += 1
        await self._sleep(delay)


#: a whole blob restarted from byte 0 by whoever consumed it (the engine for a streamed blob,
#: planning for one read into memory) after it failed its digest: 3 more tries
CONTENT_POLICY = RetryPolicy(retries=3)


def worth_restarting(exc: BaseException) -> bool:
    """A read that a fresh start can fix and the wire layer has not already retried: content
    that failed its digest or size, or a transient failure the wire could not resend."""
    if isinstance(exc, IntegrityError):
        return True
    return isinstance(exc, RetryableError) and not exc.exhausted


async def restarting(call: Callable[[], Awaitable[T]], policy: RetryPolicy = CONTENT_POLICY) -> T:
    """`call()`, started again while it fails in a way `worth_restarting` (bounded by policy)."""
    attempts = policy.attempts()
    while True:
        try:
            return await call()
        except (IntegrityError, RetryableError) as exc:
            if not worth_restarting(exc) or not attempts.left:
                raise
            await attempts.pause(exc.retry_after if isinstance(exc, RetryableError) else None)
