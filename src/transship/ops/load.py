"""`load`: everything an archive holds, pushed under a destination prefix, bundles last."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transship.engine import CopyTask
from transship.layout import OCILayout, OCILayoutTar
from transship.ops.archive import ArchiveInfo, load_tasks, open_archive
from transship.ops.tasks import EndpointFor


@dataclass
class LoadJob:
    """An archive opened for reading, with what `transship/archive.json` says about it."""

    layout: OCILayout | OCILayoutTar
    info: ArchiveInfo

    @classmethod
    def open(cls, archive: Path) -> LoadJob:
        layout = open_archive(archive)
        info = ArchiveInfo.read(layout)
        layout.base_name = info.base
        return cls(layout, info)

    def tasks(self, prefix: str | None, dest_for: EndpointFor) -> list[list[CopyTask]]:
        """Every named manifest as a task to `prefix` (or the saved prefix)/repository."""
        return load_tasks(self.layout, self.info, prefix, dest_for)

    async def close(self) -> None:
        await self.layout.close()
