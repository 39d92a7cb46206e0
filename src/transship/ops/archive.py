"""Save to and load from OCI layout archives: the plan's names inside an archive, and back.

Inside an archive a repository is named *relative* to the destination prefix the plan was made
for (`--dest harbor.corp` and `harbor.corp/tkg/antrea` give `tkg/antrea`), so `load` without
`--dest` lands every image where the plan said, and `load --dest NEW` replaces exactly that
prefix — the `TKG_CUSTOM_IMAGE_REPOSITORY` rule. The archive also carries
`transship/archive.json` (format, prefix and where it came from, bundle repositories),
`transship/plan.yaml` and `transship/SHA256SUMS` (every file, `sha256sum -c` compatible).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from transship import __version__
from transship.buildinfo import commit
from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.engine import CopyTask
from transship.errors import (
    IncompatibleArchiveError,
    IncompleteError,
    TransshipError,
    UsageError,
)
from transship.fsutil import file_sha256
from transship.layout import OCILayout, OCILayoutTar
from transship.layout.index import UNFINISHED
from transship.layout.reader import LayoutReader
from transship.layout.tarsink import TarSink
from transship.layout.volumes import find_parts_file, split_name_hint
from transship.manifest import MAX_INDEX_DEPTH
from transship.ops.tasks import EndpointFor, phases, source_endpoint, source_identifier
from transship.plan.model import Plan, PlanEntry
from transship.reference import Reference, parse_prefix, shared_parts

#: The compatibility rule: a transship reads exactly the archive format it writes. The format
#: changes only when a reader of the old one would misread the new archive; added keys (such as
#: `writer`) do not change it. The writer's version and commit are recorded for people.
ARCHIVE_FORMAT = "transship-archive/v1"
#: where an archive's prefix came from (archive.json `prefixOrigin`)
PREFIX_PLANNED = "plan"  # the --dest the plan was made for: load lands where the plan said
PREFIX_COMMON = "common"  # the plan recorded none: the longest prefix its destinations share
PREFIX_NONE = "none"  # saved from a list without --dest: a placeholder, load needs --dest
PREFIX_LEGACY = "legacy"  # archive.json without prefixOrigin (before it existed): as "common"
_ORIGINS = frozenset({PREFIX_PLANNED, PREFIX_COMMON, PREFIX_NONE})
#: a tag standing for "no tag": digest-only entries must still be named in index.json
_DIGEST_TAG = re.compile(r"^sha256-[0-9a-f]{64}$")
UNFINISHED_TEXT = (
    "transship save has not finished this directory; run the same save again to complete it\n"
)
#: how many missing names a one-line message lists before "and N more"
_NAMED = 5

log = logging.getLogger("transship.archive")


def destination_prefix(plan: Plan) -> str:
    """The longest repository-path prefix shared by every destination (at least the host)."""
    paths = [entry.destination.split("/") for entry in plan.entries]
    if not paths:
        return ""
    common = shared_parts(paths)
    shortest = min(len(p) for p in paths)
    common = common[: min(len(common), shortest - 1)]  # never a whole repository name
    return "/".join(common)


def stands_for_untagged(tag: str, digest: Digest) -> bool:
    """`sha256-<hex>` naming the manifest itself only stands for "untagged" (`archive_tags`);
    the same form naming another digest is a referrers tag-schema index, a real tag."""
    return bool(_DIGEST_TAG.match(tag)) and tag == f"sha256-{digest.hex}"


def relative_repository(destination: str, prefix: str) -> str:
    return destination[len(prefix) + 1 :] if prefix else destination


@dataclass(frozen=True)
class ArchiveInfo:
    """What `transship/archive.json` says; absent for layouts written by other tools."""

    prefix: str = ""
    #: "repository:tag" → the plan phase it belongs to (0, the default, is omitted)
    phase_of: dict[str, int] = field(default_factory=dict)
    base: str | None = None  # an incremental archive: the archive it was saved on top of
    prefix_origin: str = PREFIX_LEGACY  # PREFIX_*: what `prefix` is
    #: who wrote it ("version (commit …)"); None for archives from before it was recorded
    writer: str | None = None
    recorded: bool = True  # False: no archive.json (a layout written by another tool)

    @classmethod
    def for_plan(
        cls, plan: Plan, prefix: str | None = None, *, placeholder: bool = False
    ) -> ArchiveInfo:
        """Names relative to `prefix` if given, else to the prefix the plan was made for,
        else (older plans) to the longest prefix all destinations share. `placeholder`: the
        prefix stands for "no destination known" (a list saved without --dest)."""
        origin = PREFIX_NONE if placeholder else PREFIX_PLANNED
        if prefix:
            prefix = parse_prefix(prefix)
        elif plan.destination_prefix:
            prefix = plan.destination_prefix
        else:
            prefix, origin = destination_prefix(plan), PREFIX_COMMON
        for entry in plan.entries:
            if not entry.destination.startswith(f"{prefix}/"):
                raise UsageError(
                    f"plan entry {entry.source} goes to {entry.destination}, not under {prefix}"
                )
        phase_of = {}
        for number, group in enumerate(phases(plan)):
            for entry in group if number else ():
                repository = relative_repository(entry.destination, prefix)
                for tag in archive_tags(entry):
                    phase_of[f"{repository}:{tag}"] = number
        return cls(prefix, phase_of, prefix_origin=origin)

    @property
    def prefix_path(self) -> str:
        """The path part of the destination prefix (`tkg-1.5` of `harbor.corp/tkg-1.5`): what
        `TKG_CUSTOM_IMAGE_REPOSITORY` names below its host. Empty when the prefix is only a
        placeholder (a list saved without --dest) or the archive records none."""
        if not self.recorded or self.prefix_origin == PREFIX_NONE:
            return ""
        _host, _slash, path = self.prefix.partition("/")
        return path.strip("/")

    def to_json(self) -> str:
        doc = {
            "format": ARCHIVE_FORMAT,
            "destinationPrefix": self.prefix,
            "prefixOrigin": self.prefix_origin,
            "phases": dict(sorted(self.phase_of.items())),
            "base": self.base,
            "writer": {"program": "transship", "version": __version__, "commit": commit()},
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def read(cls, layout: LayoutReader) -> ArchiveInfo:
        raw = layout.read_extra("archive.json")
        if raw is None:
            return cls(recorded=False)
        try:
            doc = json.loads(raw)
            writer = _writer(doc.get("writer"))
            if doc.get("format") != ARCHIVE_FORMAT and isinstance(doc.get("format"), str):
                raise IncompatibleArchiveError(
                    f"{layout.label}: written by transship {writer or '(version not recorded)'} "
                    f"in format {str(doc['format'])[:80]!r}; this transship {__version__} "
                    f"reads {ARCHIVE_FORMAT} only",
                    hint="use the transship that wrote it: an archive saved with --include-tool "
                    "carries it, `tar -xf ARCHIVE --occurrence transship/bin/transship`",
                )
            if doc.get("format") != ARCHIVE_FORMAT:
                raise ValueError(doc.get("format"))
            base = doc.get("base")
            phase_of = {str(k): int(v) for k, v in dict(doc["phases"]).items()}
            origin = str(doc.get("prefixOrigin", PREFIX_LEGACY))
            if origin not in _ORIGINS | {PREFIX_LEGACY}:
                raise ValueError(origin)
            prefix = str(doc["destinationPrefix"])
            return cls(prefix, phase_of, str(base) if base else None, origin, writer)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(
                f"{layout.label}: transship/archive.json is not a {ARCHIVE_FORMAT} file"
            ) from None

    def compatibility(self) -> str:
        """One line for `archive verify`: who wrote the archive and whether this transship
        reads it (an incompatible one never gets this far: `read` refuses it)."""
        if not self.recorded:
            return "no transship/archive.json: a plain OCI layout, read as such"
        who = f"transship {self.writer}" if self.writer else "a transship (version not recorded)"
        return (
            f"written by {who}, format {ARCHIVE_FORMAT}: compatible with this transship "
            f"({__version__}, same archive format)"
        )


def _writer(value: object) -> str | None:
    """'0.1.0 (commit abc)' from archive.json's `writer`, bounded and printable."""
    if not isinstance(value, dict):
        return None
    version = str(value.get("version", "?"))[:40]
    found = str(value.get("commit", "unknown"))[:60]
    text = f"{version} (commit {found})"
    return "".join(c if c.isprintable() else "?" for c in text)


