"""`transship load` of imgpkg tars into a real registry, skopeo as referee: one tar as
`imgpkg copy --tar F --to-repo R` does, and whole sets (from-tar script, download-bundle
directory) as one plan with each blob sent once."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.skopeo import Skopeo

from transship.errors import ExitCode
from transship.imgpkg.locations import ImageLocation, build_image_locations
from transship.layout.archive import write_tar

FIXTURES = Path(__file__).parent / "data" / "imgpkg-tars"
APP_A = "sha256:98eabb44fe0612b082ca13bd7797c064c574975be98184de5302c89ff7a1f4e6"
APP_B = "sha256:ab8aba3dcb7f5f294cbc912a3e7163061aa3ad347c262d8ac808946d2bfa59fe"
MULTI = "sha256:13c7097f3a2cd21ff4a73f789e88457ae0f78916427dfed57bc0da4f27f8c946"
BUNDLE = "sha256:f1d49e67c0e6f360d4db7f626791d972c171a36ff8198861b7cef5434d18a5c4"
#: every distinct blob of the three fixtures: three layers, three configs
UNIQUE_BLOBS = 6


def digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def imgpkg_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".imgpkg"


def test_one_image_tar(cli: CLI, make_registry, skopeo: Skopeo, tmp_path: Path) -> None:
    reg: RegistryProcess = make_registry("plain")
    report = tmp_path / "report.json"
    out = cli(
        "load", str(FIXTURES / "image-app-a.tar"), "--dest", f"{reg.host}/apps/app-a",
        "--report", str(report), "-q",
    )  # fmt: skip
    assert out.code == 0, out.err
    assert skopeo.digest(reg, "apps/app-a:v1.0.0") == APP_A  # the tag is kept
    assert skopeo.digest(reg, f"apps/app-a:{imgpkg_tag(APP_A)}") == APP_A  # as imgpkg tags
    entries = json.loads(report.read_text())["entries"]
    assert [(e["digest"], e["status"]) for e in entries] == [(APP_A, "copied")]
    # a rerun asks the destination and sends nothing
    since = reg.log_offset()
    again = cli("load", str(FIXTURES / "image-app-a.tar"), "--dest", f"{reg.host}/apps/app-a")
    assert again.code == 0, again.err
    assert reg.blob_uploads(since=since) == []


def test_index_tar_keeps_the_list_and_its_children(cli: CLI, make_registry, skopeo: Skopeo) -> None:
    reg: RegistryProcess = make_registry("plain")
    out = cli("load", str(FIXTURES / "index-app-multi.tar"), "--dest", f"{reg.host}/m/multi", "-q")
    assert out.code == 0, out.err
    raw = skopeo(reg, "m/multi:v1")
    assert digest_of(raw) == MULTI and raw.startswith(b"{\n   ")  # byte for byte
    for child in (APP_A, APP_B):
        assert digest_of(skopeo(reg, f"m/multi@{child}")) == child


def _image_locations_yaml(reg: RegistryProcess, skopeo: Skopeo, repo: str) -> bytes:
    tag = BUNDLE.replace(":", "-") + ".image-locations.imgpkg"
    manifest = json.loads(skopeo(reg, f"{repo}:{tag}"))
    (layer,) = manifest["layers"]
    data = reg.blob_path(layer["digest"]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        handle = tar.extractfile("image-locations.yml")
        assert handle is not None
        return handle.read()


def test_bundle_tar_relocates_into_the_bundle_repository(
    cli: CLI, make_registry, skopeo: Skopeo
) -> None:
    reg: RegistryProcess = make_registry("plain")
    out = cli(
        "load", str(FIXTURES / "bundle-app-bundle.tar"), "--dest", f"{reg.host}/app-bundle", "-q"
    )
    assert out.code == 0, out.err
    assert skopeo.digest(reg, "app-bundle:v0.1.0") == BUNDLE  # SOURCES.md
    for image in (APP_A, APP_B):  # both images present by digest in the bundle's repository
        assert skopeo.digest(reg, f"app-bundle@{image}") == image
        assert skopeo.digest(reg, f"app-bundle:{imgpkg_tag(image)}") == image
    # ImageLocations as imgpkg >= 0.37 writes it: the images.yml references, none a bundle
    lock = yaml.safe_load((FIXTURES / "bundle-images.yml").read_text())
    rows = [ImageLocation(i["image"], False) for i in lock["images"]]
    text = _image_locations_yaml(reg, skopeo, "app-bundle")
    assert (
        text
        == (
            "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nimages:\n"
            f"- image: 127.0.0.1:5701/fixtures/app-a@{APP_A}\n  isBundle: false\n"
            f"- image: 127.0.0.1:5701/fixtures/app-b@{APP_B}\n  isBundle: false\n"
            "kind: ImageLocations\n"
        ).encode()
    )
    expected = build_image_locations(rows).digest
    tag = BUNDLE.replace(":", "-") + ".image-locations.imgpkg"
    assert skopeo.digest(reg, f"app-bundle:{tag}") == str(expected)


def _set_dir(tmp_path: Path) -> Path:
    """The three fixtures as a download-bundle directory would hold them."""
    directory = tmp_path / "bundle-dir"
    directory.mkdir()
    for name in ("image-app-a", "index-app-multi", "bundle-app-bundle"):
        shutil.copy(FIXTURES / f"{name}.tar", directory / f"{name}.tar")
    return directory


def test_download_bundle_directory_sends_each_blob_once(
    cli: CLI, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    reg: RegistryProcess = make_registry("plain")
    directory = _set_dir(tmp_path)
    (directory / "publish-images-fromtar.yaml").write_text(
        "bundle-app-bundle.tar: packages/app-bundle\n"
        "image-app-a.tar: app/a\n"
        "index-app-multi.tar: app/multi\n"
    )
    report = tmp_path / "r.json"
    since = reg.log_offset()
    out = cli("load", str(directory), "--dest", f"{reg.host}/tkg", "--report", str(report))
    assert out.code == 0, out.err
    assert "de-duplication saves" in out.err
    assert skopeo.digest(reg, "tkg/app/a:v1.0.0") == APP_A
    assert skopeo.digest(reg, "tkg/app/multi:v1") == MULTI
    assert skopeo.digest(reg, "tkg/packages/app-bundle:v0.1.0") == BUNDLE
    uploads = reg.blob_uploads(since=since)
    # the shared layers and configs go up once; every other repository mounts them
    assert len(uploads) == UNIQUE_BLOBS + 2, [u.path for u in uploads]  # + ImageLocations
    assert reg.blob_mounts(since=since)
    statuses = {e["status"] for e in json.loads(report.read_text())["entries"]}
    assert statuses == {"copied"}


def test_fromtar_script_with_tars_elsewhere(
    cli: CLI, make_registry, skopeo: Skopeo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg: RegistryProcess = make_registry("plain")
    tars = _set_dir(tmp_path)
    script = tmp_path / "publish-images-fromtar.sh"
    script.write_text(
        "set -eo pipefail\n"
        "# Processing BOM\n"
        "imgpkg copy --tar images/image-app-a.tar --to-repo old.example/tkg/app/a\n"
        "imgpkg copy --tar images/index-app-multi.tar --to-repo old.example/tkg/app/multi\n"
        "imgpkg copy --tar images/bundle-app-bundle.tar --to-repo old.example/tkg/app-bundle\n"
    )
    # the script's registry is re-rooted under --dest; the tars are found with --tars
    args = ["load", "--script", str(script), "--tars", str(tars), "--dest", f"{reg.host}/air"]
    out = cli(*args, "-q")
    assert out.code == 0, out.err
    assert skopeo.digest(reg, "air/app/a:v1.0.0") == APP_A
    assert skopeo.digest(reg, "air/app/multi:v1") == MULTI
    assert skopeo.digest(reg, "air/app-bundle:v0.1.0") == BUNDLE
    with caplog.at_level("WARNING", logger="transship.imgpkg"):  # no YAML beside the script:
        assert cli(*args, "-q").code == 0  # the shared prefix is replaced, and that is said
    assert "share old.example/tkg/: it is replaced by" in caplog.text
    missing = tmp_path / "other.sh"
    missing.write_text("imgpkg copy --tar nowhere.tar --to-repo r.example/x\n")
    bad = cli("load", "--script", str(missing))
    assert bad.code == ExitCode.USAGE
    assert "other.sh:1: nowhere.tar not found" in bad.error_line


def test_plan_lists_pushes_and_dedup_savings(cli: CLI, tmp_path: Path) -> None:
    directory = _set_dir(tmp_path)
    (directory / "publish-images-fromtar.yaml").write_text(
        "image-app-a.tar: app/a\nindex-app-multi.tar: app/multi\nbundle-app-bundle.tar: b\n"
    )
    listing = tmp_path / "plan.json"
    out = cli("plan", "imgpkg-tars", str(directory), "--dest", "r.example/tkg", "-o", str(listing))
    assert out.code == 0, out.err
    doc = json.loads(listing.read_text())
    assert doc["tars"] == 3
    pushed = {(p["destination"], p["digest"], p["kind"]) for p in doc["push"]}
    assert ("r.example/tkg/b", BUNDLE, "bundle") in pushed
    assert ("r.example/tkg/app/multi", MULTI, "index") in pushed
    assert any(kind == "image-locations" for _, _, kind in pushed)
    # app-a's layer and config are in all three tars, app-b's in two
    assert doc["savedBytes"] == doc["storedBytes"] - doc["uniqueBytes"]
    assert doc["savedBytes"] >= 2 * (146 + 273 + 423) + (147 + 273 + 423)


def test_a_damaged_tar_fails_alone(cli: CLI, make_registry, skopeo: Skopeo, tmp_path: Path) -> None:
    reg: RegistryProcess = make_registry("plain")
    directory = _set_dir(tmp_path)
    (directory / "publish-images-fromtar.yaml").write_text(
        "image-app-a.tar: app/a\nindex-app-multi.tar: app/multi\n"
    )
    # zero app-b's layer in the index tar (what an interrupted imgpkg leaves)
    path = directory / "index-app-multi.tar"
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        member = tar.getmember(
            "sha256-11d9617bb5ca99bc8d77c7e5c2a8d408b6b5c784be8e5937d258f81c880ef808.tar.gz"
        )
        data[member.offset_data : member.offset_data + member.size] = bytes(member.size)
    path.write_bytes(bytes(data))
    out = cli("load", str(directory), "--dest", f"{reg.host}/tkg", "-q")
    assert out.code == ExitCode.PARTIAL, out.err
    assert skopeo.digest(reg, "tkg/app/a:v1.0.0") == APP_A
    absent = skopeo.run(
        "inspect", "--raw", *skopeo.authfile_args, *skopeo.transport_args(reg),
        f"docker://{reg.ref('tkg/app/multi:v1')}", check=False,
    )  # fmt: skip
    assert absent.returncode != 0  # nothing pushed on top of a bad blob
    assert not reg.has_blob(
        "sha256:11d9617bb5ca99bc8d77c7e5c2a8d408b6b5c784be8e5937d258f81c880ef808"
    )


def test_save_as_imgpkg_tars_then_load_them(
    cli: CLI, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """save --format imgpkg-tars writes the vendor's layout; reading it back gives the same
    digests, bundle relocation included."""
    upstream: RegistryProcess = make_registry("plain")
    for name, repo in (("image-app-a", "src/app-a"), ("bundle-app-bundle", "src/app-bundle")):
        out = cli("load", str(FIXTURES / f"{name}.tar"), "--dest", f"{upstream.host}/{repo}", "-q")
        assert out.code == 0, out.err
    images = tmp_path / "images.txt"
    images.write_text(f"{upstream.host}/src/app-a:v1.0.0\n{upstream.host}/src/app-bundle:v0.1.0\n")
    media = tmp_path / "media"
    args = ["save", "--images", str(images), "--dest", "air.example/tkg", "-o", str(media)]
    out = cli(*args, "--format", "imgpkg-tars", "-q")
    assert out.code == 0, out.err
    assert sorted(p.name for p in media.glob("*.tar")) == [
        "src-app-a-v1.0.0.tar",
        "src-app-bundle-v0.1.0.tar",
    ]
    assert (media / "publish-images-fromtar.yaml").read_text() == (
        "src-app-a-v1.0.0.tar: src/app-a\nsrc-app-bundle-v0.1.0.tar: src/app-bundle\n"
    )
    script = (media / "publish-images-fromtar.sh").read_text()
    assert "imgpkg copy --tar src-app-a-v1.0.0.tar --to-repo air.example/tkg/src/app-a\n" in script
    # a rerun keeps the finished tars
    before = {p.name: p.stat().st_mtime_ns for p in media.glob("*.tar")}
    assert cli(*args, "--format", "imgpkg-tars", "-q").code == 0
    assert {p.name: p.stat().st_mtime_ns for p in media.glob("*.tar")} == before
    # the other side: upload-bundle's way in, through the YAML
    dest: RegistryProcess = make_registry("plain")
    out = cli("load", str(media), "--dest", f"{dest.host}/tkg", "-q")
    assert out.code == 0, out.err
    assert skopeo.digest(dest, "tkg/src/app-a:v1.0.0") == APP_A
    assert skopeo.digest(dest, "tkg/src/app-bundle:v0.1.0") == BUNDLE
    for image in (APP_A, APP_B):
        assert skopeo.digest(dest, f"tkg/src/app-bundle@{image}") == image


def test_imgpkg_tars_saved_without_a_destination_push_where_the_far_side_says(
    cli: CLI, make_registry, skopeo: Skopeo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved from a list without --dest, the script pushes under $TKG_CUSTOM_IMAGE_REPOSITORY
    (no placeholder host); `load --script` puts --dest (or that variable) in its place, and a
    script with literal destinations keeps every path below them, as the YAML beside it says."""
    upstream: RegistryProcess = make_registry("plain")
    out = cli("load", str(FIXTURES / "image-app-a.tar"), "--dest", f"{upstream.host}/tkg/app-a",
              "-q")  # fmt: skip
    assert out.code == 0, out.err
    images = tmp_path / "images.txt"
    images.write_text(f"{upstream.host}/tkg/app-a:v1.0.0\n")
    media = tmp_path / "media"
    out = cli("save", "--images", str(images), "-o", str(media), "--format", "imgpkg-tars", "-q")
    assert out.code == 0, out.err
    script = media / "publish-images-fromtar.sh"
    line = script.read_text().splitlines()[-1]
    assert line.startswith("imgpkg copy --tar tkg-app-a-v1.0.0.tar --to-repo ")
    assert '"${TKG_CUSTOM_IMAGE_REPOSITORY:?' in line and "archive.local" not in line
    echoed = line.replace("imgpkg copy", "echo", 1)
    bare = {"PATH": os.environ["PATH"]}
    unset = subprocess.run(["bash", "-c", echoed], capture_output=True, text=True, env=bare)
    assert unset.returncode != 0 and "TKG_CUSTOM_IMAGE_REPOSITORY" in unset.stderr
    monkeypatch.delenv("TKG_CUSTOM_IMAGE_REPOSITORY", raising=False)
    out = cli("load", "--script", str(script))
    assert out.code == ExitCode.USAGE and "$TKG_CUSTOM_IMAGE_REPOSITORY" in out.error_line
    dest: RegistryProcess = make_registry("plain")
    out = cli("load", "--script", str(script), "--dest", f"{dest.host}/far", "-q")
    assert out.code == 0, out.err
    assert skopeo.digest(dest, "far/tkg/app-a:v1.0.0") == APP_A
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY", f"{dest.host}/env")
    out = cli("load", "--script", str(script), "-q")
    assert out.code == 0, out.err
    assert skopeo.digest(dest, "env/tkg/app-a:v1.0.0") == APP_A

    named = tmp_path / "named"  # saved with --dest: literal destinations, re-rooted exactly
    out = cli("save", "--images", str(images), "--dest", f"{upstream.host}/ip", "-o", str(named),
              "--format", "imgpkg-tars", "-q")  # fmt: skip
    assert out.code == 0, out.err
    out = cli("load", "--script", str(named / "publish-images-fromtar.sh"),
              "--dest", f"{dest.host}/moved", "-q")  # fmt: skip
    assert out.code == 0, out.err
    assert skopeo.digest(dest, "moved/tkg/app-a:v1.0.0") == APP_A  # `tkg/` kept


