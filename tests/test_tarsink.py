"""`save -o FILE.tar` written in place (`transship.layout.tarsink`): the tar is the store.

Real files, real tar readers (ours, Python's tarfile, GNU tar, skopeo); a killed save is a real
SIGKILLed process, its rerun counted in the source registry's access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import Image, build_images_sharing_base, build_index, seed_image
from harness.serve import ServeProcess
from harness.skopeo import Skopeo
from test_airgap import corpus, write_list

from transship.digest import Digest, Hasher
from transship.errors import ExitCode, IntegrityError, LayoutError, RetryableError
from transship.layout import OCILayout, OCILayoutTar, tarsink, write_tar
from transship.layout.archive import tool_head_size
from transship.layout.index import TOOL_FILE
from transship.layout.tarsink import TarSink, journal_path, partial_path
from transship.layout.volumes import Volumes
from transship.manifest import Descriptor, Manifest
from transship.streams import CHUNK


async def chunked(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def desc(digest: str, size: int) -> Descriptor:
    return Descriptor("application/octet-stream", Digest.parse(digest), size)


async def put_image(sink: TarSink | OCILayout, repo: str, image: Image, tag: str | None) -> None:
    for blob in image.blobs:
        await sink.put_blob(repo, desc(blob.digest, blob.size), chunked(blob.data))
    await sink.put_manifest(repo, Manifest.parse(image.manifest, image.media_type, "t"), tag)


def images(n: int = 4, layer: int = 30_000) -> list[Image]:
    return build_images_sharing_base(77, n, base_sizes=(50_000,), layer_sizes=(layer,))


def members(path: Path) -> dict[str, bytes]:
    """Every regular member's bytes, through Python's tarfile (a reader that is not ours)."""
    out = {}
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert len(names) == len(set(names)), "a member appears twice"
        for info in tar:
            if info.isfile():
                out[info.name] = tar.extractfile(info).read()  # type: ignore[union-attr]
    return out


async def gated(data: bytes, gate: asyncio.Event) -> AsyncIterator[bytes]:
    """A transfer that holds its region until `gate` opens (so later blobs land after it)."""
    yield data[:1000]
    await gate.wait()
    yield data[1000:]


async def fail_between(sink: TarSink, digest: str, data: bytes, then: AsyncIterator[None]) -> None:
    """A transfer of `data` under `digest` that fails only after what `then` writes landed."""
    gate = asyncio.Event()
    failing = asyncio.create_task(sink.put_blob("r", desc(digest, len(data)), gated(data, gate)))
    await asyncio.sleep(0)
    async for _ in then:
        pass
    gate.set()
    with pytest.raises(IntegrityError):
        await failing


def abandon(sink: TarSink) -> None:
    """What SIGKILL leaves: no close, no final journal; the descriptors (and lock) go."""
    if sink._pacer._deferred is not None:
        sink._pacer._deferred.cancel()
    sink._store.close()


async def test_written_in_place_holds_what_a_packed_layout_holds(
    tmp_path: Path, skopeo: Skopeo
) -> None:
    imgs = images()
    index = build_index(78)
    sink = TarSink(tmp_path / "a.tar")
    layout = OCILayout(tmp_path / "L", writable=True)
    for end in (sink, layout):
        for i, image in enumerate(imgs):
            await put_image(end, f"app{i % 2}", image, f"v{i}")
        for image in index.images:
            await put_image(end, "multi", image, None)
        manifest = Manifest.parse(index.manifest, index.media_type, "t")
        await end.put_manifest("multi", manifest, "v1")
        end.write_extra("archive.json", "{}")
        await end.close()
    volumes = sink.seal({"SHA256SUMS": b"x\n"})
    (tmp_path / "L" / "transship" / "SHA256SUMS").write_bytes(b"x\n")
    assert volumes == () and not partial_path(tmp_path / "a.tar").exists()
    assert not journal_path(tmp_path / "a.tar").exists()
    write_tar(tmp_path / "L", tmp_path / "packed.tar")
    # the same members with the same bytes as the packed directory: only their order differs
    assert members(tmp_path / "a.tar") == members(tmp_path / "packed.tar")
    listed = subprocess.run(["tar", "-tf", str(tmp_path / "a.tar")], capture_output=True)
    assert listed.returncode == 0 and not listed.stderr
    reader = OCILayoutTar(tmp_path / "a.tar")
    try:
        got = await reader.get_manifest("app1", "v1")
        assert got.raw == imgs[1].manifest
    finally:
        await reader.close()
    raw = skopeo.run("inspect", "--raw", f"oci-archive:{tmp_path / 'a.tar'}:app0:v2").stdout
    assert raw == imgs[2].manifest


async def test_a_bad_blob_lands_nothing_and_its_region_is_reused(tmp_path: Path) -> None:
    sink = TarSink(tmp_path / "a.tar")
    good = os.urandom(40_000)
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[-1] ^= 1
    image = images(1)[0]

    async def meanwhile() -> AsyncIterator[None]:
        await put_image(sink, "app", image, "v0")
        yield None

    await fail_between(sink, digest, bytes(bad), meanwhile())
    assert not await sink.has_blob("r", Digest.parse(digest))
    assert len(sink._free) == 1, "the failed region lies between landed members"
    end = sink._end
    await sink.put_blob("r", desc(digest, len(good)), chunked(good))  # the engine's retry
    assert sink._end == end and not sink._free, "the retry took the same region"
    await sink.close()
    sink.seal({})
    found = members(tmp_path / "a.tar")
    assert found[f"blobs/sha256/{digest[7:]}"] == good
    assert found[f"blobs/sha256/{image.digest[7:]}"] == image.manifest


async def test_a_region_left_free_becomes_an_unused_member_every_reader_skips(
    tmp_path: Path, skopeo: Skopeo
) -> None:
    imgs = images(2)
    sink = TarSink(tmp_path / "a.tar")
    lost = os.urandom(100_000)
    lost_digest = "sha256:" + hashlib.sha256(lost).hexdigest()

    async def meanwhile() -> AsyncIterator[None]:
        for i, image in enumerate(imgs):
            await put_image(sink, "app", image, f"v{i}")
        yield None

    # a transfer that fails for good, never retried
    await fail_between(sink, lost_digest, lost[:-1] + bytes([lost[-1] ^ 1]), meanwhile())
    assert sink._free, "the failed region should lie between landed members"
    await sink.close()
    sink.seal({})
    found = members(tmp_path / "a.tar")
    unused = [n for n in found if n.startswith("transship/unused/")]
    assert len(unused) == 1 and set(found[unused[0]]) <= {0}  # zeroed: no stray bytes ship
    assert lost_digest[7:] not in "".join(found)
    reader = OCILayoutTar(tmp_path / "a.tar")
    try:
        assert (await reader.get_manifest("app", "v1")).raw == imgs[1].manifest
        assert reader.read_extra("unused") is None
    finally:
        await reader.close()
    raw = skopeo.run("inspect", "--raw", f"oci-archive:{tmp_path / 'a.tar'}:app:v0").stdout
    assert raw == imgs[0].manifest


async def test_resume_after_a_kill_keeps_what_the_journal_lists(tmp_path: Path) -> None:
    imgs = images(4, layer=200_000)
    sink = TarSink(tmp_path / "a.tar", flush_interval=0)
    await put_image(sink, "app", imgs[0], "v0")
    stuck = [imgs[1].layers[-1], imgs[3].layers[-1]]  # two adjacent regions in flight
    started = [asyncio.Event() for _ in stuck]

    async def never_ends(data: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
        yield data[:1000]
        started.set()
        await asyncio.sleep(3600)

    transfers = [
        asyncio.create_task(sink.put_blob("app", desc(b.digest, b.size), never_ends(b.data, e)))
        for b, e in zip(stuck, started, strict=True)
    ]
    for event in started:
        await event.wait()
    await put_image(sink, "app", imgs[2], "v2")  # lands after the stuck regions
    abandon(sink)
    for transfer in transfers:
        transfer.cancel()

    again = TarSink(tmp_path / "a.tar")
    for image in (imgs[0], imgs[2]):
        for b in image.blobs:
            assert await again.has_blob("app", Digest.parse(b.digest), b.size)
    for b in stuck:
        assert not await again.has_blob("app", Digest.parse(b.digest))
    assert len(again._free) == 2, "each stuck transfer's region is free again, apart"
    assert await again.head_manifest("app", "v2") is not None
    for i in (1, 3):
        await put_image(again, "app", imgs[i], f"v{i}")
    assert not again._free, "the rerun fetched the same blobs into their own regions"
    await again.close()
    again.seal({})
    assert not [n for n in members(tmp_path / "a.tar") if n.startswith("transship/unused")]
    reader = OCILayoutTar(tmp_path / "a.tar")
    try:
        for i, image in enumerate(imgs):
            assert (await reader.get_manifest("app", f"v{i}")).raw == image.manifest
            for b in image.blobs:
                async with reader.open_blob("app", desc(b.digest, b.size)) as chunks:
                    assert b"".join([c async for c in chunks]) == b.data
    finally:
        await reader.close()


async def test_a_damaged_or_mismatched_journal_is_one_clear_error(tmp_path: Path) -> None:
    sink = TarSink(tmp_path / "a.tar")
    await put_image(sink, "app", images(1)[0], "v0")
    await sink.close()
    journal = journal_path(tmp_path / "a.tar")
    kept = journal.read_bytes()
    with pytest.raises(LayoutError, match="split-size"):
        TarSink(tmp_path / "a.tar", part_size=1 << 20)
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(LayoutError, match="--include-tool"):
        TarSink(tmp_path / "a.tar", tool=tool)
    journal.write_bytes(kept[: len(kept) // 2])
    with pytest.raises(LayoutError, match=r"damaged save journal.*start the save over"):
        TarSink(tmp_path / "a.tar")
    doc = json.loads(kept)
    doc["members"][-1][3] += 10**9  # a member past the end of the tar on disk
    journal.write_text(json.dumps(doc))
    with pytest.raises(LayoutError, match="past the end of the partial tar"):
        TarSink(tmp_path / "a.tar")
    journal.unlink()
    with pytest.raises(LayoutError, match=r"no a\.tar\.partial\.journal"):
        TarSink(tmp_path / "a.tar")
    partial_path(tmp_path / "a.tar").unlink()
    sealed = TarSink(tmp_path / "a.tar")
    await sealed.close()
    sealed.seal({})
    journal.write_bytes(kept)  # killed after the rename, before the journal went
    with pytest.raises(LayoutError, match=r"a\.tar exists beside a\.tar\.partial\.journal"):
        TarSink(tmp_path / "a.tar")


async def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    sink = TarSink(tmp_path / "a.tar")
    try:
        with pytest.raises(LayoutError, match="another save"):
            TarSink(tmp_path / "a.tar")
    finally:
        await sink.close()


async def test_volumes_roll_over_resume_and_read_back(tmp_path: Path) -> None:
    imgs = images(6, layer=90_000)
    part = 100_000
    sink = TarSink(tmp_path / "m" / "a.tar", part_size=part, flush_interval=0)
    for i, image in enumerate(imgs[:3]):
        await put_image(sink, "app", image, f"v{i}")
    abandon(sink)
    again = TarSink(tmp_path / "m" / "a.tar", part_size=part)
    for i, image in enumerate(imgs):
        for b in image.blobs if i < 3 else ():
            assert await again.has_blob("app", Digest.parse(b.digest))
        await put_image(again, "app", image, f"v{i}")
    again.write_extra("archive.json", "{}")
    await again.close()
    volumes = again.seal({})
    assert len(volumes) >= 5 and all(v.stat().st_size == part for v in volumes[:-1])
    assert 0 < volumes[-1].stat().st_size <= part
    assert sorted((tmp_path / "m").iterdir()) == sorted([*volumes, tmp_path / "m" / "a.tar.parts"])
    parts = Volumes(tmp_path / "m" / "a.tar.parts")
    try:
        assert parts.verify() == []
    finally:
        parts.close()
    whole = tmp_path / "whole.tar"
    whole.write_bytes(b"".join(v.read_bytes() for v in volumes))
    assert members(whole)["transship/archive.json"] == b"{}"
    reader = OCILayoutTar(volumes[0])
    try:
        for i, image in enumerate(imgs):
            assert (await reader.get_manifest("app", f"v{i}")).raw == image.manifest
    finally:
        await reader.close()


@pytest.mark.parametrize("size", [0, 511, 513, 70_001])
async def test_the_tool_comes_first_and_fills_the_first_volume(tmp_path: Path, size: int) -> None:
    tool = tmp_path / "tool"
    tool.write_bytes(os.urandom(size))
    head = tool_head_size(size)
    sink = TarSink(tmp_path / "a.tar", part_size=head, tool=tool)
    await put_image(sink, "app", images(1)[0], "v0")
    await sink.close()
    volumes = sink.seal({})
    assert volumes[0].stat().st_size == head
    whole = tmp_path / "whole.tar"
    whole.write_bytes(b"".join(v.read_bytes() for v in volumes))
    with tarfile.open(whole) as tar:
        infos = tar.getmembers()
    names = [m.name for m in infos]
    assert names[:3] == ["transship", "transship/bin", TOOL_FILE]
    assert names.count("transship") == 1
    assert infos[2].mode == 0o755 and infos[2].size == size and infos[3].offset == head
    far = tmp_path / "far"
    far.mkdir()
    untar = subprocess.run(
        ["tar", "-xf", str(volumes[0]), "--occurrence", TOOL_FILE], cwd=far, capture_output=True
    )
    assert untar.returncode == 0, untar.stderr
    assert (far / TOOL_FILE).read_bytes() == tool.read_bytes()


# -- the CLI, a real registry, SIGKILL -----------------------------------------------------


def _journal_blobs(journal: Path) -> set[str]:
    try:
        doc = json.loads(journal.read_bytes())
    except (OSError, ValueError):
        return set()
    return {m[0].split("/")[2] for m in doc["members"] if m[0].startswith("blobs/sha256/")}


@pytest.mark.parametrize("split", [None, "3M"])
def test_killed_tar_save_resumes_without_downloading_again(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    split: str | None,
) -> None:
    prefix = "tarkill" + ("v" if split else "")
    refs, stored = corpus(plain_registry, prefix, layer=3_000_000)
    tar = tmp_path / "media" / "tkg.tar"
    args = [
        *(sys.executable, "-m", "transship", "save", "--images", str(write_list(tmp_path, refs))),
        *("-o", str(tar), "-q", "--parallel", "2"),
        *(("--split-size", split) if split else ()),
    ]
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    # paced, so that the journal (rewritten every 2 s) is seen part way
    proc = subprocess.Popen([*args, "--limit-rate", "3M"], env=env, stderr=subprocess.PIPE)
    journal = journal_path(tar)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_journal_blobs(journal)) < 4:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _journal_blobs(journal)
    assert len(kept) >= 4 and len(kept) < len(stored), "the kill came too late to test resume"
    mark = plain_registry.log_offset()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    plain_registry.sync_log()  # every line of the rerun's requests is written
    fetched = {
        unquote(m.group(1)).split(":")[1]
        for e in plain_registry.requests("GET", r"/blobs/", since=mark)
        if (m := re.search(r"/blobs/(sha256[^/?]+)", e.path))
    }
    assert not journal.exists() and not partial_path(tar).exists()
    first = tar.with_name("tkg.tar.001") if split else tar
    found = members(tar) if not split else {}
    reader = OCILayoutTar(first)
    try:
        blobs = set(reader._blobs)
        reader_sizes = {d: reader._blobs[d][1] for d in blobs}
        # configs are read again on purpose: resolving the list checks each for a bundle label
        configs = set()
        for d in blobs:
            raw = asyncio.run(_read(reader, d))
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            config = doc.get("config") if isinstance(doc, dict) else None
            if isinstance(config, dict) and "digest" in config:
                configs.add(doc["config"]["digest"].split(":")[1])
    finally:
        asyncio.run(reader.close())
    layers = {d.hex for d in blobs if (reader_sizes[d] >= 1_000_000)}
    assert kept & layers, "no layer had landed before the kill"
    assert not (fetched - configs) & kept, "a layer already in the tar was downloaded again"
    assert {d.hex for d in blobs} == {d.split(":")[1] for d in stored}
    assert not any(n.startswith("transship/unused/") for n in found)
    assert cli("archive", "verify", str(first)).code == 0
    dest = make_registry("plain")
    out = cli("load", str(first), "--dest", f"{dest.host}/x", "-q")
    assert out.code == 0, out.err
    assert skopeo(dest, f"x/{prefix}/multi:v1") == skopeo(plain_registry, f"{prefix}/multi:v1")
    with ServeProcess(tmp_path / "srv", first) as server:  # served in place, as saved
        skopeo.copy(server, f"{prefix}/multi:v1", dest, "served/multi:v1")  # type: ignore[arg-type]
    assert skopeo(dest, "served/multi:v1") == skopeo(plain_registry, f"{prefix}/multi:v1")
    if not split:
        raw = skopeo.run("inspect", "--raw", f"oci-archive:{tar}:{prefix}/app0:v0").stdout
        assert raw == skopeo(plain_registry, f"{prefix}/app0:v0")
    # the finished archive is not overwritten by a third run: it holds this save already
    saved = sorted(tar.parent.glob("tkg.tar*"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in saved}
    again = cli("save", "--images", str(tmp_path / "images.txt"), "-o", str(tar), "-q",
                *(("--split-size", split) if split else ()))  # fmt: skip
    assert again.code == 0, again.err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in saved} == before


async def _read(reader: OCILayoutTar, digest: Digest) -> bytes:
    size = reader._blob_size(digest)
    assert size is not None
    async with reader.open_blob("x", Descriptor("application/octet-stream", digest, size)) as c:
        return b"".join([chunk async for chunk in c])


async def test_a_long_free_region_is_filled_by_chained_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ustar sizes stop at 8 GiB: a longer free region takes several fillers (here scaled down
    to 64 KiB each), whose headers must chain exactly to the next member."""
    monkeypatch.setattr(tarsink, "MAX_FILL", 64 * 1024)
    imgs = images(2, layer=200_000)
    sink = TarSink(tmp_path / "a.tar")
    lost = os.urandom(300_000)
    lost_digest = "sha256:" + hashlib.sha256(lost).hexdigest()

    async def meanwhile() -> AsyncIterator[None]:
        for i, image in enumerate(imgs):
            await put_image(sink, "app", image, f"v{i}")
        yield None

    await fail_between(sink, lost_digest, lost[:-1] + bytes([lost[-1] ^ 1]), meanwhile())
    await sink.close()
    sink.seal({})
    found = members(tmp_path / "a.tar")
    unused = [n for n in found if n.startswith("transship/unused/")]
    assert len(unused) == 5 and all(len(found[n]) <= 64 * 1024 - 512 for n in unused)
    reader = OCILayoutTar(tmp_path / "a.tar")
    try:
        assert (await reader.get_manifest("app", "v1")).raw == imgs[1].manifest
    finally:
        await reader.close()