def completeness_problems(layout: LayoutReader, info: ArchiveInfo) -> list[str]:
    """Why an archive is not a finished save: the unfinished marker is there, or some
    `repository:tag` its carried `transship/plan.yaml` lists is not in it (one line each).
    A plain layout (no archive.json) or one carrying no plan has nothing to check against."""
    problems = []
    if layout.read_extra(UNFINISHED) is not None:
        problems.append(
            f"{layout.label}: its save did not finish (transship/{UNFINISHED} is there); "
            "run the same save again to complete it"
        )
    raw = layout.read_extra("plan.yaml") if info.recorded else None
    if raw is None:
        return problems
    plan = Plan.from_yaml(raw.decode(errors="replace"), f"{layout.label}:transship/plan.yaml")
    held = {(repository, tag) for repository, tag, _descriptor in layout.entries()}
    wanted = [
        f"{repository}:{tag}"
        for entry in plan.entries
        for repository in (relative_repository(entry.destination, info.prefix),)
        for tag in archive_tags(entry)
        if (repository, tag) not in held
    ]
    if wanted:
        more = f" and {len(wanted) - _NAMED} more" if len(wanted) > _NAMED else ""
        problems.append(
            f"{layout.label}: {len(wanted)} image(s) its transship/plan.yaml lists are not in "
            f"it: {', '.join(wanted[:_NAMED])}{more}; run the save that wrote it again"
        )
    return problems


