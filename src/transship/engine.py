"""The copy engine: any `Endpoint` to any `Endpoint`, each blob once, concurrently.

`copy`, `save` and `load` all run this. Ordering guarantees: a manifest is pushed only after
every blob and child manifest it references has landed, so a destination never holds a manifest
whose content is missing, and an interrupted run resumes by asking the destination what it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from transship.digest import Digest, Hasher, RestOpener
from transship.endpoint import (
    Endpoint,
    RangeSource,
    RepositoryIndex,
    ResumingSink,
    TagIndex,
)
from transship.errors import (
    DependencyError,
    HostDownError,
    IntegrityError,
    NamespaceFullError,
    NotFoundError,
    RegistryError,
    RetryableError,
    TransshipError,
    UsageError,
    describe_unexpected,
)
from transship.landed import LandedLog
from transship.manifest import MAX_INDEX_DEPTH, Descriptor, Manifest, Platform
from transship.ratelimit import TokenBucket
from transship.retry import CONTENT_POLICY, RetryPolicy, worth_restarting
from transship.singleflight import SingleFlight

log = logging.getLogger("transship.engine")

SMALL_BLOB = 1024 * 1024
#: an upload the registry refused as damaged in transit or lost: send it again
_UPLOAD_RETRY_CODES = frozenset({"DIGEST_INVALID", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})
#: a manifest PUT refused for content that should be there: worth one more look
_CONTENT_RACE_CODES = frozenset(
    {"BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID"}
)  # configs and tiny layers get their own lane
#: at most this many catalog pages per destination (`RepositoryIndex`), and never more than
#: the tag lists they would spare: a huge shared registry falls back to the tag lists
CATALOG_PAGES = 5

#: "interrupted" (running) and "not-started" only in what a run cut short had done (`so_far`)
Status = Literal["copied", "skipped", "failed", "interrupted", "not-started"]
#: what the engine knows of a destination repository's tags: the set, None for a repository
#: that does not exist, or "unknown" (no `TagIndex`, or the list was refused): ask tag by tag
TagView = frozenset[str] | None | Literal["unknown"]


@dataclass(frozen=True)
class CopyTask:
    """One planned copy: a source manifest to a destination repository and tags."""

    source: Endpoint
    source_repository: str
    source_identifier: str  # tag or digest
    dest: Endpoint
    dest_repository: str
    dest_tags: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] = ()
    #: the source as the plan names it (`harbor.corp/tkg/antrea:v1`), when it has a name of
    #: its own; otherwise the endpoint's location, repository and identifier name it
    source_reference: str = ""
    #: bytes of its manifest graph (manifests and blobs) when the plan knows them: progress
    #: counts down from these; the engine itself never relies on them
    size: int | None = None

    @property
    def source_name(self) -> str:
        """The source reference for messages and reports."""
        if self.source_reference:
            return self.source_reference
        separator = "@" if ":" in self.source_identifier else ":"
        return f"{self.source.label}/{self.source_repository}{separator}{self.source_identifier}"

    @property
    def dest_name(self) -> str:
        """The destination repository (`host/path`), without tags."""
        return f"{self.dest.label}/{self.dest_repository}"

    @property
    def dest_reference(self) -> str:
        """The destination repository and its tags (`host/path:v1,v2`)."""
        tags = ",".join(self.dest_tags)
        return f"{self.dest_name}:{tags}" if tags else self.dest_name

    @property
    def label(self) -> str:
        return f"{self.source_name} -> {self.dest_reference}"


@dataclass
class TaskResult:
    task: CopyTask
    status: Status
    digest: Digest | None = None
    bytes_sent: int = 0
    bytes_refetched: int = 0  # source bytes this task downloaded more than once
    seconds: float = 0.0
    error: TransshipError | None = None


@dataclass
class Stats:
    """What crossed the wire; the engine's own accounting, shown in the summary."""

    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_uploaded: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    retries: int = 0
    #: source bytes downloaded more than once: a blob restarted after a bad digest or a
    #: refused upload, or a resumed download whose server ignored `Range`
    bytes_refetched: int = 0
    #: bytes of blobs an earlier, stopped save had written, kept (re-read and hashed, not
    #: written again); a source that ignored or refused `Range` sent them all the same, so
    #: those are in `bytes_refetched` too
    bytes_resumed: int = 0


class Observer(Protocol):
    """Progress sink: the CLI renders these as bars or log lines."""

    def task_started(self, task: CopyTask) -> None: ...
    def task_finished(self, result: TaskResult) -> None: ...
    def blob_started(self, descriptor: Descriptor) -> None: ...
    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None: ...
    #: bytes of the blob a stopped earlier run wrote and this one keeps (not transferred)
    def blob_kept(self, descriptor: Descriptor, nbytes: int) -> None: ...
    def blob_finished(self, descriptor: Descriptor) -> None: ...
    #: the blob landed at the destination (after `blob_finished`, only when its transfer
    #: succeeded: a failed one is finished, never landed)
    def blob_landed(self, descriptor: Descriptor) -> None: ...


