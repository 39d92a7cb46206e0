"""OCI layouts as endpoints: round trips, atomic writes, skopeo as a witness, tars, the engine.

Pure file system plus skopeo (no registry): what transship writes skopeo must read byte for
byte, and what skopeo writes transship must read.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from clirunner import CLI
from harness.seed import Image, Index, build_image, build_images_sharing_base, build_index
from harness.skopeo import Skopeo

from transship.digest import Digest
from transship.endpoint import Endpoint
from transship.engine import CopyEngine, CopyTask
from transship.errors import IntegrityError, NotFoundError, RetryableError, UsageError
from transship.layout import (
    ANNOTATION_REPOSITORY,
    ANNOTATION_TAG,
    REF_NAME,
    LayoutError,
    OCILayout,
    OCILayoutTar,
    UnsafeArchiveError,
    ref_name,
    skopeo_addressable,
    split_ref_name,
    write_tar,
)
from transship.layout.pacing import FlushPacer
from transship.layout.reader import Reached
from transship.manifest import MAX_INDEX_DEPTH, OCI_INDEX, Descriptor, Manifest
from transship.ops.archive import ArchiveInfo
from transship.ops.finished import _check_graph
from transship.ops.verify import _walk_archive

# -- helpers ---------------------------------------------------------------------------------


async def chunked(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def descriptor(digest: str, size: int, media_type: str = "application/octet-stream") -> Descriptor:
    return Descriptor(media_type, Digest.parse(digest), size)


def manifest_of(raw: bytes, media_type: str) -> Manifest:
    return Manifest.parse(raw, media_type, "test")


async def put_image(layout: OCILayout, repo: str, image: Image, tag: str | None) -> Manifest:
    for blob in image.blobs:
        await layout.put_blob(repo, descriptor(blob.digest, blob.size), chunked(blob.data))
    manifest = manifest_of(image.manifest, image.media_type)
    await layout.put_manifest(repo, manifest, tag)
    return manifest


async def put_index(layout: OCILayout, repo: str, index: Index, tag: str) -> Manifest:
    for image in index.images:
        await put_image(layout, repo, image, None)
    manifest = manifest_of(index.manifest, index.media_type)
    await layout.put_manifest(repo, manifest, tag)
    return manifest


async def read_blob(endpoint: Endpoint, desc: Descriptor, repo: str = "any") -> bytes:
    out = b""
    async with endpoint.open_blob(repo, desc) as chunks:
        async for chunk in chunks:
            out += chunk
    return out


def blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs" / "sha256").iterdir()}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index_entries(root: Path) -> list[dict[str, object]]:
    doc = json.loads((root / "index.json").read_bytes())
    entries: list[dict[str, object]] = doc["manifests"]
    return entries


# -- directory layouts -----------------------------------------------------------------------


async def test_blob_and_manifest_round_trip(tmp_path: Path) -> None:
    image = build_image(1)
    layout = OCILayout(tmp_path / "L", writable=True)
    manifest = await put_image(layout, "tkg/antrea", image, "v1.2.3")

    for blob in image.blobs:
        digest = Digest.parse(blob.digest)
        assert await layout.has_blob("elsewhere", digest)  # one store for all repositories
        assert await layout.has_blob("x", digest, blob.size)
        assert not await layout.has_blob("x", digest, blob.size + 1)
        assert await layout.mount_blob("other/repo", digest, "tkg/antrea")
        assert await read_blob(layout, descriptor(blob.digest, blob.size)) == blob.data
    assert not await layout.has_blob("x", Digest.of(b"absent"))
    assert not await layout.mount_blob("x", Digest.of(b"absent"), "y")

    by_tag = await layout.get_manifest("tkg/antrea", "v1.2.3")
    by_digest = await layout.get_manifest("unrelated", image.digest)
    assert by_tag.raw == by_digest.raw == image.manifest
    assert by_tag.digest == manifest.digest
    head = await layout.head_manifest("tkg/antrea", "v1.2.3")
    assert head == Descriptor(image.media_type, manifest.digest, len(image.manifest))
    assert await layout.head_manifest("x", image.digest) == head
    assert await layout.head_manifest("tkg/antrea", "v9") is None
    assert await layout.head_manifest("tkg/antrea", image.config.digest) is None  # not a manifest
    assert await layout.head_manifest("tkg/antrea", sha256(b"nothing")) is None
    assert await layout.list_tags("tkg/antrea") == ["v1.2.3"]
    assert await layout.list_tags("tkg") == []
    with pytest.raises(NotFoundError, match=r"manifest oci:.*:tkg/antrea:v9 not found"):
        await layout.get_manifest("tkg/antrea", "v9")
    with pytest.raises(NotFoundError, match="not found"):
        await layout.get_manifest("tkg/antrea", sha256(b"nothing"))
    with pytest.raises(NotFoundError, match="not found"):
        async with layout.open_blob("r", descriptor(sha256(b"nothing"), 7)):
            pass
    await layout.close()

    # manifests are blobs too; the tag lives in index.json with both naming schemes
    root = tmp_path / "L"
    assert blob_files(root) == {Digest.parse(b.digest).hex for b in image.blobs} | {
        manifest.digest.hex
    }
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = index_entries(root)
    assert entry["digest"] == image.digest
    assert entry["annotations"] == {
        REF_NAME: "tkg/antrea:v1.2.3",
        ANNOTATION_REPOSITORY: "tkg/antrea",
        ANNOTATION_TAG: "v1.2.3",
    }
    assert not (root / ".transship-tmp").exists()


async def test_untagged_manifest_is_only_a_blob(tmp_path: Path) -> None:
    image = build_image(2)
    layout = OCILayout(tmp_path, writable=True)
    await put_image(layout, "repo", image, None)
    await layout.close()
    assert index_entries(tmp_path) == []
    reopened = OCILayout(tmp_path, writable=False)
    assert (await reopened.get_manifest("any", image.digest)).raw == image.manifest
    assert await reopened.list_tags("repo") == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"the real contenT", "does not match its digest"),
        (b"too long!" * 100, "larger than its descriptor"),
        (b"short", "has 5 bytes"),
    ],
)
async def test_bad_blob_is_rejected_and_nothing_lands(
    tmp_path: Path, data: bytes, why: str
) -> None:
    expected = b"the real content"
    desc = descriptor(sha256(expected), len(expected) if why != "has 5 bytes" else 6)
    layout = OCILayout(tmp_path, writable=True)
    with pytest.raises(IntegrityError, match=why) as caught:
        await layout.put_blob("r", desc, chunked(data, 4))
    assert desc.digest.short in str(caught.value)
    assert not (tmp_path / "blobs" / "sha256" / desc.digest.hex).exists()
    assert list((tmp_path / ".transship-tmp").iterdir()) == []
    assert not await layout.has_blob("r", desc.digest)
    await layout.close()
    assert not (tmp_path / ".transship-tmp").exists()


async def test_interrupted_stream_leaves_nothing(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    desc = descriptor(sha256(data), len(data))

    async def broken() -> AsyncIterator[bytes]:
        yield data[: 2 * 1024 * 1024]
        raise RetryableError("source went away")

    layout = OCILayout(tmp_path, writable=True)
    with pytest.raises(RetryableError):
        await layout.put_blob("r", desc, broken())
    assert not await layout.has_blob("r", desc.digest)
    assert list((tmp_path / ".transship-tmp").iterdir()) == []
    assert await layout.put_blob("r", desc, chunked(data, 64 * 1024)) == len(data)
    assert await read_blob(layout, desc) == data
    await layout.close()


async def test_leftover_temp_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    await OCILayout(tmp_path, writable=True).close()
    (tmp_path / ".transship-tmp").mkdir()  # as a killed run leaves it
    (tmp_path / ".transship-tmp" / "blob-half").write_bytes(b"partial")
    layout = OCILayout(tmp_path, writable=True)
    assert list((tmp_path / ".transship-tmp").iterdir()) == []
    await layout.close()


async def test_index_json_is_batched_atomic_and_reloaded(tmp_path: Path) -> None:
    images = [build_image(10 + i) for i in range(3)]
    layout = OCILayout(tmp_path, writable=True, flush_interval=3600)
    await put_image(layout, "a/one", images[0], "v1")  # first change: written at once
    assert [e["digest"] for e in index_entries(tmp_path)] == [images[0].digest]
    await put_image(layout, "a/two", images[1], "v1")  # batched until close or the interval
    await put_image(layout, "a/one", images[2], "v2")
    assert len(index_entries(tmp_path)) == 1
    await put_image(layout, "a/one", images[1], "v1")  # re-tag replaces the entry
    await layout.close()

    entries = index_entries(tmp_path)
    names = [e["annotations"][REF_NAME] for e in entries]  # type: ignore[index]
    assert names == ["a/one:v1", "a/two:v1", "a/one:v2"]
    assert entries[0]["digest"] == images[1].digest
    assert sorted(os.listdir(tmp_path)) == ["blobs", "index.json", "oci-layout"]  # no temp files

    reopened = OCILayout(tmp_path, writable=False)
    assert await reopened.list_tags("a/one") == ["v1", "v2"]
    assert await reopened.list_tags("a/two") == ["v1"]
    assert (await reopened.get_manifest("a/one", "v2")).raw == images[2].manifest
    assert (await reopened.get_manifest("a/one", "v1")).raw == images[1].manifest
    await reopened.close()


async def test_deferred_flush_writes_without_close(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path, writable=True, flush_interval=0.2)
    await put_image(layout, "r", build_image(20), "a")
    await put_image(layout, "r", build_image(21), "b")
    assert len(index_entries(tmp_path)) == 1
    await asyncio.sleep(0.5)
    assert len(index_entries(tmp_path)) == 2  # a killed run would have kept both
    await layout.close()


async def test_close_waits_for_a_deferred_write_already_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() during a deferred index.json write waits for it and writes after it: the
    running write is never cancelled (its thread would go on and could put an older index
    over the one close() wrote)."""
    from transship.layout import directory

    layout = OCILayout(tmp_path, writable=True, flush_interval=0)
    for seed, tag in ((30, "a"), (31, "b"), (32, "c")):
        await put_image(layout, "r", build_image(seed), tag)
    real_write = directory.write_atomic
    entered, gate = threading.Event(), threading.Event()
    order: list[str] = []

    def gated_write(path: Path, data: bytes) -> None:
        if not entered.is_set():  # the deferred write: held until let go
            entered.set()
            gate.wait()
            real_write(path, data)
            order.append("deferred")
        else:
            real_write(path, data)
            order.append("close")
            gate.set()  # (a close that did not wait: the held write goes on after this one)

    monkeypatch.setattr(directory, "write_atomic", gated_write)
    try:
        layout.retain_tags({("r", "a"), ("r", "b")})
        layout._pacer.schedule()  # the deferred write of [a, b]
        await asyncio.to_thread(entered.wait)
        deferred = layout._pacer._deferred
        assert deferred is not None
        layout.retain_tags({("r", "a")})  # newer than what the held write has
        closing = asyncio.create_task(layout.close())
        for _ in range(50):  # event-loop turns, no clock: close() reaches its cancel()
            if closing.done() or deferred.done():
                break
            await asyncio.sleep(0)
        assert not deferred.cancelled(), "a running write was cancelled"
        gate.set()
        await closing
    finally:
        gate.set()
    assert order == ["deferred", "close"]
    assert [e["annotations"][REF_NAME] for e in index_entries(tmp_path)] == ["r:a"]  # type: ignore[index]


