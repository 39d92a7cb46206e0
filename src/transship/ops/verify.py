"""Is everything a plan promised at the destination, with the same digests? Nothing is copied.

The vendor's procedure ends with a script that "succeeded" and a cluster that fails to pull an
image hours later. This answers the question before anyone runs `tanzu`: every planned tag names
the planned digest, every child of an index is there, and with `deep` every blob too.

Cost, in the normal case, is one HEAD per planned tag (as a no-op copy); an index adds a GET and
a HEAD per child; `deep` adds a GET per image manifest and a HEAD per distinct blob. Requests
run concurrently under one semaphore, and each manifest or blob is asked about once however many
entries share it. The expected digest is the plan's `sourceDigest`, else the source registry's
answer for the source reference (one HEAD), else (with `resolve=False`) unknown: the entry is
then checked for presence only.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.errors import (
    AuthenticationError,
    ExitCode,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    TLSError,
    TransshipError,
    UnreachableError,
)
from transship.imgpkg.locations import build_image_locations
from transship.layout import OCILayoutTar
from transship.layout.reader import LayoutReader, Reached
from transship.manifest import INDEX_TYPES, MANIFEST_TYPES, MAX_INDEX_DEPTH, Descriptor, Manifest
from transship.ops.archive import (
    ArchiveInfo,
    base_beside,
    close_chain,
    link_bases,
    name_of,
    open_finished,
)
from transship.ops.selfcopy import carried_tool
from transship.ops.tasks import source_endpoint
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.reference import Reference
from transship.singleflight import SingleFlight

T = TypeVar("T")
EndpointFor = Callable[[str], Endpoint]
#: An index's children at a destination without a manifest GET (some registries count a GET as
#: a pull, which moves retention); None when this destination offers no such listing.
IndexLister = Callable[[Endpoint, str, Digest], Coroutine[Any, Any, tuple[Descriptor, ...] | None]]

MISSING = "missing"  # a planned tag (or the digest of an untagged entry) is not there
DIFFERENT = "different"  # the tag is there but names another digest
CHILD_MISSING = "child-missing"  # an index is there, one of its children is not
BLOB_MISSING = "blob-missing"  # (deep) a manifest is there, one of its blobs is not
ERROR = "error"  # the entry could not be checked (source gone, no permission, ...)

_STATUS_ORDER = ((ERROR, "error"), (DIFFERENT, "different"), (MISSING, "missing"))


@dataclass(frozen=True)
class Problem:
    """One thing missing or different, named by the reference a person can look up."""

    kind: str
    reference: str
    expected: Digest | None = None
    found: Digest | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.kind,
            "reference": self.reference,
            "expected": str(self.expected) if self.expected else None,
            "found": str(self.found) if self.found else None,
            "detail": self.detail or None,
        }


@dataclass
class EntryCheck:
    """The outcome for one plan entry."""

    entry: PlanEntry
    expected: Digest | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def status(self) -> str:
        """ok, error, different, missing, or incomplete (there, but content is missing)."""
        kinds = {p.kind for p in self.problems}
        for kind, status in _STATUS_ORDER:
            if kind in kinds:
                return status
        return "incomplete" if kinds else "ok"

    @property
    def pinned(self) -> bool:
        return self.expected is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.entry.source,
            "destination": self.entry.destination,
            "tags": list(self.entry.tags),
            "kind": self.entry.kind.value,
            "expected": str(self.expected) if self.expected else None,
            "status": self.status,
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class Counters:
    manifest_heads: int = 0
    manifest_gets: int = 0
    blob_heads: int = 0
    source_heads: int = 0


@dataclass
class VerifyResult:
    """Every entry's outcome plus what it cost."""

    checks: list[EntryCheck]
    counters: Counters
    seconds: float
    deep: bool

    @property
    def complete(self) -> bool:
        return all(c.status == "ok" for c in self.checks)

    @property
    def problems(self) -> list[tuple[EntryCheck, Problem]]:
        return [(c, p) for c in self.checks for p in c.problems]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("ok", "missing", "different", "incomplete", "error")}
        for check in self.checks:
            out[check.status] += 1
        out["entries"] = len(self.checks)
        out["unpinned"] = sum(1 for c in self.checks if not c.pinned and c.status != "error")
        return out

    def unexpanded_bundles(self) -> list[PlanEntry]:
        """Bundles whose referenced images the plan does not list: those were not checked."""
        return [
            c.entry
            for c in self.checks
            if c.entry.kind is EntryKind.BUNDLE and not c.entry.expanded
        ]

    def summary(self) -> str:
        """One line for people: complete, or what is wrong in numbers."""
        n = self.counts()
        tags = sum(max(1, len(c.entry.tags)) for c in self.checks)
        cost = (
            f"{self.counters.manifest_heads} manifest HEADs, {self.counters.manifest_gets} GETs"
            + (f", {self.counters.blob_heads} blob HEADs" if self.deep else "")
            + f", {self.seconds:.1f} s"
        )
        if self.complete:
            digests = "" if n["unpinned"] == n["entries"] else " with the planned digests"
            line = f"complete: {n['entries']} entries, {tags} tags present{digests} ({cost})"
        else:
            bad = n["entries"] - n["ok"]
            parts = [
                f"{n[key]} {words}"
                for key, words in (
                    ("missing", "missing"),
                    ("different", "different"),
                    ("incomplete", "with missing content"),
                    ("error", "not checked"),
                )
                if n[key]
            ]
            line = f"INCOMPLETE: {bad} of {n['entries']} entries — {', '.join(parts)} ({cost})"
        if n["unpinned"]:
            line += f"; {n['unpinned']} checked for presence only (no digest known)"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "complete": self.complete,
            "deep": self.deep,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "requests": {
                "manifestHeads": self.counters.manifest_heads,
                "manifestGets": self.counters.manifest_gets,
                "blobHeads": self.counters.blob_heads,
                "sourceHeads": self.counters.source_heads,
            },
            "entries": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class VerifyOptions:
    deep: bool = False
    resolve: bool = True  # ask the source for digests the plan lacks
    parallel: int = 32
    index_lister: IndexLister | None = None  # set by a registry-specific wing (Harbor)


