"""imgpkg bundles: detection by label, nested expansion, ImageLocations, and a copy of it all.

Bundles and one-file images are built here the way imgpkg builds them (one gzip'd tar layer,
Docker schema 2, go-containerregistry style config; imgpkg-format.md §1-2) with the standard
library only, pushed to a real registry, and read back independently of transship.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    IMGPKG_BUNDLE_LABEL,
    Blob,
    Image,
    Index,
    SeedClient,
    build_image,
    build_index,
    canonical_json,
    sha256_digest,
)
from harness.skopeo import Skopeo

from transship.connect import RegistryPool, SideSettings
from transship.digest import Digest
from transship.errors import BundleError, ExitCode, PlanError, UsageError
from transship.imgpkg.bundle import parse_images_lock
from transship.imgpkg.locations import (
    ImageLocation,
    build_image_locations,
    image_locations_tag,
    image_locations_yaml,
    imgpkg_tag,
)
from transship.memory import MemoryEndpoint
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.plan.resolve import Resolution, ResolveOptions, resolve_plan

DATA = Path(__file__).parent / "data" / "imgpkg"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
VMWARE = "projects.registry.vmware.com/tkg"
LOCK_HEAD = "apiVersion: imgpkg.carvel.dev/v1alpha1\n"

# --- building imgpkg images with the standard library ---------------------------------------


def tar_of(entries: Sequence[tuple[str, bytes | None]]) -> bytes:
    """A USTAR tar as imgpkg writes one: dirs 0700, files 0600, uid/gid 0, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def imgpkg_image(
    entries: Sequence[tuple[str, bytes | None]], labels: dict[str, str] | None = None
) -> Image:
    """One gzip'd tar layer, a go-containerregistry style config, a Docker schema 2 manifest."""
    raw = tar_of(entries)
    layer = Blob.of(gzip.compress(raw, mtime=0), DOCKER_LAYER, diff_id=sha256_digest(raw))
    config_obj = {
        "architecture": "",
        "created": GO_ZERO_TIME,
        "history": [{"author": "imgpkg", "created": GO_ZERO_TIME, "created_by": "imgpkg"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "config": {"Labels": dict(labels)} if labels else {},
    }
    config = Blob.of(canonical_json(config_obj), DOCKER_CONFIG)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        }
    )
    return Image(manifest, DOCKER_MANIFEST, sha256_digest(manifest), config, (layer,), {})


def one_file_image(name: str, data: bytes) -> Image:
    """`imgpkg push -i X -f FILE`: how TKG publishes its BOM and compatibility documents."""
    return imgpkg_image([(name, data)])


def images_lock(refs: Sequence[str]) -> bytes:
    lines = ["---", "apiVersion: imgpkg.carvel.dev/v1alpha1", "images:"]
    for ref in refs:
        lines += [
            "- annotations:",
            f"    kbld.carvel.dev/id: {ref.split('@')[0]}",
            f"  image: {ref}",
        ]
    lines.append("kind: ImagesLock")
    return ("\n".join(lines) + "\n").encode()


def bundle_image(refs: Sequence[str], name: str) -> Image:
    """`imgpkg push -b`: `.imgpkg/images.yml` plus some configuration, bundle label set."""
    return imgpkg_image(
        [
            (".", None),
            (".imgpkg", None),
            (".imgpkg/images.yml", images_lock(refs)),
            ("config", None),
            ("config/package.yml", f"name: {name}\n".encode()),
        ],
        IMGPKG_BUNDLE_LABEL,
    )


def content_size(item: Image | Index) -> int:
    """Manifest(s) plus distributable blobs: what transship counts for one entry."""
    if isinstance(item, Index):
        return item.size + sum(i.size for i in item.images) + sum(b.size for b in item.blobs)
    return item.size + sum(b.size for b in item.pushable_blobs)


def push(client: SeedClient, repo: str, item: Image | Index, tag: str | None = None) -> str:
    if isinstance(item, Index):
        return client.push_index(repo, item, tag)
    return client.push_image(repo, item, tag)


