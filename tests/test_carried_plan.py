"""The far side re-checks a load with the plan an archive carries: `--plan ARCHIVE` (directory,
tar, first volume) and `archive plan`, also for a split archive whose plan is in its last volume."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image

from transship.errors import ExitCode
from transship.layout.archive import looks_like_archive
from transship.plan.model import Plan


def _split_save(cli: CLI, plain: RegistryProcess, tmp_path: Path, name: str) -> Path:
    refs = []
    for i in range(3):
        seed_image(plain, f"{name}/app{i}", "v1", seed=900 + i, layer_sizes=(60_000, 50_000))
        refs.append(f"{plain.host}/{name}/app{i}:v1")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    media = tmp_path / "usb"
    out = cli("save", "--images", str(listing), "-o", str(media / "t.tar"), "--split-size", "64K",
              "-q")  # fmt: skip
    assert out.code == 0, out.err
    volumes = sorted(media.glob("t.tar.[0-9][0-9][0-9]"))
    assert len(volumes) >= 3
    return volumes[0]


def test_verify_and_tkg_config_read_the_plan_of_a_split_archive(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _split_save(cli, plain_registry, tmp_path, "carry1")
    # the README's far-side step: the first volume alone does not hold the plan
    tar = subprocess.run(
        ["tar", "-xf", str(first), "--occurrence", "transship/plan.yaml"],
        cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    assert tar.returncode != 0 and not (tmp_path / "transship" / "plan.yaml").exists()

    dest = make_registry("tls")
    ca = str(pki.ca_pem_path)
    prefix = f"{dest.host}/far"
    out = cli("load", str(first), "--dest", prefix, "--dest-ca", ca, "-q")
    assert out.code == 0, out.err
    out = cli("verify", "--plan", str(first), "--dest", prefix, "--dest-ca", ca, "--deep")
    assert out.code == 0, out.err
    assert "complete: 3 entries" in out.out
    # the .parts file names the same archive; the folder of volumes does not for --plan (a
    # mistyped folder is not read as whichever archive is in it), naming the .parts to give
    parts = first.with_name("t.tar.parts")
    out = cli("verify", "--plan", str(parts), "--dest", prefix, "--dest-ca", ca, "-q")
    assert out.code == 0, out.err
    out = cli("verify", "--plan", str(first.parent), "--dest", prefix, "--dest-ca", ca, "-q")
    assert out.code == ExitCode.USAGE, out.err
    assert "a directory that is not an OCI layout" in out.error_line, out.err
    assert f"--plan {parts}" in out.error_line, out.err
    with caplog.at_level("INFO", logger="transship.archive"):  # load takes it, naming it
        out = cli("load", str(first.parent), "--dest", prefix, "--dest-ca", ca, "-q")
    assert out.code == 0, out.err
    said = [r.getMessage() for r in caplog.records if r.name == "transship.archive"]
    assert f"reading the split archive {parts}, the one .parts list in it" in said[0], said
    empty = make_registry("tls")
    out = cli("verify", "--plan", str(first), "--dest", f"{empty.host}/far", "--dest-ca", ca, "-q")
    assert out.code == ExitCode.INCOMPLETE, out.err
    # saved without --dest: the plan names no destination, as load says
    out = cli("verify", "--plan", str(first), "--dest-ca", ca)
    assert out.code == ExitCode.USAGE and "pass --dest" in out.error_line, out.err
    out = cli("tkg", "config", "--plan", str(first), "--dest", prefix, "--ca", ca, "-q")
    assert out.code == 0, out.err
    assert f"TKG_CUSTOM_IMAGE_REPOSITORY {prefix}" in out.out
    out = cli("tkg", "config", "--plan", str(first), "--dest", f"{empty.host}/far", "--ca", ca)
    assert out.code == ExitCode.INCOMPLETE, out.err

    # the explicit extraction: the stored bytes, also to a file
    out = cli("archive", "plan", str(first))
    assert out.code == 0, out.err
    plan = Plan.from_yaml(out.out, "stdout")
    assert {e.destination for e in plan.entries} == {
        f"archive.local/carry1/app{i}" for i in range(3)
    }
    written = tmp_path / "plan.yaml"
    assert cli("archive", "plan", str(first), "-o", str(written)).code == 0
    whole = tmp_path / "whole.tar"
    whole.write_bytes(b"".join(v.read_bytes() for v in sorted(first.parent.glob("t.tar.0*"))))
    carried = subprocess.run(
        ["tar", "-xOf", str(whole), "transship/plan.yaml"], capture_output=True, check=True
    ).stdout
    assert written.read_bytes() == carried
    out = cli("verify", "--plan", str(written), "--dest", prefix, "--dest-ca", ca, "-q")
    assert out.code == 0, out.err
    # a plan named like a volume is a plan: no tar header, no volume list beside it
    numbered = tmp_path / "plan.001"
    numbered.write_bytes(written.read_bytes())
    out = cli("verify", "--plan", str(numbered), "--dest", prefix, "--dest-ca", ca, "-q")
    assert out.code == 0, out.err


def test_a_plan_option_refuses_what_is_neither_plan_nor_archive(cli: CLI, tmp_path: Path) -> None:
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    big = tmp_path / "big.iso"
    with big.open("wb") as handle:
        handle.truncate(65 * 1024 * 1024)  # sparse; above the 64 MiB a plan file may have
    plain_dir = tmp_path / "somedir"
    plain_dir.mkdir()
    latin1 = tmp_path / "plan.yaml"  # a real plan, saved in the wrong encoding
    latin1.write_bytes(b"# caf\xe9\napiVersion: transship/v1\nentries: []\n")
    for given, why in ((binary, "not UTF-8"), (big, "larger than"), (latin1, "not UTF-8")):
        out = cli("verify", "--plan", str(given), "--dest", "127.0.0.1:1/x")
        assert out.code == ExitCode.USAGE, out.err
        line = out.error_line
        assert why in line and "nor an archive" in line and str(given) in line, line
        assert "Traceback" not in out.err
    out = cli("verify", "--plan", str(plain_dir), "--dest", "127.0.0.1:1/x")
    assert out.code == ExitCode.USAGE and str(plain_dir) in out.error_line, out.err
    out = cli("archive", "plan", str(binary))
    assert out.code != 0 and "Traceback" not in out.err


def test_what_looks_like_an_archive(tmp_path: Path) -> None:
    """`--plan` reads an archive or a text file: a `*.NNN` name alone makes no volume."""
    text = tmp_path / "plan.001"
    text.write_text("apiVersion: transship/v1\n")
    assert not looks_like_archive(text)
    assert not looks_like_archive(tmp_path / "absent.001")
    header = tarfile.TarInfo("oci-layout")
    volume = tmp_path / "t.tar.001"  # a first volume whose list is not beside it: an archive,
    volume.write_bytes(header.tobuf(tarfile.USTAR_FORMAT))  # so reading it names the list
    assert looks_like_archive(volume)
    later = tmp_path / "t.tar.002"  # starts mid-member: an archive only by its list
    later.write_bytes(b"\x00" * 1024)
    assert not looks_like_archive(later)
    (tmp_path / "t.tar.parts").write_text("{}")
    assert looks_like_archive(later) and looks_like_archive(tmp_path / "t.tar.parts")
    assert looks_like_archive(tmp_path)


IMGPKG_FIXTURES = Path(__file__).parent / "data" / "imgpkg-tars"  # real imgpkg v0.36 tars


def test_a_plan_imgpkg_tars_listing_re_checks_that_load(
    cli: CLI, make_registry, tmp_path: Path
) -> None:
    """`plan imgpkg-tars -o` writes what the load pushes; `verify --plan` of that document
    checks the load later (complete: 0; a tag removed: 9); copy refuses it in one line."""
    directory = tmp_path / "bundle-dir"
    directory.mkdir()
    for name in ("image-app-a", "index-app-multi", "bundle-app-bundle"):
        (directory / f"{name}.tar").write_bytes((IMGPKG_FIXTURES / f"{name}.tar").read_bytes())
    (directory / "publish-images-fromtar.yaml").write_text(
        "image-app-a.tar: app/a\nindex-app-multi.tar: app/multi\nbundle-app-bundle.tar: b\n"
    )
    reg: RegistryProcess = make_registry("plain")
    prefix = f"{reg.host}/tkg"
    listing = tmp_path / "x.yaml"
    out = cli("plan", "imgpkg-tars", str(directory), "--dest", prefix, "-o", str(listing), "-q")
    assert out.code == 0, out.err
    assert cli("load", str(directory), "--dest", prefix, "-q").code == 0
    out = cli("verify", "--plan", str(listing))
    assert out.code == 0, out.err
    assert "complete: 6 entries" in out.out
    out = cli("verify", "--plan", str(listing), "--dest", prefix, "--deep", "-q")
    assert out.code == 0, out.err
    tag = reg.storage_dir / "docker/registry/v2/repositories/tkg/b/_manifests/tags/v0.1.0"
    assert tag.is_dir()
    shutil.rmtree(tag)
    out = cli("verify", "--plan", str(listing))
    assert out.code == ExitCode.INCOMPLETE, out.err
    assert "tkg/b" in out.out and "v0.1.0" in out.out
    out = cli("copy", "--plan", str(listing))
    assert out.code == ExitCode.USAGE and "plan imgpkg-tars" in out.error_line, out.err