def is_fatal(exc: BaseException) -> bool:
    """Errors that would fail every entry the same way: stop and say it once."""
    if isinstance(exc, PermissionDeniedError):
        return False  # per repository (e.g. a Harbor project the robot account lacks)
    return isinstance(exc, TLSError | UnreachableError | AuthenticationError)


class Verifier:
    """Checks a plan against its destinations through the `Endpoint` interface."""

    def __init__(
        self, source_for: EndpointFor, dest_for: EndpointFor, options: VerifyOptions
    ) -> None:
        self.source_for = source_for
        self.dest_for = dest_for
        self.options = options
        self.counters = Counters()
        self._limit = asyncio.Semaphore(max(1, options.parallel))
        self._manifests: SingleFlight[Hashable, Manifest | None] = SingleFlight()
        self._presence: SingleFlight[Hashable, bool] = SingleFlight()

    async def run(self, plan: Plan) -> VerifyResult:
        start = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._check_entry(e)) for e in plan.entries]
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        finally:
            self._manifests.cancel_pending()
            self._presence.cancel_pending()
        checks = [task.result() for task in tasks]
        return VerifyResult(checks, self.counters, time.monotonic() - start, self.options.deep)

    async def _limited(self, request: Coroutine[Any, Any, T]) -> T:
        started = False
        try:
            async with self._limit:
                started = True
                return await request
        finally:
            if not started:  # cancelled while waiting (a registry found down): never awaited
                request.close()

    # -- one entry ---------------------------------------------------------------------------

    async def _check_entry(self, entry: PlanEntry) -> EntryCheck:
        check = EntryCheck(entry)
        dest_ref = Reference.parse_repository(entry.destination)
        try:
            check.expected = await self._expected(entry)
        except TransshipError as exc:
            if is_fatal(exc):
                raise _with_resolve_hint(exc) from None
            where = f"{dest_ref.name}:{','.join(entry.tags)}" if entry.tags else dest_ref.name
            check.problems.append(Problem(ERROR, where, detail=f"no source digest: {exc}"))
            return check
        try:
            await self._check_destination(check, self.dest_for(dest_ref.registry), dest_ref)
        except TransshipError as exc:
            if is_fatal(exc):
                raise
            check.problems.append(Problem(ERROR, dest_ref.name, check.expected, detail=str(exc)))
        return check

    async def _expected(self, entry: PlanEntry) -> Digest | None:
        if entry.source_digest is not None:
            return entry.source_digest
        if entry.kind is EntryKind.IMAGE_LOCATIONS:
            return build_image_locations(entry.locations).digest
        if not self.options.resolve:
            return None
        src = Reference.parse(entry.source)
        endpoint = source_endpoint(entry, self.source_for)
        self.counters.source_heads += 1
        found = await self._limited(endpoint.head_manifest(src.repository, src.identifier))
        if found is None:
            raise NotFoundError(f"{entry.source} is not at the source (any more)")
        return found.digest

    async def _check_destination(self, check: EntryCheck, dest: Endpoint, ref: Reference) -> None:
        expected = check.expected
        identifiers = check.entry.tags or ((str(expected),) if expected else ())
        if not identifiers:
            check.problems.append(
                Problem(ERROR, ref.name, detail="the entry has neither tags nor a digest to check")
            )
            return
        self.counters.manifest_heads += len(identifiers)
        found = await asyncio.gather(
            *(self._limited(dest.head_manifest(ref.repository, i)) for i in identifiers)
        )
        present: Descriptor | None = None
        for identifier, descriptor in zip(identifiers, found, strict=True):
            where = f"{ref.name}{'@' if ':' in identifier else ':'}{identifier}"
            if descriptor is None:
                check.problems.append(Problem(MISSING, where, expected))
            elif expected is not None and descriptor.digest != expected:
                check.problems.append(Problem(DIFFERENT, where, expected, descriptor.digest))
            else:
                present = descriptor
        if present is not None:
            await self._check_content(check, dest, ref, present)

    # -- what a manifest references ---------------------------------------------------------

    async def _check_content(
        self, check: EntryCheck, dest: Endpoint, ref: Reference, top: Descriptor
    ) -> None:
        """Index children always; blobs with `deep`. The top manifest is only read if needed."""
        maybe_index = top.media_type in INDEX_TYPES or top.media_type not in MANIFEST_TYPES
        if not (maybe_index or check.entry.kind is EntryKind.INDEX or self.options.deep):
            return
        if not self.options.deep and await self._listed_children(check, dest, ref, top.digest):
            return
        manifest = await self._manifest(dest, ref, top.digest)
        if manifest is None:  # deleted between the HEAD and the GET
            check.problems.append(Problem(MISSING, f"{ref.name}@{top.digest}", top.digest))
            return
        await self._walk(check, dest, ref, manifest)

    async def _walk(
        self, check: EntryCheck, dest: Endpoint, ref: Reference, manifest: Manifest
    ) -> None:
        if manifest.is_index:
            await asyncio.gather(
                *(self._check_child(check, dest, ref, manifest, c) for c in manifest.manifests)
            )
            return
        if not self.options.deep:
            return
        blobs = [b for b in manifest.blobs() if not b.urls]  # foreign layers are not copied
        found = await asyncio.gather(*(self._has_blob(dest, ref, b) for b in blobs))
        for blob, there in zip(blobs, found, strict=True):
            if not there:
                role = "config" if blob is manifest.config else "layer"
                check.problems.append(
                    Problem(
                        BLOB_MISSING,
                        f"{ref.name}@{blob.digest}",
                        blob.digest,
                        detail=f"{role} of {manifest.digest.short}",
                    )
                )

    async def _check_child(
        self,
        check: EntryCheck,
        dest: Endpoint,
        ref: Reference,
        parent: Manifest,
        child: Descriptor,
    ) -> None:
        descend = self.options.deep or child.media_type in INDEX_TYPES
        if descend:
            manifest = await self._manifest(dest, ref, child.digest)
            there = manifest is not None
        else:
            there = await self._has_manifest(dest, ref, child.digest)
        if not there:
            check.problems.append(_child_missing(ref, child, parent.digest))
        elif descend and manifest is not None:
            await self._walk(check, dest, ref, manifest)

    async def _listed_children(
        self, check: EntryCheck, dest: Endpoint, ref: Reference, digest: Digest, depth: int = 0
    ) -> bool:
        """Children by the destination's own listing and HEADs, never a GET; False if it has
        no listing (the caller then reads the index)."""
        lister = self.options.index_lister
        if lister is None or depth > 4:
            return False
        children = await self._limited(lister(dest, ref.repository, digest))
        if children is None:
            return False
        for child in children:
            self.counters.manifest_heads += 1
            found = await self._limited(dest.head_manifest(ref.repository, str(child.digest)))
            if found is None:
                check.problems.append(_child_missing(ref, child, digest))
            elif found.media_type in INDEX_TYPES:
                await self._listed_children(check, dest, ref, child.digest, depth + 1)
        return True

    # -- shared, once-only requests ----------------------------------------------------------

    async def _manifest(self, dest: Endpoint, ref: Reference, digest: Digest) -> Manifest | None:
        async def fetch() -> Manifest | None:
            self.counters.manifest_gets += 1
            try:
                return await self._limited(dest.get_manifest(ref.repository, str(digest)))
            except NotFoundError:
                return None

        return await self._manifests.run((dest.label, ref.repository, digest), fetch)

    async def _has_manifest(self, dest: Endpoint, ref: Reference, digest: Digest) -> bool:
        async def head() -> bool:
            self.counters.manifest_heads += 1
            found = await self._limited(dest.head_manifest(ref.repository, str(digest)))
            return found is not None

        return await self._presence.run(("manifest", dest.label, ref.repository, digest), head)

    async def _has_blob(self, dest: Endpoint, ref: Reference, blob: Descriptor) -> bool:
        async def head() -> bool:
            self.counters.blob_heads += 1
            return await self._limited(dest.has_blob(ref.repository, blob.digest, blob.size))

        return await self._presence.run(("blob", dest.label, ref.repository, blob.digest), head)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first of our own errors in a task group's failure (else the group itself)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_error(exc)
            if inner is not exc:
                return inner
        elif isinstance(exc, TransshipError | KeyboardInterrupt):
            return exc
    return group


