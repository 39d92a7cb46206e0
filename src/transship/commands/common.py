"""What every command shares: side options, logging, running the engine, reports, exit codes.

Start-up counts in a no-op rerun (about a second in all), so what only some runs use is
imported where it is used: rich when something is drawn, the image-list and script readers,
list resolution, `--preflight`, `--lock-output`, `--shard` accounting, and `verify`'s use case
(tests/test_cli_imports.py checks what `copy --plan` loads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from transship import landed
from transship.commands.harbor import before_push
from transship.connect import RegistryPool, SideSettings
from transship.engine import CopyTask, EngineOptions, Stats, TaskResult
from transship.errors import (
    ExitCode,
    NamespaceFullError,
    PlanError,
    PreflightError,
    TransshipError,
    UsageError,
    exit_code_of,
)
from transship.fsutil import unwritable, write_atomic
from transship.landed import LandedLog
from transship.ops.report import run_report
from transship.ops.run import RunOutcome, run_phases, shared_failure
from transship.plan._yaml import MAX_PLAN_BYTES, STDIN, input_name, load_yaml, read_text
from transship.plan.model import Plan, PlanEntry
from transship.plan.shard import Shard, ShardSplit, split
from transship.progress import ByteBudget, LogObserver, RichObserver, human_bytes, summary_table
from transship.ratelimit import TokenBucket, parse_rate

if TYPE_CHECKING:
    from rich.table import Table

    from transship.harbor.projects import ProjectSettings
    from transship.ops.shard import ShardAccount
    from transship.ops.verify import VerifyOptions, VerifyResult

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("transship")


def side_options(side: str, what: str) -> Callable[[F], F]:
    """The TLS / auth options of one side: `--src-ca`, `--dest-creds`, …"""
    env = side.upper()

    def decorate(func: F) -> F:
        options = [
            click.option(
                f"--{side}-ca",
                metavar="FILE|BASE64",
                help=f"CA certificate of the {what} registry: a PEM file or its base64 (TKG form).",
            ),
            click.option(
                f"--{side}-insecure",
                is_flag=True,
                help=f"Do not verify the {what} registry's TLS certificate.",
            ),
            click.option(
                f"--{side}-plain-http",
                is_flag=True,
                help=f"Talk plain HTTP to the {what} registry (loopback falls back by itself).",
            ),
            click.option(
                f"--{side}-creds",
                metavar="USER:PASSWORD",
                envvar=f"TRANSSHIP_{env}_CREDS",
                show_envvar=True,
                help=f"Credentials for the {what} registry (default: ~/.docker/config.json).",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def side_settings(side: str, kwargs: dict[str, Any], connections: int) -> SideSettings:
    return SideSettings(
        side=side,
        ca=kwargs.pop(f"{side}_ca"),
        insecure=kwargs.pop(f"{side}_insecure"),
        plain_http=kwargs.pop(f"{side}_plain_http"),
        creds=kwargs.pop(f"{side}_creds"),
        max_connections=connections,
    )


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(verbose, "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


class OperatorFormatter(logging.Formatter):
    """A logged warning (or error) at the default verbosity reads as every other line
    transship prints to an operator: `transship: warning: ...`, not the logger's own form."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"transship: {record.levelname.lower()}: {super().format(record)}"


def log_formatter(verbose: int, detail: str) -> logging.Formatter:
    """The operator's form at the default verbosity; with -v/-vv the `detail` format (level,
    logger name) as before."""
    return OperatorFormatter() if verbose == 0 else logging.Formatter(detail)


