"""`save -o FILE.tar` stopped while it is being sealed and renamed into place, then rerun.

Sealing ends in a few filesystem steps (record the sealed tar in the journal, rename the tar or
each volume, write `.parts`, drop the journal). Each test stops a real save, run through the
CLI against a real registry, at one of those steps (the step raises instead of happening, as if
the process died there), reruns the same command and checks the archive is whole and that the
source registry was not asked for a blob again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import seed_image
from harness.skopeo import Skopeo
from test_airgap import corpus, write_list
from test_tarsink import chunked, desc, images

from transship.digest import Digest
from transship.errors import ExitCode, IntegrityError
from transship.layout import OCILayoutTar
from transship.layout.tarsink import (
    JOURNAL_FORMAT,
    SEALED_FORMAT,
    TarSink,
    journal_path,
    partial_path,
)
from transship.layout.volumes import Volumes, find_parts_file, split_name_hint
from transship.manifest import Manifest


class Killed(BaseException):
    """The process "dies" at a sealing step: nothing after it runs, nothing catches it."""


@contextmanager
def stop_at(
    monkeypatch: pytest.MonkeyPatch, where: Path, step: int | None, seen: list[str]
) -> Iterator[None]:
    """While `TarSink.seal` runs, count renames and unlinks in `where`; the `step`-th (from 1)
    raises `Killed` instead of happening (None: count only). `seen` lists them."""
    armed = [False]
    real_replace, real_unlink, real_seal = os.replace, os.unlink, TarSink.seal

    def count(op: str, path: Any) -> None:
        if armed[0] and Path(os.fsdecode(path)).parent == where:
            seen.append(f"{op} {Path(os.fsdecode(path)).name}")
            if step is not None and len(seen) == step:
                armed[0] = False  # dead: what a crash handler would do next is not counted
                raise Killed(seen[-1])

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        count("replace", src)
        real_replace(src, dst, **kw)

    def unlink(path: Any, **kw: Any) -> None:
        count("unlink", path)
        real_unlink(path, **kw)

    def seal(self: TarSink, extras: dict[str, bytes]) -> tuple[Path, ...]:
        armed[0] = True
        try:
            return real_seal(self, extras)
        finally:
            armed[0] = False

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(TarSink, "seal", seal)
    try:
        yield
    finally:
        monkeypatch.undo()


def blob_gets(reg: RegistryProcess, since: int) -> list[str]:
    """Blob GETs after `since`, once a later request shows the log has caught up."""
    reg.sync_log()
    return [e.path for e in reg.requests("GET", r"/blobs/", since=since)]


def held(archive: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """What an archive names and holds: its index entries and its blobs."""
    reader = OCILayoutTar(archive)
    try:
        entries = sorted((r, t, str(d.digest)) for r, t, d in reader.entries())
        return entries, sorted(str(d) for d in reader._blobs)
    finally:
        asyncio.run(reader.close())


def archive_files(media: Path) -> list[str]:
    return sorted(p.name for p in media.iterdir())


def run_killed_then_rerun(
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    reg: RegistryProcess,
    media: Path,
    args: list[str],
    step: int,
) -> list[str]:
    """Save stopped at `step`, then the same save again; returns the rerun's blob GETs."""
    seen: list[str] = []
    with stop_at(monkeypatch, media, step, seen), pytest.raises(Killed):
        cli(*args)
    assert len(seen) == step
    assert journal_path(media / "tkg.tar").exists() or step > 1  # the journal goes last
    mark = reg.log_offset()
    out = cli(*args)
    assert out.code == 0, (seen, out.err)
    assert "wrote" in out.err  # the summary of a save that wrote its archive
    return blob_gets(reg, mark)


