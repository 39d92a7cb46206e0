"""`--limit-rate`: one token bucket that every blob transfer of a run draws from.

A shared WAN link is shared by the whole run, not per connection, so one bucket caps the sum of
all transfers. The bucket lends: a 1 MiB chunk under a 500K cap is taken at once and the taker
sleeps until the debt is paid, so chunks larger than the burst still pass, and concurrent takers
queue behind the bytes reserved before them. The clock and sleep are injectable for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from transship.errors import UsageError
from transship.sizes import parse_size

#: what a cap saves up while nobody sends: a tenth of a second of bytes
BURST_SECONDS = 0.1


def parse_rate(text: str) -> int:
    """`50M`, `500K`, `2G`, `1000000` → bytes per second (K/M/G are 1024 multiples, as curl's
    `--limit-rate`); anything else is a one-line usage error. A lowercase `b` (`50Mb`,
    `1gb`) is refused: a link's rate is said in bits, and reading it as bytes would cap at
    eight times what was meant."""
    if text.strip().endswith("b"):
        raise UsageError(
            f"--limit-rate {text!r}: give bytes per second such as 50M (curl's units); "
            "a lowercase 'b' reads as bits: divide a bit rate by 8 (50 megabits/s is about 6M)"
        )
    return parse_size(text, option="--limit-rate", example="50M, 500K or 1G")


class TokenBucket:
    """Bytes per second across every caller; `take(n)` returns once `n` bytes may pass."""

    def __init__(
        self,
        rate: int,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = rate * BURST_SECONDS if burst is None else burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0  # starts empty: the first bytes are paced too
        self._stamp: float | None = None  # only differences of the clock count, never its value

    def reserve(self, nbytes: int) -> float:
        """Book `nbytes` now; the seconds the caller must wait before sending them."""
        now = self._clock()
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        return max(0.0, -self._tokens / self.rate)

    async def take(self, nbytes: int) -> None:
        wait = self.reserve(nbytes)
        if wait > 0:
            await self._sleep(wait)
