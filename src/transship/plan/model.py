"""The plan: every image to copy, where it goes, and why it is there.

A plan is the reviewable hand-off between discovery (BOMs, lists, old scripts, registries) and
copying. It is stored as YAML so that people can read it, diff two releases and check it in.
Entries are merged by (source, destination repository) so that a reference listed by several
BOMs is copied once, with all the places that asked for it kept in `origins`. `gaps` lists what
a `--keep-going` run could not plan, so a partial plan never looks complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from transship.digest import Digest
from transship.errors import InvalidDigestError, InvalidReferenceError, PlanError
from transship.imgpkg.locations import ImageLocation, build_image_locations
from transship.plan._yaml import MAX_PLAN_BYTES, Node, dump_yaml, load_yaml
from transship.reference import Reference, parse_prefix

API_VERSION = "transship/v1alpha1"
NOT_REGISTRY_NOTE = "not registry content — import separately"
_HEADER = (
    "# transship plan: images to copy (source -> destination repository, tags).\n"
    "# Generated; review and diff freely. 'totals' is recomputed when the plan is read\n"
    "# (except 'bytes', each blob once, as resolved).\n"
)

log = logging.getLogger("transship.plan")


class EntryKind(StrEnum):
    """What an entry is, which decides its phase (`transship.ops.tasks.phases`).

    The values are the plan file's format. Each kind is named for its role in ordering; what
    an ecosystem means by it lives in that ecosystem's wing (`transship.imgpkg`,
    `transship.tkg`), not here.
    """

    IMAGE = "image"  # a single-platform image, copied by itself
    INDEX = "index"  # a multi-platform index, copied with all its children
    # a manifest that needs other images in its own repository first (an imgpkg bundle)
    BUNDLE = "bundle"
    BUNDLE_REFERENCED = "bundle-referenced"  # an image a bundle needs in the bundle's repository
    METADATA = "metadata"  # an image a platform reads at run time (a TKG BOM or compatibility)
    # a record transship generates (no registry holds it at the source), pushed after the
    # bundle it describes, content given by `locations` (imgpkg's ImageLocations)
    IMAGE_LOCATIONS = "image-locations"
    # a signature, attestation, SBOM or other OCI referrer of a planned manifest (`subject`):
    # copied into the subject's destination repository after the subject (plan.attachments)
    ATTACHMENT = "attachment"


# When two inputs disagree on the kind of one entry, the more specific claim wins.
_KIND_PRECEDENCE = (
    EntryKind.IMAGE_LOCATIONS,
    EntryKind.BUNDLE,
    EntryKind.ATTACHMENT,  # listed by hand too: still pushed after what it is attached to
    EntryKind.INDEX,
    EntryKind.METADATA,
    EntryKind.BUNDLE_REFERENCED,
    EntryKind.IMAGE,
)


def _stronger(a: EntryKind, b: EntryKind) -> EntryKind:
    return a if _KIND_PRECEDENCE.index(a) <= _KIND_PRECEDENCE.index(b) else b


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def utc_now() -> str:
    """The creation time format used in plans (UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PlanEntry:
    """One thing to copy: a source reference into a destination repository under some tags."""

    source: str
    destination: str
    tags: tuple[str, ...]
    kind: EntryKind
    origins: tuple[str, ...] = ()
    source_digest: Digest | None = None
    expanded: bool | None = None  # bundles: whether their referenced images were added
    size: int | None = None  # bytes, when known
    locations: tuple[ImageLocation, ...] = ()  # image-locations entries: the record's rows
    subject: Digest | None = None  # attachments: the manifest they are attached to

    @classmethod
    def create(
        cls,
        source: str,
        destination: str,
        *,
        kind: EntryKind = EntryKind.IMAGE,
        tags: Iterable[str] | None = None,
        origins: Iterable[str] = (),
        source_digest: Digest | None = None,
        expanded: bool | None = None,
        size: int | None = None,
        locations: Iterable[ImageLocation] = (),
        subject: Digest | None = None,
    ) -> PlanEntry:
        """Validate and normalise; tags default to the source's tag.

        Raises InvalidReferenceError (a UsageError) for a bad reference, repository or tag, so
        that callers can add the file and line.
        """
        ref = Reference.parse(source)
        if ref.tag is None and ref.digest is None:
            ref = ref.with_tag("latest")  # what every registry client assumes
        if ref.digest is not None:
            if source_digest is not None and source_digest != ref.digest:
                raise InvalidReferenceError(
                    f"{source}: pinned to {ref.digest} but resolved to {source_digest}"
                )
            source_digest = ref.digest
        dest = Reference.parse_repository(destination)
        if tags is None:
            tags = (ref.tag,) if ref.tag else ()
        for tag in tags:
            Reference.parse(f"{dest.name}:{tag}")  # validates the tag grammar
        return cls(
            source=str(ref),
            destination=dest.name,
            tags=tuple(sorted(set(tags))),
            kind=EntryKind(kind),
            origins=_unique(origins),
            source_digest=source_digest,
            expanded=expanded,
            size=size,
            locations=tuple(sorted(set(locations))),
            subject=subject,
        )

    @property
    def key(self) -> tuple[str, str]:
        """Identity for de-duplication: the source and the destination repository."""
        return (self.source, self.destination)

    def merged_with(self, other: PlanEntry) -> PlanEntry:
        """Combine two entries with the same key: union of tags and origins, stronger kind."""
        if other.key != self.key:
            raise ValueError(f"cannot merge {self.key} with {other.key}")
        return replace(
            self,
            tags=tuple(sorted(set(self.tags) | set(other.tags))),
            kind=_stronger(self.kind, other.kind),
            origins=_unique((*self.origins, *other.origins)),
            source_digest=self._merged_digest(other),
            expanded=self.expanded if self.expanded is not None else other.expanded,
            size=self.size if self.size is not None else other.size,
            locations=self.locations or other.locations,
            subject=self.subject if self.subject is not None else other.subject,
        )

    def _merged_digest(self, other: PlanEntry) -> Digest | None:
        mine, theirs = self.source_digest, other.source_digest
        if mine is not None and theirs is not None and mine != theirs:
            raise PlanError(
                f"{self.source} resolved to both {mine.short} and {theirs.short} "
                f"(from {', '.join(_unique((*self.origins, *other.origins)))}); "
                "the tag moved between reads: plan again"
            )
        return mine if mine is not None else theirs

    def to_dict(self) -> dict[str, Any]:
        """The plan-file form (camelCase keys, optional fields only when known)."""
        out: dict[str, Any] = {
            "source": self.source,
            "sourceDigest": str(self.source_digest) if self.source_digest else None,
            "destination": self.destination,
            "tags": list(self.tags),
            "kind": self.kind.value,
        }
        if self.subject is not None:
            out["subject"] = str(self.subject)
        if self.expanded is not None:
            out["expanded"] = self.expanded
        if self.size is not None:
            out["size"] = self.size
        if self.kind is EntryKind.IMAGE_LOCATIONS:
            out["imageLocations"] = [
                {"image": row.image, "isBundle": row.is_bundle} for row in self.locations
            ]
        out["origins"] = list(self.origins)
        return out


@dataclass(frozen=True)
class NonRegistryArtifact:
    """Something a release needs that no registry copy can deliver (OVA, AMI, Azure image)."""

    kind: str
    name: str
    origin: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "origin": self.origin}


