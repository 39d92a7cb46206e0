"""Plain image lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from transship.errors import UsageError
from transship.plan import (
    EntryKind,
    PlanError,
    entries_from_image_list,
    load_image_list,
    plan_from_image_list,
)

LIST = """\
# extra images for the cluster
src.example/tkg/antrea:v1

  src.example/tkg/antrea:v1   # again, indented, with a comment
nginx:1.25
quay.io/jetstack/cert-manager-controller@sha256:{digest}
ghcr.io/org/tool:2.0@sha256:{digest}
""".format(digest="c" * 64)


def test_each_image_keeps_its_repository_path_under_the_prefix() -> None:
    plan = plan_from_image_list(LIST, "images.txt", "harbor.local/mirror/", created="x")
    got = {(e.source, e.destination, e.tags) for e in plan.entries}
    assert got == {
        ("src.example/tkg/antrea:v1", "harbor.local/mirror/tkg/antrea", ("v1",)),
        ("docker.io/library/nginx:1.25", "harbor.local/mirror/library/nginx", ("1.25",)),
        (
            f"quay.io/jetstack/cert-manager-controller@sha256:{'c' * 64}",
            "harbor.local/mirror/jetstack/cert-manager-controller",
            (),
        ),
        (
            f"ghcr.io/org/tool:2.0@sha256:{'c' * 64}",
            "harbor.local/mirror/org/tool",
            ("2.0",),
        ),
    }
    assert all(e.kind is EntryKind.IMAGE for e in plan.entries)
    assert plan.sources == ("images.txt",)


def test_origins_name_file_and_line_and_duplicates_merge() -> None:
    plan = plan_from_image_list(LIST, "images.txt", "harbor.local/mirror")
    antrea = next(e for e in plan.entries if e.source.endswith("antrea:v1"))
    assert antrea.origins == ("images.txt:2", "images.txt:4")
    assert plan.totals.entries == 4


def test_pinned_digest_is_recorded() -> None:
    (e,) = entries_from_image_list(f"r.example/a@sha256:{'d' * 64}\n", "l", "h.local")
    assert e.source_digest is not None and e.source_digest.hex == "d" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ok.example/a:v1\nBad/Upper:v1\n", r"^images.txt:2: invalid image reference 'Bad/Upper"),
        ("a.example/x:v1 b.example/y:v2\n", r"^images.txt:1: .*one image reference per line"),
        ("\n\n# c\nr.example/a:bad+tag\n", r"^images.txt:4: invalid image reference"),
    ],
)
def test_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message) as info:
        entries_from_image_list(text, "images.txt", "harbor.local/x")
    assert "\n" not in str(info.value)


def test_bad_prefix() -> None:
    for bad in ("", "tkg", "https://h.example/x", "h.example/X"):
        with pytest.raises(UsageError, match=f"destination prefix '{re.escape(bad)}' is not a"):
            entries_from_image_list("a.example/x:v1\n", "images.txt", bad)


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "images.txt"
    path.write_text(LIST)
    plan = load_image_list(path, "harbor.local/mirror")
    assert plan.totals.entries == 4
    assert plan.entries[0].origins[0].startswith(f"{path}:")


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"nope.txt: cannot read: No such file"):
        load_image_list(tmp_path / "nope.txt", "harbor.local/mirror")


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images.txt"
    path.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(PlanError, match="not UTF-8 text"):
        load_image_list(path, "harbor.local/mirror")


def test_a_list_with_no_image_is_refused_naming_it() -> None:
    for text in ("", "\n", "# a comment\n   \n# another\n"):
        with pytest.raises(PlanError, match=r"^images\.txt: lists no images"):
            plan_from_image_list(text, "images.txt", "harbor.local/mirror")
