"""`index.json` and `oci-layout`: which names a layout holds, and how names map to repositories.

One layout holds many repositories, so a tag alone cannot be the key: the entry for
`tkg/antrea:v1.2.3` carries `org.opencontainers.image.ref.name = "tkg/antrea:v1.2.3"`. The ref name
is the only key; transship's own annotations (`io.transship.repository`, `io.transship.tag`) are a
readable copy for people and scripts, never trusted over the ref name. A ref name without a colon
after its last `/` (what `skopeo copy ... oci:DIR:NAME` writes) belongs to the empty repository.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from transship.errors import IntegrityError, LayoutError, UsageError
from transship.manifest import OCI_INDEX, Descriptor
from transship.reference import is_tag

REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_REPOSITORY = "io.transship.repository"
ANNOTATION_TAG = "io.transship.tag"

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
LAYOUT_BYTES = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()

MAX_INDEX_BYTES = 64 * 1024 * 1024  # ~150k entries; anything bigger is not an index we wrote
MAX_LAYOUT_FILE_BYTES = 4096
EXTRA_DIR = "transship"  # the plan and checksum list travel beside the layout
#: the single-file transship an archive may carry (`save --include-tool`): first in the tar
TOOL_FILE = f"{EXTRA_DIR}/bin/transship"
#: `transship/INCOMPLETE`: written before anything else into a directory a save fills, removed
#: only once the save finished: a killed or partly failed save stays marked
UNFINISHED = "INCOMPLETE"
MAX_EXTRA_BYTES = 64 * 1024 * 1024

# containers/image (skopeo 1.9) validates `oci:DIR:REF` against the image-spec ref grammar
_OCI_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_OCI_REF = re.compile(rf"^{_OCI_COMPONENT}(?:/{_OCI_COMPONENT})*\Z")


def ref_name(repository: str, tag: str) -> str:
    """The `org.opencontainers.image.ref.name` of a tag: `repo:tag`, or `tag` for repo ''."""
    return f"{repository}:{tag}" if repository else tag


def split_ref_name(name: str) -> tuple[str, str]:
    """Inverse of `ref_name`: the last colon after the last `/` separates the tag."""
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return "", name


def skopeo_addressable(name: str) -> bool:
    """True if `skopeo ... oci:DIR:<name>` accepts the name (it rejects e.g. `a:_x`, `a:v1-`)."""
    return bool(_OCI_REF.match(name))


def check_tag(tag: str, where: str) -> None:
    """Refuse a tag the distribution grammar would refuse: it becomes part of a ref name."""
    if not is_tag(tag):
        raise UsageError(f"{where}: tag {tag!r} must be 1-128 of letters, digits, '_', '.', '-'")


def check_layout_file(raw: bytes, where: str) -> None:
    """`oci-layout` must say imageLayoutVersion 1.0.0, the only version there is."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LayoutError(f"{where}: {LAYOUT_FILE} is not valid JSON") from None
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if version != LAYOUT_VERSION:
        raise LayoutError(
            f"{where}: unsupported imageLayoutVersion {version!r} (expected {LAYOUT_VERSION!r})"
        )


class LayoutIndex:
    """The entries of `index.json`, keyed by ref name; foreign fields are kept as they were."""

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        self._doc = doc
        self._entries: list[tuple[dict[str, Any], Descriptor]] = []
        self._named: dict[str, tuple[dict[str, Any], Descriptor]] = {}
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise LayoutError(f"{where}: {INDEX_FILE} has no 'manifests' list")
        for i, entry in enumerate(manifests):
            at = f"{where} {INDEX_FILE} manifests[{i}]"
            if isinstance(entry, dict) and not isinstance(entry.get("annotations") or {}, dict):
                raise LayoutError(f"{at}: 'annotations' is not an object")
            descriptor = Descriptor.from_json(entry, at)
            self._entries.append((entry, descriptor))
            name = (entry.get("annotations") or {}).get(REF_NAME)
            if isinstance(name, str) and name and name not in self._named:
                self._named[name] = (entry, descriptor)  # first wins, as in containers/image

    @classmethod
    def empty(cls) -> LayoutIndex:
        return cls({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}, "new index")

    @classmethod
    def parse(cls, raw: bytes, where: str) -> LayoutIndex:
        if len(raw) > MAX_INDEX_BYTES:
            raise LayoutError(f"{where}: {INDEX_FILE} is over {MAX_INDEX_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise LayoutError(f"{where}: {INDEX_FILE} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise LayoutError(f"{where}: {INDEX_FILE} is not a JSON object")
        try:
            return cls(doc, where)
        except IntegrityError as exc:
            raise LayoutError(exc.message) from None

    def lookup(self, repository: str, tag: str) -> Descriptor | None:
        found = self._named.get(ref_name(repository, tag))
        return found[1] if found else None

    def tags(self, repository: str) -> list[str]:
        tags = []
        for name in self._named:
            repo, tag = split_ref_name(name)
            if repo == repository:
                tags.append(tag)
        return sorted(tags)

    def names(self) -> list[str]:
        """Every ref name, in index order."""
        return list(self._named)

    def entries(self) -> list[tuple[str, str, Descriptor]]:
        """Every named entry as (repository, tag, descriptor), in index order."""
        out = []
        for name, (_, descriptor) in self._named.items():
            repository, tag = split_ref_name(name)
            out.append((repository, tag, descriptor))
        return out

    def descriptors(self) -> list[Descriptor]:
        """Every top-level entry, named or not (skopeo lists an index's children unnamed)."""
        return [descriptor for _, descriptor in self._entries]

    def set(
        self,
        repository: str,
        tag: str,
        descriptor: Descriptor,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """Point (repository, tag) at `descriptor`, replacing the entry holding that name.

        `extra` annotations (where the image came from, where it goes) are written too; the
        name annotations always win."""
        name = ref_name(repository, tag)
        entry: dict[str, Any] = {
            "mediaType": descriptor.media_type,
            "digest": str(descriptor.digest),
            "size": descriptor.size,
            "annotations": {
                **(extra or {}),
                REF_NAME: name,
                ANNOTATION_REPOSITORY: repository,
                ANNOTATION_TAG: tag,
            },
        }
        old = self._named.get(name)
        self._named[name] = (entry, descriptor)
        if old is None:
            self._entries.append((entry, descriptor))
            return
        # replace the first holder in place; drop any later duplicates of the same name
        kept: list[tuple[dict[str, Any], Descriptor]] = []
        for existing in self._entries:
            if (existing[0].get("annotations") or {}).get(REF_NAME) == name:
                if existing[0] is old[0]:
                    kept.append((entry, descriptor))
                continue
            kept.append(existing)
        self._entries = kept

    def retain(self, keep: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        """Drop every named entry whose (repository, tag) is not in `keep` (unnamed entries
        stay); returns the dropped names, in index order."""
        dropped = [name for name in self._named if split_ref_name(name) not in keep]
        if not dropped:
            return []
        gone = frozenset(dropped)
        for name in dropped:
            del self._named[name]
        self._entries = [
            (entry, descriptor)
            for entry, descriptor in self._entries
            if (entry.get("annotations") or {}).get(REF_NAME) not in gone
        ]
        return [split_ref_name(name) for name in dropped]

    def serialize(self) -> bytes:
        doc = dict(self._doc)
        doc.setdefault("schemaVersion", 2)
        doc.setdefault("mediaType", OCI_INDEX)
        doc["manifests"] = [entry for entry, _ in self._entries]
        return json.dumps(doc, indent=1).encode() + b"\n"