def _parse_rate(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_rate(value)  # a usage error, before any request


def parallel_option(default: int, help: str) -> Callable[[F], F]:
    """`--parallel N`: at least 1 (0 would wait forever on an empty semaphore, a negative
    one crashes it), refused as a usage error before any request."""
    return click.option(
        "--parallel", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


LIMIT_RATE = click.option(
    "--limit-rate",
    metavar="RATE",
    callback=_parse_rate,
    help="Cap bytes per second across all blob transfers (as curl: 50M, 500K, 1G).",
)


def _writable(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """An output file is checked before the run, not found unwritable after it."""
    if value is not None and (why := unwritable(value)) is not None:
        raise click.BadParameter(f"{value}: {why}", ctx=ctx, param=param)
    return value


def _fresh_report(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`--report`: writable, and an earlier run's report removed now, so that a run which
    ends before writing its own (a bad plan, a crash) never leaves that one passing for it."""
    value = _writable(ctx, param, value)
    if value is not None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            value.unlink()
    return value


#: an output file (`--report`, `--lock-output`, `plan -o`): checked writable before any work
OUTPUT_FILE: dict[str, Any] = {
    "type": click.Path(dir_okay=False, path_type=Path),
    "callback": _writable,
}
#: `--report FILE`: an output file, and a stale one removed before the run
REPORT_FILE: dict[str, Any] = {**OUTPUT_FILE, "callback": _fresh_report}


def push_options(func: F) -> F:
    """What every command that pushes into a registry takes: parallelism, outputs, preflight,
    pacing, repair, verbosity (`--parallel`, `--report`, `--lock-output`, `--preflight`,
    `--limit-rate`, `--repair`, `-v`, `-q`)."""
    options = [
        parallel_option(16, "Images in flight at once."),
        click.option(
            "--report",
            **REPORT_FILE,
            help="Write a JSON report: per entry source, destination, digest, status, bytes.",
        ),
        click.option(
            "--lock-output",
            **OUTPUT_FILE,
            help="Write an imgpkg ImagesLock of the relocated references.",
        ),
        click.option(
            "--preflight",
            is_flag=True,
            help="Before moving bytes, check every destination repository accepts a push.",
        ),
        LIMIT_RATE,
        click.option(
            "--repair",
            is_flag=True,
            help="Check every manifest and blob at the destination, even below a manifest "
            "that is there, and send what is missing (after verify --deep found lost blobs).",
        ),
        click.option("-v", "--verbose", count=True, help="More logging (-vv for debug)."),
        click.option("-q", "--quiet", is_flag=True, help="Only errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def plan_source_options(func: F) -> F:
    """`--plan`, `--images`, `--script` and `--dest PREFIX`: where a set of images comes from."""
    options = [
        click.option(
            "--plan",
            "plan_file",
            type=click.Path(path_type=Path),
            help="A plan file (transship plan -o), or an archive (transship save: directory, "
            "tar or first volume) whose carried plan is read.",
        ),
        click.option(
            "--images",
            "images_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="An image list: one reference per line, # comments (- reads standard input).",
        ),
        click.option(
            "--script",
            "script_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="A gen-publish-images.sh output file (imgpkg copy lines; - reads standard input).",
        ),
        click.option(
            "--dest",
            "dest_prefix",
            envvar="TKG_CUSTOM_IMAGE_REPOSITORY",
            metavar="PREFIX",
            help="Destination prefix for --images/--script: paths are kept below it "
            "(with --plan, the plan's destinations are moved below it, as load --dest does).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Shard | None:
    return None if value is None else Shard.parse(value)  # a usage error, before any request


SHARD = click.option(
    "--shard",
    metavar="I/N",
    callback=_parse_shard,
    help="Only part I of N (from 1): the plan split by destination repository, the same on "
    "every host, so N hosts (a Kubernetes Indexed Job) copy it once. See docs/sharding.md.",
)


def shard_part(plan: Plan, shard: Shard | None, quiet: bool) -> tuple[Plan, ShardSplit | None]:
    """`--shard I/N`: this host's part of `plan`, said on stderr (the plan as is without it)."""
    if shard is None:
        return plan, None
    cut = split(plan, shard)
    if not quiet:
        print(f"transship: {cut.describe()}", file=sys.stderr)
    return cut.part, cut


def load_plan_source(
    plan_file: Path | None,
    images_file: Path | None,
    script_file: Path | None,
    prefix: str | None,
    *,
    plan_below_prefix: bool = True,
    listing_ok: bool = False,
) -> Plan | None:
    """The plan named by exactly one of the source options (None if none was given).
    `plan_below_prefix`: a plan file is sent below `prefix` (`--dest`) when one is given,
    re-rooted from the prefix it records (`tkg config` checks its own plan instead).
    `listing_ok`: see `read_plan`."""
    chosen = [x for x in (plan_file, images_file, script_file) if x is not None]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise UsageError("give only one of --plan, --images and --script")
    if plan_file is not None:
        plan = read_plan(plan_file, dest_given=bool(prefix), listing_ok=listing_ok)
        if prefix and plan_below_prefix:  # moved below it (as load --dest), never ignored
            plan = plan.rerooted(prefix)
        return plan
    if images_file is not None:
        if not prefix:
            raise UsageError("--images needs --dest PREFIX (or TKG_CUSTOM_IMAGE_REPOSITORY)")
        from transship.plan.imagelist import load_image_list

        return load_image_list(images_file, prefix)
    assert script_file is not None
    from transship.tkg.script import load_old_script

    return load_old_script(script_file, prefix)


def _require_layout_dir(path: Path) -> None:
    """`--plan DIR`: a directory is an archive only as an OCI layout. `load DIR` also takes a
    folder holding one split archive's volumes; for `--plan` a mistyped folder (the medium's
    root, holding one archive among other files) must not be read as whichever is there."""
    from transship.layout.index import LAYOUT_FILE

    if (path / LAYOUT_FILE).exists():
        return
    lists = sorted(p.name for p in path.glob("*.parts"))
    named = f" (it holds {lists[0]}: --plan {path / lists[0]})" if len(lists) == 1 else ""
    raise PlanError(
        f"--plan {path}: a directory that is not an OCI layout (no {LAYOUT_FILE} file); give "
        f"a plan file or the archive itself: a layout directory, a tar, its first volume or "
        f"its .parts file{named}"
    )


def read_plan(path: Path, *, dest_given: bool, listing_ok: bool = False) -> Plan:
    """`--plan`: a plan file, or an archive (layout directory, tar, first volume or `.parts`)
    whose carried plan is read as `load` reads it; anything else is refused in one line.
    `listing_ok`: `plan imgpkg-tars -o`'s listing is taken too, as the plan of what that load
    pushed (for the commands that only check destinations: verify, tkg config)."""
    from transship.layout.archive import looks_like_archive

    if str(path) != STDIN and path.is_dir():
        _require_layout_dir(path)
    if str(path) != STDIN and looks_like_archive(path):
        from transship.ops.archive import carried_plan

        return asyncio.run(carried_plan(path, dest_given=dest_given))
    if str(path) != STDIN and not path.exists():
        from transship.layout.volumes import split_name_hint

        if hint := split_name_hint(path):
            raise PlanError(f"--plan {path} does not exist{hint}")
    try:
        text = read_text(path, MAX_PLAN_BYTES)
    except PlanError as exc:
        readable = str(path) != STDIN and path.is_file() and os.access(path, os.R_OK)
        if readable:  # but too large or binary: why it is no plan, and that it is no archive
            raise PlanError(
                f"{exc.message} (nor an archive: --plan takes a plan file or what transship "
                "save wrote, a layout directory, a tar or its first volume)"
            ) from None
        raise
    name = input_name(path)
    # a plan is read again by every rerun: kept parsed
    root = load_yaml(text, name, keep=True, unique_keys=True, limit=MAX_PLAN_BYTES)
    if isinstance(root.value, dict) and "push" in root.value and "apiVersion" not in root.value:
        from transship.ops.imgpkgtar import is_tar_listing, plan_from_listing

        if is_tar_listing(root):
            if not listing_ok:
                raise PlanError(
                    f"{path}: a `plan imgpkg-tars` listing, not a plan: verify --plan and tkg "
                    "config --plan read it; load the tars themselves with transship load"
                )
            return plan_from_listing(root)
    plan = Plan.from_dict(root.value, name)
    if not plan.entries and not plan.gaps:  # as an empty image list: never "0 entries complete"
        raise PlanError(
            f"{name}: a plan with no entries (nothing to copy, save or verify); give the plan "
            "`transship plan` wrote"
        )
    return plan


@dataclass
class RunReport:
    """`--report FILE` of one run: `run_engine` keeps what the engine did, `execute` writes
    it once the exit code is known, also when the run ends in an error or Ctrl-C (then with
    what was done so far), so a script reads the outcome from the file as from `$?`."""

    path: Path
    outcome: RunOutcome | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the time to report, when the command's own work outlasts the engine's (tar loads)
    seconds: float | None = None

    def write(self, exit_code: int, results: Sequence[TaskResult] | None = None) -> None:
        """`results`: the command's final ones (held-back bundles, holes found after the
        engine); None: the engine's, or none if it never ran."""
        outcome = self.outcome
        if results is None:
            results = outcome.results if outcome is not None else []
        seconds = self.seconds if self.seconds is not None else outcome.seconds if outcome else 0
        doc = run_report(
            results,
            outcome.stats if outcome is not None else Stats(),
            seconds,
            exit_code,
            interrupted=exit_code == ExitCode.INTERRUPTED,
            extra=self.extra,
        )
        write_atomic(self.path, json.dumps(doc, indent=2) + "\n")


def run_report_for(path: Path | None) -> RunReport | None:
    return None if path is None else RunReport(path)


async def close_all(
    closers: Sequence[Callable[[], Awaitable[None]]], ending: BaseException | None
) -> None:
    """Call every closer, whichever of them fails. While the run already ends with `ending`
    (Ctrl-C cancels the run: `asyncio.CancelledError`, which `asyncio.run` turns into
    KeyboardInterrupt, exit 130; or an error of its own) a close that fails (an HTTP session
    that raises as it closes) is logged and dropped, so it never replaces that outcome. After
    a run that went through (`ending` None), the first close error is raised once all ran."""
    first: Exception | None = None
    for close in closers:
        try:
            await close()
        except Exception as exc:
            if ending is not None:
                log.debug("closing after %s failed too: %r", type(ending).__name__, exc)
            first = first or exc
    if first is not None and ending is None:
        raise first


def execute(
    body: Callable[[RegistryPool, RegistryPool], Awaitable[list[TaskResult]]],
    src_settings: SideSettings,
    dest_settings: SideSettings,
    report: RunReport | None = None,
) -> int:
    """Run `body` with both sides open; the exit code, and the report (`--report`) with it."""

    async def main() -> list[TaskResult]:
        sources = RegistryPool(src_settings)
        dests = RegistryPool(dest_settings)
        try:
            result: list[TaskResult] = await body(sources, dests)
        except BaseException as exc:  # Ctrl-C (the task cancelled) or an error: it stays
            await close_all((sources.close, dests.close), exc)
            raise
        await close_all((sources.close, dests.close), None)
        return result

    try:
        results = asyncio.run(main())
    except BaseException as exc:  # Ctrl-C, an error, a disk full: the CLI says it in one line
        if report is not None:
            with contextlib.suppress(Exception):  # never hide the run's own error behind it
                report.write(exit_code_of(exc))
        raise
    code = exit_code_for(results)
    if report is not None:
        report.write(code, results)
    return code


class BeforeEngine:
    """Ctrl-C before the engine starts (resolving a list, creating projects, the preflight):
    the summary and the report list what the run was to copy as "not-started", as
    `run_engine` lists what the engine had not started (`CopyEngine.so_far`). `planned` is
    what is known so far: the entries as listed, then the tasks once they are built."""

    def __init__(self, report: RunReport | None, quiet: bool) -> None:
        self.report = report
        self.quiet = quiet
        self.tasks: list[CopyTask] = []
        self._start = time.monotonic()

    def planned(self, task_phases: Sequence[Sequence[CopyTask]]) -> None:
        self.tasks = [task for phase in task_phases for task in phase]

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Around the work before `run_engine` (which says what was done once it runs)."""
        try:
            yield
        except asyncio.CancelledError:
            results = [TaskResult(task, "not-started") for task in self.tasks]
            seconds = time.monotonic() - self._start
            if self.report is not None:
                self.report.outcome = RunOutcome(results, Stats(), seconds, interrupted=True)
            if not self.quiet:
                from rich.console import Console

                Console(stderr=True).print(summary_table(results, Stats(), seconds))
            raise


def rate_limit(bytes_per_second: int | None) -> TokenBucket | None:
    """`--limit-rate RATE` (parsed by its option): the run's one bucket, or None."""
    return None if bytes_per_second is None else TokenBucket(bytes_per_second)


async def run_engine(
    task_phases: Sequence[Sequence[CopyTask]],
    report: RunReport | None,
    lock_output: Path | None,
    quiet: bool,
    parallel: int,
    unique_bytes: int | None = None,
    limit_rate: int | None = None,
    shard: ShardAccount | None = None,
    *,
    repair: bool = False,
) -> list[TaskResult]:
    """Run the phases with progress: `unique_bytes` (the plan's, each blob once) and the tasks'
    sizes give the total to send and the ETA. With `shard`, the summary and the report say
    what this shard shares with the others. Ctrl-C: the summary of what was done, and the
    report keeps it (`execute` writes it), before the run ends."""
    landed_dir = landed.default_directory()
    landed_log = LandedLog(landed_dir) if landed_dir is not None else None
    options = EngineOptions(
        parallel_images=parallel,
        rate_limit=rate_limit(limit_rate),
        landed_log=landed_log,
        repair=repair,
    )
    console = None
    if not quiet:  # a quiet run draws nothing: no bars, no summary table
        from rich.console import Console

        console = Console(stderr=True)
    total = sum(len(p) for p in task_phases)
    if unique_bytes is None and shard is not None:  # a plan file's part: its share, estimated
        unique_bytes = shard.split.estimated_unique_bytes
    budget = ByteBudget((t for p in task_phases for t in p), unique_bytes)
    observer: RichObserver | LogObserver
    if console is not None and console.is_terminal:
        observer = RichObserver(console, total, budget)
    else:
        observer = LogObserver(total, budget, quiet=quiet)
    counting = shard is not None and (report is not None or not quiet)  # someone reads it
    cut_short: list[RunOutcome] = []
    try:
        with observer:
            watched = shard.watch(observer) if shard is not None and counting else observer
            try:
                outcome = await run_phases(task_phases, options, watched, cut_short.append)
            finally:
                if landed_log is not None:
                    landed_log.close()
    except asyncio.CancelledError:  # Ctrl-C: say what was done, then go on ending the run
        for done in cut_short:
            if report is not None:
                report.outcome = done
                if shard is not None:  # what was counted so far (not settled)
                    report.extra["shard"] = shard.to_dict()
            if console is not None:
                console.print(summary_table(done.results, done.stats, done.seconds))
        raise
    if shard is not None:
        await shard.settle(abandon=outcome.stopped is not None)
    if report is not None:
        report.outcome = outcome
        if shard is not None:
            report.extra["shard"] = shard.to_dict()
    if lock_output is not None:
        from transship.imgpkg.lock import write_images_lock

        write_images_lock(lock_output, outcome.results)
    if console is not None:
        table = summary_table(outcome.results, outcome.stats, outcome.seconds)
        if shard is not None:
            add_shard_rows(table, shard)
        console.print(table)
    if outcome.stopped is not None:  # a registry is down: one line and exit 6, not one per entry
        raise outcome.stopped
    return outcome.results


async def before_engine(
    task_phases: Sequence[Sequence[CopyTask]],
    projects: ProjectSettings,
    dests: RegistryPool,
    *,
    preflight: bool,
    quiet: bool,
    parallel: int,
) -> None:
    """Between building tasks and the engine (copy, load, load of imgpkg tars), in this
    order: the Harbor wing's `before_push` (quota readers; projects made or listed), then,
    with `--preflight`, every destination repository asked whether a push would land
    (`check_destinations`)."""
    await before_push(task_phases, projects, dests, preflight=preflight, quiet=quiet)
    if preflight:
        await check_destinations(task_phases, parallel)


async def check_destinations(task_phases: Sequence[Sequence[CopyTask]], parallel: int) -> None:
    """`--preflight`: every refusal on its own line, then the error (rendered by the CLI). A
    refusal the same for many repositories (a wrong password: the registry's, not theirs) is
    one line saying how many, not the same line once per repository."""
    from transship.ops.preflight import preflight

    try:
        await preflight(task_phases, parallel)
    except PreflightError as exc:
        folded: dict[str, tuple[TransshipError, int]] = {}  # identical lines: one, counted
        for problem in exc.problems:
            first, n = folded.get(str(problem), (problem, 0))
            folded[str(problem)] = (first, n + 1)
        for text, (problem, n) in folded.items():
            if n > 1:  # the count inside the message, before its hint: `message (N …) (hint)`
                text = f"{problem.message} ({n} repositories){text[len(problem.message) :]}"
            print(f"transship: preflight: {text}", file=sys.stderr)
        raise


def add_shard_rows(table: Table, shard: ShardAccount) -> None:
    """The summary's shard lines: which part, and the blobs other shards need too."""
    info = shard.to_dict()
    table.add_row("shard", f"{shard.split.shard} ({info['repositories']} repositories)")
    shared = (
        "not counted"
        if shard.shared is None
        else (f"{info['shared_blobs']} ({human_bytes(info['shared_bytes'])})")
    )
    sent = f"{info['shared_blobs_sent']} ({human_bytes(info['shared_bytes_sent'])})"
    table.add_row("blobs shared with other shards / sent here too", f"{shared} / {sent}")


def exit_code_for(results: Sequence[TaskResult]) -> int:
    """0 if all went well; every image failed for one kind of reason: that failure's code
    (`ops.run.shared_failure`), as a single image has; otherwise partial (2)."""
    if all(r.status != "failed" for r in results):
        return ExitCode.OK
    error = shared_failure(results)
    if error is None:
        return ExitCode.PARTIAL
    if len(results) > 1 and isinstance(error, NamespaceFullError):
        return int(error.exit_code)  # said once per namespace already (`harbor.after_push`)
    every = f"all {len(results)} images failed; the first: " if len(results) > 1 else ""
    print(f"transship: error: {every}{error}", file=sys.stderr)
    return int(error.exit_code)


async def resolve_listed(
    plan: Plan,
    sources: RegistryPool,
    parallel: int,
    quiet: bool,
    *,
    attachments: bool,
    verifying: bool = False,
) -> tuple[Plan, list[PlanEntry]]:
    """Resolve a list or script (`ops.listed`) and tell people what was left out and why
    (`verifying`: in the words of a check, not of a copy)."""
    from transship.ops.listcache import ListCache, default_directory
    from transship.ops.listed import resolve_listed as resolve_listed_plan

    kept = default_directory()
    cache = ListCache(kept) if kept is not None else None  # a rerun of a list: HEADs, no walk
    listed = await resolve_listed_plan(
        plan, sources.get, parallel, attachments=attachments, cache=cache
    )
    for warning in listed.warnings if not quiet else ():
        print(f"transship: warning: {warning}", file=sys.stderr)
    for gap in listed.not_copied if not quiet else ():
        left = "not checked" if verifying else "not copied"
        print(f"transship: warning: {left}: {gap.source}: {gap.reason}", file=sys.stderr)
    held_back_outcome = (
        "only its own tag is checked, not its images"
        if verifying
        else "it is not copied (a bundle without its images would break imgpkg)"
    )
    for entry in listed.held_back:
        print(
            f"transship: error: bundle {entry.source} could not be expanded, so "
            f"{held_back_outcome}; see the warnings above",
            file=sys.stderr,
        )
    return listed.plan, list(listed.held_back)


async def run_verify(
    plan: Plan,
    src_settings: SideSettings,
    dest_settings: SideSettings,
    options: VerifyOptions,
    *,
    listed: bool = False,
    attachments: bool = True,
    quiet: bool = False,
) -> VerifyResult:
    """Open both sides, verify, close: shared by `verify` and `tkg config`.

    A `listed` plan (an image list or old script) is resolved first, as `copy` resolves it,
    so the signatures, attestations and bundle images that copy brought are checked too.
    """
    from transship.harbor.accessories import HarborIndexLister, check_accessories
    from transship.ops.tasks import without_attachments
    from transship.ops.verify import verify_plan

    sources = RegistryPool(src_settings)
    dests = RegistryPool(dest_settings)
    if options.index_lister is None:  # on Harbor, index children without a manifest GET
        options = replace(options, index_lister=HarborIndexLister(dests.registry_of))
    try:
        if listed:
            plan, held_back = await resolve_listed(
                plan,
                sources,
                options.parallel,
                quiet,
                attachments=attachments,
                verifying=True,
            )
            # checked as listed: present or not, and named among the unexpanded bundles
            plan = replace(plan, entries=plan.entries + tuple(held_back))
        elif not attachments:
            plan = without_attachments(plan)
        result = await verify_plan(plan, sources.get, dests.get, options)
        # on Harbor: are signatures and referrers attached as accessories?
        await check_accessories(result, dests.get, dests.registry_of)
    except BaseException as exc:
        await close_all((sources.close, dests.close), exc)
        raise
    await close_all((sources.close, dests.close), None)
    return result