def test_a_damaged_journal_stops_save_with_one_line(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    seed_image(plain_registry, "tarjournal/app", "v1", seed=1601)
    listing = write_list(tmp_path, [f"{plain_registry.host}/tarjournal/app:v1"])
    tar = tmp_path / "tkg.tar"
    journal_path(tar).write_text('{"format": "transship-tar-journal/v1", "members": [')
    partial_path(tar).write_bytes(b"")
    out = cli("save", "--images", str(listing), "-o", str(tar), "-q")
    assert out.code == ExitCode.USAGE and "Traceback" not in out.err
    assert "tkg.tar.partial.journal: damaged save journal" in out.error_line
    assert "start the save over" in out.error_line
    journal_path(tar).unlink()
    partial_path(tar).unlink()
    out = cli("save", "--images", str(listing), "-o", str(tar), "-q")
    assert out.code == 0, out.err
    assert cli("archive", "verify", str(tar)).code == 0


async def test_a_stopped_blob_continues_in_its_region_after_a_kill(tmp_path: Path) -> None:
    """The journal lists how much of a blob in flight was written (and synced): the rerun
    re-reads and hashes those bytes, asks only for the rest, and nothing else takes the
    region meanwhile, not even a blob of the same member length."""
    data = os.urandom(3 * CHUNK + 5)
    twin = os.urandom(len(data))  # same member length: would fit the region exactly
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    other = desc("sha256:" + hashlib.sha256(twin).hexdigest(), len(twin))
    sink = TarSink(tmp_path / "a.tar", flush_interval=0)

    @contextlib.asynccontextmanager
    async def cut(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def two_mib_then_gone() -> AsyncIterator[bytes]:
            yield data[: 2 * CHUNK]
            raise RetryableError("source gone", exhausted=True)

        yield two_mib_then_gone()

    with pytest.raises(RetryableError):
        await sink.put_blob_resuming("r", blob, cut)
    if sink._pacer._deferred is not None:  # the journal's deferred rewrite ran by now
        await sink._pacer._deferred
    abandon(sink)  # SIGKILL: what the journal said at the last flush is all there is

    asked: list[int] = []

    @contextlib.asynccontextmanager
    async def rest(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        asked.append(hasher.size)
        yield chunked(data[hasher.size :], 300_000)

    again = TarSink(tmp_path / "a.tar")
    await again.put_blob("r", other, chunked(twin))  # does not take the kept region
    assert await again.put_blob_resuming("r", blob, rest) == (len(data), 2 * CHUNK)
    assert asked == [2 * CHUNK]
    await again.close()
    again.seal({})
    found = members(tmp_path / "a.tar")
    assert found[f"blobs/sha256/{blob.digest.hex}"] == data
    assert found[f"blobs/sha256/{other.digest.hex}"] == twin
    assert not [n for n in found if n.startswith("transship/unused")]


async def test_a_damaged_kept_part_fails_the_blob_and_frees_its_region(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 5)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    sink = TarSink(tmp_path / "a.tar", flush_interval=0)

    @contextlib.asynccontextmanager
    async def cut(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def one_mib_then_gone() -> AsyncIterator[bytes]:
            yield data[:CHUNK]
            raise RetryableError("source gone", exhausted=True)

        yield one_mib_then_gone()

    with pytest.raises(RetryableError):
        await sink.put_blob_resuming("r", blob, cut)
    await sink.close()  # Ctrl-C: the journal keeps the partial blob
    kept = json.loads(journal_path(tmp_path / "a.tar").read_bytes())["partials"]
    assert [(d, w) for d, _, _, w, _ in kept] == [(str(blob.digest), CHUNK)]
    with partial_path(tmp_path / "a.tar").open("r+b") as handle:
        handle.seek(kept[0][2] + 10)
        handle.write(b"\xff")

    @contextlib.asynccontextmanager
    async def rest(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def verified() -> AsyncIterator[bytes]:  # as a source's stream, whole blob
            yield data[hasher.size :]
            hasher.update(data[hasher.size :])
            hasher.verify("blob")

        yield verified()

    @contextlib.asynccontextmanager
    async def wrong_at_once(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        raise IntegrityError("the source's answer does not fit the blob")  # no byte written
        yield chunked(b"")

    again = TarSink(tmp_path / "a.tar", flush_interval=0)
    with pytest.raises(IntegrityError):
        await again.put_blob_resuming("r", blob, wrong_at_once)
    assert not again._held and not again._reserved, "the region is free, its bytes forgotten"
    if again._pacer._deferred is not None:  # the journal's deferred rewrite
        await asyncio.wait([again._pacer._deferred])
    assert journal_partials(tmp_path / "a.tar") == [], "the journal forgets them too"
    assert await again.put_blob_resuming("r", blob, rest) == (len(data), 0)
    await again.close()
    again.seal({})
    assert members(tmp_path / "a.tar")[f"blobs/sha256/{blob.digest.hex}"] == data


async def keep_one_mib(tmp_path: Path, data: bytes, blob: Descriptor) -> None:
    """A save stopped (Ctrl-C) after 1 MiB of `blob`: the journal keeps it for a rerun."""
    sink = TarSink(tmp_path / "a.tar", flush_interval=0)

    @contextlib.asynccontextmanager
    async def cut(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def one_mib_then_gone() -> AsyncIterator[bytes]:
            yield data[:CHUNK]
            raise RetryableError("source gone", exhausted=True)

        yield one_mib_then_gone()

    with pytest.raises(RetryableError):
        await sink.put_blob_resuming("r", blob, cut)
    await sink.close()


def journal_partials(tar: Path) -> list[tuple[str, int]]:
    doc = json.loads(journal_path(tar).read_bytes())
    return [(d, w) for d, _, _, w, _ in doc["partials"]]


async def test_kept_bytes_stay_in_the_journal_while_they_are_re_read(tmp_path: Path) -> None:
    """While a rerun re-reads a blob's kept bytes, a journal written meanwhile still lists
    them, and a stop (Ctrl-C) in the middle of the re-read keeps them for the next run."""
    data = os.urandom(2 * CHUNK + 5)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    await keep_one_mib(tmp_path, data, blob)
    again = TarSink(tmp_path / "a.tar", flush_interval=0)
    reading, go_on = threading.Event(), threading.Event()
    hash_kept = again._hash_kept

    def slow_hash_kept(hasher: Hasher, data_at: int, keep: int) -> None:
        reading.set()
        go_on.wait()
        hash_kept(hasher, data_at, keep)

    again._hash_kept = slow_hash_kept  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def never(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        raise AssertionError("the stopped transfer asked its source")
        yield chunked(b"")

    task = asyncio.create_task(again.put_blob_resuming("r", blob, never))
    try:
        await asyncio.to_thread(reading.wait)
        again._changes += 1  # another blob landed: the journal is rewritten meanwhile
        await again.flush()
        assert journal_partials(tmp_path / "a.tar") == [(str(blob.digest), CHUNK)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        go_on.set()
    await again.close()
    assert journal_partials(tmp_path / "a.tar") == [(str(blob.digest), CHUNK)]


async def test_a_kept_partial_the_plan_no_longer_needs_is_cut_off_when_sealed(
    tmp_path: Path,
) -> None:
    """A rerun whose plan no longer lists a blob an earlier run partly wrote: the sealed
    tar does not carry that blob's region as a zeroed filler member."""
    data = os.urandom(2 * CHUNK + 5)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    await keep_one_mib(tmp_path, data, blob)
    again = TarSink(tmp_path / "a.tar")
    assert again._held
    await again.close()
    again.seal({})
    found = members(tmp_path / "a.tar")
    assert not [n for n in found if n.startswith("transship/unused")]
    assert (tmp_path / "a.tar").stat().st_size < len(data)


async def test_close_waits_for_a_journal_write_already_running(tmp_path: Path) -> None:
    """close() while a deferred journal write is in its fsync: that write is waited for,
    never cancelled (its thread would go on with the fds close() closes), and the journal
    close() writes after it is the newest."""
    sink = TarSink(tmp_path / "a.tar", flush_interval=0)
    for n, image in enumerate(images(2)):
        await put_image(sink, "r", image, f"t{n}")
    entered, gate = threading.Event(), threading.Event()
    order: list[str] = []
    sync = sink._store.sync

    def gated_sync() -> None:
        if not entered.is_set():  # the deferred write's: held until let go
            entered.set()
            gate.wait()
            sync()
            order.append("deferred")
        else:
            sync()
            order.append("close")

    sink._store.sync = gated_sync  # type: ignore[method-assign]
    try:
        sink._changes += 1
        sink._pacer.schedule()  # the deferred write of [t0, t1]
        await asyncio.to_thread(entered.wait)
        deferred = sink._pacer._deferred
        assert deferred is not None
        sink.retain_tags({("r", "t0")})  # newer than what the held write has
        closing = asyncio.create_task(sink.close())
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
    doc = json.loads(journal_path(tmp_path / "a.tar").read_bytes())
    names = [
        m["annotations"]["org.opencontainers.image.ref.name"] for m in doc["index"]["manifests"]
    ]
    assert names == ["r:t0"], names


async def test_a_blob_in_flight_never_flushes_the_journal_inline(tmp_path: Path) -> None:
    """Progress of a streaming blob only schedules the journal's deferred rewrite: the
    stream never waits for an fsync of the whole tar (only a landed blob may)."""
    data = os.urandom(4 * CHUNK)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    sink = TarSink(tmp_path / "a.tar", flush_interval=0)  # a flush is always due
    streaming = True
    inline: list[int] = []
    flush = sink._pacer._flush

    async def watched() -> None:
        if streaming and asyncio.current_task() is task:
            inline.append(1)
        await flush()

    sink._pacer._flush = watched

    async def source() -> AsyncIterator[bytes]:
        nonlocal streaming
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]
        streaming = False

    task = asyncio.create_task(sink.put_blob("r", blob, source()))
    assert await task == len(data)
    assert inline == []
    await sink.close()


async def test_a_flush_covered_by_one_that_ran_meanwhile_is_skipped(tmp_path: Path) -> None:
    """Flushes queued behind a running one: the first to run after it writes everything
    changed so far; a queued one whose change that covered does not fsync the tar again,
    even though blobs in flight changed the state since."""
    sink = TarSink(tmp_path / "a.tar")
    entered = [threading.Event(), threading.Event()]
    gates = [threading.Event(), threading.Event()]
    syncs: list[int] = []
    sync = sink._store.sync

    def gated_sync() -> None:
        n = len(syncs)
        syncs.append(n)
        if n < len(gates):
            entered[n].set()
            gates[n].wait()
        sync()

    sink._store.sync = gated_sync  # type: ignore[method-assign]
    try:
        sink._changes += 1
        first = asyncio.create_task(sink.flush())
        await asyncio.to_thread(entered[0].wait)
        sink._changes += 1
        second = asyncio.create_task(sink.flush())
        await asyncio.sleep(0)  # queued on the lock, wanting change 2
        sink._changes += 1
        third = asyncio.create_task(sink.flush())
        await asyncio.sleep(0)  # queued, wanting change 3
        gates[0].set()
        await asyncio.to_thread(entered[1].wait)  # the second writes changes up to 3
        sink._changes += 1  # a blob in flight wrote more meanwhile
        gates[1].set()
        await asyncio.gather(first, second, third)
    finally:
        for gate in gates:
            gate.set()
    assert len(syncs) == 2
    await sink.close()


def rewrite_journal(tar: Path, change: Any) -> None:
    doc = json.loads(journal_path(tar).read_bytes())
    change(doc)
    journal_path(tar).write_text(json.dumps(doc))


async def test_a_bad_digest_in_the_journals_partials_is_a_damaged_journal(
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * CHUNK + 5)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    await keep_one_mib(tmp_path, data, blob)
    rewrite_journal(tmp_path / "a.tar", lambda doc: doc["partials"][0].__setitem__(0, "sha256:zz"))
    with pytest.raises(LayoutError, match="damaged save journal"):
        TarSink(tmp_path / "a.tar")


async def test_a_journal_without_partials_resumes_with_their_regions_free(
    tmp_path: Path,
) -> None:
    """A journal an older transship wrote (no `partials`): the stopped blob's region is
    free again, the blob is fetched whole into it, and the sealed tar holds it right."""
    data = os.urandom(2 * CHUNK + 5)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    await keep_one_mib(tmp_path, data, blob)
    rewrite_journal(tmp_path / "a.tar", lambda doc: doc.pop("partials"))
    again = TarSink(tmp_path / "a.tar")
    assert not again._held and again._free == []  # the free region at the end was cut off
    asked: list[int] = []

    @contextlib.asynccontextmanager
    async def whole(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        asked.append(hasher.size)
        yield chunked(data[hasher.size :], 300_000)

    assert await again.put_blob_resuming("r", blob, whole) == (len(data), 0)
    assert asked == [0]
    await again.close()
    again.seal({})
    assert members(tmp_path / "a.tar")[f"blobs/sha256/{blob.digest.hex}"] == data


async def test_a_kept_blob_across_a_volume_boundary_continues(tmp_path: Path) -> None:
    """--split-size: a blob stopped after 2 MiB whose region spans three 1 MiB volumes is
    continued after those bytes and reads back whole from the sealed volumes."""
    part = CHUNK
    tar = tmp_path / "m" / "a.tar"
    data = os.urandom(3 * CHUNK + 5)
    blob = desc("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    sink = TarSink(tar, part_size=part, flush_interval=0)

    @contextlib.asynccontextmanager
    async def cut(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def two_mib_then_gone() -> AsyncIterator[bytes]:
            yield data[: 2 * CHUNK]
            raise RetryableError("source gone", exhausted=True)

        yield two_mib_then_gone()

    with pytest.raises(RetryableError):
        await sink.put_blob_resuming("r", blob, cut)
    await sink.close()
    [(_, _, start, written, _)] = json.loads(journal_path(tar).read_bytes())["partials"]
    assert written == 2 * CHUNK
    assert start // part != (start + written - 1) // part, "the kept bytes span volumes"
    asked: list[int] = []

    @contextlib.asynccontextmanager
    async def rest(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        asked.append(hasher.size)
        yield chunked(data[hasher.size :], 300_000)

    again = TarSink(tar, part_size=part)
    assert await again.put_blob_resuming("r", blob, rest) == (len(data), 2 * CHUNK)
    assert asked == [2 * CHUNK]
    await again.close()
    volumes = again.seal({})
    whole = tmp_path / "whole.tar"
    whole.write_bytes(b"".join(v.read_bytes() for v in volumes))
    assert members(whole)[f"blobs/sha256/{blob.digest.hex}"] == data
