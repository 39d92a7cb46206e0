"""save → removable media → load, with real registries on both sides and skopeo as referee."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_images_sharing_base, seed_image, seed_index
from harness.skopeo import Skopeo

from transship.errors import ExitCode

CREDS = "alice:s3cret-Pa55"


def corpus(reg: RegistryProcess, prefix: str, layer: int = 30_000) -> tuple[list[str], set[str]]:
    client = SeedClient.for_registry(reg)
    refs = []
    images = build_images_sharing_base(41, 4, base_sizes=(200_000,), layer_sizes=(layer,))
    for i, image in enumerate(images):
        client.push_image(f"{prefix}/app{i % 2}", image, f"v{i}")
        refs.append(f"{reg.host}/{prefix}/app{i % 2}:v{i}")
    index = seed_index(reg, f"{prefix}/multi", "v1", seed=42, fmt="docker")
    refs.append(f"{reg.host}/{prefix}/multi:v1")
    blobs = {b.digest for img in images for b in img.pushable_blobs} | set(index.blob_digests)
    manifests = {img.digest for img in images} | set(index.manifest_digests)
    return refs, blobs | manifests


def write_list(tmp_path: Path, refs: list[str]) -> Path:
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    return listing


def test_save_dir_then_load_into_tls_registry(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refs, stored = corpus(plain_registry, "gap1")
    archive = tmp_path / "usb" / "tkg"
    out = cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(archive), "-q")
    assert out.code == 0, out.err
    files = {p.name for p in (archive / "blobs" / "sha256").iterdir()}
    assert files == {d.split(":")[1] for d in stored}  # every blob and manifest exactly once
    assert (archive / "transship" / "plan.yaml").is_file()
    index = json.loads((archive / "index.json").read_text())
    notes = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["annotations"]
        for m in index["manifests"]
    }
    assert notes["gap1/app0:v0"]["io.transship.source"] == refs[0]
    assert notes["gap1/app0:v0"]["io.transship.destination"] == "archive.local/gap1/app0:v0"
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "transship/SHA256SUMS"], cwd=archive)
    assert sums.returncode == 0
    # another OCI tool reads what transship wrote
    raw = skopeo.run("inspect", "--raw", f"oci:{archive}:gap1/app0:v0").stdout
    assert raw == skopeo(plain_registry, "gap1/app0:v0")

    dest = make_registry("tls_basic")
    out = cli(
        "load",
        str(archive),
        "--dest",
        f"{dest.host}/internal",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "-q",
    )
    assert out.code == 0, out.err
    for ref in refs:
        path = ref.split("/", 1)[1]
        assert skopeo(dest, f"internal/{path}") == skopeo(plain_registry, path)
    monkeypatch.setenv("COLUMNS", "80")  # a pipe of the default width: a row per entry
    listed = cli("archive", "list", str(archive))
    assert listed.code == 0 and "gap1/multi" in listed.out
    rows = [ln for ln in listed.out.splitlines() if "sha256:" in ln]
    assert len(rows) == len(refs), listed.out
    assert all(re.search(r"application/vnd\.\S+json\s*│$", ln) for ln in rows), listed.out
    listed = cli("archive", "list", str(archive), "--format", "json")
    assert listed.code == 0, listed.err
    rows = {(e["repository"], e["tag"]): e["digest"] for e in json.loads(listed.out)["entries"]}
    for ref in refs:  # full digests, for scripts: what skopeo says the source holds
        path = ref.split("/", 1)[1]
        repository, tag = path.rsplit(":", 1)
        assert rows[(repository, tag)] == skopeo.digest(plain_registry, path)
    verified = cli("archive", "verify", str(archive))
    assert verified.code == 0 and "0 problem(s)" in verified.out


def test_archive_list_in_a_pipe_keeps_an_imgpkg_tag_in_a_long_repository_on_one_line(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TKG archive holds `sha256-<64 hex>.imgpkg` tags in long repositories: 200 columns
    is too narrow for such a row, so in a pipe the table is as wide as its rows need (one
    line per entry, whole names: grep finds them)."""
    repository = "tanzu-cluster-essentials/some-long-subproject/kapp-controller"
    tags = [f"sha256-{'ab' * 32}.imgpkg", "v0.50.0"]
    layout = tmp_path / "tkg"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{str(n) * 64}",
            "size": 500,
            "annotations": {"org.opencontainers.image.ref.name": f"{repository}:{tag}"},
        }
        for n, tag in enumerate(tags)
    ]
    index = {"schemaVersion": 2, "manifests": manifests}
    (layout / "index.json").write_text(json.dumps(index))
    for columns in ("80", "200"):  # a pipe of the default width, and the wider log
        monkeypatch.setenv("COLUMNS", columns)
        listed = cli("archive", "list", str(layout))
        assert listed.code == 0, listed.err
        for tag in tags:
            rows = [ln for ln in listed.out.splitlines() if tag in ln]
            assert len(rows) == 1 and repository in rows[0], listed.out
            assert rows[0].rstrip().endswith("json │"), listed.out


