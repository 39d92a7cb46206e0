"""Durable writes (`transship.fsutil`) and the small pure helpers the refactor shared:
`reference.shared_parts`, `streams.in_batches`, `layout.archive.refuse_compressed`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from transship import fsutil
from transship.fsutil import atomic_file, write_atomic
from transship.layout import LayoutError
from transship.layout.archive import refuse_compressed
from transship.reference import shared_parts
from transship.streams import in_batches


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("write", ["atomic_file", "write_atomic"])
def test_no_descriptor_is_left_open_when_setting_the_mode_fails(
    write: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(fd: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(fsutil, "share_like_a_new_file", refused)
    before = _open_fds()
    with pytest.raises(PermissionError):
        if write == "atomic_file":
            with atomic_file(tmp_path / "a.tar") as out:
                out.write(b"never")
        else:
            write_atomic(tmp_path / "plan.yaml", "never")
    assert _open_fds() <= before
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


@pytest.mark.parametrize("write", ["atomic_file", "write_atomic"])
def test_a_file_where_a_directory_should_be_is_named(write: str, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file, not a directory")
    target = tmp_path / "out" / "sub" / "a.tar"
    with pytest.raises(OSError, match=f"{tmp_path / 'out'} is not a directory"):
        if write == "atomic_file":
            with atomic_file(target) as out:
                out.write(b"never")
        else:
            write_atomic(target, b"never")


def test_atomic_file_and_write_atomic_give_new_files_the_umask_mode(tmp_path: Path) -> None:
    mask = fsutil.current_umask()
    with atomic_file(tmp_path / "d" / "a.tar") as out:
        out.write(b"tar")
    write_atomic(tmp_path / "p.yaml", "plan")
    write_atomic(tmp_path / "key", "secret", private=True)
    assert (tmp_path / "d" / "a.tar").read_bytes() == b"tar"
    assert (tmp_path / "d" / "a.tar").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "p.yaml").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600


def test_shared_parts() -> None:
    assert shared_parts([]) == []
    assert shared_parts([["h", "tkg", "a"]]) == ["h", "tkg", "a"]
    assert shared_parts([["h", "tkg", "a"], ["h", "tkg", "b", "c"]]) == ["h", "tkg"]
    assert shared_parts([["h", "tkg"], ["h", "tkg", "b"]]) == ["h", "tkg"]
    assert shared_parts([["h", "x"], ["g", "x"]]) == []
    assert shared_parts([["h", "a", "x"], ["h", "b", "x"]]) == ["h"]  # leading parts only


async def _chunks(*sizes: int) -> AsyncIterator[bytes]:
    for i, size in enumerate(sizes):
        yield bytes([i]) * size


async def test_in_batches_gathers_to_at_least_the_size_and_keeps_the_pieces() -> None:
    batches = [b async for b in in_batches(_chunks(3, 3, 3, 5, 1, 2), at_least=6)]
    assert [[len(p) for p in batch] for batch in batches] == [[3, 3], [3, 5], [1, 2]]
    assert b"".join(b"".join(batch) for batch in batches) == b"".join(
        [c async for c in _chunks(3, 3, 3, 5, 1, 2)]
    )
    assert [b async for b in in_batches(_chunks(), at_least=6)] == []
    assert [[len(p) for p in b] async for b in in_batches(_chunks(10), at_least=6)] == [[10]]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x1f\x8b\x08\x00rest", "gzip"),
        (b"\x28\xb5\x2f\xfdrest", "zstd"),
        (b"\xfd7zXZ\x00rest", "xz"),
        (b"BZh91AY", "bzip2"),
    ],
)
def test_refuse_compressed_names_the_compression(head: bytes, kind: str) -> None:
    with pytest.raises(LayoutError, match=f"^x.tar: {kind}-compressed; why not, decompress it"):
        refuse_compressed(head, "x.tar", "why not")


def test_refuse_compressed_lets_a_plain_tar_through() -> None:
    refuse_compressed(b"blobs/sh", "x.tar", "why")
    refuse_compressed(b"", "x.tar", "why")
