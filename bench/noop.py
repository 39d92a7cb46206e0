"""No-op reruns: `copy --plan` and `copy --images` into a complete TLS + htpasswd destination.

Issue 16, "no-op reruns": the TKG-shaped corpus of `bench/corpus.py` (blob bytes do not matter
to a no-op, so the default scale is small) is pushed into a plain loopback upstream, planned
(`plan images -o plan.yaml`) and copied once into a fresh TLS + htpasswd registry. Then each
rerun form runs ROUNDS times into the now complete destination, by the transship under `--src`
(a source tree's `src/`, default this checkout's; give several, comma-separated, to compare
trees in one run, round-robin): wall time, transship's own CPU time (user + system of the
process: what a shared machine disturbs least), requests at the destination and the upstream
by method, and the machine's load average beside each figure.

    .venv/bin/python bench/noop.py [--walk release|old] [--rounds 5] [--src A/src,B/src]
        [--dest-mode tls_basic|tls]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import build_corpus, push_corpus, write_outputs  # noqa: E402
from harness.pki import build_pki  # noqa: E402
from harness.registry import PASSWORD, USERNAME, RegistryProcess  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"
PREFIX = "bench"


def by_method(reg: RegistryProcess, since: int) -> Counter[str]:
    """Requests since `since`, by method (`/v2/` pings apart, as `PING`)."""
    time.sleep(0.3)  # access lines are written just after the response
    return Counter("PING" if e.path == "/v2/" else e.method for e in reg.access_log(since))


def cpu_of(pid: int | None) -> float:
    """user + system seconds of one process (the destination registry's bcrypt work)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walk", choices=("release", "old"), default="release")
    parser.add_argument("--scale", type=float, default=0.02, help="GB of unique blob bytes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--src", default=str(ROOT / "src"), help="comma-separated src/ trees")
    parser.add_argument("--forms", default="plan,images", help="rerun forms to time")
    parser.add_argument("--workdir", type=Path, help="default: a new directory in /dev/shm")
    parser.add_argument("--hold", type=float, default=0, help="then keep the registries up S s")
    parser.add_argument(
        "--dest-mode",
        choices=("tls_basic", "tls"),
        default="tls_basic",
        help="destination: TLS + htpasswd (a bcrypt check per request), or TLS alone (what a "
        "HEAD costs a registry without the password check)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # registries stop in `finally`
    trees = [Path(s) for s in args.src.split(",") if s]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="noop-", dir="/dev/shm"))
    root.mkdir(parents=True, exist_ok=True)
    pki = build_pki(root / "pki")
    upstream = RegistryProcess(root / "upstream", "plain")
    dest = RegistryProcess(root / "dest", args.dest_mode, pki=pki)
    try:
        corpus = build_corpus(args.walk, args.scale, "1")
        upstream.start()
        push_corpus(upstream, corpus, 8)
        images, _ = write_outputs(corpus, upstream.host, root / "corpus")
        dest.start()
        home = root / "home"
        home.mkdir()
        plan = root / "plan.yaml"
        common = ["--dest-ca", str(pki.ca.cert_path)]
        if args.dest_mode == "tls_basic":
            common += ["--dest-creds", f"{USERNAME}:{PASSWORD}"]
        commands = {
            "plan": ["copy", "--plan", str(plan), *common, "-q"],
            "images": [
                "copy",
                "--images",
                str(images),
                "--dest",
                f"{dest.host}/{PREFIX}",
                *common,
                "-q",
            ],
        }

        def run(tree: Path, argv: list[str]) -> float:
            env = {
                "PATH": os.environ["PATH"],
                "HOME": str(home),
                "PYTHONPATH": str(tree),
                "XDG_CACHE_HOME": str(home / f"cache-{trees.index(tree)}"),
                "DOCKER_CONFIG": str(home),
                "LANG": "C.UTF-8",
            }
            start = time.perf_counter()
            proc = subprocess.run(
                [str(PYTHON), "-m", "transship", *argv],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            took = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{argv[:2]} exit {proc.returncode}: {proc.stderr[-2000:]}")
            return took

        run(
            trees[0],
            [
                "plan",
                "images",
                str(images),
                "--dest",
                f"{dest.host}/{PREFIX}",
                "-o",
                str(plan),
                "-q",
            ],
        )
        doc = yaml.safe_load(plan.read_text())
        entries = doc.get("entries") or doc.get("images") or []
        tags = sum(max(1, len(e.get("tags") or ())) for e in entries)
        repos = len({e.get("destination") for e in entries})
        print(
            f"corpus {args.walk}: {len(corpus.refs)} references, plan {len(entries)} entries, "
            f"{tags} tags, {repos} destination repositories",
            flush=True,
        )
        cold = run(trees[0], commands["plan"])
        print(f"cold copy --plan: {cold:.2f}s (load {load()})", flush=True)
        forms = [f for f in args.forms.split(",") if f]
        for tree in trees:  # each tree's first run of a form may fill its own caches
            for form in forms:  # (the list resolution, the plan kept parsed)
                run(tree, commands[form])
        seconds: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for form in forms:
                for tree in trees:
                    dmark, umark = dest.log_offset(), upstream.log_offset()
                    before = load()
                    cpu, dcpu = children_cpu(), cpu_of(dest.pid)
                    took = run(tree, commands[form])
                    cpu, dcpu = children_cpu() - cpu, cpu_of(dest.pid) - dcpu
                    d, u = by_method(dest, dmark), by_method(upstream, umark)
                    seconds.setdefault((form, str(tree)), []).append(took)
                    cpus.setdefault((form, str(tree)), []).append(cpu)
                    print(
                        f"round {rnd} {form:6} {tree}: {took:.2f}s load {before} "
                        f"cpu transship {cpu:.2f}s dest {dcpu:.2f}s "
                        f"dest {sum(d.values())} {dict(sorted(d.items()))} "
                        f"upstream {sum(u.values())} {dict(sorted(u.items()))}",
                        flush=True,
                    )
        print()
        for (form, tree), values in seconds.items():
            used = cpus[(form, tree)]
            print(
                f"{form:6} {tree}: median {statistics.median(values):.2f}s "
                f"min {min(values):.2f}s max {max(values):.2f}s over {len(values)} "
                f"({tags} tags: {statistics.median(values) / tags * 1000:.1f} ms/tag); "
                f"transship CPU median {statistics.median(used):.2f}s "
                f"(min {min(used):.2f}s max {max(used):.2f}s)"
            )
        print(f"load average now: {Path('/proc/loadavg').read_text().strip()}")
        if args.hold:
            print(f"holding: {' '.join(commands['images'])}", flush=True)
            time.sleep(args.hold)
    finally:
        dest.stop()
        upstream.stop()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
