"""What an archive serves: repository names, tags, manifests, blobs and referrers, read in place.

An archive (and, for an increment, the bases under it) is opened through the layout readers and
indexed once at start: every named manifest is read, verified and walked, so the server knows
which manifests and blobs each repository holds and which manifests refer to which subject. After
that, a request is a dictionary lookup; nothing is extracted, and a name never becomes a path.

Names: an archive entry `tkg/antrea:v1` saved for destination prefix `harbor.corp/tkg-1.5` is
served as `<prefix>/tkg/antrea:v1`, where the served prefix defaults to the path part of the
archive's destination prefix (`tkg-1.5`), so `TKG_CUSTOM_IMAGE_REPOSITORY=<listen>/tkg-1.5`
reaches it. An entry of the empty repository (what `skopeo copy … oci:DIR:NAME` writes) is
served at the prefix itself, when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transship.digest import Digest
from transship.errors import IncompleteError, TransshipError, UsageError
from transship.layout import OCILayout, OCILayoutTar
from transship.layout.reader import Extent
from transship.layout.volumes import PARTS_SUFFIX
from transship.manifest import MAX_INDEX_DEPTH, Descriptor, Manifest
from transship.ops.archive import (
    MAX_BASE_CHAIN,
    ArchiveInfo,
    base_beside,
    completeness_problems,
    name_of,
    open_archive,
    stands_for_untagged,
    where_beside,
)
from transship.reference import is_tag
from transship.serve.files import PinnedFiles

log = logging.getLogger("transship.serve")

Layer = OCILayout | OCILayoutTar

#: the distribution spec's repository name grammar, path component by path component
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")  # `\Z`: no final newline either
MAX_NAME = 255
#: manifest bytes kept in memory (parsed) after a first read
MANIFEST_CACHE_BYTES = 16 * 1024 * 1024


def served_prefix(info: ArchiveInfo) -> str:
    """The default `--prefix`: the path part of the destination prefix the archive records
    (`ArchiveInfo.prefix_path`; empty for a placeholder prefix or a plain OCI layout)."""
    return info.prefix_path


def valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and bool(NAME.match(name))


@dataclass
class Repository:
    """One served repository: its tags and everything reachable from them."""

    name: str
    tags: dict[str, Descriptor] = field(default_factory=dict)
    manifests: dict[Digest, str] = field(default_factory=dict)  # digest → media type
    blobs: set[Digest] = field(default_factory=set)
    #: subject digest → descriptors of manifests whose `subject` is it (OCI 1.1 referrers)
    referrers: dict[Digest, dict[Digest, dict[str, Any]]] = field(default_factory=dict)


class ServedArchive:
    """An archive and its bases, indexed for serving; `open` builds it, `close` releases it."""

    def __init__(self, layers: list[Layer], prefix: str) -> None:
        self.layers = layers  # the archive first, then its base(s)
        self.prefix = prefix.strip("/")
        self.repositories: dict[str, Repository] = {}
        self.problems: list[str] = []
        #: the files blobs are read from, held as indexed (a replace or rewrite never serves)
        self.files = PinnedFiles(self.label)
        #: where each served blob lay when indexed: its size and offsets as served from the
        #: files held, never read again from names a rename may have pointed elsewhere
        self._where: dict[Digest, tuple[list[Extent], Layer]] = {}
        self._cache: OrderedDict[Digest, Manifest] = OrderedDict()
        self._cache_bytes = 0
        #: manifests and blobs the served names need that no layer holds (found at indexing)
        self.absent: set[Digest] = set()
        #: where the chain of bases ends early (`_follow_bases`); then a name whose content is
        #: in none of the layers is not served (a base's) or refuses the whole (the archive's)
        self.cut: ChainCut | None = None
        #: the archive's own names (`repository:tag` served) that need content no layer holds
        self.incomplete: list[str] = []

    @property
    def label(self) -> str:
        return " + ".join(layer.label for layer in self.layers)

    @classmethod
    async def open(
        cls, archive: Path, bases: list[Path], prefix: str | None
    ) -> tuple[ServedArchive, ArchiveInfo]:
        """Open ARCHIVE (directory, tar, volumes) and its bases; index everything they name."""
        layers: list[Layer] = []
        try:
            layers.append(open_archive(archive))
            info = ArchiveInfo.read(layers[0])
            for base in bases:
                layers.append(open_archive(base))
            wrong = _wrong_base(layers, [archive, *bases])
            missing = _follow_bases(layers, bases[-1] if bases else archive, [archive, *bases])
            cut: ChainCut | None = wrong or missing
            for layer in layers:  # what load refuses is not served either
                problems = completeness_problems(layer, ArchiveInfo.read(layer))
                if problems:
                    raise IncompleteError(f"serve: {problems[0]}")
            chosen = served_prefix(info) if prefix is None else prefix.strip("/")
            if chosen and not valid_name(chosen):
                raise UsageError(
                    f"--prefix {chosen!r} is not a repository path "
                    "(lowercase letters, digits and . _ - separated by /)"
                )
            served = cls(layers, chosen)
            served.cut = cut
            try:
                await served._index()
                if cut is not None and served.incomplete:
                    raise UsageError(cut.refusal(sorted(served.incomplete)))
                await asyncio.to_thread(served._pin_files)
            except BaseException:
                served.files.close()
                raise
        except BaseException:
            for layer in layers:
                await layer.close()
            raise
        return served, info

    async def close(self) -> None:
        self.files.close()
        for layer in self.layers:
            await layer.close()

    # -- indexing ---------------------------------------------------------------------------

    def served_name(self, repository: str) -> str:
        if not repository:
            return self.prefix
        return f"{self.prefix}/{repository}" if self.prefix else repository

    async def _index(self) -> None:
        own = {(repository, tag) for repository, tag, _ in self.layers[0].entries()}
        named: dict[tuple[str, str], Descriptor] = {}
        for layer in reversed(self.layers):  # the archive's own names win over its base's
            for repository, tag, descriptor in layer.entries():
                named[(repository, tag)] = descriptor
        walked: set[tuple[str, Digest]] = set()
        dropped: list[str] = []
        for (repository, tag), descriptor in named.items():
            name = self.served_name(repository)
            if not name:
                self.problems.append(
                    f"entry {tag!r} has no repository; give --prefix to serve it at that path"
                )
                continue
            if not valid_name(name):
                self.problems.append(f"{name}:{tag} is not a valid repository name; not served")
                continue
            # walked on its own first: a name whose content is gone with a missing base
            # leaves nothing behind in what is served
            found, lacking, seen = Repository(name), set[Digest](), set[tuple[str, Digest]]()
            try:
                await self._walk(found, descriptor, walked, seen, lacking, 0)
            except TransshipError as exc:
                if not lacking or self.cut is None:
                    self.problems.append(f"{name}:{tag}: {exc}")
                    self.absent |= lacking
                    continue
            lacking.update(d for d in found.blobs if self.blob(d) is None)
            if lacking and self.cut is not None:
                (self.incomplete if (repository, tag) in own else dropped).append(f"{name}:{tag}")
                continue
            self.absent |= lacking
            walked |= seen
            repo = self.repositories.setdefault(name, Repository(name))
            repo.manifests.update(found.manifests)
            repo.blobs |= found.blobs
            for subject, referrers in found.referrers.items():
                repo.referrers.setdefault(subject, {}).update(referrers)
            if not stands_for_untagged(tag, descriptor.digest) and is_tag(tag):
                repo.tags[tag] = descriptor
        if dropped and self.cut is not None:
            self.problems.append(self.cut.not_served(sorted(dropped)))  # a stable order

    def _pin_files(self) -> None:
        """Open (or stat) every file a served blob lies in, once, as it is now."""
        for repo in self.repositories.values():
            for digest in (*repo.blobs, *repo.manifests):
                found = self.blob(digest)
                if found is None:
                    self.absent.add(digest)
                else:
                    self._where[digest] = found
                    for extent in found[0]:
                        # unreadable now: its requests fail as they would have
                        with contextlib.suppress(OSError):
                            self.files.pin(extent.path)

    async def _walk(
        self,
        repo: Repository,
        descriptor: Descriptor,
        walked: set[tuple[str, Digest]],
        seen: set[tuple[str, Digest]],
        lacking: set[Digest],
        depth: int,
    ) -> None:
        """Add to `repo` what `descriptor` reaches, but what `walked` (indexed) or `seen` (this
        walk) holds; a manifest no layer holds goes to `lacking` (then `manifest` raises)."""
        key = (repo.name, descriptor.digest)
        if key in walked or key in seen:
            return
        if self.blob(descriptor.digest) is None:
            lacking.add(descriptor.digest)
        manifest = await self.manifest(descriptor.digest, descriptor.media_type)
        if depth < MAX_INDEX_DEPTH:  # anything deeper is not an image graph we serve
            for child in manifest.manifests:
                await self._walk(repo, child, walked, seen, lacking, depth + 1)
        seen.add(key)
        repo.manifests[manifest.digest] = manifest.media_type
        for blob in manifest.blobs():
            if not blob.urls:  # a foreign layer lives elsewhere; never in the archive
                repo.blobs.add(blob.digest)
        if manifest.subject is not None:
            entry: dict[str, Any] = {
                "mediaType": manifest.media_type,
                "digest": str(manifest.digest),
                "size": manifest.size,
            }
            artifact_type = manifest.artifact_type or (
                manifest.config.media_type if manifest.config else None
            )
            if artifact_type:
                entry["artifactType"] = artifact_type
            if manifest.annotations:
                entry["annotations"] = manifest.annotations
            repo.referrers.setdefault(manifest.subject.digest, {})[manifest.digest] = entry

    # -- reading ----------------------------------------------------------------------------

    async def manifest(self, digest: Digest, media_type: str | None = None) -> Manifest:
        """The manifest's exact bytes, verified against its digest (from memory when hot:
        parsed once, so a hot manifest costs no disk read, hash or JSON parse)."""
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached
        last: TransshipError | None = None
        for layer in self.layers:
            if not _holds(layer, digest):
                continue
            try:
                manifest = await layer.get_manifest("", str(digest))
            except TransshipError as exc:
                last = exc
                continue
            if media_type and media_type != manifest.media_type:  # the body's own type wins
                manifest = Manifest.parse(manifest.raw, media_type, layer.label)
            self._remember(digest, manifest)
            return manifest
        if last is not None:
            raise last
        raise UsageError(f"{self.label}: manifest {digest.short} is not in the archive")

    def _remember(self, digest: Digest, manifest: Manifest) -> None:
        if manifest.size > MANIFEST_CACHE_BYTES // 16:
            return
        self._cache[digest] = manifest
        self._cache_bytes += manifest.size
        while self._cache_bytes > MANIFEST_CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.size

    def blob(self, digest: Digest) -> tuple[list[Extent], Layer] | None:
        """Where a blob's bytes lie (first layer holding it), None if no layer has it."""
        indexed = self._where.get(digest)
        if indexed is not None:
            return indexed
        for layer in self.layers:
            extents = layer.blob_extents(digest) if _holds(layer, digest) else None
            if extents is not None:
                return extents, layer
        return None


