"""Attached artifacts: signatures, attestations and SBOMs travel with the images they describe.

A mirror whose images arrive without their signatures fails every admission policy that checks
them (cosign verify, Kyverno, policy-controller), and nothing in a BOM or image list names them.
So for every manifest a resolved plan holds, this module finds what is attached to it in the
*same source repository*, by the two schemes in use:

* cosign's tags: `sha256-<hex>.sig`, `.att` and `.sbom` (cosign 1.x/2.x "tag scheme");
* OCI 1.1 referrers (manifests whose `subject` is the manifest): the referrers API
  (`GET /v2/<repo>/referrers/<digest>`, an OCI index of descriptors) where the registry has it,
  and the referrers tag schema (a tag exactly `sha256-<hex>` holding that index) where a client
  wrote one; registries without the API (distribution 2.8) only have the latter.

Which manifests: each entry's own digest and, for an index, every child's (`cosign sign
--recursive` signs the children; finding their tags is free). Cost: one tag list per source
repository for the whole run (never a HEAD per candidate tag), plus one referrers request per
manifest only on hosts whose first answer showed they have the API.

Where they go: the subject's destination repository, cosign attachments under the same tag,
referrers by digest, and a tag-schema index under its own `sha256-<hex>` tag too, so tag-schema
clients find the referrers at the destination. The destination's referrers API, if it has one,
indexes pushed referrers by itself; no tag-schema index is *made* for referrers the source only
lists through the API.

Depth: attachments of attachments are found once (an SBOM cosign attached and then signed, a
signature on a referrer); nothing deeper. Order: `attachment_phases`, after every subject.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.errors import RegistryError, RetryableError, TransshipError
from transship.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor
from transship.plan.model import EntryKind, Gap, PlanEntry
from transship.plan.resolve import Content, Resolved, ResolveOptions, SourceReader, image_content
from transship.reference import Reference
from transship.remote.registry import Registry, pull, registry_error

#: cosign's tag suffixes, and what each one holds (for the plan's origins)
COSIGN_SUFFIXES: Mapping[str, str] = {
    "sig": "cosign signature",
    "att": "cosign attestation",
    "sbom": "cosign SBOM",
}
#: subject → attachment → its attachments; deeper chains are not followed
MAX_ATTACHMENT_DEPTH = 2
#: a referrers API answer this many pages long is not a registry we understand
MAX_REFERRERS_PAGES = 100
#: answers that mean "this registry has no referrers API" (the spec forbids 404 when it has one)
API_MISSING = frozenset({400, 404, 405})


def cosign_tag(digest: Digest, suffix: str) -> str:
    """`sha256-<hex>.sig`: where cosign keeps what it attached to `digest`."""
    return f"{digest.algorithm}-{digest.hex}.{suffix}"


def referrers_tag(digest: Digest) -> str:
    """`sha256-<hex>`: the OCI 1.1 referrers tag schema's index of `digest`'s referrers."""
    return f"{digest.algorithm}-{digest.hex}"


# --- the referrers API --------------------------------------------------------------------


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers list: the referrer's manifest and its artifact type."""

    descriptor: Descriptor
    artifact_type: str | None = None