@pytest.mark.parametrize("split", [None, "100K"])
def test_a_save_stopped_at_any_sealing_step_is_finished_by_its_rerun(
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    plain_registry: RegistryProcess,
    make_registry: Callable[..., RegistryProcess],
    skopeo: Skopeo,
    tmp_path: Path,
    split: str | None,
) -> None:
    prefix = "sealkill" + ("v" if split else "")
    refs, _stored = corpus(plain_registry, prefix)
    plan = tmp_path / "plan.yaml"
    listing = str(write_list(tmp_path, refs))
    out = cli("plan", "images", listing, "--dest", "archive.local", "-o", str(plan), "-q")
    assert out.code == 0, out.err

    def args(media: Path) -> list[str]:
        return ["save", "--plan", str(plan), "-o", str(media / "tkg.tar"),
                *(("--split-size", split) if split else ())]  # fmt: skip

    # a whole save, its steps counted: what every stopped one must end up as
    seen: list[str] = []
    whole = tmp_path / "whole"
    with stop_at(monkeypatch, whole, None, seen):
        assert cli(*args(whole), "-q").code == 0
    volumes = [n for n in archive_files(whole) if n != "tkg.tar.parts"] if split else []
    assert seen[0].startswith("replace .tkg.tar.partial.journal.")  # the sealed record
    assert seen[-1] == "unlink tkg.tar.partial.journal"
    assert len(seen) == (3 + len(volumes) if split else 3), seen
    if split:
        assert len(volumes) >= 3
    for step in range(1, len(seen) + 1):
        media = tmp_path / f"media{step}"
        gets = run_killed_then_rerun(cli, monkeypatch, plain_registry, media, args(media), step)
        assert gets == [], f"stopped at {seen[step - 1]}: the rerun fetched blobs again"
        assert archive_files(media) == archive_files(whole), seen[step - 1]
        assert not journal_path(media / "tkg.tar").exists()
        assert not list(media.glob(partial_path(media / "tkg.tar").name + "*"))
        first = media / ("tkg.tar.001" if split else "tkg.tar")
        assert held(first) == held(whole / first.name)  # the same archive (in another order)
        assert cli("archive", "verify", str(first)).code == 0
    dest = make_registry("plain")
    out = cli("load", str(tmp_path / "media2" / ("tkg.tar.001" if split else "tkg.tar")),
              "--dest", f"{dest.host}/x", "-q")  # fmt: skip
    assert out.code == 0, out.err
    assert skopeo(dest, f"x/{prefix}/multi:v1") == skopeo(plain_registry, f"{prefix}/multi:v1")


