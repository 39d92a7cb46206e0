"""A save rerun onto the archive it finished: nothing rewritten, exit 0, images skipped — and
refused, saying why, when the archive holds another save (a tag moved, other options) or is
damaged. Through the CLI, against a real registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, seed_image
from test_attachments import image_list, seed
from test_bundles import bundle_image

from transship.errors import ExitCode, IntegrityError
from transship.layout.index import TOOL_FILE
from transship.ops.finished import read_finished
from transship.ops.save import SaveTarget


def write_list(tmp_path: Path, name: str, refs: list[str]) -> Path:
    listing = tmp_path / name
    listing.write_text("\n".join(refs) + "\n")
    return listing


def snapshot(paths: list[Path]) -> dict[Path, tuple[int, bytes]]:
    """Each file's mtime (ns) and bytes: what a rewrite would change."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files if f.is_file()}


def seed_two(reg: RegistryProcess, repo: str, seed: int) -> list[str]:
    for n in range(2):
        seed_image(reg, f"{repo}/app{n}", "v1", seed=seed + n)
    return [f"{reg.host}/{repo}/app{n}:v1" for n in range(2)]


def test_rerun_onto_its_finished_tar_does_nothing_and_succeeds(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    listing = write_list(tmp_path, "images.txt", seed_two(plain_registry, "rerun1", 410))
    archive = tmp_path / "usb" / "images.tar"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    before = snapshot([archive.parent])

    report = tmp_path / "report.json"
    out = cli("save", "--images", str(listing), "-o", str(archive), "--report", str(report))
    assert out.code == 0, out.err
    assert f"{archive} already holds this plan (2 images); nothing to do" in out.err
    assert snapshot([archive.parent]) == before  # not rewritten, not touched
    doc = json.loads(report.read_text())
    assert doc["exitCode"] == 0
    assert [e["status"] for e in doc["entries"]] == ["skipped", "skipped"]
    assert doc["stats"]["blobsSent"] == 0 and doc["stats"]["manifestsPresent"] == 2
    # and the archive is still one load would take
    assert cli("archive", "verify", str(archive)).code == 0


def test_dry_run_onto_its_finished_archive_says_it_would_write_nothing(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """`save --dry-run` makes the check a rerun makes (read only): onto a finished tar, or its
    volumes, holding this plan it says nothing would be written, not the whole size again.
    Onto one holding another plan it measures, as before (only the real run refuses)."""
    refs = []
    for n in range(2):  # 40 KiB layers: more than one 64 KiB volume
        seed_image(plain_registry, f"rerun0/app{n}", "v1", seed=400 + n, layer_sizes=(40_000,))
        refs.append(f"{plain_registry.host}/rerun0/app{n}:v1")
    listing = write_list(tmp_path, "images.txt", refs)
    usb = tmp_path / "usb"
    for archive, split in ((usb / "one.tar", ()), (usb / "cut.tar", ("--split-size", "64K"))):
        save = ("save", "--images", str(listing), "-o", str(archive), *split)
        assert cli(*save, "-q").code == 0
        before = snapshot([usb])
        out = cli(*save, "--dry-run")
        assert out.code == 0, out.err
        said = f"save would write nothing: {archive} already holds this plan (2 images)"
        assert said in out.err, out.err
        assert "free space there" not in out.err, out.err  # nothing measured
        assert snapshot([usb]) == before

    seed_image(plain_registry, "rerun0/app1", "v1", seed=499, layer_sizes=(40_000,))  # moved
    out = cli("save", "--images", str(listing), "-o", str(usb / "one.tar"), "--dry-run")
    assert out.code == 0, out.err
    assert "save would write " in out.err and "would write nothing" not in out.err, out.err
    assert snapshot([usb]) == before


def test_rerun_after_a_tag_moved_is_refused_naming_the_image(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    listing = write_list(tmp_path, "images.txt", seed_two(plain_registry, "rerun2", 420))
    archive = tmp_path / "images.tar"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    before = snapshot([archive])

    seed_image(plain_registry, "rerun2/app1", "v1", seed=499)  # the tag moved at the source
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert out.code == ExitCode.USAGE, out.err
    line = out.error_line
    assert str(archive) in line and "holds another plan: 1 image differs" in line, line
    assert "(rerun2/app1:v1: it holds sha256:" in line and ", the source now sha256:" in line
    assert line.endswith("; remove it or choose another name")
    assert snapshot([archive]) == before

    other = write_list(tmp_path, "other.txt", [f"{plain_registry.host}/rerun2/app0:v1"])
    out = cli("save", "--images", str(other), "-o", str(archive), "-q")  # another list
    assert out.code == ExitCode.USAGE, out.err
    assert "holds another plan" in out.error_line and "rerun2/app1:v1" in out.error_line
    assert snapshot([archive]) == before


def test_rerun_onto_split_volumes_does_nothing_and_another_size_is_refused(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    refs = []
    for n in range(3):  # a few layers of 40 KiB: more than one 64 KiB volume
        seed_image(plain_registry, f"rerun3/app{n}", "v1", seed=430 + n, layer_sizes=(40_000,))
        refs.append(f"{plain_registry.host}/rerun3/app{n}:v1")
    listing = write_list(tmp_path, "images.txt", refs)
    usb = tmp_path / "usb"
    archive = usb / "images.tar"
    save = ("save", "--images", str(listing), "-o", str(archive), "-q")
    assert cli(*save, "--split-size", "64K").code == 0
    assert len(list(usb.glob("images.tar.[0-9][0-9][0-9]"))) > 1
    before = snapshot([usb])

    out = cli(*save[:-1], "--split-size", "64K")
    assert out.code == 0, out.err
    assert "already holds this plan (3 images); nothing to do" in out.err
    assert snapshot([usb]) == before

    out = cli(*save, "--split-size", "128K")
    assert out.code == ExitCode.USAGE
    assert "volumes of 65536 bytes" in out.error_line and "--split-size" in out.error_line
    out = cli(*save)  # one tar asked for: the volumes are not that
    assert out.code == ExitCode.USAGE and "cut into volumes" in out.error_line
    assert snapshot([usb]) == before


def test_rerun_onto_a_finished_directory_does_nothing(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    listing = write_list(tmp_path, "images.txt", seed_two(plain_registry, "rerun4", 440))
    archive = tmp_path / "layout"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    before = snapshot([archive])

    out = cli("save", "--images", str(listing), "-o", str(archive))
    assert out.code == 0, out.err
    assert f"{archive} already holds this plan (2 images); nothing to do" in out.err
    assert snapshot([archive]) == before


def test_rerun_onto_a_damaged_archive_is_never_claimed(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    listing = write_list(tmp_path, "images.txt", seed_two(plain_registry, "rerun5", 450))
    archive = tmp_path / "images.tar"
    layout = tmp_path / "layout"
    for out_path in (archive, layout):
        assert cli("save", "--images", str(listing), "-o", str(out_path), "-q").code == 0

    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # cut short on the way
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert out.code == ExitCode.INTEGRITY, out.err
    assert str(archive) in out.error_line and "is damaged" in out.error_line
    assert "remove it or choose another name" in out.error_line

    index_file = layout / "index.json"
    kept = index_file.read_bytes()
    index = json.loads(kept)
    index["manifests"][0]["annotations"]["edited"] = "by hand"  # the same names, edited
    index_file.write_text(json.dumps(index))
    out = cli("save", "--images", str(listing), "-o", str(layout), "-q")
    assert out.code == ExitCode.INTEGRITY, out.err
    assert "index.json does not match transship/SHA256SUMS" in out.error_line
    index_file.write_bytes(kept)

    manifest = json.loads(kept)["manifests"][0]
    image = json.loads((layout / "blobs" / "sha256" / manifest["digest"][7:]).read_bytes())
    layer = layout / "blobs" / "sha256" / image["layers"][0]["digest"][7:]
    layer.write_bytes(layer.read_bytes()[:-1])  # a blob cut short
    out = cli("save", "--images", str(listing), "-o", str(layout), "-q")
    assert out.code == ExitCode.INTEGRITY, out.err
    assert "is damaged" in out.error_line and "remove it or choose another name" in out.error_line


def test_rerun_of_a_plan_file_and_of_an_increment(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    refs = seed_two(plain_registry, "rerun6", 460)
    plan_file = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(write_list(tmp_path, "images.txt", refs)), "--dest",
              "harbor.corp/tkg", "-o", str(plan_file), "-q")  # fmt: skip
    assert out.code == 0, out.err
    # a hand-trimmed plan naming tags only: the save asks the source, so the rerun does too
    tags_only = tmp_path / "tags-only.yaml"
    lines = plan_file.read_text().splitlines(keepends=True)
    tags_only.write_text("".join(ln for ln in lines if "sourceDigest:" not in ln))
    base = tmp_path / "base.tar"
    assert cli("save", "--plan", str(tags_only), "-o", str(base), "-q").code == 0
    before = snapshot([base])
    out = cli("save", "--plan", str(tags_only), "-o", str(base))
    assert out.code == 0, out.err
    assert "already holds this plan (2 images); nothing to do" in out.err
    assert snapshot([base]) == before

    seed_image(plain_registry, "rerun6/app0", "v2", seed=469)  # a new image: an increment
    refs.append(f"{plain_registry.host}/rerun6/app0:v2")
    listing = write_list(tmp_path, "more.txt", refs)
    increment = tmp_path / "increment.tar"
    save = ("save", "--images", str(listing), "-o", str(increment), "-q")
    assert cli(*save, "--since", str(base)).code == 0
    before = snapshot([increment])
    out = cli(*save, "--since", str(base))
    assert out.code == 0, out.err
    out = cli(*save)  # the same list as a whole archive: not what the increment is
    assert out.code == ExitCode.USAGE
    assert "holds a save made on top of base.tar; this run: no --since" in out.error_line
    assert snapshot([increment]) == before

    seed_image(plain_registry, "rerun6/app1", "v1", seed=479)  # moved: the plan names the tag
    out = cli("save", "--plan", str(tags_only), "-o", str(base), "-q")
    assert out.code == ExitCode.USAGE
    assert "1 image differs (rerun6/app1:v1: it holds sha256:" in out.error_line


def test_rerun_with_attachments_does_nothing(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Signatures, attestations and referrers travel as plan entries of their own: the same
    ones, at the same digests, are the same save."""
    listing = image_list(tmp_path, seed(plain_registry, "rerun7"))
    archive = tmp_path / "signed.tar"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    before = snapshot([archive])
    out = cli("save", "--images", str(listing), "-o", str(archive))
    assert out.code == 0, out.err
    assert "already holds this plan (" in out.err and "nothing to do" in out.err
    assert snapshot([archive]) == before
    out = cli("save", "--images", str(listing), "-o", str(archive), "--no-attachments", "-q")
    assert out.code == ExitCode.USAGE and "holds another plan: " in out.error_line


def _list_fake_tool(layout: Path, tool: Path) -> None:
    """A `transship/bin/transship` line in SHA256SUMS (as `--include-tool` writes), naming
    `tool`'s sha256: the single-file build is not needed to test what a rerun makes of it."""
    sums = layout / "transship" / "SHA256SUMS"
    digest = hashlib.sha256(tool.read_bytes()).hexdigest()
    sums.write_text(sums.read_text() + f"{digest}  {TOOL_FILE}\n")


def test_rerun_checks_the_carried_tool_is_there_and_intact(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """SHA256SUMS lists the carried tool: a rerun reads the file, never only the line."""
    listing = write_list(tmp_path, "images.txt", seed_two(plain_registry, "rerun8", 480))
    layout = tmp_path / "layout"
    assert cli("save", "--images", str(listing), "-o", str(layout), "-q").code == 0
    tool = tmp_path / "transship-build"
    tool.write_bytes(b"#!/bin/sh\necho a single-file transship\n")
    _list_fake_tool(layout, tool)
    target = SaveTarget(layout, tool=tool)

    with pytest.raises(IntegrityError) as missing:  # listed, not there
        asyncio.run(read_finished(target))
    assert f"{TOOL_FILE}: listed in transship/SHA256SUMS but not in the archive" in str(
        missing.value
    )
    carried = layout / TOOL_FILE
    carried.parent.mkdir(parents=True)
    carried.write_bytes(tool.read_bytes()[:-1] + b"!")  # there, bytes changed
    with pytest.raises(IntegrityError) as damaged:
        asyncio.run(read_finished(target))
    assert "is damaged" in str(damaged.value) and "does not match" in str(damaged.value)
    carried.write_bytes(tool.read_bytes())  # intact: the same save
    assert asyncio.run(read_finished(target)).path == layout

    carried.unlink()  # and through the CLI (this build carries none): exit 7, damaged
    out = cli("save", "--images", str(listing), "-o", str(layout), "-q")
    assert out.code == ExitCode.INTEGRITY, out.err
    assert "listed in transship/SHA256SUMS but not in the archive" in out.error_line


def test_rerun_onto_an_archive_missing_a_named_manifest_is_damaged(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    listing = write_list(tmp_path, "images.txt", seed_two(plain_registry, "rerun9", 490))
    layout = tmp_path / "layout"
    assert cli("save", "--images", str(listing), "-o", str(layout), "-q").code == 0
    named = json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"]
    (layout / "blobs" / "sha256" / named.removeprefix("sha256:")).unlink()
    out = cli("save", "--images", str(listing), "-o", str(layout), "-q")
    assert out.code == ExitCode.INTEGRITY, out.err
    line = out.error_line
    assert f"is damaged: manifest {named[:19]}" in line and ":v1 is missing" in line, line
    assert line.endswith("; remove it or choose another name")


def test_rerun_of_an_increment_whose_base_was_resaved_names_the_base(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """The increment is intact: what is gone is in its base, so the line says restore that."""
    a, b = seed_two(plain_registry, "rerun10", 500)
    seed_image(plain_registry, "rerun10/other", "v1", seed=509)
    base = tmp_path / "base.tar"
    assert cli("save", "--images", str(write_list(tmp_path, "a.txt", [a])), "-o", str(base),
               "-q").code == 0  # fmt: skip
    increment = tmp_path / "increment.tar"
    save = ("save", "--images", str(write_list(tmp_path, "ab.txt", [a, b])), "-o",
            str(increment), "--since", str(base), "-q")  # fmt: skip
    assert cli(*save).code == 0
    before = snapshot([increment])
    base.unlink()  # the base saved again, with other images
    other = write_list(tmp_path, "other.txt", [f"{plain_registry.host}/rerun10/other:v1"])
    assert cli("save", "--images", str(other), "-o", str(base), "-q").code == 0

    out = cli(*save)
    assert out.code == ExitCode.USAGE, out.err
    line = out.error_line
    assert f"{increment} is intact but its base base.tar no longer holds blob sha256:" in line
    assert "of rerun10/app0:v1 (was base.tar re-saved?); restore the base it was saved on" in line
    assert "remove it" not in line and "damaged" not in line
    assert snapshot([increment]) == before


def test_rerun_with_a_bundle_not_expanded_this_time_fails_on_the_bundle(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle held back (its images unreadable now) is this run's failure, not 'another
    plan' in the archive: the line names the bundle and never says to remove the archive."""
    host = plain_registry.host
    app = seed_image(plain_registry, "rerun11/app", "v1", seed=510)
    client = SeedClient.for_registry(plain_registry)
    client.push_image("rerun11/bundle", bundle_image([f"{host}/rerun11/app@{app.digest}"], "b"),
                      "v1")  # fmt: skip
    seed_image(plain_registry, "rerun11/other", "v1", seed=511)
    listing = write_list(
        tmp_path, "images.txt", [f"{host}/rerun11/bundle:v1", f"{host}/rerun11/other:v1"]
    )
    layout = tmp_path / "layout"
    save = ("save", "--images", str(listing), "-o", str(layout))
    assert cli(*save, "-q").code == 0
    before = snapshot([layout])

    client.delete_manifest("rerun11/app", app.digest)  # the bundle cannot be expanded now
    monkeypatch.setenv("TRANSSHIP_NO_CACHE", "1")  # resolve the list again, as a new list
    out = cli(*save)
    assert out.code == ExitCode.PARTIAL, out.err
    assert f"bundle {host}/rerun11/bundle:v1 could not be expanded" in out.err, out.err
    assert f"{layout} holds the rest of this plan (1 images); nothing to do" in out.err
    assert "0 / 1 / 1" in out.err  # copied / skipped / failed: the bundle counted as failed
    assert "holds another plan" not in out.err and "remove it" not in out.err
    assert snapshot([layout]) == before


def test_rerun_of_a_tags_only_plan_asks_the_source_by_head(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """A plan naming tags only: the rerun asks each tag's digest with a HEAD, no manifest
    read (a GET counts as a pull on some registries and moves their retention)."""
    refs = [f"{plain_registry.host}/rerun12/app{n}:v1" for n in range(3)]
    for n in range(3):
        seed_image(plain_registry, f"rerun12/app{n}", "v1", seed=520 + n)
    plan_file = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(write_list(tmp_path, "images.txt", refs)), "--dest",
              "harbor.corp/tkg", "-o", str(plan_file), "-q")  # fmt: skip
    assert out.code == 0, out.err
    tags_only = tmp_path / "tags-only.yaml"
    lines = plan_file.read_text().splitlines(keepends=True)
    tags_only.write_text("".join(ln for ln in lines if "sourceDigest:" not in ln))
    archive = tmp_path / "tags.tar"
    assert cli("save", "--plan", str(tags_only), "-o", str(archive), "-q").code == 0

    mark = plain_registry.sync_log()
    out = cli("save", "--plan", str(tags_only), "-o", str(archive))
    assert out.code == 0, out.err
    assert "already holds this plan (3 images); nothing to do" in out.err
    plain_registry.sync_log()  # every line of the rerun's requests written
    asked = [e for e in plain_registry.access_log(mark) if "/manifests/" in e.path]
    assert sorted((e.method, e.path) for e in asked) == [
        ("HEAD", f"/v2/rerun12/app{n}/manifests/v1") for n in range(3)
    ], asked
