"""Peak disk of `save -o FILE.tar`, sampled while it runs: this tree against an older commit.

Run by hand (never in CI), like bench/run.py:

    .venv/bin/python bench/save_disk.py [--scale 0.3] [--workdir /dev/shm/x] [--old 71c29d4]

The TKG-shaped corpus of bench/run.py is pushed to a plain registry once; each save writes into
its own empty directory, whose allocated bytes (st_blocks of every file below it, so sparse
regions count as what they really take) are summed every 10 ms from a thread, along with the
save process's peak RSS (VmHWM). `--old COMMIT` runs that commit's `src/` (git archive) the
same way: before the in-place tar writer it built FILE.tar.partial/ and then packed it.
`--split` adds a run with volumes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from corpus import build_corpus, push_corpus, write_outputs  # noqa: E402
from harness.registry import RegistryProcess  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")


def allocated(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def high_water_kib(pid: int) -> int:
    """VmHWM of a running process (not ru_maxrss: that starts at the forking parent's)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured_save(
    src: Path, images: Path, out_dir: Path, extra: list[str], env: dict[str, str]
) -> tuple[float, int, int, int]:
    """(wall seconds, peak allocated bytes under out_dir, final bytes, peak RSS KiB)."""
    out_dir.mkdir(parents=True)
    peak = [0, 0]
    done = threading.Event()
    args = [PYTHON, "-m", "transship", "save", "--images", str(images)]
    args += ["-o", str(out_dir / "tkg.tar"), "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(args, env={**env, "PYTHONPATH": str(src)})

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], allocated(out_dir))
            peak[1] = max(peak[1], high_water_kib(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if status != 0:
        raise SystemExit(f"save failed ({status}) with {src}")
    final = allocated(out_dir)
    return wall, max(peak[0], final), final, peak[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--old", default=None, help="a commit to compare (its src/ is used)")
    parser.add_argument("--split", default=None, help="also save in volumes of this size")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-savedisk-", dir=args.workdir))
    sources = [("this tree", ROOT / "src")]
    if args.old:
        old = work / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.old, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        sources.insert(0, (f"commit {args.old}", old / "src"))
    corpus = build_corpus("release", args.scale)
    unique = corpus.totals()["unique_bytes"]
    env = {**os.environ, "DOCKER_CONFIG": str(work)}
    rows = []
    with RegistryProcess(work / "upstream", "plain") as upstream:
        push_corpus(upstream, corpus)
        images, _doc = write_outputs(corpus, upstream.host, work / "corpus")
        runs = [(name, src, []) for name, src in sources]
        if args.split:
            runs += [
                (f"{n}, --split-size {args.split}", s, ["--split-size", args.split])
                for n, s in sources
            ]
        for i, (name, src, extra) in enumerate(runs):
            load = os.getloadavg()[0]
            wall, peak, final, rss = measured_save(src, images, work / f"out{i}", extra, env)
            rows.append((name, wall, peak, final, rss, load))
    print(f"corpus: {len(corpus.refs)} refs, {unique / 1e6:.1f} MB unique; {time.ctime()}")
    print(
        "| save -o tkg.tar | wall s | peak disk MB | archive MB | peak ÷ archive | RSS MB | load |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, wall, peak, final, rss, load in rows:
        print(
            f"| {name} | {wall:.2f} | {peak / 1e6:.1f} | {final / 1e6:.1f} | "
            f"{peak / final:.3f} | {rss / 1024:.0f} | {load:.1f} |"
        )
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
