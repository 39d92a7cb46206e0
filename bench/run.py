"""Copy at scale: transship against skopeo, one-process-per-image and a raw floor, same run.

Run by hand, never in CI (takes minutes, needs `docker-registry`, `skopeo`, `htpasswd`):

    .venv/bin/python bench/run.py [--scale 1.0] [--walk release|old] [--replicas N]
        [--tools LIST] [--keep]

1. Starts a plain-HTTP "upstream" registry and pushes the TKG-shaped corpus of
   `bench/corpus.py` into it (`tkg/<imagePath>:<tag>` for every reference of the plan, and the
   images each bundle locks in the bundle's repository under `sha256-<hex>.imgpkg`).
2. For each tool starts a fresh, empty TLS + htpasswd "internal" registry (mode `tls_basic`,
   test CA from `build_pki`; `--dest-mode tls` drops htpasswd; `--dest-mode tls_token` puts
   Bearer tokens from the harness `TokenServer` in its place, Harbor's auth, and the raw floor
   then fetches one token per repository), restarts the upstream process,
   waits for a quiet machine, and copies the whole corpus to `<internal>/bench/tkg/...`:
   - `transship`: `transship copy --images LIST --dest HOST/bench --dest-ca CA --dest-creds ...`
     (it expands bundles itself), then `transship-noop`: the same command again into the now
     complete destination; by default (`--transship-mode plan`) `transship plan images … -o
     plan.yaml` once, then `copy --plan`; `--transship-mode both` also runs `copy --images`
     into a second fresh destination (`transship-images`), in the same run;
   - `skopeo-sync`: `skopeo sync --all --preserve-digests --src yaml --dest docker`, one YAML
     source and one process per destination directory (sync keeps only the last path element
     of a repository, and `--scoped` would put `127.0.0.1:PORT` into the path, so each
     invocation targets `<internal>/bench/<dirname>` with the repositories of that dirname);
     the bundles' images are listed under their imgpkg tags;
   - `sequential`: the vendor script's way, one process per reference in turn — `skopeo copy
     --all --preserve-digests` per image, one `skopeo sync` per bundle with its images (standing
     in for `imgpkg copy -i` / `-b`), each with a fresh HOME and, when we are root, as `nobody`
     (`--skopeo-user`), so no blob-info cache is shared between processes, as separate imgpkg
     runs share nothing;
   - `rawfloor`: `bench/rawfloor.py`, every unique blob GET -> PUT by N aiohttp workers, no
     manifest logic (the issue's floor: a lower bound, not a usable copy; no tag resolves);
   - `protofloor`: `bench/rawfloor.py --protocol`, the protocol floor: the least a usable copy
     must send, with the same workers and auth and no checks: each blob uploaded once, mounted
     into every other repository that needs it, each manifest fetched once from the source and
     PUT into every repository and tag that needs it (children first). The raw floor moves
     blobs only; the ~800 mounts and manifest PUTs it skips cost the destination registry
     ~5 ms of CPU each, so `transship / protofloor` (informative, no target) shows what
     transship's checks and extras cost over the protocol itself.
   A tool during which other processes used more than `--quiet-load` cores runs again (up to
   `--attempts` times; the quietest run is kept).
3. Checks every destination (each tag and bundle image resolves to the source digest; every
   blob and manifest is in storage; the raw floor only needs every blob uploaded) and reads
   both access logs: bytes of completed blob uploads (digest -> corpus size), mounts, manifest
   PUTs, requests per image, source bytes. Peak RSS and CPU come from
   `/usr/bin/time -v` (largest process of a tool), registry CPU from /proc.
4. Prints a Markdown table and the target ratios; `--markdown FILE` writes it too, and the work
   directory gets `results.md` and `results.json`.

`--replicas N` multiplies the corpus (N copies of the names under `r01/`, ... with their own
content, `--scale` GB each; see bench/corpus.py): `--walk old --replicas 10` is the 10× corpus
of 6,171 tags in 1,450 repositories. Its registries need ~2 × 10 GB: give it a disk
`--workdir`; each destination is deleted once measured (unless `--keep`). `bench/growth.py`
runs transship alone at several replica counts and prints the cost per tag.

`--upstream-delay MS` puts the harness fault proxy in front of the upstream, stalling every
request (a remote registry's round trip). The work directory defaults to /dev/shm (tmpfs): both
registries and the client share this machine's cores, and keeping the registries' storage off
the disk leaves CPU as the only shared resource. Compare tools within one run only; results and
analysis are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import MB, Corpus, build_corpus, imgpkg_tag, push_corpus, write_outputs  # noqa: E402
from harness.faultproxy import Fault, FaultProxy  # noqa: E402
from harness.pki import PKI, build_pki  # noqa: E402
from harness.registry import PASSWORD, USERNAME, RegistryProcess  # noqa: E402
from harness.seed import ALL_MANIFEST_TYPES, SeedClient  # noqa: E402
from harness.tokenserver import TokenServer  # noqa: E402

TOOLS = ("transship", "skopeo-sync", "sequential", "rawfloor", "protofloor")
PREFIX = "bench"
TIME = "/usr/bin/time"
TRANSSHIP = ROOT / ".venv" / "bin" / "transship"
PYTHON = ROOT / ".venv" / "bin" / "python"
CREDS = f"{USERNAME}:{PASSWORD}"

DEST_MODES = {
    "tls_basic": "TLS + htpasswd (bcrypt)",
    "tls_token": "TLS + Bearer tokens (harness token service, RS256)",
    "tls": "TLS, no auth",
}

TARGETS = {
    "skopeo-sync / transship": ">= 4",
    "transship / rawfloor": "<= 1.2",
    "transship-images / rawfloor": "<= 1.2",
    "sequential / transship": ">= 10",
    "transship bytes sent / unique": "<= 1.01",
    "transship-noop seconds": "< 2",
    "transship peak RSS MB": "< 200",
}
#: ratios shown without a target: what they measure is informative only
INFORMATIVE = ("transship / protofloor",)


@dataclass
class ToolRun:
    tool: str
    seconds: float = 0.0
    processes: int = 0
    failed_processes: int = 0
    peak_rss_kb: int = 0
    refs_ok: int = 0
    stored_blobs: int = 0
    complete: bool = False
    bytes_sent: int = 0
    uploads: int = 0
    unknown_uploads: int = 0
    mounts: int = 0
    manifest_puts: int = 0
    requests: int = 0
    requests_by_method: dict[str, int] = field(default_factory=dict)
    unauthorized: int = 0
    source_requests: int = 0
    source_blob_bytes: int = 0
    reported_bytes: int | None = None
    client_cpu: float = 0.0  # user + system seconds of the tool's processes
    upstream_cpu: float = 0.0  # of the upstream registry process
    dest_cpu: float = 0.0  # of the destination registry process
    other_cpu: float = 0.0  # busy CPU seconds of the machine not accounted for above
    note: str = ""


# ---- process helpers ------------------------------------------------------------------------


def tool_env(home: Path, owner: tuple[int, int] | None = None) -> dict[str, str]:
    """A scratch HOME: no docker/containers config, credentials or caches from the machine."""
    (home / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    if owner is not None:
        for path in (home, home / "run"):
            os.chown(path, *owner)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "DOCKER_CONFIG": str(home / "docker"),
        "LANG": "C.UTF-8",
    }


_RSS_RE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
_CPU_RE = re.compile(r"(?:User|System) time \(seconds\): ([0-9.]+)")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Timed:
    seconds: float
    code: int
    rss_kb: int
    cpu: float
    stdout: str
    stderr: str


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICK


def process_cpu(pid: int | None) -> float:
    """user + system seconds of one process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until the machine is busier than `limit` cores for no one
    else; returns the load seen last. Other jobs on a 2-core machine skew every figure."""
    deadline = time.monotonic() + max_wait
    while True:
        before, mine = machine_busy(), own_cpu()
        time.sleep(2.0)
        load = (machine_busy() - before - (own_cpu() - mine)) / 2.0
        if load <= limit or time.monotonic() >= deadline:
            return load
        print(f"  machine busy ({load:.2f} cores used by others); waiting", flush=True)


def timed(cmd: Sequence[str | Path], env: dict[str, str], log_dir: Path, name: str) -> Timed:
    """Run under `/usr/bin/time -v`; wall time measured here, peak RSS from time's report."""
    log_dir.mkdir(parents=True, exist_ok=True)
    time_file = log_dir / f"{name}.time"
    argv = [TIME, "-v", "-o", str(time_file), *map(str, cmd)]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    (log_dir / f"{name}.out").write_text(proc.stdout + proc.stderr)
    report = time_file.read_text() if time_file.exists() else ""
    m = _RSS_RE.search(report)
    cpu = sum(float(x) for x in _CPU_RE.findall(report))
    rss = int(m.group(1)) if m else 0
    return Timed(seconds, proc.returncode, rss, cpu, proc.stdout, proc.stderr)


