"""Interference and hostile input: concurrent writers, a full disk, absurd nesting."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import OCI_INDEX, SeedClient, build_images_sharing_base, seed_image
from harness.skopeo import Skopeo

from transship.errors import ExitCode


def test_two_processes_copying_overlapping_plans_at_once(
    plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    refs = []
    for i, image in enumerate(
        build_images_sharing_base(51, 8, base_sizes=(2_000_000,), layer_sizes=(500_000,))
    ):
        client.push_image(f"race/app{i}", image, "v1")
        refs.append(f"{plain_registry.host}/race/app{i}:v1")
    dest = make_registry("plain")
    lists = []
    for name, chosen in (("a", refs[:6]), ("b", refs[2:])):  # four images in both
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(chosen) + "\n")
        lists.append(path)
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transship",
                "copy",
                "--images",
                str(p),
                "--dest",
                f"{dest.host}/m",
                "-q",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in lists
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for ref in refs:
        path = ref.split("/", 1)[1]
        assert skopeo(dest, f"m/{path}") == skopeo(plain_registry, path)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: real ENOSPC, then grown in place so a rerun can finish."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (
        "this test needs to mount a tmpfs (root, or CAP_SYS_ADMIN, as on CI's VM); "
        f"`mount -t tmpfs` said: {done.stderr.strip() or done.returncode}"
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_while_saving_then_resume(
    cli: CLI, plain_registry: RegistryProcess, small_disk: Path, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    refs = []
    images = build_images_sharing_base(52, 4, base_sizes=(300_000,), layer_sizes=(400_000,))
    for i, image in enumerate(images):
        client.push_image(f"full/app{i}", image, "v1")
        refs.append(f"{plain_registry.host}/full/app{i}:v1")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    archive = small_disk / "layout"
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q", "--parallel", "1")
    assert out.code in (ExitCode.USAGE, ExitCode.PARTIAL)
    assert "No space left on device" in out.err
    for blob in (archive / "blobs" / "sha256").glob("*"):  # nothing half-written under a name
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    kept = {b.name for b in (archive / "blobs" / "sha256").glob("*")}
    subprocess.run(["mount", "-o", "remount,size=20M", str(small_disk)], check=True)
    mark = plain_registry.log_offset()
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert out.code == 0, out.err
    plain_registry.sync_log()  # every line of the rerun's requests is written
    again = [e.path for e in plain_registry.requests("GET", r"/blobs/", since=mark)]
    # image configs are read again on purpose (resolving the list checks the bundle label)
    configs = {img.config.digest.split(":")[1] for img in images}
    assert not any(name in path for name in kept - configs for path in again)
    assert cli("archive", "verify", str(archive)).code == 0


def test_absurdly_nested_index_is_refused(
    cli: CLI, plain_registry: RegistryProcess, make_registry
) -> None:
    image = seed_image(plain_registry, "nest/deep", None, seed=53)
    client = SeedClient.for_registry(plain_registry)
    child = {"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest)}
    for _level in range(7):
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]})
        data = raw.encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        client.push_manifest("nest/deep", digest, data, OCI_INDEX)
        child = {"mediaType": OCI_INDEX, "digest": digest, "size": len(data)}
    client.push_manifest("nest/deep", "v1", data, OCI_INDEX)
    dest = make_registry("plain")
    out = cli("copy", plain_registry.ref("nest/deep:v1"), dest.ref("nest/deep:v1"))
    assert out.code == ExitCode.INTEGRITY
    assert "deeper than" in out.error_line


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ("127.0.0.1:5000/app@sha256:../../etc/passwd", "expected 'sha256:"),
        ("127.0.0.1:5000/app@sha256:abc", "64 lowercase hex"),
        ("127.0.0.1:5000/app@md5:" + "a" * 32, "unsupported algorithm"),
        ("127.0.0.1:5000/../app:v1", "repository component"),
    ],
)
def test_hostile_references(cli: CLI, reference: str, fragment: str) -> None:
    out = cli("copy", reference, "127.0.0.1:9/x:v1")
    assert out.code == ExitCode.USAGE
    assert fragment in out.error_line