def _child_missing(ref: Reference, child: Descriptor, parent: Digest) -> Problem:
    """An index's child the destination lacks, named with its platform and its index."""
    platform = f"{child.platform} " if child.platform else ""
    return Problem(
        CHILD_MISSING,
        f"{ref.name}@{child.digest}",
        child.digest,
        detail=f"{platform}child of {parent.short}",
    )


def _with_resolve_hint(exc: TransshipError) -> TransshipError:
    """A source that cannot be reached: say how to verify without it (on a copy: the error
    may be shared by other entries, and is never rewritten)."""
    extra = "or check presence only, without the source: --no-resolve"
    shown = copy.copy(exc)
    shown.hint = f"{exc.hint}; {extra}" if exc.hint else extra
    return shown


async def verify_plan(
    plan: Plan, source_for: EndpointFor, dest_for: EndpointFor, options: VerifyOptions
) -> VerifyResult:
    """Check every entry of `plan` at its destination (see the module docstring)."""
    return await Verifier(source_for, dest_for, options).run(plan)


# --- an archive, offline ------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveCheck:
    """What `archive verify` found: problems, and how much it checked."""

    label: str
    problems: tuple[str, ...]
    blobs: int
    manifests: int
    from_base: int = 0  # blobs missing here that the base chain beside it holds (checked)
    # (`blobs` counts only the blobs re-hashed here: not those, nor any other missing one)
    base: str | None = None
    corrupt: bool = False  # some content does not match its digest or size
    tool_note: str | None = None  # the carried single-file transship, when it checks out
    unchecked: int = 0  # blobs missing here left to a base that is not there: not checked
    unchecked_base: str | None = None  # that base (the increment's own, or one down its chain)

    @property
    def exit_code(self) -> ExitCode:
        if not self.problems:
            return ExitCode.OK
        return ExitCode.INTEGRITY if self.corrupt else ExitCode.INCOMPLETE