def test_progress_total_counts_the_image_locations_it_sends(
    cli: CLI, make_registry, tmp_path: Path
) -> None:
    """A bundle's ImageLocations record is made and sent by the load: the total to send
    (what progress and the ETA count down from) includes it, so it is not below what is sent
    (it counts manifests too, which the bytes sent leave out)."""
    dest: RegistryProcess = make_registry("plain")
    report = tmp_path / "r.json"
    out = cli("load", str(FIXTURES / "bundle-app-bundle.tar"), "--dest", f"{dest.host}/b",
              "--report", str(report))  # fmt: skip
    assert out.code == 0, out.err
    total = int(re.search(r"to send \((\d+) bytes\)", out.err).group(1))  # type: ignore[union-attr]
    sent = sum(e["bytes"] for e in json.loads(report.read_text())["entries"])
    assert sent <= total, (total, sent)


async def test_completeness_check_catches_a_missing_tag(plain_registry: RegistryProcess) -> None:
    from transship.engine import CopyTask, TaskResult
    from transship.errors import IncompleteError
    from transship.imgpkg.fromtar import check_complete
    from transship.imgpkg.tarball import ImgpkgTar
    from transship.remote.registry import Registry, RegistryOptions

    tar = ImgpkgTar(FIXTURES / "image-app-a.tar")
    registry = Registry(plain_registry.host, RegistryOptions(plain_http=True))
    try:
        task = CopyTask(tar, "", APP_A, registry, "complete/never-pushed", ("v1.0.0",))
        (result,) = await check_complete([TaskResult(task, "copied", tar.items[0].digest)])
        assert result.status == "failed" and isinstance(result.error, IncompleteError)
        assert "tag v1.0.0 is missing" in str(result.error)
    finally:
        await registry.close()
        await tar.close()


