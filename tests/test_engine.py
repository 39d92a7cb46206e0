"""The copy engine alone, over in-memory endpoints: ordering, dedup, skips and refusals.

Behaviour against real registries lives in test_copy.py and test_faults.py; here the engine's
own decisions are checked where nothing else can interfere, with `MemoryEndpoint`s that hash
every byte as a registry would.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from harness.seed import Image, Index, build_image, build_index, random_layer

from transship.digest import Digest
from transship.engine import CopyEngine, CopyTask, EngineOptions, TaskResult
from transship.errors import DependencyError, IntegrityError, NotFoundError, PermissionDeniedError
from transship.landed import LandedLog
from transship.manifest import OCI_MANIFEST, Descriptor, Manifest, Platform
from transship.memory import GeneratedImage, MemoryEndpoint

OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def generated(image: Image, *, corrupt: bool = False) -> GeneratedImage:
    """The seed image as an in-memory one; `corrupt` flips one byte of its last layer."""
    blobs = {Digest.parse(b.digest): b.data for b in image.pushable_blobs}
    if corrupt:
        last = Digest.parse(image.layers[-1].digest)
        data = bytearray(blobs[last])
        data[0] ^= 0xFF
        blobs[last] = bytes(data)
    return GeneratedImage(Manifest.parse(image.manifest, image.media_type, "test"), blobs)


def source_with(repository: str, tag: str, *items: Image | Index) -> MemoryEndpoint:
    source = MemoryEndpoint(label="src", writable=True)
    for item in items:
        if isinstance(item, Index):
            for child in item.images:
                source.add(generated(child), repository)
            raw = Manifest.parse(item.manifest, item.media_type, "test")
            source.add(GeneratedImage(raw, {}), repository, (tag,))
        else:
            source.add(generated(item), repository, (tag,))
    return source


def task(
    source: MemoryEndpoint,
    dest: MemoryEndpoint,
    repo: str,
    *tags: str,
    identifier: str = "v1",
    platforms: tuple[Platform, ...] = (),
) -> CopyTask:
    return CopyTask(source, "app", identifier, dest, repo, tags, platforms)


def run(engine: CopyEngine, *tasks: CopyTask) -> list[TaskResult]:
    return asyncio.run(engine.run(tasks))


def test_an_image_lands_whole_and_a_rerun_moves_nothing() -> None:
    image = build_image(1, layer_sizes=(3000, 5000))
    source, dest = source_with("app", "v1", image), MemoryEndpoint(label="dst", writable=True)
    engine = CopyEngine()
    [result] = run(engine, task(source, dest, "mirror/app", "v1"))
    assert result.status == "copied" and str(result.digest) == image.digest
    assert engine.stats.blobs_uploaded == len(image.pushable_blobs)
    assert engine.stats.bytes_uploaded == sum(b.size for b in image.pushable_blobs)
    found = asyncio.run(dest.head_manifest("mirror/app", "v1"))
    assert found is not None and str(found.digest) == image.digest
    for blob in image.pushable_blobs:
        assert asyncio.run(dest.has_blob("mirror/app", Digest.parse(blob.digest), blob.size))

    again = CopyEngine()
    [second] = run(again, task(source, dest, "mirror/app", "v1"))
    assert second.status == "skipped"
    assert again.stats.blobs_uploaded == 0 and again.stats.manifests_pushed == 0


def test_a_blob_crosses_once_per_destination_and_is_mounted_elsewhere() -> None:
    """Two repositories need the same layers: one upload each, the other repository mounts."""
    image = build_image(2, layer_sizes=(4000, 6000))
    source, dest = source_with("app", "v1", image), MemoryEndpoint(label="dst", writable=True)
    engine = CopyEngine()
    results = run(engine, task(source, dest, "one/app", "v1"), task(source, dest, "two/app", "v1"))
    assert [r.status for r in results] == ["copied", "copied"]
    blobs = len(image.pushable_blobs)
    assert engine.stats.blobs_uploaded == blobs
    assert engine.stats.blobs_mounted == blobs
    for repo in ("one/app", "two/app"):
        found = asyncio.run(dest.head_manifest(repo, "v1"))
        assert found is not None and str(found.digest) == image.digest


class MountLog(MemoryEndpoint):
    """Records every cross-repository mount as (into, from)."""

    def __init__(self) -> None:
        super().__init__(label="dst", writable=True)
        self.mounts: list[tuple[str, str]] = []

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        if from_repository != repository:
            self.mounts.append((repository, from_repository))
        return await super().mount_blob(repository, digest, from_repository)


def test_a_repository_mounts_from_one_origin_when_that_one_holds_the_blobs() -> None:
    """Blobs first landed in different repositories; a repository that holds them all is the
    one origin of a later repository (a Bearer registry: one token per pair of repositories)."""
    base = random_layer(random.Random(5), 3000, "oci")
    lone = build_image(6, layer_sizes=(), base_layers=(base,))  # `base` lands in "h" first
    full = build_image(7, layer_sizes=(2000,), base_layers=(base,))
    source = source_with("app", "v1", full)
    source.add(generated(lone), "lone", ("v1",))
    dest = MountLog()
    engine = CopyEngine()
    lone_task = CopyTask(source, "lone", "v1", dest, "h", ("v1",))
    assert [r.status for r in run(engine, lone_task)] == ["copied"]
    assert [r.status for r in run(engine, task(source, dest, "a", "v1"))] == ["copied"]
    assert dest.mounts == [("a", "h")]  # `base`; a's own blobs are new
    assert [r.status for r in run(engine, task(source, dest, "c", "v1"))] == ["copied"]
    assert sorted(set(dest.mounts[1:])) == [("c", "a")]  # `base` too comes from "a", not "h"
    assert engine.stats.blobs_mounted == 1 + len(full.pushable_blobs)
    found = asyncio.run(dest.head_manifest("c", "v1"))
    assert found is not None and str(found.digest) == full.digest


def test_an_index_lands_children_first_and_a_platform_can_be_picked() -> None:
    index = build_index(3, platforms=(("linux", "amd64"), ("linux", "arm64")))
    source = source_with("app", "v1", index)
    dest = MemoryEndpoint(label="dst", writable=True)
    [result] = run(CopyEngine(), task(source, dest, "all/app", "v1"))
    assert result.status == "copied" and str(result.digest) == index.digest
    for child in index.images:
        assert asyncio.run(dest.head_manifest("all/app", child.digest)) is not None

    arm = next(i for i in index.images if i.platform["architecture"] == "arm64")
    picked = task(source, dest, "arm/app", "v1", platforms=(Platform.parse("linux/arm64"),))
    [one] = run(CopyEngine(), picked)
    assert one.status == "copied" and str(one.digest) == arm.digest
    assert asyncio.run(dest.head_manifest("arm/app", index.digest)) is None

    missing = task(source, dest, "x/app", "v1", platforms=(Platform.parse("linux/s390x"),))
    [none] = run(CopyEngine(), missing)
    assert none.status == "failed" and isinstance(none.error, NotFoundError)
    assert "linux/s390x" in str(none.error)


def test_a_corrupt_source_blob_fails_the_task_and_nothing_is_pushed_on_it() -> None:
    image = build_image(4, layer_sizes=(2000, 7000))
    source = MemoryEndpoint(label="src", writable=True)
    source.add(generated(image, corrupt=True), "app", ("v1",))
    dest = MemoryEndpoint(label="dst", writable=True)
    engine = CopyEngine(EngineOptions(blob_attempts=2, retry_base=0.0))
    [result] = run(engine, task(source, dest, "mirror/app", "v1"))
    assert result.status == "failed" and isinstance(result.error, IntegrityError)
    bad = image.layers[-1]
    assert not asyncio.run(dest.has_blob("mirror/app", Digest.parse(bad.digest)))
    assert asyncio.run(dest.head_manifest("mirror/app", "v1")) is None


def test_a_pinned_task_the_destination_has_never_reads_the_source() -> None:
    image = build_image(5)
    source, dest = source_with("app", "v1", image), MemoryEndpoint(label="dst", writable=True)
    run(CopyEngine(), task(source, dest, "mirror/app", "v1"))
    empty = MemoryEndpoint(label="gone", writable=True)  # any read would raise NotFoundError
    pinned = task(empty, dest, "mirror/app", "v1", identifier=image.digest)
    [result] = run(CopyEngine(), pinned)
    assert result.status == "skipped" and str(result.digest) == image.digest


def test_a_missing_source_fails_only_its_own_task() -> None:
    image = build_image(6)
    source, dest = source_with("app", "v1", image), MemoryEndpoint(label="dst", writable=True)
    good = task(source, dest, "mirror/app", "v1")
    gone = task(source, dest, "mirror/gone", "v1", identifier="v9")
    results = run(CopyEngine(), good, gone)
    assert [r.status for r in results] == ["copied", "failed"]
    assert isinstance(results[1].error, NotFoundError)


def test_a_later_phase_waits_for_its_repository_and_only_its_repository() -> None:
    """A bundle is never tagged over images that did not land in its repository."""
    image, bundle = build_image(7), build_image(8)
    source = source_with("app", "v1", image)
    source.add(generated(bundle), "app", ("bundle",))
    dest = MemoryEndpoint(label="dst", writable=True)
    broken = task(source, dest, "tkg/pkg", "v1", identifier="missing")
    fine = task(source, dest, "tkg/other", "v1")
    later = task(source, dest, "tkg/pkg", "b1", identifier="bundle")
    unrelated = task(source, dest, "tkg/other", "b1", identifier="bundle")
    results = asyncio.run(CopyEngine().run_phases([[broken, fine], [later, unrelated]]))
    by_task = {(r.task.dest_repository, r.task.dest_tags): r for r in results}
    assert by_task[("tkg/pkg", ("v1",))].status == "failed"
    blocked = by_task[("tkg/pkg", ("b1",))]
    assert blocked.status == "failed" and isinstance(blocked.error, DependencyError)
    assert by_task[("tkg/other", ("b1",))].status == "copied"
    assert asyncio.run(dest.head_manifest("tkg/pkg", "b1")) is None


class _HeldDestination(MemoryEndpoint):
    """Holds the manifest push into `held` until something is pushed into `other`."""

    def __init__(self, held: str, other: str) -> None:
        super().__init__(label="dst", writable=True)
        self.held, self.other = held, other
        self.released = asyncio.Event()
        self.order: list[str] = []

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        if repository == self.held:
            await asyncio.wait_for(self.released.wait(), 10)
        await super().put_manifest(repository, manifest, tag)
        self.order.append(repository)
        if repository == self.other:
            self.released.set()


def test_a_later_phase_does_not_wait_for_other_repositories() -> None:
    """A bundle in its own repository goes up while an image elsewhere is still landing."""
    image, bundle = build_image(17), build_image(18)
    source = source_with("app", "v1", image)
    source.add(generated(bundle), "app", ("bundle",))
    dest = _HeldDestination("tkg/slow", "tkg/bundle")
    slow = task(source, dest, "tkg/slow", "v1")
    later = task(source, dest, "tkg/bundle", "b1", identifier="bundle")
    results = asyncio.run(CopyEngine().run_phases([[slow], [later]]))
    assert [r.status for r in results] == ["copied", "copied"]
    assert dest.order == ["tkg/bundle", "tkg/slow"]


class _ForgetfulDestination(MemoryEndpoint):
    """Says a blob is unknown at the first manifest push, as a registry under a concurrent
    writer can; the engine must look again and push what is missing."""

    def __init__(self) -> None:
        super().__init__(label="dst", writable=True)
        self.refused = 0

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        if self.refused == 0 and manifest.layers:
            self.refused += 1
            self._held[repository].discard(manifest.layers[0].digest)
        await super().put_manifest(repository, manifest, tag)


def test_a_manifest_refused_for_unknown_content_is_rechecked_and_retried() -> None:
    image = build_image(9, layer_sizes=(1500, 2500))
    source, dest = source_with("app", "v1", image), _ForgetfulDestination()
    engine = CopyEngine(EngineOptions(retry_base=0.0))
    [result] = run(engine, task(source, dest, "mirror/app", "v1"))
    assert result.status == "copied", result.error
    assert dest.refused == 1 and engine.stats.retries == 1
    first = Digest.parse(image.layers[0].digest)
    assert asyncio.run(dest.has_blob("mirror/app", first))


def test_referrers_travel_by_digest_and_the_destination_lists_them() -> None:
    """Pushing a referrer is `put_manifest` by digest; an endpoint with an index lists it."""
    image = build_image(10)
    empty = b"{}"
    sbom = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": {"mediaType": OCI_EMPTY, "digest": str(Digest.of(empty)), "size": 2},
            "layers": [],
            "subject": {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.size,
            },
        }
    ).encode()
    referrer = GeneratedImage(Manifest.parse(sbom, OCI_MANIFEST, "test"), {Digest.of(empty): empty})
    source = source_with("app", "v1", image)
    source.add(referrer, "app")
    dest = MemoryEndpoint(label="dst", writable=True)
    subject = Digest.parse(image.digest)
    assert asyncio.run(dest.list_referrers("mirror/app", subject)) == ()
    results = asyncio.run(
        CopyEngine().run_phases(
            [
                [task(source, dest, "mirror/app", "v1")],
                [task(source, dest, "mirror/app", identifier=str(referrer.digest))],
            ]
        )
    )
    assert [r.status for r in results] == ["copied", "copied"]
    [found] = asyncio.run(dest.list_referrers("mirror/app", subject))
    assert found.descriptor.digest == referrer.digest
    assert found.artifact_type == "application/spdx+json"
    assert asyncio.run(dest.list_referrers("elsewhere/app", subject)) == ()


class CountingEndpoint(MemoryEndpoint):
    """A memory destination that counts HEADs and may refuse to list tags."""

    def __init__(self, *, refuse_listing: bool = False) -> None:
        super().__init__(label="dst", writable=True)
        self.heads: list[str] = []
        self.lists: list[str] = []
        self.refuse_listing = refuse_listing

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        self.heads.append(f"{repository}:{identifier}")
        return await super().head_manifest(repository, identifier)

    def drop_repository(self, repository: str) -> None:
        """As if the repository had been deleted at the destination."""
        self._held.pop(repository, None)
        self._tags = {key: d for key, d in self._tags.items() if key[0] != repository}

    async def existing_tags(self, repository: str) -> frozenset[str] | None:
        self.lists.append(repository)
        if self.refuse_listing:
            raise PermissionDeniedError(f"listing tags of {repository}: permission denied")
        return await super().existing_tags(repository)


def test_tag_list_spares_heads_and_a_refused_list_falls_back_to_heads() -> None:
    image, other = build_image(41, layer_sizes=(3000,)), build_image(42, layer_sizes=(3000,))
    source = source_with("app", "v1", image)
    dest = CountingEndpoint()
    [cold] = run(CopyEngine(), task(source, dest, "mirror/app", "v1", "v2"))
    assert cold.status == "copied" and dest.heads == []  # a missing repository: no HEAD at all
    [again] = run(CopyEngine(), task(source, dest, "mirror/app", "v1", "v2"))
    assert again.status == "skipped" and dest.heads == ["mirror/app:v1", "mirror/app:v2"]
    # the tag moved at the destination: listed, HEADed, found elsewhere, copied again
    dest.add(generated(other), "mirror/app", ("v2",))
    [moved] = run(CopyEngine(), task(source, dest, "mirror/app", "v1", "v2"))
    assert moved.status == "copied"
    found = asyncio.run(dest.head_manifest("mirror/app", "v2"))
    assert found is not None and str(found.digest) == image.digest

    refusing = CountingEndpoint(refuse_listing=True)
    [first] = run(CopyEngine(), task(source, refusing, "mirror/app", "v1"))
    assert first.status == "copied" and refusing.heads == ["mirror/app:v1"]  # asked tag by tag
    [rerun] = run(CopyEngine(), task(source, refusing, "mirror/app", "v1"))
    assert rerun.status == "skipped"


def test_tags_are_listed_while_the_destination_looks_cold_and_not_once_it_looks_complete() -> None:
    images = [build_image(50 + i, layer_sizes=(2000,)) for i in range(4)]
    source = MemoryEndpoint(label="src", writable=True)
    for i, image in enumerate(images):
        source.add(generated(image), "app", (f"v{i}",))
    dest = CountingEndpoint()

    def tasks() -> list[CopyTask]:  # 12 repositories, one image under two tags in each
        return [
            CopyTask(source, "app", f"v{i % 4}", dest, f"mirror/r{i}", ("a", "b"))
            for i in range(12)
        ]

    cold = asyncio.run(CopyEngine().run(tasks()))
    assert {r.status for r in cold} == {"copied"}
    assert sorted(dest.lists) == sorted(f"mirror/r{i}" for i in range(12))  # each listed once
    assert dest.heads == []  # and nothing HEADed in a repository that does not exist

    dest.lists.clear()
    rerun = asyncio.run(CopyEngine().run(tasks()))
    assert {r.status for r in rerun} == {"skipped"}
    assert len(dest.lists) == 1  # the first check lists; the rest see a complete destination
    assert sorted(dest.heads) == sorted(f"mirror/r{i}:{t}" for i in range(12) for t in "ab")

    # A tag moved at the destination: HEADed without a list, found elsewhere, copied again.
    moved = build_image(60, layer_sizes=(2000,))
    dest.add(generated(moved), "mirror/r7", ("b",))
    again = asyncio.run(CopyEngine().run(tasks()))
    assert [r.status for r in again].count("copied") == 1 and again[7].status == "copied"
    found = asyncio.run(dest.head_manifest("mirror/r7", "b"))
    assert found is not None and str(found.digest) == images[7 % 4].digest

    # Half the repositories gone (a new release into an old mirror): every one lands again.
    for i in range(0, 12, 2):
        dest.drop_repository(f"mirror/r{i}")
    mixed = asyncio.run(CopyEngine().run(tasks()))
    assert [r.status for r in mixed] == ["copied", "skipped"] * 6


class CatalogEndpoint(CountingEndpoint):
    """A counting memory destination that also answers `RepositoryIndex`, or refuses to."""

    def __init__(self, *, refuse_catalog: bool = False) -> None:
        super().__init__()
        self.catalogs: list[tuple[str, int]] = []
        self.refuse_catalog = refuse_catalog

    async def existing_repositories(self, prefix: str, *, max_pages: int) -> frozenset[str] | None:
        self.catalogs.append((prefix, max_pages))
        if self.refuse_catalog:
            return None
        held = [r for r in self._held if await MemoryEndpoint.existing_tags(self, r) is not None]
        return frozenset(r for r in held if r.startswith(prefix))


def test_the_catalog_spares_every_tag_list_on_a_cold_destination_and_costs_a_warm_one_nothing() -> (
    None
):
    images = [build_image(70 + i, layer_sizes=(2000,)) for i in range(4)]
    source = MemoryEndpoint(label="src", writable=True)
    for i, image in enumerate(images):
        source.add(generated(image), "app", (f"v{i}",))
    dest = CatalogEndpoint()

    def tasks() -> list[CopyTask]:  # 12 repositories, one image under two tags in each
        return [
            CopyTask(source, "app", f"v{i % 4}", dest, f"mirror/r{i}", ("a", "b"))
            for i in range(12)
        ]

    cold = asyncio.run(CopyEngine().run(tasks()))
    assert {r.status for r in cold} == {"copied"}
    # asked once, for the common prefix, within the tag lists it spares
    assert dest.catalogs == [("mirror/r", 5)]
    assert dest.lists == [] and dest.heads == []  # no tag list, no HEAD

    dest.catalogs.clear()
    rerun = asyncio.run(CopyEngine().run(tasks()))
    assert {r.status for r in rerun} == {"skipped"}
    # the catalog where the first check listed, then a HEAD per tag: no more than before
    assert len(dest.catalogs) == 1 and dest.lists == []
    assert sorted(dest.heads) == sorted(f"mirror/r{i}:{t}" for i in range(12) for t in "ab")

    # Half the repositories gone: the catalog says which; only the others are listed/HEADed.
    for i in range(0, 12, 2):
        dest.drop_repository(f"mirror/r{i}")
    dest.heads.clear()
    mixed = asyncio.run(CopyEngine().run(tasks()))
    assert [r.status for r in mixed] == ["copied", "skipped"] * 6
    touched = {entry.split(":")[0] for entry in dest.heads} | set(dest.lists)
    assert touched <= {f"mirror/r{i}" for i in range(1, 12, 2)}


def test_a_refused_catalog_falls_back_to_tag_lists_and_one_repository_never_asks() -> None:
    images = [build_image(80 + i, layer_sizes=(2000,)) for i in range(3)]
    source = MemoryEndpoint(label="src", writable=True)
    for i, image in enumerate(images):
        source.add(generated(image), "app", (f"v{i}",))
    refusing = CatalogEndpoint(refuse_catalog=True)
    tasks = [CopyTask(source, "app", f"v{i}", refusing, f"mirror/r{i}", ("a",)) for i in range(3)]
    cold = asyncio.run(CopyEngine().run(tasks))
    assert {r.status for r in cold} == {"copied"}
    assert len(refusing.catalogs) == 1  # asked once, refused: exactly as without a catalog
    assert sorted(refusing.lists) == ["mirror/r0", "mirror/r1", "mirror/r2"]
    assert refusing.heads == []

    single = CatalogEndpoint()
    one = [CopyTask(source, "app", f"v{i}", single, "mirror/only", (f"t{i}",)) for i in range(3)]
    assert {r.status for r in asyncio.run(CopyEngine().run(one))} == {"copied"}
    assert single.catalogs == [] and single.lists == ["mirror/only"]  # it would spare nothing


def test_a_resumed_run_mounts_a_shared_blob_from_where_the_killed_run_landed_it(
    tmp_path: Path,
) -> None:
    """Run 1 lands the image in one/app (then "dies"); run 2 reaches the same blobs first
    through two/app: with the landed log it mounts them, without it it would upload again."""
    image = build_image(5, layer_sizes=(4000, 6000))
    source, dest = source_with("app", "v1", image), MemoryEndpoint(label="dst", writable=True)
    journal = LandedLog(tmp_path)
    first = CopyEngine(EngineOptions(landed_log=journal))
    run(first, task(source, dest, "one/app", "v1"))
    journal.close()
    blobs = len(image.pushable_blobs)
    assert first.stats.blobs_uploaded == blobs

    without = MemoryEndpoint(label="dst", writable=True)
    run(CopyEngine(), task(source, without, "one/app", "v1"))
    blind = CopyEngine()
    run(blind, task(source, without, "two/app", "v1"))
    assert blind.stats.blobs_uploaded == blobs  # what the log prevents

    resumed = CopyEngine(EngineOptions(landed_log=LandedLog(tmp_path)))
    [result] = run(resumed, task(source, dest, "two/app", "v1"))
    assert result.status == "copied"
    assert resumed.stats.blobs_uploaded == 0 and resumed.stats.blobs_mounted == blobs


def test_a_stale_landed_log_costs_one_refused_mount_then_is_not_asked(tmp_path: Path) -> None:
    """Same label, new storage (a registry recreated at the same address): the first refused
    mount makes the run stop asking the log; everything is uploaded and nothing is lost."""
    image = build_image(6, layer_sizes=(4000, 6000, 8000))
    source = source_with("app", "v1", image)
    journal = LandedLog(tmp_path)
    run(
        CopyEngine(EngineOptions(landed_log=journal)),
        task(source, MemoryEndpoint(label="dst", writable=True), "one/app", "v1"),
    )
    journal.close()

    fresh = MemoryEndpoint(label="dst", writable=True)
    mounts: list[str] = []
    real_mount = fresh.mount_blob

    async def counted(repository: str, digest: Digest, from_repository: str) -> bool:
        mounts.append(from_repository)
        return await real_mount(repository, digest, from_repository)

    fresh.mount_blob = counted  # type: ignore[method-assign]
    engine = CopyEngine(EngineOptions(landed_log=LandedLog(tmp_path), parallel_small_blobs=1))
    [result] = run(engine, task(source, fresh, "two/app", "v1"))
    assert result.status == "copied"
    assert engine.stats.blobs_uploaded == len(image.pushable_blobs)
    assert mounts.count("one/app") == 1  # asked once, refused, then not again


def test_a_torn_or_damaged_landed_log_is_read_as_far_as_it_is_whole(tmp_path: Path) -> None:
    journal = LandedLog(tmp_path)
    digest = Digest.of(b"x")
    journal.record("reg:5000", "one/app", digest)
    journal.close()
    [path] = tmp_path.iterdir()
    with path.open("a") as out:
        out.write("two/app sha256:0123\ngarbage\n")
    assert LandedLog(tmp_path).homes("reg:5000") == {digest: "one/app"}
    assert LandedLog(tmp_path).homes("other:5000") == {}
    blocked = tmp_path / "file"
    blocked.write_text("")
    broken = LandedLog(blocked / "sub")  # cannot be created: given up quietly
    broken.record("reg:5000", "one/app", digest)
    broken.record("reg:5000", "one/app", digest)
    assert broken.homes("reg:5000") == {}


def test_a_remembered_home_without_pull_rights_falls_back_to_upload(tmp_path: Path) -> None:
    """The log names a repository these credentials may not read (a Harbor robot account of
    another project): the refused mount is no failure, the blob is uploaded."""
    image = build_image(7, layer_sizes=(4000,))
    source = source_with("app", "v1", image)
    journal = LandedLog(tmp_path)
    dest = MemoryEndpoint(label="dst", writable=True)
    run(CopyEngine(EngineOptions(landed_log=journal)), task(source, dest, "one/app", "v1"))
    journal.close()
    real_mount = dest.mount_blob

    async def guarded(repository: str, digest: Digest, from_repository: str) -> bool:
        if from_repository != repository:
            raise PermissionDeniedError(f"no pull right on {from_repository}")
        return await real_mount(repository, digest, from_repository)

    dest.mount_blob = guarded  # type: ignore[method-assign]
    engine = CopyEngine(EngineOptions(landed_log=LandedLog(tmp_path)))
    [result] = run(engine, task(source, dest, "two/app", "v1"))
    assert result.status == "copied", result.error
    assert engine.stats.blobs_uploaded == len(image.pushable_blobs)


def test_a_torn_line_of_a_killed_run_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    journal = LandedLog(tmp_path)
    first, second = Digest.of(b"a"), Digest.of(b"b")
    journal.record("reg:5000", "one/app", first)
    journal.close()
    [path] = tmp_path.iterdir()
    with path.open("a") as out:
        out.write("half/wri")  # killed mid-line
    again = LandedLog(tmp_path)
    again.record("reg:5000", "two/app", second)
    again.close()
    assert LandedLog(tmp_path).homes("reg:5000") == {first: "one/app", second: "two/app"}


def test_a_rerun_builds_each_destination_s_state_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-destination state (flights, locks, the presence tally) is made once per endpoint,
    and whether it lists tags is asked of it then: not again at every check of a rerun (an
    isinstance check against a runtime protocol walks its members each time)."""
    import transship.engine as engine_module

    images = [build_image(40 + i, layer_sizes=(300,)) for i in range(6)]
    source = MemoryEndpoint(label="src", writable=True)
    for i, image in enumerate(images):
        source.add(generated(image), "app", (f"v{i}",))
    dest = MemoryEndpoint(label="dst", writable=True)
    tasks = [task(source, dest, f"mirror/app{i}", f"v{i}", identifier=f"v{i}") for i in range(6)]
    assert all(r.status == "copied" for r in run(CopyEngine(), *tasks))
    built: list[object] = []
    real = engine_module._Sink

    def counting(**kw: object) -> object:
        built.append(kw)
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "_Sink", counting)
    results = run(CopyEngine(), *tasks)
    assert [r.status for r in results] == ["skipped"] * 6
    assert built == [{"tag_index": dest}]
