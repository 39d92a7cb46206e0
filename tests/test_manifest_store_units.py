"""The manifest store on its own: exact round trips, verification on read, atomic writes,
pruning by age and size, and a store that cannot be written or has no home staying silent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from harness.seed import build_image, build_index

from transship import cachedir
from transship.digest import Digest
from transship.manifest import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Manifest
from transship.manifeststore import PRUNE_TO, ManifestStore, default_store

ORIGIN = "registry.example:5000/some/app"


def _image(seed: int, **kw: object) -> Manifest:
    image = build_image(seed, **kw)  # type: ignore[arg-type]
    return Manifest.parse(image.manifest, image.media_type, "test")


def _files(store: ManifestStore) -> list[Path]:
    return sorted(p for p in store.directory.rglob("*") if p.is_file())


def test_a_kept_manifest_comes_back_identical(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "m")
    image = _image(1)
    docker = _image(2, fmt="docker")
    index = build_index(3)
    listed = Manifest.parse(index.manifest, index.media_type, "test")
    for manifest in (image, docker, listed):
        store.put(manifest, origin=ORIGIN)
        assert store.get(manifest.digest, "here", origin=ORIGIN) == manifest
    assert store.writes == 3 and store.hits == 3
    path = store.path(image.digest)
    assert path == tmp_path / "m" / "sha256" / image.digest.hex
    assert path.read_bytes() == b"\n".join([OCI_MANIFEST.encode(), ORIGIN.encode(), image.raw])
    assert [p.name for p in _files(store)] == sorted(m.digest.hex for m in (image, docker, listed))


def test_the_media_type_a_body_lacks_is_kept(tmp_path: Path) -> None:
    """An OCI manifest may leave `mediaType` out: its type came from the GET's Content-Type,
    and a hit must say the same type (it is the Content-Type of the PUT at the destination)."""
    body = json.loads(build_image(4).manifest)
    del body["mediaType"]
    raw = json.dumps(body).encode()
    for number, header in enumerate((OCI_MANIFEST, DOCKER_MANIFEST)):
        fetched = Manifest.parse(raw, header, "test")
        store = ManifestStore(tmp_path / str(number))
        store.put(fetched, origin=ORIGIN)
        again = store.get(fetched.digest, "here", origin=ORIGIN)
        assert again == fetched and again is not None and again.media_type == header
    bare = json.loads(build_index(5).manifest)
    del bare["mediaType"]
    inferred = Manifest.parse(json.dumps(bare).encode(), None, "test")  # no header either
    store = ManifestStore(tmp_path / "inferred")
    store.put(inferred, origin=ORIGIN)
    again = store.get(inferred.digest, "here", origin=ORIGIN)
    assert again == inferred and inferred.media_type == OCI_INDEX


def test_a_file_that_does_not_verify_is_removed_not_served(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    good, other = _image(6), _image(7)
    store.put(good, origin=ORIGIN)
    path = store.path(good.digest)

    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in the body
    path.write_bytes(bytes(data))
    assert store.get(good.digest, "here", origin=ORIGIN) is None and not path.exists()

    # a whole, valid manifest under another manifest's name
    path.write_bytes(OCI_MANIFEST.encode() + b"\n" + other.raw)
    assert store.get(good.digest, "here", origin=ORIGIN) is None and not path.exists()

    # the right bytes with a type line they do not parse as (the body says OCI)
    path.write_bytes(DOCKER_MANIFEST.encode() + b"\n" + good.raw)
    assert store.get(good.digest, "here", origin=ORIGIN) is None and not path.exists()

    for junk in (b"", good.raw, b"\xff\xfe\n" + good.raw):  # no type line, or not ASCII
        path.write_bytes(junk)
        assert store.get(good.digest, "here", origin=ORIGIN) is None and not path.exists()
    assert store.hits == 0
    assert store.get(Digest.of(b"never kept"), "here", origin=ORIGIN) is None


def test_a_lookup_by_another_algorithm_is_verified_with_it(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    image = _image(8)
    sha512 = Digest.of(image.raw, "sha512")
    store.put(image, sha512, origin=ORIGIN)
    assert store.path(sha512).is_file() and not store.path(image.digest).exists()
    assert store.get(sha512, "here", origin=ORIGIN) == image


def test_writes_are_atomic_and_leave_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ManifestStore(tmp_path)
    first, second = _image(9), _image(10)
    store.put(first, origin=ORIGIN)
    assert _files(store) == [store.path(first.digest)]

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    store.put(second, origin=ORIGIN)  # a full disk: no error, no half file, no leftover tmp file
    monkeypatch.undo()
    assert _files(store) == [store.path(first.digest)]
    store.put(_image(11), origin=ORIGIN)  # and the store is off for the rest of the run
    assert _files(store) == [store.path(first.digest)] and store.writes == 1
    assert store.get(first.digest, "here", origin=ORIGIN) == first  # reading still works


def test_an_entry_kept_already_is_not_written_again(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    image = _image(12)
    store.put(image, origin=ORIGIN)
    path = store.path(image.digest)
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    inode = path.stat().st_ino
    ManifestStore(tmp_path).put(image, origin=ORIGIN)  # another run reads it by tag again
    assert path.stat().st_ino == inode  # not rewritten…
    assert time.time() - path.stat().st_mtime < 60  # …only marked as used


def test_pruning_drops_old_entries_and_stale_temporary_files_once_per_run(
    tmp_path: Path,
) -> None:
    store = ManifestStore(tmp_path, max_age=3600)
    old, used, fresh = _image(13), _image(14), _image(15)
    for manifest in (old, used):
        store.put(manifest, origin=ORIGIN)
    long_ago = time.time() - 7200
    for manifest in (old, used):
        os.utime(store.path(manifest.digest), (long_ago, long_ago))
    stale_tmp = tmp_path / "sha256" / ".abc.1.tmp"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (long_ago, long_ago))
    live_tmp = tmp_path / "sha256" / ".def.2.tmp"  # another run writing right now
    live_tmp.write_bytes(b"half")

    later = ManifestStore(tmp_path, max_age=3600)
    assert later.get(used.digest, "here", origin=ORIGIN) == used  # reading marks it used
    later.put(fresh, origin=ORIGIN)  # the run's first write scans the store
    assert not store.path(old.digest).exists() and not stale_tmp.exists()
    assert store.path(used.digest).exists() and live_tmp.exists()
    assert store.path(fresh.digest).exists()

    os.utime(store.path(used.digest), (long_ago, long_ago))
    later.put(_image(16), origin=ORIGIN)  # no second scan in the same run
    assert store.path(used.digest).exists()


def test_pruning_keeps_the_store_under_its_size_cap_dropping_the_least_recently_used(
    tmp_path: Path,
) -> None:
    manifests = [_image(20 + i) for i in range(8)]
    size = max(len(m.raw) for m in manifests) + len(OCI_MANIFEST) + 1
    filler = ManifestStore(tmp_path)
    now = time.time()
    for age, manifest in enumerate(reversed(manifests)):  # manifests[0] is the oldest
        filler.put(manifest, origin=ORIGIN)
        os.utime(filler.path(manifest.digest), (now - 100 * age, now - 100 * age))
    cap = size * 6  # eight entries do not fit
    store = ManifestStore(tmp_path, max_bytes=cap)
    total = store.prune()
    kept = [m for m in manifests if store.path(m.digest).exists()]
    assert total <= cap * PRUNE_TO and total == sum(f.stat().st_size for f in _files(store))
    assert kept == manifests[len(manifests) - len(kept) :]  # the newest survive
    assert 0 < len(kept) < len(manifests)

    # within a run, a store at its cap writes no more (until the next run's scan)
    tight = ManifestStore(tmp_path, max_bytes=total + size + 64)
    tight.put(_image(40), origin=ORIGIN)
    tight.put(_image(41), origin=ORIGIN)
    assert tight.writes == 1


def test_a_store_a_run_left_nearly_full_has_room_for_the_next_run(tmp_path: Path) -> None:
    manifests = [_image(50 + i) for i in range(10)]
    size = max(len(m.raw) for m in manifests) + len(OCI_MANIFEST) + 1
    cap = size * 6 + size // 2
    first = ManifestStore(tmp_path, max_bytes=cap)
    for manifest in manifests:
        first.put(manifest, origin=ORIGIN)
    assert first.writes == 6  # full: the rest is not kept in this run
    second = ManifestStore(tmp_path, max_bytes=cap)  # the next run: its first write scans
    second.put(_image(70), origin=ORIGIN)
    second.put(_image(71), origin=ORIGIN)
    assert second.writes == 2
    assert sum(f.stat().st_size for f in _files(second)) <= cap


def test_a_store_that_cannot_be_written_is_silent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = ManifestStore(blocker / "manifests")
    image = _image(30)
    store.put(image, origin=ORIGIN)  # NotADirectoryError: off for the run, no exception
    assert store.get(image.digest, "here", origin=ORIGIN) is None and store.writes == 0


def test_the_cache_root_the_switch_and_no_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cachedir.NO_CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cachedir.cache_dir("manifests") == tmp_path / "xdg" / "transship" / "manifests"
    store = default_store()
    assert store is not None and store is default_store()  # one per directory: one scan
    assert store.directory == tmp_path / "xdg" / "transship" / "manifests"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cachedir.cache_root() == tmp_path / "home" / ".cache" / "transship"

    for value in ("1", "yes"):
        monkeypatch.setenv(cachedir.NO_CACHE_VARIABLE, value)
        assert cachedir.cache_root() is None and default_store() is None
    monkeypatch.setenv(cachedir.NO_CACHE_VARIABLE, "0")
    assert cachedir.cache_root() is not None

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cachedir.cache_root() is None and default_store() is None


def test_a_manifest_is_served_only_to_a_lookup_where_it_was_read(tmp_path: Path) -> None:
    """Whether a repository holds a manifest is the registry's to say: a lookup naming
    another repository (a mistyped reference) is not answered from bytes read elsewhere;
    once read there too, both are."""
    store = ManifestStore(tmp_path)
    image = _image(80)
    other = "registry.example:5000/another/app"
    store.put(image, origin=ORIGIN)
    assert store.get(image.digest, "here", origin=other) is None
    assert store.path(image.digest).exists()  # a miss, not damage: kept for its own origin
    store.put(image, origin=other)
    assert store.get(image.digest, "here", origin=other) == image
    assert store.get(image.digest, "here", origin=ORIGIN) == image
