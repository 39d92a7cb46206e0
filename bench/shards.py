"""`copy --plan --shard I/N` as N processes at once, for N in 1, 2, 4, against the raw floor.

Run by hand (needs `docker-registry`, `htpasswd`), like bench/run.py, whose corpus, registries
and measurements it shares:

    .venv/bin/python bench/shards.py [--scale 0.2] [--shards 1,2,4] [--no-rawfloor]

1. Pushes the TKG-shaped corpus (`bench/corpus.py`) into a plain-HTTP upstream and plans it
   once (`transship plan images`, not timed).
2. For each N: a fresh, empty TLS + htpasswd destination; the upstream restarted; then N
   `transship copy --plan P --shard I/N` processes started together (each under
   `/usr/bin/time -v`). Wall is from the first start to the last exit. The destination's
   access log gives bytes of completed uploads, mounts and requests; every tag and blob of the
   corpus is checked there, and `transship verify --plan P` (the whole plan) must exit 0.
   Each shard's `--report` gives its own seconds and the blobs it shares with other shards.
3. The raw floor (`bench/rawfloor.py`: every unique blob GET -> PUT, no manifests) runs in
   the same session for scale.

On a 2-core machine the N processes, both registries and the harness share two cores: N
processes are not N times faster, and what sharding adds (a blob two shards need crosses the
wire once per shard) shows in bytes sent / unique.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from corpus import MB
from run import (  # bench/run.py: the same corpus, registries and measurements
    CREDS,
    PREFIX,
    TRANSSHIP,
    Bench,
    Timed,
    ToolRun,
    build_parser,
    default_root,
    timed,
    tool_env,
)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_shards(bench: Bench, plan_template: str, count: int, old_host: str) -> dict[str, object]:
    """N shard processes at once into a fresh destination; the figures of that run."""
    dest = bench.fresh_dest(f"shards{count}")
    logs = bench.work / "tools" / f"shards{count}"
    logs.mkdir(parents=True, exist_ok=True)
    plan = logs / "plan.yaml"  # the same plan, for this destination's port
    plan.write_text(plan_template.replace(f"{old_host}/{PREFIX}", f"{dest.host}/{PREFIX}"))
    env = tool_env(logs / "home")
    load_before = uptime()
    window = bench.begin(dest)
    results: dict[int, Timed] = {}

    def shard(index: int) -> None:
        cmd: list[str | Path] = [
            TRANSSHIP,
            "copy",
            "--plan",
            plan,
            "--shard",
            f"{index}/{count}",
            "--dest-ca",
            str(bench.pki.ca.cert_path),
            "--dest-creds",
            CREDS,
            "-q",
            "--report",
            logs / f"report-{index}.json",
        ]
        results[index] = timed(cmd, env, logs, f"shard-{index}-of-{count}")

    start = time.perf_counter()
    threads = [threading.Thread(target=shard, args=(i,)) for i in range(1, count + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    run = ToolRun(f"{count} shard{'s' if count > 1 else ''}", wall)
    for index, result in sorted(results.items()):
        bench._add(run, result, f"shard {index}/{count}")
    bench.finish(run, dest, window)
    checked = timed(
        [
            TRANSSHIP,
            "verify",
            "--plan",
            plan,
            "--dest-ca",
            str(bench.pki.ca.cert_path),
            "--dest-creds",
            CREDS,
            "-q",
        ],
        env,
        logs,
        "verify",
    )
    shards = []
    for index in range(1, count + 1):
        doc = json.loads((logs / f"report-{index}.json").read_text())
        info = doc["shard"]
        shards.append(
            {
                "shard": f"{index}/{count}",
                "seconds": results[index].seconds,
                "rss_mb": results[index].rss_kb / 1024,
                "entries": info["entries"],
                "repositories": info["repositories"],
                "bytes": sum(int(e["bytes"] or 0) for e in doc["entries"]),
                "shared_blobs": info["shared_blobs"],
                "shared_bytes_sent": info["shared_bytes_sent"],
            }
        )
    dest.stop()
    return {
        "shards": count,
        "wall": wall,
        "complete": run.complete,
        "verify_exit": checked.code,
        "verify_seconds": checked.seconds,
        "bytes_sent": run.bytes_sent,
        "uploads": run.uploads,
        "mounts": run.mounts,
        "requests": run.requests,
        "source_requests": run.source_requests,
        "client_cpu": run.client_cpu,
        "dest_cpu": run.dest_cpu,
        "peak_rss_mb": run.peak_rss_kb / 1024,
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "per_shard": shards,
    }


def table(rows: list[dict[str, object]], unique: int, floor: float | None) -> str:
    head = (
        "| shards | wall | / floor | bytes sent / unique | uploads | mounts | dest requests "
        "| client CPU | slowest / fastest shard | complete, verify | load (uptime 1-min) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for row in rows:
        per = row["per_shard"]
        assert isinstance(per, list)
        secs = [float(s["seconds"]) for s in per]
        wall = float(row["wall"])  # type: ignore[arg-type]
        ratio = f"{wall / floor:.2f}x" if floor else "-"
        load = str(row["uptime_before"]).split("load average:")[-1].split(",")[0].strip()
        lines.append(
            f"| {row['shards']} | {wall:.1f} s | {ratio} "
            f"| {int(row['bytes_sent']) / unique:.3f} "  # type: ignore[call-overload]
            f"| {row['uploads']} | {row['mounts']} | {row['requests']} "
            f"| {float(row['client_cpu']):.1f} s "  # type: ignore[arg-type]
            f"| {max(secs):.1f} / {min(secs):.1f} s "
            f"| {row['complete']}, exit {row['verify_exit']} | {load} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="GB of unique blob bytes")
    parser.add_argument("--shards", default="1,2,4", help="comma-separated shard counts")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--no-rawfloor", action="store_true")
    parser.add_argument("--quiet-load", type=float, default=99.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.shards.split(",")]
    work = Path(tempfile.mkdtemp(prefix="shard-bench-", dir=default_root()))
    work.chmod(0o755)
    bench_args = build_parser().parse_args([])  # bench/run.py's defaults, then ours
    bench_args.walk, bench_args.scale, bench_args.seed = "release", args.scale, args.seed
    bench_args.seed_threads, bench_args.dest_mode = 8, "tls_basic"
    bench_args.quiet_load, bench_args.quiet_wait, bench_args.keep = args.quiet_load, 60.0, True
    bench = Bench(bench_args, work)
    try:
        bench.seed()
        assert bench.corpus is not None
        unique = int(bench.corpus.totals()["unique_bytes"])
        probe = bench.fresh_dest("plan")  # a host to plan for; each run gets its own
        plan = work / "plan.yaml"
        subprocess.run(
            [
                TRANSSHIP,
                "plan",
                "images",
                bench.images,
                "--dest",
                f"{probe.host}/{PREFIX}",
                "-o",
                plan,
                "-q",
            ],
            env=tool_env(work / "plan-home"),
            check=True,
        )
        probe.stop()
        template = plan.read_text()
        rows = []
        floor = None
        if not args.no_rawfloor:
            print(f"rawfloor; {uptime()}", flush=True)
            bench.rawfloor()
            floor = bench.runs[-1].seconds
        for count in counts:
            print(f"{count} shard(s); {uptime()}", flush=True)
            rows.append(run_shards(bench, template, count, probe.host))
            print(json.dumps(rows[-1], indent=1), flush=True)
        text = (
            f"scale {args.scale}: {unique / MB:.0f} MB unique, "
            f"{bench.corpus.totals()['refs']} references; raw floor "
            + (f"{floor:.1f} s" if floor else "not run")
            + "\n\n"
            + table(rows, unique, floor)
        )
        print()
        print(text)
        (work / "results.md").write_text(text)
        (work / "results.json").write_text(json.dumps(rows, indent=1))
    finally:
        bench.stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
