"""Whole-plan copies: each blob once, mounts across repositories, resume after kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from clirunner import CLI
from harness.pki import PKI
from harness.registry import AccessLogEntry, RegistryProcess
from harness.seed import SeedClient, build_images_sharing_base, seed_image, seed_index
from harness.skopeo import Skopeo

from transship.errors import ExitCode

CREDS = "alice:s3cret-Pa55"


def uploaded_digests(entries: list[AccessLogEntry]) -> list[str]:
    out = []
    for e in entries:
        m = re.search(r"digest=([^&]+)", e.path)
        if m:
            out.append(unquote(m.group(1)))
    return out


def seed_corpus(reg: RegistryProcess, prefix: str, layer: int = 40_000) -> tuple[list[str], dict]:
    """Six images sharing one base layer across three repositories, plus an index."""
    client = SeedClient.for_registry(reg)
    refs = []
    images = build_images_sharing_base(31, 6, base_sizes=(300_000,), layer_sizes=(layer,))
    for i, image in enumerate(images):
        repo = f"{prefix}/app{i % 3}"
        client.push_image(repo, image, f"v{i}")
        refs.append(f"{reg.host}/{repo}:v{i}")
    index = seed_index(reg, f"{prefix}/multi", "v1", seed=32)
    refs.append(f"{reg.host}/{prefix}/multi:v1")
    unique = {b.digest for img in images for b in img.pushable_blobs} | set(index.blob_digests)
    return refs, {"images": images, "index": index, "unique_blobs": unique}


def test_plan_copy_sends_each_blob_once_and_mounts(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    refs, corpus = seed_corpus(plain_registry, "corpus1")
    dest = make_registry("tls_basic")
    listing = tmp_path / "images.txt"
    listing.write_text("# corpus\n" + "\n".join(refs + refs[:2]) + "\n")  # duplicates too
    report, lock = tmp_path / "report.json", tmp_path / "lock.yml"
    out = cli(
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--report",
        str(report),
        "--lock-output",
        str(lock),
    )
    assert out.code == 0, out.err
    dest.wait_for_log(r"PUT /v2/mirror/corpus1/multi/manifests/v1")
    uploads = uploaded_digests(dest.blob_uploads())
    assert sorted(uploads) == sorted(corpus["unique_blobs"])  # every blob exactly once
    assert dest.blob_mounts()  # the shared base went to the other repositories by mount
    for ref in refs:
        path = ref.split("/", 1)[1]
        assert skopeo(dest, f"mirror/{path}") == skopeo(plain_registry, path)
    doc = json.loads(report.read_text())
    assert {e["status"] for e in doc["entries"]} == {"copied"} and len(doc["entries"]) == 7
    mark = dest.log_offset()
    again = cli(
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
    )
    assert again.code == 0, again.err
    dest.wait_for_log(r"HEAD /v2/mirror/corpus1/multi/manifests/v1", since=mark)
    requests = [e for e in dest.access_log(since=mark) if e.path != "/v2/"]
    heads = [e for e in requests if e.method == "HEAD"]
    lists = [e for e in requests if e.method == "GET" and re.search(r"tags/list|_catalog", e.path)]
    # a HEAD per tag; only the first check asks what is there (the catalog, where it would
    # have listed its repository): the destination looks complete after it, so listing the
    # others would only add requests
    assert len(heads) == 7 and len(lists) == 1 and len(requests) == 8
    locked = yaml.safe_load(lock.read_text())
    assert locked["kind"] == "ImagesLock" and len(locked["images"]) == 7
    assert all("@sha256:" in i["image"] for i in locked["images"])


def test_kill_and_resume_resends_nothing_that_landed(
    plain_registry: RegistryProcess, make_registry, pki: PKI, skopeo: Skopeo, tmp_path: Path
) -> None:
    refs, corpus = seed_corpus(plain_registry, "corpus2", layer=3_000_000)
    dest = make_registry("tls_basic")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    args = [
        sys.executable,
        "-m",
        "transship",
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-ca",
        str(pki.ca_pem_path),
        "-q",
        "--parallel",
        "2",
    ]
    env = {**os.environ, "TRANSSHIP_DEST_CREDS": CREDS, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not dest.blob_uploads() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dest.wait_idle()  # a PUT whose bytes had all arrived completes after the kill
    first = set(uploaded_digests(dest.blob_uploads()))
    assert first and first != corpus["unique_blobs"], "the kill came too late to test resume"
    mark = dest.log_offset()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    dest.wait_idle()  # access lines are written after the replies
    assert dest.requests("PUT", r"/v2/mirror/corpus2/multi/manifests/v1", since=mark)
    second = uploaded_digests(dest.blob_uploads(since=mark))
    assert not first & set(second), "a blob that had landed was sent again"
    assert first | set(second) == corpus["unique_blobs"]
    for ref in refs:
        path = ref.split("/", 1)[1]
        assert skopeo(dest, f"mirror/{path}") == skopeo(plain_registry, path)


def test_two_plans_joined_into_one_file_are_refused_not_half_copied(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    """`cat a.yaml b.yaml > all.yaml`: every top-level key is given twice, and PyYAML kept the
    last of each, so `copy --plan all.yaml` copied only b's entries and exited 0 (`verify`
    said complete). A key given twice in a plan is one line naming the file, the line and the
    key (exit 1), and nothing is pushed."""
    seed_image(plain_registry, "joined/app", "v1", seed=7401, layer_sizes=(3_000,))
    seed_image(plain_registry, "joined/tool", "v1", seed=7402, layer_sizes=(3_000,))
    dest: RegistryProcess = make_registry("plain")
    halves = []
    for name in ("app", "tool"):
        listing = tmp_path / f"{name}.txt"
        listing.write_text(f"{plain_registry.host}/joined/{name}:v1\n")
        plan = tmp_path / f"{name}.yaml"
        out = cli("plan", "images", str(listing), "--dest", f"{dest.host}/m", "-o", str(plan))
        assert out.code == 0, out.err
        halves.append(plan.read_text())
    joined = tmp_path / "all.yaml"
    joined.write_text(halves[0] + halves[1])
    second = (
        halves[0].count("\n")
        + 1
        + halves[1]
        .splitlines()
        .index(next(ln for ln in halves[1].splitlines() if ln.startswith("apiVersion:")))
    )
    since = dest.log_offset()
    for command in ("copy", "verify"):
        out = cli(command, "--plan", str(joined))
        assert out.code == ExitCode.USAGE, out.err
        line = out.error_line
        assert f"all.yaml:{second}:" in line and "'apiVersion' given twice" in line
    assert [e for e in dest.access_log(since=since) if e.method in ("PUT", "POST")] == []


def test_a_plan_larger_than_an_image_list_may_be_is_read_and_plan_never_writes_an_unreadable_one(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`plan` writes some 300 bytes per entry, five times its image list's line, but a plan
    file was read with the 16 MiB cap of lists and BOMs: a list of 60,000 images gave a plan
    (written, exit 0) that `copy/verify --plan` then refused as 'larger than 16777216 bytes'.
    Plans are read up to the 64 MiB an archive carries (here: a reviewed plan with a long
    comment block past 16 MiB), and `plan` refuses to write one larger than that."""
    seed_image(plain_registry, "bigplan/app", "v1", seed=7501, layer_sizes=(2_000,))
    dest: RegistryProcess = make_registry("plain")
    listing = tmp_path / "images.txt"
    listing.write_text(f"{plain_registry.host}/bigplan/app:v1\n")
    plan = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(listing), "--dest", f"{dest.host}/m", "-o", str(plan))
    assert out.code == 0, out.err
    note = "# reviewed: " + "x" * 1000 + "\n"
    with plan.open("a") as handle:
        handle.write(note * (17 * 1024))  # 17 MiB
    assert plan.stat().st_size > 16 * 1024 * 1024
    out = cli("copy", "--plan", str(plan), "-q")
    assert out.code == 0, out.err
    source_digest = skopeo.digest(plain_registry, "bigplan/app:v1")
    assert skopeo.digest(dest, "m/bigplan/app:v1") == source_digest
    monkeypatch.setattr("transship.commands.plan.MAX_PLAN_BYTES", 600)
    out = cli("plan", "images", str(listing), "--dest", f"{dest.host}/m", "-o", str(tmp_path / "b"))
    assert out.code == ExitCode.USAGE, out.err
    assert "more than the 600 a plan file may have" in out.error_line
    assert not (tmp_path / "b").exists()
