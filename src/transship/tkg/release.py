"""A TKG release planned from a registry, following the chain TKG itself follows.

TKG never needs the BOM files on disk: the CLI lists `<repo>/tkg-compatibility`, takes the highest
`v<N>`, finds the tkg-bom for its version there, and reads the TKRs from the highest
`tkr-compatibility` (tkg-bom-format.md §1). Doing the same here means the plan covers exactly what
the installed TKG will look for, read from the mirror people actually copy from. The BOM images
are one-file images (one gzip'd tar layer, one regular file); anything else is refused.

`all_tkrs` reproduces the vendor script's walk instead: every `v*` tag of `tkr-bom`,
`tkr-compatibility` and `tkg-compatibility` (what the TKR source controller may read later).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from transship.digest import Digest
from transship.errors import (
    HostDownError,
    InvalidReferenceError,
    NotFoundError,
    PlanError,
    TransshipError,
)
from transship.plan._yaml import load_yaml, read_text
from transship.plan.model import EntryKind, Gap, Plan, PlanEntry
from transship.plan.reader import EndpointFor, ResolveOptions, SourceReader
from transship.plan.resolve import Resolution, resolve_plan, unresolved
from transship.reference import Reference, parse_prefix
from transship.tkg.bom import (
    TKG_COMPATIBILITY_PATH,
    Bom,
    Compatibility,
    TkgCompatibility,
    TkrCompatibility,
    highest_v_tag,
    parse_bom,
    parse_compatibility,
    plan_from_boms,
    tkr_bom_tag,
)


@dataclass(frozen=True)
class TkgRelease:
    """What to plan: a TKG version read from `source`, relocated under `dest`."""

    source: str  # registry prefix holding tkg-compatibility, tkg-bom, ... (TKG_IMAGE_REPO)
    tkg_version: str  # e.g. v1.5.3
    dest: str  # TKG_CUSTOM_IMAGE_REPOSITORY
    tkrs: tuple[str, ...] = ()  # only these TKRs (the default one is always added)
    all_tkrs: bool = False  # every v* tkr-bom tag, like gen-publish-images.sh
    tkg_compatibility_path: str = TKG_COMPATIBILITY_PATH


async def plan_tkg_release(
    release: TkgRelease,
    source_for: EndpointFor,
    options: ResolveOptions | None = None,
    *,
    resolve: bool = True,
) -> Resolution:
    """Read the release's BOM chain from the registry, plan it, then resolve the plan."""
    options = options or ResolveOptions()
    reader = SourceReader(source_for, options.parallel)
    try:
        plan = await _Chain(release, reader, options.keep_going).plan()
        if not resolve:
            return unresolved(plan)
        return await resolve_plan(plan, source_for, options, reader=reader)
    finally:
        reader.cancel_pending()


