"""`transship verify` after a real `transship copy`: complete, then damaged three ways."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import (
    SeedClient,
    build_image,
    build_images_sharing_base,
    seed_image,
    seed_index,
)
from harness.skopeo import Skopeo

from transship.digest import Digest
from transship.errors import ExitCode
from transship.plan.model import EntryKind, Plan, PlanEntry

CREDS = "alice:s3cret-Pa55"


def dest_args(pki: PKI) -> list[str]:
    return ["--dest-ca", str(pki.ca_pem_path), "--dest-creds", CREDS]


@pytest.fixture
def copied(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> dict:
    """Three images and an index copied with `transship copy --images` into a fresh registry."""
    prefix = f"vfy-{request.node.name.replace('_', '-')[:40].strip('-')}"
    base = 300 + sum(map(ord, prefix)) % 1000
    one = seed_image(plain_registry, f"{prefix}/one", "v1", seed=base)
    two = seed_image(plain_registry, f"{prefix}/two", "v2", seed=base + 1, fmt="docker")
    three = seed_image(plain_registry, f"{prefix}/three", "v3", seed=base + 2)
    multi = seed_index(plain_registry, f"{prefix}/multi", "v1", seed=base + 3)
    refs = [
        plain_registry.ref(f"{prefix}/one:v1"),
        plain_registry.ref(f"{prefix}/two:v2"),
        plain_registry.ref(f"{prefix}/three:v3"),
        plain_registry.ref(f"{prefix}/multi:v1"),
    ]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    dest = make_registry("tls_basic")
    out = cli("copy", "--images", str(listing), "--dest", f"{dest.host}/mirror", *dest_args(pki))
    assert out.code == 0, out.err
    return {
        "dest": dest,
        "listing": listing,
        "prefix": prefix,
        "one": one,
        "two": two,
        "three": three,
        "multi": multi,
        "repo": lambda name: f"mirror/{prefix}/{name}",
    }


def verify_args(c: dict, pki: PKI, *extra: str) -> list[str]:
    dest: RegistryProcess = c["dest"]
    return [
        "verify",
        "--images",
        str(c["listing"]),
        "--dest",
        f"{dest.host}/mirror",
        *dest_args(pki),
        *extra,
    ]


def test_complete_after_copy_one_head_per_tag(
    cli: CLI, copied: dict, pki: PKI, tmp_path: Path
) -> None:
    dest: RegistryProcess = copied["dest"]
    report = tmp_path / "report.json"
    mark = dest.log_offset()
    out = cli(*verify_args(copied, pki, "--report", str(report)))
    assert out.code == 0, out.out + out.err
    assert "complete: 4 entries, 4 tags" in out.out
    doc = json.loads(report.read_text())
    assert doc["complete"] is True and doc["exitCode"] == 0
    assert {e["status"] for e in doc["entries"]} == {"ok"}
    by_dest = {e["destination"].split("/")[-1]: e for e in doc["entries"]}
    assert by_dest["multi"]["expected"] == copied["multi"].digest
    assert by_dest["one"]["expected"] == copied["one"].digest
    # One HEAD per tag; the index adds one GET and one HEAD per child; no blob requests.
    children = len(copied["multi"].images)
    assert doc["requests"]["manifestHeads"] == 4 + children
    assert doc["requests"]["manifestGets"] == 1
    dest.wait_for_log(r"HEAD /v2/mirror/\S+/manifests/sha256", since=mark)
    seen = [e for e in dest.access_log(since=mark) if e.path != "/v2/" and e.status != 401]
    assert sorted({e.method for e in seen}) == ["GET", "HEAD"]
    assert not [e for e in seen if "/blobs/" in e.path]
    assert len([e for e in seen if e.method == "HEAD"]) == 4 + children


def test_deleted_child_and_moved_tag_are_reported(
    cli: CLI, copied: dict, pki: PKI, tmp_path: Path
) -> None:
    dest: RegistryProcess = copied["dest"]
    repo = copied["repo"]
    client = SeedClient.for_registry(dest)
    child = copied["multi"].images[1]
    client.delete_manifest(repo("multi"), child.digest)
    other = build_image(9901)
    moved = client.push_image(repo("two"), other, "v2")  # the tag now names another image
    report = tmp_path / "report.json"
    out = cli(*verify_args(copied, pki, "--report", str(report)))
    assert out.code == ExitCode.INCOMPLETE == 9, out.out + out.err
    assert "INCOMPLETE: 2 of 4 entries — 1 different, 1 with missing content" in out.out
    assert "child-missing" in out.out and "different" in out.out
    doc = json.loads(report.read_text())
    assert doc["complete"] is False and doc["exitCode"] == ExitCode.INCOMPLETE
    by_dest = {e["destination"].split("/")[-1]: e for e in doc["entries"]}
    assert by_dest["multi"]["status"] == "incomplete"
    [missing] = by_dest["multi"]["problems"]
    assert missing["problem"] == "child-missing"
    assert missing["reference"] == f"{dest.host}/{repo('multi')}@{child.digest}"
    assert "linux/arm64" in missing["detail"]
    assert by_dest["two"]["status"] == "different"
    [different] = by_dest["two"]["problems"]
    assert different["reference"] == f"{dest.host}/{repo('two')}:v2"
    assert different["expected"] == copied["two"].digest
    assert different["found"] == moved
    assert by_dest["one"]["status"] == by_dest["three"]["status"] == "ok"


def test_deleted_tagged_manifest_is_missing(cli: CLI, copied: dict, pki: PKI) -> None:
    client = SeedClient.for_registry(copied["dest"])
    client.delete_manifest(copied["repo"]("one"), copied["one"].digest)
    out = cli(*verify_args(copied, pki))
    assert out.code == ExitCode.INCOMPLETE, out.out + out.err
    assert "missing" in out.out
    assert "INCOMPLETE: 1 of 4 entries — 1 missing (" in out.out


def test_deep_finds_a_blob_deleted_from_storage(
    cli: CLI, copied: dict, pki: PKI, tmp_path: Path
) -> None:
    dest: RegistryProcess = copied["dest"]
    layer = copied["three"].layers[-1]
    path = dest.blob_path(layer.digest)
    assert path.is_file()
    path.unlink()
    shallow = cli(*verify_args(copied, pki))
    assert shallow.code == 0, shallow.out + shallow.err  # manifests are all there
    report = tmp_path / "deep.json"
    deep = cli(*verify_args(copied, pki, "--deep", "--report", str(report)))
    assert deep.code == ExitCode.INCOMPLETE, deep.out + deep.err
    doc = json.loads(report.read_text())
    problems = [p for e in doc["entries"] for p in e["problems"]]
    assert problems == [
        {
            "problem": "blob-missing",
            "reference": f"{dest.host}/{copied['repo']('three')}@{layer.digest}",
            "expected": layer.digest,
            "found": None,
            "detail": f"layer of {Digest.parse(copied['three'].digest).short}",
        }
    ]
    every_blob = {b.digest for key in ("one", "two", "three") for b in copied[key].blobs}
    every_blob |= set(copied["multi"].blob_digests)
    assert doc["requests"]["blobHeads"] == len(every_blob)


def test_plan_digests_need_no_source(
    cli: CLI, copied: dict, pki: PKI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    dest: RegistryProcess = copied["dest"]
    prefix = copied["prefix"]
    entries = [
        PlanEntry.create(
            plain_registry.ref(f"{prefix}/{name}:{tag}"),
            f"{dest.host}/{copied['repo'](name)}",
            kind=kind,
            source_digest=Digest.parse(copied[name].digest),
        )
        for name, tag, kind in (
            ("one", "v1", EntryKind.IMAGE),
            ("multi", "v1", EntryKind.INDEX),
        )
    ]
    # an image a bundle needs, by digest only (as bundle expansion plans them)
    child = copied["multi"].images[0]
    entries.append(
        PlanEntry.create(
            plain_registry.ref(f"{prefix}/multi@{child.digest}"),
            f"{dest.host}/{copied['repo']('multi')}",
            kind=EntryKind.BUNDLE_REFERENCED,
            tags=(),
        )
    )
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(Plan(tuple(entries)).to_yaml())
    mark = plain_registry.log_offset()
    out = cli(
        "verify", "--plan", str(plan_file), *dest_args(pki), "--src-plain-http", "--parallel", "4"
    )
    assert out.code == 0, out.out + out.err
    assert "complete: 3 entries" in out.out
    assert not plain_registry.requests(since=mark), "the source was asked although pinned"
    SeedClient.for_registry(dest).delete_manifest(copied["repo"]("multi"), child.digest)
    out = cli("verify", "--plan", str(plan_file), *dest_args(pki))
    assert out.code == ExitCode.INCOMPLETE
    assert "INCOMPLETE: 2 of 3 entries — 1 missing, 1 with missing content" in out.out


def test_no_resolve_checks_presence_only(cli: CLI, copied: dict, pki: PKI) -> None:
    client = SeedClient.for_registry(copied["dest"])
    client.push_image(copied["repo"]("two"), build_image(9902), "v2")
    out = cli(*verify_args(copied, pki, "--no-resolve"))
    assert out.code == 0, out.out + out.err  # moved, but present: no digest to compare
    assert "4 checked for presence only" in out.out


def test_source_gone_is_reported_not_fatal(
    cli: CLI, copied: dict, pki: PKI, tmp_path: Path
) -> None:
    listing: Path = copied["listing"]
    gone = listing.read_text().splitlines()[0].rsplit(":", 1)[0] + ":no-such-tag"
    listing.write_text(listing.read_text() + gone + "\n")
    out = cli(*verify_args(copied, pki))
    assert out.code == ExitCode.INCOMPLETE, out.out + out.err
    assert "error" in out.out and "no-such-tag" in out.out
    assert "1 not checked" in out.out


def test_untrusted_destination_is_one_tls_error(cli: CLI, copied: dict, tmp_path: Path) -> None:
    dest: RegistryProcess = copied["dest"]
    out = cli(
        "verify",
        "--images",
        str(copied["listing"]),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-creds",
        CREDS,
    )
    assert out.code == ExitCode.TLS
    assert "unknown authority" in out.error_line and "--dest-ca" in out.error_line


def test_nothing_to_verify_is_a_usage_error(cli: CLI) -> None:
    out = cli("verify")
    assert out.code == ExitCode.USAGE
    assert "--plan" in out.error_line


def test_copy_repair_sends_what_the_destination_lost(
    cli: CLI, copied: dict, pki: PKI, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A registry that lost a layer (garbage collection, a partial restore) and an index child:
    `verify --deep` finds both and says how to mend; a plain copy trusts the manifests that
    are there and sends nothing; `copy --repair` sends exactly what was lost."""
    dest: RegistryProcess = copied["dest"]
    repo = copied["repo"]
    lost_layer = copied["one"].layers[0].digest
    dest.blob_path(lost_layer).unlink()
    lost_child = copied["multi"].images[0]
    SeedClient.for_registry(dest).delete_manifest(repo("multi"), lost_child.digest)
    copy_args = ["copy", "--images", str(copied["listing"]), "--dest", f"{dest.host}/mirror",
                 *dest_args(pki), "-q"]  # fmt: skip

    found = cli(*verify_args(copied, pki, "--deep"))
    assert found.code == ExitCode.INCOMPLETE, found.out + found.err
    assert "blob-missing" in found.out and "child-missing" in found.out, found.out
    assert "copy --repair" in found.out, found.out
    mark = dest.log_offset()
    plain = cli(*copy_args)
    assert plain.code == 0, plain.err
    assert not dest.requests("PUT", since=mark), "a plain copy trusts the manifests there"
    assert cli(*verify_args(copied, pki, "--deep", "-q")).code == ExitCode.INCOMPLETE

    mark = dest.log_offset()
    report = tmp_path / "repair.json"
    repaired = cli(*copy_args, "--repair", "--report", str(report))
    assert repaired.code == 0, repaired.err
    status = {e["destination"].split("/")[-1]: e["status"] for e in json.loads(
        report.read_text())["entries"]}  # fmt: skip
    assert status == {"one:v1": "copied", "two:v2": "skipped", "three:v3": "skipped",
                      "multi:v1": "copied"}, status  # fmt: skip
    dest.settle_log(quiet=0.3)
    sent = [e.path for e in dest.blob_uploads(since=mark)]
    assert len(sent) == 1 and lost_layer in unquote(sent[0]), sent  # that layer, once
    pushed = [e.path for e in dest.requests("PUT", r"/manifests/", since=mark)]
    assert pushed == [f"/v2/{repo('multi')}/manifests/{lost_child.digest}"], pushed  # no tag again
    assert cli(*verify_args(copied, pki, "--deep", "-q")).code == 0
    assert skopeo(dest, f"{repo('multi')}@{lost_child.digest}") == lost_child.manifest


