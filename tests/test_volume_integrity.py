"""A split archive's volume cut short on the way is damaged media (exit 7), not bad input."""

from __future__ import annotations

from pathlib import Path

from clirunner import CLI
from harness.registry import RegistryProcess
from test_airgap import corpus, write_list

from transship.errors import ExitCode


def test_a_truncated_volume_is_an_integrity_failure(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    """`truncate -s` of volume 2: archive verify and load exit 7, as a damaged single tar or a
    flipped byte in a volume do, with the line naming the volume and what to do; a volume
    missing entirely stays a usage error (exit 1: bring every part)."""
    refs, _stored = corpus(plain_registry, "gapcut")
    media = tmp_path / "media"
    listing = str(write_list(tmp_path, refs))
    save = cli(
        "save", "--images", listing, "-o", str(media / "t.tar"), "--split-size", "100K", "-q"
    )
    assert save.code == 0, save.err
    parts = sorted(media.glob("t.tar.[0-9][0-9][0-9]"))
    assert len(parts) >= 3
    listed = parts[1].stat().st_size
    with parts[1].open("r+b") as handle:
        handle.truncate(listed // 2)
    dest = make_registry("plain")
    for args in (
        ("archive", "verify", str(parts[0])),
        ("load", str(parts[0]), "--dest", f"{dest.host}/cut", "-q"),
        ("load", str(media), "--dest", f"{dest.host}/cut", "-q"),
    ):
        out = cli(*args)
        assert out.code == ExitCode.INTEGRITY, (args, out.err)
        assert f"{parts[1]}: {listed // 2} bytes, the volume list says {listed}" in out.error_line
        assert "copy it again from the source media" in out.error_line
        assert "Traceback" not in out.err
    assert dest.blob_uploads() == []  # nothing pushed from a damaged set
    parts[1].unlink()
    missing = cli("load", str(parts[0]), "--dest", f"{dest.host}/cut", "-q")
    assert missing.code == ExitCode.USAGE and "volumes missing: t.tar.002" in missing.error_line
