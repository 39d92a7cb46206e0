"""Measure aiohttp against httpx for what transship does most: stream big blobs, many HEADs.

Run by hand: `.venv/bin/pip install httpx && .venv/bin/python bench/http_clients.py`.
Starts a plain loopback registry, seeds one large blob, then times both clients in one run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import aiohttp
from harness.registry import RegistryProcess
from harness.seed import (
    SeedClient,
    sha256_digest,
)

SIZE = 256 * 1024 * 1024
HEADS = 2000


async def aiohttp_run(url: str, digest: str) -> tuple[float, float]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        t = time.perf_counter()
        async with s.get(f"{url}/v2/bench/blobs/{digest}") as r:
            async for _ in r.content.iter_chunked(1 << 20):
                pass
        stream = time.perf_counter() - t
        sem = asyncio.Semaphore(16)

        async def head() -> None:
            async with sem, s.head(f"{url}/v2/bench/blobs/{digest}") as r:
                await r.read()

        t = time.perf_counter()
        await asyncio.gather(*(head() for _ in range(HEADS)))
        return stream, time.perf_counter() - t


async def httpx_run(url: str, digest: str) -> tuple[float, float]:
    import httpx

    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(limits=limits, follow_redirects=False) as c:
        t = time.perf_counter()
        async with c.stream("GET", f"{url}/v2/bench/blobs/{digest}") as r:
            async for _ in r.aiter_raw(1 << 20):
                pass
        stream = time.perf_counter() - t
        t = time.perf_counter()
        await asyncio.gather(*(c.head(f"{url}/v2/bench/blobs/{digest}") for _ in range(HEADS)))
        return stream, time.perf_counter() - t


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    with RegistryProcess(work / "reg", "plain").start() as reg:
        data = os.urandom(SIZE)
        digest = sha256_digest(data)
        SeedClient.for_registry(reg).push_blob("bench", data)
        print(f"{'client':8} {'stream MB/s':>12} {'HEAD/s':>10}")
        for name, fn in (("aiohttp", aiohttp_run), ("httpx", httpx_run)) * 2:
            stream, heads = asyncio.run(fn(reg.url, digest))
            print(f"{name:8} {SIZE / stream / 1e6:12.0f} {HEADS / heads:10.0f}")


if __name__ == "__main__":
    main()