def test_load_repair_sends_what_the_destination_lost(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    """`load --repair` as `copy --repair`: from the archive, only the layer the registry lost."""
    image = seed_image(plain_registry, "repair/load", "v1", seed=4711)
    listing = tmp_path / "images.txt"
    listing.write_text(plain_registry.ref("repair/load:v1") + "\n")
    archive = tmp_path / "archive"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    dest = make_registry("plain")
    load = ["load", str(archive), "--dest", f"{dest.host}/far", "-q"]
    assert cli(*load).code == 0
    lost = image.layers[0].digest
    dest.blob_path(lost).unlink()
    mark = dest.log_offset()
    assert cli(*load).code == 0
    assert not dest.requests("PUT", since=mark), "a plain load trusts the manifest there"
    repaired = cli(*load, "--repair")
    assert repaired.code == 0, repaired.err
    dest.settle_log(quiet=0.3)
    sent = [unquote(e.path) for e in dest.blob_uploads(since=mark)]
    assert len(sent) == 1 and lost in sent[0], sent
    assert not dest.requests("PUT", r"/manifests/", since=mark), "the tag was there already"
    assert dest.has_blob(lost)


def test_repair_of_images_sharing_a_base_layer(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    """Repositories sharing a base layer: `--repair` on a complete destination writes nothing
    and reports every image skipped (no mount from a sibling, which distribution would answer
    201 all the same); with the base lost, every image that needed it reports copied, and the
    layer crosses the wire once."""
    client = SeedClient.for_registry(plain_registry)
    images = build_images_sharing_base(4801, 3, base_sizes=(20_000,), layer_sizes=(3_000,))
    refs = []
    for i, image in enumerate(images):
        client.push_image(f"share/img{i}", image, "v1")
        refs.append(plain_registry.ref(f"share/img{i}:v1"))
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    dest = make_registry("plain")
    args = ["copy", "--images", str(listing), "--dest", f"{dest.host}/m", "-q"]
    assert cli(*args).code == 0
    report = tmp_path / "repair.json"

    def repair() -> dict[str, str]:
        out = cli(*args, "--repair", "--report", str(report))
        assert out.code == 0, out.err
        doc = json.loads(report.read_text())
        stats = doc["stats"]  # every manifest was there: counted present, none pushed
        assert (stats["manifestsPresent"], stats["manifestsPushed"]) == (3, 0), stats
        return {e["destination"].split("/")[-1]: e["status"] for e in doc["entries"]}

    mark = dest.log_offset()
    assert set(repair().values()) == {"skipped"}
    dest.sync_log()
    writes = [e for e in dest.access_log(since=mark) if e.method in ("POST", "PUT", "PATCH")]
    assert not writes, [e.path for e in writes]

    base = images[0].layers[0].digest
    assert all(image.layers[0].digest == base for image in images)
    dest.blob_path(base).unlink()
    mark = dest.log_offset()
    assert set(repair().values()) == {"copied"}
    dest.sync_log()
    sent = [unquote(e.path) for e in dest.blob_uploads(since=mark)]
    assert len(sent) == 1 and base in sent[0], sent
    assert not dest.requests("PUT", r"/manifests/", since=mark)
    assert cli("verify", "--images", str(listing), "--dest", f"{dest.host}/m", "--deep",
               "-q").code == 0  # fmt: skip
