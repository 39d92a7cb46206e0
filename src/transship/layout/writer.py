"""The naming half of a writable layout, shared by `OCILayout` and `TarSink`.

Both store a manifest's exact bytes as a blob and name it in their `LayoutIndex`; only where
the bytes go differs (`_store_manifest_bytes`). Checking a pushed manifest, pointing a tag at it
(with the `annotations` a save gives it) and forgetting names a resumed save no longer plans
live here once. The subclass owns `_changes` (index generations) and the `_pacer` that
schedules its state-file rewrites.
"""

from __future__ import annotations

from transship.digest import Digest
from transship.errors import IntegrityError
from transship.layout.index import check_tag
from transship.layout.pacing import FlushPacer
from transship.layout.reader import LayoutReader
from transship.manifest import Manifest


class LayoutWriter(LayoutReader):
    """`put_manifest`, `retain_tags` and `check_push` over `_index` and the subclass's store."""

    #: (repository, tag) → annotations for its index.json entry (`save`: source, destination)
    annotations: dict[tuple[str, str], dict[str, str]]
    _changes: int
    _pacer: FlushPacer

    def _check_writable(self, *, content: bool = False) -> None:
        """Raise unless the store may change; `content`: new blobs or manifests (not only
        names or extras) are to go in."""
        raise NotImplementedError

    async def _store_manifest_bytes(self, repository: str, manifest: Manifest, where: str) -> None:
        """Store `manifest.raw` (already checked against its digest) as a blob."""
        raise NotImplementedError

    async def check_push(self, repository: str) -> None:
        """Preflight: a push lands if the layout is open for writing."""
        self._check_writable(content=True)

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        """Store the exact bytes as a blob; a tag also (re)points the index entry."""
        self._check_writable(content=True)
        where = self._where(repository, tag or str(manifest.digest))
        if tag is not None:
            check_tag(tag, where)
        actual = Digest.of(manifest.raw, manifest.digest.algorithm)
        if actual != manifest.digest:
            raise IntegrityError(f"{where}: manifest bytes hash to {actual.short}")
        await self._store_manifest_bytes(repository, manifest, where)
        if tag is not None:
            extra = self.annotations.get((repository, tag))
            self._index.set(repository, tag, manifest.descriptor, extra)
            self._changes += 1
            await self._pacer.changed()

    def retain_tags(self, keep: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """A resumed save whose plan changed: forget the (repository, tag) names an earlier
        run wrote that are not in `keep`, so the archive names only what its plan lists.
        Returns what was dropped; their blobs stay (unnamed) until the layout is saved anew."""
        self._check_writable()
        dropped = self._index.retain(keep)
        if dropped:
            self._changes += 1
        return dropped
