"""TKG release files (TKG/TKR BOMs, compatibility documents) and the images they need.

Format notes: docs/tkg-bom-format.md. Relocation keeps `imagePath:tag` and swaps the registry
prefix (the TKG_CUSTOM_IMAGE_REPOSITORY rule), and the four kinds of metadata images must exist
under the new prefix too, because TKG reads them from there at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from transship.errors import InvalidReferenceError, PlanError
from transship.plan._yaml import Node, load_yaml, read_text
from transship.plan.model import EntryKind, NonRegistryArtifact, Plan, PlanEntry, utc_now
from transship.reference import Reference, parse_prefix

BomKind = Literal["tkg", "tkr"]

DEFAULT_SOURCE_PREFIX = "projects.registry.vmware.com/tkg"
TKG_BOM_PATH = "tkg-bom"
TKG_COMPATIBILITY_PATH = "tkg-compatibility"
METADATA_REPOSITORY_NAMES = frozenset(
    {"tkg-bom", "tkr-bom", "tkr-compatibility", "tkg-compatibility"}
)
# Components the vendor script copies with `imgpkg copy -b` (hack/gen-publish-images.sh, main
# line from f7f46622; the TKG 1.5 branch only had tkg-standard-packages). A hint only: the
# registry-facing planner must confirm with the `dev.carvel.imgpkg.bundle` config label.
TKG_BUNDLE_COMPONENTS = frozenset(
    {"tkg-standard-packages", "standalone-plugins-package", "tanzu-framework-management-packages"}
)
TKR_BUNDLE_COMPONENTS = frozenset({"tkg-core-packages"})

_COUNTER_TAG = re.compile(r"^v([0-9]+)$")


def is_bundle_component(kind: BomKind, component: str) -> bool:
    """The vendor script's name rule for which BOM components are imgpkg bundles."""
    names = TKG_BUNDLE_COMPONENTS if kind == "tkg" else TKR_BUNDLE_COMPONENTS
    return component in names


def highest_v_tag(tags: Iterable[str]) -> str | None:
    """The highest `v<N>` tag, as TKG picks compatibility images; other tags are ignored.

    imgpkg leaves `sha256-….imgpkg` tags in every repository it writes, so a plain "latest" sort
    would be wrong.
    """
    best: tuple[int, str] | None = None
    for tag in tags:
        match = _COUNTER_TAG.match(tag)
        if match and (best is None or int(match.group(1)) > best[0]):
            best = (int(match.group(1)), tag)
    return best[1] if best else None


def tkr_bom_tag(version: str) -> str:
    """The image tag of a BOM for a version: `+` becomes `_` (OCI tags cannot hold `+`).

    There is deliberately no reverse: component tags contain `_` that never was a `+`.
    """
    tag = version.replace("+", "_")
    try:
        Reference.parse(f"{TKG_BOM_PATH}:{tag}")
    except InvalidReferenceError:
        raise PlanError(f"version {version!r} does not make a valid image tag") from None
    return tag


def tkr_bom_filename(version: str) -> str:
    """The file name TKG uses for a TKR BOM (keeps the `+`)."""
    return f"tkr-bom-{version}.yaml"


@dataclass(frozen=True)
class BomImage:
    """One `components.<name>[i].images.<key>` entry of a BOM."""

    component: str
    index: int
    key: str
    image_path: str
    tag: str
    image_repository: str  # the per-image override, else the BOM's imageConfig.imageRepository
    has_own_repository: bool
    bundle_hint: bool  # by the vendor script's component rule
    origin: str  # "<file> components.<name>[i].images.<key>"

    @property
    def reference(self) -> str:
        """`<imageRepository>/<imagePath>:<tag>`, as TKG's GetFullImagePath builds it."""
        return f"{self.image_repository}/{self.image_path}:{self.tag}"

    def reference_under(self, prefix: str) -> str:
        """The reference with the BOM's prefix replaced (per-image overrides are kept)."""
        base = self.image_repository if self.has_own_repository else prefix
        return f"{base}/{self.image_path}:{self.tag}"


