"""`copy/save/verify --shard I/N` against real registries: shards as separate processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from clirunner import CLI
from harness.faultproxy import Fault
from harness.pki import PKI
from harness.registry import AccessLogEntry, RegistryProcess
from harness.seed import Blob, SeedClient, build_images_sharing_base, seed_index
from harness.skopeo import Skopeo

from transship.errors import ExitCode
from transship.plan.model import Plan, PlanEntry
from transship.plan.shard import Shard, hash_shard, split

CREDS = "alice:s3cret-Pa55"
SHARDS = 3


def uploaded(entries: list[AccessLogEntry]) -> list[str]:
    found = (re.search(r"digest=([^&]+)", e.path) for e in entries)
    return [unquote(m.group(1)) for m in found if m]


def seed(reg: RegistryProcess, prefix: str) -> tuple[list[str], Blob, set[str]]:
    """Twelve images in eight repositories, all on one shared base layer, plus an index: the
    base is needed by every shard. Returns the references, the base digest, every blob."""
    client = SeedClient.for_registry(reg)
    images = build_images_sharing_base(161, 12, base_sizes=(200_000,), layer_sizes=(30_000,))
    refs = []
    for i, image in enumerate(images):
        repo = f"{prefix}/app{i % 8}"
        client.push_image(repo, image, f"v{i}")
        refs.append(f"{reg.host}/{repo}:v{i}")
    index = seed_index(reg, f"{prefix}/multi", "v1", seed=162)
    refs.append(f"{reg.host}/{prefix}/multi:v1")
    blobs = {b.digest for img in images for b in img.pushable_blobs} | set(index.blob_digests)
    (base,) = set.intersection(*({b for b in img.pushable_blobs} for img in images))
    return refs, base, blobs


def run_shards(args: list[str], shards: list[int], env: dict[str, str], out: Path) -> None:
    """`args --shard I/3 --report out/I.json` for each I at once, as separate processes."""
    procs = [
        subprocess.Popen(
            [*args, "--shard", f"{i}/{SHARDS}", "--report", str(out / f"{i}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in shards
    ]
    for i, proc in zip(shards, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"shard {i}: {stderr}"
        assert f"shard {i}/{SHARDS}:" in stderr  # it says which part it copies
        assert "blobs shared with other shards" in stderr + stdout


def test_three_shards_as_processes_then_verify_of_the_whole_plan(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    refs, base_blob, blobs = seed(plain_registry, "shard1")
    base = base_blob.digest
    dest = make_registry("tls_basic")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    plan = tmp_path / "plan.yaml"
    made = cli("plan", "images", str(listing), "--dest", f"{dest.host}/mirror", "-o", str(plan))
    assert made.code == 0, made.err
    entries = yaml.safe_load(plan.read_text())["entries"]
    assert len(entries) == 13 and all(e["size"] for e in entries)  # split by bytes

    env = {**os.environ, "TRANSSHIP_DEST_CREDS": CREDS, "DOCKER_CONFIG": str(tmp_path)}
    copy = [
        sys.executable,
        "-m",
        "transship",
        "copy",
        "--plan",
        str(plan),
        "--dest-ca",
        str(pki.ca_pem_path),
    ]
    verify = [
        "verify",
        "--plan",
        str(plan),
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "-q",
    ]

    run_shards(copy, [1], env, tmp_path)  # one shard alone does not complete the plan
    assert cli(*verify).code == 9
    assert cli(*verify, "--shard", f"1/{SHARDS}").code == 0  # but its own part is complete
    assert cli(*verify, "--shard", f"2/{SHARDS}").code == 9

    run_shards(copy, [2, 3], env, tmp_path)  # the other two at once
    whole = cli(*verify)
    assert whole.code == 0, whole.out  # verify of the whole plan proves completion
    for ref in refs:
        path = ref.split("/", 1)[1]
        assert skopeo(dest, f"mirror/{path}") == skopeo(plain_registry, path)

    reports = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (1, 2, 3)]
    parts = [{e["destination"] for e in r["entries"]} for r in reports]
    assert all(parts) and sum(len(p) for p in parts) == 13  # every shard had work
    assert set().union(*parts) == {f"{e['destination']}:{e['tags'][0]}" for e in entries}
    repos = [{d.rsplit(":", 1)[0] for d in p} for p in parts]
    assert not (repos[0] & repos[1] or repos[0] & repos[2] or repos[1] & repos[2])  # disjoint
    for i, report in enumerate(reports, start=1):
        shard = report["shard"]
        assert (shard["index"], shard["count"], shard["assignment"]) == (i, SHARDS, "bytes")
        assert shard["repositories"] == len(repos[i - 1])

    # the base every shard needs crossed the wire at most once per shard, and each shard
    # counts it as shared and sent here too
    sends = uploaded(dest.blob_uploads())
    assert 1 <= sends.count(base) <= SHARDS
    assert set(sends) == blobs  # nothing missing; everything else once per shard at most
    assert all(sends.count(d) <= SHARDS for d in blobs)
    assert len(sends) < len(blobs) * SHARDS
    for report in reports:  # the base, and nothing else: the other blobs are in one shard
        assert report["shard"]["shared_blobs"] == 1
        assert report["shard"]["shared_bytes"] == base_blob.size
    assert sum(r["shard"]["shared_blobs_sent"] for r in reports) == sends.count(base)
    assert dest.blob_mounts()  # inside a shard, the base went to its other repositories by mount

    mark = dest.log_offset()  # a rerun of a finished shard sends nothing and counts nothing
    run_shards(copy, [2], env, tmp_path)
    assert not dest.blob_uploads(since=mark)
    again = json.loads((tmp_path / "2.json").read_text())
    assert {e["status"] for e in again["entries"]} == {"skipped"}
    assert again["shard"]["shared_blobs_sent"] == 0 and again["shard"]["shared_blobs"] is None


def test_save_shards_from_a_list_hold_disjoint_parts_that_load_complete(
    cli: CLI, plain_registry: RegistryProcess, make_registry, pki: PKI, tmp_path: Path
) -> None:
    refs, _, _ = seed(plain_registry, "shard2")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    dest = make_registry("tls_basic")
    held: list[set[str]] = []
    for i in (1, 2):  # a list without sizes is split by the hash of the repository
        out = tmp_path / f"part{i}.tar"
        saved = cli(
            "save",
            "--images",
            str(listing),
            "--dest",
            f"{dest.host}/mirror",
            "-o",
            str(out),
            "--shard",
            f"{i}/2",
            "--report",
            str(tmp_path / f"s{i}.json"),
        )
        assert saved.code == 0, saved.err
        report = json.loads((tmp_path / f"s{i}.json").read_text())
        assert report["shard"]["assignment"] == "hash"
        held.append({e["source"] for e in report["entries"]})
        loaded = cli(
            "load", str(out), "--dest-ca", str(pki.ca_pem_path), "--dest-creds", CREDS, "-q"
        )
        assert loaded.code == 0, loaded.err
    assert held[0] and held[1] and not held[0] & held[1]
    assert held[0] | held[1] == set(refs)
    verified = cli(
        "verify",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "-q",
    )
    assert verified.code == 0


def test_bad_shard_is_a_one_line_usage_error(cli: CLI, tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("example.invalid/a:v1\n")
    for bad in ("0/3", "4/3", "x", "2/0"):
        for command in (
            ["copy", "--images", str(listing), "--dest", "127.0.0.1:9/m"],
            ["save", "--images", str(listing), "-o", str(tmp_path / "o")],
            ["verify", "--images", str(listing), "--dest", "127.0.0.1:9/m"],
        ):
            out = cli(*command, "--shard", bad)
            assert out.code == 1 and "--shard" in out.error_line, out.err
    single = cli("copy", "example.invalid/a:v1", "127.0.0.1:9/m:v1", "--shard", "1/2")
    assert single.code == 1 and "--shard splits a plan" in single.error_line
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_shard_without_repositories_has_nothing_to_do(cli: CLI, tmp_path: Path) -> None:
    """More shards than repositories: the extra shards succeed at once, asking no registry
    (the destination here does not exist: a request would fail)."""
    entry = PlanEntry.create("127.0.0.1:9/src/a:v1", "127.0.0.1:9/dst/a", size=10)
    plan = tmp_path / "plan.yaml"
    plan.write_text(Plan((entry,)).to_yaml())
    report = tmp_path / "report.json"
    out = cli("copy", "--plan", str(plan), "--shard", "2/2", "--report", str(report))
    assert out.code == 0, out.err
    assert "shard 2/2: 0 of 1 entries in 0 repositories" in out.err
    doc = json.loads(report.read_text())
    assert doc["entries"] == [] and doc["shard"]["repositories"] == 0
    checked = cli("verify", "--plan", str(plan), "--shard", "2/2", "-q")
    assert checked.code == 0  # nothing of this part is missing


def test_shards_of_a_plan_without_a_prefix_name_their_repositories_alike(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """A plan that records no destinationPrefix: each archive's names are relative to the
    longest prefix of the *whole* plan, not of its part, so `load --dest` relocates the parts
    alike (a part holding only mirror/deep/* must not record mirror/deep)."""
    client = SeedClient.for_registry(plain_registry)
    (heavy,) = build_images_sharing_base(171, 1, layer_sizes=(400_000,))
    light = build_images_sharing_base(172, 2, layer_sizes=(1_000,))
    refs = []
    for repo, image in (("c", heavy), ("deep/a", light[0]), ("deep/b", light[1])):
        client.push_image(f"shard3/{repo}", image, "v1")
        refs.append(f"{plain_registry.host}/shard3/{repo}:v1")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    plan = tmp_path / "plan.yaml"
    made = cli("plan", "images", str(listing), "--dest", "mirror.example/m", "-o", str(plan))
    assert made.code == 0, made.err
    doc = yaml.safe_load(plan.read_text())
    del doc["destinationPrefix"]  # an older or hand-written plan
    plan.write_text(yaml.safe_dump(doc))
    prefixes = []
    for i in (1, 2):
        out = tmp_path / f"part{i}"
        saved = cli("save", "--plan", str(plan), "-o", str(out), "--shard", f"{i}/2", "-q")
        assert saved.code == 0, saved.err
        info = json.loads((out / "transship" / "archive.json").read_text())
        prefixes.append((info["destinationPrefix"], info["prefixOrigin"]))
    assert prefixes == [("mirror.example/m/shard3", "common")] * 2


@pytest.mark.parametrize("name", ["part.tar", "part"])
def test_save_resumed_as_another_shard_names_only_that_shards_images(
    cli: CLI,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A save of shard 1/2 stopped unfinished, then the same output saved as shard 2/2: the
    archive names shard 2's images only (the earlier run's names were kept in it, so `load`
    pushed part of shard 1 too, and the index named images its plan.yaml does not)."""
    client = SeedClient.for_registry(plain_registry)
    images = build_images_sharing_base(181, 6, layer_sizes=(20_000,))
    refs = []
    for i, image in enumerate(images):
        client.push_image(f"resh/app{i}", image, "v1")
        refs.append(f"{plain_registry.host}/resh/app{i}:v1")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    plan_file = tmp_path / "plan.yaml"
    made = cli("plan", "images", str(listing), "--dest", "harbor.example/m", "-o", str(plan_file))
    assert made.code == 0, made.err
    plan = Plan.from_yaml(plan_file.read_text(), str(plan_file))
    parts = [split(plan, Shard(i, 2)).part.entries for i in (1, 2)]
    assert parts[0] and parts[1]
    # a layer of shard 1's first image is gone from the source: its save lands the others
    # and stays unfinished
    repo = parts[0][0].source.split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]
    own_layer = images[int(repo.removeprefix("resh/app"))].pushable_blobs[-1].digest
    gone = client.request(
        "DELETE", f"/v2/{repo}/blobs/{own_layer}", scope=f"repository:{repo}:delete"
    )
    assert gone.status == 202
    output = tmp_path / name
    first = cli("save", "--plan", str(plan_file), "-o", str(output), "--shard", "1/2")
    assert first.code != 0 and not (tmp_path / "part.tar").exists()

    with caplog.at_level("WARNING", logger="transship.ops.save"):
        second = cli("save", "--plan", str(plan_file), "-o", str(output), "--shard", "2/2")
    assert second.code == 0, second.err
    listed = cli("archive", "list", str(output), "--format", "json")
    assert listed.code == 0, listed.err
    named = {f"{e['repository']}:{e['tag']}" for e in json.loads(listed.out)["entries"]}
    assert named == {
        f"{e.destination.removeprefix('harbor.example/m/')}:{e.tags[0]}" for e in parts[1]
    }
    said = [r.getMessage() for r in caplog.records if r.name == "transship.ops.save"]
    assert len(said) == 1 and "this plan does not list" in said[0]  # said, once
    assert cli("archive", "verify", str(output)).code == 0


def test_a_shards_progress_total_counts_a_shared_base_once_not_per_image(
    cli: CLI, plain_registry: RegistryProcess, make_registry, pki: PKI, tmp_path: Path
) -> None:
    """The bytes to send (the total the ETA runs against) of a shard of a plan file: the
    part's sizes summed image by image counted the shared base once per image, so a part
    claimed more than the whole plan's unique bytes (and its ETA, under --limit-rate, a
    multiple of the time left) until its images finished."""
    refs, _, _ = seed(plain_registry, "shard5")
    dest = make_registry("tls_basic")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    plan = tmp_path / "plan.yaml"
    made = cli("plan", "images", str(listing), "--dest", f"{dest.host}/mirror", "-o", str(plan))
    assert made.code == 0, made.err
    doc = yaml.safe_load(plan.read_text())
    unique = doc["totals"]["bytes"]
    totals = []
    for i in (1, 2):
        out = cli(
            "copy",
            "--plan",
            str(plan),
            "--shard",
            f"{i}/2",
            "--dest-ca",
            str(pki.ca_pem_path),
            "--dest-creds",
            CREDS,
        )
        assert out.code == 0, out.err
        found = re.search(r"progress: 0/\d+ images, .* to send \((\d+) bytes\)", out.err)
        assert found, out.err
        totals.append(int(found.group(1)))
    assert all(0 < total < unique for total in totals), (totals, unique)
    assert abs(sum(totals) - unique) <= 2  # the parts share the whole out (rounding aside)


def test_an_increment_on_a_resumed_shard_carries_the_blobs_its_dropped_names_left_unnamed(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """part.tar: shard 1/2 stopped partway, resumed as shard 2/2 (shard 1's names dropped,
    their blobs left in it unnamed); then the whole plan saved `--since part.tar`. The
    increment must carry what only those unnamed blobs held: loading part.tar pushes what its
    names reach, no more (the increment left them out, and `load inc.tar` failed)."""
    client = SeedClient.for_registry(plain_registry)
    images = build_images_sharing_base(191, 6, layer_sizes=(20_000,))
    refs = []
    for i, image in enumerate(images):
        client.push_image(f"unnamed/app{i}", image, "v1")
        refs.append(f"{plain_registry.host}/unnamed/app{i}:v1")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    plan_file = tmp_path / "plan.yaml"
    made = cli("plan", "images", str(listing), "--dest", "harbor.example/m", "-o", str(plan_file))
    assert made.code == 0, made.err
    plan = Plan.from_yaml(plan_file.read_text(), str(plan_file))
    shard1 = split(plan, Shard(1, 2)).part.entries
    assert len(shard1) >= 2  # one fails, the others land in part.tar and are then dropped
    repo = shard1[0].source.split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]
    index = int(repo.removeprefix("unnamed/app"))
    own_layer = images[index].pushable_blobs[-1].digest
    gone = client.request(
        "DELETE", f"/v2/{repo}/blobs/{own_layer}", scope=f"repository:{repo}:delete"
    )
    assert gone.status == 202
    part, inc = tmp_path / "usb" / "part.tar", tmp_path / "usb" / "inc.tar"
    part.parent.mkdir()
    first = cli("save", "--plan", str(plan_file), "-o", str(part), "--shard", "1/2", "-q")
    assert first.code != 0 and not part.exists()
    second = cli("save", "--plan", str(plan_file), "-o", str(part), "--shard", "2/2", "-q")
    assert second.code == 0, second.err
    client.push_image(repo, images[index], "v1")  # the source whole again
    whole = cli("save", "--plan", str(plan_file), "-o", str(inc), "--since", str(part), "-q")
    assert whole.code == 0, whole.err

    dest = make_registry("plain")
    for archive in (part, inc):
        out = cli("load", str(archive), "--dest", f"{dest.host}/m", "-q")
        assert out.code == 0, out.err
    for i in range(len(images)):
        assert skopeo(dest, f"m/unnamed/app{i}:v1") == skopeo(plain_registry, f"unnamed/app{i}:v1")
    out = cli("verify", "--plan", str(plan_file), "--dest", f"{dest.host}/m", "--deep", "-q")
    assert out.code == 0, out.err


def test_a_shared_blob_whose_transfer_fails_is_not_counted_as_sent_here_too(
    cli: CLI, plain_registry: RegistryProcess, make_registry, make_fault_proxy, tmp_path: Path
) -> None:
    """The shared base's every read from the source is corrupt, so its transfer starts (each
    try) and never lands: the shard's summary and report count it as shared, not as sent here
    too (it was counted when its transfer started)."""
    refs, base_blob, _ = seed(plain_registry, "shard7")
    src = make_fault_proxy(plain_registry, Fault.flip(rf"/blobs/{base_blob.digest}$"))
    dest = make_registry("plain")
    listing = tmp_path / "images.txt"  # the twelve images, each on the base (not the index)
    listing.write_text("".join(f"{src.host}/{ref.split('/', 1)[1]}\n" for ref in refs[:-1]))
    # a list is split by a hash of the destination repository (its port varies): run the
    # shard app0 falls in, of a count that leaves other apps (so the base) to other shards
    repos = [f"{dest.host}/mirror/shard7/app{i}" for i in range(8)]
    count = next(n for n in range(2, 9) if len({hash_shard(r, n) for r in repos}) > 1)
    index = hash_shard(repos[0], count)
    report = tmp_path / "r.json"
    out = cli("copy", "--images", str(listing), "--src-plain-http", "--dest", f"{dest.host}/mirror",
              "--shard", f"{index}/{count}", "--report", str(report))  # fmt: skip
    assert out.code == ExitCode.INTEGRITY, out.err  # every image of the part needs the base
    assert not dest.has_blob(base_blob.digest)
    shard = json.loads(report.read_text())["shard"]
    assert shard["shared_blobs"] == 1 and shard["shared_bytes"] == base_blob.size, shard
    assert shard["shared_blobs_sent"] == 0 and shard["shared_bytes_sent"] == 0, shard
    assert "sent here too" in out.out + out.err
