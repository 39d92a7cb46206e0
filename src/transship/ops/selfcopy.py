"""`save --include-tool`: the single-file transship travels inside the archive it writes.

Only the one-file build can carry itself: it is `sys.executable`, one file that runs with no
Python installed. A venv install is a tree of files tied to one machine's Python, so it refuses
and says how to build the file. Inside the archive the tool is `transship/bin/transship`
(mode 0755), listed in `SHA256SUMS`, and placed first in the tar so that the first volume of a
split archive holds it whole.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from transship.buildinfo import is_single_file
from transship.errors import UsageError
from transship.layout.archive import tool_head_size
from transship.layout.index import EXTRA_DIR, TOOL_FILE
from transship.layout.reader import LayoutReader
from transship.streams import CHUNK

BUILD_HINT = "build it with `bash scripts/build-binary.sh` and run dist/transship"


def running_tool() -> Path:
    """The executable file this process runs from; refuses outside the single-file build."""
    if not is_single_file():
        raise UsageError(
            "--include-tool needs the single-file transship, but this one runs from a Python "
            f"install; {BUILD_HINT} save … --include-tool"
        )
    return Path(sys.executable)


def check_split_size(tool: Path, part_size: int) -> None:
    """The first volume must hold the tool whole: `tar -xf FILE.tar.001 transship/bin/...`."""
    needed = tool_head_size(tool.stat().st_size)
    if part_size < needed:
        raise UsageError(
            f"--split-size {part_size} bytes cannot hold the carried tool ({TOOL_FILE}) in the "
            f"first volume; use at least {needed} bytes (e.g. {-(-needed // 2**20)}M)"
        )


def place_tool(tool: Path | None, layout_dir: Path) -> None:
    """Copy `tool` to `layout_dir/transship/bin/transship` atomically, mode 0755; with None,
    remove one a previous (resumed) run left there, so an archive carries it only if asked."""
    dest = layout_dir / TOOL_FILE
    if tool is None:
        dest.unlink(missing_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".transship.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, tool.open("rb") as src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), 0o755)
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def carried_tool(layout: LayoutReader) -> tuple[str | None, list[str], bool]:
    """For `archive verify` and a save rerun: a note on the carried tool (None if there is
    none), problems (listed in `SHA256SUMS` but absent, or its sha256 not the one listed), and
    whether the tool is damaged (its sha256 not the one listed: an integrity problem)."""
    name = TOOL_FILE.removeprefix(f"{EXTRA_DIR}/")
    listed = None
    for line in (layout.read_extra("SHA256SUMS") or b"").decode(errors="replace").splitlines():
        digest, _, listed_name = line.partition("  ")
        if listed_name == TOOL_FILE:
            listed = digest
    tool = layout.read_extra(name)
    if tool is None:
        if listed is None:
            return None, [], False
        return None, [f"{TOOL_FILE}: listed in transship/SHA256SUMS but not in the archive"], False
    actual = hashlib.sha256(tool).hexdigest()
    if listed != actual:
        why = "is not listed in" if listed is None else "does not match"
        problem = f"{TOOL_FILE}: its sha256 {actual[:12]}… {why} transship/SHA256SUMS"
        return None, [problem], listed is not None
    return f"carries {TOOL_FILE} ({len(tool)} bytes, sha256 {actual[:12]}…, as listed)", [], False