def archive_tags(entry: PlanEntry) -> tuple[str, ...]:
    """Tags inside an archive: digest-only entries get `sha256-<hex>` so index.json names them."""
    if entry.tags:
        return entry.tags
    if entry.source_digest is None:
        raise UsageError(f"{entry.source}: an untagged entry needs a digest")
    return (f"sha256-{entry.source_digest.hex}",)


ANNOTATION_SOURCE = "io.transship.source"
ANNOTATION_DESTINATION = "io.transship.destination"


def save_tasks(
    plan: Plan, info: ArchiveInfo, source_for: EndpointFor, layout: OCILayout | TarSink
) -> list[list[CopyTask]]:
    """Plan entries as tasks into the layout, in the plan's phases; each index.json entry will
    say where its image came from and where the plan sends it."""
    for entry in plan.entries:
        repository = relative_repository(entry.destination, info.prefix)
        for tag in archive_tags(entry):
            layout.annotations[(repository, tag)] = {
                ANNOTATION_SOURCE: entry.source,
                ANNOTATION_DESTINATION: f"{entry.destination}:{tag}",
            }
    return [[save_task(e, info, source_for, layout) for e in group] for group in phases(plan)]


def save_task(
    entry: PlanEntry, info: ArchiveInfo, source_for: EndpointFor, layout: Endpoint
) -> CopyTask:
    return CopyTask(
        source=source_endpoint(entry, source_for),
        source_repository=Reference.parse(entry.source).repository,
        source_identifier=source_identifier(entry),
        dest=layout,
        dest_repository=relative_repository(entry.destination, info.prefix),
        dest_tags=archive_tags(entry),
        source_reference=entry.source,
        size=entry.size,
    )