class NullObserver:
    def task_started(self, task: CopyTask) -> None:
        pass

    def task_finished(self, result: TaskResult) -> None:
        pass

    def blob_started(self, descriptor: Descriptor) -> None:
        pass

    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None:
        pass

    def blob_kept(self, descriptor: Descriptor, nbytes: int) -> None:
        pass

    def blob_finished(self, descriptor: Descriptor) -> None:
        pass

    def blob_landed(self, descriptor: Descriptor) -> None:
        pass


@dataclass
class EngineOptions:
    parallel_images: int = 16
    parallel_blobs: int = 6
    parallel_small_blobs: int = 16
    blob_attempts: int = CONTENT_POLICY.retries + 1
    retry_base: float = CONTENT_POLICY.base
    #: `--limit-rate`: one bucket every blob transfer draws from (None: no cap)
    rate_limit: TokenBucket | None = None
    #: where earlier runs landed blobs (`transship.landed`): a resumed run mounts from there
    landed_log: LandedLog | None = None
    #: `--repair`: walk every manifest and blob even where the top manifest is there, so
    #: content the destination lost (garbage collection, a partial restore) is sent again
    repair: bool = False

    @property
    def retry_policy(self) -> RetryPolicy:
        """The one retry policy (`transship.retry`), with the engine's own budget."""
        return RetryPolicy(retries=self.blob_attempts - 1, base=self.retry_base)


@dataclass
class _Presence:
    """What this run's checks at one destination found so far: whether a tag list pays.

    A repository's tag list spares a cold destination a HEAD per tag, but on a complete one it
    is one request more per repository on top of them (a no-op rerun, an htpasswd registry
    spending a bcrypt check on each). So the first check lists (the cold-safe choice), and
    the others wait for its outcome; after that an unlisted repository is listed only while
    checks have found content missing at least as often as present. A cold copy thus lists
    every repository and HEADs nothing missing, a no-op rerun lists once and HEADs each tag.
    """

    present: int = 0
    missing: int = 0
    probing: bool = False
    decided: asyncio.Event = field(default_factory=asyncio.Event)

    async def list_first(self) -> bool:
        """Whether to list a repository's tags before HEADing them."""
        if not self.decided.is_set():
            if not self.probing:
                self.probing = True
                return True
            await self.decided.wait()
        return self.missing >= self.present

    def record(self, present: bool | None) -> None:
        """A check's outcome (None: it failed, which says nothing either way)."""
        if present is True:
            self.present += 1
        elif present is False:
            self.missing += 1
        self.decided.set()


@dataclass(frozen=True)
class _Catalog:
    """The destination's repositories whose names start with `prefix` (`RepositoryIndex`),
    asked once. A repository it lacks is treated as missing: no tag list, no HEAD. Should the
    answer be wrong (a registry whose catalog lags), that costs work, never correctness: the
    transfer's mount from the repository itself answers "already here" for every blob it
    holds, and a manifest PUT of the same bytes is idempotent (except where the registry makes
    tags immutable, e.g. a Harbor immutability rule: there the PUT is refused and the entry
    fails; such registries' catalogs come from their database and do not lag)."""

    prefix: str
    names: frozenset[str]

    def lacks(self, repository: str) -> bool:
        return repository.startswith(self.prefix) and repository not in self.names


@dataclass
class _Sink:
    """Per destination endpoint: which blobs landed where, and transfers in flight."""

    #: the endpoint as a `TagIndex`, if it is one (asked once: an isinstance check against a
    #: runtime protocol walks its members, and every check of a no-op rerun needs the answer)
    tag_index: TagIndex | None = None
    landed: dict[Digest, set[str]] = field(default_factory=dict)
    #: blob transfers in flight per (repository, digest); `landed` remembers the outcome
    blobs: SingleFlight[tuple[str, Digest], None] = field(
        default_factory=lambda: SingleFlight(keep=False)
    )
    first_home: dict[Digest, asyncio.Future[str]] = field(default_factory=dict)
    #: repositories each repository mounts from (see `CopyEngine._mount_origin`)
    mounted_from: dict[str, set[str]] = field(default_factory=dict)
    manifests: SingleFlight[tuple[str, Digest], None] = field(default_factory=SingleFlight)
    #: each repository's tags, listed once at its first check when listing pays (`_Presence`)
    tags: SingleFlight[str, TagView] = field(default_factory=SingleFlight)
    presence: _Presence = field(default_factory=_Presence)
    #: the plan's repositories here: the catalog is asked for their common prefix
    repositories: set[str] = field(default_factory=set)
    #: the catalog, asked once, at the first check that would list tags (key: 0)
    catalog: SingleFlight[int, _Catalog | None] = field(default_factory=SingleFlight)
    #: its answer once known (None: not asked, not answered, or refused)
    known: _Catalog | None = None
    #: `--repair`: (repository, digest) of blobs and index children it had to send again
    repaired: set[tuple[str, Digest]] = field(default_factory=set)


