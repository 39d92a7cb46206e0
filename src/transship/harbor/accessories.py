"""After a copy into Harbor: are the signatures and referrers there as Harbor *accessories*?

A cosign signature pushed under `sha256-<hex>.sig`, or an OCI 1.1 artifact whose `subject` is
an image, is only useful on Harbor if Harbor attached it to that image (it then shows, is kept
and replicated with it, and is listed by the referrers API). `verify` already checked that each
attachment's manifest is present with the planned digest; this asks Harbor whether it lists it
among the subject's referrers: by the referrers API (`GET /v2/<name>/referrers/<digest>`,
Harbor ≥ 2.8), else by the accessories API (`GET /api/v2.0/projects/{p}/repositories/{r}/
artifacts/{digest}/accessories`, Harbor ≥ 2.5).

Only what Harbor makes accessories is asked about: cosign signatures (`.sig` tags) and
referrers pushed by digest. Attestations under `.att` tags and tag-schema indexes stay plain
tags on Harbor; their presence was checked like any image.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.errors import TransshipError
from transship.harbor.api import HarborAPI, HarborInfo, RegistryOf
from transship.manifest import Descriptor, Platform
from transship.ops.verify import EntryCheck, Problem, VerifyResult
from transship.plan.model import EntryKind
from transship.reference import Reference
from transship.remote.registry import Registry

NOT_ACCESSORY = "not-an-accessory"

log = logging.getLogger("transship.harbor")


@dataclass
class AccessoryReport:
    checked: int = 0
    notes: list[str] = field(default_factory=list)


def expected_accessory(check: EntryCheck) -> bool:
    """Harbor attaches cosign signatures and subject referrers; not `.att` or tag indexes."""
    entry = check.entry
    if entry.kind is not EntryKind.ATTACHMENT or entry.subject is None:
        return False
    if check.status != "ok" or check.expected is None:
        return False  # missing or different: already reported
    return not entry.tags or all(t.endswith(".sig") for t in entry.tags)


async def check_accessories(
    result: VerifyResult, dest_for: Callable[[str], Endpoint], registry_of: RegistryOf
) -> AccessoryReport:
    """Add a problem to every attachment Harbor does not list as its subject's accessory."""
    report = AccessoryReport()
    groups: dict[tuple[str, str, Digest], list[EntryCheck]] = {}
    for check in result.checks:
        if expected_accessory(check):
            ref = Reference.parse_repository(check.entry.destination)
            assert check.entry.subject is not None
            groups.setdefault((ref.registry, ref.repository, check.entry.subject), []).append(check)
    harbors: dict[str, asyncio.Future[HarborInfo | None]] = {}

    async def is_harbor(registry: Registry) -> bool:
        if registry.host not in harbors:
            harbors[registry.host] = asyncio.ensure_future(HarborAPI(registry).detect())
        return await harbors[registry.host] is not None

    async def check_group(host: str, repository: str, subject: Digest) -> None:
        dest = registry_of(dest_for(host))
        if dest is None or not await is_harbor(dest):
            return
        checks = groups[(host, repository, subject)]
        listed = await _listed(dest, repository, subject)
        where = f"{host}/{repository}@{subject.short}"
        if listed is None:
            note = (
                f"{where}: this Harbor has neither the referrers nor the accessories API; "
                f"{len(checks)} attachment(s) checked as plain manifests only"
            )
            log.warning("%s", note)
            report.notes.append(note)
            return
        found, how = listed
        for check in checks:
            report.checked += 1
            assert check.expected is not None
            if check.expected not in found:
                check.problems.append(
                    Problem(
                        NOT_ACCESSORY,
                        f"{host}/{repository}@{check.expected}",
                        check.expected,
                        detail=f"present, but Harbor's {how} does not list it for {where}",
                    )
                )

    await asyncio.gather(*(check_group(*key) for key in groups))
    return report


async def _listed(
    registry: Registry, repository: str, subject: Digest
) -> tuple[set[Digest], str] | None:
    """The digests Harbor lists for `subject`, and which API said so."""
    try:
        found = await registry.list_referrers(repository, subject)
    except TransshipError:
        found = None
    if found is not None:
        return {r.descriptor.digest for r in found}, "referrers API"
    project, _, rest = repository.partition("/")
    digests = await HarborAPI(registry).accessories(project, rest, str(subject))
    if digests is None:
        return None
    return {Digest.parse(d) for d in digests if d}, "accessories API"


class HarborIndexLister:
    """`VerifyOptions.index_lister` for Harbor destinations: an index's children from Harbor's
    artifact API, so `verify` never GETs a manifest there (Harbor counts a GET as a pull,
    which skews "retain recently pulled" rules; skopeo #1516)."""

    def __init__(self, registry_of: RegistryOf) -> None:
        self._registry_of = registry_of
        self._harbor: dict[str, asyncio.Future[HarborInfo | None]] = {}

    async def __call__(
        self, dest: Endpoint, repository: str, digest: Digest
    ) -> tuple[Descriptor, ...] | None:
        registry = self._registry_of(dest)
        if registry is None or "/" not in repository:
            return None
        api = HarborAPI(registry)
        if registry.host not in self._harbor:
            self._harbor[registry.host] = asyncio.ensure_future(api.detect())
        try:
            if await asyncio.shield(self._harbor[registry.host]) is None:
                return None
        except TransshipError:
            return None
        project, _, rest = repository.partition("/")
        children = await api.artifact_children(project, rest, str(digest))
        if children is None:
            return None
        return tuple(
            Descriptor("", Digest.parse(child), 0, _platform(platform))
            for child, platform in children
        )


def _platform(doc: dict[str, Any] | None) -> Platform | None:
    if not doc or not doc.get("os") or not doc.get("architecture"):
        return None
    return Platform(str(doc["os"]), str(doc["architecture"]), doc.get("variant") or None)