class _Chain:
    def __init__(self, release: TkgRelease, reader: SourceReader, keep_going: bool) -> None:
        self.release = release
        self.reader = reader
        self.keep_going = keep_going
        self.source = parse_prefix(release.source, "--source")
        self.digests: dict[str, Digest] = {}  # reference read -> the digest that was read
        self.gaps: list[Gap] = []

    def ref(self, path: str, tag: str) -> Reference:
        try:
            return Reference.parse(f"{self.source}/{path}:{tag}")
        except InvalidReferenceError as exc:
            raise PlanError(f"{path}:{tag} under {self.source}: {exc}") from None

    async def tags(self, path: str) -> list[str]:
        repo = Reference.parse_repository(f"{self.source}/{path}")
        return await self.reader.list_tags(repo.registry, repo.repository)

    async def read(self, path: str, tag: str, what: str) -> tuple[str, str]:
        """(text, name) of a one-file image; the name is the reference, for origins/errors."""
        ref = self.ref(path, tag)
        text, resolved = await self.reader.single_file(ref, what)
        name = str(ref)
        self.digests[name] = resolved.digest
        return text, name

    async def highest(self, path: str, what: str) -> str:
        tags = await self.tags(path)
        tag = highest_v_tag(tags)
        if tag is None:
            raise NotFoundError(
                f"{self.source}/{path} has no v<N> tag ({len(tags)} tags); is {self.source} "
                f"the TKG image repository (--source / TKG_IMAGE_REPO)? ({what})"
            )
        return tag

    async def plan(self) -> Plan:
        release = self.release
        path = release.tkg_compatibility_path
        tkg_compat = await self._tkg_compatibility(path, await self.highest(path, "TKG"))
        bom_path = tkg_compat.bom_path_for(release.tkg_version)
        if bom_path is None:
            known = ", ".join(dict.fromkeys(p.tag for p in tkg_compat.boms)) or "none"
            raise PlanError(
                f"{tkg_compat.name}: no TKG {release.tkg_version}; it knows {known} "
                "(check --tkg-version)"
            )
        text, name = await self.read(bom_path, release.tkg_version, "TKG BOM")
        tkg_bom = parse_bom(text, name, "tkg")
        compat_path = tkg_bom.tkr_compatibility_path
        compat_tag = await self.highest(compat_path, "TKR")
        tkr_compat = await self._tkr_compatibility(compat_path, compat_tag)
        versions = await self._tkr_versions(tkg_bom, tkr_compat)
        tkr_boms = await self._tkr_boms(tkg_bom, versions)
        compatibility: list[Compatibility] = [tkg_compat, tkr_compat]
        plan = plan_from_boms(
            tkg_bom,
            tkr_boms,
            compatibility,
            release.dest,
            source_prefix=self.source,
            tkg_compatibility_path=path,
        )
        if release.all_tkrs:
            plan = plan.merge(await self._all_compatibility_tags(path, compat_path))
        pinned = tuple(self._pin(entry) for entry in plan.entries)
        return replace(plan, entries=pinned, gaps=(*plan.gaps, *self.gaps))

    def _pin(self, entry: PlanEntry) -> PlanEntry:
        """BOM images are planned at the digest that was read: the plan copies what it read."""
        read = self.digests.get(entry.source)
        if read is None or entry.source_digest is not None:
            return entry
        return replace(entry, source_digest=read)

    async def _tkg_compatibility(self, path: str, tag: str) -> TkgCompatibility:
        text, name = await self.read(path, tag, "TKG compatibility")
        doc = parse_compatibility(text, name)
        if not isinstance(doc, TkgCompatibility):
            raise PlanError(f"{name}: is a tkr-compatibility document, not tkg-compatibility")
        return doc

    async def _tkr_compatibility(self, path: str, tag: str) -> TkrCompatibility:
        text, name = await self.read(path, tag, "TKR compatibility")
        doc = parse_compatibility(text, name)
        if not isinstance(doc, TkrCompatibility):
            raise PlanError(f"{name}: is a tkg-compatibility document, not tkr-compatibility")
        return doc

    async def _tkr_versions(self, tkg_bom: Bom, compat: TkrCompatibility) -> list[str]:
        """TKR tags to read: the chosen ones, or the compatibility list, plus the default."""
        if self.release.all_tkrs:
            tags = [t for t in await self.tags(tkg_bom.tkr_bom_path) if t.startswith("v")]
        elif self.release.tkrs:
            tags = [tkr_bom_tag(v) for v in self.release.tkrs]
        else:
            tags = [tkr_bom_tag(v) for v in compat.tkrs_for(self.release.tkg_version)]
        if tkg_bom.default_tkr is not None:
            tags.append(tkr_bom_tag(tkg_bom.default_tkr))
        return list(dict.fromkeys(tags))

    async def _tkr_boms(self, tkg_bom: Bom, tags: Sequence[str]) -> list[Bom]:
        results = await asyncio.gather(
            *(self._tkr_bom(tkg_bom, tag) for tag in tags), return_exceptions=True
        )
        boms: list[Bom] = []
        for tag, result in zip(tags, results, strict=True):
            if isinstance(result, Bom):
                boms.append(result)
                continue
            if not isinstance(result, TransshipError):
                raise result
            default = tkg_bom.default_tkr
            if isinstance(result, HostDownError):
                raise result  # the registry is down, not this TKR: stop whatever keep_going
            if not self.keep_going or (default is not None and tag == tkr_bom_tag(default)):
                raise result  # TKG cannot work without its default TKR: never a mere gap
            source = str(self.ref(tkg_bom.tkr_bom_path, tag))
            self.gaps.append(Gap(source, str(result), (f"TKR {tag} of TKG {tkg_bom.version}",)))
        return boms

    async def _tkr_bom(self, tkg_bom: Bom, tag: str) -> Bom:
        try:
            text, name = await self.read(tkg_bom.tkr_bom_path, tag, "TKR BOM")
        except NotFoundError:
            raise NotFoundError(
                f"TKR {tag} of TKG {tkg_bom.version}: {self.ref(tkg_bom.tkr_bom_path, tag)} "
                "does not exist in the source registry (choose TKRs with --tkr, or "
                "--keep-going to plan without it)"
            ) from None
        return parse_bom(text, name, "tkr")

    async def _all_compatibility_tags(self, *paths: str) -> Plan:
        """Every `v*` tag of both compatibility repositories, as the vendor script copies."""
        entries = []
        for path in paths:
            for tag in await self.tags(path):
                if tag.startswith("v"):
                    entries.append(
                        PlanEntry.create(
                            str(self.ref(path, tag)),
                            f"{self.release.dest}/{path}",
                            kind=EntryKind.METADATA,
                            origins=(f"tags of {self.source}/{path}",),
                        )
                    )
        return Plan(tuple(entries))


# --- the same release from files ----------------------------------------------------------


def plan_from_files(
    paths: Sequence[Path | str], dest_prefix: str, source_prefix: str | None = None
) -> Plan:
    """A release plan from BOM and compatibility files given in any order.

    Exactly one TKG BOM; every other BOM is a TKR BOM; compatibility documents are told apart by
    their keys.
    """
    tkg: list[Bom] = []
    tkrs: list[Bom] = []
    compatibility: list[Compatibility] = []
    for path in paths:
        text, name = read_text(path), str(path)
        root = load_yaml(text, name)
        if root.has("managementClusterPluginVersions") or root.has("managementClusterVersions"):
            compatibility.append(parse_compatibility(text, name))
            continue
        bom = parse_bom(text, name)
        (tkg if bom.kind == "tkg" else tkrs).append(bom)
    if len(tkg) != 1:
        names = ", ".join(b.name for b in tkg) or "none"
        raise PlanError(f"give exactly one TKG BOM (tkg-bom-<version>.yaml); found {names}")
    return plan_from_boms(tkg[0], tkrs, compatibility, dest_prefix, source_prefix)