@dataclass
class _BaseJudgement:
    problems: list[str] = field(default_factory=list)
    held: int = 0
    unchecked: int = 0
    unchecked_base: str | None = None


async def verify_archive(
    layout: LayoutReader,
    base: str | None = None,
    unfinished: Sequence[str] = (),
    path: Path | None = None,
) -> ArchiveCheck:
    """Re-hash every blob and check every manifest's references are present, offline.

    `base`: the archive an increment was saved on top of (`path`: where the increment lies).
    A blob missing here is looked for in that base when it lies beside the increment (as
    `save --since`, `serve` and `load` find it, down its chain of bases as far as they are
    there): one a base holds (its named manifests reach it: what loading it pushes,
    `LayoutReader.holds`) is counted, one it does not hold is a problem naming the base. When
    the base is not there, such blobs are counted as expected from it, unchecked.
    `unfinished`: why the archive is not a finished save (`LoadJob.unfinished`), reported
    first: every blob of a half-written one may check out.
    """
    problems = layout.verify_volumes() if isinstance(layout, OCILayoutTar) else []
    corrupt = bool(problems)  # a volume whose sha256 is not the one its list gives
    found, missing, blobs, manifests, damaged = await _walk_archive(layout)
    problems += found
    tool_note, tool_problems, damaged_tool = carried_tool(layout)
    problems += tool_problems
    #: decided where each problem is found, never from its text: a problem may quote a base's
    #: error or name a file or tag that says "bytes" or "does not match". A base beside an
    #: increment that is damaged is the base's integrity problem, not this archive's.
    corrupt = corrupt or damaged or damaged_tool
    judged = _BaseJudgement()
    if base and missing:
        judged = await _judge_missing(path, base, missing)
        problems += judged.problems
    else:
        problems += [f"{where}: blob {blob.digest.short} is missing" for where, blob in missing]
    problems = [*unfinished, *problems]
    return ArchiveCheck(
        layout.label,
        tuple(problems),
        blobs,
        manifests,
        judged.held,
        base,
        corrupt,
        tool_note,
        judged.unchecked,
        judged.unchecked_base,
    )


