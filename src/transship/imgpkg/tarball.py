"""imgpkg `copy --to-tar` archives as a read-only `Endpoint`, read in place.

The format (imgpkg-format.md §5; imgpkg `imagetar/`, `imagedesc/`): an uncompressed tar whose
`manifest.json` lists the top-level items, each an `Image` or an `ImageIndex` descriptor with
`Refs` (source references by digest), `Tag`, the exact manifest and config bytes as JSON
strings (`Raw`) and the layer list; every layer blob is a member `sha256-<hex>.tar.gz`, stored
once whatever its media type. Manifests and configs are not members.

Like `layout.OCILayoutTar` the archive is indexed once (member name → offset, size) with the same
hostile-tar rules (`layout.archive.scan_tar`: no `..`, absolute paths, links, devices, duplicate
members, sizes past the end), and layers are read with `pread`, hashed as they stream. Every
manifest and config in `manifest.json` is checked against its digest when the archive is opened,
and every layer the manifests reference must be a member of the right size, so a truncated or
tampered archive is refused before anything is pushed. (imgpkg's parallel writer leaves
zero-filled layer members in an interrupted archive: they fail their digest while streaming.)
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transship.digest import Digest
from transship.errors import (
    IntegrityError,
    InvalidDigestError,
    LayoutError,
    TransshipError,
    io_error,
)
from transship.layout.archive import COMPRESSED_MAGIC, TarMember, refuse_compressed, scan_tar
from transship.layout.index import LayoutIndex
from transship.layout.reader import BlobFile, LayoutReader
from transship.manifest import Descriptor, Manifest, Referrer
from transship.reference import Reference, is_tag

MANIFEST_FILE = "manifest.json"
#: a TKG per-image tar lists a few items; a big bundle tar a few thousand: far below this
MAX_MANIFEST_JSON_BYTES = 256 * 1024 * 1024
#: imgpkg's descriptor label on the bundle a `copy -b --to-tar` started from
ROOT_BUNDLE_LABEL = "dev.carvel.imgpkg.copy.root-bundle"
#: the image label that makes an image an imgpkg bundle (imgpkg-format.md §2.1)
BUNDLE_LABEL = "dev.carvel.imgpkg.bundle"
MAX_NESTING = 4
_LAYER_MEMBER = re.compile(r"^([a-z0-9]+)-([0-9a-f]+)\.tar\.gz$")


@dataclass(frozen=True)
class TarItem:
    """One top-level item of `manifest.json`: what `imgpkg copy --tar` pushes and tags."""

    manifest: Manifest
    refs: tuple[str, ...]
    tag: str  # the source tag to re-apply ('' for none)
    orig_ref: str  # the images.yml reference it was copied for ('' for none)
    labels: tuple[tuple[str, str], ...] = ()
    is_bundle: bool = False  # its config carries `dev.carvel.imgpkg.bundle`

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @property
    def is_root_bundle(self) -> bool:
        return any(key == ROOT_BUNDLE_LABEL for key, _ in self.labels)

    @property
    def source_repository(self) -> str:
        """The repository path of the first `Refs` entry ('' if it names none)."""
        for ref in self.refs:
            try:
                return Reference.parse(ref).repository
            except TransshipError:
                continue
        return ""

    @property
    def name(self) -> str:
        """For messages: the first source reference, or the digest."""
        return self.refs[0] if self.refs else str(self.digest)


@dataclass
class _Parsed:
    """What `manifest.json` holds once checked: items, and every manifest/config by digest."""

    items: list[TarItem] = field(default_factory=list)
    memory: dict[Digest, bytes] = field(default_factory=dict)
    layers: dict[Digest, tuple[str, int]] = field(default_factory=dict)  # digest → (where, size)


class _MemoryBlob:
    """Bytes already held (manifests and configs come from `manifest.json`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.size = len(data)

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


def is_imgpkg_tar(path: Path) -> bool:
    """True if `path` is an uncompressed tar whose first member is `manifest.json`.

    Only the first header is read; the full checks happen when the archive is opened.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return False
    if len(head) < 512 or any(head.startswith(magic) for magic in COMPRESSED_MAGIC):
        return False
    try:
        info = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.TarError:
        return False
    return info.name.removeprefix("./") == MANIFEST_FILE


class ImgpkgTar(LayoutReader):
    """A read-only `Endpoint` over one imgpkg tar: all repositories share its one store.

    Manifests are found by digest (any repository) and by their source tag under the source
    repository of their first `Refs` entry; `items` is the list `imgpkg copy --tar` imports.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.label = f"imgpkg-tar:{self.path}"
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise io_error(f"{self.label}: opening archive", exc) from None
        self._closed = False
        try:
            self._load()
        except OSError as exc:
            self._release()
            raise io_error(f"{self.label}: reading archive", exc) from None
        except BaseException:
            self._release()
            raise

    def _pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def release(self) -> None:
        """Close the file now (synchronous: for error paths outside the event loop)."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        refuse_compressed(self._pread(8, 0), self.label, "imgpkg writes plain tars")
        files = scan_tar(self.path, size)
        found = files.get(MANIFEST_FILE)
        if found is None:
            raise LayoutError(f"{self.label}: not an imgpkg archive (no top-level {MANIFEST_FILE})")
        offset, length = found
        if length > MAX_MANIFEST_JSON_BYTES:
            raise LayoutError(
                f"{self.label}: {MANIFEST_FILE} is over {MAX_MANIFEST_JSON_BYTES} bytes"
            )
        raw = TarMember(self._pread, offset, length).read(length)
        self._members: dict[Digest, tuple[int, int]] = {}
        for name, member in files.items():
            match = _LAYER_MEMBER.match(name)
            if match is None:
                continue  # imgpkg writes nothing else; an extra file is never read
            try:
                self._members[Digest.parse(f"{match[1]}:{match[2]}")] = member
            except InvalidDigestError:
                continue
        parsed = parse_manifest_json(raw, self.label)
        for digest, (where, expected) in sorted(parsed.layers.items()):
            found = self._members.get(digest)
            if found is None:
                raise LayoutError(
                    f"{self.label}: {where} needs layer {digest.short}, which the archive lacks "
                    f"(no member {digest.algorithm}-{digest.hex}.tar.gz); the archive is "
                    "incomplete: write it again"
                )
            if found[1] != expected:
                raise IntegrityError(
                    f"{self.label}: member {digest.algorithm}-{digest.hex}.tar.gz has "
                    f"{found[1]} bytes, {where} says {expected}"
                )
        self.items = parsed.items
        self._by_digest = {item.digest: item for item in self.items}
        self._memory = parsed.memory
        self._index = LayoutIndex.empty()
        for item in self.items:
            if item.tag:
                self._index.set(item.source_repository, item.tag, item.manifest.descriptor)

    def item(self, digest: Digest) -> TarItem | None:
        """The top-level item with this manifest digest, if any."""
        return self._by_digest.get(digest)

    def layer_bytes(self) -> int:
        """Bytes of every layer member the manifests use: what a load reads at most."""
        return sum(size for _, size in self._members.values())

    def blob_sizes(self) -> dict[Digest, int]:
        """Every blob (configs and layers) a push of this archive may send, with its size."""
        sizes = {digest: size for digest, (_, size) in self._members.items()}
        for item in self.items:
            for manifest in self._walk(item.manifest):
                if manifest.config is not None:
                    sizes[manifest.config.digest] = manifest.config.size
        return sizes

    def _walk(self, manifest: Manifest, depth: int = 0) -> Iterator[Manifest]:
        yield manifest
        if depth < MAX_NESTING:
            for child in manifest.manifests:
                raw = self._memory.get(child.digest)
                if raw is not None:
                    yield from self._walk(
                        Manifest.parse(raw, child.media_type, self.label), depth + 1
                    )

    def graph_size(self, manifest: Manifest) -> int:
        """Bytes of a manifest's whole graph (manifests, configs, layers; each once): the
        task's share of a load's progress total."""
        seen: dict[Digest, int] = {}
        for node in self._walk(manifest):
            seen[node.digest] = node.size
            if node.config is not None:
                seen[node.config.digest] = node.config.size
            for layer in node.layers:
                seen[layer.digest] = layer.size
        return sum(seen.values())

    def manifests(self) -> dict[Digest, int]:
        """Every manifest (top-level and children) with its size."""
        out: dict[Digest, int] = {}
        for item in self.items:
            for manifest in self._walk(item.manifest):
                out[manifest.digest] = manifest.size
        return out

    def read_layer(self, digest: Digest, limit: int) -> bytes:
        """A whole layer in memory (bundle layers: small YAML), verified; refuses over `limit`."""
        found = self._members.get(digest)
        if found is None:
            raise LayoutError(f"{self.label}: no layer {digest.short} in the archive")
        offset, size = found
        if size > limit:
            raise LayoutError(f"{self.label}: layer {digest.short} is over {limit} bytes")
        data = TarMember(self._pread, offset, size).read(size)
        if Digest.of(data, digest.algorithm) != digest:
            raise IntegrityError(f"{self.label}: layer {digest.short} does not match its digest")
        return data

    # -- LayoutReader primitives ------------------------------------------------------------

    def read_extra(self, name: str) -> bytes | None:
        return None

    def _blob_size(self, digest: Digest) -> int | None:
        data = self._memory.get(digest)
        if data is not None:
            return len(data)
        found = self._members.get(digest)
        return found[1] if found else None

    def _open_blob_file(self, digest: Digest) -> BlobFile | None:
        data = self._memory.get(digest)
        if data is not None:
            return _MemoryBlob(data)
        if self._fd < 0:
            raise LayoutError(f"{self.label} is closed")
        found = self._members.get(digest)
        return TarMember(self._pread, *found) if found else None

    async def list_referrers(self, repository: str, digest: Digest) -> tuple[Referrer, ...] | None:
        """None: an imgpkg tar has no referrers API; signatures `imgpkg copy
        --cosign-signatures` wrote are items with `sha256-<hex>.sig` tags, found through
        `list_tags` as on a registry without the API."""
        return None

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        raise LayoutError(f"{self.label} is read-only")

    async def put_blob(self, repository: str, descriptor: Descriptor, chunks: Any) -> int:
        raise LayoutError(f"{self.label} is read-only")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()


# -- manifest.json --------------------------------------------------------------------------


def parse_manifest_json(raw: bytes, label: str) -> _Parsed:
    """Check and index `manifest.json`: every `Raw` against its digest, configs against the
    manifests that name them, children of indexes present; layers to be checked by the caller."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LayoutError(f"{label}: {MANIFEST_FILE} is not valid JSON") from None
    if not isinstance(doc, list):
        raise LayoutError(f"{label}: {MANIFEST_FILE} is not a list of items")
    if not doc:  # imgpkg never writes one: a load of it would push nothing and say done
        raise LayoutError(
            f"{label}: {MANIFEST_FILE} lists no image; the tar is damaged or not what imgpkg "
            "copy --to-tar wrote: export it again"
        )
    parsed = _Parsed()
    for number, element in enumerate(doc):
        where = f"{label}: {MANIFEST_FILE} item {number}"
        if not isinstance(element, dict):
            raise LayoutError(f"{where} is not an object")
        image, index = element.get("Image"), element.get("ImageIndex")
        if (image is None) == (index is None):
            raise LayoutError(f"{where}: needs exactly one of Image and ImageIndex")
        if image is not None:
            manifest, is_bundle = _image(image, where, parsed)
            desc = image
        else:
            manifest, is_bundle = _index(index, where, parsed, 0), False
            desc = index
        parsed.items.append(
            TarItem(
                manifest,
                refs=_strings(desc.get("Refs"), f"{where} Refs"),
                tag=_tag(desc.get("Tag"), f"{where} Tag"),
                orig_ref=_string(desc.get("OrigRef"), f"{where} OrigRef"),
                labels=_labels(desc.get("Labels"), f"{where} Labels"),
                is_bundle=is_bundle,
            )
        )
    return parsed


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LayoutError(f"{where} is not an object")
    return value


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LayoutError(f"{where} is not a string")
    return value


def _tag(value: Any, where: str) -> str:
    """The item's tag: pushed as `/v2/REPO/manifests/TAG`, so a value outside the tag grammar
    (`../../other/manifests/x`, a space) is refused here, naming the item, not sent."""
    tag = _string(value, where)
    if tag and not is_tag(tag):
        raise LayoutError(
            f"{where} {tag!r} is not a tag (1-128 of letters, digits, '_', '.', '-'); the tar "
            "is damaged or was not written by imgpkg: export it again"
        )
    return tag


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LayoutError(f"{where} is not a list of strings")
    return tuple(value)


def _labels(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise LayoutError(f"{where} is not an object")
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def _digest(value: Any, where: str) -> Digest:
    try:
        return Digest.parse(_string(value, where))
    except InvalidDigestError as exc:
        raise LayoutError(f"{where}: {exc.message}") from None


def _raw(value: Any, digest: Digest, where: str) -> bytes:
    """The exact bytes of a `Raw` string, checked against the digest the archive states."""
    data = _string(value, f"{where} Raw").encode("utf-8", "surrogatepass")
    actual = Digest.of(data, digest.algorithm)
    if actual != digest:
        raise IntegrityError(f"{where}: bytes hash to {actual.short}, not {digest.short}")
    return data


def _manifest(desc: dict[str, Any], where: str, parsed: _Parsed) -> Manifest:
    digest = _digest(desc.get("Digest"), f"{where} Digest")
    raw = _raw(desc.get("Raw"), digest, where)
    media_type = _string(desc.get("MediaType"), f"{where} MediaType") or None
    manifest = Manifest.parse(raw, media_type, where)
    parsed.memory[digest] = raw
    return manifest


def _image(desc: Any, where: str, parsed: _Parsed) -> tuple[Manifest, bool]:
    """An `ImageDescriptor`: manifest and config verified; returns (manifest, is a bundle)."""
    desc = _object(desc, where)
    manifest = _manifest(
        _object(desc.get("Manifest"), f"{where} Manifest"), f"{where} manifest", parsed
    )
    if manifest.is_index or manifest.config is None:
        raise LayoutError(f"{where}: Image holds an index manifest")
    config = _object(desc.get("Config"), f"{where} Config")
    config_digest = _digest(config.get("Digest"), f"{where} Config Digest")
    if config_digest != manifest.config.digest:
        raise IntegrityError(
            f"{where}: config {config_digest.short} is not the manifest's "
            f"{manifest.config.digest.short}"
        )
    config_raw = _raw(config.get("Raw"), config_digest, f"{where} config")
    if len(config_raw) != manifest.config.size:
        raise IntegrityError(
            f"{where}: config has {len(config_raw)} bytes, the manifest says {manifest.config.size}"
        )
    parsed.memory[config_digest] = config_raw
    for layer in manifest.layers:
        if layer.urls:
            continue  # non-distributable: imgpkg leaves it out unless asked, so do we
        parsed.layers.setdefault(layer.digest, (f"{where} ({manifest.digest.short})", layer.size))
    return manifest, _has_bundle_label(config_raw)


def _index(desc: Any, where: str, parsed: _Parsed, depth: int) -> Manifest:
    """An `ImageIndexDescriptor`: the index and every child described inline, verified."""
    desc = _object(desc, where)
    if depth > MAX_NESTING:
        raise LayoutError(f"{where}: indexes nested deeper than {MAX_NESTING} levels")
    manifest = _manifest(desc, f"{where} index", parsed)
    if not manifest.is_index:
        raise LayoutError(f"{where}: ImageIndex holds an image manifest")
    children: set[Digest] = set()
    for i, image in enumerate(desc.get("Images") or []):
        children.add(_image(image, f"{where} Images[{i}]", parsed)[0].digest)
    for i, nested in enumerate(desc.get("Indexes") or []):
        children.add(_index(nested, f"{where} Indexes[{i}]", parsed, depth + 1).digest)
    for child in manifest.manifests:
        if child.digest not in children:
            raise LayoutError(
                f"{where}: the index lists {child.digest.short}, which the archive does not hold"
            )
    return manifest


def _has_bundle_label(config_raw: bytes) -> bool:
    try:
        config = json.loads(config_raw)
    except (ValueError, UnicodeDecodeError):
        return False
    inner = config.get("config") if isinstance(config, dict) else None
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    return isinstance(labels, dict) and BUNDLE_LABEL in labels


__all__ = [
    "BUNDLE_LABEL",
    "MANIFEST_FILE",
    "ROOT_BUNDLE_LABEL",
    "ImgpkgTar",
    "TarItem",
    "is_imgpkg_tar",
    "parse_manifest_json",
]
