"""SingleFlight: each key's work once, its outcome shared, and kept cheaply once known."""

from __future__ import annotations

import asyncio

import pytest

from transship.singleflight import SingleFlight


def test_work_runs_once_and_everyone_shares_its_outcome() -> None:
    async def main() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        calls: list[str] = []

        async def work(value: int) -> int:
            calls.append(f"work {value}")
            await asyncio.sleep(0)
            return value * 2

        async def broken() -> int:
            calls.append("broken")
            await asyncio.sleep(0)
            raise ValueError("no")

        together = await asyncio.gather(*(flight.run("k", lambda: work(1)) for _ in range(5)))
        assert together == [2] * 5
        assert await flight.run("k", lambda: work(9)) == 2  # later askers too
        for _ in range(2):
            with pytest.raises(ValueError, match="no"):
                await flight.run("bad", broken)
        assert calls == ["work 1", "broken"]
        flight.alias("k2", "k")
        assert await flight.run("k2", lambda: work(7)) == 2
        flight.forget("k")
        assert await flight.run("k", lambda: work(3)) == 6
        assert calls == ["work 1", "broken", "work 3"]

    asyncio.run(main())


def test_a_known_outcome_is_kept_without_its_task() -> None:
    """A finished task keeps its coroutine and context: on a plan of thousands of images the
    kept outcomes must not hold them (memory per tag)."""

    async def main() -> None:
        flight: SingleFlight[str, bytes] = SingleFlight()

        async def read() -> bytes:
            await asyncio.sleep(0)
            return b"manifest"

        assert await flight.run("m", read) == b"manifest"
        kept = flight._work["m"]
        assert not isinstance(kept, asyncio.Task) and kept.result() == b"manifest"
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_without_keep_a_finished_key_starts_afresh() -> None:
    async def main() -> None:
        flight: SingleFlight[str, int] = SingleFlight(keep=False)
        runs = [0]

        async def work() -> int:
            runs[0] += 1
            await asyncio.sleep(0)
            return runs[0]

        assert await flight.run("k", work) == 1
        assert await flight.run("k", work) == 2
        assert "k" not in flight._work

    asyncio.run(main())
