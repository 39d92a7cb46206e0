"""Cost growth: transship's time and peak RSS per tag at 1×, 3×, 10× the corpus, same run.

Run by hand, never in CI:

    .venv/bin/python bench/growth.py [--replicas 1,3,10] [--walk old] [--scale 0.05] \\
        [--workdir /work/bench-growth] [--rawfloor] [--markdown out.md]

For each replica count N, `bench/run.py`'s machinery builds the N× corpus (`bench/corpus.py
--replicas N`: the names N times under `r01/`, ..., own content, `--scale` GB each), pushes it
into a fresh upstream and runs transship alone: `plan images` (transship-plan), `copy --plan`
into a fresh TLS + htpasswd registry (transship) and again into the complete one
(transship-noop), each under `/usr/bin/time -v`; `--rawfloor` adds the raw blob floor. Then
the upstream and the destination are deleted and the next N starts.

The table gives wall seconds, milliseconds per tag and peak RSS of each step, and per-tag cost
relative to the first N: if nothing is quadratic in tags or repositories, that ratio stays
near 1 (bytes grow with N too, so a copy's per-tag cost includes its share of bytes). The
machine is shared: each row carries the load other processes put on it during the step, and
the tool's own CPU seconds per tag (user + system, from `/usr/bin/time`), which other
processes disturb far less than wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench, ToolRun, _transship_version, build_parser, run_tool  # noqa: E402

STEPS = ("transship-plan", "transship", "transship-noop", "rawfloor")


def measure(n: int, args: argparse.Namespace, root: Path) -> tuple[dict[str, object], Bench]:
    """One replica count: seed, run transship (and the floor), tear down."""
    argv = [
        "--replicas",
        str(n),
        "--walk",
        args.walk,
        "--scale",
        str(args.scale),
        "--quiet-load",
        str(args.quiet_load),
        "--quiet-wait",
        str(args.quiet_wait),
        "--attempts",
        "1",
        "--seed-threads",
        str(args.seed_threads),
    ]
    work = root / f"x{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o755)
    bench = Bench(build_parser().parse_args(argv), work)
    try:
        bench.seed()
        run_tool(bench, "transship", 1, args.quiet_load)
        if args.rawfloor:
            run_tool(bench, "rawfloor", 1, args.quiet_load)
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    assert bench.corpus is not None
    return bench.corpus.totals(), bench


def table(rows: list[tuple[dict[str, object], list[ToolRun]]]) -> list[str]:
    lines = [
        "| corpus | tags | repositories | unique MB | step | wall s | wall ms / tag "
        "| vs first | tool CPU ms / tag | vs first | peak RSS MB | dest requests / tag "
        "| complete | others' load (cores) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | ---: |",
    ]
    first: dict[str, tuple[float, float]] = {}
    for totals, runs in rows:
        tags = int(str(totals["tags"]))
        for run in sorted(runs, key=lambda r: STEPS.index(r.tool)):
            wall, cpu = run.seconds / tags, run.client_cpu / tags
            wall0, cpu0 = first.setdefault(run.tool, (wall, cpu))
            lines.append(
                f"| {totals['replicas']}× | {tags} | {totals['repositories']} "
                f"| {int(str(totals['unique_bytes'])) / 1e6:.0f} | {run.tool} "
                f"| {run.seconds:.2f} | {wall * 1000:.2f} | {wall / wall0:.2f} "
                f"| {cpu * 1000:.2f} | {cpu / cpu0 if cpu0 else 0:.2f} "
                f"| {run.peak_rss_kb / 1024:.0f} | {run.requests / tags:.2f} "
                f"| {'yes' if run.complete else 'NO'} "
                f"| {run.other_cpu / max(run.seconds, 1e-9):.2f} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,3,10", help="comma-separated replica counts")
    parser.add_argument("--walk", choices=("release", "old"), default="old")
    parser.add_argument("--scale", type=float, default=0.05, help="GB per replica")
    parser.add_argument("--workdir", type=Path, help="default: a new directory in /dev/shm")
    parser.add_argument("--rawfloor", action="store_true", help="also run the raw blob floor")
    parser.add_argument("--quiet-load", type=float, default=0.3)
    parser.add_argument("--quiet-wait", type=float, default=180)
    parser.add_argument("--seed-threads", type=int, default=8)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        parser.error("--replicas wants positive counts, e.g. 1,3,10")
    if args.workdir:
        root = args.workdir
        root.mkdir(parents=True, exist_ok=True)
    else:
        shm = Path("/dev/shm")
        root = Path(tempfile.mkdtemp(prefix="transship-growth-", dir=shm if shm.is_dir() else None))
    rows: list[tuple[dict[str, object], list[ToolRun]]] = []
    loads: list[str] = []
    try:
        for n in counts:
            totals, bench = measure(n, args, root)
            rows.append((totals, bench.runs))
            loads.append(f"{n}×: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
            print("\n".join(table(rows)), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    command = "python bench/growth.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- command: `{command.strip()}`",
            f"- transship: {_transship_version()}",
            f"- load average (1/5/15 min) after each corpus: {'; '.join(loads)}",
            "",
            *table(rows),
        ]
    )
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
