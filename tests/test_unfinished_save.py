"""A directory save that did not finish never passes for a finished archive, a finished one is
never merged into, split volumes name their missing `.parts` file, and what save writes is
readable by others as the umask allows: through the CLI, against a real registry."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import seed_image

from transship.errors import ExitCode
from transship.fsutil import write_atomic


def write_list(tmp_path: Path, refs: list[str]) -> Path:
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    return listing


def catalog(reg: RegistryProcess, prefix: str) -> list[str]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
    with direct.open(f"http://{reg.host}/v2/_catalog", timeout=10) as answer:
        names: list[str] = json.load(answer)["repositories"]
    return [n for n in names if n.startswith(prefix)]


def test_partly_failed_directory_save_is_refused_until_the_rerun_finishes(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    seed_image(plain_registry, "unf1/good", "v1", seed=301)
    refs = [f"{plain_registry.host}/unf1/good:v1", f"{plain_registry.host}/unf1/late:v1"]
    archive = tmp_path / "usb" / "bytes"  # a name like a damage report's words: still 9, not 7
    listing = write_list(tmp_path, refs)
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert out.code == ExitCode.PARTIAL, out.err
    assert (archive / "transship" / "INCOMPLETE").is_file()

    verified = cli("archive", "verify", str(archive))
    assert verified.code == ExitCode.INCOMPLETE, verified.out + verified.err
    assert "its save did not finish" in verified.err and "0 problem(s)" not in verified.out
    dest = make_registry("plain")
    loaded = cli("load", str(archive), "--dest", f"{dest.host}/x", "-q")
    assert loaded.code == ExitCode.INCOMPLETE
    assert "did not finish" in loaded.error_line and "run the same save again" in loaded.error_line
    assert catalog(dest, "x/") == []  # nothing pushed from half an archive
    served = cli("serve", str(archive))  # nor served, nor built on
    assert served.code == ExitCode.INCOMPLETE and "did not finish" in served.error_line
    out = cli("save", "--images", str(listing), "-o", str(tmp_path / "inc.tar"),
              "--since", str(archive))  # fmt: skip
    assert out.code == ExitCode.INCOMPLETE, out.err
    assert out.error_line.startswith("transship: error: --since: ") and "did not finish" in out.err

    # the same save, rerun once the missing image exists, resumes into the same directory
    seed_image(plain_registry, "unf1/late", "v1", seed=302)
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert out.code == 0, out.err
    assert not (archive / "transship" / "INCOMPLETE").exists()
    verified = cli("archive", "verify", str(archive))
    assert verified.code == 0 and "0 problem(s)" in verified.out, verified.err
    loaded = cli("load", str(archive), "--dest", f"{dest.host}/x", "-q")
    assert loaded.code == 0, loaded.err
    assert sorted(catalog(dest, "x/")) == ["x/unf1/good", "x/unf1/late"]


def test_archive_lacking_an_image_its_plan_lists_is_named_and_refused(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    """Without the marker (an older transship's unfinished save, or a hand-edited index), the
    carried plan still tells what is missing."""
    for n in range(2):
        seed_image(plain_registry, f"unf2/app{n}", "v1", seed=310 + n)
    refs = [f"{plain_registry.host}/unf2/app{n}:v1" for n in range(2)]
    archive = tmp_path / "dir"
    assert cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(archive)).code == 0
    index_file = archive / "index.json"
    index = json.loads(index_file.read_text())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] != "unf2/app1:v1"
    ]
    index_file.write_text(json.dumps(index))

    verified = cli("archive", "verify", str(archive))
    assert verified.code == ExitCode.INCOMPLETE
    assert "1 image(s) its transship/plan.yaml lists are not in it: unf2/app1:v1" in verified.err
    dest = make_registry("plain")
    loaded = cli("load", str(archive), "--dest", f"{dest.host}/y", "-q")
    assert loaded.code == ExitCode.INCOMPLETE and "unf2/app1:v1" in loaded.error_line
    assert catalog(dest, "y/") == []


def test_save_into_a_finished_directory_is_refused(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    seed_image(plain_registry, "unf3/old", "v1", seed=320)
    seed_image(plain_registry, "unf3/new", "v1", seed=321)
    archive = tmp_path / "dir"
    first = write_list(tmp_path, [f"{plain_registry.host}/unf3/old:v1"])
    assert cli("save", "--images", str(first), "-o", str(archive), "-q").code == 0
    before = {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}

    second = tmp_path / "second.txt"
    second.write_text(f"{plain_registry.host}/unf3/new:v1\n")
    out = cli("save", "--images", str(second), "-o", str(archive), "-q")
    assert out.code == ExitCode.USAGE
    assert str(archive) in out.error_line and "remove it or choose another name" in out.error_line
    assert {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()} == before
    # a dry run only measures, so it is not refused
    assert cli("save", "--images", str(second), "-o", str(archive), "--dry-run").code == 0


def test_save_into_a_directory_holding_the_unpacked_tool_is_refused(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """`transship/` without the unfinished marker is someone's (the tool unpacked from an
    archive, as the README shows): not adopted as a save's, nothing written or removed."""
    seed_image(plain_registry, "unf5/app", "v1", seed=325)
    here = tmp_path / "here"
    (here / "transship" / "bin").mkdir(parents=True)
    (here / "transship" / "bin" / "transship").write_bytes(b"#!/bin/sh\n")
    (here / "transship" / "README.md").write_text("the tool\n")
    before = {p: p.read_bytes() for p in here.rglob("*") if p.is_file()}
    listing = write_list(tmp_path, [f"{plain_registry.host}/unf5/app:v1"])
    out = cli("save", "--images", str(listing), "-o", str(here), "-q")
    assert out.code != 0 and "not empty; refusing to write into it" in out.error_line, out.err
    assert {p: p.read_bytes() for p in here.rglob("*") if p.is_file()} == before


