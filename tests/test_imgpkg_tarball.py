"""imgpkg `--to-tar` archives: the reader on the three real imgpkg v0.36 tars, hostile and
damaged archives, and the writer reproducing imgpkg's bytes."""

from __future__ import annotations

import errno
import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from transship import fsutil
from transship.digest import Digest
from transship.errors import IntegrityError, TransshipError
from transship.imgpkg.tarball import ImgpkgTar, is_imgpkg_tar
from transship.imgpkg.tarwriter import TarSource, write_imgpkg_tar
from transship.layout import LayoutError, UnsafeArchiveError

#: written by the real imgpkg v0.36.0 (copied from shared/fixtures/imgpkg-tars, see SOURCES.md)
FIXTURES = Path(__file__).parent / "data" / "imgpkg-tars"

APP_A = "sha256:98eabb44fe0612b082ca13bd7797c064c574975be98184de5302c89ff7a1f4e6"
APP_B = "sha256:ab8aba3dcb7f5f294cbc912a3e7163061aa3ad347c262d8ac808946d2bfa59fe"
MULTI = "sha256:13c7097f3a2cd21ff4a73f789e88457ae0f78916427dfed57bc0da4f27f8c946"
BUNDLE = "sha256:f1d49e67c0e6f360d4db7f626791d972c171a36ff8198861b7cef5434d18a5c4"


async def _read_everything(tar: ImgpkgTar) -> tuple[set[str], int]:
    """Every manifest and blob through the Endpoint interface: digests and bytes streamed."""
    digests: set[str] = set()
    total = 0

    async def walk(identifier: str) -> None:
        nonlocal total
        manifest = await tar.get_manifest("any/repo", identifier)
        digests.add(str(manifest.digest))
        for child in manifest.manifests:
            await walk(str(child.digest))
        for blob in manifest.blobs():
            async with tar.open_blob("any/repo", blob) as chunks:
                async for chunk in chunks:
                    total += len(chunk)
            digests.add(str(blob.digest))

    for item in tar.items:
        await walk(str(item.digest))
    return digests, total


async def test_image_fixture() -> None:
    tar = ImgpkgTar(FIXTURES / "image-app-a.tar")
    try:
        assert [(str(i.digest), i.tag, i.is_bundle) for i in tar.items] == [
            (APP_A, "v1.0.0", False)
        ]
        assert tar.items[0].refs == (f"127.0.0.1:5701/fixtures/app-a@{APP_A}",)
        digests, total = await _read_everything(tar)
        assert APP_A in digests and total == 146 + 273
        found = await tar.get_manifest("fixtures/app-a", "v1.0.0")  # by source tag too
        assert str(found.digest) == APP_A
    finally:
        await tar.close()


async def test_index_fixture_keeps_its_exact_bytes() -> None:
    tar = ImgpkgTar(FIXTURES / "index-app-multi.tar")
    try:
        (item,) = tar.items
        assert str(item.digest) == MULTI and item.tag == "v1" and item.manifest.is_index
        assert item.manifest.raw.startswith(b'{\n   "schemaVersion"')  # 3-space indent kept
        assert Digest.of(item.manifest.raw) == item.digest
        digests, _ = await _read_everything(tar)
        assert {MULTI, APP_A, APP_B} <= digests
    finally:
        await tar.close()


async def test_bundle_fixture() -> None:
    tar = ImgpkgTar(FIXTURES / "bundle-app-bundle.tar")
    try:
        by_digest = {str(i.digest): i for i in tar.items}
        assert set(by_digest) == {APP_A, APP_B, BUNDLE}
        bundle = by_digest[BUNDLE]
        assert bundle.is_bundle and bundle.is_root_bundle and bundle.tag == "v0.1.0"
        assert not by_digest[APP_A].is_bundle and by_digest[APP_A].tag == ""
        assert by_digest[APP_B].orig_ref.endswith(APP_B)
        await _read_everything(tar)
    finally:
        await tar.close()


