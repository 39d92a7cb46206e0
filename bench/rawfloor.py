"""The raw floor: every unique blob of a corpus GET from the source, PUT to the destination.

No manifests, no HEADs, no mounts, no hashing, no retries: N aiohttp workers take blobs (largest
first) and stream each one GET -> POST /blobs/uploads/ -> PUT ?digest= with the body piped from
the download in 1 MiB chunks. It authenticates as the destination asks (`GET /v2/` once): Basic
credentials are sent up front; for a Bearer challenge (Harbor's auth) one token per repository
(`repository:NAME:pull,push`) is fetched from the realm with Basic credentials and reused for
that repository's requests until it nears its expiry. What transship does beyond
this (manifests, existence checks, mounts, sha256 of every byte) is what it costs over the floor.
To price those one at a time: `--head` HEADs each blob at the destination first (what a
resumable copier does), `--hash N` runs sha256 over every byte N times (transship verifies the
download and hashes the upload again: N=2).

    .venv/bin/python bench/rawfloor.py --corpus corpus.json --src http://127.0.0.1:5000 \\
        --dest https://127.0.0.1:5443 --prefix bench --ca ca.pem --creds alice:s3cret-Pa55

Prints one JSON line: seconds, blobs, bytes. Run by hand (bench/run.py runs it), never in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

CHUNK = 1 << 20
_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


class Auth:
    """What the destination's `/v2/` challenge asks for: nothing, Basic, or Bearer tokens."""

    def __init__(self, session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.session = session
        self.args = args
        self.basic = ""
        if args.creds:
            self.basic = "Basic " + base64.b64encode(args.creds.encode()).decode()
        self.scheme = ""
        self.params: dict[str, str] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # repository -> (token, refresh at)
        self.locks: dict[str, asyncio.Lock] = {}
        self.fetched = 0

    async def learn(self) -> None:
        async with self.session.get(f"{self.args.dest}/v2/") as resp:
            await resp.read()
            if resp.status != 401:
                return
            header = resp.headers.get("WWW-Authenticate", "")
        scheme, _, rest = header.partition(" ")
        self.scheme = scheme.lower()
        self.params = dict(_PARAM.findall(rest))

    async def headers(self, repository: str) -> dict[str, str]:
        if self.scheme == "basic":
            return {"Authorization": self.basic}
        if self.scheme != "bearer":
            return {}
        cached = self.tokens.get(repository)
        if cached is None or cached[1] <= time.monotonic():
            async with self.locks.setdefault(repository, asyncio.Lock()):
                cached = self.tokens.get(repository)
                if cached is None or cached[1] <= time.monotonic():
                    cached = await self._fetch(repository)
                    self.tokens[repository] = cached
        return {"Authorization": f"Bearer {cached[0]}"}

    async def _fetch(self, repository: str) -> tuple[str, float]:
        query = {"scope": f"repository:{repository}:pull,push"}
        if "service" in self.params:
            query["service"] = self.params["service"]
        headers = {"Authorization": self.basic} if self.basic else {}
        async with self.session.get(self.params["realm"], params=query, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"token for {repository}: {resp.status} {await resp.text()}")
            doc = await resp.json(content_type=None)
        self.fetched += 1
        lifetime = float(doc.get("expires_in") or 60)
        token = str(doc.get("token") or doc["access_token"])
        return token, time.monotonic() + lifetime - min(10.0, lifetime / 5)


async def copy_blob(
    src: aiohttp.ClientSession,
    dest: aiohttp.ClientSession,
    args: argparse.Namespace,
    auth: Auth,
    blob: dict[str, Any],
) -> int:
    repo, digest, size = blob["repository"], blob["digest"], int(blob["size"])
    target = f"{args.prefix}/{repo}" if args.prefix else repo
    headers = await auth.headers(target)
    if args.head:
        async with dest.head(f"{args.dest}/v2/{target}/blobs/{digest}", headers=headers) as resp:
            if resp.status == 200:
                return 0
    async with dest.post(f"{args.dest}/v2/{target}/blobs/uploads/", headers=headers) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST upload {target}: {resp.status} {await resp.text()}")
        location = urljoin(str(resp.url), resp.headers["Location"])
    put_url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
    async with src.get(f"{args.src}/v2/{repo}/blobs/{digest}") as download:
        if download.status != 200:
            raise RuntimeError(f"GET {repo}@{digest}: {download.status}")

        async def body() -> AsyncIterator[bytes]:
            hashers = [hashlib.sha256() for _ in range(args.hash)]
            async for chunk in download.content.iter_chunked(CHUNK):
                for hasher in hashers:
                    hasher.update(chunk)
                yield chunk
            for hasher in hashers:
                if f"sha256:{hasher.hexdigest()}" != digest:
                    raise RuntimeError(f"{repo}@{digest}: content does not match")

        put_headers = {
            **headers,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
        }
        async with dest.put(put_url, data=body(), headers=put_headers) as resp:
            if resp.status != 201:
                raise RuntimeError(f"PUT {target}@{digest}: {resp.status} {await resp.text()}")
    return size


async def run(args: argparse.Namespace, blobs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ssl_ctx: ssl.SSLContext | bool = True
    if args.ca:
        ssl_ctx = ssl.create_default_context(cafile=args.ca)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for blob in sorted(blobs, key=lambda b: -int(b["size"])):
        queue.put_nowait(blob)
    sent = 0
    src_conn = aiohttp.TCPConnector(limit=args.workers)
    dest_conn = aiohttp.TCPConnector(limit=args.workers, ssl=ssl_ctx)
    start = time.perf_counter()
    async with (
        aiohttp.ClientSession(connector=src_conn, auto_decompress=False) as src,
        aiohttp.ClientSession(connector=dest_conn, auto_decompress=False) as dest,
    ):
        auth = Auth(dest, args)
        await auth.learn()

        async def worker() -> None:
            nonlocal sent
            while not queue.empty():
                blob = queue.get_nowait()
                sent += await copy_blob(src, dest, args, auth, blob)

        await asyncio.gather(*(worker() for _ in range(args.workers)))
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "blobs": len(blobs),
        "bytes": sent,
        "workers": args.workers,
        "auth": auth.scheme or "none",
        "tokens": auth.fetched,
        "head": args.head,
        "hash": args.hash,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus.json (bench/corpus.py)")
    parser.add_argument("--src", required=True, help="source registry URL, e.g. http://host:port")
    parser.add_argument("--dest", required=True, help="destination registry URL")
    parser.add_argument("--prefix", default="", help="destination repository prefix")
    parser.add_argument("--ca", help="PEM CA file for the destination")
    parser.add_argument(
        "--creds", help="USER:PASSWORD for the destination (Basic, or for its token service)"
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--head", action="store_true", help="HEAD each blob at the destination")
    parser.add_argument("--hash", type=int, default=0, metavar="N", help="sha256 passes per byte")
    args = parser.parse_args(argv)
    args.src = args.src.rstrip("/")
    args.dest = args.dest.rstrip("/")
    blobs = json.loads(args.corpus.read_text())["blobs"]
    result = asyncio.run(run(args, blobs))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
