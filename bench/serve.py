"""`transship serve` against `docker-registry` as the source of a pull. Run by hand, never in CI:

    .venv/bin/python bench/serve.py [--scale 1.0] [--workdir /dev/shm/sv] [--clients 32]

The TKG-shaped corpus of bench/run.py is pushed to a docker-registry and saved once into a tar
(`transship save`). Then the same content is pulled from each source — the docker-registry
(freshly restarted) and `transship serve TAR` (freshly started, so every blob is hashed on its
first serve) — into a fresh plain docker-registry, once with `transship copy --images` and once
with `skopeo sync` (one YAML and process per destination directory, as bench/run.py does).
Last, `--clients` concurrent clients share out every image (manifests and blobs, bodies read
and dropped, a base layer again for every image that has it) from each source; errors, MB/s and
each server's peak RSS are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from corpus import Corpus, build_corpus, push_corpus, write_outputs  # noqa: E402
from harness.registry import RegistryProcess, free_port  # noqa: E402

TRANSSHIP = str(ROOT / ".venv" / "bin" / "transship")
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def env_for(home: Path) -> dict[str, str]:
    (home / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "DOCKER_CONFIG": str(home / "docker"),
    }


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Serve:
    """`transship serve TAR` on a free port; `pid` for RSS."""

    def __init__(self, tar: Path, work: Path) -> None:
        self.tar, self.work = tar, work

    def __enter__(self) -> Serve:
        ready = self.work / "ready.json"
        ready.unlink(missing_ok=True)
        self.log = (self.work / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [
                TRANSSHIP,
                "serve",
                str(self.tar),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--ready-file",
                str(ready),
                "-q",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited")
            time.sleep(0.05)
        doc = json.loads(ready.read_text())
        self.host, self.repository = doc["address"], doc["repository"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self.log.close()


def copy_transship(source_prefix: str, corpus: Corpus, dest: RegistryProcess, work: Path) -> float:
    work.mkdir(parents=True, exist_ok=True)
    images = work / "images.txt"
    images.write_text("".join(f"{source_prefix}/{r.name}\n" for r in corpus.refs))
    start = time.perf_counter()
    subprocess.run(
        [TRANSSHIP, "copy", "--images", str(images), "--dest", f"{dest.host}/bench", "-q"],
        env=env_for(work / "home"),
        check=True,
    )
    return time.perf_counter() - start


def sync_skopeo(source_prefix: str, corpus: Corpus, dest: RegistryProcess, work: Path) -> float:
    host, _, path = source_prefix.partition("/")
    groups: dict[str, dict[str, list[str]]] = {}
    named = [(r.repository, r.tag) for r in corpus.refs]
    named += [(b.repository, b.tag) for b in corpus.bundle_images]
    for repository, tag in named:
        served = f"{path}/{repository}" if path else repository
        groups.setdefault(repository.rsplit("/", 1)[0], {}).setdefault(served, []).append(tag)
    work.mkdir(parents=True, exist_ok=True)
    env = env_for(work / "home")
    start = time.perf_counter()
    for n, (dirname, images) in enumerate(sorted(groups.items())):
        source = work / f"sync-{n:02d}.yaml"
        source.write_text(yaml.safe_dump({host: {"tls-verify": False, "images": images}}))
        subprocess.run(
            [
                "skopeo",
                "sync",
                "--all",
                "--preserve-digests",
                "--src",
                "yaml",
                "--dest",
                "docker",
                "--dest-tls-verify=false",
                str(source),
                f"{dest.host}/bench/{dirname}",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


async def pull_all(base: str, names: list[str], clients: int) -> tuple[float, int, int]:
    """`clients` workers at once, sharing the images between them (each image whole: its
    manifests and every blob, shared base layers again for every image): (seconds, bytes,
    errors)."""
    received = errors = 0
    connector = aiohttp.TCPConnector(limit=clients * 2)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def get(url: str, accept: str | None = None) -> bytes | None:
            nonlocal received, errors
            headers = {"Accept": accept} if accept else {}
            async with session.get(url, headers=headers) as resp:
                if resp.status != 200:
                    errors += 1
                    return None
                if accept:
                    body = await resp.read()
                    received += len(body)
                    return body
                async for chunk in resp.content.iter_chunked(1 << 20):
                    received += len(chunk)
                return b""

        async def image(name: str, ref: str) -> None:
            body = await get(f"{base}/v2/{name}/manifests/{ref}", ACCEPT)
            if body is None:
                return
            doc: dict[str, Any] = json.loads(body)
            for child in doc.get("manifests") or []:
                await image(name, child["digest"])
            for blob in [doc.get("config"), *(doc.get("layers") or [])]:
                if blob and not blob.get("urls"):
                    await get(f"{base}/v2/{name}/blobs/{blob['digest']}")

        async def worker(k: int) -> None:
            for ref in names[k::clients]:
                name, _, tag = ref.rpartition(":")
                await image(name, tag)

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
    return time.perf_counter() - start, received, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-pulls", action="store_true", help="only the concurrent clients")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=args.workdir))
    corpus = build_corpus("release", args.scale)
    unique_mb = corpus.totals()["unique_bytes"] / 1e6
    rows: list[str] = []
    with RegistryProcess(work / "upstream", "plain") as upstream:
        push_corpus(upstream, corpus)
        images, _ = write_outputs(corpus, upstream.host, work / "corpus")
        tar = work / "tkg.tar"
        subprocess.run(
            [
                TRANSSHIP,
                "save",
                "--images",
                str(images),
                "--dest",
                "serve.local/bench",
                "-o",
                str(tar),
                "-q",
            ],
            env=env_for(work / "home-save"),
            check=True,
        )
        print(f"corpus {unique_mb:.0f} MB unique, archive {tar.stat().st_size / 1e6:.0f} MB")
        pulls = (("transship copy", copy_transship), ("skopeo sync", sync_skopeo))
        for tool, pull in pulls if not args.no_pulls else ():
            upstream.restart()
            with RegistryProcess(work / f"d-{tool[:4]}-reg", "plain") as dest:
                reg_s = pull(upstream.host, corpus, dest, work / f"{tool[:4]}-reg")
            with (
                Serve(tar, work) as serve,
                RegistryProcess(work / f"d-{tool[:4]}-srv", "plain") as dest,
            ):
                srv_s = pull(serve.repository, corpus, dest, work / f"{tool[:4]}-srv")
                rss = peak_rss_mb(serve.proc.pid)
            rows.append(
                f"| {tool} | {reg_s:.1f} | {srv_s:.1f} | {reg_s / srv_s:.2f} | {rss:.0f} MB |"
            )
            print(rows[-1], flush=True)
        names = [r.name for r in corpus.refs]
        upstream.restart()
        reg = asyncio.run(pull_all(upstream.url, names, args.clients))
        reg_rss = peak_rss_mb(upstream.pid) if upstream.pid else 0.0
        with Serve(tar, work) as serve:
            cold = asyncio.run(
                pull_all(f"http://{serve.host}", [f"bench/{n}" for n in names], args.clients)
            )
            warm = asyncio.run(
                pull_all(f"http://{serve.host}", [f"bench/{n}" for n in names], args.clients)
            )
            rss = peak_rss_mb(serve.proc.pid)
    print()
    print(
        "| pull into a fresh docker-registry | from docker-registry s | from serve s | "
        "speed-up | serve peak RSS |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print()
    print(f"| {args.clients} concurrent clients sharing out every image | wall s | MB/s | errors |")
    print("| --- | ---: | ---: | ---: |")
    for label, (seconds, got, errors) in (
        ("docker-registry", reg),
        ("serve, first pass (hashing)", cold),
        ("serve, second pass (sendfile)", warm),
    ):
        print(f"| {label} | {seconds:.1f} | {got / 1e6 / seconds:.0f} | {errors} |")
    print(f"\npeak RSS: serve {rss:.0f} MB (both passes), docker-registry {reg_rss:.0f} MB")


if __name__ == "__main__":
    main()