def open_archive(path: Path) -> OCILayout | OCILayoutTar:
    """A layout directory, an uncompressed tar of one, or split volumes, read in place."""
    parts = find_parts_file(path)
    if parts is not None:
        if path.is_dir():  # a folder holding one split archive: say which was taken
            log.info("%s: reading the split archive %s, the one .parts list in it", path, parts)
        return OCILayoutTar(path)
    if path.is_dir():
        return OCILayout(path, writable=False)
    if path.is_file():
        return OCILayoutTar(path)
    raise UsageError(f"archive {path} does not exist{split_name_hint(path)}")


async def carried_plan(path: Path, *, dest_given: bool) -> Plan:
    """The plan an archive carries (`transship/plan.yaml`), for `--plan ARCHIVE`: its
    destinations are below the archive's prefix, which becomes the plan's own, so `--dest NEW`
    moves them exactly as `load --dest NEW` moves the archive's images. `dest_given`: an
    archive saved without --dest names no destination, so its plan needs one (as `load`)."""
    raw, info, label = await _carried(path)
    plan = Plan.from_yaml(raw.decode(errors="replace"), f"{label}:transship/plan.yaml")
    if info.prefix_origin == PREFIX_NONE and not dest_given:
        raise UsageError(f"{label} was saved without --dest; pass --dest REGISTRY/PROJECT")
    return replace(plan, destination_prefix=info.prefix) if info.prefix else plan


async def carried_plan_bytes(path: Path) -> bytes:
    """`transship/plan.yaml` of an archive as stored (`archive plan`)."""
    return (await _carried(path))[0]


async def _carried(path: Path) -> tuple[bytes, ArchiveInfo, str]:
    layout = open_archive(path)
    try:
        info = ArchiveInfo.read(layout)
        raw = layout.read_extra("plan.yaml") if info.recorded else None
    finally:
        await layout.close()
    if raw is None:
        raise UsageError(
            f"{path}: an archive that carries no transship/plan.yaml (not written by "
            "transship save); give a plan file (transship plan -o)"
        )
    return raw, info, layout.label


async def open_finished(path: Path, what: str) -> OCILayout | OCILayoutTar:
    """`open_archive`, refusing (exit 9) one that is not a finished save (`completeness_problems`):
    what `load` refuses, `serve` and `save --since` (`what`) must not build on either."""
    layout = open_archive(path)
    try:
        problems = completeness_problems(layout, ArchiveInfo.read(layout))
    except BaseException:
        await layout.close()
        raise
    if problems:
        await layout.close()
        raise IncompleteError(f"{what}: {problems[0]}")
    return layout


#: how many increments deep a chain of bases is followed (a loop of names stops sooner)
MAX_BASE_CHAIN = 64


def base_beside(archive: Path, name: str) -> Path | None:
    """The base archive.json names (`base`), beside the increment (as `save --since` gave it:
    a directory, a tar, a first volume or a `.parts` file), or None when it is not there."""
    beside = where_beside(archive, name)
    return beside if beside.exists() else None


def where_beside(archive: Path, name: str) -> Path:
    """Where a base named `name` lies beside `archive`: in the directory that holds it, also
    when it is given as `.` or `..` (from inside a directory archive), whose `parent` is not
    that directory. Made absolute without following links: beside the archive as named."""
    return Path(os.path.abspath(archive)).parent / name


def name_of(archive: Path) -> str:
    """The archive's own file or directory name, also when it is given as `.` or `..` (from
    inside a directory archive), whose `name` is '' or '..'."""
    return Path(os.path.abspath(archive)).name


async def open_base_chain(
    path: Path, what: str = "--since", *, warn: bool = False
) -> OCILayout | OCILayoutTar:
    """`save --since BASE`: BASE opened as `open_finished`, and, when BASE is itself an
    increment, the base its archive.json names beside it (and so on), linked through `.base`,
    so a blob any of them holds counts as present and is not carried again. The chain is
    followed as far as its files are there: a base that is not beside its increment ends it,
    and what that base (and its own bases) hold is carried again, as before chains were
    followed, so someone who kept only last month's archive can still save on it. `warn`: say
    so in one line (the caller that checks `--since` first; the save reopens it quietly)."""
    first = await open_finished(path, what)
    try:
        first.reach_only = True  # its reach walked when first needed (`held_digests`)
        await link_bases(first, path, what, warn=warn)
    except BaseException:
        await close_chain(first)
        raise
    return first


