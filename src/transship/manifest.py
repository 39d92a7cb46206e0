"""Media types, descriptors and just enough manifest parsing to walk an image graph.

Manifests are never re-serialised: the engine keeps the exact bytes and only reads them here to
learn which blobs and child manifests they reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transship.digest import Digest
from transship.errors import IntegrityError, RegistryError, UnsupportedMediaTypeError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# Preference order sent as Accept; registries pick the stored type when it is listed.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit
#: how deep an index's children are followed (index → index → … → image): the engine copies,
#: a bundle's plan is read, and a base's named reach is walked this far, and no further
MAX_INDEX_DEPTH = 4


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`os/arch[/variant]`, as `--platform linux/arm64/v8`."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} must be os/arch or os/arch/variant")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, other: Platform) -> bool:
        """True if `other` satisfies this filter (variant only compared when we ask for one)."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """The common currency between layers: what a thing is, its digest and its size."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise IntegrityError(f"{where}: descriptor is not an object")
        try:
            digest = Digest.parse(str(obj["digest"]))
            size = obj["size"]
            media_type = obj.get("mediaType", "")
        except KeyError as exc:
            raise IntegrityError(f"{where}: descriptor lacks {exc.args[0]!r}") from None
        if not isinstance(size, int) or size < 0:
            raise IntegrityError(f"{where}: descriptor size {size!r} is not a whole number")
        platform = None
        plat = obj.get("platform")
        if isinstance(plat, dict) and "os" in plat and "architecture" in plat:
            platform = Platform(str(plat["os"]), str(plat["architecture"]), plat.get("variant"))
        urls = tuple(str(u) for u in obj.get("urls") or ())
        annotations = tuple(sorted((obj.get("annotations") or {}).items()))
        return cls(str(media_type), digest, size, platform, urls, annotations)


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes plus what they reference."""

    media_type: str
    raw: bytes
    digest: Digest
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))

    def blobs(self) -> tuple[Descriptor, ...]:
        """Config first, then layers: the blobs that must exist before this manifest is pushed."""
        return ((self.config,) if self.config else ()) + self.layers

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None, where: str) -> Manifest:
        """Parse exact bytes; the media type comes from the body or, failing that, the header."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise IntegrityError(
                f"{where}: manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise IntegrityError(f"{where}: manifest is not valid JSON") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{where}: manifest is not a JSON object")
        body_type = doc.get("mediaType")
        header_type = (media_type or "").split(";")[0].strip()
        mt = body_type if isinstance(body_type, str) and body_type else header_type
        if not mt:
            mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
        if mt in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise UnsupportedMediaTypeError(
                f"{where}: Docker schema 1 manifests are not supported; "
                "convert the image to schema 2 or OCI upstream first"
            )
        if mt not in MANIFEST_TYPES:
            raise UnsupportedMediaTypeError(f"{where}: unknown manifest media type {mt!r}")
        digest = Digest.of(raw)
        subject = (
            Descriptor.from_json(doc["subject"], f"{where} subject") if "subject" in doc else None
        )
        annotations = doc.get("annotations") or {}
        artifact_type = doc.get("artifactType")
        if mt in INDEX_TYPES:
            children = doc.get("manifests")
            if not isinstance(children, list):
                raise IntegrityError(f"{where}: index has no 'manifests' list")
            return cls(
                mt,
                raw,
                digest,
                manifests=tuple(
                    Descriptor.from_json(c, f"{where} manifests[{i}]")
                    for i, c in enumerate(children)
                ),
                subject=subject,
                artifact_type=artifact_type,
                annotations=dict(annotations),
            )
        if "config" not in doc:
            raise IntegrityError(f"{where}: image manifest has no config")
        layers = doc.get("layers") or []
        if not isinstance(layers, list):
            raise IntegrityError(f"{where}: 'layers' is not a list")
        return cls(
            mt,
            raw,
            digest,
            config=Descriptor.from_json(doc["config"], f"{where} config"),
            layers=tuple(
                Descriptor.from_json(layer, f"{where} layers[{i}]")
                for i, layer in enumerate(layers)
            ),
            subject=subject,
            artifact_type=artifact_type,
            annotations=dict(annotations),
        )


# --- referrers (OCI 1.1): manifests whose `subject` is another manifest ----------------------


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers list: the referrer's manifest and its artifact type."""

    descriptor: Descriptor
    artifact_type: str | None = None


def parse_referrers(raw: bytes, where: str) -> tuple[Referrer, ...]:
    """The `manifests` of a referrers index (API answer or tag-schema index).

    `Descriptor` keeps no `artifactType`, so it is read here: it is what tells a reviewer an
    SBOM from a signature.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{where}: answer is not JSON") from None
    items = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RegistryError(f"{where}: answer is not an OCI index (no 'manifests' list)")
    found = []
    for number, item in enumerate(items):
        descriptor = Descriptor.from_json(item, f"{where} manifests[{number}]")
        kind = item.get("artifactType")
        found.append(Referrer(descriptor, kind if isinstance(kind, str) and kind else None))
    return tuple(found)
