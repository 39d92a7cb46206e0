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

`--protocol` is the protocol floor: the least a usable copy must send, with the same workers and
auth and still no checks. Each blob is uploaded once into the first repository that needs it
(as above) and mounted (`POST ?mount=&from=`) into every other repository whose manifests use
it; each manifest is fetched once from the source and PUT into every destination repository
that needs it, index children by digest and each tag once, a manifest only once its blobs and
children are in that repository (the registry refuses it otherwise). Ready mounts and manifests
go before the remaining uploads. With Bearer auth the one token per repository also carries
pull on the repositories it mounts from. Blob placements and the manifest graph come from
corpus.json (`repositories` of each blob, `manifests`). Afterwards every tag of the corpus
resolves; what transship sends beyond this is what its checks and extras cost.

    .venv/bin/python bench/rawfloor.py --corpus corpus.json --src http://127.0.0.1:5000 \\
        --dest https://127.0.0.1:5443 --prefix bench --ca ca.pem --creds alice:s3cret-Pa55

Prints one JSON line: seconds, blobs, bytes (and with `--protocol` the requests by kind). Run by
hand (bench/run.py runs it), never in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import re
import ssl
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

CHUNK = 1 << 20
_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


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
        #: repository -> the repositories it mounts from: its token also asks to pull those
        self.pulls: dict[str, set[str]] = {}

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
        query = [("scope", f"repository:{repository}:pull,push")]
        query += [("scope", f"repository:{r}:pull") for r in sorted(self.pulls.get(repository, ()))]
        if "service" in self.params:
            query.append(("service", self.params["service"]))
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


# ---- the protocol floor (--protocol) --------------------------------------------------------


@dataclass(eq=False)
class Step:
    """One request of the protocol minimum, and the steps that wait for it."""

    kind: str  # upload | mount | child (manifest by digest) | tag (manifest by tag)
    repository: str  # where it goes (source name, without the destination prefix)
    reference: str  # blob or manifest digest, or the tag
    rank: tuple[int, int] = (0, 0)  # queue order: protocol steps first, then uploads by size
    blob: dict[str, Any] | None = None  # upload: the corpus.json blob
    digest: str = ""  # mount: the blob; child / tag: the manifest
    home: str = ""  # mount: the repository the blob was uploaded into
    waiting: int = 0  # prerequisites not yet done
    then: list[Step] = field(default_factory=list)

    def after(self, *steps: Step) -> None:
        for step in steps:
            step.then.append(self)
            self.waiting += 1


LABELS = {
    "upload": "uploads",
    "mount": "mounts",
    "child": "manifest PUTs by digest",
    "tag": "manifest PUTs by tag",
}


def protocol_steps(doc: dict[str, Any]) -> list[Step]:
    """Every request of the protocol minimum for corpus.json `doc`, with its prerequisites:
    a mount after the upload it mounts from, a manifest after its blobs and children are in
    its repository. Every tag (references and bundle images) gets its manifest once."""
    steps: list[Step] = []
    present: dict[tuple[str, str], Step] = {}  # (repository, blob digest) -> what puts it there
    blobs = sorted(doc["blobs"], key=lambda b: -int(b["size"]))
    for n, blob in enumerate(blobs):
        digest, home = blob["digest"], blob["repository"]
        upload = Step("upload", home, digest, (1, n), blob=blob)
        steps.append(upload)
        present[(home, digest)] = upload
        for repository in blob["repositories"]:
            if repository != home:
                mount = Step("mount", repository, digest, digest=digest, home=home)
                mount.after(upload)
                steps.append(mount)
                present[(repository, digest)] = mount
    graph = {m["digest"]: m for m in doc["manifests"]}
    children: dict[tuple[str, str], Step] = {}  # (repository, digest) -> its PUT by digest

    def manifest(repository: str, digest: str, tag: str | None) -> Step:
        node = graph[digest]
        step = Step("tag" if tag else "child", repository, tag or digest, digest=digest)
        step.after(*(present[(repository, b)] for b in node["blobs"]))
        for child in node["children"]:
            if (repository, child) not in children:
                children[(repository, child)] = manifest(repository, child, None)
            step.after(children[(repository, child)])
        steps.append(step)
        return step

    for holder in [*doc["refs"], *doc["bundle_images"]]:
        manifest(holder["repository"], holder["digest"], holder["tag"])
    return steps


