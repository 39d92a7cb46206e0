"""Write imgpkg `copy --to-tar` archives: the vendor's format, from any `Endpoint`.

Byte for byte what imgpkg v0.36 writes (imgpkg-format.md §5; `imagetar/tar_writer.go`): a plain
USTAR tar, every entry a regular file with mode 0644, uid/gid 0, mtime 0, no user names and no
record padding; `manifest.json` first (Go's `json.Marshal` of the descriptors: field order as
declared, `<`, `>`, `&` escaped), items sorted by `Manifest.Digest/Config.Digest` (images) or
`Digest` (indexes); then each distinct layer once as `<alg>-<hex>.tar.gz`, sorted by digest.
Layers stream from the source hashed (the endpoint verifies them), straight into a temporary
file that is renamed into place only when complete, so a killed writer leaves no half archive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.errors import IntegrityError, UsageError, io_error
from transship.fsutil import atomic_file
from transship.imgpkg.tarball import MANIFEST_FILE, MAX_NESTING
from transship.manifest import Descriptor, Manifest
from transship.ratelimit import TokenBucket

_BLOCK = 512


@dataclass(frozen=True)
class TarSource:
    """One top-level item to write: where its manifest is read, and how imgpkg names it."""

    endpoint: Endpoint
    repository: str  # in the endpoint
    identifier: str  # tag or digest there
    ref_base: str  # `<registry>/<repository>`: `Refs` are `<ref_base>@<digest>`
    tag: str = ""  # re-applied by `imgpkg copy --tar` (the root bundle or `-i` image)
    orig_ref: str = ""  # the images.yml reference a bundle's image was copied for
    labels: tuple[tuple[str, str], ...] = ()  # imgpkg descriptor labels (root-bundle)


@dataclass
class _Collected:
    items: list[tuple[str, dict[str, Any]]]  # (sort key, manifest.json element)
    layers: dict[Digest, tuple[TarSource, Descriptor]]


def _go_json(doc: Any) -> bytes:
    """`json.Marshal` as Go writes it: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode()


def _is_layer(media_type: str) -> bool:
    """go-containerregistry's `MediaType.IsLayer`: only layers carry a DiffID."""
    return "rootfs.diff.tar" in media_type or "image.layer." in media_type


async def _image(
    source: TarSource, manifest: Manifest, tag: str, out: _Collected, *, top: TarSource | None
) -> dict[str, Any]:
    assert manifest.config is not None
    config_raw = await _read_small(source, manifest.config)
    diff_ids: list[str] = []
    try:
        config = json.loads(config_raw)
        diff_ids = [str(d) for d in ((config.get("rootfs") or {}).get("diff_ids") or [])]
    except (ValueError, AttributeError):
        diff_ids = []
    layers = []
    for number, layer in enumerate(manifest.layers):
        if not layer.urls:
            out.layers.setdefault(layer.digest, (source, layer))
        diff_id = diff_ids[number] if _is_layer(layer.media_type) and number < len(diff_ids) else ""
        layers.append(
            {
                "MediaType": layer.media_type,
                "Digest": str(layer.digest),
                "DiffID": diff_id,
                "Size": layer.size,
            }
        )
    return {
        "Refs": [f"{source.ref_base}@{manifest.digest}"],
        "Layers": layers,
        "Config": {"Digest": str(manifest.config.digest), "Raw": config_raw.decode()},
        "Manifest": {
            "MediaType": manifest.media_type,
            "Digest": str(manifest.digest),
            "Raw": manifest.raw.decode(),
        },
        "Tag": tag,
        "OrigRef": top.orig_ref if top else "",
        "Labels": dict(top.labels) if top and top.labels else None,
    }


