"""Across the air gap, measured: save and load throughput against the direct copy, and archive
bytes against unique blob bytes. Run by hand (never in CI), like bench/run.py:

    .venv/bin/python bench/airgap.py [--scale 1.0] [--workdir /dev/shm/gap]

Same TKG-shaped corpus as bench/run.py; the archive is written to --workdir (use a tmpfs to
measure transship rather than the disk). Each step gets a fresh destination registry.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from corpus import build_corpus, push_corpus, write_outputs  # noqa: E402
from harness.pki import build_pki  # noqa: E402
from harness.registry import RegistryProcess  # noqa: E402

TRANSSHIP = str(ROOT / ".venv" / "bin" / "transship")
CREDS = "alice:s3cret-Pa55"


def run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([TRANSSHIP, *args, "-q"], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gap-", dir=args.workdir))
    pki = build_pki(work / "pki")
    corpus = build_corpus("release", args.scale)
    unique = corpus.totals()["unique_bytes"]
    env = {**os.environ, "DOCKER_CONFIG": str(work), "TRANSSHIP_DEST_CREDS": CREDS}
    with RegistryProcess(work / "upstream", "plain") as upstream:
        push_corpus(upstream, corpus)
        images, _doc = write_outputs(corpus, upstream.host, work / "corpus")
        rows: list[tuple[str, float, str]] = []
        with RegistryProcess(work / "direct", "tls_basic", pki=pki) as dest:
            seconds = run(
                [
                    "copy",
                    "--images",
                    str(images),
                    "--dest",
                    f"{dest.host}/bench",
                    "--dest-ca",
                    str(pki.ca_pem_path),
                ],
                env,
            )
            rows.append(("copy (registry → registry)", seconds, ""))
        archive = work / "tkg.tar"
        seconds = run(["save", "--images", str(images), "-o", str(archive)], env)
        size = archive.stat().st_size
        rows.append(
            (
                "save (registry → tar)",
                seconds,
                f"archive {size / 1e6:.1f} MB = {size / unique:.4f} × unique bytes",
            )
        )
        with RegistryProcess(work / "loaded", "tls_basic", pki=pki) as dest:
            seconds = run(
                [
                    "load",
                    str(archive),
                    "--dest",
                    f"{dest.host}/bench",
                    "--dest-ca",
                    str(pki.ca_pem_path),
                ],
                env,
            )
            rows.append(("load (tar → registry)", seconds, ""))
    print(f"corpus: {len(corpus.refs)} refs, {unique / 1e6:.1f} MB unique")
    print("| step | wall s | MB/s of unique bytes | note |")
    print("| --- | ---: | ---: | --- |")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {unique / seconds / 1e6:.0f} | {note} |")


if __name__ == "__main__":
    main()
