"""Harbor's storage quota: read its refusals, and say what is left to send.

Harbor refuses a push that would take a project over its storage quota with 412 (older
releases) or 403 `DENIED`, and a message about the quota ("…will exceed the configured upper
limit of 10.0 MiB"). The engine knows nothing of Harbor: this module turns such a refusal into a
generic `NamespaceFullError` for the project (so the engine starts no new upload there), and
after the run writes the one line a person needs: the project, its limit, and the bytes still
to send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from transship.digest import Digest
from transship.engine import CopyTask, TaskResult
from transship.errors import (
    NamespaceFullError,
    PermissionDeniedError,
    RegistryError,
    TransshipError,
)
from transship.harbor.api import HarborAPI, HarborInfo, RegistryOf
from transship.remote.registry import Registry

#: words Harbor's quota refusals carry (1.9–2.0: "Quota exceeded …"; 2.x: "… will exceed the
#: configured upper limit of …")
QUOTA_WORDS = ("quota", "exceed the configured upper limit")


def binary_size(n: int) -> str:
    """Sizes as Harbor shows quotas: `10.0 MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def quota_detail(limit: int | None, used: int | None) -> str:
    """What is known of the quota, truthfully: Harbor's "used" counts only what landed, not the
    uploads in flight that the refused push would have added to, so it can be well below the
    limit; empty when nothing could be read."""
    known = []
    if limit is not None and limit >= 0:
        known.append(f"limit {binary_size(limit)}")
    if used is not None:
        known.append(
            f"{binary_size(used)} used as Harbor counts it, not counting uploads in flight"
        )
    return f" ({'; '.join(known)})" if known else ""


def is_quota_refusal(error: TransshipError) -> bool:
    """A 412, or a 403, whose message speaks of the quota."""
    status = error.status if isinstance(error, RegistryError) else None
    refused = status == 412 or isinstance(error, PermissionDeniedError)
    text = str(error).lower()
    return refused and any(word in text for word in QUOTA_WORDS)


class QuotaReader:
    """The refusal hook of one destination registry: quota refusals → `NamespaceFullError`.

    Costs nothing until a push is refused; then it asks the API once whether this is Harbor
    (the message alone could come from any registry) and what the project's quota is.
    """

    def __init__(self, registry: Registry) -> None:
        self.api = HarborAPI(registry)
        self._info: asyncio.Task[HarborInfo | None] | None = None

    async def _harbor(self) -> HarborInfo | None:
        if self._info is None:
            self._info = asyncio.ensure_future(self.api.detect())
        try:
            return await asyncio.shield(self._info)
        except TransshipError:
            return None

    async def __call__(self, error: TransshipError, repository: str) -> TransshipError:
        if not is_quota_refusal(error) or "/" not in repository:
            return error
        if await self._harbor() is None:
            return error
        project = repository.split("/")[0]
        try:
            quota = await self.api.quota(project)
        except TransshipError:
            quota = None
        limit = quota.limit if quota else None
        used = quota.used if quota else None
        return NamespaceFullError(
            f"Harbor project '{project}' on {self.api.host} refused a push that would exceed "
            f"its storage quota{quota_detail(limit, used)}",
            namespace=project,
            limit=limit,
            used=used,
        )


def install_quota_readers(endpoints: Iterable[object], registry_of: RegistryOf) -> None:
    """Give every destination registry the quota reader (once)."""
    for endpoint in endpoints:
        registry = registry_of(endpoint)
        if registry is not None and registry.refusal_hook is None:
            registry.refusal_hook = QuotaReader(registry)


async def still_to_send(tasks: Sequence[CopyTask], parallel: int = 8) -> int:
    """Bytes of the blobs these tasks need that their destinations do not hold (HEAD only)."""
    limit = asyncio.Semaphore(parallel)
    wanted: dict[tuple[int, str, Digest], tuple[CopyTask, int]] = {}

    async def walk(task: CopyTask, identifier: str, depth: int) -> None:
        async with limit:
            manifest = await task.source.get_manifest(task.source_repository, identifier)
        if manifest.is_index and depth < 4:
            await asyncio.gather(
                *(walk(task, str(child.digest), depth + 1) for child in manifest.manifests)
            )
        for blob in manifest.blobs():
            if not blob.urls:
                key = (id(task.dest), task.dest_repository, blob.digest)
                wanted.setdefault(key, (task, blob.size))

    async def missing(task: CopyTask, digest: Digest, size: int) -> int:
        async with limit:
            present = await task.dest.has_blob(task.dest_repository, digest, size)
        return 0 if present else size

    results = await asyncio.gather(
        *(walk(t, t.source_identifier, 0) for t in tasks), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, TransshipError):
            raise result
    seen: set[Digest] = set()
    checks = []
    for (_, _, digest), (task, size) in wanted.items():
        if digest not in seen:  # counted once: Harbor counts a blob once per project
            seen.add(digest)
            checks.append(missing(task, digest, size))
    sizes = await asyncio.gather(*checks, return_exceptions=True)
    return sum(s for s in sizes if isinstance(s, int))


async def explain_full_projects(results: Sequence[TaskResult]) -> list[str]:
    """One line per project that refused content: its limit and the bytes still to send.

    The refusal error itself is rewritten to that line too, so a single-image run reports it
    as its error.
    """
    # keyed by destination and namespace: tasks in flight together may each have been refused
    groups: dict[tuple[int, str], tuple[NamespaceFullError, list[CopyTask]]] = {}
    for result in results:
        error = result.error
        if result.status != "failed" or not isinstance(error, NamespaceFullError):
            continue
        first = error.first or error
        key = (id(result.task.dest), first.namespace)
        groups.setdefault(key, (first, []))[1].append(result.task)
    lines = []
    for first, tasks in groups.values():
        try:
            remaining = await still_to_send(tasks)
            left = f"{binary_size(remaining)} still to send"
        except TransshipError:
            left = "the rest still to send"
        count = len(tasks)
        line = (
            f"{first.message}: {count} image{'s' if count != 1 else ''} not copied, {left} "
            f"(raise the quota of project '{first.namespace}' or free space in it, then rerun)"
        )
        first.message = line
        first.args = (line,)
        lines.append(line)
    return lines
