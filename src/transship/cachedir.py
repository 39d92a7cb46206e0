"""Where transship keeps its caches: one root, one switch to turn them all off.

Four caches live under the root, each a hint that only saves work: the landed log
(`transship.landed`), kept list resolutions (`transship.ops.listcache`), the manifest store
(`transship.manifeststore`) and plans kept parsed (`transship.plan._yaml`). The root is
`$XDG_CACHE_HOME/transship`, else `~/.cache/transship`; with `TRANSSHIP_NO_CACHE` set (to
anything but empty or `0`), or no home to put it in, there is none, and every run works as if
the caches were empty.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("transship.cache")

#: set to anything but "" or "0": no cache is read or written
NO_CACHE_VARIABLE = "TRANSSHIP_NO_CACHE"


def caches_disabled() -> bool:
    """Whether `TRANSSHIP_NO_CACHE` turns every cache off for this run."""
    return os.environ.get(NO_CACHE_VARIABLE, "").strip() not in ("", "0")


def cache_root() -> Path | None:
    """`$XDG_CACHE_HOME/transship`, else `~/.cache/transship`; None when caches are off or
    there is no home directory (a cache is never worth failing a run)."""
    if caches_disabled():
        return None
    base = os.environ.get("XDG_CACHE_HOME", "")
    if base and os.path.isabs(base):  # the XDG spec: a relative path is to be ignored
        return Path(base) / "transship"
    try:
        home = Path.home()
    except (RuntimeError, KeyError, OSError) as exc:  # no HOME and no passwd entry
        log.debug("no cache: no home directory (%s)", exc)
        return None
    if not home.is_absolute():
        log.debug("no cache: home directory %r is not absolute", str(home))
        return None
    return home / ".cache" / "transship"


def cache_dir(name: str) -> Path | None:
    """One cache's directory under the root (not created here), or None (see `cache_root`)."""
    root = cache_root()
    return None if root is None else root / name
