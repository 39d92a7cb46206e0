"""`--limit-rate`: parsing, the shared token bucket on a fake clock, and a real capped copy."""

from __future__ import annotations

import asyncio
import time

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_image

from transship.errors import ExitCode, UsageError
from transship.ratelimit import TokenBucket, parse_rate

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1000000", 1_000_000),
        ("500K", 500 * 1024),
        ("500k", 500 * 1024),
        ("50M", 50 * MiB),
        ("2G", 2 * 1024**3),
        ("1.5M", int(1.5 * MiB)),
        (" 7 ", 7),
    ],
)
def test_parse_rate_takes_curls_forms(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "0", "0K", "fast", "-5M", "5X", "5MB/s", "M", "50Mb", "1gb", "800kb", "5mib"]
)
def test_parse_rate_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_rate(text)
    assert "--limit-rate" in str(info.value) and "\n" not in str(info.value)


class FakeClock:
    """Time that moves only when someone sleeps; starts far from zero, then at zero."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("start", [0.0, 1e9])
def test_bucket_paces_bytes_at_the_rate_whatever_the_clock_reads(start: float) -> None:
    clock = FakeClock(start)
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)

    async def send() -> None:
        for _ in range(10):
            await bucket.take(500)  # chunks larger than the 100-byte burst still pass

    asyncio.run(send())
    assert clock.now - start == pytest.approx(5.0)  # 5000 bytes at 1000 B/s


def test_bucket_is_shared_by_concurrent_takers() -> None:
    clock = FakeClock(42.0)
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    # three transfers book at the same instant: each waits behind the bytes booked before it
    waits = [bucket.reserve(1000) for _ in range(3)]
    assert waits == pytest.approx([1.0, 2.0, 3.0])


def test_bucket_saves_up_only_its_burst_while_idle() -> None:
    clock = FakeClock(7.0)
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    assert bucket.reserve(100) == pytest.approx(0.1)
    clock.now += 3600.0  # an hour idle buys a tenth of a second, not an hour
    assert bucket.reserve(100) == 0.0
    assert bucket.reserve(1000) == pytest.approx(1.0)


def test_bad_limit_rate_is_a_one_line_usage_error(cli: CLI, tmp_path) -> None:
    for args in (
        ("copy", "127.0.0.1:1/a:v1", "127.0.0.1:1/b:v1", "--limit-rate", "fast"),
        (
            "save",
            "--images",
            str(tmp_path / "none.txt"),
            "-o",
            str(tmp_path / "x"),
            "--limit-rate",
            "0",
        ),
        ("load", str(tmp_path / "none"), "--dest", "127.0.0.1:1/x", "--limit-rate", "9Q"),
        # megabits, as a WAN link's rate is given: read as bytes it was a cap 8x too high
        ("copy", "127.0.0.1:1/a:v1", "127.0.0.1:1/b:v1", "--limit-rate", "50Mb"),
    ):
        out = cli(*args)
        assert out.code == ExitCode.USAGE, (args, out.err)
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and "--limit-rate" in lines[0] and "Traceback" not in out.err


def test_copy_under_limit_rate_takes_bytes_over_rate(
    cli: CLI, plain_registry: RegistryProcess, make_registry
) -> None:
    image = build_image(171, layer_sizes=(4 * MiB, 4 * MiB))
    SeedClient.for_registry(plain_registry).push_image("capped/app", image, "v1")
    dest = make_registry("plain")
    start = time.monotonic()
    out = cli(
        "copy", plain_registry.ref("capped/app:v1"), dest.ref("capped/app:v1"), "--limit-rate", "2M"
    )
    seconds = time.monotonic() - start
    assert out.code == 0, out.err
    assert 3.5 <= seconds < 30, seconds  # 8 MiB at 2 MiB/s: about 4 s
    assert dest.requests("PUT", r"/v2/capped/app/manifests/v1$")


def test_save_as_imgpkg_tars_is_capped_too(
    cli: CLI, plain_registry: RegistryProcess, tmp_path
) -> None:
    """`save --format imgpkg-tars` writes its tars without the engine; the cap holds there too
    (it was accepted and ignored: 8 MiB at "2M" took well under a second)."""
    image = build_image(172, layer_sizes=(4 * MiB, 4 * MiB))
    SeedClient.for_registry(plain_registry).push_image("capped/tars", image, "v1")
    images = tmp_path / "images.txt"
    images.write_text(plain_registry.ref("capped/tars:v1") + "\n")
    out_dir = tmp_path / "tars"
    start = time.monotonic()
    out = cli(
        "save",
        "--images",
        str(images),
        "-o",
        str(out_dir),
        "--format",
        "imgpkg-tars",
        "--limit-rate",
        "2M",
        "-q",
    )
    seconds = time.monotonic() - start
    assert out.code == 0, out.err
    assert len(list(out_dir.glob("*.tar"))) == 1
    assert seconds >= 3.5, seconds  # 8 MiB at 2 MiB/s cannot take less (a lower bound only)