def _uploaded_digests(reg: RegistryProcess, since: int = 0) -> set[str]:
    from urllib.parse import unquote

    out = set()
    for entry in reg.blob_uploads(since=since):
        out.add(unquote(entry.path.split("digest=", 1)[1].split("&", 1)[0]))
    return out


def test_killed_load_of_a_tar_set_resumes_without_sending_again(
    make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Tars written by transship's writer at some scale: twelve images sharing a 3 MB base,
    one tar each (so the base is in every tar); kill -9 mid-load, then run again."""
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import time

    from harness.seed import SeedClient, build_images_sharing_base

    from transship.imgpkg.tarwriter import TarSource, write_imgpkg_tar
    from transship.remote.registry import Registry, RegistryOptions

    upstream: RegistryProcess = make_registry("plain")
    client = SeedClient.for_registry(upstream)
    images = build_images_sharing_base(
        7, 12, fmt="docker", base_sizes=(3_000_000,), layer_sizes=(300_000,)
    )
    for i, image in enumerate(images):
        client.push_image(f"kill/app{i}", image, "v1")
    media = tmp_path / "media"

    async def write() -> None:
        registry = Registry(upstream.host, RegistryOptions(plain_http=True))
        try:
            for i in range(len(images)):
                source = TarSource(
                    registry, f"kill/app{i}", "v1", f"{upstream.host}/kill/app{i}", tag="v1"
                )
                await write_imgpkg_tar(media / f"kill-app{i}-v1.tar", [source])
        finally:
            await registry.close()

    asyncio.run(write())
    (media / "publish-images-fromtar.yaml").write_text(
        "".join(f"kill-app{i}-v1.tar: kill/app{i}\n" for i in range(len(images)))
    )
    held = sum(p.stat().st_size for p in media.glob("*.tar"))
    unique = sum({b.digest: b.size for im in images for b in im.pushable_blobs}.values())
    assert held > 3 * unique  # the set holds the shared base a dozen times

    dest: RegistryProcess = make_registry("plain")
    args = [sys.executable, "-m", "transship", "load", str(media), "--dest", f"{dest.host}/air"]
    args += ["-q", "--parallel", "2"]
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not dest.blob_uploads():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dest.wait_idle()  # uploads whose bytes had reached the registry still complete
    before = _uploaded_digests(dest)
    assert before and len(before) < len({b.digest for im in images for b in im.pushable_blobs})
    mark = dest.log_offset()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    dest.wait_idle()  # access lines are written after the replies
    after = _uploaded_digests(dest, since=mark)
    assert not before & after, "a blob that had landed was sent again"
    assert len(before | after) == len({b.digest for im in images for b in im.pushable_blobs})
    for i, image in enumerate(images):
        assert skopeo.digest(dest, f"air/kill/app{i}:v1") == image.digest


def test_a_tampered_tar_is_one_error_line(cli: CLI, tmp_path: Path) -> None:
    with tarfile.open(FIXTURES / "image-app-a.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    info, data = members[0]
    members[0] = (info, data.replace(b'\\"size\\":146', b'\\"size\\":147'))
    path = tmp_path / "tampered.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for member, content in members:
            member.size = len(content)
            out.addfile(member, io.BytesIO(content))
    result = cli("load", str(path), "--dest", "127.0.0.1:1/never")
    assert result.code == ExitCode.INTEGRITY
    assert "tampered.tar" in result.error_line and "bytes hash to" in result.error_line


def test_download_bundle_yaml_cannot_climb_out_of_the_prefix(cli: CLI, tmp_path: Path) -> None:
    directory = _set_dir(tmp_path)
    (directory / "publish-images-fromtar.yaml").write_text("image-app-a.tar: ../../other/x\n")
    out = cli("plan", "imgpkg-tars", str(directory), "--dest", "r.example/tkg")
    assert out.code == ExitCode.USAGE
    assert "climbs out of the destination prefix" in out.error_line
    (directory / "publish-images-fromtar.yaml").write_text("image-app-a.tar: /app/a\n")
    listing = tmp_path / "p.json"
    out = cli("plan", "imgpkg-tars", str(directory), "--dest", "r.example/tkg", "-o", str(listing))
    assert out.code == 0, out.err
    assert {p["destination"] for p in json.loads(listing.read_text())["push"]} == {
        "r.example/tkg/app/a"
    }


def test_a_plain_directory_of_tars_says_what_it_needs(cli: CLI, tmp_path: Path) -> None:
    directory = _set_dir(tmp_path)  # tars, but no publish-images-fromtar.yaml
    out = cli("plan", "imgpkg-tars", str(directory))
    assert out.code == ExitCode.USAGE
    assert "needs publish-images-fromtar.yaml" in out.error_line and "--script" in out.error_line
    # load says the same, not "not an OCI layout": it takes such folders (with their YAML)
    out = cli("load", str(directory), "--dest", "127.0.0.1:9/x")
    assert out.code == ExitCode.USAGE
    assert "needs publish-images-fromtar.yaml" in out.error_line and "--script" in out.error_line


def test_a_tar_whose_tag_climbs_into_another_repository_is_refused(
    cli: CLI, make_registry, tmp_path: Path
) -> None:
    """An item's `Tag` becomes the last part of `PUT /v2/REPO/manifests/TAG`: one such as
    `../../other/manifests/pwned` used to be sent as it was, the URL path was normalised and the
    manifest landed in another repository (`apps/other:pwned`) than the `--dest` given. A tag
    outside the grammar is refused naming the tar and item, before anything is pushed."""
    reg: RegistryProcess = make_registry("plain")
    # the other repository already holds the image's blobs, so only the tag would be new there
    first = cli("load", str(FIXTURES / "image-app-a.tar"), "--dest", f"{reg.host}/apps/other")
    assert first.code == 0, first.err
    with tarfile.open(FIXTURES / "image-app-a.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    info, data = members[0]
    doc = json.loads(data)
    doc[0]["Image"]["Tag"] = "../../other/manifests/pwned"
    members[0] = (info, json.dumps(doc).encode())
    path = tmp_path / "climbing.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for member, content in members:
            member.size = len(content)
            out.addfile(member, io.BytesIO(content))
    since = reg.log_offset()
    result = cli("load", str(path), "--dest", f"{reg.host}/apps/app-a")
    assert result.code == ExitCode.USAGE, result.err
    line = result.error_line
    assert "climbing.tar" in line and "item 0 Tag '../../other/manifests/pwned'" in line
    assert [e for e in reg.access_log(since=since) if e.method == "PUT"] == []
    status, _ = reg.probe("/v2/apps/other/manifests/pwned")
    assert status == 404


def test_download_bundle_yaml_naming_a_tar_twice_is_refused(cli: CLI, tmp_path: Path) -> None:
    """The last of two lines for one tar used to win without a word: which repository was meant?"""
    directory = _set_dir(tmp_path)
    (directory / "publish-images-fromtar.yaml").write_text(
        "image-app-a.tar: app/a\nimage-app-a.tar: app/b\n"
    )
    out = cli("plan", "imgpkg-tars", str(directory), "--dest", "r.example/tkg")
    assert out.code == ExitCode.USAGE, out.err
    assert "publish-images-fromtar.yaml:2:" in out.error_line
    assert "'image-app-a.tar' given twice (first on line 1)" in out.error_line


def test_a_tar_listing_no_image_is_refused_not_loaded_as_done(
    cli: CLI, make_registry, tmp_path: Path
) -> None:
    """A tar whose manifest.json is `[]` (imgpkg never writes one) loaded nothing and exited 0:
    a wrong or damaged file taken for a finished job."""
    reg: RegistryProcess = make_registry("plain")
    with tarfile.open(FIXTURES / "image-app-a.tar") as tar:
        info = tar.getmember("manifest.json")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w", format=tarfile.USTAR_FORMAT) as out:
        info.size = 2
        out.addfile(info, io.BytesIO(b"[]"))
    since = reg.log_offset()
    for command in (("load",), ("plan", "imgpkg-tars")):
        args = (*command, str(empty), "--dest", f"{reg.host}/apps/x")
        out = cli(*args)
        assert out.code == ExitCode.USAGE, out.err
        assert "empty.tar" in out.error_line and "lists no image" in out.error_line
    assert [e for e in reg.access_log(since=since) if e.method in ("PUT", "POST")] == []


def test_a_folder_holding_one_oci_archive_names_the_archive_file(cli: CLI, tmp_path: Path) -> None:
    """A folder is taken for a folder of imgpkg tars only when its tars are imgpkg's: one
    holding the OCI archive `save -o app.tar` wrote is told to give that file instead."""
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    one = tmp_path / "one"
    one.mkdir()
    write_tar(layout, one / "app.tar")
    out = cli("load", str(one), "--dest", "127.0.0.1:9/x")
    assert out.code == ExitCode.USAGE, out.err
    assert f"give the archive file {one / 'app.tar'}" in out.error_line
    assert "publish-images-fromtar" not in out.error_line
    # beside imgpkg tars too, the OCI archive is what is named
    shutil.copy(FIXTURES / "image-app-a.tar", one / "image-app-a.tar")
    out = cli("load", str(one), "--dest", "127.0.0.1:9/x")
    assert f"give the archive file {one / 'app.tar'}" in out.error_line


def test_a_folder_of_volumes_without_their_list_says_so_despite_a_stray_tar(
    cli: CLI, tmp_path: Path
) -> None:
    """`tkg.tar.001`, `tkg.tar.002` without `tkg.tar.parts`, and a `notes.tar` beside them: the
    missing volume list is what to say, not what a folder of imgpkg tars needs."""
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "tkg.tar.001").write_bytes(b"\0" * 1024)
    (mix / "tkg.tar.002").write_bytes(b"\0" * 1024)
    with tarfile.open(mix / "notes.tar", "w") as tar:
        data = b"notes\n"
        info = tarfile.TarInfo("notes.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    out = cli("load", str(mix), "--dest", "127.0.0.1:9/x")
    assert out.code != 0
    assert "looks like a volume" in out.error_line, out.err
    assert "copy tkg.tar.parts" in out.error_line
    assert "publish-images-fromtar" not in out.error_line