async def _index(
    source: TarSource, manifest: Manifest, tag: str, out: _Collected, depth: int, *, top: bool
) -> dict[str, Any]:
    if depth > MAX_NESTING:
        raise UsageError(f"{source.ref_base}@{manifest.digest}: indexes nested too deeply")
    images: list[dict[str, Any]] = []
    indexes: list[dict[str, Any]] = []
    for child in manifest.manifests:
        found = await source.endpoint.get_manifest(source.repository, str(child.digest))
        if found.is_index:
            indexes.append(await _index(source, found, tag, out, depth + 1, top=False))
        else:
            images.append(await _image(source, found, tag, out, top=None))
    return {
        "Refs": [f"{source.ref_base}@{manifest.digest}"],
        "Images": images or None,
        "Indexes": indexes or None,
        "MediaType": manifest.media_type,
        "Digest": str(manifest.digest),
        "Raw": manifest.raw.decode(),
        "Tag": tag,
        "OrigRef": source.orig_ref if top else "",
        "Labels": dict(source.labels) if top and source.labels else None,
    }


async def _read_small(source: TarSource, descriptor: Descriptor) -> bytes:
    parts = []
    async with source.endpoint.open_blob(source.repository, descriptor) as chunks:
        async for chunk in chunks:
            parts.append(chunk)
    return b"".join(parts)


async def collect(sources: Sequence[TarSource]) -> _Collected:
    """Read every manifest and config (layers only by descriptor), de-duplicated by digest."""
    out = _Collected([], {})
    seen: set[Digest] = set()
    for source in sources:
        manifest = await source.endpoint.get_manifest(source.repository, source.identifier)
        if manifest.digest in seen:
            continue
        seen.add(manifest.digest)
        if manifest.is_index:
            element = await _index(source, manifest, source.tag, out, 0, top=True)
            out.items.append((str(manifest.digest), {"ImageIndex": element, "Image": None}))
        else:
            element = await _image(source, manifest, source.tag, out, top=source)
            assert manifest.config is not None
            key = f"{manifest.digest}/{manifest.config.digest}"
            out.items.append((key, {"ImageIndex": None, "Image": element}))
    return out


def _header(name: str, size: int) -> bytes:
    """A USTAR header with the fields Go's archive/tar writes for imgpkg's entries."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise UsageError(f"tar member name {name!r} is over 100 bytes")
    header = bytearray(_BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = f"{size:011o}".encode() + b"\0"
    header[136:148] = b"00000000000\0"
    header[156:157] = b"0"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[329:337] = b"0000000\0"
    header[337:345] = b"0000000\0"
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    return bytes(header)


def _padding(size: int) -> bytes:
    return b"\0" * ((-size) % _BLOCK)


async def write_imgpkg_tar(
    path: Path | str, sources: Sequence[TarSource], rate_limit: TokenBucket | None = None
) -> int:
    """Write one archive holding `sources` (and all they reference); returns its size.

    The file appears under `path` only once complete and fsynced. `rate_limit`: the run's
    `--limit-rate` bucket, which every layer read from a source draws from.
    """
    dest = Path(path)
    collected = await collect(sources)
    manifest_json = _go_json(
        [element for _, element in sorted(collected.items, key=lambda i: i[0])]
    )
    try:
        with atomic_file(dest) as out:
            out.write(_header(MANIFEST_FILE, len(manifest_json)))
            out.write(manifest_json + _padding(len(manifest_json)))
            for digest in sorted(collected.layers, key=str):
                source, layer = collected.layers[digest]
                out.write(_header(f"{digest.algorithm}-{digest.hex}.tar.gz", layer.size))
                written = 0
                async with source.endpoint.open_blob(source.repository, layer) as chunks:
                    async for chunk in chunks:
                        if rate_limit is not None:
                            await rate_limit.take(len(chunk))
                        out.write(chunk)
                        written += len(chunk)
                if written != layer.size:
                    raise IntegrityError(
                        f"{source.ref_base}: layer {digest.short} gave {written} bytes, "
                        f"not {layer.size}"
                    )
                out.write(_padding(layer.size))
            out.write(b"\0" * (2 * _BLOCK))
            size = out.tell()
    except OSError as exc:
        raise io_error(f"writing {dest}", exc) from None
    return size
