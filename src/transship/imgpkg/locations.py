"""imgpkg's ImageLocations record, built byte for byte as imgpkg builds it, served from memory.

The one image transship makes itself is imgpkg's **ImageLocations** record: after a bundle is
relocated, `imgpkg copy` pushes `<repo>:sha256-<bundle hex>.image-locations.imgpkg`, a one-file
image that lists the images of the bundle's `.imgpkg/images.yml` and which of them are bundles.
`imgpkg pull` and kapp-controller trust it instead of checking every digest, and *fail* on one
they cannot read, so it is built here exactly as imgpkg builds it (format notes:
imgpkg-format.md §1, §3.3;
imgpkg `bundle/locations_configs.go`, `bundle/locations_config.go`, `image/tar_image.go`):

* tar (USTAR, as Go's archive/tar writes it): a `.` directory entry (mode 0700) then
  `image-locations.yml` (mode 0600), uid/gid 0, mtime 0, then two zero blocks;
* one `application/vnd.docker.image.rootfs.diff.tar.gzip` layer, a go-containerregistry style
  config (empty os/architecture, zero times, one `imgpkg` history entry, no labels) and a Docker
  schema 2 manifest;
* YAML as sigs.k8s.io/yaml writes it: a leading `---`, keys sorted, `images` sorted by `image`.

The only deliberate difference is the gzip stream: "stored" deflate blocks instead of Go's
compressor, so the bytes (and therefore the digest recorded in a plan) are the same on every
machine and every zlib build; gzip readers (Go's included) accept them.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from transship.digest import Digest
from transship.errors import UsageError
from transship.manifest import DOCKER_MANIFEST, Manifest
from transship.memory import GeneratedImage, MemoryEndpoint

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

LOCATIONS_API_VERSION = "imgpkg.carvel.dev/v1alpha1"
LOCATIONS_KIND = "ImageLocations"
LOCATIONS_FILE = "image-locations.yml"
GENERATED_REGISTRY = "generated.transship.invalid"  # pseudo host of generated sources in plans
_BLOCK = 512
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's time.Time{} in JSON


def imgpkg_tag(digest: Digest) -> str:
    """`sha256-<hex>.imgpkg`: the tag imgpkg gives every manifest it copies (keeps it from GC)."""
    return f"{digest.algorithm}-{digest.hex}.imgpkg"


def image_locations_tag(bundle: Digest) -> str:
    """`sha256-<bundle hex>.image-locations.imgpkg` (imgpkg's `locationsTagFmt`)."""
    return f"{bundle.algorithm}-{bundle.hex}.image-locations.imgpkg"


@dataclass(frozen=True, order=True)
class ImageLocation:
    """One `images[]` row of an ImageLocations record: an `images.yml` reference as written."""

    image: str  # the original `<repo>@<digest>` of the bundle's images.yml (normalised)
    is_bundle: bool


def image_locations_yaml(locations: Iterable[ImageLocation]) -> bytes:
    """The `image-locations.yml` text, byte for byte as imgpkg's `AsBytes` produces it.

    References are restricted to the reference grammar (no quoting needed in YAML); anything
    else is refused rather than risking a file imgpkg cannot parse.
    """
    rows = sorted(set(locations))
    lines = ["---", f"apiVersion: {LOCATIONS_API_VERSION}"]
    if not rows:
        lines.append("images: null")  # Go marshals the nil slice NoteCopy starts from
    else:
        lines.append("images:")
        for row in rows:
            if not _plain_yaml_scalar(row.image):
                raise UsageError(f"{row.image!r} is not an image reference; cannot record it")
            lines.append(f"- image: {row.image}")
            lines.append(f"  isBundle: {'true' if row.is_bundle else 'false'}")
    lines.append(f"kind: {LOCATIONS_KIND}")
    return ("\n".join(lines) + "\n").encode()


def _plain_yaml_scalar(text: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@[]")
    return bool(text) and text[0].isalnum() and set(text) <= allowed and ": " not in text


def build_image_locations(locations: Iterable[ImageLocation]) -> GeneratedImage:
    """The ImageLocations image for one bundle; same input, same bytes, same digest (built
    once per run: a plan's check of its digest and the copy task both ask for it)."""
    return _build_image_locations(tuple(locations))


@lru_cache(maxsize=1024)
def _build_image_locations(locations: tuple[ImageLocation, ...]) -> GeneratedImage:
    content = image_locations_yaml(locations)
    tar = _ustar(".", b"", 0o700, directory=True)
    tar += _ustar(LOCATIONS_FILE, content, 0o600)
    tar += b"\0" * (2 * _BLOCK)
    layer = _gzip_stored(tar)
    return build_single_layer_image(layer, diff_id=Digest.of(tar))


def build_single_layer_image(layer: bytes, diff_id: Digest) -> GeneratedImage:
    """A Docker schema 2 image of one gzip'd tar layer, as imgpkg (go-containerregistry) writes."""
    config = _compact(
        {
            "architecture": "",
            "created": _ZERO_TIME,
            "history": [{"author": "imgpkg", "created": _ZERO_TIME, "created_by": "imgpkg"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
            "config": {},
        }
    )
    config_digest, layer_digest = Digest.of(config), Digest.of(layer)
    raw = _compact(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": _descriptor(DOCKER_CONFIG, config, config_digest),
            "layers": [_descriptor(DOCKER_LAYER, layer, layer_digest)],
        }
    )
    manifest = Manifest.parse(raw, DOCKER_MANIFEST, "generated image")
    return GeneratedImage(manifest, {config_digest: config, layer_digest: layer})


def _descriptor(media_type: str, data: bytes, digest: Digest) -> dict[str, object]:
    """Field order of go-containerregistry's Descriptor: mediaType, size, digest."""
    return {"mediaType": media_type, "size": len(data), "digest": str(digest)}


def _compact(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _octal(value: int, width: int) -> bytes:
    """Go's archive/tar number field: zero-padded octal, NUL-terminated."""
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _ustar(name: str, data: bytes, mode: int, *, directory: bool = False) -> bytes:
    """One USTAR entry (header + padded data) with the fields Go's tar.Writer emits for imgpkg."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar entry name {name!r} is over 100 bytes")
    header = bytearray(_BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[124:136] = _octal(len(data), 12)
    header[136:148] = _octal(0, 12)  # mtime: Go writes the zero time as the epoch
    header[156:157] = b"5" if directory else b"0"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[329:337] = _octal(0, 8)  # devmajor
    header[337:345] = _octal(0, 8)  # devminor
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    padding = (-len(data)) % _BLOCK
    return bytes(header) + data + b"\0" * padding


def _gzip_stored(data: bytes) -> bytes:
    """gzip (RFC 1952) with stored deflate blocks: valid everywhere, identical everywhere."""
    out = bytearray(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # mtime 0, OS unknown
    step = 0xFFFF
    starts = range(0, len(data), step) if data else range(1)
    for start in starts:
        chunk = data[start : start + step]
        final = start + step >= len(data)
        out.append(1 if final else 0)
        out += struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF)
        out += chunk
    out += struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return bytes(out)


def image_locations_endpoint(locations: Iterable[ImageLocation]) -> MemoryEndpoint:
    """An endpoint serving the ImageLocations image of `locations` (for one copy task)."""
    return MemoryEndpoint([build_image_locations(locations)], label="generated")
