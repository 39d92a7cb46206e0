"""Errors of on-disk layouts: the engine only survives `TransshipError`, so OSError is wrapped."""

from __future__ import annotations

import errno

from transship.errors import UsageError


class LayoutError(UsageError):
    """A layout or archive that cannot be used: missing, malformed, read-only, or an I/O error."""


class UnsafeArchiveError(LayoutError):
    """A tar member we refuse to read: traversal, links, devices, duplicates, absurd sizes."""


def io_error(where: str, exc: OSError) -> LayoutError:
    """One line naming what failed, without a traceback: `oci:/x: cannot write blob: No space`."""
    hint = None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space and run the same command again: what was written is kept"
    return LayoutError(f"{where}: {exc.strerror or exc}", hint=hint)
