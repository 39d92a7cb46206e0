"""Is a registry there at all? Connection-level failures of one host over a short window.

A registry that refuses connections, whose name does not resolve or whose TLS handshake fails
fails every entry of a plan the same way; retrying each entry with backoff grinds for an hour
through what the first seconds showed. So the transport reports every attempt here:

* an answer, whatever its status (5xx and 429 included: an overloaded registry is there), clears
  the record;
* a failure to connect (`connection_failure`) is a strike, and so is a first contact
  (`GET /v2/`) that gets no answer, or no connection, within the transport's answer timeout
  (`NoAnswerError`): a registry that accepts connections but never answers is as useless as
  one that refuses them;
* a timeout mid-answer or a connection cut mid-answer is neither: a slow registry keeps its
  retries.

Once every attempt over `HealthPolicy.window` seconds failed to connect (at least
`HealthPolicy.failures` of them, no answer in between), the host is down for the rest of the
run: requests fail at once with `HostDownError`, requests sleeping in backoff wake up and fail,
and a request whose own retries ran out waits for that verdict instead of failing its entry
alone. Commands treat `HostDownError` as fatal for the run.

Only differences of one clock are used (injectable for tests); no reading is compared with zero,
so a freshly booted machine, whose monotonic clock is near zero, behaves like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from transship.errors import HostDownError


@dataclass(frozen=True)
class HealthPolicy:
    """When a host counts as down: nothing but connection failures for `window` seconds, and
    at least `failures` of them (one refused connection is not a verdict)."""

    window: float = 8.0
    failures: int = 3


DEFAULT_POLICY = HealthPolicy()


class NoAnswerError(TimeoutError):
    """The first contact with a host got no answer within `seconds` of being sent, or no
    connection within `seconds` (`connecting`)."""

    def __init__(self, seconds: float, *, connecting: bool = False) -> None:
        super().__init__(f"no {'connection' if connecting else 'answer'} in {seconds:g} s")
        self.seconds = seconds
        self.connecting = connecting

    @property
    def reason(self) -> str:
        if self.connecting:
            return f"connection attempts time out ({self}; a firewall dropping them?)"
        return f"it accepts connections but sends no answer ({self})"


def connection_failure(exc: BaseException) -> str | None:
    """Why `exc` shows the host could not be reached at all; None when it shows nothing
    (a timeout mid-answer, a cut answer) or shows the host is there (an untrusted
    certificate)."""
    if isinstance(exc, NoAnswerError):
        return exc.reason
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return None  # reached and answered: a trust setting, reported as a TLS error
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"its name does not resolve ({_reason(exc)})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"the TLS handshake fails ({_reason(exc)})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        over_tls = getattr(exc.args[0], "is_ssl", False)  # args[0]: aiohttp's ConnectionKey
        if over_tls and isinstance(exc.os_error, ConnectionResetError | ConnectionAbortedError):
            return "the TLS handshake fails (the server closes the connection)"
        return _reason(exc)
    return None


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    text = exc.strerror or str(exc.os_error) or type(exc.os_error).__name__
    return text.split("\n")[0]


class HostHealth:
    """The connection record of one host, shared by every request the transport sends to it.

    `clock` must be the clock asyncio sleeps by (`time.monotonic`) when `pause` or `settle`
    are used; a fake clock suits the synchronous methods.
    """

    def __init__(
        self,
        host: str,
        policy: HealthPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.policy = policy or DEFAULT_POLICY
        self._clock = clock
        self._since: float | None = None  # first connection failure after the last answer
        self._failures = 0  # connection failures since then
        self._cause = ""
        self._down: HostDownError | None = None
        self._changed: asyncio.Event | None = None

    @property
    def down(self) -> HostDownError | None:
        """The verdict, once the host is down (it stays down for the run)."""
        self._judge()
        return self._down

    def check(self) -> None:
        """Before each attempt: raise `HostDownError` if the host is down."""
        down = self.down
        if down is not None:
            raise HostDownError(down.message, hint=down.hint)  # fresh: tasks raise their own

    def answered(self) -> None:
        """The host answered (any status): clear its record."""
        if self._down is None and self._since is not None:
            self._since = None
            self._failures = 0
            self._notify()

    def failed(self, exc: BaseException) -> None:
        """An attempt failed with `exc`: a strike if it could not reach the host at all."""
        cause = connection_failure(exc)
        if cause is None or self._down is not None:
            return
        if self._since is None:
            self._since = self._clock()
        self._failures += 1
        self._cause = cause
        self._judge()
        self._notify()

    async def pause(self, seconds: float) -> None:
        """Backoff before another attempt: sleep `seconds`, but wake and raise
        `HostDownError` as soon as the host is found down."""
        end = self._clock() + seconds
        while True:
            self.check()
            now = self._clock()
            if now >= end:
                return
            await self._wait(min(end, self._verdict_due()) - now)

    async def settle(self) -> None:
        """Before a failure to connect is reported for one request: while nothing but
        connection failures came since the first one, wait for the verdict. An answer to
        another request returns (the caller reports its own error); the window closing with
        enough failures raises `HostDownError`; with too few it returns."""
        while True:
            self.check()
            if self._since is None:
                return
            due = self._since + self.policy.window
            now = self._clock()
            if now >= due:
                return
            await self._wait(due - now)

    def _verdict_due(self) -> float:
        """When the host will be down if nothing changes; infinity if it will not."""
        if self._since is None or self._failures < self.policy.failures:
            return math.inf
        return self._since + self.policy.window

    def _judge(self) -> None:
        if self._down is not None or self._since is None:
            return
        elapsed = self._clock() - self._since
        if self._failures < self.policy.failures or elapsed < self.policy.window:
            return
        self._down = HostDownError(
            f"registry {self.host} is unreachable: {self._cause} on every attempt for "
            f"{elapsed:.0f} s, so nothing more is started against it",
            hint="check the host name, port and network path, then run the same command "
            "again: it picks up where this one stopped",
        )
        self._notify()

    async def _wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early when the record changes."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(seconds, 0.001))

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