@pytest.mark.parametrize("name", ["image-app-a", "index-app-multi", "bundle-app-bundle"])
async def test_writer_reproduces_imgpkg_byte_for_byte(name: str, tmp_path: Path) -> None:
    original = FIXTURES / f"{name}.tar"
    tar = ImgpkgTar(original)
    sources = [
        TarSource(
            tar,
            item.source_repository,
            str(item.digest),
            item.refs[0].split("@")[0],
            tag=item.tag,
            orig_ref=item.orig_ref,
            labels=item.labels,
        )
        for item in reversed(tar.items)  # order of the sources does not matter
    ]
    out = tmp_path / "copy.tar"
    await write_imgpkg_tar(out, sources)
    await tar.close()
    assert out.read_bytes() == original.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sniffing() -> None:
    assert is_imgpkg_tar(FIXTURES / "image-app-a.tar")
    assert not is_imgpkg_tar(FIXTURES / "SOURCES.md")


# -- hostile and damaged archives -----------------------------------------------------------


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        out = []
        for info in tar:
            handle = tar.extractfile(info)
            out.append((info, handle.read() if handle else b""))
        return out


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, kind: bytes, target: str = "manifest.json") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ((_file("../evil"), b"x"), "'..'"),
        ((_file("/etc/evil"), b"x"), "absolute"),
        ((_link("sym", tarfile.SYMTYPE), b""), "symbolic link"),
        ((_link("hard", tarfile.LNKTYPE), b""), "hard link"),
        ((_link("dev", tarfile.CHRTYPE, ""), b""), "device"),
        ((_file("./manifest.json"), b"[]"), "duplicate"),
    ],
)
def test_hostile_members_are_refused(
    extra: tuple[tarfile.TarInfo, bytes], reason: str, tmp_path: Path
) -> None:
    members = [*_members(FIXTURES / "image-app-a.tar"), extra]
    path = _write(tmp_path / "hostile.tar", members)
    with pytest.raises(UnsafeArchiveError, match=reason):
        ImgpkgTar(path)


def _edit_manifest_json(tmp_path: Path, edit: object) -> Path:
    members = _members(FIXTURES / "image-app-a.tar")
    info, data = members[0]
    doc = json.loads(data)
    edit(doc)  # type: ignore[operator]
    members[0] = (info, json.dumps(doc).encode())
    return _write(tmp_path / "edited.tar", members)


def test_tampered_manifest_raw_is_refused(tmp_path: Path) -> None:
    def edit(doc: list[dict]) -> None:  # type: ignore[type-arg]
        image = doc[0]["Image"]
        image["Manifest"]["Raw"] = image["Manifest"]["Raw"].replace("146", "147")

    with pytest.raises(IntegrityError, match="manifest: bytes hash to"):
        ImgpkgTar(_edit_manifest_json(tmp_path, edit))


def test_tampered_config_raw_is_refused(tmp_path: Path) -> None:
    def edit(doc: list[dict]) -> None:  # type: ignore[type-arg]
        image = doc[0]["Image"]
        image["Config"]["Raw"] = image["Config"]["Raw"].replace('"os":""', '"os":"x"')

    with pytest.raises(IntegrityError, match="config: bytes hash to"):
        ImgpkgTar(_edit_manifest_json(tmp_path, edit))


def test_missing_layer_member_is_refused(tmp_path: Path) -> None:
    members = _members(FIXTURES / "image-app-a.tar")[:1]
    with pytest.raises(LayoutError, match="archive lacks"):
        ImgpkgTar(_write(tmp_path / "short.tar", members))