def read_locations(client: SeedClient, repo: str, tag: str) -> tuple[dict, bytes]:
    """An ImageLocations image read the way imgpkg reads it (`locationsSingleLayerReader`)."""
    raw, _ = client.get_manifest(repo, tag)
    manifest = json.loads(raw)
    assert len(manifest["layers"]) == 1
    assert manifest["layers"][0]["mediaType"] == DOCKER_LAYER
    layer = client.get_blob(repo, manifest["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        member = next(m for m in tar.getmembers() if Path(m.name).name == "image-locations.yml")
        handle = tar.extractfile(member)
        assert handle is not None
        text = handle.read()
    return yaml.safe_load(text), raw


def resolve(plan: Plan, **options: object) -> Resolution:
    async def run() -> Resolution:
        pool = RegistryPool(SideSettings("src"))
        try:
            return await resolve_plan(plan, pool.get, ResolveOptions(**options))  # type: ignore[arg-type]
        finally:
            await pool.close()

    return asyncio.run(run())


def by_kind(plan: Plan, kind: EntryKind) -> list[PlanEntry]:
    return [e for e in plan.entries if e.kind is kind]


# --- the ImageLocations format ---------------------------------------------------------------


LOCATIONS = [
    ImageLocation(f"{VMWARE}/packages/standard/fluent-bit@sha256:{'b' * 64}", True),
    ImageLocation(f"{VMWARE}/packages/standard/contour@sha256:{'a' * 64}", True),
    ImageLocation(f"index.docker.io/library/busybox@sha256:{'c' * 64}", False),
]


class TestImageLocationsFormat:
    def test_yaml_is_what_imgpkg_writes(self) -> None:
        """sigs.k8s.io/yaml: leading ---, keys sorted, rows sorted by image, lists unindented."""
        assert image_locations_yaml(LOCATIONS).decode() == (
            "---\n"
            "apiVersion: imgpkg.carvel.dev/v1alpha1\n"
            "images:\n"
            f"- image: index.docker.io/library/busybox@sha256:{'c' * 64}\n"
            "  isBundle: false\n"
            f"- image: {VMWARE}/packages/standard/contour@sha256:{'a' * 64}\n"
            "  isBundle: true\n"
            f"- image: {VMWARE}/packages/standard/fluent-bit@sha256:{'b' * 64}\n"
            "  isBundle: true\n"
            "kind: ImageLocations\n"
        )
        assert image_locations_yaml([]).decode().splitlines()[2] == "images: null"

    def test_image_layout_and_tar_headers(self) -> None:
        image = build_image_locations(LOCATIONS)
        manifest = json.loads(image.manifest.raw)
        assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == DOCKER_MANIFEST
        assert manifest["config"]["mediaType"] == DOCKER_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER]
        blobs = {str(d): data for d, data in image.blobs.items()}
        for desc in (manifest["config"], *manifest["layers"]):
            assert sha256_digest(blobs[desc["digest"]]) == desc["digest"]
            assert len(blobs[desc["digest"]]) == desc["size"]
        tar = gzip.decompress(blobs[manifest["layers"][0]["digest"]])
        config = json.loads(blobs[manifest["config"]["digest"]])
        assert config == {
            "architecture": "",
            "created": GO_ZERO_TIME,
            "history": [{"author": "imgpkg", "created": GO_ZERO_TIME, "created_by": "imgpkg"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
            "config": {},
        }
        text = image_locations_yaml(LOCATIONS)
        # Go's tar.Writer: two headers, the data padded to 512, two zero blocks, no record padding
        assert len(tar) == 512 + 512 + -(-len(text) // 512) * 512 + 1024
        assert tar[:100].rstrip(b"\0") == b"."  # the directory entry has no trailing slash
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            members = archive.getmembers()
            assert [(m.name, m.type, m.mode, m.uid, m.gid, m.mtime) for m in members] == [
                (".", tarfile.DIRTYPE, 0o700, 0, 0, 0),
                ("image-locations.yml", tarfile.REGTYPE, 0o600, 0, 0, 0),
            ]
            assert all(m.uname == "" and m.gname == "" for m in members)
            handle = archive.extractfile(members[1])
            assert handle is not None and handle.read() == text
        assert tar[257:265] == b"ustar\x0000"

    def test_bytes_are_deterministic(self) -> None:
        """Plans record the digest; copy regenerates the image and must get the same bytes."""
        one, two = build_image_locations(LOCATIONS), build_image_locations(reversed(LOCATIONS))
        assert one.manifest.raw == two.manifest.raw and one.blobs == two.blobs
        assert str(one.digest) == ("sha256:" + hashlib.sha256(one.manifest.raw).hexdigest())
        assert image_locations_tag(Digest.parse(f"sha256:{'d' * 64}")) == (
            f"sha256-{'d' * 64}.image-locations.imgpkg"
        )
        assert imgpkg_tag(one.digest) == f"sha256-{one.digest.hex}.imgpkg"

    def test_generated_endpoint_serves_and_refuses_writes(self) -> None:
        image = build_image_locations(LOCATIONS)
        endpoint = MemoryEndpoint([image])

        async def check() -> None:
            got = await endpoint.get_manifest("any/repo", str(image.digest))
            assert got.raw == image.manifest.raw
            assert (
                await endpoint.head_manifest("x", str(image.digest))
            ) == image.manifest.descriptor
            for layer in got.blobs():
                async with endpoint.open_blob("x", layer) as chunks:
                    data = b"".join([c async for c in chunks])
                assert Digest.of(data) == layer.digest
                assert await endpoint.has_blob("x", layer.digest, layer.size)
            assert await endpoint.head_manifest("x", f"sha256:{'0' * 64}") is None
            with pytest.raises(UsageError, match="read-only"):
                await endpoint.put_manifest("x", got, "t")

        asyncio.run(check())

    def test_plan_entry_round_trips_and_is_checked(self) -> None:
        image = build_image_locations(LOCATIONS)
        entry = PlanEntry.create(
            f"generated.transship.invalid/tkg/repo@{image.digest}",
            "harbor.local/tkg/repo",
            kind=EntryKind.IMAGE_LOCATIONS,
            tags=(image_locations_tag(Digest.parse(f"sha256:{'d' * 64}")),),
            locations=LOCATIONS,
        )
        text = Plan((entry,)).to_yaml()
        again = Plan.from_yaml(text, "plan.yaml").entries[0]
        assert again == entry and list(again.locations) == sorted(LOCATIONS)
        edited = text.replace("isBundle: false", "isBundle: true")
        with pytest.raises(PlanError, match="the entry was edited: plan again"):
            Plan.from_yaml(edited, "plan.yaml")


class TestImagesLock:
    def test_real_images_locks(self) -> None:
        antrea = parse_images_lock((DATA / "antrea-1.9.0-images.yml").read_text(), "antrea")
        assert [i.image.split("@")[0] for i in antrea] == [
            "index.docker.io/antrea/antrea-ubuntu",
            "projects.registry.vmware.com/antreainterworking/interworking-debian",
        ]
        cf = parse_images_lock((DATA / "cf-for-k8s-images.yml").read_text(), "cf")
        hosts = [i.image.split("/")[0] for i in cf]
        assert len(cf) == 23 and hosts.count("index.docker.io") == 22 and "gcr.io" in hosts

    def test_docker_hub_names_are_spelled_like_go_containerregistry(self) -> None:
        text = images_lock([f"busybox@sha256:{'e' * 64}", f"docker.io/a/b@sha256:{'f' * 64}"])
        assert [i.image for i in parse_images_lock(text.decode(), "x")] == [
            f"index.docker.io/library/busybox@sha256:{'e' * 64}",
            f"index.docker.io/a/b@sha256:{'f' * 64}",
        ]

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                f"{LOCK_HEAD}kind: ImagesLock\nimages:\n- image: a/b:v1\n",
                "not a digest reference",
            ),
            ("apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: BundleLock\n", "expected ImagesLock"),
            ("apiVersion: v1\nkind: ImagesLock\n", "expected imgpkg.carvel.dev/v1alpha1"),
            ("apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nextra: 1\n", "unknown key"),
        ],
    )
    def test_malformed(self, text: str, message: str) -> None:
        with pytest.raises(PlanError, match=message):
            parse_images_lock(text, "images.yml")


# --- resolving and expanding bundles in a real registry ------------------------------------


class Corpus:
    """A package repository bundle nesting a package bundle, relocated like imgpkg leaves it.

    `repo` (root) lists the package bundle `contour` by its *original* vmware.com reference;
    `contour` lists an image and a multi-arch index the same way. Everything is present by
    digest in the root's repository of the loopback registry, so nothing is read from vmware.com
    (imgpkg looks in the bundle's repository first).
    """

    def __init__(self, reg: RegistryProcess, prefix: str, seed: int) -> None:
        self.client = SeedClient.for_registry(reg)
        self.host = reg.host
        self.prefix = prefix
        self.repo_path = f"{prefix}/packages/standard/repo"
        self.contour_image = build_image(seed, fmt="docker", layer_sizes=(3000,))
        self.envoy = build_index(seed + 1, fmt="oci", layer_sizes=(2000,))
        self.package = bundle_image(
            [
                f"{VMWARE}/contour@{self.contour_image.digest}",
                f"{VMWARE}/envoy@{self.envoy.digest}",
            ],
            f"contour-{seed}",
        )
        self.root = bundle_image(
            [f"{VMWARE}/packages/standard/contour@{self.package.digest}"], f"repo-{seed}"
        )
        for item in (self.contour_image, self.envoy, self.package):
            push(self.client, self.repo_path, item)
        push(self.client, self.repo_path, self.root, "v1.5.3")

    @property
    def root_ref(self) -> str:
        return f"{self.host}/{self.repo_path}:v1.5.3"


def test_nested_bundle_expansion_unhinted_bundle(plain_registry: RegistryProcess) -> None:
    corpus = Corpus(plain_registry, "nest1", 700)
    dest = "harbor.local/tkg/packages/standard/repo"
    plan = Plan(
        (PlanEntry.create(corpus.root_ref, dest, kind=EntryKind.IMAGE, origins=("list:1",)),)
    )
    done = resolve(plan)
    # not hinted (an image list entry), but labelled: a bundle, with a warning
    assert any(
        "dev.carvel.imgpkg.bundle label, so it is an imgpkg bundle" in w for w in done.warnings
    )
    [root] = by_kind(done.plan, EntryKind.BUNDLE)
    assert root.source_digest == Digest.parse(corpus.root.digest) and root.expanded is True
    assert set(root.tags) == {"v1.5.3", f"sha256-{Digest.parse(corpus.root.digest).hex}.imgpkg"}
    referenced = {str(e.source_digest): e for e in by_kind(done.plan, EntryKind.BUNDLE_REFERENCED)}
    expected = {corpus.package.digest, corpus.contour_image.digest, corpus.envoy.digest}
    assert set(referenced) == expected  # nested bundle and its images, all of them
    for digest, entry in referenced.items():
        assert entry.destination == dest
        assert entry.tags == (f"sha256-{digest.split(':')[1]}.imgpkg",)
        assert entry.source == f"{corpus.host}/{corpus.repo_path}@{digest}"  # read locally
    assert referenced[corpus.package.digest].expanded is True
    assert referenced[corpus.envoy.digest].size == content_size(corpus.envoy)
    records = {
        tag: e
        for e in by_kind(done.plan, EntryKind.IMAGE_LOCATIONS)
        for tag in e.tags
        if tag.endswith(".image-locations.imgpkg")
    }
    for record in records.values():  # imgpkg also tags the record with its own digest
        assert f"sha256-{record.source_digest.hex}.imgpkg" in record.tags
    root_tag = f"sha256-{corpus.root.digest.split(':')[1]}.image-locations.imgpkg"
    package_tag = f"sha256-{corpus.package.digest.split(':')[1]}.image-locations.imgpkg"
    assert set(records) == {root_tag, package_tag}
    assert records[root_tag].locations == (
        ImageLocation(f"{VMWARE}/packages/standard/contour@{corpus.package.digest}", True),
    )
    assert records[package_tag].locations == (
        ImageLocation(f"{VMWARE}/contour@{corpus.contour_image.digest}", False),
        ImageLocation(f"{VMWARE}/envoy@{corpus.envoy.digest}", False),
    )
    # totals: every blob once; the naive copy counts each entry on its own
    items = [corpus.root, corpus.package, corpus.contour_image, corpus.envoy]
    records_size = sum(e.size or 0 for e in records.values())
    assert done.totals.entries == 6 and done.totals.bundles == 1
    assert done.totals.naive_bytes == sum(content_size(i) for i in items) + records_size
    assert done.totals.bytes == done.totals.naive_bytes  # nothing shared in this corpus
    blobs = {b.digest for i in items for b in i.blobs}
    assert done.totals.blobs == len(blobs) + 2 * len(records)


def test_hinted_bundle_without_label_is_an_image(plain_registry: RegistryProcess) -> None:
    client = SeedClient.for_registry(plain_registry)
    plain = build_image(710, fmt="docker", layer_sizes=(500,))
    client.push_image("hint1/standalone-plugins", plain, "v1")
    ref = f"{plain_registry.host}/hint1/standalone-plugins:v1"
    done = resolve(Plan((PlanEntry.create(ref, "harbor.local/x", kind=EntryKind.BUNDLE),)))
    [entry] = done.plan.entries
    assert entry.kind is EntryKind.IMAGE and entry.tags == ("v1",) and entry.expanded is None
    assert entry.size == content_size(plain)
    assert any("has no dev.carvel.imgpkg.bundle label" in w for w in done.warnings)


def test_referenced_images_fall_back_to_their_original_location(
    plain_registry: RegistryProcess,
) -> None:
    """Not relocated yet: images.yml points at other repositories, where they are read."""
    client = SeedClient.for_registry(plain_registry)
    host = plain_registry.host
    antrea = build_image(720, fmt="docker", layer_sizes=(800,))
    client.push_image("orig1/antrea-advanced-debian", antrea, "v1.2.3")
    package = bundle_image([f"{host}/orig1/antrea-advanced-debian@{antrea.digest}"], "antrea")
    client.push_image("orig1/packages/core/antrea", package, "v1.2.3")
    entry = PlanEntry.create(
        f"{host}/orig1/packages/core/antrea:v1.2.3",
        "harbor.local/t/packages/core/antrea",
        kind=EntryKind.BUNDLE,
    )
    done = resolve(Plan((entry,)))
    assert done.warnings == ()
    [ref] = by_kind(done.plan, EntryKind.BUNDLE_REFERENCED)
    assert ref.source == f"{host}/orig1/antrea-advanced-debian@{antrea.digest}"
    assert ref.destination == "harbor.local/t/packages/core/antrea"
    [record] = by_kind(done.plan, EntryKind.IMAGE_LOCATIONS)
    assert record.locations == (
        ImageLocation(f"{host}/orig1/antrea-advanced-debian@{antrea.digest}", False),
    )


def write_list(tmp_path: Path, *refs: str) -> Path:
    path = tmp_path / "images.txt"
    path.write_text("\n".join(refs) + "\n")
    return path


def test_unreadable_bundles_are_one_line_errors_or_gaps(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    host = plain_registry.host
    two_layers = build_image(730, fmt="docker", labels=IMGPKG_BUNDLE_LABEL)  # 2 random layers
    client.push_image("bad1/two-layers", two_layers, "v1")
    no_lock = imgpkg_image([(".", None), ("config.yml", b"a: 1\n")], IMGPKG_BUNDLE_LABEL)
    client.push_image("bad1/no-lock", no_lock, "v1")
    missing = bundle_image([f"{host}/bad1/gone@sha256:{'9' * 64}"], "missing")
    client.push_image("bad1/missing-image", missing, "v1")

    out = cli(
        "plan",
        "images",
        str(write_list(tmp_path, f"{host}/bad1/two-layers:v1")),
        "--dest",
        "harbor.local/t",
        "-q",
    )
    assert out.code == 7
    assert f"bundle {host}/bad1/two-layers:v1@{two_layers.digest}: has 2 layers" in out.error_line
    out = cli(
        "plan",
        "images",
        str(write_list(tmp_path, f"{host}/bad1/no-lock:v1")),
        "--dest",
        "harbor.local/t",
    )
    assert out.code == 7 and "no .imgpkg/images.yml in its layer" in out.error_line
    assert f"{host}/bad1/no-lock:v1" in out.error_line and out.out == ""
    out = cli(
        "plan",
        "images",
        str(write_list(tmp_path, f"{host}/bad1/missing-image:v1")),
        "--dest",
        "harbor.local/t",
    )
    assert out.code == 4 and f"{host}/bad1/gone@sha256:{'9' * 64}" in out.error_line

    listing = write_list(
        tmp_path,
        f"{host}/bad1/two-layers:v1",
        f"{host}/bad1/missing-image:v1",
        f"{host}/bad1/not-there:v1",
    )
    out = cli(
        "plan",
        "images",
        str(listing),
        "--dest",
        "harbor.local/t",
        "--keep-going",
        "-o",
        str(tmp_path / "plan.yaml"),
    )
    assert out.code == 2, out.err
    plan = Plan.from_yaml((tmp_path / "plan.yaml").read_text(), "plan.yaml")
    bundles = {e.source.split("/")[2].split(":")[0]: e for e in by_kind(plan, EntryKind.BUNDLE)}
    assert set(bundles) == {"two-layers", "missing-image"}
    assert all(b.expanded is False for b in bundles.values())  # kept, but not complete
    assert by_kind(plan, EntryKind.IMAGE_LOCATIONS) == []  # never vouch for a partial copy
    gaps = {g.source for g in plan.gaps}
    assert gaps == {
        f"{host}/bad1/two-layers:v1@{two_layers.digest}",
        f"{host}/bad1/gone@sha256:{'9' * 64}",
        f"{host}/bad1/not-there:v1",
    }
    assert out.err.count("transship: gap:") == 3


def test_bundle_errors_are_typed(plain_registry: RegistryProcess) -> None:
    """Every way a labelled bundle can be unreadable raises BundleError (integrity, exit 7)
    naming the bundle, never a generic or untyped error."""
    client = SeedClient.for_registry(plain_registry)
    host = plain_registry.host
    bad_lock = imgpkg_image(
        [(".", None), (".imgpkg", None), (".imgpkg/images.yml", b"kind: Nope\n")],
        IMGPKG_BUNDLE_LABEL,
    )
    not_utf8 = imgpkg_image(
        [(".", None), (".imgpkg", None), (".imgpkg/images.yml", b"\xff\xfe\x00bad")],
        IMGPKG_BUNDLE_LABEL,
    )
    cases = {
        "two-layers": (build_image(731, fmt="docker", labels=IMGPKG_BUNDLE_LABEL), "has 2 layers"),
        "no-lock": (
            imgpkg_image([(".", None), ("config.yml", b"a: 1\n")], IMGPKG_BUNDLE_LABEL),
            "no .imgpkg/images.yml in its layer",
        ),
        "bad-lock": (bad_lock, ".imgpkg/images.yml"),
        "not-utf8": (not_utf8, "is not UTF-8 text"),
    }
    for name, (image, message) in cases.items():
        client.push_image(f"typed/{name}", image, "v1")
        ref = f"{host}/typed/{name}:v1"
        plan = Plan((PlanEntry.create(ref, f"harbor.local/t/typed/{name}"),))
        with pytest.raises(BundleError) as info:
            resolve(plan)
        error = info.value
        assert type(error) is BundleError, name
        assert error.exit_code == 7 and message in str(error), (name, str(error))
        assert f"{ref}@{image.digest}" in str(error) and "\n" not in str(error), name


def test_copy_lands_bundles_referenced_images_and_image_locations(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    corpus = Corpus(plain_registry, "copy1", 740)
    dest = make_registry("plain")
    plan_file = tmp_path / "plan.yaml"
    out = cli(
        "plan",
        "images",
        str(write_list(tmp_path, corpus.root_ref)),
        "--dest",
        f"{dest.host}/mirror",
        "-o",
        str(plan_file),
    )
    assert out.code == 0, out.err
    out = cli("copy", "--plan", str(plan_file), "-q")
    assert out.code == 0, out.err
    repo = f"mirror/{corpus.repo_path}"
    dest.wait_for_log(r"PUT /v2/\S+/manifests/sha256-[0-9a-f]+\.image-locations\.imgpkg")
    puts = [
        e.path.rsplit("/", 1)[1]
        for e in dest.access_log()
        if e.method == "PUT" and "/manifests/" in e.path
    ]
    # referenced images before the bundle's tag, ImageLocations records last
    bundle_tag_at = puts.index("v1.5.3")
    for item in (corpus.package, corpus.contour_image, corpus.envoy):
        assert puts.index(f"sha256-{item.digest[7:]}.imgpkg") < bundle_tag_at
    assert all(
        i > bundle_tag_at for i, p in enumerate(puts) if p.endswith(".image-locations.imgpkg")
    )
    client = SeedClient.for_registry(dest)
    tags = set(client.list_tags(repo))
    root_hex, package_hex = corpus.root.digest[7:], corpus.package.digest[7:]
    for item in (corpus.root, corpus.package, corpus.contour_image, corpus.envoy):
        assert f"sha256-{item.digest[7:]}.imgpkg" in tags
        assert skopeo(dest, f"{repo}@{item.digest}") == item.manifest
    for child in corpus.envoy.images:
        assert skopeo(dest, f"{repo}@{child.digest}") == child.manifest
    assert skopeo(dest, f"{repo}:v1.5.3") == corpus.root.manifest
    for bundle_hex, rows in (
        (
            root_hex,
            [
                {
                    "image": f"{VMWARE}/packages/standard/contour@{corpus.package.digest}",
                    "isBundle": True,
                }
            ],
        ),
        (
            package_hex,
            [
                {"image": f"{VMWARE}/contour@{corpus.contour_image.digest}", "isBundle": False},
                {"image": f"{VMWARE}/envoy@{corpus.envoy.digest}", "isBundle": False},
            ],
        ),
    ):
        tag = f"sha256-{bundle_hex}.image-locations.imgpkg"
        assert tag in tags
        doc, raw = read_locations(client, repo, tag)
        assert doc == {
            "apiVersion": "imgpkg.carvel.dev/v1alpha1",
            "kind": "ImageLocations",
            "images": rows,
        }
        assert skopeo(dest, f"{repo}:{tag}") == raw
        assert f"sha256-{hashlib.sha256(raw).hexdigest()}.imgpkg" in tags  # imgpkg tags it too
    # a second copy finds everything in place
    mark = dest.log_offset()
    again = cli("copy", "--plan", str(plan_file), "-q")
    assert again.code == 0, again.err
    requests = [e for e in dest.access_log(since=mark) if e.path != "/v2/"]
    listings = [e for e in requests if "/tags/list" in e.path or "/_catalog" in e.path]
    manifests = [e for e in requests if e not in listings]
    assert manifests and {e.method for e in manifests} == {"HEAD"}  # and a catalog or tag list
    assert {e.method for e in listings} == {"GET"}


def test_copy_images_list_expands_bundles_too(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """`copy --images` resolves like `plan`: a bundle is never copied without its images."""
    corpus = Corpus(plain_registry, "copy2", 750)
    dest = make_registry("plain")
    out = cli(
        "copy",
        "--images",
        str(write_list(tmp_path, corpus.root_ref)),
        "--dest",
        f"{dest.host}/mirror",
        "-q",
    )
    assert out.code == 0, out.err
    repo = f"mirror/{corpus.repo_path}"
    tags = set(SeedClient.for_registry(dest).list_tags(repo))
    for item in (corpus.package, corpus.contour_image, corpus.envoy):
        assert f"sha256-{item.digest[7:]}.imgpkg" in tags
        assert skopeo(dest, f"{repo}@{item.digest}") == item.manifest
    assert f"sha256-{corpus.root.digest[7:]}.image-locations.imgpkg" in tags


def test_a_single_copy_of_a_bundle_brings_its_images(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo
) -> None:
    """`copy BUNDLE DESTINATION` (as `imgpkg copy -b`): never the bundle without its images."""
    corpus = Corpus(plain_registry, "copy3", 760)
    dest = make_registry("plain")
    out = cli("copy", corpus.root_ref, f"{dest.host}/one/bundle:v1", "-q")
    assert out.code == 0, out.err
    tags = set(SeedClient.for_registry(dest).list_tags("one/bundle"))
    assert "v1" in tags
    for item in (corpus.package, corpus.contour_image, corpus.envoy):
        assert f"sha256-{item.digest[7:]}.imgpkg" in tags
        assert skopeo(dest, f"one/bundle@{item.digest}") == item.manifest
    assert f"sha256-{corpus.root.digest[7:]}.image-locations.imgpkg" in tags


def test_verify_of_a_list_checks_the_images_of_its_bundles(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """`verify --images` resolves like `copy --images`: a bundle copied thin (here by skopeo,
    as a plain image) leaves the destination incomplete; after transship's copy it is not."""
    corpus = Corpus(plain_registry, "verify2", 770)
    dest = make_registry("plain")
    listing = str(write_list(tmp_path, corpus.root_ref))
    repo = f"mirror/{corpus.repo_path}"
    skopeo.copy(plain_registry, f"{corpus.repo_path}:v1.5.3", dest, f"{repo}:v1.5.3")
    where = ("--dest", f"{dest.host}/mirror")
    thin = cli("verify", "--images", listing, *where)
    assert thin.code == ExitCode.INCOMPLETE, thin.err + thin.out
    assert cli("verify", "--images", listing, *where, "--no-resolve", "-q").code == 0
    copied = cli("copy", "--images", listing, *where, "-q")
    assert copied.code == 0, copied.err
    checked = cli("verify", "--images", listing, *where, "--report", str(tmp_path / "r.json"))
    assert checked.code == 0, checked.err + checked.out
    report = json.loads((tmp_path / "r.json").read_text())
    kinds = [c["kind"] for c in report["entries"]]
    assert "bundle" in kinds and kinds.count("bundle-referenced") >= 3, kinds