def unprivileged(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to run skopeo as when we are root, so that its blob-info cache lives in the
    scratch HOME (as root it is the machine-wide /var/lib/containers/cache, warm across
    processes and runs)."""
    if not user or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def as_user(cmd: list[str | Path], owner: tuple[int, int] | None) -> list[str | Path]:
    if owner is None:
        return cmd
    uid, gid = owner
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]


# ---- measuring a destination ----------------------------------------------------------------


def upload_digest(path: str) -> str | None:
    values = parse_qs(urlsplit(path).query).get("digest")
    return values[0] if values else None


def measure(
    run: ToolRun,
    dest: RegistryProcess,
    dest_since: int,
    upstream: RegistryProcess,
    source_since: int,
    corpus: Corpus,
) -> None:
    """Fill the wire figures of `run` from both access logs since the given offsets."""
    time.sleep(0.3)  # access lines are written just after the response
    sizes = {d: b.size for d, b in corpus.blobs.items()}
    entries = dest.access_log(dest_since)
    run.requests = len(entries)
    run.requests_by_method = dict(Counter(e.method for e in entries))
    run.unauthorized = sum(1 for e in entries if e.status == 401)
    for entry in dest.blob_uploads(since=dest_since):
        digest = upload_digest(entry.path)
        if digest in sizes:
            run.bytes_sent += sizes[digest]
        else:
            run.unknown_uploads += 1
        run.uploads += 1
    run.mounts = len(dest.blob_mounts(since=dest_since))
    run.manifest_puts = sum(
        1 for e in entries if e.method == "PUT" and e.status == 201 and "/manifests/" in e.path
    )
    source = upstream.access_log(source_since)
    run.source_requests = len(source)
    run.source_blob_bytes = sum(
        e.size
        for e in source
        if e.method == "GET" and e.status == 200 and "/blobs/sha256:" in e.path
    )


def verify(run: ToolRun, dest: RegistryProcess, corpus: Corpus) -> None:
    """Every tag (plan references and the images bundles lock, under their imgpkg tags in the
    bundle's repository) resolves to the source digest, and storage holds every blob and
    manifest of the corpus (tools may add their own, e.g. transship's ImageLocations)."""
    local = threading.local()
    wanted = [(r.repository, r.tag, r.digest) for r in corpus.refs]
    wanted += [(b.repository, b.tag, b.manifest.digest) for b in corpus.bundle_images]

    def check(item: tuple[str, str, str]) -> bool:
        if not hasattr(local, "client"):
            local.client = SeedClient.for_registry(dest)
        client: SeedClient = local.client
        repository, tag, digest = item
        resp = client.request(
            "HEAD",
            f"/v2/{PREFIX}/{repository}/manifests/{tag}",
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
            scope=f"repository:{PREFIX}/{repository}:pull",
        )
        return resp.status == 200 and resp.header("docker-content-digest") == digest

    with ThreadPoolExecutor(8) as pool:
        run.refs_ok = sum(pool.map(check, wanted))
    blobs_root = dest.storage_dir / "docker/registry/v2/blobs/sha256"
    run.stored_blobs = sum(1 for _ in blobs_root.glob("*/*/data")) if blobs_root.exists() else 0
    expected = set(corpus.blobs) | corpus.manifest_digests()
    missing = sum(1 for d in expected if not dest.has_blob(d))
    run.complete = run.refs_ok == len(wanted) and missing == 0
    if not run.complete:
        run.note += f" {run.refs_ok}/{len(wanted)} tags right, {missing} blobs missing;"


# ---- the tools ------------------------------------------------------------------------------


@dataclass
class Window:
    """Where the logs and CPU counters stood when a tool started."""

    dest_log: int
    source_log: int
    machine: float
    upstream: float
    dest: float
    driver: float
    start: float
    tokens: int = 0  # token service requests so far (`--dest-mode tls_token`)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.pki: PKI = build_pki(work / "pki")
        #: `--dest-mode tls_token`: the bearer-token service every destination sends clients to
        #: (Harbor's auth), in a thread of this process, as the tests run it
        self.token_server: TokenServer | None = None
        if args.dest_mode == "tls_token":
            self.token_server = TokenServer(self.pki.token_signer, tls=self.pki.server).start()
        self.upstream = RegistryProcess(work / "upstream", "plain")
        self.corpus: Corpus | None = None
        self.images = work / "corpus" / "images.txt"
        self.corpus_json = work / "corpus" / "corpus.json"
        self.seed_seconds = 0.0
        self.runs: list[ToolRun] = []
        self._dests: list[RegistryProcess] = []
        self.proxy: FaultProxy | None = None

    @property
    def source_host(self) -> str:
        """Where tools read from: the upstream, or the delaying proxy in front of it."""
        return self.proxy.host if self.proxy else self.upstream.host

    @property
    def source_url(self) -> str:
        return self.proxy.url if self.proxy else self.upstream.url

    # -- setup ------------------------------------------------------------------------------

    def seed(self) -> None:
        corpus = build_corpus(
            self.args.walk, self.args.scale, self.args.seed, replicas=self.args.replicas
        )
        self.upstream.start()
        start = time.monotonic()
        timings = push_corpus(self.upstream, corpus, self.args.seed_threads)
        self.seed_seconds = time.monotonic() - start
        self.corpus = corpus
        if self.args.upstream_delay > 0:
            delay = Fault.stall(self.args.upstream_delay / 1000, method=None, name="latency")
            self.proxy = FaultProxy(self.upstream.url, [delay], max_lifetime=24 * 3600.0)
            self.proxy.start()
        write_outputs(corpus, self.source_host, self.work / "corpus")
        mb = corpus.totals()["unique_bytes"] / MB
        print(
            f"corpus: built in {corpus.seconds_to_build:.1f}s, pushed {mb:.0f} MB in "
            f"{self.seed_seconds:.1f}s ({mb / self.seed_seconds:.0f} MB/s; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
            + ")",
            flush=True,
        )
        print(json.dumps(corpus.totals()), flush=True)

    def fresh_dest(self, tool: str) -> RegistryProcess:
        reg = RegistryProcess(
            self.work / f"dest-{tool}",
            self.args.dest_mode,
            pki=self.pki,
            token_server=self.token_server,
        )
        shutil.rmtree(reg.workdir, ignore_errors=True)
        reg.start()
        self._dests.append(reg)
        return reg

    def retire(self, dest: RegistryProcess) -> None:
        """Stop a measured destination; drop its storage unless `--keep` (at 10× each
        destination holds the whole corpus again)."""
        dest.stop()
        if not self.args.keep:
            shutil.rmtree(dest.workdir, ignore_errors=True)

    def stop_all(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for reg in self._dests:
            reg.stop()
        self.upstream.stop()
        if self.token_server is not None:
            self.token_server.stop()

    def begin(self, dest: RegistryProcess) -> Window:
        """Same start for every tool: a freshly started upstream process (same storage and
        port), then wait for a quiet machine, then snapshot logs and CPU counters."""
        if self.proxy is None:  # the proxy keeps connections to the upstream: no restart
            self.upstream.restart()
        load = wait_quiet(self.args.quiet_load, self.args.quiet_wait)
        if load > self.args.quiet_load:
            print(f"  starting anyway: others use {load:.2f} cores", flush=True)
        return Window(
            dest.log_offset(),
            self.upstream.log_offset(),
            machine_busy(),
            process_cpu(self.upstream.pid),
            process_cpu(dest.pid),
            own_cpu(),
            time.perf_counter(),
            self.token_server.request_count if self.token_server else 0,
        )

    def finish(self, run: ToolRun, dest: RegistryProcess, window: Window) -> ToolRun:
        """CPU split, access-log figures and (unless `check` is off) a destination check."""
        run.upstream_cpu = process_cpu(self.upstream.pid) - window.upstream
        run.dest_cpu = process_cpu(dest.pid) - window.dest
        busy = machine_busy() - window.machine - (own_cpu() - window.driver)
        run.other_cpu = max(0.0, busy - run.upstream_cpu - run.dest_cpu - run.client_cpu)
        if self.token_server is not None:
            run.note += f" {self.token_server.request_count - window.tokens} token requests;"
        assert self.corpus is not None
        measure(run, dest, window.dest_log, self.upstream, window.source_log, self.corpus)
        if run.tool == "rawfloor":
            run.complete = run.uploads == len(self.corpus.blobs)
        else:
            verify(run, dest, self.corpus)
        self.runs.append(run)
        print(
            f"{run.tool}: {run.seconds:.1f}s complete={run.complete} "
            f"sent={run.bytes_sent / MB:.0f} MB requests={run.requests} "
            f"cpu client={run.client_cpu:.1f}s upstream={run.upstream_cpu:.1f}s "
            f"dest={run.dest_cpu:.1f}s "
            f"others={run.other_cpu:.1f}s rss={run.peak_rss_kb / 1024:.0f} MB"
            f"{(' note:' + run.note) if run.note else ''}",
            flush=True,
        )
        return run

    def _add(self, run: ToolRun, result: Timed, what: str) -> None:
        run.processes += 1
        run.client_cpu += result.cpu
        run.peak_rss_kb = max(run.peak_rss_kb, result.rss_kb)
        if result.code != 0:
            run.failed_processes += 1
            run.note += f" {what}: exit {result.code} {result.stderr.strip()[-300:]};"

    # -- tools ------------------------------------------------------------------------------

    def transship(self) -> None:
        """`transship plan images` once (timed as transship-plan), then `copy --plan` cold
        (transship) and again into the complete destination (transship-noop). With
        `--transship-mode images` it runs the one-command form `copy --images` instead; with
        `both`, the plan flow and then `copy --images` into a second fresh destination
        (transship-images, transship-images-noop), in the same run."""
        mode = self.args.transship_mode
        if mode in ("plan", "both"):
            self._transship_flow("transship", images=False)
        if mode in ("images", "both"):
            self._transship_flow("transship-images" if mode == "both" else "transship", True)

    def _transship_flow(self, name: str, images: bool) -> None:
        dest = self.fresh_dest(name)
        logs = self.work / "tools" / name
        env = tool_env(logs / "home")
        plan = logs / "plan.yaml"
        if not images:
            window = self.begin(dest)
            planning = timed(
                [
                    TRANSSHIP,
                    "plan",
                    "images",
                    self.images,
                    "--dest",
                    f"{dest.host}/{PREFIX}",
                    "-o",
                    plan,
                    "-q",
                ],
                env,
                logs,
                f"{name}-plan",
            )
            plan_run = ToolRun(f"{name}-plan", planning.seconds)
            self._add(plan_run, planning, f"{name}-plan")
            plan_run.upstream_cpu = process_cpu(self.upstream.pid) - window.upstream
            busy = machine_busy() - window.machine - (own_cpu() - window.driver)
            plan_run.other_cpu = max(0.0, busy - plan_run.upstream_cpu - plan_run.client_cpu)
            plan_run.source_requests = len(self.upstream.access_log(window.source_log))
            plan_run.note += " resolves the list (digests, bundles, attachments); copies nothing;"
            plan_run.complete = planning.code == 0 and plan.exists()
            self.runs.append(plan_run)
            print(f"{name}-plan: {planning.seconds:.1f}s", flush=True)
            source: list[str | Path] = ["--plan", plan]
        else:
            source = ["--images", self.images, "--dest", f"{dest.host}/{PREFIX}"]
        for tool in (name, f"{name}-noop"):
            report = logs / f"{tool}.report.json"
            cmd: list[str | Path] = [
                TRANSSHIP,
                "copy",
                *source,
                "--dest-ca",
                str(self.pki.ca.cert_path),
                "--dest-creds",
                CREDS,
                "-q",
                "--report",
                report,
            ]
            if self.args.parallel:
                cmd += ["--parallel", str(self.args.parallel)]
            window = self.begin(dest)
            result = timed(cmd, env, logs, tool)
            run = ToolRun(tool, result.seconds)
            self._add(run, result, tool)
            if report.exists():
                doc = json.loads(report.read_text())
                run.reported_bytes = sum(int(e.get("bytes") or 0) for e in doc["entries"])
                statuses = Counter(e["status"] for e in doc["entries"])
                run.note += " " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) + ";"
            self.finish(run, dest, window)
        self.retire(dest)

    def skopeo_sync(self) -> None:
        assert self.corpus is not None
        dest = self.fresh_dest("skopeo-sync")
        logs = self.work / "tools" / "skopeo-sync"
        owner = unprivileged(self.args.skopeo_user)
        env = tool_env(logs / "home", owner)
        groups: dict[str, dict[str, list[str]]] = {}
        named = [(r.repository, r.tag) for r in self.corpus.refs]
        named += [(b.repository, b.tag) for b in self.corpus.bundle_images]
        for repository, tag in named:
            dirname = repository.rsplit("/", 1)[0]
            groups.setdefault(dirname, {}).setdefault(repository, []).append(tag)
        sources = []
        for n, (dirname, images) in enumerate(sorted(groups.items())):
            source = logs / f"sync-{n:02d}.yaml"
            doc = {self.source_host: {"tls-verify": False, "images": images}}
            source.write_text(yaml.safe_dump(doc, sort_keys=True))
            sources.append((dirname, source))
        run = ToolRun("skopeo-sync")
        window = self.begin(dest)
        for n, (dirname, source) in enumerate(sources):
            cmd: list[str | Path] = [
                "skopeo",
                "sync",
                "--all",
                "--preserve-digests",
                "--src",
                "yaml",
                "--dest",
                "docker",
                "--dest-cert-dir",
                str(self.pki.ca.cert_dir),
                "--dest-creds",
                CREDS,
                source,
                f"{dest.host}/{PREFIX}/{dirname}",
            ]
            self._add(run, timed(as_user(cmd, owner), env, logs, f"sync-{n:02d}"), dirname)
        run.seconds = time.perf_counter() - window.start
        self.finish(run, dest, window)
        self.retire(dest)

    def sequential(self) -> None:
        assert self.corpus is not None
        dest = self.fresh_dest("sequential")
        logs = self.work / "tools" / "sequential"
        logs.mkdir(parents=True, exist_ok=True)
        owner = unprivileged(self.args.skopeo_user)
        run = ToolRun("sequential")
        window = self.begin(dest)
        for n, ref in enumerate(self.corpus.refs):
            home = Path(tempfile.mkdtemp(prefix="home-", dir=logs))
            common = [
                "--all",
                "--preserve-digests",
                "--dest-cert-dir",
                str(self.pki.ca.cert_dir),
                "--dest-creds",
                CREDS,
            ]
            cmd: list[str | Path]
            if ref.kind == "bundle":  # imgpkg copy -b: the bundle and its images, one process
                locked = sorted(imgpkg_tag(r.digest) for r in ref.closure())
                images = {ref.repository: [ref.tag, *locked]}
                source = logs / f"bundle-{n:03d}.yaml"
                doc = {self.source_host: {"tls-verify": False, "images": images}}
                source.write_text(yaml.safe_dump(doc, sort_keys=True))
                dirname = ref.repository.rsplit("/", 1)[0]
                cmd = ["skopeo", "sync", *common, "--src", "yaml", "--dest", "docker", source]
                cmd.append(f"{dest.host}/{PREFIX}/{dirname}")
            else:
                cmd = ["skopeo", "copy", *common, "--src-tls-verify=false"]
                cmd += [
                    f"docker://{self.source_host}/{ref.name}",
                    f"docker://{dest.host}/{PREFIX}/{ref.name}",
                ]
            result = timed(as_user(cmd, owner), tool_env(home, owner), logs, f"copy-{n:03d}")
            shutil.rmtree(home, ignore_errors=True)
            self._add(run, result, ref.name)
        run.seconds = time.perf_counter() - window.start
        self.finish(run, dest, window)
        self.retire(dest)

    def rawfloor(self) -> None:
        """The issue's floor: every unique blob GET -> POST -> PUT, nothing else."""
        self._floor("rawfloor", protocol=False)

    def protofloor(self) -> None:
        """The protocol floor: the raw floor plus the mounts and manifest PUTs without which
        no tag resolves, and nothing more (no checks); verified like transship."""
        self._floor("protofloor", protocol=True)

    def _floor(self, name: str, protocol: bool) -> None:
        dest = self.fresh_dest(name)
        logs = self.work / "tools" / name
        cmd: list[str | Path] = [
            PYTHON,
            ROOT / "bench" / "rawfloor.py",
            "--corpus",
            self.corpus_json,
            "--src",
            self.source_url,
            "--dest",
            dest.url,
            "--prefix",
            PREFIX,
            "--ca",
            str(self.pki.ca.cert_path),
            "--creds",
            CREDS,
            "--workers",
            str(self.args.floor_workers),
        ]
        if protocol:
            cmd.append("--protocol")
        window = self.begin(dest)
        result = timed(cmd, tool_env(logs / "home"), logs, name)
        run = ToolRun(name, result.seconds)
        self._add(run, result, name)
        if protocol:
            run.note += f" {self.args.floor_workers} workers, uploads + mounts + manifests;"
            if result.code == 0:
                counts = json.loads(result.stdout.strip().splitlines()[-1]).get("requests", {})
                run.note += " " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ";"
        else:
            run.note += f" {self.args.floor_workers} workers, blobs only (no manifests);"
        self.finish(run, dest, window)
        self.retire(dest)


# ---- report ---------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(value: float | None, target: str) -> str:
    if value is None:
        return "n/a"
    op, _, bound = target.partition(" ")
    limit = float(bound)
    ok = {
        ">=": value >= limit,
        "<=": value <= limit,
        "<": value < limit,
        ">": value > limit,
    }[op]
    return "met" if ok else "**missed**"


def report(bench: Bench, command: str) -> str:
    assert bench.corpus is not None
    totals = bench.corpus.totals()
    unique = totals["unique_bytes"]
    refs = totals["refs"]
    runs = {r.tool: r for r in bench.runs}
    lines = [
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, skopeo {_skopeo_version()}",
        f"- command: `{command}`",
        f"- transship: {_transship_version()}",
        f"- corpus: walk `{totals['walk']}`"
        + (f" × {totals['replicas']} replicas" if totals["replicas"] > 1 else "")
        + f", {refs} refs ({_kinds(totals)}) and {totals['bundle_images']} bundle images = "
        f"{totals['tags']} tags in {totals['repositories']} repositories; "
        f"{totals['unique_blobs']} unique blobs, "
        f"{unique / MB:.0f} MB unique ({totals['blobs_over_1MiB']} blobs > 1 MiB, largest "
        f"{totals['largest_blob'] / MB:.0f} MB), {totals['unique_manifests']} manifests; "
        f"seeded in {bench.seed_seconds:.1f}s",
        "- upstream: plain HTTP on loopback"
        + (
            f", behind a proxy delaying every request by {bench.args.upstream_delay:g} ms"
            if bench.proxy
            else ""
        )
        + "; destination: "
        + DEST_MODES[bench.args.dest_mode]
        + ", a fresh registry per tool; work dir "
        f"{'tmpfs' if str(bench.work).startswith('/dev/shm') else bench.work}",
        "",
        "| tool | wall s | complete | sent / unique bytes | uploads | mounts | manifest PUTs "
        "| dest requests | requests / image | source blob GET / unique | peak RSS MB | processes "
        "| tool CPU s | upstream / dest registry CPU s | others' load (cores) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for run in bench.runs:
        lines.append(
            f"| {run.tool} | {run.seconds:.2f} | {'yes' if run.complete else 'NO'} "
            f"| {run.bytes_sent / unique:.3f} | {run.uploads} | {run.mounts} "
            f"| {run.manifest_puts} | {run.requests} "
            f"| {run.requests / refs:.1f} | {run.source_blob_bytes / unique:.3f} "
            f"| {run.peak_rss_kb / 1024:.0f} | {run.processes} | {run.client_cpu:.1f} "
            f"| {run.upstream_cpu:.1f} / {run.dest_cpu:.1f} "
            f"| {run.other_cpu / max(run.seconds, 1e-9):.2f} |"
        )
    t = runs.get("transship")
    values: dict[str, float | None] = {
        "skopeo-sync / transship": _ratio(_sec(runs, "skopeo-sync"), _sec(runs, "transship")),
        "transship / rawfloor": _ratio(_sec(runs, "transship"), _sec(runs, "rawfloor")),
        "transship-images / rawfloor": _ratio(
            _sec(runs, "transship-images"), _sec(runs, "rawfloor")
        ),
        "sequential / transship": _ratio(_sec(runs, "sequential"), _sec(runs, "transship")),
        "transship bytes sent / unique": t.bytes_sent / unique if t else None,
        "transship-noop seconds": _sec(runs, "transship-noop"),
        "transship peak RSS MB": t.peak_rss_kb / 1024 if t else None,
        "transship / protofloor": _ratio(_sec(runs, "transship"), _sec(runs, "protofloor")),
    }
    lines += ["", "| measure | value | target | |", "| --- | ---: | --- | --- |"]
    for name, target in TARGETS.items():
        value = values[name]
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"| {name} | {shown} | {target} | {_check(value, target)} |")
    for name in INFORMATIVE:
        value = values[name]
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"| {name} | {shown} | - | informative |")
    notes = [f"- {r.tool}:{r.note}" for r in bench.runs if r.note.strip()]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def run_tool(bench: Bench, tool: str, attempts: int, quiet_load: float) -> None:
    """Run a tool; while other processes disturbed it (used more than `quiet_load` cores on
    average during the run), run it again, up to `attempts` times, keeping the quietest run."""
    best: list[ToolRun] = []
    best_noise = float("inf")
    for attempt in range(1, attempts + 1):
        before = len(bench.runs)
        getattr(bench, tool.replace("-", "_"))()
        new = bench.runs[before:]
        del bench.runs[before:]
        noise = max(r.other_cpu / max(r.seconds, 1e-9) for r in new)
        if noise < best_noise:
            best, best_noise = new, noise
            for run in new:
                run.note += f" attempt {attempt};" if attempt > 1 else ""
        if noise <= quiet_load:
            break
        print(f"  {tool}: others used {noise:.2f} cores during the run; again", flush=True)
    bench.runs += best


def _sec(runs: dict[str, ToolRun], tool: str) -> float | None:
    run = runs.get(tool)
    return run.seconds if run else None


def _kinds(totals: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k}" for k, v in totals["kinds"].items())


def _transship_version() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return out.stdout.strip()

    dirty = [line for line in git("status", "--porcelain", "src").splitlines() if line]
    extra = f" + {len(dirty)} uncommitted files in src/" if dirty else ""
    return f"commit {git('rev-parse', '--short', 'HEAD')}{extra}"


def _skopeo_version() -> str:
    out = subprocess.run(["skopeo", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().rsplit(" ", 1)[-1]


def default_root() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="GB of unique blob bytes (per replica)"
    )
    parser.add_argument("--walk", choices=("release", "old"), default="release")
    parser.add_argument(
        "--replicas", type=int, default=1, help="copies of the corpus names (10: the 10× corpus)"
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, help="default: a new directory in /dev/shm")
    parser.add_argument("--seed", default="1", help="corpus seed")
    parser.add_argument("--seed-threads", type=int, default=8, help="parallel pushes when seeding")
    parser.add_argument(
        "--floor-workers", type=int, default=8, help="rawfloor and protofloor workers"
    )
    parser.add_argument("--parallel", type=int, help="transship --parallel (default: its own)")
    parser.add_argument(
        "--transship-mode",
        choices=("plan", "images", "both"),
        default="plan",
        help="plan: `plan images` then `copy --plan` (default); images: `copy --images`; "
        "both: the two flows in turn, each into its own fresh destination",
    )
    parser.add_argument(
        "--skopeo-user",
        default="nobody",
        help="when root, run skopeo as this user (its cache then stays in a scratch HOME); "
        "'' to run it as root",
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=0.3,
        help="before each tool wait until other processes use at most this many cores",
    )
    parser.add_argument("--quiet-wait", type=float, default=180, help="seconds to wait at most")
    parser.add_argument(
        "--upstream-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="put a proxy in front of the upstream that delays every request by MS "
        "(a remote registry's round trip; the proxy runs in this process and costs CPU)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="run a tool up to this many times while other processes disturb it",
    )
    parser.add_argument(
        "--dest-mode",
        choices=tuple(DEST_MODES),
        default="tls_basic",
        help="destination registry: TLS + htpasswd (bcrypt on every request), TLS + Bearer "
        "tokens from a token service (Harbor's auth; the floor authenticates the same way), "
        "or TLS alone",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; choose from {', '.join(TOOLS)}")
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="transship-bench-", dir=default_root()))
    work.chmod(0o755)  # skopeo may run unprivileged and must reach the CA and its sources
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    bench = Bench(args, work)
    try:
        bench.seed()
        for tool in TOOLS:
            if tool in tools:
                run_tool(bench, tool, args.attempts, args.quiet_load)
        text = report(bench, command.strip())
        print()
        print(text)
        (work / "results.md").write_text(text)
        (work / "results.json").write_text(
            json.dumps(
                {"totals": bench.corpus.totals() if bench.corpus else None}
                | {"runs": [asdict(r) for r in bench.runs]},
                indent=1,
            )
        )
        if args.markdown:
            args.markdown.write_text(text)
    finally:
        bench.stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