@dataclass(frozen=True)
class Gap:
    """Something the plan should hold but could not (with --keep-going): listed, never hidden."""

    source: str
    reason: str
    origins: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "origins": list(self.origins)}


@dataclass(frozen=True)
class Totals:
    """Counts shown to people before they start a long copy."""

    entries: int
    repositories: int
    bundles: int
    attachments: int = 0  # signatures, attestations, SBOMs, referrers (plan.attachments)


def merge_entries(entries: Iterable[PlanEntry]) -> tuple[PlanEntry, ...]:
    """One entry per key, sorted by destination then source for stable, diffable output."""
    by_key: dict[tuple[str, str], PlanEntry] = {}
    for entry in entries:
        known = by_key.get(entry.key)
        by_key[entry.key] = entry if known is None else known.merged_with(entry)
    return tuple(sorted(by_key.values(), key=lambda e: (e.destination, e.source)))


def settle_tag_collisions(entries: Iterable[PlanEntry]) -> tuple[PlanEntry, ...]:
    """One destination tag, one digest: two sources of different digests that land on the
    same `repository:tag` (docker.io and quay.io paths under one prefix drop their hosts)
    would flip the tag on every run, so the plan is refused. Sources whose digest is not
    known yet (an unresolved list) are checked once resolved; the same digest is fine.

    Attachments of one subject are the exception: the same image from two repositories has
    two signatures under one `sha256-<subject>.sig` tag (a signature names its repository);
    the first is kept, the other left out with a warning."""
    claimed: dict[tuple[str, str], PlanEntry] = {}
    kept: list[PlanEntry] = []
    for entry in entries:
        if entry.source_digest is None:
            kept.append(entry)
            continue
        clash = None
        for tag in entry.tags:
            other = claimed.get((entry.destination, tag))
            if other is not None and other.source_digest not in (None, entry.source_digest):
                clash = (tag, other)
                break
        if clash is None:
            for tag in entry.tags:
                claimed.setdefault((entry.destination, tag), entry)
            kept.append(entry)
            continue
        tag, other = clash
        digest = other.source_digest
        assert digest is not None
        attachments = entry.kind is EntryKind.ATTACHMENT and other.kind is EntryKind.ATTACHMENT
        if attachments and entry.subject is not None and entry.subject == other.subject:
            log.warning(
                "%s:%s: %s is left out; %s already goes there (attachments of the same image "
                "from two repositories)",
                entry.destination,
                tag,
                entry.source,
                other.source,
            )
            continue
        raise PlanError(
            f"{entry.destination}:{tag} would get two different images: "
            f"{other.source} ({digest.short}, from {', '.join(other.origins) or '?'}) "
            f"and {entry.source} ({entry.source_digest.short}, from "
            f"{', '.join(entry.origins) or '?'}); remove one of them or send it "
            "under another destination"
        )
    return tuple(kept)