async def link_bases(archive: LayoutReader, path: Path, what: str, *, warn: bool = False) -> None:
    """Link below `archive` (opened from `path`) the base its archive.json names, beside it,
    each opened as `open_finished`, and so on down the chain (`open_base_chain`), as far as
    the files are there. Each base holds, for what is above it, only what its named manifests
    reach (`LayoutReader.held_digests`, read from its manifests the first time it is asked,
    then kept): a blob left unnamed in its store is not pushed by loading it, so it is not
    left out of an increment either. `load --repair` reads a blob the increment left out from
    them. On an error the caller closes `archive` with `close_chain` (which closes what was
    linked)."""
    layout, names = archive, {name_of(path)}
    for _ in range(MAX_BASE_CHAIN):
        name = ArchiveInfo.read(layout).base
        if not name or name in names:
            break
        beside = base_beside(path, name)
        if beside is None:
            if warn:
                log.warning(
                    "%s %s: %s is an increment on top of %s, which is not beside it (%s); "
                    "the blobs %s holds are carried again (put it there to leave them out)",
                    what, path, name_of(path), name, where_beside(path, name), name,
                )  # fmt: skip
            break
        names.add(name)
        layout.base = await open_finished(beside, what)
        layout.base.reach_only = True  # what loading that base pushes, walked when needed
        layout, path = layout.base, beside


async def close_chain(layout: LayoutReader | None) -> None:
    """Close an archive and the bases `open_base_chain` linked below it."""
    while isinstance(layout, (OCILayout, OCILayoutTar)):  # what `open_finished` opens
        below = layout.base
        await layout.close()
        layout = below


def load_tasks(
    layout: OCILayout | OCILayoutTar, info: ArchiveInfo, prefix: str | None, dest_for: EndpointFor
) -> list[list[CopyTask]]:
    """Every named manifest of the archive as a task to `prefix`/repository, bundles last.

    Without `prefix` each image goes where the plan said (the archive's prefix + its name)."""
    if prefix:
        root = parse_prefix(prefix, "--dest")
    elif info.prefix and info.prefix_origin != PREFIX_NONE:
        root = info.prefix
    else:
        why = "was saved without --dest" if info.prefix else "names no destination"
        raise UsageError(f"{layout.label} {why}; pass --dest REGISTRY/PROJECT")
    grouped: dict[tuple[str, str], list[str]] = {}
    phase: dict[tuple[str, str], int] = {}
    for repository, tag, descriptor in layout.entries():
        key = (repository, str(descriptor.digest))
        tags = grouped.setdefault(key, [])
        phase[key] = max(phase.get(key, 0), info.phase_of.get(f"{repository}:{tag}", 0))
        if not stands_for_untagged(tag, descriptor.digest):
            tags.append(tag)
    groups: dict[int, list[CopyTask]] = {}
    for (repository, digest), tags in sorted(grouped.items()):
        if not repository:
            raise UsageError(
                f"{layout.label}: entry '{tags[0] if tags else digest}' has no repository; "
                "name images 'repository:tag' in the layout"
            )
        dest = Reference.parse_repository(f"{root}/{repository}")
        task = CopyTask(
            source=layout,
            source_repository=repository,
            source_identifier=digest,
            dest=dest_for(dest.registry),
            dest_repository=dest.repository,
            dest_tags=tuple(sorted(tags)),
        )
        groups.setdefault(phase[(repository, digest)], []).append(task)
    return [groups[n] for n in sorted(groups)]


