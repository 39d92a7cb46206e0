"""Writing an imgpkg ImagesLock of what a run relocated (`--lock-output`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from transship.engine import TaskResult
from transship.fsutil import write_atomic
from transship.imgpkg.bundle import LOCK_API_VERSION


def images_lock(results: Sequence[TaskResult]) -> str:
    """An ImagesLock naming every relocated image by digest, with its source as kbld's id."""
    images = [
        {
            "image": f"{result.task.dest_name}@{result.digest}",
            "annotations": {"kbld.carvel.dev/id": result.task.source_name},
        }
        for result in results
        if result.status != "failed" and result.digest is not None
    ]
    doc = {"apiVersion": LOCK_API_VERSION, "kind": "ImagesLock", "images": images}
    return yaml.safe_dump(doc, sort_keys=False)


def write_images_lock(path: Path, results: Sequence[TaskResult]) -> None:
    write_atomic(path, images_lock(results))