def parse_referrers(raw: bytes, where: str) -> tuple[Referrer, ...]:
    """The `manifests` of a referrers index (API answer or tag-schema index).

    `Descriptor` keeps no `artifactType`, so it is read here: it is what tells a reviewer an
    SBOM from a signature.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{where}: answer is not JSON") from None
    items = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RegistryError(f"{where}: answer is not an OCI index (no 'manifests' list)")
    found = []
    for number, item in enumerate(items):
        descriptor = Descriptor.from_json(item, f"{where} manifests[{number}]")
        kind = item.get("artifactType")
        found.append(Referrer(descriptor, kind if isinstance(kind, str) and kind else None))
    return tuple(found)


def next_page(link: str | None, current: str) -> str | None:
    """The `rel="next"` target of a `Link` header (RFC 8288), absolute; None on the last page."""
    for part in (link or "").split(","):
        url, _, params = part.partition(";")
        if "rel=next" in params.replace(" ", "").replace('"', ""):
            return urljoin(current, url.strip().strip("<>"))
    return None


async def referrers(
    endpoint: Endpoint, repository: str, digest: Digest
) -> tuple[Referrer, ...] | None:
    """Every referrer of `repository@digest` by the referrers API, all pages.

    None when there is no API to ask: not a registry, or it answered 400/404/405 (a registry
    that has the API must answer 200, with an empty list if nothing refers to the digest).
    """
    if not isinstance(endpoint, Registry):
        return None
    where = f"referrers of {endpoint.host}/{repository}@{digest.short}"
    found: list[Referrer] = []
    path: str | None = f"/v2/{repository}/referrers/{digest}"
    pages = 0
    while path is not None:
        async with endpoint.transport.request(
            "GET", path, scopes=pull(repository), headers={"Accept": OCI_INDEX}
        ) as resp:
            if resp.status in API_MISSING and pages == 0:
                return None
            if resp.status != 200:
                raise await registry_error(resp, where)
            raw = await _read_bounded(resp, where)
            following = next_page(resp.headers.get("Link"), str(resp.url))
        found += parse_referrers(raw, where)
        pages += 1
        if following is not None and pages >= MAX_REFERRERS_PAGES:
            raise RegistryError(f"{where}: more than {MAX_REFERRERS_PAGES} pages of referrers")
        path = following
    return tuple(found)


async def _read_bounded(resp: aiohttp.ClientResponse, where: str) -> bytes:
    """The body, refused past the manifest size limit (a referrers list is a manifest)."""
    raw = b""
    try:
        while len(raw) <= MAX_MANIFEST_BYTES:
            more = await resp.content.read(MAX_MANIFEST_BYTES + 1 - len(raw))
            if not more:
                return raw
            raw += more
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
        raise RetryableError(f"{where}: answer interrupted") from None
    raise RegistryError(f"{where}: answer is over the {MAX_MANIFEST_BYTES} byte limit")


# --- finding attachments ------------------------------------------------------------------


@dataclass
class Attachments:
    """What `find_attachments` adds to a resolution."""

    entries: list[PlanEntry] = field(default_factory=list)
    contents: dict[tuple[str, str], Content] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Place:
    """A manifest in a source repository: where its attachments are looked for."""

    registry: str
    repository: str
    digest: Digest

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"

    def ref(self, tag: str | None = None, digest: Digest | None = None) -> Reference:
        return Reference(self.registry, self.repository, tag, digest)

    def moved_to(self, digest: Digest) -> _Place:
        """Another manifest of the same repository (attachments live beside their subject)."""
        return _Place(self.registry, self.repository, digest)


@dataclass(frozen=True)
class _Found:
    """One attachment of a place: what it is, and the tags it keeps at the destination."""

    resolved: Resolved
    tags: tuple[str, ...]
    what: str
    is_referrers_index: bool = False  # a tag-schema list: its referrers are found on their own


async def find_attachments(
    entries: Sequence[PlanEntry],
    contents: Mapping[tuple[str, str], Content],
    reader: SourceReader,
    options: ResolveOptions,
) -> Attachments:
    """Plan what is attached to every manifest of `entries` (see the module doc).

    A lookup that fails stops planning, or with `keep_going` becomes a gap for that subject
    (its images are still planned: only the attachments are unknown).
    """
    subjects: dict[_Place, set[str]] = {}
    for entry in entries:
        if entry.kind in (EntryKind.IMAGE_LOCATIONS, EntryKind.ATTACHMENT):
            continue  # generated by transship / found again from their subjects
        content = contents.get(entry.key)
        if content is None:
            continue
        ref = Reference.parse(entry.source)
        for digest in content.manifests:  # the entry's manifest and an index's children
            place = _Place(ref.registry, ref.repository, digest)
            subjects.setdefault(place, set()).add(entry.destination)
    finder = _Finder(reader, options.keep_going)
    ordered = sorted(subjects.items(), key=lambda item: str(item[0]))  # stable error choice
    await _together(finder.visit(place, frozenset(dests), 1) for place, dests in ordered)
    return finder.found


class _Finder:
    """One resolution's search: shares the reader's cache, so each tag list is read once."""

    def __init__(self, reader: SourceReader, keep_going: bool) -> None:
        self.reader = reader
        self.keep_going = keep_going
        self.found = Attachments()
        self._api: dict[str, bool] = {}  # host → it has the referrers API (its first answer)
        self._probes: dict[str, asyncio.Lock] = {}

    async def visit(self, place: _Place, destinations: frozenset[str], depth: int) -> None:
        """Plan `place`'s attachments into `destinations`, then theirs (to the depth limit)."""
        try:
            found = await self._attached(place)
        except TransshipError as exc:
            self._failed(place, exc)
            return
        for item in found:
            self._add(place, item, destinations)
        if depth < MAX_ATTACHMENT_DEPTH:
            await _together(
                self.visit(place.moved_to(item.resolved.digest), destinations, depth + 1)
                for item in found
                if not item.is_referrers_index  # its referrers are visited on their own
            )

    async def _attached(self, place: _Place) -> list[_Found]:
        tags = await self._tags(place)
        found: list[_Found] = []
        for suffix, what in COSIGN_SUFFIXES.items():
            tag = cosign_tag(place.digest, suffix)
            if tag in tags:
                found.append(_Found(await self._read(place.ref(tag)), (tag,), what))
        # a registry that lists cosign's images as referrers too (Harbor) plans them once
        listed = {item.resolved.digest for item in found}
        fallback = referrers_tag(place.digest)
        if fallback in tags:
            index = await self._read(place.ref(fallback))
            if index.digest == place.digest:
                pass  # the manifest itself, tagged by its digest (a mirror's habit): no list
            elif index.manifest.is_index:
                found.append(_Found(index, (fallback,), "referrers (tag schema)", True))
                lists = parse_referrers(index.manifest.raw, str(index.reference))
                found += await self._referrers(place, lists, listed)
            else:
                self.found.warnings.append(
                    f"{place.ref(fallback)}: not an image index, so not an OCI referrers list "
                    "(tag schema); not copied"
                )
        found += await self._referrers(place, await self._referrers_api(place) or (), listed)
        return found

    async def _referrers(
        self, place: _Place, listing: Iterable[Referrer], listed: set[Digest]
    ) -> list[_Found]:
        """Each referrer not planned yet (`listed` is updated): one entry per manifest."""
        fresh = []
        for referrer in listing:
            if referrer.descriptor.digest not in listed:
                listed.add(referrer.descriptor.digest)
                fresh.append(await self._referrer(place, referrer))
        return fresh

    async def _tags(self, place: _Place) -> frozenset[str]:
        """One tag list per source repository for the whole run."""
        endpoint = self.reader.source_for(place.registry)

        async def fetch() -> frozenset[str]:
            return frozenset(await endpoint.list_tags(place.repository))

        return await self.reader.cached(("tags", place.registry, place.repository), fetch)

    async def _read(self, ref: Reference) -> Resolved:
        """An attachment's manifest and content; an image's config is not read (no labels)."""
        manifest = await self.reader.manifest(ref)
        if manifest.is_index:
            return await self.reader.resolve(ref)  # children's sizes too
        pinned = ref.with_digest(manifest.digest)
        return Resolved(pinned, manifest, image_content(manifest), {})

    async def _referrer(self, place: _Place, referrer: Referrer) -> _Found:
        resolved = await self._read(place.ref(digest=referrer.descriptor.digest))
        manifest = resolved.manifest
        kind = referrer.artifact_type or manifest.artifact_type
        if kind is None and manifest.config is not None:
            kind = manifest.config.media_type  # OCI 1.1: the config type stands in for it
        return _Found(resolved, (), f"referrer ({kind})" if kind else "referrer")

    async def _referrers_api(self, place: _Place) -> tuple[Referrer, ...] | None:
        """The API's list, or None; a host's first answer decides whether the others ask."""
        host = place.registry
        if host not in self._api:
            async with self._probes.setdefault(host, asyncio.Lock()):
                if host not in self._api:
                    answer = await self._ask(place)
                    self._api[host] = answer is not None
                    return answer
        return await self._ask(place) if self._api[host] else None

    async def _ask(self, place: _Place) -> tuple[Referrer, ...] | None:
        endpoint = self.reader.source_for(place.registry)
        key = ("referrers", place.registry, place.repository, str(place.digest))
        return await self.reader.cached(
            key, lambda: referrers(endpoint, place.repository, place.digest)
        )

    def _add(self, place: _Place, item: _Found, destinations: frozenset[str]) -> None:
        resolved = item.resolved
        pinned = resolved.reference
        source = str(pinned.with_digest(None)) if item.tags else str(pinned.with_tag(None))
        for destination in sorted(destinations):
            entry = PlanEntry.create(
                source,
                destination,
                kind=EntryKind.ATTACHMENT,
                tags=item.tags,
                origins=(f"{item.what} of {place}",),
                source_digest=resolved.digest,
                size=resolved.content.size,
                subject=place.digest,
            )
            self.found.entries.append(entry)
            self.found.contents[entry.key] = resolved.content

    def _failed(self, place: _Place, exc: TransshipError) -> None:
        """Stop, naming the subject and the way out; or, with keep_going, a gap."""
        if not self.keep_going:
            shown = copy.copy(exc)  # errors are shared through the reader's cache
            shown.message = f"looking for attachments of {place}: {exc.message}"
            shown.hint = exc.hint or "plan with --no-attachments to leave them behind"
            raise shown from None
        self.found.gaps.append(
            Gap(str(place), f"attachments not looked for: {exc}", ("attachments",))
        )


