"""The retry policy (`transship.retry`): pure numbers, no registry needed."""

from __future__ import annotations

import asyncio
import random
from email.utils import format_datetime, parsedate_to_datetime

import pytest

from transship.errors import IntegrityError, RegistryError, RetryableError
from transship.retry import (
    CONTENT_POLICY,
    RETRY_AFTER_CAP,
    RetryPolicy,
    backoff_delay,
    parse_retry_after,
    restarting,
    worth_restarting,
)

DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
WHEN = parsedate_to_datetime(DATE).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("-5", 0.0)],
)
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_retry_after_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_http_date_is_measured_from_now() -> None:
    assert parse_retry_after(DATE, now=WHEN - 30) == pytest.approx(30.0)
    assert parse_retry_after(DATE, now=WHEN + 30) == 0.0  # already past: no wait
    assert parse_retry_after("Wed Oct 21 07:28:10 2015", now=WHEN) == pytest.approx(10.0)  # asctime
    from datetime import UTC, datetime

    soon = format_datetime(datetime.fromtimestamp(WHEN + 90, UTC), usegmt=True)
    assert parse_retry_after(soon, now=WHEN) == pytest.approx(90.0)
    # without `now`, the wall clock: a date long past waits nothing
    assert parse_retry_after(DATE) == 0.0


def test_backoff_stays_within_its_exponential_bound() -> None:
    random.seed(1)
    for attempt in range(12):
        bound = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0, None) for _ in range(400)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound  # full jitter spreads over the whole range
        assert min(delays) < 0.2 * bound
    assert backoff_delay(10_000, 0.5, 30.0, None) <= 30.0  # no overflow for huge attempts


def test_retry_after_wins_when_longer_and_is_capped_once() -> None:
    random.seed(2)
    assert all(backoff_delay(0, 0.5, 30.0, 7.0) >= 7.0 for _ in range(50))
    assert backoff_delay(0, 0.5, 30.0, 3600.0) == RETRY_AFTER_CAP
    assert backoff_delay(0, 0.5, 30.0, 3600.0, retry_after_cap=5.0) == 5.0
    assert RetryPolicy().delay(0, retry_after=3600.0) == RETRY_AFTER_CAP
    assert RetryPolicy(retry_after_cap=2.0).delay(0, retry_after=3600.0) == 2.0
    # a short Retry-After does not shorten a longer backoff below itself
    assert all(0.0 <= backoff_delay(6, 0.5, 30.0, 0.1) <= 30.0 for _ in range(50))


def test_attempts_allow_exactly_the_retries() -> None:
    async def run() -> int:
        attempts = RetryPolicy(retries=2, base=0.0).attempts()
        tries = 1
        while attempts.left:
            await attempts.pause()
            tries += 1
        return tries

    assert asyncio.run(run()) == 3
    assert RetryPolicy(retries=0).attempts().left is False


def test_attempts_wait_in_the_sleep_they_are_given() -> None:
    """The wire layer passes `HostHealth.pause`: each backoff goes through it, and what it
    raises (a host found down) ends the operation."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) == 2:
            raise TimeoutError("the host is down")

    async def run() -> None:
        attempts = RetryPolicy(retries=5, base=1.0, cap=1.0).attempts(sleep=sleep)
        await attempts.pause(retry_after=3.0)
        await attempts.pause()

    with pytest.raises(TimeoutError, match="down"):
        asyncio.run(run())
    assert waited[0] == 3.0 and 0.0 <= waited[1] <= 1.0


def test_what_is_worth_restarting() -> None:
    assert worth_restarting(IntegrityError("blob does not match its digest"))
    assert worth_restarting(RetryableError("upload cut"))
    assert not worth_restarting(RetryableError("503 six times", status=503, exhausted=True))
    assert not worth_restarting(RegistryError("400", status=400))
    assert not worth_restarting(ValueError("a bug"))


def test_restarting_is_bounded() -> None:
    policy = RetryPolicy(retries=3, base=0.0)
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise IntegrityError("corrupt")
        return "ok"

    assert asyncio.run(restarting(flaky, policy)) == "ok"
    assert len(calls) == 3

    calls.clear()

    async def corrupt() -> str:
        calls.append(1)
        raise IntegrityError("corrupt for good")

    with pytest.raises(IntegrityError, match="for good"):
        asyncio.run(restarting(corrupt, policy))
    assert len(calls) == policy.retries + 1

    calls.clear()

    async def exhausted() -> str:
        calls.append(1)
        raise RetryableError("the wire gave up", exhausted=True)

    with pytest.raises(RetryableError):
        asyncio.run(restarting(exhausted, policy))
    assert len(calls) == 1  # the wire's budget is not multiplied


def test_engine_and_planning_share_the_content_policy() -> None:
    from transship.engine import EngineOptions

    options = EngineOptions()
    assert options.blob_attempts == CONTENT_POLICY.retries + 1
    assert options.retry_policy == CONTENT_POLICY