@dataclass(frozen=True)
class Bom:
    """A parsed TKG or TKR BOM: what the planner needs, not the whole document."""

    name: str
    kind: BomKind
    version: str
    image_repository: str
    images: tuple[BomImage, ...]
    default_tkr: str | None = None  # TKG BOMs: default.k8sVersion
    tkr_bom_path: str = "tkr-bom"
    tkr_compatibility_path: str = "tkr-compatibility"
    non_registry: tuple[NonRegistryArtifact, ...] = ()

    @property
    def tag(self) -> str:
        """The tag of this BOM's own image (`tkg-bom:<tag>` or `tkr-bom:<tag>`)."""
        return tkr_bom_tag(self.version)


@dataclass(frozen=True)
class TkgBomPointer:
    """A `supportedTKGBomVersions` row of a TKG compatibility document."""

    plugin_version: str
    image_path: str
    tag: str


@dataclass(frozen=True)
class TkgCompatibility:
    """A tkg-compatibility document; its `version` is its image tag."""

    name: str
    version: str
    boms: tuple[TkgBomPointer, ...]

    def bom_path_for(self, tag: str) -> str | None:
        """The repository path this document gives for a TKG BOM tag."""
        for pointer in self.boms:
            if pointer.tag == tag:
                return pointer.image_path
        return None


@dataclass(frozen=True)
class TkrCompatibility:
    """A tkr-compatibility document: which TKRs each TKG version supports."""

    name: str
    version: str
    releases: tuple[tuple[str, tuple[str, ...]], ...]  # (TKG version, TKR versions)

    def tkrs_for(self, tkg_version: str) -> tuple[str, ...]:
        """The TKR versions (with `+`) a TKG version supports."""
        for version, tkrs in self.releases:
            if version == tkg_version:
                return tkrs
        known = ", ".join(version for version, _ in self.releases)
        raise PlanError(
            f"{self.name}: managementClusterVersions has no {tkg_version}; known: {known}; "
            "use a newer tkr-compatibility document"
        )

    def all_tkrs(self) -> tuple[str, ...]:
        """Every TKR named for any TKG version, first mention first (the vendor script's walk)."""
        return tuple(dict.fromkeys(t for _, tkrs in self.releases for t in tkrs))


Compatibility = TkgCompatibility | TkrCompatibility


# --- parsing -------------------------------------------------------------------------------


def parse_bom(text: str, name: str, kind: BomKind | None = None) -> Bom:
    """Parse a TKG or TKR BOM; `kind` is detected from the content when not given."""
    root = load_yaml(text, name)
    root.mapping()
    kind = kind or _detect_bom_kind(root)
    repository = _image_repository(root)
    images = tuple(_bom_images(root, kind, repository))
    release = root.child("release", "a BOM names its version in release.version")
    default = root.get("default") if kind == "tkg" else None
    return Bom(
        name=name,
        kind=kind,
        version=release.child("version").string(),
        image_repository=repository,
        images=images,
        default_tkr=default.child("k8sVersion").string() if default else None,
        tkr_bom_path=_sub_path(root, "tkr-bom"),
        tkr_compatibility_path=_sub_path(root, "tkr-compatibility"),
        non_registry=tuple(_non_registry(root)),
    )


def _detect_bom_kind(root: Node) -> BomKind:
    if any(root.has(key) for key in ("tkr-bom", "default", "kindKubeadmConfigSpec")):
        return "tkg"
    if any(root.has(key) for key in ("kubeadmConfigSpec", "ova", "ami", "azure")):
        return "tkr"
    base = PurePath(root.file).name
    if base.startswith(("tkg-bom-", "tkr-bom-")):
        return "tkg" if base.startswith("tkg-bom-") else "tkr"
    raise root.error("cannot tell whether this is a TKG BOM or a TKR BOM; is this a BOM file?")


def _image_repository(root: Node) -> str:
    config = root.child("imageConfig", "every TKG/TKR BOM has imageConfig.imageRepository")
    node = config.child("imageRepository", "it is the registry prefix of every image")
    return _prefix(node)


def _prefix(node: Node) -> str:
    try:
        return parse_prefix(node.string(), "")
    except InvalidReferenceError as exc:
        raise node.error(str(exc)) from None


def _sub_path(root: Node, key: str) -> str:
    node = root.get(key)
    path = node.get("imagePath") if node else None
    return path.string() if path else key


