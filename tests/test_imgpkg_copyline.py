"""The `imgpkg copy` line parser the vendor scripts need (shared by tkg.script and the from-tar
load): what it keeps, what it skips, and the line it names when it refuses."""

from __future__ import annotations

import pytest

from transship.errors import PlanError
from transship.imgpkg.copyline import parse_copy_lines

SCRIPT = """#!/bin/bash
set -euo pipefail
# upload half
imgpkg copy --tar tkg-antrea-v1.tar --to-repo air.local/tkg/antrea --registry-verify-certs=false
imgpkg copy -b "proj.example/tkg/pkg@sha256:abc" --to-tar 'pkg.tar' --concurrency 4
"""


def test_copies_and_scaffolding() -> None:
    parsed = parse_copy_lines(SCRIPT, "fromtar.sh")
    assert [p is None for p in parsed] == [True, True, True, False, False]
    upload, download = parsed[3], parsed[4]
    assert upload is not None and download is not None
    assert (upload.where, upload.from_tar, upload.to_repo, upload.source) == (
        "fromtar.sh:4",
        "tkg-antrea-v1.tar",
        "air.local/tkg/antrea",
        None,
    )
    assert (download.flavour, download.source, download.to_tar) == (
        "bundle",
        "proj.example/tkg/pkg@sha256:abc",
        "pkg.tar",
    )


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("docker pull x", "not an 'imgpkg copy' line"),
        ("imgpkg push -b x", "only 'imgpkg copy'"),
        ("imgpkg copy --tar a.tar --tar b.tar --to-repo r", "--tar given twice"),
        ("imgpkg copy --tar a.tar", "one source"),
        ("imgpkg copy --tar a.tar --to-tar b.tar", "copies nothing to a registry"),
        ("imgpkg copy --tar a.tar --to-repo r --frobnicate x", "unknown imgpkg copy option"),
        ("imgpkg copy --tar 'a.tar --to-repo r", "cannot split the line"),
    ],
)
def test_refusals_name_the_line(line: str, fragment: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_copy_lines(f"# first\n{line}\n", "s.sh")
    assert str(caught.value).startswith("s.sh:2: ") and fragment in str(caught.value)