async def _judge_missing(
    path: Path | None, base: str, missing: Sequence[tuple[str, Descriptor]]
) -> _BaseJudgement:
    """Which of the blobs an increment lacks its base chain holds (see `verify_archive`)."""
    judged = _BaseJudgement()
    beside = base_beside(path, base) if path is not None else None
    if path is None or beside is None:
        judged.unchecked, judged.unchecked_base = len(missing), base
        return judged
    unchecked = f"the {len(missing)} blob(s) this increment leaves to it are not checked"
    try:
        chain = await open_finished(beside, "archive verify")
    except TransshipError as exc:
        judged.problems.append(
            f"the base archive {base} beside it cannot be read ({exc}): {unchecked}"
        )
        return judged
    try:
        chain.reach_only = True  # as open_base_chain: what loading it pushes, walked when needed
        await link_bases(chain, beside, "archive verify")
    except TransshipError as exc:
        # a base further down failed, the one below the last linked: blame it, not `base`
        last: LayoutReader = chain
        while last.base is not None:
            last = last.base
        broken = ArchiveInfo.read(last).base or base
        await close_chain(chain)
        judged.problems.append(
            f"the base archive {broken}, under {base} beside it, cannot be read ({exc}): "
            f"{unchecked}"
        )
        return judged
    except BaseException:
        await close_chain(chain)
        raise
    try:
        names: set[str] = {name_of(path), base}
        last = chain
        while last.base is not None:
            names.add(str(ArchiveInfo.read(last).base))
            last = last.base
        deeper = ArchiveInfo.read(last).base  # the chain ends at a base that is not there
        if deeper in names:
            deeper = None
        for where, blob in missing:
            if await chain.holds("", blob.digest, blob.size):
                judged.held += 1
            elif deeper:
                judged.unchecked += 1
                judged.unchecked_base = deeper
            else:
                below = ", nor do its own bases'" if chain.base is not None else ""
                judged.problems.append(
                    f"{where}: blob {blob.digest.short} is missing, and the base archive "
                    f"{base} beside it does not hold it (no image it names reaches it{below}"
                    "; an unnamed copy is not loaded with it)"
                )
    finally:
        await close_chain(chain)
    return judged


