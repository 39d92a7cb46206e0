"""Loading imgpkg tars into a registry as `imgpkg copy --tar FILE --to-repo REPO` does, but as
one plan: one tar, TKG 1.x's `publish-images-fromtar.sh`, or TKG 2.x's `download-bundle`
directory (`publish-images-fromtar.yaml`).

What imgpkg does per tar (imgpkg-format.md §3.2, §5): every top-level item of `manifest.json`
goes into the one destination repository by digest, tagged `sha256-<hex>.imgpkg`, items carrying
a `Tag` also get that tag; bundles come after the images they list, and (since imgpkg v0.37)
each bundle gets its ImageLocations record (`transship.imgpkg.locations`), after the bundle.

What transship adds: all tars are tasks of one engine run against one destination endpoint per
registry, so a blob shared by fifty tars is uploaded once and mounted elsewhere; tasks are pinned
by digest, so a rerun after a kill asks the destination and sends only what is missing; and at the
end every manifest and tag is looked up again at the destination (`check_complete`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.engine import CopyTask, TaskResult
from transship.errors import IncompleteError, LayoutError, PlanError, TransshipError, UsageError
from transship.imgpkg.bundle import (
    IMAGES_LOCK_FILE,
    IMGPKG_DIR,
    MAX_LAYER_BYTES,
    find_file,
    parse_images_lock,
)
from transship.imgpkg.copyline import parse_copy_lines
from transship.imgpkg.locations import (
    DOCKER_LAYER,
    ImageLocation,
    build_image_locations,
    image_locations_endpoint,
    image_locations_tag,
    imgpkg_tag,
)
from transship.imgpkg.tarball import ImgpkgTar, TarItem, is_imgpkg_tar
from transship.plan._yaml import load_yaml, read_text
from transship.reference import Reference, shared_parts

#: the destination endpoint for a registry host (a `RegistryPool.get`, or a stand-in)
EndpointFor = Callable[[str], Endpoint]

log = logging.getLogger("transship.imgpkg")

FROMTAR_YAML = "publish-images-fromtar.yaml"


@dataclass(frozen=True)
class TarTarget:
    """One `imgpkg copy --tar PATH --to-repo REPOSITORY`."""

    path: Path
    repository: str  # `<registry>/<path>`
    where: str  # script line or YAML key, for messages


# -- inputs ---------------------------------------------------------------------------------


def _find_tar(name: str, base: Path, where: str, hint: str) -> Path:
    """`name` as the script or YAML wrote it, looked for below `base`, then by file name."""
    given = Path(name)
    candidates = [given] if given.is_absolute() else [base / given, base / given.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError(f"{where}: {name} not found in {base}; {hint}")


def _repository(text: str, where: str) -> str:
    try:
        ref = Reference.parse_repository(text)
    except TransshipError as exc:
        raise PlanError(f"{where}: {exc}") from None
    return ref.name


def targets_from_script(
    script: Path, tars_dir: Path | None = None, dest_prefix: str | None = None
) -> list[TarTarget]:
    """The `imgpkg copy --tar … --to-repo …` lines of a `publish-images-fromtar.sh`.

    Tars are looked for below `tars_dir` (default: the script's directory), by the path the
    script names and then by file name. `dest_prefix` re-roots every destination: the
    longest prefix the script's destinations share is replaced by it.
    """
    name = str(script)
    copies = [c for c in parse_copy_lines(read_text(script), name) if c is not None]
    base = tars_dir or script.parent
    relative = _listed_paths(script.parent / FROMTAR_YAML) if dest_prefix else {}
    targets = []
    exact = True  # every destination re-rooted exactly (a variable, or the listing beside it)
    for copy in copies:
        if copy.from_tar is None or copy.to_repo is None:
            raise PlanError(
                f"{copy.where}: copies from a registry, not from a tar; this is not a "
                "from-tar script (use `transship copy --script` for that one)"
            )
        path = _find_tar(copy.from_tar, base, copy.where, "pass --tars DIR")
        to_repo = _expand(copy.to_repo, dest_prefix, copy.where)
        listed = relative.get(Path(copy.from_tar).name)
        if dest_prefix and listed is not None and to_repo == copy.to_repo:
            to_repo = f"{dest_prefix.strip().rstrip('/')}/{listed}"
        elif to_repo == copy.to_repo:
            exact = False
        targets.append(TarTarget(path, _repository(to_repo, copy.where), copy.where))
    if not targets:
        raise PlanError(f"{name}: no 'imgpkg copy --tar … --to-repo …' line found")
    if dest_prefix and not exact:
        targets = _reroot(targets, dest_prefix)
    return targets


#: `${NAME}`, `$NAME` or `${NAME:?message}` leading a `--to-repo`: where the script was told
#: to push (a from-tar script saved before its destination was known)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"^\$(?:\{{({_NAME})(?::[?-][^}}]*)?\}}|({_NAME}))/")


def _expand(to_repo: str, dest_prefix: str | None, where: str) -> str:
    """A `--to-repo` led by a shell variable, with `dest_prefix` (else the variable's value)
    in its place; any other one as written."""
    found = _VARIABLE.match(to_repo)
    if found is None:
        return to_repo
    variable = found.group(1) or found.group(2)
    root = dest_prefix or os.environ.get(variable, "")
    if not root.strip():
        raise UsageError(f"{where}: pushes under ${variable}; pass --dest REGISTRY/PROJECT")
    return f"{root.strip().rstrip('/')}/{to_repo[found.end() :]}"


def _listed_paths(listing: Path) -> dict[str, str]:
    """Tar file name → repository path below the destination, from the from-tar YAML that
    transship writes beside its script ({} when there is none): what re-rooting keeps."""
    if not listing.is_file():
        return {}
    root = load_yaml(read_text(listing), str(listing), unique_keys=True)
    paths = {}
    for tar_name, node in root.items():
        path = node.string().strip().strip("/")
        if ".." in path.split("/"):
            raise node.error(f"{path!r} climbs out of the destination prefix; refusing")
        paths[Path(str(tar_name)).name] = path
    return paths


def _reroot(targets: list[TarTarget], dest_prefix: str) -> list[TarTarget]:
    paths = [t.repository.split("/") for t in targets]
    common = shared_parts(paths)
    keep = max(1, min(len(common), min(len(p) for p in paths) - 1))
    prefix = dest_prefix.strip().rstrip("/")
    log.warning(
        "the script's destinations share %s/: it is replaced by %s/ (no %s beside the script "
        "to say which part of each path to keep)",
        "/".join(paths[0][:keep]),
        prefix,
        FROMTAR_YAML,
    )
    return [
        replace(t, repository=_repository(f"{prefix}/{'/'.join(p[keep:])}", t.where))
        for t, p in zip(targets, paths, strict=True)
    ]


def targets_from_directory(directory: Path, dest_prefix: str | None) -> list[TarTarget]:
    """A `tanzu isolated-cluster download-bundle` directory: `publish-images-fromtar.yaml` maps
    each tar file name to a repository path, joined to the destination as upload-bundle joins
    them (Go's `filepath.Join`)."""
    listing = directory / FROMTAR_YAML
    if not listing.is_file():
        raise UsageError(f"{directory}: no {FROMTAR_YAML}; is this a download-bundle directory?")
    if not dest_prefix:
        raise UsageError(
            f"{listing}: the tars have no registry of their own; pass --dest REGISTRY/PROJECT "
            "(upload-bundle's --destination-repo)"
        )
    root = load_yaml(read_text(listing), str(listing), unique_keys=True)
    targets = []
    for tar_name, node in root.items():
        where = f"{listing}: {tar_name}"
        path = node.string().strip().strip("/")
        if ".." in path.split("/"):
            raise node.error(f"{path!r} climbs out of the destination prefix; refusing")
        # Go's filepath.Join: a leading '/' does not reset the path, '//' collapses
        joined = posixpath.normpath(f"{dest_prefix.strip().rstrip('/')}/{path}")
        tar = _find_tar(tar_name, directory, where, f"it is listed in {FROMTAR_YAML}")
        targets.append(TarTarget(tar, _repository(joined, where), where))
    if not targets:
        raise UsageError(f"{listing} lists no tars")
    return targets


def is_download_bundle_dir(path: Path) -> bool:
    return path.is_dir() and (path / FROMTAR_YAML).is_file()


def single_target(path: Path, repository: str | None) -> TarTarget:
    """`load FILE.tar --dest REPO`: the whole tar into one repository, like `--to-repo`."""
    if not repository:
        raise UsageError(f"{path}: an imgpkg tar needs --dest REGISTRY/REPOSITORY (its --to-repo)")
    return TarTarget(path, _repository(repository, "--dest"), str(path))


def looks_like_imgpkg_tar(path: Path) -> bool:
    return path.is_file() and is_imgpkg_tar(path)


# -- the plan -------------------------------------------------------------------------------


@dataclass
class Row:
    """One thing the load pushes: for `plan` listings and reports."""

    tar: str
    destination: str
    tags: tuple[str, ...]
    digest: Digest
    kind: str  # image, index, bundle, image-locations


@dataclass
class TarLoad:
    """Everything one load pushes, as engine phases, plus what the tars hold."""

    tars: list[ImgpkgTar]
    phases: list[list[CopyTask]]
    rows: list[Row]
    stored_bytes: int = 0  # every blob and manifest of every tar, counted per tar
    unique_bytes: int = 0  # the same, each digest once
    generated_bytes: int = 0  # the bundles' ImageLocations images, made here and sent too

    @property
    def saved_bytes(self) -> int:
        return self.stored_bytes - self.unique_bytes

    @property
    def send_bytes(self) -> int:
        """What a full load sends at most: the tars' content once, and the records."""
        return self.unique_bytes + self.generated_bytes

    async def close(self) -> None:
        for tar in self.tars:
            await tar.close()


def open_tars(targets: Sequence[TarTarget]) -> list[ImgpkgTar]:
    """Each distinct file opened once; one that is not an imgpkg tar is named with its line."""
    opened: dict[Path, ImgpkgTar] = {}
    try:
        for target in targets:
            key = target.path.resolve()
            if key in opened:
                continue
            if not is_imgpkg_tar(target.path):
                raise LayoutError(
                    f"{target.where}: {target.path} is not an imgpkg tar (no manifest.json first)"
                )
            opened[key] = ImgpkgTar(target.path)
    except BaseException:
        for tar in opened.values():
            tar.release()
        raise
    return list(opened.values())


def _bundle_locations(tar: ImgpkgTar, bundle: TarItem) -> tuple[ImageLocation, ...]:
    """The ImageLocations rows of a bundle: its images.yml, and which entries are bundles.

    A bundle whose images the tar does not hold is refused: pushed, it would be a bundle whose
    images cannot be found (imgpkg pull would fail on the first)."""
    where = f"{tar.label}: bundle {bundle.name}"
    layers = bundle.manifest.layers
    if len(layers) != 1 or layers[0].media_type != DOCKER_LAYER:
        raise LayoutError(f"{where}: a bundle has exactly one {DOCKER_LAYER} layer")
    layer = tar.read_layer(layers[0].digest, MAX_LAYER_BYTES)
    path = f"{IMGPKG_DIR}/{IMAGES_LOCK_FILE}"
    text = find_file(layer, path, where)
    if text is None:
        raise LayoutError(f"{where}: no {path} in the bundle layer")
    rows = []
    for locked in parse_images_lock(text.decode("utf-8", "replace"), f"{where} {path}"):
        digest = locked.reference.digest
        assert digest is not None
        item = tar.item(digest)
        if item is None:
            raise LayoutError(
                f"{where}: {path} lists {locked.image}, which the tar does not hold; "
                "write the tar again with `imgpkg copy -b … --to-tar`"
            )
        rows.append(ImageLocation(locked.image, item.is_bundle))
    return tuple(rows)


def _kind(item: TarItem) -> str:
    if item.is_bundle:
        return "bundle"
    return "index" if item.manifest.is_index else "image"


def plan_load(targets: Sequence[TarTarget], dest_for: EndpointFor) -> TarLoad:
    """Tasks for every item of every tar, de-duplicated by (destination repository, digest):
    images and indexes first, then bundles, then ImageLocations records."""
    tars = open_tars(targets)
    by_path = {tar.path.resolve(): tar for tar in tars}
    # (registry, repository, digest) → (phase, tar, item or None for a record, tags)
    planned: dict[tuple[str, str, Digest], tuple[int, ImgpkgTar, TarItem | None, list[str]]] = {}
    records: dict[tuple[str, str, Digest], tuple[ImageLocation, ...]] = {}
    generated: dict[tuple[str, str, Digest], int] = {}  # ImageLocations images: bytes
    try:
        for target in targets:
            tar = by_path[target.path.resolve()]
            dest = Reference.parse_repository(target.repository)
            for item in tar.items:
                key = (dest.registry, dest.repository, item.digest)
                tags = [imgpkg_tag(item.digest)] + ([item.tag] if item.tag else [])
                phase = 1 if item.is_bundle else 0
                found = planned.setdefault(key, (phase, tar, item, []))
                found[3].extend(t for t in tags if t not in found[3])
                if item.is_bundle:
                    locations = _bundle_locations(tar, item)
                    image = build_image_locations(locations)
                    rkey = (dest.registry, dest.repository, image.digest)
                    records[rkey] = locations
                    generated[rkey] = image.size  # sent too: in the total
                    entry = planned.setdefault(rkey, (2, tar, None, []))
                    for tag in (image_locations_tag(item.digest), imgpkg_tag(image.digest)):
                        if tag not in entry[3]:
                            entry[3].append(tag)
    except BaseException:
        for tar in tars:
            tar.release()
        raise
    groups: dict[int, list[CopyTask]] = {}
    rows = []
    for key, (phase, tar, what, tags) in planned.items():
        registry, repository, digest = key
        dest_name = f"{registry}/{repository}"
        source: Endpoint
        if what is None:
            source = image_locations_endpoint(records[(registry, repository, digest)])
            source_label = f"ImageLocations of a bundle in {tar.path.name}"
            kind = "image-locations"
        else:
            source, source_label, kind = tar, f"{tar.path.name}:{what.name}", _kind(what)
        groups.setdefault(phase, []).append(
            CopyTask(
                source=source,
                source_repository=what.source_repository if what else "",
                source_identifier=str(digest),
                dest=dest_for(registry),
                dest_repository=repository,
                dest_tags=tuple(tags),
                source_reference=source_label,
                size=tar.graph_size(what.manifest) if what else generated[key],
            )
        )
        rows.append(Row(tar.path.name, dest_name, tuple(tags), digest, kind))
    load = TarLoad(tars, [groups[n] for n in sorted(groups)], rows)
    load.stored_bytes, load.unique_bytes = _byte_counts(tars)
    load.generated_bytes = sum({d: n for (_, _, d), n in generated.items()}.values())
    return load


def _byte_counts(tars: Sequence[ImgpkgTar]) -> tuple[int, int]:
    stored = 0
    unique: dict[Digest, int] = {}
    for tar in tars:
        sizes = {**tar.blob_sizes(), **tar.manifests()}
        stored += sum(sizes.values())
        unique.update(sizes)
    return stored, sum(unique.values())


async def check_complete(results: Sequence[TaskResult], parallel: int = 16) -> list[TaskResult]:
    """Ask the destination again, after the run, whether everything pushed is there: one tag
    listing per repository (every planned tag must be listed), a HEAD by digest for what has no
    tag. A result whose content is not all there becomes a failure (9, incomplete).

    One request per repository rather than one per tag: on a busy registry the check must not
    cost as much as the load."""
    limit = asyncio.Semaphore(parallel)
    groups: dict[tuple[int, str], list[TaskResult]] = {}
    for result in results:
        if result.status != "failed" and result.digest is not None:
            key = (id(result.task.dest), result.task.dest_repository)
            groups.setdefault(key, []).append(result)
    checked: dict[int, TaskResult] = {}

    def incomplete(result: TaskResult, what: str) -> TaskResult:
        error = IncompleteError(f"{result.task.dest_reference}: after the load, {what}")
        return replace(result, status="failed", error=error)

    async def check(group: list[TaskResult]) -> None:
        dest, repository = group[0].task.dest, group[0].task.dest_repository
        async with limit:
            try:
                listed = set(await dest.list_tags(repository))
            except TransshipError as exc:
                for result in group:
                    checked[id(result)] = replace(result, status="failed", error=exc)
                return
            for result in group:
                missing = [t for t in result.task.dest_tags if t not in listed]
                if missing:
                    checked[id(result)] = incomplete(result, f"tag {missing[0]} is missing")
                elif not result.task.dest_tags:
                    found = await dest.head_manifest(repository, str(result.digest))
                    if found is None or found.digest != result.digest:
                        checked[id(result)] = incomplete(result, f"{result.digest} is missing")

    await asyncio.gather(*(check(group) for group in groups.values()))
    return [checked.get(id(result), result) for result in results]
