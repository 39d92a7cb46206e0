"""The `--report` document of `copy`, `save` and `load`: per entry what happened, and the
run's outcome (exit code, interrupted or not) with the summary's counters, so CI reads the
result from the top of the file and can hold it against the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transship.engine import Stats, TaskResult

#: every status an entry can have, in the order `counts` lists them
STATUSES = ("copied", "skipped", "failed", "interrupted", "not-started")
COUNT_KEYS = {
    "copied": "imagesCopied",
    "skipped": "imagesSkipped",
    "failed": "imagesFailed",
    "interrupted": "imagesInterrupted",
    "not-started": "imagesNotStarted",
}


def run_report(
    results: Sequence[TaskResult],
    stats: Stats,
    seconds: float,
    exit_code: int,
    *,
    interrupted: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a run that ended with `exit_code`. The keys of version 1 stay as they
    were (`seconds`, `bytes_refetched`, `entries`); `counts` and `stats` are what the
    summary table shows (`stats` the engine's own accounting, keys as `verify`'s report)."""
    # keyed apart from the statuses: `grep '"failed"' report.json` still finds failed entries
    counts = {COUNT_KEYS[s]: sum(1 for r in results if r.status == s) for s in STATUSES}
    return {
        "version": 1,
        "exitCode": exit_code,
        "interrupted": interrupted,
        "seconds": round(seconds, 3),
        "bytes_refetched": sum(r.bytes_refetched for r in results),
        "counts": {"entries": len(results), **counts},
        "stats": {
            "blobsSent": stats.blobs_uploaded,
            "blobsMounted": stats.blobs_mounted,
            "blobsPresent": stats.blobs_present,
            "manifestsPushed": stats.manifests_pushed,
            "manifestsPresent": stats.manifests_present,
            "bytesSent": stats.bytes_uploaded,
            "bytesRefetched": stats.bytes_refetched,
            "bytesResumed": stats.bytes_resumed,
            "retries": stats.retries,
        },
        **(extra or {}),
        "entries": [entry(r) for r in results],
    }


def entry(result: TaskResult) -> dict[str, Any]:
    return {
        "source": result.task.source_name,
        "destination": result.task.dest_reference,
        "digest": str(result.digest) if result.digest else None,
        "status": result.status,
        "bytes": result.bytes_sent,
        "bytes_refetched": result.bytes_refetched,
        "seconds": round(result.seconds, 3),
        "error": str(result.error) if result.error else None,
    }