def _bom_images(root: Node, kind: BomKind, repository: str) -> Iterable[BomImage]:
    components = root.child("components", "a BOM lists its images under components")
    for component, versions in components.items():
        for index, entry in enumerate(versions.elements()):
            images = entry.get("images")
            if images is None:
                continue  # binaries-only components (imgpkg, kapp, containerd, ...)
            for key, image in images.items():
                yield _bom_image(image, component, index, key, kind, repository)


def _bom_image(
    node: Node, component: str, index: int, key: str, kind: BomKind, repository: str
) -> BomImage:
    node.mapping()
    own = node.get("imageRepository")
    image = BomImage(
        component=component,
        index=index,
        key=key,
        image_path=node.child("imagePath").string(),
        tag=node.child("tag").string(),
        image_repository=_prefix(own) if own else repository,
        has_own_repository=own is not None,
        bundle_hint=is_bundle_component(kind, component),
        origin=f"{node.file} {node.path}",
    )
    try:
        Reference.parse(image.reference)
    except InvalidReferenceError as exc:
        raise node.error(f"{exc}; fix imagePath or tag") from None
    return image


def _non_registry(root: Node) -> Iterable[NonRegistryArtifact]:
    """OVAs, AMIs and Azure images: listed for people, never copied."""
    for node in _elements(root.get("ova")):
        what = f"{_field(node, 'name')} {_field(node, 'version')}{_osinfo(node)}"
        yield NonRegistryArtifact("ova", what, f"{node.file} {node.path}")
    ami = root.get("ami")
    for region, images in ami.items() if ami else ():
        for node in images.elements():
            what = f"{_field(node, 'id')} in {region}{_osinfo(node)}"
            yield NonRegistryArtifact("ami", what, f"{node.file} {node.path}")
    for node in _elements(root.get("azure")):
        parts = (_field(node, key) for key in ("publisher", "offer", "sku"))
        what = f"{'/'.join(parts)} {_field(node, 'version')}{_osinfo(node)}"
        yield NonRegistryArtifact("azure", what, f"{node.file} {node.path}")


def _elements(node: Node | None) -> Iterable[Node]:
    return node.elements() if node else ()


def _field(node: Node, key: str) -> str:
    found = node.get(key)
    return found.text() if found else "?"


def _osinfo(node: Node) -> str:
    info = node.get("osinfo")
    if info is None:
        return ""
    return f" ({' '.join(_field(info, key) for key in ('name', 'version', 'arch'))})"


def parse_compatibility(text: str, name: str) -> Compatibility:
    """Parse a tkg-compatibility or tkr-compatibility document (told apart by their keys)."""
    root = load_yaml(text, name)
    root.mapping()
    if root.has("managementClusterPluginVersions"):
        return _tkg_compatibility(root)
    if root.has("managementClusterVersions"):
        return _tkr_compatibility(root)
    raise root.error(
        "neither managementClusterPluginVersions (tkg-compatibility) nor "
        "managementClusterVersions (tkr-compatibility); is this a compatibility file?"
    )


def _counter_version(root: Node) -> str:
    node = root.child("version", "it is the document's image tag, v<number>")
    version = node.string()
    if not _COUNTER_TAG.match(version):
        raise node.error(f"expected v<number> (the image tag), found {version!r}")
    return version


def _tkg_compatibility(root: Node) -> TkgCompatibility:
    pointers = []
    for row in root.child("managementClusterPluginVersions").elements():
        plugin = row.child("version").string()
        for bom in row.child("supportedTKGBomVersions").elements():
            path, tag = bom.child("imagePath").string(), bom.child("tag").string()
            pointers.append(TkgBomPointer(plugin, path, tag))
    return TkgCompatibility(root.file, _counter_version(root), tuple(pointers))


def _tkr_compatibility(root: Node) -> TkrCompatibility:
    releases = []
    for row in root.child("managementClusterVersions").elements():
        tkrs = tuple(t.string() for t in row.child("supportedKubernetesVersions").elements())
        releases.append((row.child("version").string(), tkrs))
    return TkrCompatibility(root.file, _counter_version(root), tuple(releases))


def load_bom(path: Path | str, kind: BomKind | None = None) -> Bom:
    """Read and parse a BOM file; origins and errors use the path as given."""
    return parse_bom(read_text(path), str(path), kind)


def load_compatibility(path: Path | str) -> Compatibility:
    """Read and parse a compatibility file."""
    return parse_compatibility(read_text(path), str(path))


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prefixes:
    source: str | None  # None: each BOM's own imageConfig.imageRepository
    dest: str