def test_split_volumes_without_their_parts_file_name_it_and_say_to_copy_it(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    for n in range(2):
        seed_image(plain_registry, f"unf4/app{n}", "v1", seed=330 + n, layer_sizes=(150_000,))
    refs = [f"{plain_registry.host}/unf4/app{n}:v1" for n in range(2)]
    tar = tmp_path / "split.tar"
    listing = write_list(tmp_path, refs)
    out = cli("save", "--images", str(listing), "-o", str(tar), "--split-size", "100K", "-q")
    assert out.code == 0, out.err
    usb = tmp_path / "usb"
    usb.mkdir()
    volumes = sorted(tmp_path.glob("split.tar.[0-9][0-9][0-9]"))
    assert len(volumes) >= 2
    for volume in volumes:
        (usb / volume.name).write_bytes(volume.read_bytes())
    for args in (
        ("archive", "verify", str(usb / "split.tar.001")),
        ("archive", "verify", str(usb)),
        ("load", str(usb), "--dest", "127.0.0.1:9/x", "-q"),
        ("serve", str(usb)),
    ):
        failed = cli(*args)
        assert failed.code == ExitCode.USAGE, (args, failed.err)
        line = failed.error_line
        assert "split.tar.parts" in line and str(usb) in line, line
        assert "copy split.tar.parts" in line and "with the volumes" in line, line
    (usb / "split.tar.parts").write_bytes((tmp_path / "split.tar.parts").read_bytes())
    assert cli("archive", "verify", str(usb)).code == 0


def test_archives_and_reports_get_the_umask_mode_not_0600(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Another account (serve, load, skopeo under a service user) reads what save wrote."""
    seed_image(plain_registry, "unf5/app", "v1", seed=340, layer_sizes=(150_000,))
    listing = write_list(tmp_path, [f"{plain_registry.host}/unf5/app:v1"])
    old = os.umask(0o027)
    try:
        directory = tmp_path / "dir"
        report = tmp_path / "report.json"
        out = cli("save", "--images", str(listing), "-o", str(directory), "--report", str(report))
        assert out.code == 0, out.err
        tar = tmp_path / "split.tar"
        out = cli("save", "--images", str(listing), "-o", str(tar), "--split-size", "100K", "-q")
        assert out.code == 0, out.err
        secret = tmp_path / "key.pem"
        write_atomic(secret, b"not for others", private=True)
    finally:
        os.umask(old)
    written = [p for p in directory.rglob("*") if p.is_file()]
    written += [report, tmp_path / "split.tar.parts", *tmp_path.glob("split.tar.0*")]
    assert len(written) > 8
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(0o640)}, modes
    assert secret.stat().st_mode & 0o777 == 0o600