def _holds(layer: Layer, digest: Digest) -> bool:
    """The layer stores the blob to serve, named or not: only what the served names reach is
    ever asked for (`_index`), so a base's unnamed bytes go out only for a manifest a name
    needs, verified as any blob, as `load --repair` reads them (`LayoutReader.open_blob`)."""
    return layer.blob_extents(digest) is not None


@dataclass(frozen=True)
class ChainCut:
    """Where the chain of bases ends early: `increment` was saved on top of `name`, which is
    not beside it (`given` None: `_follow_bases`), or a `--base` `given` was passed in its
    place (maybe the same archive renamed, maybe not: `_wrong_base`)."""

    increment: Path
    name: str
    given: Path | None = None

    def _why(self) -> str:
        if self.given is None:
            return (
                f"{self.increment} is an increment on top of {self.name}, which is not beside "
                f"it ({where_beside(self.increment, self.name)})"
            )
        return (
            f"{self.increment} is an increment on top of {self.name}, but --base {self.given} "
            "was given"
        )

    def refusal(self, images: list[str]) -> str:
        """The archive's own `images` need content that is in none of the layers opened."""
        way = (
            f"serve it together with its bases: --base PATH/{self.name} (or put {self.name} "
            "beside it)"
            if self.given is None
            else f"serve it with the base it was saved on: --base PATH/{self.name}"
        )
        return (
            f"{self._why()}, and the archive's own {_some(images)} need manifests or blobs "
            f"found in none of the archives opened; {way}"
        )

    def not_served(self, images: list[str]) -> str:
        """Names only a base of the archive has, whose content is in none of the layers."""
        where = (
            f"in {self.name}, which is not beside {self.increment} (--base PATH/{self.name} "
            "serves them)"
            if self.given is None
            else f"in none of the archives opened ({self.increment} is an increment on top of "
            f"{self.name}, --base {self.given} was given)"
        )
        return (
            f"not served: {_some(images, 5)}, named only by a base of the archive, whose "
            f"manifests or blobs are {where}"
        )