def test_paths_with_brackets_are_printed_as_given(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output path is no Rich markup: `[old]` is not eaten and `[/x]` raises nothing
    (it used to end in a MarkupError traceback); each message is one line in a log."""
    refs, _stored = corpus(plain_registry, "gapbr")
    parent = tmp_path / "usb[/x]" / "tkg[old]"
    parent.mkdir(parents=True)
    archive = parent / ("tkg-archive-with-a-rather-long-name-" + "y" * 60 + ".tar")
    images = write_list(tmp_path, refs)
    monkeypatch.setenv("COLUMNS", "80")  # a log of the default width
    out = cli("save", "--images", str(images), "-o", str(archive))
    assert out.code == 0, out.err
    assert re.search(rf"^wrote {re.escape(str(archive))} \(\d+ blobs", out.err, re.M), out.err
    for args in ((), ("--dry-run",)):  # a rerun: it holds this plan already
        out = cli("save", "--images", str(images), "-o", str(archive), *args)
        assert out.code == 0, out.err
        assert f"{archive} already holds this plan" in out.err, out.err
    listed = cli("archive", "list", str(archive))
    assert listed.code == 0 and str(archive) in listed.out, listed.out + listed.err


def test_save_tar_read_in_place_and_by_skopeo(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refs, _stored = corpus(plain_registry, "gap2")
    tar = tmp_path / "tkg.tar"
    monkeypatch.setenv("COLUMNS", "80")  # a log or pipe of the default width
    dry = cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(tar), "--dry-run")
    monkeypatch.setenv("COLUMNS", "200")
    assert dry.code == 0 and "save would write" in dry.err and not tar.exists()
    out = cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(tar), "-q")
    assert out.code == 0, out.err
    assert tar.is_file() and not (tmp_path / "tkg.tar.partial").exists()
    # the dry run counts what the archive then holds, as archive verify counts it: each
    # manifest once, and not again among the blobs
    checked = cli("archive", "verify", str(tar))
    found = re.search(r"(\d+) manifests and (\d+) blobs checked", checked.out)
    assert checked.code == 0 and found, checked.out
    manifests, blobs = found.groups()
    assert f"({blobs} blobs, {manifests} manifests)" in dry.err, dry.err
    [line] = dry.err.splitlines()  # one line however long its path, for logs and grep
    assert line.startswith("save would write ") and "; free space there: " in line, dry.err
    # skopeo looks up OCI-typed entries only (a Docker manifest list is not found by name)
    raw = skopeo.run("inspect", "--raw", f"oci-archive:{tar}:gap2/app0:v0").stdout
    assert raw == skopeo(plain_registry, "gap2/app0:v0")
    dest = make_registry("plain")
    out = cli("load", str(tar), "--dest", f"{dest.host}/x", "-q")
    assert out.code == 0, out.err
    assert skopeo(dest, "x/gap2/app0:v0") == raw
    assert skopeo(dest, "x/gap2/multi:v1") == skopeo(plain_registry, "gap2/multi:v1")


def test_load_a_layout_that_skopeo_wrote(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    index = seed_index(plain_registry, "gap3/multi", "v1", seed=43)
    layout = tmp_path / "skopeo-layout"
    skopeo.run(
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"docker://{plain_registry.ref('gap3/multi:v1')}",
        f"oci:{layout}:tkg/multi:v1",
    )
    dest = make_registry("plain")
    out = cli("load", str(layout), "--dest", f"{dest.host}/p", "-q")
    assert out.code == 0, out.err
    assert skopeo(dest, "p/tkg/multi:v1") == index.manifest


def test_killed_save_resumes_without_downloading_again(
    plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    refs, stored = corpus(plain_registry, "gap4", layer=4_000_000)
    archive = tmp_path / "layout"
    args = [
        sys.executable,
        "-m",
        "transship",
        "save",
        "--images",
        str(write_list(tmp_path, refs)),
        "-o",
        str(archive),
        "-q",
        "--parallel",
        "2",
    ]
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    mark = plain_registry.log_offset()
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    blob_dir = archive / "blobs" / "sha256"
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and len(list(blob_dir.glob("*")) if blob_dir.exists() else []) < 2
    ):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.name for p in blob_dir.iterdir()}
    assert kept and len(kept) < len(stored), "the kill came too late to test resume"
    # the killed save's directory does not pass for a finished archive
    check = [sys.executable, "-m", "transship", "archive", "verify", str(archive)]
    verified = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == ExitCode.INCOMPLETE, verified.stdout + verified.stderr
    assert "its save did not finish" in verified.stderr
    mark = plain_registry.log_offset()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    plain_registry.sync_log()  # every line of the rerun's requests is written
    fetched = {
        unquote(m.group(1)).split(":")[1]
        for e in plain_registry.requests("GET", r"/blobs/", since=mark)
        if (m := re.search(r"/blobs/(sha256[^/?]+)", e.path))
    }
    # configs are read again on purpose: resolving the list checks each for the bundle label
    configs = set()
    for blob in blob_dir.iterdir():
        try:
            doc = json.loads(blob.read_bytes())
        except (ValueError, UnicodeDecodeError):
            continue
        if (
            isinstance(doc, dict)
            and isinstance(doc.get("config"), dict)
            and "digest" in doc["config"]
        ):
            configs.add(doc["config"]["digest"].split(":")[1])
    assert not (fetched - configs) & kept, "a layer already written was downloaded again"
    assert {p.name for p in blob_dir.iterdir()} == {d.split(":")[1] for d in stored}
    verified = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stderr


def test_tampered_blob_is_named_and_nothing_depends_on_it(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    refs, _stored = corpus(plain_registry, "gap5")
    archive = tmp_path / "layout"
    assert (
        cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(archive), "-q").code == 0
    )
    # flip a byte in the unique top layer of app0:v0
    manifest = skopeo.run("inspect", "--raw", f"oci:{archive}:gap5/app0:v0").stdout
    import json

    layer = json.loads(manifest)["layers"][-1]["digest"].split(":")[1]
    path = archive / "blobs" / "sha256" / layer
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    verified = cli("archive", "verify", str(archive))
    assert verified.code == ExitCode.INTEGRITY and layer[:12] in verified.err
    dest = make_registry("plain")
    out = cli("load", str(archive), "--dest", f"{dest.host}/t", "-q")
    assert out.code == ExitCode.PARTIAL
    assert layer[:12] in out.err and "gap5/app0:v0" in out.err
    assert not dest.has_blob(f"sha256:{layer}")
    probe = skopeo.run(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{dest.ref('t/gap5/app0:v0')}",
        check=False,
    )
    assert probe.returncode != 0  # no manifest was pushed on top of the bad blob
    assert skopeo(dest, "t/gap5/app1:v1") == skopeo(plain_registry, "gap5/app1:v1")


def test_malicious_tar_is_refused(cli: CLI, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name in ("oci-layout", "../escape"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    out = cli("load", str(evil), "--dest", "127.0.0.1:9/x")
    assert out.code == ExitCode.USAGE
    assert "../escape" in out.error_line
    assert not (tmp_path.parent / "escape").exists()


def test_split_volumes_load_from_first_part_and_refuse_incomplete_set(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    refs, _stored = corpus(plain_registry, "gap6")
    media = tmp_path / "media"
    out = cli(
        "save",
        "--images",
        str(write_list(tmp_path, refs)),
        "-o",
        str(media / "tkg.tar"),
        "--split-size",
        "100K",
        "-q",
    )
    assert out.code == 0, out.err
    parts = sorted(media.glob("tkg.tar.[0-9][0-9][0-9]"))
    assert len(parts) >= 3 and (media / "tkg.tar.parts").is_file()
    assert all(p.stat().st_size <= 100 * 1024 for p in parts)
    assert cli("archive", "verify", str(parts[0])).code == 0
    dest = make_registry("plain")
    out = cli("load", str(parts[0]), "--dest", f"{dest.host}/v", "-q")
    assert out.code == 0, out.err
    assert skopeo(dest, "v/gap6/multi:v1") == skopeo(plain_registry, "gap6/multi:v1")
    # the name the save was given is no file now: every command taking the archive says
    # which file to give instead (exit 1)
    named = str(media / "tkg.tar")
    for args in (
        ("load", named, "--dest", f"{dest.host}/v"),
        ("archive", "verify", named),
        ("serve", named, "--listen", "127.0.0.1:0"),
        ("verify", "--plan", named, "--dest", f"{dest.host}/v"),
        ("serve", str(parts[0]), "--base", named, "--listen", "127.0.0.1:0"),
        ("save", "--images", str(tmp_path / "images.txt"), "--since", named, "-o", "x.tar"),
    ):
        out = cli(*args)
        assert out.code == ExitCode.USAGE, (args, out.err)
        assert f"give its first volume {parts[0]}" in out.error_line, (args, out.err)
    # a damaged volume is found by verify; a missing one stops load before anything is pushed
    data = bytearray(parts[1].read_bytes())
    data[-1] ^= 1
    parts[1].write_bytes(bytes(data))
    assert cli("archive", "verify", str(media)).code == ExitCode.INTEGRITY
    parts[-1].unlink()
    out = cli("load", str(media), "--dest", f"{dest.host}/w")
    assert out.code == ExitCode.USAGE and parts[-1].name in out.error_line


def test_a_volume_damaged_where_the_tar_headers_are_is_named_as_damaged(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Members are written in arrival order and `oci-layout`/`index.json` at the end, so a
    damaged volume can hide them from the scan: that is a damaged volume (exit 7, named),
    not "not an OCI layout" (a usage error)."""
    refs, _stored = corpus(plain_registry, "gap6z")
    media = tmp_path / "media"
    listing = str(write_list(tmp_path, refs))
    save = cli("save", "--images", listing, "-o", str(media / "t.tar"), "--split-size", "100K")
    assert save.code == 0, save.err
    parts = sorted(media.glob("t.tar.[0-9][0-9][0-9]"))
    parts[-1].write_bytes(bytes(parts[-1].stat().st_size))  # zeros: the scan ends early
    for target in (media, parts[0]):
        out = cli("archive", "verify", str(target))
        assert out.code == ExitCode.INTEGRITY, out.err
        assert parts[-1].name in out.error_line and "Traceback" not in out.err


def test_incremental_archive_chain(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    refs, _stored = corpus(plain_registry, "gap7")
    first, second = tmp_path / "a.tar", tmp_path / "b"
    assert (
        cli("save", "--images", str(write_list(tmp_path, refs[:2])), "-o", str(first), "-q").code
        == 0
    )
    increment_save = ("save", "--images", str(write_list(tmp_path, refs)), "-o", str(second))
    dry = cli(*increment_save, "--since", str(first), "--dry-run")
    assert dry.code == 0, dry.err
    out = cli(*increment_save, "--since", str(first), "-q")
    assert out.code == 0, out.err
    increment = {p.name for p in (second / "blobs" / "sha256").iterdir()}
    base_blob = json.loads(
        skopeo.run("inspect", "--raw", f"oci-archive:{first}:gap7/app0:v0").stdout
    )["layers"][0]["digest"].split(":")[1]
    assert base_blob not in increment  # the shared base layer travelled in a.tar only
    # archive verify counts the blobs it re-hashed, not those left to the base
    checked = cli("archive", "verify", str(second))
    assert checked.code == 0, checked.err
    found = re.search(r"(\d+) blobs are held by the base archive a\.tar beside it", checked.out)
    assert found and int(found.group(1)) > 0, checked.out
    manifests = int(re.search(r"(\d+) manifests and", checked.out).group(1))
    blobs = len(increment) - manifests
    assert f"manifests and {blobs} blobs checked, 0 problem(s)" in checked.out, checked.out
    # the dry run counted the same: the blobs the base lacks, and every manifest (an
    # increment carries all its index names, whatever the base holds)
    assert f"({blobs} blobs, {manifests} manifests)" in dry.err, dry.err
    fresh = make_registry("plain")
    alone = cli("load", str(second), "--dest", f"{fresh.host}/i", "-q")
    assert alone.code in (ExitCode.PARTIAL, ExitCode.NOT_FOUND)
    assert "incremental on top of a.tar" in alone.err
    dest = make_registry("plain")
    assert cli("load", str(first), "--dest", f"{dest.host}/i", "-q").code == 0
    out = cli("load", str(second), "--dest", f"{dest.host}/i", "-q")
    assert out.code == 0, out.err
    for ref in refs:
        path = ref.split("/", 1)[1]
        assert skopeo(dest, f"i/{path}") == skopeo(plain_registry, path)


def test_bundles_cross_the_gap_in_order(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A resolved plan with a nested bundle: save, then load keeps imgpkg's order and tags."""
    from test_bundles import Corpus

    corpus = Corpus(plain_registry, "gap8", 760)
    plan_file = tmp_path / "plan.yaml"
    out = cli(
        "plan",
        "images",
        str(write_list(tmp_path, [corpus.root_ref])),
        "--dest",
        "harbor.example/mirror",
        "-o",
        str(plan_file),
        "-q",
    )
    assert out.code == 0, out.err
    archive = tmp_path / "bundles.tar"
    out = cli(
        "save",
        "--plan",
        str(plan_file),
        "--dest",
        "harbor.example/mirror",
        "-o",
        str(archive),
        "-q",
    )
    assert out.code == 0, out.err
    dest = make_registry("plain")
    out = cli("load", str(archive), "--dest", f"{dest.host}/air", "-q")
    assert out.code == 0, out.err
    repo = f"air/{corpus.repo_path}"
    dest.wait_for_log(r"PUT /v2/\S+/manifests/sha256-[0-9a-f]+\.image-locations\.imgpkg")
    puts = [
        e.path.rsplit("/", 1)[1]
        for e in dest.access_log()
        if e.method == "PUT" and "/manifests/" in e.path
    ]
    bundle_tag_at = puts.index("v1.5.3")
    for item in (corpus.package, corpus.contour_image, corpus.envoy):
        assert puts.index(f"sha256-{item.digest[7:]}.imgpkg") < bundle_tag_at
    records = [i for i, p in enumerate(puts) if p.endswith(".image-locations.imgpkg")]
    assert records and min(records) > bundle_tag_at
    assert skopeo(dest, f"{repo}:v1.5.3") == corpus.root.manifest
    tags = set(SeedClient.for_registry(dest).list_tags(repo))
    assert f"sha256-{corpus.root.digest[7:]}.image-locations.imgpkg" in tags


def catalog(reg: RegistryProcess) -> set[str]:
    answer = SeedClient.for_registry(reg).request("GET", "/v2/_catalog")
    return set(json.loads(answer.body)["repositories"])


def test_archive_from_a_plan_loads_where_the_plan_said(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Every image under tkg/…: the archive keeps the plan's --dest, not the longest common
    prefix (which would be DEST/tkg), so `load --dest NEW` replaces exactly the planned prefix."""
    images = {
        "tkg/kube-apiserver": seed_image(plain_registry, "tkg/kube-apiserver", "v1.22", seed=91),
        "tkg/antrea": seed_image(plain_registry, "tkg/antrea", "v1.2", seed=92),
    }
    multi = seed_index(plain_registry, "tkg/pause", "3.5", seed=93)
    refs = [
        plain_registry.ref("tkg/kube-apiserver:v1.22"),
        plain_registry.ref("tkg/antrea:v1.2"),
        plain_registry.ref("tkg/pause:3.5"),
    ]
    dest = make_registry("plain")
    plan_file = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(write_list(tmp_path, refs)), "--dest", dest.host,
              "-o", str(plan_file), "-q")  # fmt: skip
    assert out.code == 0, out.err
    assert f"destinationPrefix: {dest.host}\n" in plan_file.read_text()
    archive = tmp_path / "usb" / "tkg.tar"
    out = cli("save", "--plan", str(plan_file), "-o", str(archive), "-q")
    assert out.code == 0, out.err

    out = cli("load", str(archive), "-q")  # no --dest: where the plan said
    assert out.code == 0, out.err
    assert catalog(dest) == {"tkg/kube-apiserver", "tkg/antrea", "tkg/pause"}
    assert skopeo(dest, "tkg/kube-apiserver:v1.22") == images["tkg/kube-apiserver"].manifest
    assert skopeo(dest, "tkg/pause:3.5") == multi.manifest

    other = make_registry("plain")
    out = cli("load", str(archive), "--dest", other.host, "-q")  # replaces exactly DEST
    assert out.code == 0, out.err
    out = cli("load", str(archive), "--dest", f"{other.host}/corp", "-q")
    assert out.code == 0, out.err
    assert catalog(other) == {
        *("tkg/kube-apiserver", "tkg/antrea", "tkg/pause"),
        *("corp/tkg/kube-apiserver", "corp/tkg/antrea", "corp/tkg/pause"),
    }
    assert skopeo(other, "corp/tkg/antrea:v1.2") == images["tkg/antrea"].manifest
    out = cli("load", str(archive), "--dest", "https://x.example/t")
    assert out.code == ExitCode.USAGE and "--dest 'https://x.example/t'" in out.error_line

    # an archive from before the fix: no prefixOrigin; its prefix is used as recorded, with a
    # warning that it may be the longest common prefix rather than the planned --dest
    layout = tmp_path / "old"
    assert cli("save", "--plan", str(plan_file), "-o", str(layout), "-q").code == 0
    info_file = layout / "transship" / "archive.json"
    doc = json.loads(info_file.read_text())
    assert (doc["destinationPrefix"], doc["prefixOrigin"]) == (dest.host, "plan")
    del doc["prefixOrigin"]
    info_file.write_text(json.dumps(doc))
    old = make_registry("plain")
    out = cli("load", str(layout), "--dest", f"{old.host}/x")
    assert out.code == 0, out.err
    assert "does not record the destination prefix its plan was made for" in out.err
    assert catalog(old) == {"x/tkg/kube-apiserver", "x/tkg/antrea", "x/tkg/pause"}

    # a list saved without --dest names no destination: load asks for one
    unplanned = tmp_path / "unplanned"
    out = cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(unplanned), "-q")
    assert out.code == 0, out.err
    out = cli("load", str(unplanned))
    assert out.code == ExitCode.USAGE and "was saved without --dest" in out.error_line
