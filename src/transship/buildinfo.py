"""Which transship this is: the version, and the commit it was built from.

The single-file build (`scripts/build-binary.sh`) bundles a generated module,
`_transship_build_info`, holding the commit; it never lives in the source tree, so a venv
install of a later commit cannot report a stale one. A venv install asks git for the commit of
its source checkout instead, and says "unknown" when there is none.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from functools import cache
from pathlib import Path

from transship import __version__

BUILD_INFO_MODULE = "_transship_build_info"


@cache
def commit() -> str:
    """The commit this program was built from (`-dirty` if the tree had changes), or 'unknown'."""
    try:
        module = importlib.import_module(BUILD_INFO_MODULE)
    except ImportError:
        pass
    else:
        return str(getattr(module, "COMMIT", "unknown"))
    if getattr(sys, "frozen", False):
        return "unknown"  # a frozen build without build info: nothing else to ask
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    found = done.stdout.strip()
    return found if done.returncode == 0 and found else "unknown"


def is_single_file() -> bool:
    """True when running as the PyInstaller one-file executable."""
    return bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def version_line() -> str:
    kind = "single-file build" if is_single_file() else "python install"
    return f"transship {__version__} (commit {commit()}, {kind})"