def checksum_list(layout_dir: Path, names: Sequence[str]) -> str:
    """`sha256sum -c` lines for the layout's own files and every blob (named by its hash)."""
    lines = [f"{file_sha256(layout_dir / name)}  {name}" for name in names]
    blob_dir = layout_dir / "blobs" / "sha256"
    for blob in sorted(blob_dir.iterdir()) if blob_dir.is_dir() else []:
        if re.fullmatch(r"[0-9a-f]{64}", blob.name):
            lines.append(f"{blob.name}  blobs/sha256/{blob.name}")
    return "\n".join(lines) + "\n"


def source_points(plan: Plan, source_for: EndpointFor) -> list[tuple[Endpoint, str, str]]:
    """Where each entry's manifest is read from: (endpoint, repository, tag or digest)."""
    return [
        (
            source_endpoint(entry, source_for),
            Reference.parse(entry.source).repository,
            source_identifier(entry),
        )
        for entry in plan.entries
    ]


async def measure(
    points: Sequence[tuple[Endpoint, str, str]],
    own: LayoutReader | None,
    base: LayoutReader | None = None,
) -> tuple[int, int, int]:
    """(bytes to write, blobs to write, manifests to write) for a save, reading manifests
    only: each counted once, as `archive verify` counts them (a manifest is not a blob).
    `own`: what an earlier run of this save wrote; `base` (`--since`): a blob it holds is
    left out, a manifest is not (an increment carries every manifest its index names)."""
    seen: dict[str, int] = {}
    manifests: set[str] = set()

    async def walk(endpoint: Endpoint, repository: str, identifier: str, depth: int) -> None:
        manifest = await endpoint.get_manifest(repository, identifier)
        manifests.add(str(manifest.digest))
        seen[str(manifest.digest)] = manifest.size
        if manifest.is_index and depth < MAX_INDEX_DEPTH:
            for child in manifest.manifests:
                if str(child.digest) not in seen:  # shared by several indexes: read once
                    await walk(endpoint, repository, str(child.digest), depth + 1)
        for blob in manifest.blobs():
            if not blob.urls:
                seen[str(blob.digest)] = blob.size

    for endpoint, repository, identifier in points:
        await walk(endpoint, repository, identifier, 0)

    async def written(digest: str, size: int) -> bool:
        if own is not None and await own.has_blob("", Digest.parse(digest), size):
            return True
        in_base = base is not None and await base.holds("", Digest.parse(digest), size)
        return in_base and digest not in manifests

    missing = {digest: size for digest, size in seen.items() if not await written(digest, size)}
    new_manifests = len(manifests.intersection(missing))
    return sum(missing.values()), len(missing) - new_manifests, new_manifests


async def with_sizes(
    layout: LayoutReader, task_phases: Sequence[Sequence[CopyTask]]
) -> tuple[list[list[CopyTask]], int]:
    """Load tasks with the bytes of their manifest graphs, and the archive's unique bytes, for
    progress: read from the archive's own manifests (local; no blob is read). A task whose
    manifests cannot be read keeps no size; the engine reports what is wrong with it."""
    unique: dict[Digest, int] = {}

    async def walk(repository: str, identifier: str, depth: int, found: dict[Digest, int]) -> None:
        manifest = await layout.get_manifest(repository, identifier)
        found[manifest.digest] = manifest.size
        if manifest.is_index and depth < MAX_INDEX_DEPTH:
            for child in manifest.manifests:
                await walk(repository, str(child.digest), depth + 1, found)
        for blob in manifest.blobs():
            if not blob.urls:
                found[blob.digest] = blob.size

    sized: list[list[CopyTask]] = []
    for tasks in task_phases:
        group = []
        for task in tasks:
            found: dict[Digest, int] = {}
            try:
                await walk(task.source_repository, task.source_identifier, 0, found)
            except TransshipError:
                group.append(task)
                continue
            unique.update(found)
            group.append(replace(task, size=sum(found.values())))
        sized.append(group)
    return sized, sum(unique.values())
