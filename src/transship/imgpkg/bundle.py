"""imgpkg's on-registry formats that planning reads: bundle label, bundle layer, ImagesLock.

Format notes: imgpkg-format.md §2 and §4.1. Readers follow imgpkg's own rules (one layer, an
entry `.imgpkg/images.yml`, digest references only) so that whatever transship accepts, imgpkg
and kapp-controller accept too. Layers come from registries, so every read is bounded.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import zlib
from dataclasses import dataclass

from transship.errors import BundleError, InvalidReferenceError
from transship.plan._yaml import Node, load_yaml
from transship.reference import DOCKER_HUB, Reference

BUNDLE_LABEL = "dev.carvel.imgpkg.bundle"
IMGPKG_DIR = ".imgpkg"
IMAGES_LOCK_FILE = "images.yml"
LOCK_API_VERSION = "imgpkg.carvel.dev/v1alpha1"
GGCR_DOCKER_HUB = "index.docker.io"

MAX_LAYER_BYTES = 64 * 1024 * 1024  # compressed bundle / BOM layer: they hold YAML, not binaries
MAX_UNPACKED_BYTES = 512 * 1024 * 1024  # a gzip bomb stops here
MAX_FILE_BYTES = 16 * 1024 * 1024  # one YAML file


@dataclass(frozen=True)
class LockedImage:
    """One `images[]` row of an ImagesLock."""

    image: str  # normalised as imgpkg does (go-containerregistry `name.NewDigest(...).Name()`)
    reference: Reference  # the same, parsed (always carries the digest)


def ggcr_name(ref: Reference) -> str:
    """`<registry>/<repository>@<digest>` spelled as go-containerregistry spells it.

    imgpkg writes ImageLocations with these names, so Docker Hub is `index.docker.io`.
    """
    registry = GGCR_DOCKER_HUB if ref.registry == DOCKER_HUB else ref.registry
    return f"{registry}/{ref.repository}@{ref.digest}"


def parse_images_lock(text: str, name: str) -> tuple[LockedImage, ...]:
    """An ImagesLock (`.imgpkg/images.yml`), checked as strictly as imgpkg checks it."""
    root = load_yaml(text, name)
    root.only_keys(frozenset({"apiVersion", "kind", "images"}))
    api = root.child("apiVersion", f"an ImagesLock has 'apiVersion: {LOCK_API_VERSION}'")
    if api.value != LOCK_API_VERSION:
        raise api.error(f"expected {LOCK_API_VERSION}, found {api.value!r}")
    kind = root.child("kind", "an ImagesLock has 'kind: ImagesLock'")
    if kind.value != "ImagesLock":
        raise kind.error(f"expected ImagesLock, found {kind.value!r}")
    images = root.get("images")
    return tuple(_locked(node) for node in (images.elements() if images else ()))


def _locked(node: Node) -> LockedImage:
    node.only_keys(frozenset({"image", "annotations"}))
    image = node.child("image", "each entry names an image by digest").string()
    try:
        ref = Reference.parse(image)
    except InvalidReferenceError as exc:
        raise node.error(str(exc)) from None
    if ref.digest is None:
        raise node.error(f"{image!r} is not a digest reference (imgpkg requires <repo>@sha256:…)")
    ref = Reference(ref.registry, ref.repository, None, ref.digest)
    return LockedImage(ggcr_name(ref), ref)


# --- layers ---------------------------------------------------------------------------------


class _Capped(io.RawIOBase):
    """Decompressed layer bytes, refusing to produce more than `limit` (gzip bombs)."""

    def __init__(self, source: gzip.GzipFile, limit: int, where: str) -> None:
        self._source = source
        self._left = limit
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise BundleError(
                f"{self._where}: layer unpacks to more than {MAX_UNPACKED_BYTES} bytes; refusing"
            )
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


@dataclass(frozen=True)
class TarFile:
    """A regular file found in a layer."""

    name: str  # normalised: no leading `./` or `/`
    data: bytes


def _normalise(name: str) -> str:
    name = name.replace("\\", "/")  # old Windows imgpkg builds (image/dir_image.go accepts it)
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return "" if cleaned == "." else cleaned


def find_file(layer: bytes, path: str, where: str) -> bytes | None:
    """The bytes of the regular file at `path` inside the layer, or None if absent."""
    return _scan(layer, where, wanted=path).get(path)


def only_regular_file(layer: bytes, where: str) -> TarFile:
    """The single regular file of a layer (how TKG's BOM images are read); refuse otherwise."""
    files = _scan(layer, where, wanted=None)
    if len(files) != 1:
        names = ", ".join(sorted(files)[:5]) or "none"
        raise BundleError(
            f"{where}: expected exactly one file in the image, found {len(files)} ({names}); "
            "is this a BOM or compatibility image?"
        )
    name, data = next(iter(files.items()))
    return TarFile(name, data)


def _scan(layer: bytes, where: str, wanted: str | None) -> dict[str, bytes]:
    """Regular files of the layer: all of them, or only `wanted` (others are skipped unread)."""
    found: dict[str, bytes] = {}
    try:
        unzipped = gzip.GzipFile(fileobj=io.BytesIO(layer), mode="rb")
        capped = io.BufferedReader(_Capped(unzipped, MAX_UNPACKED_BYTES, where))
        with tarfile.open(fileobj=capped, mode="r|") as tar:
            for info in tar:
                name = _normalise(info.name)
                if not info.isreg() or (wanted is not None and name != wanted):
                    continue
                if info.size > MAX_FILE_BYTES:
                    raise BundleError(f"{where}: {name} is over {MAX_FILE_BYTES} bytes; refusing")
                handle = tar.extractfile(info)
                found[name] = handle.read() if handle else b""
                if wanted is None and len(found) > 100:
                    break  # enough to say "not a single file"
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{where}: layer is not a gzip'd tar ({exc})") from None
    return found