async def run_protocol(
    src: aiohttp.ClientSession,
    dest: aiohttp.ClientSession,
    args: argparse.Namespace,
    auth: Auth,
    doc: dict[str, Any],
) -> tuple[int, Counter[str]]:
    """Run the steps with `args.workers` workers, each as soon as its prerequisites are done
    (ready protocol steps before the remaining uploads); returns bytes sent and requests."""
    steps = protocol_steps(doc)
    graph = {m["digest"]: m for m in doc["manifests"]}

    def target(repository: str) -> str:
        return f"{args.prefix}/{repository}" if args.prefix else repository

    for step in steps:
        if step.kind == "mount":
            auth.pulls.setdefault(target(step.repository), set()).add(target(step.home))
    queue: asyncio.PriorityQueue[tuple[tuple[int, int], int, Step | None]] = asyncio.PriorityQueue()
    order = itertools.count()
    for step in steps:
        if step.waiting == 0:
            queue.put_nowait((step.rank, next(order), step))
    left = len(steps)
    sent = 0
    counts: Counter[str] = Counter()
    fetched: dict[str, asyncio.Task[tuple[bytes, str]]] = {}

    async def get_manifest(digest: str) -> tuple[bytes, str]:
        node = graph[digest]
        url = f"{args.src}/v2/{node['repository']}/manifests/{digest}"
        async with src.get(url, headers={"Accept": MANIFEST_TYPES}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {node['repository']}@{digest}: {resp.status}")
            counts["source manifest GETs"] += 1
            return await resp.read(), resp.headers.get("Content-Type", node["mediaType"])

    async def mount(step: Step) -> None:
        url = f"{args.dest}/v2/{target(step.repository)}/blobs/uploads/"
        params = {"mount": step.digest, "from": target(step.home)}
        headers = await auth.headers(target(step.repository))
        async with dest.post(url, params=params, headers=headers) as resp:
            await resp.read()
            if resp.status != 201:
                raise RuntimeError(f"mount {step.digest} into {step.repository}: {resp.status}")

    async def put_manifest(step: Step) -> None:
        if step.digest not in fetched:
            fetched[step.digest] = asyncio.ensure_future(get_manifest(step.digest))
        body, media_type = await fetched[step.digest]
        url = f"{args.dest}/v2/{target(step.repository)}/manifests/{step.reference}"
        headers = {**await auth.headers(target(step.repository)), "Content-Type": media_type}
        async with dest.put(url, data=body, headers=headers) as resp:
            if resp.status != 201:
                raise RuntimeError(
                    f"PUT {step.repository}:{step.reference}: {resp.status} {await resp.text()}"
                )
            await resp.read()

    async def worker() -> None:
        nonlocal left, sent
        while True:
            _rank, _n, step = await queue.get()
            if step is None:
                return
            if step.kind == "upload":
                assert step.blob is not None
                sent += await copy_blob(src, dest, args, auth, step.blob)
            elif step.kind == "mount":
                await mount(step)
            else:
                await put_manifest(step)
            counts[LABELS[step.kind]] += 1
            left -= 1
            for waiting in step.then:
                waiting.waiting -= 1
                if waiting.waiting == 0:
                    queue.put_nowait((waiting.rank, next(order), waiting))
            if left == 0:
                for _ in range(args.workers):
                    queue.put_nowait(((2, 0), next(order), None))

    async with asyncio.TaskGroup() as group:
        for _ in range(args.workers):
            group.create_task(worker())
    return sent, counts


async def run(args: argparse.Namespace, doc: dict[str, Any]) -> dict[str, Any]:
    blobs: Sequence[dict[str, Any]] = doc["blobs"]
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

        counts: Counter[str] | None = None
        if args.protocol:
            sent, counts = await run_protocol(src, dest, args, auth, doc)
        else:
            await asyncio.gather(*(worker() for _ in range(args.workers)))
    result: dict[str, Any] = {
        "seconds": round(time.perf_counter() - start, 3),
        "blobs": len(blobs),
        "bytes": sent,
        "workers": args.workers,
        "auth": auth.scheme or "none",
        "tokens": auth.fetched,
        "head": args.head,
        "hash": args.hash,
    }
    if counts is not None:
        result["requests"] = dict(sorted(counts.items()))
    return result


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
    parser.add_argument(
        "--protocol",
        action="store_true",
        help="the protocol floor: also mount each blob where else it is needed and PUT every "
        "manifest and tag (a usable copy, no checks)",
    )
    args = parser.parse_args(argv)
    args.src = args.src.rstrip("/")
    args.dest = args.dest.rstrip("/")
    doc = json.loads(args.corpus.read_text())
    result = asyncio.run(run(args, doc))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
