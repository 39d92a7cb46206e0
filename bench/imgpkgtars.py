"""The vendor's air-gap shape, measured: a TKG-shaped set of imgpkg tars (one per reference, as
`gen-publish-images-totar.sh` and `download-bundle` write them) loaded into a fresh registry,
against a `transship load` of the equivalent OCI archive. Run by hand (never in CI):

    .venv/bin/python bench/imgpkgtars.py [--scale 0.5] [--workdir /dev/shm]

Same corpus as bench/run.py (`--walk release`, 189 references). The tars are written by
transship's imgpkg tar writer (`transship.imgpkg.tarwriter`, byte-identical to imgpkg v0.36 on
the fixtures) from the upstream registry: an image or index per tar, a bundle tar holds the
bundle and every image it locks (nested bundles too), like `imgpkg copy -b --to-tar`. A
`publish-images-fromtar.yaml` maps each tar to its repository path. Bytes sent are the sizes
of the blob uploads the destination's access log shows completed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench"), str(ROOT / "src")]

from corpus import Corpus, build_corpus, push_corpus, write_outputs  # noqa: E402
from harness.registry import RegistryProcess  # noqa: E402

from transship.imgpkg.tarball import ROOT_BUNDLE_LABEL  # noqa: E402
from transship.imgpkg.tarwriter import TarSource, write_imgpkg_tar  # noqa: E402
from transship.remote.registry import Registry, RegistryOptions  # noqa: E402

TRANSSHIP = str(ROOT / ".venv" / "bin" / "transship")


def tar_name(repository: str, tag: str) -> str:
    """TKG's naming: the image path with `/` and `:` replaced by `-`, then `.tar`."""
    return f"{repository.replace('/', '-')}-{tag}.tar"


async def write_tars(corpus: Corpus, host: str, out: Path, parallel: int = 8) -> dict[str, str]:
    """One tar per reference; returns {tar file name: repository path} (the fromtar YAML)."""
    registry = Registry(host, RegistryOptions(plain_http=True))
    listing: dict[str, str] = {}
    limit = asyncio.Semaphore(parallel)

    async def one(ref: object) -> None:
        from corpus import CorpusRef

        assert isinstance(ref, CorpusRef)
        base = f"{host}/{ref.repository}"
        sources = [
            TarSource(
                registry,
                ref.repository,
                ref.tag,
                base,
                tag=ref.tag,
                labels=((ROOT_BUNDLE_LABEL, ""),) if ref.kind == "bundle" else (),
            )
        ]
        for image in ref.closure() if ref.kind == "bundle" else []:
            sources.append(
                TarSource(
                    registry,
                    image.repository,
                    image.digest,
                    f"{host}/{image.repository}",
                    orig_ref=f"{host}/{image.repository}@{image.digest}",
                )
            )
        name = tar_name(ref.repository, ref.tag)
        async with limit:
            await write_imgpkg_tar(out / name, sources)
        listing[name] = ref.repository

    try:
        await asyncio.gather(*(one(ref) for ref in corpus.refs))
    finally:
        await registry.close()
    return listing


CPU: dict[str, list[float]] = {}


def run(args: list[str], env: dict[str, str], kind: str = "") -> float:
    """Wall seconds of one transship run; its CPU seconds (user + sys) go to CPU[kind]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [TRANSSHIP, *args, "-q"] if kind != "tars" else [TRANSSHIP, *args, "-v"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    took = time.perf_counter() - start
    for line in proc.stderr.splitlines():
        if "imgpkg tars:" in line:
            print(f"  {kind}: {took:.1f} s wall; {line.split('imgpkg tars: ', 1)[1]}", flush=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(kind, []).append(cpu)
    return took


def sent_bytes(registry: RegistryProcess, sizes: dict[str, int]) -> int:
    total = 0
    for entry in registry.blob_uploads():
        digest = entry.path.split("digest=", 1)[-1].split("&", 1)[0].replace("%3A", ":")
        total += sizes.get(digest, 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each load (median)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-imgpkgtars-", dir=args.workdir))
    corpus = build_corpus("release", args.scale)
    unique = corpus.totals()["unique_bytes"]
    sizes = {digest: blob.size for digest, blob in corpus.blobs.items()}
    env = {**os.environ, "DOCKER_CONFIG": str(work)}
    rows: list[tuple[str, float, str]] = []
    try:
        with RegistryProcess(work / "upstream", "plain") as upstream:
            push_corpus(upstream, corpus)
            images, _doc = write_outputs(corpus, upstream.host, work / "corpus")
            tars = work / "tars"
            tars.mkdir()
            start = time.perf_counter()
            listing = asyncio.run(write_tars(corpus, upstream.host, tars))
            took = time.perf_counter() - start
            (tars / "publish-images-fromtar.yaml").write_text(
                "".join(f"{name}: {path}\n" for name, path in sorted(listing.items()))
            )
            held = sum(p.stat().st_size for p in tars.glob("*.tar"))
            rows.append(
                (
                    f"write {len(listing)} imgpkg tars",
                    took,
                    f"tars hold {held / 1e6:.0f} MB = {held / unique:.2f} × unique bytes",
                )
            )
            archive = work / "tkg.tar"
            run(["save", "--images", str(images), "-o", str(archive)], env)
        # alternate the two loads, each into a fresh registry: the machine is shared, so the
        # median of several runs is compared, not one run against another
        times: dict[str, list[float]] = {"oci": [], "tars": []}
        sent: dict[str, int] = {}
        for round_ in range(args.repeat):
            for kind, source in (("oci", archive), ("tars", tars)):
                with RegistryProcess(work / f"{kind}-{round_}", "plain") as dest:
                    times[kind].append(
                        run(["load", str(source), "--dest", f"{dest.host}/tkg"], env, kind)
                    )
                    sent[kind] = sent_bytes(dest, sizes)
                if not args.keep:
                    shutil.rmtree(work / f"{kind}-{round_}", ignore_errors=True)
        oci = statistics.median(times["oci"])
        fromtar = statistics.median(times["tars"])
        rows.append(
            (
                "load OCI archive (median)",
                oci,
                f"sent {sent['oci'] / 1e6:.0f} MB = {sent['oci'] / unique:.3f}× unique; "
                f"runs {', '.join(f'{t:.1f}' for t in times['oci'])}; transship CPU s "
                f"{statistics.median(CPU['oci']):.1f}",
            )
        )
        rows.append(
            (
                "load imgpkg tars, download-bundle dir (median)",
                fromtar,
                f"sent {sent['tars'] / 1e6:.0f} MB = {sent['tars'] / unique:.3f}× unique; "
                f"{fromtar / oci:.2f}× the OCI load time; "
                f"runs {', '.join(f'{t:.1f}' for t in times['tars'])}; transship CPU s "
                f"{statistics.median(CPU['tars']):.1f}",
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"corpus: {len(corpus.refs)} refs, {unique / 1e6:.1f} MB unique, scale {args.scale}")
    print("| step | wall s | note |")
    print("| --- | ---: | --- |")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
