"""Requests a cold `copy --images` sends to the destination, and a no-op rerun, by kind.

A small loopback run (issue 16, "requests on a cold destination"): TAGS small images in REPOS
repositories, copied by the transship under `--src` (a source tree's `src/`, default this
checkout's) into a fresh docker-registry. Prints the destination's access log counted by method,
with the GETs of the catalog (`GET _catalog`) and of tag lists (`GET tags/list`) apart.

    .venv/bin/python bench/cold_requests.py --tags 50 --repos 10 [--src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.registry import RegistryProcess  # noqa: E402
from harness.seed import SeedClient, build_images_sharing_base  # noqa: E402

READS = ("GET", "HEAD", "GET _catalog", "GET tags/list")


def kind(method: str, path: str) -> str:
    if method == "GET" and path.startswith("/v2/_catalog"):
        return "GET _catalog"
    if method == "GET" and "/tags/list" in path:
        return "GET tags/list"
    return method


def counted(dest: RegistryProcess, since: int) -> Counter[str]:
    return Counter(kind(e.method, e.path) for e in dest.access_log(since) if e.path != "/v2/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = RegistryProcess(work / "source", "plain").start()
        dest = RegistryProcess(work / "dest", "plain").start()
        try:
            client = SeedClient.for_registry(source)
            images = build_images_sharing_base(
                7, args.tags, base_sizes=(64_000,), layer_sizes=(16_000,)
            )
            refs = []
            for i, image in enumerate(images):
                repo = f"bench/app{i % args.repos}"
                client.push_image(repo, image, f"v{i}")
                refs.append(f"{source.host}/{repo}:v{i}")
            listing = work / "images.txt"
            listing.write_text("\n".join(refs) + "\n")
            env = {**os.environ, "PYTHONPATH": str(args.src), "DOCKER_CONFIG": str(work)}
            cmd = [
                sys.executable,
                "-m",
                "transship",
                "copy",
                "--images",
                str(listing),
                "--dest",
                f"{dest.host}/mirror",
                "-q",
            ]
            for run in ("cold", "rerun"):
                mark = dest.log_offset()
                subprocess.run(cmd, env=env, check=True, timeout=300)
                dest.wait_for_log(
                    rf"/v2/mirror/bench/app{(args.tags - 1) % args.repos}/"
                    rf"manifests/v{args.tags - 1}",
                    since=mark,
                )
                by = counted(dest, mark)
                reads = sum(by[m] for m in READS)
                writes = sum(n for m, n in by.items() if m not in READS)
                ratio = f"{reads / writes:.1%}" if writes else "-"
                print(
                    f"{run}: {sum(by.values())} requests {dict(sorted(by.items()))} "
                    f"reads={reads} writes={writes} reads/writes={ratio}",
                    flush=True,
                )
        finally:
            dest.stop()
            source.stop()


if __name__ == "__main__":
    main()