#: how long a cut-short run waits for its shared transfers to stop (`_stop_shared_work`)
STOP_WAIT = 10.0


class CopyEngine:
    """Runs copy tasks; every blob crosses the wire at most once per destination."""

    def __init__(self, options: EngineOptions | None = None, observer: Observer | None = None):
        self.options = options or EngineOptions()
        self.observer: Observer = observer or NullObserver()
        self.stats = Stats()
        self._sinks: dict[int, _Sink] = {}
        self._task_bytes: dict[int, int] = {}  # bytes each running task itself uploaded
        self._task_refetched: dict[int, int] = {}
        #: per (destination, digest): the bytes an earlier run kept of the blob, as its first
        #: transfer in this run found them; what a later transfer keeps beyond that, this run
        #: sent itself (an attempt that failed), so it is never counted or shown as kept
        self._kept_earlier: dict[tuple[int, Digest], int] = {}
        self._kept_shown: set[tuple[int, Digest]] = set()  # blob_kept said (once per blob)
        self.policy = self.options.retry_policy
        self._images = asyncio.Semaphore(self.options.parallel_images)
        self._big = asyncio.Semaphore(self.options.parallel_blobs)
        self._small = asyncio.Semaphore(self.options.parallel_small_blobs)
        #: per destination: namespaces that refused more content (no new upload starts there)
        self._full: dict[int, list[NamespaceFullError]] = {}
        #: set when a registry is found down: no task starts after it, and the caller ends
        #: the run with this one error instead of a failure per entry
        self.stopped: HostDownError | None = None
        #: every task `run_phases` started, in plan order: what `so_far` reads
        self._runs: list[tuple[CopyTask, asyncio.Task[TaskResult]]] = []
        #: `--repair`: writes per task (blobs sent or mounted, manifests pushed), by id
        self._writes: dict[int, list[int]] = {}

    def _sink(self, dest: Endpoint) -> _Sink:
        sink = self._sinks.get(id(dest))
        if sink is None:  # built once per destination: it holds locks, flights and an event
            index = dest if isinstance(dest, TagIndex) else None
            sink = self._sinks[id(dest)] = _Sink(tag_index=index)
        return sink

    async def run(self, tasks: Iterable[CopyTask]) -> list[TaskResult]:
        """Run every task; one failing task never stops the others."""
        tasks = list(tasks)
        self._note(tasks)
        try:
            return list(await asyncio.gather(*(self._run_task(t) for t in tasks)))
        except asyncio.CancelledError:
            await self._stop_shared_work()
            raise

    def _note(self, tasks: Iterable[CopyTask]) -> None:
        """Remember each destination's planned repositories (for its catalog's prefix)."""
        for task in tasks:
            self._sink(task.dest).repositories.add(task.dest_repository)

    async def run_phases(self, phases: Sequence[Sequence[CopyTask]]) -> list[TaskResult]:
        """Run groups in order within each destination repository: a task starts once every
        task of an earlier group for its repository has finished, and is not attempted when
        one of them failed: a bundle must not be tagged, nor its ImageLocations written, over
        referenced images that did not land (imgpkg trusts both blindly). Repositories do not
        wait for each other, so bundles and records go up while other images still stream
        instead of after the last one (no idle tail between groups)."""
        done: dict[tuple[int, str], list[asyncio.Task[TaskResult]]] = {}
        runs: list[asyncio.Task[TaskResult]] = []
        for tasks in phases:
            self._note(tasks)
            started = []
            for task in tasks:
                key = (id(task.dest), task.dest_repository)
                before = tuple(done.get(key, ()))
                started.append((key, asyncio.ensure_future(self._after(task, before))))
            for (key, run), task in zip(started, tasks, strict=True):
                done.setdefault(key, []).append(run)  # a group's tasks wait for earlier groups
                runs.append(run)
                self._runs.append((task, run))
        try:
            return list(await asyncio.gather(*runs))
        except asyncio.CancelledError:  # Ctrl-C
            await self._stop_shared_work()
            raise

    async def _stop_shared_work(self) -> None:
        """Cancel the transfers the tasks shared, and wait until they have stopped.

        Shared work (a blob, a child manifest, a tag list) runs in its own task, shielded from
        any one asker, so cancelling the tasks leaves it running. Left so on Ctrl-C it would go
        on streaming while the run reports, then meet the sessions closed under it ("Server
        disconnected") and count that as a retry and its bytes as downloaded again; the
        counters must be final when the run is cut short."""
        pending: list[asyncio.Future[Any]] = []
        for sink in self._sinks.values():
            for flight in (sink.blobs, sink.manifests, sink.tags, sink.catalog):
                pending += flight.cancel_pending()
        if pending:  # bounded: a write stuck on a dead disk must not hold Ctrl-C for ever
            _, stuck = await asyncio.wait(pending, timeout=STOP_WAIT)
            if stuck:
                log.warning("%d shared transfers did not stop within %.0f s", len(stuck), STOP_WAIT)

    def so_far(self) -> list[TaskResult]:
        """What a run cut short (Ctrl-C cancels `run_phases`) had done, in plan order: each
        finished task's result, the others "interrupted" (with the bytes they had sent) or
        "not-started", so a report says which images to look at and which a rerun sends."""
        out = []
        for task, run in self._runs:
            if run.done() and not run.cancelled() and run.exception() is None:
                out.append(run.result())
            elif id(task) in self._task_bytes:  # started: its counters are popped at the end
                sent = self._task_bytes[id(task)]
                again = self._task_refetched.get(id(task), 0)
                out.append(TaskResult(task, "interrupted", bytes_sent=sent, bytes_refetched=again))
            else:
                out.append(TaskResult(task, "not-started"))
        return out

    async def _after(
        self, task: CopyTask, before: Sequence[asyncio.Task[TaskResult]]
    ) -> TaskResult:
        """Run `task` once the earlier groups' tasks of its repository have finished."""
        earlier = await asyncio.gather(*before)
        if self.stopped is not None:
            return self._not_started(task, self.stopped)
        if any(r.status == "failed" for r in earlier):
            skipped = TaskResult(
                task,
                "failed",
                error=DependencyError(
                    f"{task.dest_reference}: not pushed, because an image it "
                    f"depends on in {task.dest_repository} failed"
                ),
            )
            self.observer.task_finished(skipped)
            return skipped
        return await self._run_task(task)

    def _not_started(self, task: CopyTask, cause: HostDownError) -> TaskResult:
        return TaskResult(task, "failed", error=cause)

    async def _run_task(self, task: CopyTask) -> TaskResult:
        async with self._images:
            if self.stopped is not None:
                return self._not_started(task, self.stopped)
            self.observer.task_started(task)
            start = time.monotonic()
            self._task_bytes[id(task)] = 0
            self._task_refetched[id(task)] = 0
            try:
                status, digest = await self.copy_one(task)
                result = TaskResult(task, status, digest)
            except HostDownError as exc:  # the run stops; the caller says why, once
                log.debug("task %s stopped", task.label, exc_info=True)
                self.stopped = self.stopped or exc
                result = TaskResult(task, "failed", error=exc)
            except TransshipError as exc:
                log.debug("task %s failed", task.label, exc_info=True)
                if isinstance(exc, NamespaceFullError):
                    self._mark_full(task, exc)
                result = TaskResult(task, "failed", error=exc)
            except Exception as exc:  # a bug or an unforeseen error: fail this task, not the run
                what = describe_unexpected(exc)
                log.warning("task %s failed unexpectedly: %s", task.label, what)
                log.debug("task %s: traceback", task.label, exc_info=True)
                result = TaskResult(
                    task, "failed", error=RegistryError(f"{task.label}: unexpected {what}")
                )
            result.seconds = time.monotonic() - start
            result.bytes_sent = self._task_bytes.pop(id(task), 0)
            result.bytes_refetched = self._task_refetched.pop(id(task), 0)
            if not isinstance(result.error, HostDownError):
                self.observer.task_finished(result)
            return result

    async def copy_one(self, task: CopyTask) -> tuple[Status, Digest]:
        """Copy one task's manifest graph; 'skipped' when the destination already has it."""
        pinned = not task.platforms and ":" in task.source_identifier
        trust = not self.options.repair  # a manifest there stands for everything below it
        if pinned and trust:
            # Pinned by digest (a resolved plan): ask the destination first, so a complete
            # destination costs one HEAD per tag and nothing at the source.
            digest = Digest.parse(task.source_identifier)
            if await self._dest_has(task.dest, task.dest_repository, digest, task.dest_tags):
                self.stats.manifests_present += 1
                return "skipped", digest
        manifest = await task.source.get_manifest(task.source_repository, task.source_identifier)
        if task.platforms and manifest.is_index:
            manifest = await self._pick_platform(task, manifest)
        tags = task.dest_tags
        if (
            not pinned
            and trust
            and await self._dest_has(task.dest, task.dest_repository, manifest.digest, tags)
        ):
            self.stats.manifests_present += 1
            return "skipped", manifest.digest
        if self.options.repair:
            return await self._repair_one(task, manifest)
        await self._copy_manifest(task, manifest, depth=0, seen=frozenset())
        for tag in tags:
            await self._push_manifest(task, manifest, tag)
        return "copied", manifest.digest

    async def _repair_one(self, task: CopyTask, manifest: Manifest) -> tuple[Status, Digest]:
        """`--repair`: walk the whole graph and send what is missing below it, but PUT no
        manifest and no tag that already names this digest (immutable tags stay untouched,
        no webhook fires for nothing). 'skipped' when nothing had to be written."""
        writes = self._writes.setdefault(id(task), [0])
        named = await asyncio.gather(
            *(self._names(task, tag, manifest.digest) for tag in task.dest_tags)
        )
        untagged_present = not task.dest_tags and await self._names(
            task, str(manifest.digest), manifest.digest
        )
        await self._copy_manifest(
            task, manifest, depth=0, seen=frozenset(), push=not untagged_present
        )
        for tag, there in zip(task.dest_tags, named, strict=True):
            if not there:
                await self._push_manifest(task, manifest, tag)
        if all(named) if task.dest_tags else untagged_present:
            self.stats.manifests_present += 1  # as a plain copy counts a manifest it found
        return ("copied" if writes[0] else "skipped"), manifest.digest

    async def _names(self, task: CopyTask, identifier: str, digest: Digest) -> bool:
        """Whether `identifier` (a tag, or a digest) names `digest` at the destination."""
        found = await task.dest.head_manifest(task.dest_repository, identifier)
        return found is not None and found.digest == digest

    def _wrote(self, task: CopyTask) -> None:
        """Count a write (blob sent or mounted, manifest pushed) for a `--repair` task."""
        writes = self._writes.get(id(task))
        if writes is not None:
            writes[0] += 1

    async def _push_manifest(self, task: CopyTask, manifest: Manifest, tag: str | None) -> None:
        """PUT a manifest; if the registry says content it needs is unknown, check and retry.

        With another writer pushing the same blobs at the same moment, distribution can
        briefly report a blob we just HEADed or mounted as unknown (seen with two transship
        processes on overlapping plans). The content is verified again before each retry.
        """
        attempts = self.policy.attempts()
        while True:
            try:
                await task.dest.put_manifest(task.dest_repository, manifest, tag)
                self.stats.manifests_pushed += 1
                self._wrote(task)
                return
            except RegistryError as exc:
                if not attempts.left or not set(exc.codes) & _CONTENT_RACE_CODES:
                    raise
                self.stats.retries += 1
                await attempts.pause()
                await self._recheck(task, manifest)

    async def _recheck(self, task: CopyTask, manifest: Manifest) -> None:
        """HEAD what `manifest` references at the destination; send again what is missing."""
        sink = self._sink(task.dest)
        for child in manifest.manifests:
            found = await task.dest.head_manifest(task.dest_repository, str(child.digest))
            if found is None:
                sink.manifests.forget((task.dest_repository, child.digest))
                await self._copy_child(task, child, 1, frozenset({manifest.digest}))
        for blob in manifest.blobs():
            if not blob.urls and not await task.dest.has_blob(
                task.dest_repository, blob.digest, blob.size
            ):
                await self._transfer(task, blob)

    async def _dest_has(
        self, dest: Endpoint, repository: str, digest: Digest, tags: tuple[str, ...]
    ) -> bool:
        """One HEAD per tag (or by digest when untagged): the whole cost of a no-op rerun.

        While the destination looks cold (`_Presence`), the repository's tags are listed
        first: a tag the list lacks, or a repository that does not exist, needs no HEAD, so a
        cold destination costs one tag list per repository, or a single catalog where the
        registry lets us read it (`_tag_view`). A tag that is listed is still HEADed, since it
        may have moved; so a complete destination is not listed at all.
        """
        presence = self._sink(dest).presence
        found: bool | None = None
        try:
            found = await self._check(dest, repository, digest, tags)
        finally:
            presence.record(found)
        return found

    async def _check(
        self, dest: Endpoint, repository: str, digest: Digest, tags: tuple[str, ...]
    ) -> bool:
        view = await self._tag_view(dest, repository, optional=True)
        if view is None:
            return False
        if tags and isinstance(view, frozenset) and not view.issuperset(tags):
            return False
        for identifier in tags or (str(digest),):
            found = await dest.head_manifest(repository, identifier)
            if found is None or found.digest != digest:
                return False
        return True

    async def _tag_view(
        self, dest: Endpoint, repository: str, *, optional: bool = False
    ) -> TagView:
        """The repository's tags, listed once per run (`TagIndex`), or "unknown".

        `optional`: the caller HEADs anyway, so the list is only asked for while it pays.
        Where the destination has a catalog (`RepositoryIndex`), the first check that would
        list asks it instead, once: a repository it lacks is None from then on (no tag list,
        no HEAD), and that first check HEADs a repository it holds without a list, so a
        complete destination costs the catalog where it cost one tag list.
        """
        sink = self._sink(dest)
        if sink.tag_index is None:
            return "unknown"
        if sink.known is not None and sink.known.lacks(repository):
            return None
        if optional and not sink.tags.started(repository) and not await sink.presence.list_first():
            return "unknown"
        first = not sink.catalog.started(0)
        catalog = await sink.catalog.run(0, lambda: self._catalog(dest, sink))
        if catalog is not None:
            if catalog.lacks(repository):
                return None
            if first and optional:
                return "unknown"  # the catalog stood in for this check's tag list
        lister = sink.tag_index

        async def listed() -> TagView:
            try:
                return await lister.existing_tags(repository)
            except HostDownError:
                raise
            except TransshipError:  # e.g. listing not allowed: fall back to HEADs
                log.debug("tags of %s not listed", repository, exc_info=True)
                return "unknown"

        return await sink.tags.run(repository, listed)

    async def _catalog(self, dest: Endpoint, sink: _Sink) -> _Catalog | None:
        """The destination's repositories under the plan's common prefix, or None (no
        catalog, refused, too large, or fewer than two repositories: then it spares nothing)."""
        planned = sink.repositories
        if not isinstance(dest, RepositoryIndex) or len(planned) < 2:
            return None
        prefix = _common_prefix(planned)
        try:
            names = await dest.existing_repositories(
                prefix, max_pages=min(CATALOG_PAGES, len(planned) - 1)
            )
        except HostDownError:
            raise
        except TransshipError:  # e.g. a damaged answer, retried in vain: ask tag by tag
            log.debug("catalog of %s not read", dest.label, exc_info=True)
            return None
        sink.known = None if names is None else _Catalog(prefix, names)
        return sink.known

    async def _pick_platform(self, task: CopyTask, index: Manifest) -> Manifest:
        matches = [
            child
            for child in index.manifests
            if child.platform and any(p.matches(child.platform) for p in task.platforms)
        ]
        wanted = ", ".join(str(p) for p in task.platforms)
        if not matches:
            have = ", ".join(str(c.platform) for c in index.manifests if c.platform)
            raise NotFoundError(
                f"{task.source_name}: no manifest for platform {wanted} "
                f"(the index has: {have or 'no platforms'})"
            )
        if len(matches) > 1:
            raise UsageError(
                f"{task.source_name}: platform {wanted} matches {len(matches)} "
                "manifests; name one platform (os/arch/variant), or omit --platform to copy all"
            )
        return await task.source.get_manifest(task.source_repository, str(matches[0].digest))

    async def _copy_manifest(
        self,
        task: CopyTask,
        manifest: Manifest,
        depth: int,
        seen: frozenset[Digest],
        *,
        push: bool = True,
    ) -> None:
        """Land everything `manifest` references, then the manifest itself (by digest;
        `push=False`: it is there already, only what is below it was checked)."""
        if manifest.digest in seen or depth > MAX_INDEX_DEPTH:
            raise IntegrityError(
                f"{task.source_name}: index nesting is cyclic or deeper than "
                f"{MAX_INDEX_DEPTH} levels"
            )
        if manifest.is_index:
            await asyncio.gather(
                *(
                    self._copy_child(task, child, depth + 1, seen | {manifest.digest})
                    for child in manifest.manifests
                )
            )
        else:
            await asyncio.gather(
                *(self._ensure_blob(task, blob) for blob in manifest.blobs() if not blob.urls)
            )
        if push and (not task.dest_tags or depth > 0):
            await self._push_manifest(task, manifest, None)

    async def _copy_child(
        self, task: CopyTask, child: Descriptor, depth: int, seen: frozenset[Digest]
    ) -> None:
        sink = self._sink(task.dest)
        key = (task.dest_repository, child.digest)
        await sink.manifests.run(key, lambda: self._land_child(task, child, depth, seen))
        self._credit_repair(task, sink, key)

    async def _land_child(
        self, task: CopyTask, child: Descriptor, depth: int, seen: frozenset[Digest]
    ) -> None:
        if self.options.repair:  # walk below a child that is there, push it only if not
            there = await self._names(task, str(child.digest), child.digest)
            manifest = await task.source.get_manifest(task.source_repository, str(child.digest))
            await self._copy_manifest(task, manifest, depth, seen, push=not there)
            if there:
                self.stats.manifests_present += 1
            sink, repo = self._sink(task.dest), task.dest_repository
            below = [b.digest for b in manifest.blobs()] + [m.digest for m in manifest.manifests]
            if not there or any((repo, digest) in sink.repaired for digest in below):
                sink.repaired.add((repo, child.digest))
            return
        if await self._tag_view(task.dest, task.dest_repository) is not None:
            found = await task.dest.head_manifest(task.dest_repository, str(child.digest))
            if found is not None and found.digest == child.digest:
                self.stats.manifests_present += 1
                return
        manifest = await task.source.get_manifest(task.source_repository, str(child.digest))
        await self._copy_manifest(task, manifest, depth, seen)

    # -- blobs ------------------------------------------------------------------------------

    async def _ensure_blob(self, task: CopyTask, blob: Descriptor) -> None:
        """Make `blob` present in the destination repository, sharing work across tasks."""
        sink = self._sink(task.dest)
        key = (task.dest_repository, blob.digest)
        if task.dest_repository in sink.landed.get(blob.digest, ()):
            self._credit_repair(task, sink, key)
            return
        if self.options.repair:
            await sink.blobs.run(key, lambda: self._repair_blob(task, blob, sink))
            self._credit_repair(task, sink, key)
            return
        await sink.blobs.run(key, lambda: self._land_blob(task, blob, sink))

    async def _repair_blob(self, task: CopyTask, blob: Descriptor, sink: _Sink) -> None:
        """`--repair`: a blob this repository still has is left alone (no mount from another
        repository, which distribution answers 201 all the same); a lost one lands as usual
        and is remembered, so every task that needed it reports what was mended."""
        repo = task.dest_repository
        if await task.dest.has_blob(repo, blob.digest, blob.size):
            self.stats.blobs_present += 1
            sink.landed.setdefault(blob.digest, set()).add(repo)
            if blob.digest not in sink.first_home:  # a repository that lost it mounts from here
                home = asyncio.get_running_loop().create_future()
                home.set_result(repo)
                sink.first_home[blob.digest] = home
            return
        await self._land_blob(task, blob, sink)
        sink.repaired.add((repo, blob.digest))

    def _credit_repair(self, task: CopyTask, sink: _Sink, key: tuple[str, Digest]) -> None:
        """A task whose content another task mended reports it as copied too."""
        if key in sink.repaired:
            self._wrote(task)

    async def _land_blob(self, task: CopyTask, blob: Descriptor, sink: _Sink) -> None:
        """The first task needing a digest uploads it; later ones mount from where it landed."""
        repo = task.dest_repository
        home = sink.first_home.get(blob.digest)
        if home is None:
            owned = asyncio.get_running_loop().create_future()
            sink.first_home[blob.digest] = owned
            try:
                if not await self._mount_remembered(task, blob):
                    await self._transfer(task, blob)
            except BaseException as exc:
                del sink.first_home[blob.digest]  # let a later task own it afresh
                owned.set_exception(exc)
                owned.exception()  # waiters handle it; do not log "never retrieved"
                raise
            owned.set_result(repo)
            if self.options.landed_log is not None:
                self.options.landed_log.record(task.dest.label, repo, blob.digest)
        else:
            try:
                origin: str | None = await asyncio.shield(home)
            except TransshipError:
                origin = None  # the owner failed: try on our own
            if origin is not None and origin != repo:
                origin = self._mount_origin(sink, blob.digest, repo, origin)
            if origin is None or (origin != repo and not await self._mount(task, blob, origin)):
                await self._transfer(task, blob)
        sink.landed.setdefault(blob.digest, set()).add(repo)

    async def _mount_remembered(self, task: CopyTask, blob: Descriptor) -> bool:
        """Mount from where an earlier (killed) run landed the blob, when that was another
        repository: whichever task reaches a shared blob first after a restart, nothing that
        landed is sent again."""
        journal = self.options.landed_log
        if journal is None:
            return False
        origin = journal.homes(task.dest.label).get(blob.digest)
        if origin is None or origin == task.dest_repository:
            return False  # unknown, or ours: the transfer's own check finds it
        self._check_room(task)
        try:
            if await self._mount(task, blob, origin):
                return True
        except HostDownError:
            raise
        except TransshipError as exc:  # e.g. no pull right there (other credentials then)
            log.debug("remembered mount of %s from %s refused: %s", blob.digest.short, origin, exc)
        journal.distrust(task.dest.label)
        return False

    @staticmethod
    def _mount_origin(sink: _Sink, digest: Digest, repo: str, home: str) -> str:
        """Mount from a repository `repo` already mounted from when that one holds the blob,
        else from where it first landed: a Bearer registry wants a token per pair of
        repositories (push here, pull there), so fewer pairs are fewer token requests."""
        used = sink.mounted_from.setdefault(repo, set())
        if home not in used:
            holding = used & sink.landed.get(digest, set())
            if holding:
                return min(holding)
        used.add(home)  # chosen, not yet done: a manifest's blobs are mounted side by side
        return home

    async def _mount(self, task: CopyTask, blob: Descriptor, origin: str) -> bool:
        if await task.dest.mount_blob(task.dest_repository, blob.digest, origin):
            self.stats.blobs_mounted += 1
            self._wrote(task)
            return True
        return False

    # -- a destination namespace that refuses more content (e.g. over quota) ------------------

    def _mark_full(self, task: CopyTask, exc: NamespaceFullError) -> None:
        if exc.first is None and self._refusal(task) is None:
            self._full.setdefault(id(task.dest), []).append(exc)

    def _refusal(self, task: CopyTask) -> NamespaceFullError | None:
        for full in self._full.get(id(task.dest), ()):
            if full.covers(task.dest_repository):
                return full
        return None

    def _check_room(self, task: CopyTask) -> None:
        """No new upload starts in a namespace that already refused content in this run."""
        full = self._refusal(task)
        if full is not None:
            raise NamespaceFullError(
                f"{task.dest_reference}: not copied: {full.namespace} refused more "
                "content earlier in this run",
                namespace=full.namespace,
                limit=full.limit,
                used=full.used,
                first=full,
            )

    async def _transfer(self, task: CopyTask, blob: Descriptor) -> None:
        """HEAD, then stream source → destination with bounded retries."""
        self._check_room(task)
        lane = self._small if blob.size <= SMALL_BLOB else self._big
        async with lane:
            self._check_room(task)
            # "Mount it from this very repository": one request that answers "already here"
            # (201) or opens the upload session the PUT then uses (202), where HEAD + POST
            # would take two. Endpoints without mounts answer from their own store.
            repo = task.dest_repository
            if await task.dest.mount_blob(repo, blob.digest, repo):
                self.stats.blobs_present += 1
                return
            attempts = self.policy.attempts()
            while True:
                read = [0]  # source bytes this attempt passed on
                try:
                    await self._stream(task, blob, read)
                    return
                except NamespaceFullError as exc:
                    self._mark_full(task, exc)
                    raise
                except (IntegrityError, RegistryError) as exc:
                    if not _engine_retries(exc) or not attempts.left:
                        raise
                    self.stats.retries += 1
                    self._refetched(task, read[0])  # all of it comes again
                    log.info("retrying blob %s after: %s", blob.digest.short, exc)
                    retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                    await attempts.pause(retry_after)

    def _refetched(self, task: CopyTask, nbytes: int) -> None:
        self.stats.bytes_refetched += nbytes
        if id(task) in self._task_refetched:
            self._task_refetched[id(task)] += nbytes

    async def _stream(self, task: CopyTask, blob: Descriptor, read: list[int]) -> None:
        self.observer.blob_started(blob)
        try:
            source, dest = task.source, task.dest
            if isinstance(dest, ResumingSink) and isinstance(source, RangeSource):
                # a save continues what an earlier run of it wrote of this blob: the sink
                # re-reads and hashes those bytes, the source sends the rest (`Range`)
                def open_rest(
                    hasher: Hasher,
                ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
                    if hasher.size:
                        return source.open_blob_at(task.source_repository, blob, hasher)
                    return source.open_blob(task.source_repository, blob)

                key = (id(dest), blob.digest)
                try:
                    _, kept = await dest.put_blob_resuming(
                        task.dest_repository, blob, self._counting(task, blob, read, open_rest)
                    )
                except IntegrityError:
                    self._kept_earlier[key] = 0  # the sink dropped what it kept: nothing left
                    raise
                self.stats.bytes_resumed += min(kept, self._kept_earlier.get(key, 0))
            else:
                rest = self._counting(
                    task, blob, read, lambda _: source.open_blob(task.source_repository, blob)
                )
                async with rest(Hasher(blob.digest, blob.size)) as chunks:
                    await dest.put_blob(task.dest_repository, blob, chunks)
        finally:
            self.observer.blob_finished(blob)
        self.observer.blob_landed(blob)
        self.stats.blobs_uploaded += 1
        self.stats.bytes_uploaded += blob.size
        self._wrote(task)
        if id(task) in self._task_bytes:
            self._task_bytes[id(task)] += blob.size

    def _counting(
        self,
        task: CopyTask,
        blob: Descriptor,
        read: list[int],
        opener: Callable[[Hasher], AbstractAsyncContextManager[AsyncIterator[bytes]]],
    ) -> RestOpener:
        """`opener`'s stream paced by `--limit-rate`, its bytes counted in `read` and shown
        as progress; bytes a resumed download had to skip are counted as downloaded again."""
        limit = self.options.rate_limit

        @asynccontextmanager
        async def opened(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
            # kept from an earlier run: shown done now (once), never in the rate; bytes an
            # attempt of this run sent are already shown
            key = (id(task.dest), blob.digest)
            earlier = min(hasher.size, self._kept_earlier.setdefault(key, hasher.size))
            if earlier and key not in self._kept_shown:
                self._kept_shown.add(key)
                self.observer.blob_kept(blob, earlier)
            async with opener(hasher) as chunks:

                async def counted() -> AsyncIterator[bytes]:
                    async for chunk in chunks:
                        if limit is not None:  # paced before counting: progress shows the cap
                            await limit.take(len(chunk))
                        read[0] += len(chunk)
                        self.observer.blob_progress(blob, len(chunk))
                        yield chunk

                try:
                    yield counted()
                finally:  # a resumed download that had to skip bytes says how many
                    self._refetched(task, int(getattr(chunks, "refetched", 0)))

        return opened


def _common_prefix(names: Iterable[str]) -> str:
    """The longest string every name starts with, character by character (not by path
    component: `mirror/app0`, `mirror/app1` → `mirror/app`, the catalog's closest start)."""
    ordered = sorted(names)
    first, last = ordered[0], ordered[-1]
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    return first[:size]


def _engine_retries(exc: IntegrityError | RegistryError) -> bool:
    """What only the engine can retry: a streamed blob that failed its digest, an upload whose
    stream could not be resent by the wire layer, an upload the registry refused as damaged.
    What the wire layer already retried until its budget ran out is not retried again."""
    if worth_restarting(exc):
        return True
    return isinstance(exc, RegistryError) and bool(set(exc.codes) & _UPLOAD_RETRY_CODES)