async def _walk_archive(
    layout: LayoutReader,
) -> tuple[list[str], list[tuple[str, Descriptor]], int, int, bool]:
    """Every named manifest's graph (no depth limit), each distinct blob re-hashed once:
    (problems, blobs missing with where they are needed, blobs re-hashed, manifests checked,
    whether some manifest or blob does not match its digest or size)."""
    corrupt = False
    problems: list[str] = []
    missing: list[tuple[str, Descriptor]] = []
    checked_blobs: set[Digest] = set()
    hashed = 0  # of those, the ones there to re-hash: what "N blobs checked" counts
    checked_manifests = 0
    async with contextlib.aclosing(layout.walk_named(by_tag=True, max_depth=None)) as walk:
        async for reached in walk:
            rehashed, damaged = await _check_reached(
                layout, reached, problems, missing, checked_blobs
            )
            hashed += rehashed
            corrupt = corrupt or damaged
            checked_manifests += reached.manifest is not None
    return problems, missing, hashed, checked_manifests, corrupt


async def _check_reached(
    layout: LayoutReader,
    reached: Reached,
    problems: list[str],
    missing: list[tuple[str, Descriptor]],
    checked_blobs: set[Digest],
) -> tuple[int, bool]:
    """One manifest `_walk_archive` reached: its blobs, each distinct one re-hashed once.
    (blobs re-hashed, whether the manifest or one of them does not match its digest or size)"""
    manifest = reached.manifest
    where = reached.where
    if reached.depth > MAX_INDEX_DEPTH:  # not "child" a thousand times over
        where = f"{reached.repository}:{reached.tag} {reached.depth} levels down"
    if reached.depth == MAX_INDEX_DEPTH + 1:
        problems.append(
            f"{reached.repository}:{reached.tag}: index nesting deeper than {MAX_INDEX_DEPTH} "
            "levels (load and copy refuse it)"
        )
    if manifest is None:
        problems.append(f"{where}: {reached.error}")
        return 0, isinstance(reached.error, IntegrityError)
    hashed, corrupt = 0, False
    for blob in manifest.blobs():
        if blob.urls or blob.digest in checked_blobs:
            continue
        checked_blobs.add(blob.digest)
        if not await layout.has_blob(reached.repository, blob.digest):
            missing.append((where, blob))
            continue
        hashed += 1
        try:
            async with layout.open_blob(reached.repository, blob) as chunks:
                async for _ in chunks:
                    pass
        except IntegrityError as exc:
            problems.append(f"{where}: {exc}")
            corrupt = True
    return hashed, corrupt