async def _together(calls: Iterable[Awaitable[None]]) -> None:
    """Run concurrently; the first failure (in call order) cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    if not tasks:
        return
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure


# --- ordering and filtering ---------------------------------------------------------------


def attachment_phases(entries: Iterable[PlanEntry]) -> list[list[PlanEntry]]:
    """Attachment entries in the order a destination must receive them, after all subjects.

    Attachments of planned manifests first, then attachments of attachments, then tag-schema
    referrers indexes (they name referrers that must already be there). `relocate.phases`
    appends these groups after its own; empty groups are left out.
    """
    attached = [e for e in entries if e.kind is EntryKind.ATTACHMENT]
    own = {e.source_digest for e in attached if e.source_digest is not None}
    lists = [e for e in attached if e.subject is not None and referrers_tag(e.subject) in e.tags]
    listing = {id(e) for e in lists}
    rest = [e for e in attached if id(e) not in listing]
    first = [e for e in rest if e.subject not in own]
    second = [e for e in rest if e.subject in own]
    return [group for group in (first, second, lists) if group]


def without_attachments_of(
    entries: Iterable[PlanEntry], dropped: Iterable[PlanEntry]
) -> tuple[PlanEntry, ...]:
    """`entries` less the attachments of `dropped` entries (and theirs): a subject that is not
    copied must not arrive as a bare signature. Matched by digest and destination repository."""
    gone: set[tuple[Digest | None, str]] = {
        (e.source_digest, e.destination) for e in dropped if e.source_digest is not None
    }
    kept = list(entries)
    while True:
        more = [
            e
            for e in kept
            if e.kind is EntryKind.ATTACHMENT and (e.subject, e.destination) in gone
        ]
        if not more:
            return tuple(kept)
        gone |= {(e.source_digest, e.destination) for e in more}
        leaving = {id(e) for e in more}
        kept = [e for e in kept if id(e) not in leaving]