@dataclass(frozen=True)
class Plan:
    """A de-duplicated, sorted set of entries plus where they came from."""

    entries: tuple[PlanEntry, ...]
    sources: tuple[str, ...] = ()
    created: str = field(default_factory=utc_now)
    not_registry_content: tuple[NonRegistryArtifact, ...] = ()
    gaps: tuple[Gap, ...] = ()
    #: the `--dest` prefix the plan was made for (None: not known, e.g. hand-written entries);
    #: an archive saved from the plan names its repositories relative to it
    destination_prefix: str | None = None
    #: bytes to copy, each blob and manifest once, as resolved (None: not resolved); what
    #: progress counts down from, so it is kept in the plan file (`totals.bytes`)
    unique_bytes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", settle_tag_collisions(merge_entries(self.entries)))
        object.__setattr__(self, "sources", _unique(self.sources))
        unique = tuple(dict.fromkeys(self.not_registry_content))
        object.__setattr__(self, "not_registry_content", unique)
        object.__setattr__(self, "gaps", tuple(dict.fromkeys(self.gaps)))

    def require_below(self, prefix: str, option: str = "--dest") -> None:
        """A plan's destinations are fixed when it is made: `prefix` given beside it must
        hold every one of them (else it would be silently ignored, and a verify of another
        registry would pass). Raises a one-line `UsageError` naming the first entry outside."""
        root = parse_prefix(prefix, option)
        for entry in self.entries:
            if not entry.destination.startswith(f"{root}/"):
                raise PlanError(
                    f"{option} {root}: the plan sends {entry.source} to {entry.destination}, "
                    f"not below {root}, and records no prefix to move it from: leave out "
                    f"{option} (or TKG_CUSTOM_IMAGE_REPOSITORY), or plan again with {option} "
                    f"{root}"
                )

    def rerooted(self, prefix: str, option: str = "--dest") -> Plan:
        """The plan sent below `prefix` instead of the prefix it was made for, as `load
        --dest` re-roots an archive: each destination keeps its path below the recorded
        `destinationPrefix` (the carried plan of an archive loaded elsewhere verifies there).
        A plan already below `prefix` is kept; one that records no prefix must be below it
        (`require_below`)."""
        root = parse_prefix(prefix, option)
        old = (self.destination_prefix or "").rstrip("/")
        if not old or all(e.destination.startswith(f"{root}/") for e in self.entries):
            self.require_below(prefix, option)
            return self
        moved = []
        for entry in self.entries:
            if not entry.destination.startswith(f"{old}/"):
                raise PlanError(
                    f"{option} {root}: the plan sends {entry.source} to {entry.destination}, "
                    f"outside the prefix it records ({old}), so it cannot be moved below {root}"
                )
            moved.append(replace(entry, destination=root + entry.destination[len(old) :]))
        return replace(self, entries=tuple(moved), destination_prefix=root)

    def merge(self, other: Plan) -> Plan:
        """Both plans in one (e.g. a TKG release plus a list of extra images)."""
        return Plan(
            entries=(*self.entries, *other.entries),
            sources=(*self.sources, *other.sources),
            created=self.created,
            not_registry_content=(*self.not_registry_content, *other.not_registry_content),
            gaps=(*self.gaps, *other.gaps),
            destination_prefix=_merged_prefix(self.destination_prefix, other.destination_prefix),
        )

    @property
    def totals(self) -> Totals:
        return Totals(
            entries=len(self.entries),
            repositories=len({e.destination for e in self.entries}),
            bundles=sum(1 for e in self.entries if e.kind is EntryKind.BUNDLE),
            attachments=sum(1 for e in self.entries if e.kind is EntryKind.ATTACHMENT),
        )

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "Plan",
            "created": self.created,
            "sources": list(self.sources),
            **({"destinationPrefix": self.destination_prefix} if self.destination_prefix else {}),
            "totals": {
                "entries": totals.entries,
                "repositories": totals.repositories,
                "bundles": totals.bundles,
            },
            "entries": [entry.to_dict() for entry in self.entries],
        }
        if totals.attachments:  # only then: plans without attachments read as before
            out["totals"]["attachments"] = totals.attachments
        if self.unique_bytes is not None:
            out["totals"]["bytes"] = self.unique_bytes
        if self.not_registry_content:
            out["notRegistryContent"] = {
                "note": NOT_REGISTRY_NOTE,
                "artifacts": [a.to_dict() for a in self.not_registry_content],
            }
        if self.gaps:
            out["gaps"] = [gap.to_dict() for gap in self.gaps]
        return out

    def to_yaml(self) -> str:
        """Readable block YAML; strings that look like numbers are quoted by the dumper."""
        return _HEADER + dump_yaml(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_yaml(cls, text: str, path: str) -> Plan:
        """Read a plan written by `to_yaml` (or `to_json`), checking every field."""
        return _plan_from_node(load_yaml(text, path, unique_keys=True, limit=MAX_PLAN_BYTES))

    @classmethod
    def from_dict(cls, value: object, path: str) -> Plan:
        """A plan from `to_dict`'s form already parsed (e.g. by `json.loads`), checked alike."""
        return _plan_from_node(Node(path, "", value))


_PLAN_KEYS = frozenset(
    {
        "apiVersion",
        "kind",
        "created",
        "sources",
        "destinationPrefix",
        "totals",
        "entries",
        "notRegistryContent",
        "gaps",
    }
)


def _merged_prefix(mine: str | None, theirs: str | None) -> str | None:
    """Two plans for one prefix keep it; plans for two different prefixes have none."""
    if mine is None or theirs is None:
        return mine or theirs
    return mine if mine == theirs else None


_ENTRY_KEYS = frozenset(
    {
        "source",
        "sourceDigest",
        "destination",
        "tags",
        "kind",
        "expanded",
        "size",
        "origins",
        "imageLocations",
        "subject",
    }
)
_ARTIFACT_KEYS = frozenset({"kind", "name", "origin"})


def _plan_from_node(root: Node) -> Plan:
    root.only_keys(_PLAN_KEYS)
    api = root.child("apiVersion", f"a plan starts with 'apiVersion: {API_VERSION}'")
    if api.value != API_VERSION:
        raise api.error(
            f"unsupported plan version {api.value!r}; this transship reads {API_VERSION}"
        )
    kind = root.child("kind")
    if kind.value != "Plan":
        raise kind.error(f"expected 'Plan', found {kind.value!r}; is this a plan file?")
    created = root.child("created").string()
    sources = tuple(node.string() for node in _list(root, "sources"))
    totals = root.get("totals")
    unique_bytes = None
    if totals is not None:
        totals.mapping()  # derived data: checked for shape only, recomputed below
        unique_bytes = _optional_size(totals.get("bytes"))  # except this: kept as resolved
    entries = _entries_from_node(root)
    artifacts = _artifacts_from_node(root.get("notRegistryContent"))
    gaps = tuple(_gap_from_node(node) for node in _list(root, "gaps"))
    prefix = _prefix_from_node(root.get("destinationPrefix"))
    if prefix is not None:
        for entry, node in zip(entries, _list(root, "entries"), strict=True):
            if not entry.destination.startswith(f"{prefix}/"):
                raise node.error(
                    f"destination {entry.destination} is not under the plan's destinationPrefix "
                    f"{prefix}; plan again"
                )
    return Plan(tuple(entries), sources, created, tuple(artifacts), gaps, prefix, unique_bytes)


def _prefix_from_node(node: Node | None) -> str | None:
    if node is None:
        return None
    try:
        return parse_prefix(node.string(), "")
    except InvalidReferenceError as exc:
        raise node.error(str(exc)) from None


def _list(parent: Node, key: str) -> list[Node]:
    found = parent.get(key)
    return [] if found is None else list(found.elements())


def _entries_from_node(root: Node) -> list[PlanEntry]:
    entries: list[PlanEntry] = []
    seen: dict[tuple[str, str], str] = {}
    for node in _list(root, "entries"):
        entry = _entry_from_node(node)
        if entry.key in seen:
            raise node.error(
                f"same source and destination as {seen[entry.key]}; merge the two entries"
            )
        seen[entry.key] = node.path
        entries.append(entry)
    return entries


_KIND_CHOICES = ", ".join(k.value for k in EntryKind)


def _entry_from_node(node: Node) -> PlanEntry:
    node.only_keys(_ENTRY_KEYS)
    kind_node = node.child("kind", f"give one of {_KIND_CHOICES}")
    try:
        kind = EntryKind(kind_node.string())
    except ValueError:
        raise kind_node.error(
            f"unknown kind {kind_node.value!r}; use one of {_KIND_CHOICES}"
        ) from None
    locations = _locations_from_node(node, kind)
    try:
        entry = PlanEntry.create(
            node.child("source", "give the image reference to copy").string(),
            node.child("destination", "give the destination repository").string(),
            kind=kind,
            tags=[tag.string() for tag in _list(node, "tags")],
            origins=[origin.string() for origin in _list(node, "origins")],
            source_digest=_digest(node.get("sourceDigest")),
            expanded=_optional_bool(node.get("expanded")),
            size=_optional_size(node.get("size")),
            locations=locations,
            subject=_subject_from_node(node, kind),
        )
    except InvalidReferenceError as exc:
        raise node.error(f"{exc}; correct the entry") from None
    if kind is EntryKind.IMAGE_LOCATIONS:
        _check_locations_digest(node, entry)
    return entry


def _locations_from_node(node: Node, kind: EntryKind) -> list[ImageLocation]:
    found = node.get("imageLocations")
    if kind is not EntryKind.IMAGE_LOCATIONS:
        if found is not None:
            raise found.error(f"only '{EntryKind.IMAGE_LOCATIONS.value}' entries have this")
        return []
    rows = []
    for row in found.elements() if found else ():
        row.only_keys(frozenset({"image", "isBundle"}))
        is_bundle = _optional_bool(row.child("isBundle", "true or false"))
        rows.append(ImageLocation(row.child("image").string(), bool(is_bundle)))
    return rows


def _subject_from_node(node: Node, kind: EntryKind) -> Digest | None:
    found = node.get("subject")
    if found is not None and kind is not EntryKind.ATTACHMENT:
        raise found.error(f"only '{EntryKind.ATTACHMENT.value}' entries have a subject")
    return _digest(found)


def _check_locations_digest(node: Node, entry: PlanEntry) -> None:
    """The record is regenerated at copy time; its digest must be the one the plan promises."""
    built = build_image_locations(entry.locations).digest
    if entry.source_digest is None:
        raise node.error("an image-locations entry needs its sourceDigest")
    if built != entry.source_digest:
        raise node.error(
            f"imageLocations make {built.short}, not the sourceDigest {entry.source_digest.short}; "
            "the entry was edited: plan again"
        )


def _gap_from_node(node: Node) -> Gap:
    node.only_keys(frozenset({"source", "reason", "origins"}))
    return Gap(
        source=node.child("source").string(),
        reason=node.child("reason").string(),
        origins=tuple(origin.string() for origin in _list(node, "origins")),
    )


def _digest(node: Node | None) -> Digest | None:
    if node is None:
        return None
    try:
        return Digest.parse(node.string())
    except InvalidDigestError as exc:
        raise node.error(f"{exc}; use 'sha256:<64 hex digits>' or null") from None


def _optional_bool(node: Node | None) -> bool | None:
    if node is None:
        return None
    if not isinstance(node.value, bool):
        raise node.error("expected true or false")
    return node.value


def _optional_size(node: Node | None) -> int | None:
    if node is None:
        return None
    if isinstance(node.value, bool) or not isinstance(node.value, int) or node.value < 0:
        raise node.error("expected a size in bytes (a whole number, 0 or more)")
    return node.value


def _artifacts_from_node(node: Node | None) -> list[NonRegistryArtifact]:
    if node is None:
        return []
    node.only_keys(frozenset({"note", "artifacts"}))
    artifacts = []
    for item in _list(node, "artifacts"):
        item.only_keys(_ARTIFACT_KEYS)
        artifacts.append(
            NonRegistryArtifact(
                kind=item.child("kind").string(),
                name=item.child("name").string(),
                origin=item.child("origin").string(),
            )
        )
    return artifacts