async def test_a_cancelled_flush_leaves_its_directories_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush cancelled (Ctrl-C) while it syncs: the blob directories it was to fsync are
    still to be synced by the next one (close's)."""
    from transship.layout import directory

    layout = OCILayout(tmp_path, writable=True, flush_interval=3600)
    await put_image(layout, "r", build_image(40), "a")  # first change: written at once
    await put_image(layout, "r", build_image(41), "b")  # a new blob's directory to sync
    pending = set(layout._dirs_to_sync)
    assert pending
    entered, gate = threading.Event(), threading.Event()
    real_fsync_dir = directory.fsync_dir

    def gated_fsync_dir(path: Path) -> None:
        if not entered.is_set():
            entered.set()
            gate.wait()
        real_fsync_dir(path)

    monkeypatch.setattr(directory, "fsync_dir", gated_fsync_dir)
    try:
        flushing = asyncio.create_task(layout.flush())
        await asyncio.to_thread(entered.wait)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
    finally:
        gate.set()
    assert layout._dirs_to_sync >= pending
    await layout.close()
    assert not layout._dirs_to_sync


async def test_a_failing_deferred_write_is_tried_again_only_after_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deferred write that fails (disk full) while streams keep changing things is tried
    again `interval` later, not at once in a loop (an fsync and a warning per MiB)."""
    calls = 0
    writing, go = asyncio.Event(), asyncio.Event()

    async def failing_flush() -> None:
        nonlocal calls
        calls += 1
        writing.set()
        await go.wait()
        raise LayoutError("index.json: No space left on device")

    pacer = FlushPacer(failing_flush, 3600)
    pacer.schedule()
    await writing.wait()
    pacer.schedule()  # a stream wrote more while the write ran
    go.set()
    for _ in range(50):  # event-loop turns, no clock
        await asyncio.sleep(0)
    assert calls == 1
    assert len([r for r in caplog.records if "No space" in r.getMessage()]) == 1
    await pacer.cancel()


async def test_corruption_is_detected_on_read(tmp_path: Path) -> None:
    image = build_image(3, layer_sizes=(3 * 1024 * 1024,))
    layout = OCILayout(tmp_path, writable=True)
    await put_image(layout, "r", image, "t")
    await layout.close()
    layer = image.layers[0]
    path = tmp_path / "blobs" / "sha256" / Digest.parse(layer.digest).hex
    damaged = bytearray(path.read_bytes())
    damaged[-10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    mpath = tmp_path / "blobs" / "sha256" / Digest.parse(image.digest).hex
    mpath.write_bytes(image.manifest.replace(b'"schemaVersion":2', b'"schemaVersion":3'))

    reader = OCILayout(tmp_path, writable=False)
    with pytest.raises(IntegrityError, match=rf"{Digest.parse(layer.digest).short}.*digest"):
        await read_blob(reader, descriptor(layer.digest, layer.size))
    with pytest.raises(IntegrityError, match="stored blob has"):
        await read_blob(reader, descriptor(layer.digest, layer.size + 1))
    with pytest.raises(IntegrityError, match="manifest bytes hash to"):
        await reader.get_manifest("r", "t")
    with pytest.raises(IntegrityError, match="manifest bytes hash to"):
        await reader.get_manifest("r", image.digest)
    assert await reader.head_manifest("r", image.digest) is None  # so a copy rewrites it
    assert await reader.head_manifest("r", "t") == Descriptor(
        image.media_type, Digest.parse(image.digest), image.size
    )


async def test_read_only_and_invalid_layouts(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no such directory"):
        OCILayout(tmp_path / "missing", writable=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(LayoutError, match="not an OCI layout"):
        OCILayout(tmp_path / "junk", writable=True)
    with pytest.raises(LayoutError, match="not an OCI layout"):
        OCILayout(tmp_path / "junk", writable=False)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match=r"unsupported imageLayoutVersion '2\.0\.0'"):
        OCILayout(tmp_path / "v2", writable=False)

    writer = OCILayout(tmp_path / "L", writable=True)
    with pytest.raises(LayoutError, match="another writer"):
        OCILayout(tmp_path / "L", writable=True)
    reader = OCILayout(tmp_path / "L", writable=False)  # readers never wait for the lock
    image = build_image(4)
    with pytest.raises(LayoutError, match="read-only"):
        await put_image(reader, "r", image, "t")
    with pytest.raises(UsageError, match="tag '-bad' must be"):
        await writer.put_manifest("r", manifest_of(image.manifest, image.media_type), "-bad")
    await writer.close()
    with pytest.raises(LayoutError, match="closed"):
        await put_image(writer, "r", image, "t")
    OCILayout(tmp_path / "L", writable=True)  # the lock is released by close()


async def test_concurrent_writers_of_the_same_blobs(tmp_path: Path) -> None:
    images = build_images_sharing_base(5, 4, base_sizes=(2 * 1024 * 1024,))
    layout = OCILayout(tmp_path, writable=True)
    await asyncio.gather(
        *(put_image(layout, f"r{i}", img, "t") for i in range(3) for img in images)
    )
    await layout.close()
    distinct = {b.digest for img in images for b in img.blobs} | {i.digest for i in images}
    assert blob_files(tmp_path) == {Digest.parse(d).hex for d in distinct}
    assert len(index_entries(tmp_path)) == 3


def test_ref_name_scheme() -> None:
    assert ref_name("tkg/antrea", "v1.2.3") == "tkg/antrea:v1.2.3"
    assert ref_name("", "latest") == "latest"
    assert split_ref_name("tkg/antrea:v1.2.3_vmware.1") == ("tkg/antrea", "v1.2.3_vmware.1")
    assert split_ref_name("localhost:5000/tkg/antrea:v1") == ("localhost:5000/tkg/antrea", "v1")
    assert split_ref_name("localhost:5000/tkg/antrea") == ("", "localhost:5000/tkg/antrea")
    assert split_ref_name("plain") == ("", "plain")
    assert skopeo_addressable("tkg/antrea:v1.2.3_vmware.1")
    for name in ("tkg/x:_under", "tkg/x:v1-", "a__b/c:v1", "tkg/x:1..2"):
        assert not skopeo_addressable(name)


# -- skopeo as a witness -----------------------------------------------------------------------


async def test_skopeo_reads_what_transship_wrote(tmp_path: Path, skopeo: Skopeo) -> None:
    image = build_image(30)
    index = build_index(31)
    root = tmp_path / "L"
    layout = OCILayout(root, writable=True)
    await put_image(layout, "tkg/antrea", image, "v1.2.3_vmware.1")
    await put_index(layout, "tkg/pinniped", index, "v0.12.1")
    await layout.close()

    raw = skopeo.run("inspect", "--raw", f"oci:{root}:tkg/antrea:v1.2.3_vmware.1").stdout
    assert raw == image.manifest
    raw = skopeo.run("inspect", "--raw", f"oci:{root}:tkg/pinniped:v0.12.1").stdout
    assert raw == index.manifest

    out = tmp_path / "dir-copy"
    skopeo.run("copy", f"oci:{root}:tkg/antrea:v1.2.3_vmware.1", f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == image.manifest
    for blob in image.blobs:
        assert (out / Digest.parse(blob.digest).hex).read_bytes() == blob.data


async def test_transship_reads_what_skopeo_wrote(tmp_path: Path, skopeo: Skopeo) -> None:
    index = build_index(40)
    image = build_image(41)
    root = tmp_path / "L"
    layout = OCILayout(root, writable=True)
    await put_index(layout, "tkg/pinniped", index, "v1")
    await put_image(layout, "tkg/antrea", image, "v2")
    await layout.close()

    other = tmp_path / "skopeo-written"
    skopeo.run("copy", "--all", f"oci:{root}:tkg/pinniped:v1", f"oci:{other}:pinniped-v1")
    skopeo.run("copy", f"oci:{root}:tkg/antrea:v2", f"oci:{other}:mirror/antrea:v2")

    reader = OCILayout(other, writable=False)
    got = await reader.get_manifest("", "pinniped-v1")
    assert got.raw == index.manifest and got.is_index
    assert await reader.list_tags("") == ["pinniped-v1"]  # unnamed child entries are not tags
    assert await reader.list_tags("mirror/antrea") == ["v2"]
    assert (await reader.get_manifest("mirror/antrea", "v2")).raw == image.manifest
    for child in index.images:
        assert (await reader.get_manifest("", child.digest)).raw == child.manifest
        for blob in child.blobs:
            assert await read_blob(reader, descriptor(blob.digest, blob.size)) == blob.data
    await reader.close()

    # and transship can keep writing into a layout skopeo started
    writer = OCILayout(other, writable=True)
    await put_image(writer, "tkg/antrea", image, "v3")
    await writer.close()
    raw = skopeo.run("inspect", "--raw", f"oci:{other}:tkg/antrea:v3").stdout
    assert raw == image.manifest
    raw = skopeo.run("inspect", "--raw", f"oci:{other}:pinniped-v1").stdout
    assert raw == index.manifest


async def test_unaddressable_tag_still_round_trips(tmp_path: Path, skopeo: Skopeo) -> None:
    image = build_image(50)
    layout = OCILayout(tmp_path, writable=True)
    await put_image(layout, "tkg/x", image, "_private")
    await layout.close()
    reader = OCILayout(tmp_path, writable=False)
    assert (await reader.get_manifest("tkg/x", "_private")).raw == image.manifest
    proc = skopeo.run("inspect", "--raw", f"oci:{tmp_path}:tkg/x:_private", check=False)
    assert proc.returncode != 0 and b"Invalid image" in proc.stderr


# -- the engine over layouts -------------------------------------------------------------------


async def test_engine_copies_layout_to_layout(tmp_path: Path) -> None:
    index = build_index(60, platforms=(("linux", "amd64"), ("linux", "arm64")))
    src_root, dst_root = tmp_path / "src", tmp_path / "dst"
    source = OCILayout(src_root, writable=True)
    await put_index(source, "tkg/antrea", index, "v1")
    await source.close()

    source = OCILayout(src_root, writable=False)
    dest = OCILayout(dst_root, writable=True)
    engine = CopyEngine()
    tasks = [
        CopyTask(source, "tkg/antrea", "v1", dest, repo, (tag,))
        for repo, tag in (("mirror/antrea", "v1"), ("mirror/antrea", "stable"), ("copy2", "v1"))
    ]
    results = await engine.run(tasks)
    assert [r.status for r in results] == ["copied"] * 3, [r.error for r in results]
    assert {str(r.digest) for r in results} == {index.digest}
    await dest.close()

    # every blob and manifest stored once, whatever the number of repositories and tags
    expected = {Digest.parse(d).hex for d in index.blob_digests + index.manifest_digests}
    assert blob_files(dst_root) == expected
    assert blob_files(dst_root) == blob_files(src_root)
    assert engine.stats.blobs_uploaded == len(index.blob_digests)

    dest = OCILayout(dst_root, writable=False)
    for repo, tag in (("mirror/antrea", "v1"), ("mirror/antrea", "stable"), ("copy2", "v1")):
        assert (await dest.get_manifest(repo, tag)).raw == index.manifest
    assert await dest.list_tags("mirror/antrea") == ["stable", "v1"]

    # a rerun is a no-op
    dest = OCILayout(dst_root, writable=True)
    again = CopyEngine()
    results = await again.run(
        [CopyTask(source, "tkg/antrea", "v1", dest, "mirror/antrea", ("v1",))]
    )
    await dest.close()
    assert results[0].status == "skipped" and again.stats.blobs_uploaded == 0


# -- tar archives -------------------------------------------------------------------------------


async def make_layout(root: Path) -> tuple[Index, Image]:
    index = build_index(70)
    image = build_image(71, layer_sizes=(2 * 1024 * 1024 + 17,))
    layout = OCILayout(root, writable=True)
    await put_index(layout, "tkg/pinniped", index, "v1")
    await put_image(layout, "tkg/antrea", image, "v2")
    await layout.close()
    return index, image


async def test_write_tar_and_read_it_in_place(tmp_path: Path, skopeo: Skopeo) -> None:
    index, image = await make_layout(tmp_path / "L")
    (tmp_path / "L" / "blobs" / "sha256" / "stray.tmp").write_bytes(b"not a blob")
    archive = tmp_path / "out" / "images.tar"
    count = write_tar(tmp_path / "L", archive)
    assert count == len(blob_files(tmp_path / "L")) - 1
    assert [p.name for p in archive.parent.iterdir()] == ["images.tar"]  # no temp left

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
    assert len(names) == len(set(names)) == 4 + count
    write_tar(tmp_path / "L", tmp_path / "again.tar")
    assert (tmp_path / "again.tar").read_bytes() == archive.read_bytes()  # reproducible

    reader = OCILayoutTar(archive)
    assert (await reader.get_manifest("tkg/pinniped", "v1")).raw == index.manifest
    assert (await reader.get_manifest("tkg/antrea", "v2")).raw == image.manifest
    assert await reader.list_tags("tkg/antrea") == ["v2"]
    for blob in image.blobs:
        desc = descriptor(blob.digest, blob.size)
        assert await reader.has_blob("x", desc.digest, blob.size)
        assert await read_blob(reader, desc) == blob.data
    with pytest.raises(LayoutError, match="read-only"):
        await reader.put_blob("r", descriptor(sha256(b"x"), 1), chunked(b"x"))
    await reader.close()

    raw = skopeo.run("inspect", "--raw", f"oci-archive:{archive}:tkg/antrea:v2").stdout
    assert raw == image.manifest


async def test_tar_written_by_skopeo_is_readable(tmp_path: Path, skopeo: Skopeo) -> None:
    index, _ = await make_layout(tmp_path / "L")
    archive = tmp_path / "skopeo.tar"
    skopeo.run(
        "copy", "--all", f"oci:{tmp_path / 'L'}:tkg/pinniped:v1", f"oci-archive:{archive}:pin"
    )
    reader = OCILayoutTar(archive)
    assert (await reader.get_manifest("", "pin")).raw == index.manifest

    dest = OCILayout(tmp_path / "loaded", writable=True)
    results = await CopyEngine().run([CopyTask(reader, "", "pin", dest, "tkg/pinniped", ("v1",))])
    assert results[0].status == "copied", results[0].error
    await dest.close()
    await reader.close()
    expected = {Digest.parse(d).hex for d in index.blob_digests + index.manifest_digests}
    assert blob_files(tmp_path / "loaded") == expected


async def test_tar_blob_corruption_is_detected(tmp_path: Path) -> None:
    _, image = await make_layout(tmp_path / "L")
    archive = tmp_path / "a.tar"
    write_tar(tmp_path / "L", archive)
    layer = image.layers[0]
    data = bytearray(archive.read_bytes())
    at = data.find(layer.data[1000:1064])
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    reader = OCILayoutTar(archive)
    with pytest.raises(IntegrityError, match=Digest.parse(layer.digest).short):
        await read_blob(reader, descriptor(layer.digest, layer.size))
    await reader.close()


async def test_write_tar_refuses_a_damaged_blob(tmp_path: Path) -> None:
    _, image = await make_layout(tmp_path / "L")
    path = tmp_path / "L" / "blobs" / "sha256" / Digest.parse(image.config.digest).hex
    path.write_bytes(b"{}")
    with pytest.raises(IntegrityError, match=Digest.parse(image.config.digest).short):
        write_tar(tmp_path / "L", tmp_path / "a.tar")
    assert list(tmp_path.glob("*.tar*")) == []


def _hostile_tar(path: Path, members: Iterable[tarfile.TarInfo]) -> Path:
    layout = b'{"imageLayoutVersion": "1.0.0"}'
    index = b'{"schemaVersion": 2, "manifests": []}'
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("oci-layout", layout), ("index.json", index)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../x"), "refusing tar member '../x': '..' path component"),
        (_member("blobs/../../x"), "refusing tar member 'blobs/../../x': '..' path component"),
        (_member("/etc/x"), "refusing tar member '/etc/x': absolute path"),
        (
            _member("blobs/sha256/abc", tarfile.SYMTYPE, link="/etc/passwd"),
            "refusing tar member 'blobs/sha256/abc': symbolic link (to '/etc/passwd')",
        ),
        (
            _member("blobs/x", tarfile.LNKTYPE, link="../../etc/shadow"),
            "refusing tar member 'blobs/x': hard link (to '../../etc/shadow')",
        ),
        (_member("dev/null", tarfile.CHRTYPE), "refusing tar member 'dev/null': device node"),
        (_member("sda", tarfile.BLKTYPE), "refusing tar member 'sda': device node"),
        (_member("pipe", tarfile.FIFOTYPE), "refusing tar member 'pipe': FIFO"),
        (_member("index.json"), "refusing tar member 'index.json': duplicate member"),
        (_member("./oci-layout"), "refusing tar member './oci-layout': duplicate member"),
    ],
)
def test_hostile_tars_are_refused(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    archive = _hostile_tar(tmp_path / "evil.tar", [member])
    with pytest.raises(UnsafeArchiveError) as caught:
        OCILayoutTar(archive)
    assert str(caught.value) == f"{archive}: {message}"
    assert "\n" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["evil.tar"]  # nothing written, nothing extracted


def test_tar_member_running_past_the_end_is_refused(tmp_path: Path) -> None:
    """A member cut short by the end of the file is a damaged archive (exit 7), not hostile."""
    archive = _hostile_tar(tmp_path / "cut.tar", [_member("blobs/sha256/big", size=100_000)])
    archive.write_bytes(archive.read_bytes()[:20_000])
    with pytest.raises(IntegrityError, match="damaged tar archive: member 'blobs/sha256/big' "):
        OCILayoutTar(archive)


def test_non_layout_and_compressed_tars_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.addfile(tarfile.TarInfo("readme"), io.BytesIO(b""))
    with pytest.raises(LayoutError, match="no top-level oci-layout"):
        OCILayoutTar(plain)
    gz = tmp_path / "x.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("readme"), io.BytesIO(b""))
    with pytest.raises(LayoutError, match="gzip-compressed"):
        OCILayoutTar(gz)
    (tmp_path / "garbage.tar").write_bytes(os.urandom(2048))
    with pytest.raises(LayoutError, match="not a readable tar archive"):
        OCILayoutTar(tmp_path / "garbage.tar")


async def test_write_tar_waits_for_the_writer_to_close(tmp_path: Path) -> None:
    writer = OCILayout(tmp_path / "L", writable=True)
    with pytest.raises(LayoutError, match="another writer holds this layout"):
        write_tar(tmp_path / "L", tmp_path / "a.tar")
    await writer.close()
    assert write_tar(tmp_path / "L", tmp_path / "a.tar") == 0
    reader = OCILayoutTar(tmp_path / "a.tar")
    assert await reader.list_tags("") == []
    await reader.close()


# -- walking what the index names ----------------------------------------------------------------


def index_of(children: Iterable[Manifest], note: str) -> Manifest:
    """An OCI index over `children`, told apart from others over the same by `note`."""
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": c.media_type, "digest": str(c.digest), "size": len(c.raw)}
                for c in children
            ],
            "annotations": {"note": note},
        }
    ).encode()
    return manifest_of(raw, OCI_INDEX)


def counting_reads(layout: OCILayout) -> list[Digest]:
    """Every manifest `layout` reads from its store from now on (read and hashed)."""
    reads: list[Digest] = []
    real = layout._read_manifest

    def counted(digest: Digest, where: str) -> bytes | None:
        reads.append(digest)
        return real(digest, where)

    layout._read_manifest = counted  # type: ignore[method-assign]
    return reads


async def test_walk_named_reads_a_shared_manifest_once(tmp_path: Path) -> None:
    """50 tags on one index and 50 indexes over the same 3 images: each manifest is read once
    (by tag: each tag once more, checked against its index entry), not once per name."""
    layout = OCILayout(tmp_path / "L", writable=True)
    shared = await put_index(
        layout,
        "r",
        build_index(80, platforms=(("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x"))),
        "t0",
    )
    images = [await layout.get_manifest("r", str(c.digest)) for c in shared.manifests]
    for i in range(1, 50):
        await layout.put_manifest("r", shared, f"t{i}")
    for i in range(50):
        await layout.put_manifest("r", index_of(images, str(i)), f"i{i}")
    reads = counting_reads(layout)
    walked = [step async for step in layout.walk_named()]
    assert len(reads) == len(set(reads)) == 1 + 3 + 50
    assert len(walked) == 54 and all(step.manifest is not None for step in walked)
    reads.clear()
    walked = [step async for step in layout.walk_named(by_tag=True, max_depth=None)]
    assert len(reads) == 50 + 3 + 50  # every tag read by tag, each child once
    assert len(walked) == 54
    await layout.close()


async def deep_chain(root: Path, levels: int) -> str:
    """A layout whose tag `deep` names a chain of `levels` indexes over one image."""
    layout = OCILayout(root, writable=True)
    image = build_image(81)
    below = await put_image(layout, "r", image, None)
    for level in range(levels):
        below = index_of([below], str(level))
        await layout.put_manifest("r", below, None)
    await layout.put_manifest("r", below, "deep")
    await layout.close()
    return image.digest


async def test_walk_named_survives_a_chain_thousands_deep(tmp_path: Path) -> None:
    """A hostile index chain far deeper than Python's recursion limit is walked, iteratively."""
    image = await deep_chain(tmp_path / "L", 2000)
    layout = OCILayout(tmp_path / "L", writable=False)
    steps = [step async for step in layout.walk_named(max_depth=None)]
    assert len(steps) == 2001 and steps[0].digest == Digest.parse(image)
    assert len([s async for s in layout.walk_named()]) == MAX_INDEX_DEPTH + 1
    await layout.close()


def test_archive_verify_of_a_chain_thousands_deep_says_so(tmp_path: Path, cli: CLI) -> None:
    """No RecursionError traceback: one line saying the nesting is deeper than load takes."""
    asyncio.run(deep_chain(tmp_path / "L", 2000))
    out = cli("archive", "verify", str(tmp_path / "L"))
    assert out.code != 0
    assert "Traceback" not in out.err and "RecursionError" not in out.out + out.err
    assert f"r:deep: index nesting deeper than {MAX_INDEX_DEPTH} levels" in out.out + out.err


async def test_a_manifest_cut_by_the_depth_limit_is_walked_again_higher_up(
    tmp_path: Path,
) -> None:
    """Tag `a` reaches index X at the depth limit (its image is cut off); tag `b` names X
    itself: the image below X is walked from there, so a finished save's check still sees
    its missing layer."""
    layout = OCILayout(tmp_path / "L", writable=True)
    image = build_image(82)
    child = await put_image(layout, "r", image, None)
    x = index_of([child], "x")
    await layout.put_manifest("r", x, None)
    above = x
    for level in range(MAX_INDEX_DEPTH):
        above = index_of([above], str(level))
        await layout.put_manifest("r", above, None)
    await layout.put_manifest("r", above, "a")  # x at depth MAX_INDEX_DEPTH
    await layout.put_manifest("r", x, "b")
    steps = [(s.tag, s.depth, s.digest) async for s in layout.walk_named()]
    assert ("b", 1, child.digest) in steps
    assert child.digest in await layout.named_reach()
    await layout.close()
    layer = image.layers[-1]
    (tmp_path / "L" / "blobs" / "sha256" / Digest.parse(layer.digest).hex).unlink()
    layout = OCILayout(tmp_path / "L", writable=False)
    with pytest.raises(IntegrityError, match=f"blob {Digest.parse(layer.digest).short} of r:b"):
        await _check_graph(tmp_path / "L", layout, ArchiveInfo())
    await layout.close()


class _FailingCheck(OCILayout):
    """A layout whose blob check fails, and which notes when its walk is closed."""

    walk_closed = False

    async def walk_named(self, **kw: Any) -> AsyncGenerator[Reached, None]:
        try:
            async for step in super().walk_named(**kw):
                yield step
        finally:
            self.walk_closed = True

    async def has_blob(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        raise RuntimeError("the disk went away")


async def test_archive_verify_closes_its_walk_when_a_check_raises(tmp_path: Path) -> None:
    """The walk is closed as the check fails, not left to the event loop's finaliser."""
    await make_layout(tmp_path / "L")
    layout = _FailingCheck(tmp_path / "L", writable=False)
    with pytest.raises(RuntimeError, match="the disk went away"):
        await _walk_archive(layout)
    assert layout.walk_closed  # no await since: closed by the walk's own `aclosing`
    await layout.close()