async def test_corrupt_layer_fails_while_streaming(tmp_path: Path) -> None:
    members = _members(FIXTURES / "image-app-a.tar")
    info, data = members[1]
    members[1] = (info, bytes(len(data)))  # zero-filled: what an interrupted imgpkg leaves
    tar = ImgpkgTar(_write(tmp_path / "zeroed.tar", members))
    try:
        manifest = await tar.get_manifest("", APP_A)
        with pytest.raises(IntegrityError, match="does not match"):
            async with tar.open_blob("", manifest.layers[0]) as chunks:
                async for _ in chunks:
                    pass
    finally:
        await tar.close()


def test_wrong_member_size_is_refused(tmp_path: Path) -> None:
    members = _members(FIXTURES / "image-app-a.tar")
    info, data = members[1]
    members[1] = (info, data + b"extra")
    with pytest.raises(IntegrityError, match="151 bytes"):
        ImgpkgTar(_write(tmp_path / "long.tar", members))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{}", "not a list"),
        (b"not json", "not valid JSON"),
        (b'[{"Image": null, "ImageIndex": null}]', "exactly one"),
    ],
)
def test_malformed_manifest_json(content: bytes, fragment: str, tmp_path: Path) -> None:
    members = [(_file("manifest.json"), content)]
    with pytest.raises(LayoutError, match=fragment):
        ImgpkgTar(_write(tmp_path / "bad.tar", members))


def test_not_an_imgpkg_tar(tmp_path: Path) -> None:
    path = _write(tmp_path / "other.tar", [(_file("index.json"), b"{}")])
    with pytest.raises(TransshipError, match="not an imgpkg archive"):
        ImgpkgTar(path)
    assert not is_imgpkg_tar(path)


def test_compressed_tar_is_refused(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress((FIXTURES / "image-app-a.tar").read_bytes()))
    with pytest.raises(LayoutError, match="gzip-compressed"):
        ImgpkgTar(path)


async def _graph_sizes(tar: ImgpkgTar, identifier: str, sizes: dict[str, int]) -> None:
    """Every manifest's size and every blob's streamed bytes below `identifier`, by digest."""
    manifest = await tar.get_manifest("any/repo", identifier)
    sizes[str(manifest.digest)] = manifest.size
    for child in manifest.manifests:
        await _graph_sizes(tar, str(child.digest), sizes)
    for blob in manifest.blobs():
        async with tar.open_blob("any/repo", blob) as chunks:
            sizes[str(blob.digest)] = sum([len(c) async for c in chunks])


@pytest.mark.parametrize(
    "name", ["image-app-a.tar", "index-app-multi.tar", "bundle-app-bundle.tar"]
)
async def test_graph_size_is_what_a_push_reads(name: str) -> None:
    """A task's progress share (`graph_size`) is every manifest plus every blob streamed
    through the endpoint, each once; the tar has no referrers API (the tag schema stands in)."""
    tar = ImgpkgTar(FIXTURES / name)
    try:
        for item in tar.items:
            sizes: dict[str, int] = {}
            await _graph_sizes(tar, str(item.digest), sizes)
            assert tar.graph_size(item.manifest) == sum(sizes.values())
            assert await tar.list_referrers("any/repo", item.digest) is None
    finally:
        await tar.close()


async def test_a_tar_in_place_is_not_failed_by_syncing_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Once renamed into place the tar is complete: a directory fsync failing after that is a
    warning naming it, not a failed tar (the other tars of the set carry on either way)."""

    def failing(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(directory))

    monkeypatch.setattr(fsutil, "fsync_dir", failing)
    original = FIXTURES / "image-app-a.tar"
    tar = ImgpkgTar(original)
    item = tar.items[0]
    out = tmp_path / "copy.tar"
    source = TarSource(
        tar, item.source_repository, str(item.digest), item.refs[0].split("@")[0], tag=item.tag
    )
    try:
        with caplog.at_level(logging.WARNING):
            await write_imgpkg_tar(out, [source])
    finally:
        await tar.close()
    assert out.read_bytes() == original.read_bytes()
    assert f"{out} is written, but syncing its directory failed (Input/output error)" in caplog.text