def test_a_list_save_stopped_after_sealing_asks_the_source_nothing(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """An image list is resolved against the source before a save; a sealed archive needs
    nothing from there, so the rerun does not even resolve it."""
    refs, _stored = corpus(plain_registry, "sealist")
    media = tmp_path / "media"
    args = ["save", "--images", str(write_list(tmp_path, refs)), "-o", str(media / "tkg.tar")]
    seen: list[str] = []
    with stop_at(monkeypatch, media, 2, seen), pytest.raises(Killed):  # the rename
        cli(*args)
    mark = plain_registry.log_offset()
    out = cli(*args)
    assert out.code == 0, out.err
    assert blob_gets(plain_registry, mark) == []
    asked = [e.path for e in plain_registry.access_log(since=mark)]  # sync_log's are not in it
    assert asked == []
    assert cli("archive", "verify", str(media / "tkg.tar")).code == 0


@pytest.mark.parametrize("split", [None, "100K"])
def test_a_sealed_archive_lacking_what_the_changed_plan_wants_is_one_line(
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    split: str | None,
) -> None:
    refs, _stored = corpus(plain_registry, "sealchg" + ("v" if split else ""))
    media = tmp_path / "media"
    tar = media / "tkg.tar"
    cut = ("--split-size", split) if split else ()
    args = ["save", "--images", str(write_list(tmp_path, refs[:-1])), "-o", str(tar), *cut]
    seen: list[str] = []
    with stop_at(monkeypatch, media, 2, seen), pytest.raises(Killed):
        cli(*args)
    changed = tmp_path / "more"
    changed.mkdir()
    more = ["save", "--images", str(write_list(changed, refs)), "-o", str(tar), *cut]
    out = cli(*more)
    assert out.code == ExitCode.USAGE, out.err
    line = out.error_line
    assert str(tar) in line and "multi:v1" in line and "run that save again unchanged" in line
    assert journal_path(tar).exists()  # nothing was published or removed
    out = cli(*args)  # the unchanged save finishes it
    assert out.code == 0, out.err
    first = media / ("tkg.tar.001" if split else "tkg.tar")
    assert cli("archive", "verify", str(first)).code == 0


def test_a_journal_without_the_sealed_record_beside_renamed_volumes_is_refused(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """What a transship that did not record sealing leaves when stopped after renaming the
    first volume: resuming would re-create that volume empty and publish zeros over the good
    one. The rerun refuses in one line and leaves every file as it was."""
    refs, _stored = corpus(plain_registry, "sealold")
    media = tmp_path / "media"
    tar = media / "tkg.tar"
    args = ["save", "--images", str(write_list(tmp_path, refs)), "-o", str(tar),
            "--split-size", "100K"]  # fmt: skip
    seen: list[str] = []
    with stop_at(monkeypatch, media, 3, seen), pytest.raises(Killed):  # after the first rename
        cli(*args)
    journal = journal_path(tar)
    doc = json.loads(journal.read_bytes())
    assert doc.pop("format") == SEALED_FORMAT
    del doc["sealed"]
    journal.write_text(json.dumps({"format": JOURNAL_FORMAT, **doc}))  # as the older one wrote
    before = {p.name: p.read_bytes() for p in media.iterdir()}
    assert "tkg.tar.001" in before and "tkg.tar.partial.001" not in before
    out = cli(*args)
    assert out.code == ExitCode.USAGE, out.err
    assert "tkg.tar.001 exists beside" in out.error_line and "Traceback" not in out.err
    assert {p.name: p.read_bytes() for p in media.iterdir()} == before


def test_a_sealed_journal_is_refused_by_a_transship_that_only_resumes(tmp_path: Path) -> None:
    """A sealed journal has a format of its own: the check every transship makes of a
    journal's format (`transship-tar-journal/v1` before sealing was recorded) refuses it."""
    sink = TarSink(tmp_path / "a.tar")
    asyncio.run(sink.close())
    before = json.loads(journal_path(tmp_path / "a.tar").read_bytes())
    assert before["format"] == JOURNAL_FORMAT
    real_replace = os.replace

    def stop(src: Any, dst: Any) -> None:
        if Path(os.fsdecode(dst)).name == "a.tar":
            raise Killed("rename")
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", stop)
        with pytest.raises(Killed):
            sink.seal({})
    sealed = json.loads(journal_path(tmp_path / "a.tar").read_bytes())
    assert sealed["format"] == SEALED_FORMAT != JOURNAL_FORMAT and "sealed" in sealed


# -- one member per digest ------------------------------------------------------------------


def tar_listing(first: Path) -> list[str]:
    """Every member name, through Python's tarfile (split volumes read as one stream)."""
    if first.suffix == ".tar":
        with tarfile.open(first) as tar:
            return tar.getnames()
    parts = find_parts_file(first)
    assert parts is not None
    volumes = Volumes(parts)
    try:
        with tarfile.open(fileobj=volumes.reader()) as tar:  # type: ignore[call-overload]
            return tar.getnames()
    finally:
        volumes.close()


async def test_the_same_content_written_at_once_twice_lands_once(tmp_path: Path) -> None:
    """Two repositories (and tags) sharing a manifest and its blobs, written concurrently."""
    image = images(1)[0]
    sink = TarSink(tmp_path / "a.tar")
    manifest = Manifest.parse(image.manifest, image.media_type, "t")
    for blob in image.blobs:
        await asyncio.gather(
            *(sink.put_blob(r, desc(blob.digest, blob.size), chunked(blob.data)) for r in "ab")
        )
    await asyncio.gather(
        *(sink.put_manifest(r, manifest, t) for r in ("a", "b") for t in ("v1", "v2"))
    )
    await sink.close()
    sink.seal({})
    names = tar_listing(tmp_path / "a.tar")
    blobs = [n for n in names if n.startswith("blobs/sha256/")]
    assert sorted(blobs) == sorted({f"blobs/sha256/{b.digest[7:]}" for b in image.blobs}
                                   | {f"blobs/sha256/{image.digest[7:]}"})  # fmt: skip
    assert not [n for n in names if n.startswith("transship/unused/")]  # no copy left behind
    data = sum(b.size for b in image.blobs) + len(image.manifest)
    assert (tmp_path / "a.tar").stat().st_size < data + 30 * 1024  # headers, trailer, index


async def test_a_failed_writer_of_a_digest_lets_the_waiting_one_write_it(tmp_path: Path) -> None:
    image = images(1)[0]
    blob = image.blobs[-1]
    sink = TarSink(tmp_path / "a.tar")
    bad = blob.data[:-1] + bytes([blob.data[-1] ^ 1])
    first = sink.put_blob("a", desc(blob.digest, blob.size), chunked(bad))
    second = sink.put_blob("b", desc(blob.digest, blob.size), chunked(blob.data))
    outcome = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(outcome[0], IntegrityError) and outcome[1] == blob.size
    await sink.close()
    sink.seal({})
    names = tar_listing(tmp_path / "a.tar")
    assert names.count(f"blobs/sha256/{blob.digest[7:]}") == 1
    # the second writer waited and took the failed one's region: nothing was written twice
    assert not [n for n in names if n.startswith("transship/unused/")]


async def test_asking_for_a_blob_being_written_waits_for_its_writer(tmp_path: Path) -> None:
    """The engine asks "is it here?" (`mount_blob`) before it opens the source; a blob that
    another transfer is writing is answered once that transfer ends, so a second transfer
    does not open a source download only to drop it."""
    blob = images(1)[0].blobs[-1]
    sink = TarSink(tmp_path / "a.tar")
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield blob.data[:100]
        await release.wait()
        yield blob.data[100:]

    writing = asyncio.ensure_future(sink.put_blob("a", desc(blob.digest, blob.size), slow()))
    await asyncio.sleep(0.05)
    asking = asyncio.ensure_future(sink.mount_blob("b", Digest.parse(blob.digest), "b"))
    await asyncio.sleep(0.05)
    assert not asking.done()  # answered neither "no" (a second transfer) nor yet "yes"
    release.set()
    assert await writing == blob.size
    assert await asking is True
    await sink.close()


@pytest.mark.parametrize("split", [None, "100K"])
def test_one_image_under_two_repositories_and_tags_is_saved_once(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, split: str | None
) -> None:
    prefix = "sealtwice" + ("v" if split else "")
    image = None
    refs = []
    for repo in ("one", "two"):
        for tag in ("v1", "v2"):
            image = seed_image(plain_registry, f"{prefix}/{repo}", tag, seed=4711,
                               layer_sizes=(60_000, 40_000))  # fmt: skip
            refs.append(f"{plain_registry.host}/{prefix}/{repo}:{tag}")
    assert image is not None
    media = tmp_path / "media"
    cut = ("--split-size", split) if split else ()
    listing = str(write_list(tmp_path, refs))
    out = cli("save", "--images", listing, "-o", str(media / "t.tar"), "-q", *cut)
    assert out.code == 0, out.err
    first = media / ("t.tar.001" if split else "t.tar")
    names = tar_listing(first)
    blobs = [n for n in names if n.startswith("blobs/sha256/")]
    assert len(blobs) == len(set(blobs))
    assert {n.split("/")[2] for n in blobs} == {
        d[7:] for d in (image.digest, *(b.digest for b in image.pushable_blobs))
    }
    assert not [n for n in names if n.startswith("transship/unused/")]
    assert cli("archive", "verify", str(first)).code == 0


# -- a damaged single tar -------------------------------------------------------------------


def _damaged_copies(tar: Path, where: Path) -> dict[str, Path]:
    """The saved tar damaged in each way a copy to removable media can damage it."""
    data = tar.read_bytes()
    with tarfile.open(tar) as archive:
        infos = archive.getmembers()
    blobs = [i for i in infos if i.name.startswith("blobs/sha256/") and i.size > 1000]
    mid = blobs[len(blobs) // 2]  # a header with members before and after it
    at = mid.offset
    garbage = bytes((i * 37 + 11) % 251 + 1 for i in range(512))  # no zero, no "ustar"
    wrong_sum = bytearray(data[at : at + 512])
    wrong_sum[148:156] = b"0000001\0"
    cases = {
        "truncated": data[: len(data) // 2],  # inside a member's data
        "truncated-in-header": data[: at + 100],
        "truncated-at-a-header": data[:at],
        "header-garbage": data[:at] + garbage + data[at + 512 :],
        "header-zeroed": data[:at] + bytes(512) + data[at + 512 :],
        "checksum-wrong": data[:at] + bytes(wrong_sum) + data[at + 512 :],
        "name-garbage": data[:at] + b"\xff\xfe" * 50 + data[at + 100 :],
        "size-garbage": data[: at + 124] + b"9x9x9x9x9x9\0" + data[at + 136 :],
        "first-header-garbage": garbage + data[512:],
        "member-cut-short": data[: mid.offset_data + mid.size // 2],
        "end-blocks-cut": data[: infos[-1].offset_data + -(-infos[-1].size // 512) * 512],
    }
    out = {}
    for name, damaged in cases.items():
        path = where / f"{name}.tar"
        path.write_bytes(damaged)
        out[name] = path
    return out


def test_a_damaged_tar_is_one_line_and_the_integrity_exit_code(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    refs, _stored = corpus(plain_registry, "sealdmg")
    tar = tmp_path / "tkg.tar"
    out = cli("save", "--images", str(write_list(tmp_path, refs)), "-o", str(tar), "-q")
    assert out.code == 0, out.err
    assert cli("archive", "verify", str(tar)).code == 0
    media = tmp_path / "media"
    media.mkdir()
    for kind, damaged in _damaged_copies(tar, media).items():
        for command in (("archive", "verify"), ("archive", "list"), ("load",)):
            extra = ("--dest", f"{plain_registry.host}/never") if command == ("load",) else ()
            out = cli(*command, str(damaged), *extra)
            assert out.code == ExitCode.INTEGRITY, (kind, command, out.err)
            line = out.error_line
            assert f"{damaged}: damaged tar archive" in line and "copy it again" in line, line
            assert out.err.strip() == line, (kind, out.err)  # that one line and nothing else
    assert not plain_registry.requests("PUT", r"/never/")  # nothing was pushed
    # the server refuses to start on it: same line, same code, no traceback
    damaged = media / "header-garbage.tar"
    run = subprocess.run(
        [sys.executable, "-m", "transship", "serve", str(damaged), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == ExitCode.INTEGRITY, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert f"{damaged}: damaged tar archive" in run.stderr
    # a file that is no tar at all is still the wrong file named, not damage
    (media / "notes.tar").write_bytes(b"just some notes\n" * 100)
    out = cli("archive", "verify", str(media / "notes.tar"))
    assert out.code == ExitCode.USAGE and "not a readable tar archive" in out.error_line


def test_split_name_hint_names_the_first_volume_only_when_it_is_there(
    cli: CLI, tmp_path: Path
) -> None:
    """`FILE.tar` given, `FILE.tar.parts` beside it: the hint names `FILE.tar.001` only when
    that volume exists; with the list alone it names the list, never a file that is not
    there."""
    named = tmp_path / "tkg.tar"
    assert split_name_hint(named) == ""  # no list: no hint
    (tmp_path / "tkg.tar.parts").write_text("{}\n")
    hint = split_name_hint(named)
    assert "tkg.tar.001" not in hint and str(tmp_path / "tkg.tar.parts") in hint
    out = cli("archive", "verify", str(named))
    assert out.code == ExitCode.USAGE
    assert "tkg.tar.001" not in out.error_line and "tkg.tar.parts" in out.error_line
    (tmp_path / "tkg.tar.001").write_bytes(b"\0" * 512)
    assert f"give its first volume {tmp_path / 'tkg.tar.001'}" in split_name_hint(named)
