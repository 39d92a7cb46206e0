"""What the last run resolved from the same image list, reused while no tag has moved.

Resolving a list (`copy --images`, `save --images`) reads every manifest, every image config
(is it a bundle?), every bundle's ImagesLock and the images it names, and each source
repository's tags and referrers (signatures): ~680 requests for the TKG corpus, most of a
no-op rerun. All of that follows from the digests the listed tags point at, and what a digest
names never changes. So the resolved plan is kept, keyed by the list as read and the options
that shape it, and a rerun trusts it only when a HEAD of every listed tag, and of every tag an
attachment was found under (`.sig`, `.att`, `.sbom`, a referrers tag), names the digest it
named before: one tag that moved means resolving afresh.

What the HEADs cannot see is an attachment added under a new tag, or a new referrer, for an
image whose tag did not move; so a kept resolution is trusted for `MAX_AGE` at most. The file
holds a sha256 of its body: one that is unreadable, corrupt, from another format or version,
or too old is ignored, and the fresh resolution is written over it (atomically).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from transship import __version__
from transship.cachedir import cache_dir
from transship.digest import Digest
from transship.errors import TransshipError
from transship.fsutil import write_atomic
from transship.ops.tasks import EndpointFor
from transship.plan.model import EntryKind, Plan
from transship.reference import Reference

log = logging.getLogger("transship.cache")

FORMAT = 1
#: how long a kept resolution is trusted without resolving again (new attachments)
MAX_AGE = 24 * 3600.0


def default_directory() -> Path | None:
    """`$XDG_CACHE_HOME/transship/resolved`, else `~/.cache/transship/resolved`; None when
    caches are off (`TRANSSHIP_NO_CACHE`) or there is no home (`transship.cachedir`)."""
    return cache_dir("resolved")


@dataclass(frozen=True)
class Kept:
    """A resolution read back: the plan and the warnings it was made with."""

    plan: Plan
    warnings: tuple[str, ...]


class ListCache:
    """Resolutions of image lists, one file per list (and options), under `directory`."""

    def __init__(self, directory: Path, *, max_age: float = MAX_AGE) -> None:
        self.directory = directory
        self.max_age = max_age

    def key(self, listed: Plan, *, attachments: bool) -> str:
        """The list as read (sources, destinations, tags, origins) and what shapes it."""
        what = {
            "format": FORMAT,
            "version": __version__,
            "attachments": attachments,
            "prefix": listed.destination_prefix,
            "entries": [entry.to_dict() for entry in listed.entries],
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def path(self, listed: Plan, *, attachments: bool) -> Path:
        return self.directory / f"{self.key(listed, attachments=attachments)}.json"

    async def load(
        self, listed: Plan, source_for: EndpointFor, parallel: int, *, attachments: bool
    ) -> Kept | None:
        """The kept resolution of `listed`, if there is one and no tag it pins has moved."""
        key = self.key(listed, attachments=attachments)
        path = self.directory / f"{key}.json"
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        try:
            plan, pins, warnings = self._parse(raw, key, str(path))
        except (ValueError, KeyError, TypeError, AttributeError, TransshipError) as exc:
            log.debug("kept resolution %s not used: %s", path, exc)
            return None
        if not await _unmoved(pins, source_for, parallel):
            log.debug("kept resolution %s not used: a tag moved", path)
            return None
        return Kept(plan, warnings)

    def _parse(
        self, raw: bytes, key: str, where: str
    ) -> tuple[Plan, dict[str, str], tuple[str, ...]]:
        doc = json.loads(raw)
        if doc["format"] != FORMAT or doc["key"] != key:
            raise ValueError("another format or list")
        body = doc["body"]
        if hashlib.sha256(body.encode()).hexdigest() != doc["sha256"]:
            raise ValueError("checksum mismatch")
        age = time.time() - float(doc["written"])
        if not 0 <= age <= self.max_age:
            raise ValueError(f"written {age:.0f} s ago")
        content = json.loads(body)
        pins = {str(ref): str(Digest.parse(digest)) for ref, digest in content["pins"].items()}
        warnings = tuple(str(w) for w in content["warnings"])
        return Plan.from_dict(content["plan"], where), pins, warnings

    def store(
        self, listed: Plan, resolved: Plan, warnings: tuple[str, ...], *, attachments: bool
    ) -> None:
        """Keep `resolved` for `listed` (a cache: a file that cannot be written is skipped)."""
        pins = _pins(listed, resolved)
        if pins is None:
            return
        key = self.key(listed, attachments=attachments)
        body = json.dumps(
            {"pins": pins, "warnings": list(warnings), "plan": resolved.to_dict()},
            ensure_ascii=False,
        )
        doc = {
            "format": FORMAT,
            "key": key,
            "written": time.time(),
            "sha256": hashlib.sha256(body.encode()).hexdigest(),
            "body": body,
        }
        try:
            self._prune()
            text = json.dumps(doc, ensure_ascii=False)
            write_atomic(self.directory / f"{key}.json", text, private=True)  # a user's cache
        except OSError as exc:
            log.debug("resolution not kept in %s: %s", self.directory, exc)

    def _prune(self) -> None:
        """Drop resolutions too old to be trusted (lists that are no longer copied)."""
        if not self.directory.is_dir():
            return
        limit = time.time() - self.max_age
        for old in self.directory.glob("*.json"):
            try:
                if old.stat().st_mtime < limit:
                    old.unlink()
            except OSError:
                pass


def _pins(listed: Plan, resolved: Plan) -> dict[str, str] | None:
    """Every tag the resolution depends on, and the digest it named: the listed tags (a
    reference by digest cannot move) and the tags attachments were found under."""
    found = {e.source: e.source_digest for e in resolved.entries if e.source_digest}
    pins: dict[str, str] = {}
    for entry in listed.entries:
        if Reference.parse(entry.source).digest is not None:
            continue
        digest = found.get(entry.source)
        if digest is None:
            return None  # not resolved as listed: nothing to check it against, so not kept
        pins[entry.source] = str(digest)
    for entry in resolved.entries:
        found_under_tag = Reference.parse(entry.source).digest is None
        if entry.kind is EntryKind.ATTACHMENT and entry.source_digest and found_under_tag:
            pins[entry.source] = str(entry.source_digest)
    return pins


async def _unmoved(pins: dict[str, str], source_for: EndpointFor, parallel: int) -> bool:
    """Whether a HEAD of every pinned tag names its pinned digest (any failure: no)."""
    slots = asyncio.Semaphore(max(1, parallel))

    async def same(ref_text: str, digest: str) -> bool:
        ref = Reference.parse(ref_text)
        async with slots:
            found = await source_for(ref.registry).head_manifest(ref.repository, ref.identifier)
        return found is not None and str(found.digest) == digest

    try:
        answers = await asyncio.gather(*(same(ref, digest) for ref, digest in pins.items()))
    except TransshipError as exc:  # resolving afresh meets it again and reports it
        log.debug("checking kept tags: %s", exc)
        return False
    return all(answers)
