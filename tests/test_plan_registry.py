"""`transship plan` against a real registry: TKG's own chain, digests, sizes, bundles, then copy.

A loopback registry is seeded with a trimmed TKG 1.5.3 release (tests/data/tkg-small, with the
real compatibility documents from tests/data/tkg) published as imgpkg publishes it: every BOM
and compatibility document a one-file image, the components synthetic images, indexes and
bundles. Counting rule for the expectations below: one entry per (source, destination); a
bundle adds one entry per image below it (nested too) in its own destination repository, plus
one ImageLocations record per bundle; sizes are manifests plus distributable blobs.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import (
    Image,
    Index,
    SeedClient,
    build_image,
    build_index,
    random_layer,
)
from harness.skopeo import Skopeo
from test_bundles import (
    VMWARE,
    Corpus,
    bundle_image,
    content_size,
    imgpkg_image,
    one_file_image,
    push,
    read_locations,
)

from transship.connect import RegistryPool, SideSettings
from transship.digest import Digest
from transship.plan import Plan
from transship.plan.model import EntryKind
from transship.plan.resolve import Resolution, ResolveOptions
from transship.tkg.bom import parse_bom, parse_compatibility, plan_from_boms
from transship.tkg.release import TkgRelease, plan_tkg_release

DATA = Path(__file__).parent / "data"
SMALL = DATA / "tkg-small"
TKG_BOM = "tkg-bom-v1.5.3.yaml"
TKR_BOM = "tkr-bom-v1.22.8+vmware.1-tkg.1.yaml"
TKG_COMPAT = DATA / "tkg" / "tkg-compatibility-v1.5.3.yaml"  # tag v7
TKR_COMPAT = DATA / "tkg" / "tkr-compatibility-v13-v1.5.3.yaml"  # tag v13
TKR = "v1.22.8+vmware.1-tkg.1"
PREFIX = "rel153"


@dataclass
class Release:
    """What was pushed: `items[path:tag]` for every top-level reference, plus the bundle parts."""

    host: str
    source: str
    items: dict[str, Image | Index] = field(default_factory=dict)
    corpus: Corpus | None = None
    referenced: dict[str, Image | Index] = field(default_factory=dict)  # bundle path -> images

    def digest(self, path_tag: str) -> str:
        return self.items[path_tag].digest


def seed_release(reg: RegistryProcess, prefix: str) -> Release:
    client = SeedClient.for_registry(reg)
    release = Release(reg.host, f"{reg.host}/{prefix}")

    def put(path_tag: str, item: Image | Index) -> None:
        path, tag = path_tag.rsplit(":", 1)
        push(client, f"{prefix}/{path}", item, tag)
        release.items[path_tag] = item

    base = random_layer(900, 6000, "docker")  # shared by three images: de-duplication counts
    shared = {"fmt": "docker", "base_layers": (base,), "layer_sizes": (700,)}
    put("cluster-api/cluster-api-controller:v1.0.1_vmware.1", build_image(901, **shared))
    put("cluster-api/kubeadm-control-plane-controller:v1.0.1_vmware.1", build_image(902, **shared))
    put("etcd:v3.5.2_vmware.3", build_image(903, **shared))
    byoh = build_image(904, fmt="oci", layer_sizes=(900,))
    put("cluster-api/cluster-api-byoh-controller:v0.1.0_vmware.5", byoh)
    put(  # not a bundle component in the vendor script's rule, but labelled: a bundle
        "cluster-api/byoh-bundle-ubuntu_20.04.1_x86-64_k8s_v1.22.3:v0.1.0_vmware.5",
        bundle_image(
            [f"{release.source}/cluster-api/cluster-api-byoh-controller@{byoh.digest}"], "byoh"
        ),
    )
    put(  # a bundle component by name, but a plain imgpkg image
        "packages/standalone/standalone-plugins:v0.11.4-1-gcc9fde8d_vmware.1",
        imgpkg_image([("plugins.yml", b"plugins: []\n")]),
    )
    put("kube-apiserver:v1.22.8_vmware.1", build_image(905, fmt="docker", layer_sizes=(1200,)))
    put("pause:3.5", build_index(906, fmt="docker", layer_sizes=(300,)))
    antrea = build_image(907, fmt="docker", layer_sizes=(1500,))
    put("antrea-advanced-debian:v1.2.3_vmware.4", antrea)
    put(
        "packages/core/antrea:v1.2.3_vmware.4-tkg.1-advanced",
        bundle_image([f"{release.source}/antrea-advanced-debian@{antrea.digest}"], "antrea"),
    )
    corpus = Corpus(reg, prefix, 908)  # packages/standard/repo:v1.5.3 -> contour bundle -> 2
    release.corpus = corpus
    release.items["packages/standard/repo:v1.5.3"] = corpus.root
    release.referenced = {
        "packages/standard/repo": [corpus.package, corpus.contour_image, corpus.envoy],
        "packages/core/antrea": [antrea],
        "cluster-api/byoh-bundle-ubuntu_20.04.1_x86-64_k8s_v1.22.3": [byoh],
    }
    put("tkg-bom:v1.5.3", one_file_image(TKG_BOM, (SMALL / TKG_BOM).read_bytes()))
    put("tkr-bom:v1.22.8_vmware.1-tkg.1", one_file_image(TKR_BOM, (SMALL / TKR_BOM).read_bytes()))
    put("tkg-compatibility:v7", one_file_image("tkg-compatibility.yaml", TKG_COMPAT.read_bytes()))
    put("tkr-compatibility:v13", one_file_image("tkr-compatibility.yaml", TKR_COMPAT.read_bytes()))
    # older and imgpkg-internal tags must not be chosen (v6 would not even be readable)
    old = imgpkg_image([("a.yaml", b"a: 1\n"), ("b.yaml", b"b: 2\n")])
    client.push_image(f"{prefix}/tkg-compatibility", old, "v6")
    client.push_image(f"{prefix}/tkr-compatibility", old, "v12")
    v7 = release.items["tkg-compatibility:v7"]
    client.push_image(f"{prefix}/tkg-compatibility", v7, f"sha256-{v7.digest[7:]}.imgpkg")  # type: ignore[arg-type]
    return release


@pytest.fixture(scope="module")
def release(plain_registry: RegistryProcess) -> Release:
    return seed_release(plain_registry, PREFIX)


def offline_plan(release: Release, dest: str) -> Plan:
    tkg = parse_bom((SMALL / TKG_BOM).read_text(), TKG_BOM)
    tkr = parse_bom((SMALL / TKR_BOM).read_text(), TKR_BOM)
    compat = [
        parse_compatibility(TKG_COMPAT.read_text(), "tkg-compat"),
        parse_compatibility(TKR_COMPAT.read_text(), "tkr-compat"),
    ]
    return plan_from_boms(tkg, [tkr], compat, dest, source_prefix=release.source)


def plan_via_api(release: Release, dest: str, **kw: object) -> Resolution:
    async def run() -> Resolution:
        pool = RegistryPool(SideSettings("src"))
        try:
            request = TkgRelease(release.source, "v1.5.3", dest, **kw)  # type: ignore[arg-type]
            return await plan_tkg_release(request, pool.get, ResolveOptions(parallel=8))
        finally:
            await pool.close()

    return asyncio.run(run())


TOP_LEVEL = (EntryKind.IMAGE, EntryKind.INDEX, EntryKind.BUNDLE, EntryKind.METADATA)


def test_plan_tkg_follows_the_chain_and_matches_the_offline_planner(
    release: Release,
) -> None:
    dest = "harbor.local/tkg"
    done = plan_via_api(release, dest, tkrs=(TKR,))
    plan = done.plan
    top = {e.key for e in plan.entries if e.kind in TOP_LEVEL}
    assert top == {e.key for e in offline_plan(release, dest).entries}
    assert len(top) == 15
    kinds = [e.kind for e in plan.entries]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        EntryKind.IMAGE: 7,  # incl. the hinted-but-plain standalone plugins
        EntryKind.INDEX: 1,  # pause
        EntryKind.BUNDLE: 3,  # standard repo, core antrea, and the unhinted byoh bundle
        EntryKind.METADATA: 4,  # tkg-bom, tkr-bom, tkg-compatibility v7, tkr-compatibility v13
        EntryKind.BUNDLE_REFERENCED: 5,  # contour bundle + 2 images, antrea, byoh controller
        EntryKind.IMAGE_LOCATIONS: 4,  # one per bundle, nested one included
    }
    # every tag resolved to what was pushed; sizes from the manifests
    for entry in plan.entries:
        if entry.kind in TOP_LEVEL:
            path_tag = entry.source.removeprefix(f"{release.source}/")
            item = release.items[path_tag]
            assert entry.source_digest == Digest.parse(item.digest), path_tag
            assert entry.size == content_size(item), path_tag
    for bundle_path, images in release.referenced.items():
        wanted = {i.digest for i in images}
        found = {
            str(e.source_digest)
            for e in plan.entries
            if e.kind is EntryKind.BUNDLE_REFERENCED and e.destination == f"{dest}/{bundle_path}"
        }
        assert found == wanted, bundle_path
    assert any(
        "standalone-plugins" in w and "no dev.carvel.imgpkg.bundle label" in w
        for w in done.warnings
    )
    assert any("byoh-bundle" in w and "so it is an imgpkg bundle" in w for w in done.warnings)
    # totals, computed independently from what was pushed
    items: list[Image | Index] = []
    for entry in plan.entries:
        if entry.kind in TOP_LEVEL:
            items.append(release.items[entry.source.removeprefix(f"{release.source}/")])
    for images in release.referenced.values():
        items += images
    records = [e for e in plan.entries if e.kind is EntryKind.IMAGE_LOCATIONS]
    record_bytes = sum(e.size or 0 for e in records)
    naive = sum(content_size(i) for i in items) + record_bytes
    blobs: dict[str, int] = {}
    manifests: dict[str, int] = {}
    for item in items:
        for child in item.images if isinstance(item, Index) else [item]:
            manifests[child.digest] = child.size
            blobs.update({b.digest: b.size for b in child.pushable_blobs})
        manifests[item.digest] = item.size
    unique = sum(blobs.values()) + sum(manifests.values()) + record_bytes
    totals = done.totals
    assert (totals.entries, totals.repositories, totals.bundles) == (24, 15, 3)
    assert totals.blobs == len(blobs) + 2 * len(records)
    assert totals.bytes == unique and totals.naive_bytes == naive
    # the shared base layer (3 images) and the images that are also bundle-referenced
    assert totals.saved_bytes == naive - unique and totals.saved_bytes >= 2 * 6000
    assert done.gaps == ()
    # BOM images are pinned at the digest that was read
    bom = next(e for e in plan.entries if e.source.endswith("/tkr-bom:v1.22.8_vmware.1-tkg.1"))
    assert bom.kind is EntryKind.METADATA and bom.destination == f"{dest}/tkr-bom"


def test_plan_tkg_cli_copy_lands_everything(
    cli: CLI,
    release: Release,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dest = make_registry("plain")
    plan_file = tmp_path / "plan.yaml"
    monkeypatch.setenv("TKG_IMAGE_REPO", release.source)
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY", f"{dest.host}/tkg")
    out = cli("plan", "tkg", "--tkg-version", "v1.5.3", "--tkr", TKR, "-o", str(plan_file))
    assert out.code == 0, out.err
    assert out.out == ""  # the plan went to the file
    assert "not registry content — import separately" in out.err
    assert "ova: ova-photon-3" in out.err and "ami: ami-0e51cc10f0c50bcc0" in out.err
    assert "unique blobs" in out.err and "saved by de-duplication" in out.err
    plan = Plan.from_yaml(plan_file.read_text(), str(plan_file))
    assert len(plan.entries) == 24

    out = cli("copy", "--plan", str(plan_file), "-q")
    assert out.code == 0, out.err
    client = SeedClient.for_registry(dest)
    for path_tag, item in release.items.items():
        path, tag = path_tag.rsplit(":", 1)
        assert skopeo(dest, f"tkg/{path}:{tag}") == item.manifest, path_tag
    for bundle_path, images in release.referenced.items():
        repo = f"tkg/{bundle_path}"
        tags = set(client.list_tags(repo))
        bundle = next(i for p, i in release.items.items() if p.startswith(f"{bundle_path}:"))
        assert f"sha256-{bundle.digest[7:]}.imgpkg" in tags
        assert f"sha256-{bundle.digest[7:]}.image-locations.imgpkg" in tags
        for image in images:
            assert f"sha256-{image.digest[7:]}.imgpkg" in tags
            assert skopeo(dest, f"{repo}@{image.digest}") == image.manifest
        doc, _ = read_locations(client, repo, f"sha256-{bundle.digest[7:]}.image-locations.imgpkg")
        assert doc["kind"] == "ImageLocations"
        assert len(doc["images"]) == (1 if bundle_path == "packages/standard/repo" else len(images))
    corpus = release.corpus
    assert corpus is not None
    nested, _ = read_locations(
        client,
        "tkg/packages/standard/repo",
        f"sha256-{corpus.package.digest[7:]}.image-locations.imgpkg",
    )
    assert nested["images"] == [
        {"image": f"{VMWARE}/contour@{corpus.contour_image.digest}", "isBundle": False},
        {"image": f"{VMWARE}/envoy@{corpus.envoy.digest}", "isBundle": False},
    ]
    assert set(client.list_tags("tkg/tkg-compatibility")) == {"v7"}


def test_missing_tkr_is_an_error_or_a_gap(cli: CLI, release: Release, tmp_path: Path) -> None:
    """tkr-compatibility v13 names 3 TKRs for 1.5.3; the registry holds only one of them."""
    args = (
        "plan",
        "tkg",
        "--source",
        release.source,
        "--tkg-version",
        "v1.5.3",
        "--dest",
        "harbor.local/tkg",
    )
    out = cli(*args)
    assert out.code == 4 and out.out == ""
    assert "TKR v1.20.15_vmware.1-tkg.1 of TKG v1.5.3" in out.error_line
    assert f"{release.source}/tkr-bom:v1.20.15_vmware.1-tkg.1 does not exist" in out.error_line
    out = cli(*args, "--keep-going", "--format", "json")
    assert out.code == 2, out.err
    doc = json.loads(out.out)
    assert doc["kind"] == "Plan" and doc["totals"]["entries"] == 24
    assert sorted(g["source"] for g in doc["gaps"]) == [
        f"{release.source}/tkr-bom:v1.20.15_vmware.1-tkg.1",
        f"{release.source}/tkr-bom:v1.21.11_vmware.1-tkg.1",
    ]
    assert out.err.count("transship: gap:") == 2


def test_unknown_version_and_wrong_source(cli: CLI, release: Release) -> None:
    out = cli(
        "plan",
        "tkg",
        "--source",
        release.source,
        "--tkg-version",
        "v9.9.9",
        "--dest",
        "harbor.local/tkg",
    )
    assert out.code == 1
    assert "no TKG v9.9.9; it knows v1.5.1, v1.5.2, v1.5.3, v1.4.0" in out.error_line
    out = cli(
        "plan",
        "tkg",
        "--source",
        f"{release.host}/nothing-here",
        "--tkg-version",
        "v1.5.3",
        "--dest",
        "harbor.local/tkg",
    )
    assert out.code == 4 and "nothing-here/tkg-compatibility has no v<N> tag" in out.error_line


def test_all_tkrs_walks_every_v_tag(release: Release) -> None:
    done = plan_via_api(release, "harbor.local/tkg", all_tkrs=True)
    metadata = sorted(
        e.source.removeprefix(f"{release.source}/")
        for e in done.plan.entries
        if e.kind is EntryKind.METADATA
    )
    assert metadata == [
        "tkg-bom:v1.5.3",
        "tkg-compatibility:v6",
        "tkg-compatibility:v7",
        "tkr-bom:v1.22.8_vmware.1-tkg.1",
        "tkr-compatibility:v12",
        "tkr-compatibility:v13",
    ]
    assert done.totals.entries == 26


def test_plan_bom_offline_and_resolved(cli: CLI, release: Release, tmp_path: Path) -> None:
    files = [str(SMALL / TKG_BOM), str(SMALL / TKR_BOM), str(TKG_COMPAT), str(TKR_COMPAT)]
    out = cli("plan", "bom", *files, "--dest", "harbor.local/tkg", "--no-resolve")
    assert out.code == 0, out.err
    offline = Plan.from_yaml(out.out, "stdout")
    assert len(offline.entries) == 15
    bundles = [e for e in offline.entries if e.kind is EntryKind.BUNDLE]
    assert len(bundles) == 3 and all(e.expanded is False for e in bundles)  # name rule only
    assert all(e.source_digest is None for e in offline.entries)
    assert "bundles were not expanded (--no-resolve)" in out.err
    out = cli(
        "plan",
        "bom",
        *reversed(files),
        "--dest",
        "harbor.local/tkg",
        "--source",
        release.source,
        "-q",
    )
    assert out.code == 0, out.err
    assert out.err == ""  # -q: nothing for people
    resolved = Plan.from_yaml(out.out, "stdout")
    assert len(resolved.entries) == 24
    assert all(e.source_digest is not None for e in resolved.entries)


def test_plan_images_and_script(cli: CLI, release: Release, tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text(
        f"# two\n{release.source}/pause:3.5\n{release.source}/etcd:v3.5.2_vmware.3\n"
    )
    out = cli("plan", "images", str(listing), "--dest", "harbor.local/mirror", "-q")
    assert out.code == 0, out.err
    plan = Plan.from_yaml(out.out, "stdout")
    assert {(e.kind, str(e.source_digest)) for e in plan.entries} == {
        (EntryKind.INDEX, release.digest("pause:3.5")),
        (EntryKind.IMAGE, release.digest("etcd:v3.5.2_vmware.3")),
    }
    script = tmp_path / "publish.sh"
    script.write_text(
        "set -euo pipefail\n"
        f"imgpkg copy -b {release.source}/packages/core/antrea:v1.2.3_vmware.4-tkg.1-advanced "
        "--to-repo harbor.local/tkg/packages/core/antrea\n"
    )
    out = cli("plan", "script", str(script), "--format", "json", "-q")
    assert out.code == 0, out.err
    kinds = sorted(e["kind"] for e in json.loads(out.out)["entries"])
    assert kinds == ["bundle", "bundle-referenced", "image-locations"]