def _archive_name(name: str) -> str:
    """An archive's name without the volume suffix: `a.tar.parts`, `a.tar.001` → `a.tar`."""
    name = name.removesuffix(PARTS_SUFFIX)
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and len(suffix) == 3 and suffix.isdigit() else name


def _wrong_base(layers: list[Layer], paths: list[Path]) -> ChainCut | None:
    """The first `--base` (`paths[1:]`, opened as `layers[1:]`) that is not, by name, the base
    the archive before it records. Not refused outright (a base may have been renamed on the
    way): `ServedArchive.open` then refuses only when something served is in none of them."""
    for i in range(1, len(paths)):
        name = ArchiveInfo.read(layers[i - 1]).base
        if name and _archive_name(name) != _archive_name(name_of(paths[i])):
            return ChainCut(paths[i - 1], name, paths[i])
    return None


def _some(images: list[str], shown: int = 2) -> str:
    """The first `shown` of `images`, and how many more."""
    more = len(images) - shown
    return ", ".join(images[:shown]) + (f" and {more} more" if more > 0 else "")


def _follow_bases(layers: list[Layer], path: Path, seen: list[Path]) -> ChainCut | None:
    """The bases of an increment, as far as their files are there: from the last layer (the
    archive, or the last `--base` given, at `path`), the base its archive.json names, beside
    it, and so on (`save --since` left out what each holds, `ops.archive.open_base_chain`).
    A base that is not there ends the chain: the archives opened may well be complete without
    it (an increment saved when that base was not at hand carries its blobs again), so
    `ServedArchive.open` refuses only when something served is then in none of them."""
    names = {name_of(p) for p in seen}
    for _ in range(MAX_BASE_CHAIN):
        name = ArchiveInfo.read(layers[-1]).base
        if not name or name in names:
            return None
        beside = base_beside(path, name)
        if beside is None:
            return ChainCut(path, name)
        names.add(name)
        layers.append(open_archive(beside))
        path = beside
    return None
