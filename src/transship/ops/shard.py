"""What one shard shares with the others: blobs its images need that another shard's need too.

Shards split a plan by destination repository, so a blob two repositories share may fall in two
shards. Each shard's engine sends it at most once (then mounts it into its other repositories),
so the cost of sharding is one more upload per further shard that needs it. This counts that
cost for the summary and `--report`: which of this shard's blobs other shards need too, and how
many of those this run streamed itself. It reads only manifests, a few at a time, starting when
the run streams its first blob (so it overlaps the copy), and not at all when nothing is
streamed: a no-op rerun pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.engine import CopyTask, Observer, TaskResult
from transship.errors import TransshipError
from transship.manifest import MAX_INDEX_DEPTH, Descriptor
from transship.ops.archive import source_points
from transship.ops.tasks import EndpointFor
from transship.plan.model import Plan, PlanEntry
from transship.plan.shard import ShardSplit

log = logging.getLogger("transship.shard")


async def blobs_of(points: Iterable[tuple[Endpoint, str, str]], parallel: int) -> dict[Digest, int]:
    """Every distributable blob (config, layers) the manifest graphs at `points` reference."""
    slots = asyncio.Semaphore(max(1, parallel))
    blobs: dict[Digest, int] = {}
    walked: set[tuple[int, str]] = set()

    async def walk(endpoint: Endpoint, repository: str, identifier: str, depth: int) -> None:
        key = (id(endpoint), identifier if ":" in identifier else f"{repository}:{identifier}")
        if key in walked:
            return
        walked.add(key)
        async with slots:
            manifest = await endpoint.get_manifest(repository, identifier)
        if manifest.is_index and depth < MAX_INDEX_DEPTH:
            await asyncio.gather(
                *(walk(endpoint, repository, str(c.digest), depth + 1) for c in manifest.manifests)
            )
        for blob in manifest.blobs():
            if not blob.urls:
                blobs[blob.digest] = blob.size

    await asyncio.gather(*(walk(*point, 0) for point in points))
    return blobs


async def _both(
    first: Awaitable[dict[Digest, int]], second: Awaitable[dict[Digest, int]]
) -> tuple[dict[Digest, int], dict[Digest, int]]:
    here, there = await asyncio.gather(first, second)
    return here, there


class _Tee:
    """The CLI's observer, plus a record of every blob this shard streamed and landed (a
    transfer that fails is not counted as sent). The first transfer to start starts the count
    of shared blobs (`first`), so it overlaps the copy."""

    def __init__(self, inner: Observer, sent: dict[Digest, int], first: Callable[[], None]) -> None:
        self.inner = inner
        self.sent = sent
        self.first: Callable[[], None] | None = first

    def task_started(self, task: CopyTask) -> None:
        self.inner.task_started(task)

    def task_finished(self, result: TaskResult) -> None:
        self.inner.task_finished(result)

    def blob_started(self, descriptor: Descriptor) -> None:
        if self.first is not None:
            self.first()
            self.first = None
        self.inner.blob_started(descriptor)

    def blob_progress(self, descriptor: Descriptor, nbytes: int) -> None:
        self.inner.blob_progress(descriptor, nbytes)

    def blob_kept(self, descriptor: Descriptor, nbytes: int) -> None:
        self.inner.blob_kept(descriptor, nbytes)

    def blob_finished(self, descriptor: Descriptor) -> None:
        self.inner.blob_finished(descriptor)

    def blob_landed(self, descriptor: Descriptor) -> None:
        self.sent[descriptor.digest] = descriptor.size
        self.inner.blob_landed(descriptor)


@dataclass
class ShardAccount:
    """One shard's run: what it is, and (after `settle`) what it shares with other shards."""

    split: ShardSplit
    source_for: EndpointFor
    parallel: int = 16
    #: the entries this shard ran (its part, resolved when it was a list)
    mine: Plan | None = None
    sent: dict[Digest, int] = field(default_factory=dict)
    #: blobs this shard needs that another shard needs too; None: not counted (nothing was
    #: streamed, or the manifests could not be read)
    shared: dict[Digest, int] | None = None
    _walk: asyncio.Task[tuple[dict[Digest, int], dict[Digest, int]]] | None = None

    def watch(self, observer: Observer) -> Observer:
        """`observer`, recording the blobs this run streams; the first one starts the count."""
        return _Tee(observer, self.sent, self._start)

    def _start(self) -> None:
        if self._walk is not None:  # one count per run, whichever observer starts it
            return
        # a few requests at a time: the count must not slow the copy it runs beside
        slots = max(2, self.parallel // 4)
        mine = self.mine.entries if self.mine is not None else self.split.part.entries
        self._walk = asyncio.get_running_loop().create_task(
            _both(
                blobs_of(self._points(mine), slots),
                blobs_of(self._points(self.split.others), slots),
            )
        )

    async def settle(self, *, abandon: bool = False) -> None:
        """After the run: the shared blobs, if the run streamed any (else not counted);
        `abandon`: the run stopped (a registry is down), so stop counting."""
        if self._walk is None:
            return
        if abandon:
            self._walk.cancel()
            return
        try:
            here, there = await self._walk
        except TransshipError as exc:  # the copy is done; only the count is lost (even when
            # a source only other shards read is down: this host's copy did not need it)
            log.warning("blobs shared with other shards not counted: %s", exc)
            return
        self.shared = {d: size for d, size in here.items() if d in there}

    def _points(self, entries: Iterable[PlanEntry]) -> list[tuple[Endpoint, str, str]]:
        return source_points(Plan(tuple(entries)), self.source_for)

    @property
    def shared_sent(self) -> dict[Digest, int]:
        """Shared blobs this run streamed itself and landed (another shard streams its own
        copy; a transfer that failed is not counted)."""
        return {d: s for d, s in (self.shared or {}).items() if d in self.sent}

    def to_dict(self) -> dict[str, Any]:
        """The `shard` object of `--report`."""
        shared, sent = self.shared, self.shared_sent
        return {
            "index": self.split.shard.index,
            "count": self.split.shard.count,
            "assignment": self.split.assignment,
            "entries": len(self.split.part.entries),
            "repositories": self.split.repositories,
            "shared_blobs": None if shared is None else len(shared),
            "shared_bytes": None if shared is None else sum(shared.values()),
            "shared_blobs_sent": len(sent),
            "shared_bytes_sent": sum(sent.values()),
        }