def plan_from_boms(
    tkg_bom: Bom,
    tkr_boms: Sequence[Bom],
    compatibility: Sequence[Compatibility],
    dest_prefix: str,
    source_prefix: str | None = None,
    *,
    tkg_compatibility_path: str = TKG_COMPATIBILITY_PATH,
    created: str | None = None,
) -> Plan:
    """Every registry artifact of a TKG release, relocated under `dest_prefix`.

    Destinations follow the TKG_CUSTOM_IMAGE_REPOSITORY rule: `<dest_prefix>/<imagePath>` with
    the source tag. `source_prefix` replaces the BOMs' imageConfig.imageRepository (for reading
    from a mirror). The BOM and compatibility images themselves are added as metadata entries.
    """
    _check_inputs(tkg_bom, tkr_boms)
    source = parse_prefix(source_prefix, "source prefix") if source_prefix else None
    prefixes = _Prefixes(source, parse_prefix(dest_prefix))
    entries: list[PlanEntry] = []
    for bom in (tkg_bom, *tkr_boms):
        entries.extend(_image_entry(image, prefixes) for image in bom.images)
        entries.append(_bom_entry(bom, tkg_bom, compatibility, prefixes))
    for doc in compatibility:
        path = tkg_bom.tkr_compatibility_path
        if isinstance(doc, TkgCompatibility):
            path = tkg_compatibility_path
        origin = f"{doc.name} version"
        entries.append(_metadata_entry(path, doc.version, origin, tkg_bom, prefixes))
    boms = (tkg_bom, *tkr_boms)
    return Plan(
        entries=tuple(entries),
        sources=(*(bom.name for bom in boms), *(doc.name for doc in compatibility)),
        created=created or utc_now(),
        not_registry_content=tuple(a for bom in boms for a in bom.non_registry),
        destination_prefix=prefixes.dest,
    )


def _check_inputs(tkg_bom: Bom, tkr_boms: Sequence[Bom]) -> None:
    if tkg_bom.kind != "tkg":
        raise PlanError(f"{tkg_bom.name}: is a TKR BOM; the first input must be the TKG BOM")
    seen: dict[str, str] = {}
    for bom in tkr_boms:
        if bom.kind != "tkr":
            raise PlanError(f"{bom.name}: is a TKG BOM where a TKR BOM was expected")
        if bom.version in seen:
            raise PlanError(
                f"{bom.name}: TKR {bom.version} was already given by {seen[bom.version]}"
            )
        seen[bom.version] = bom.name
    default = tkg_bom.default_tkr
    if default is None:
        raise PlanError(f"{tkg_bom.name}: default.k8sVersion: missing; TKG needs its default TKR")
    if default not in seen:
        raise PlanError(
            f"{tkg_bom.name}: default.k8sVersion {default} has no TKR BOM among the inputs; "
            f"add {tkr_bom_filename(default)}"
        )


def _image_entry(image: BomImage, prefixes: _Prefixes) -> PlanEntry:
    source = image.reference_under(prefixes.source) if prefixes.source else image.reference
    return PlanEntry.create(
        source,
        f"{prefixes.dest}/{image.image_path}",
        kind=EntryKind.BUNDLE if image.bundle_hint else EntryKind.IMAGE,
        origins=(image.origin,),
    )


def _bom_entry(
    bom: Bom, tkg_bom: Bom, compatibility: Sequence[Compatibility], prefixes: _Prefixes
) -> PlanEntry:
    if bom.kind == "tkr":
        path = tkg_bom.tkr_bom_path
    else:
        pointers = (
            doc.bom_path_for(bom.tag) for doc in compatibility if isinstance(doc, TkgCompatibility)
        )
        path = next((p for p in pointers if p), TKG_BOM_PATH)
    return _metadata_entry(path, bom.tag, f"{bom.name} release.version", bom, prefixes)


def _metadata_entry(path: str, tag: str, origin: str, bom: Bom, prefixes: _Prefixes) -> PlanEntry:
    """A BOM or compatibility image; it lives under the same prefix as `bom`'s images."""
    source = prefixes.source or bom.image_repository
    return PlanEntry.create(
        f"{source}/{path}:{tag}",
        f"{prefixes.dest}/{path}",
        kind=EntryKind.METADATA,
        origins=(origin,),
    )
