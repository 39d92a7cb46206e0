"""A save killed mid-blob continues that blob on its rerun (`put_blob_resuming`).

A real SIGKILLed `transship save` of one big layer, paced by `--limit-rate`, from a real
registry behind the fault proxy (which logs each request's `Range`). The rerun re-reads and
hashes what the killed run wrote, asks the source only for the rest (`Range: bytes=N-`), and
the archive verifies and loads byte for byte. Kept bytes are never trusted: one flipped byte
in them fails the whole blob's digest and the blob is fetched again from byte 0. A source that
ignores `Range` (200) still gives the right blob, the skipped bytes counted as downloaded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from clirunner import CLI
from harness.faultproxy import Fault, FaultProxy
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import Image, SeedClient, build_image, build_images_sharing_base

from transship.digest import Digest, Hasher
from transship.errors import ExitCode, RetryableError
from transship.layout import OCILayout
from transship.layout.directory import TMP_DIR
from transship.layout.tarsink import journal_path
from transship.manifest import Descriptor
from transship.ops.save import SaveJob, SaveTarget, mark_unfinished
from transship.streams import CHUNK

BIG = 24 * 1024 * 1024
MakeRegistry = Callable[..., RegistryProcess]
MakeProxy = Callable[..., FaultProxy]


@pytest.fixture(scope="module")
def big_source(
    pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryProcess, Image]]:
    """A plain registry holding `big/layer:v1`, one 24 MiB layer."""
    with RegistryProcess(tmp_path_factory.mktemp("partial-src"), "plain", pki=pki) as reg:
        image = build_image(9401, layer_sizes=(BIG,))
        SeedClient.for_registry(reg).push_image("big/layer", image, "v1")
        yield reg, image


def _args(proxy: FaultProxy, output: Path, report: Path) -> list[str]:
    listing = output.parent / "images.txt"
    listing.write_text(proxy.ref("big/layer:v1") + "\n")
    return [
        *(sys.executable, "-m", "transship", "save", "--images", str(listing)),
        *("-o", str(output), "--src-plain-http", "--report", str(report)),
    ]


def _partial_file(output: Path, digest: str) -> Path:
    return output / TMP_DIR / (digest.replace(":", "-") + ".partial")


def _partial_in_journal(output: Path, digest: str) -> int:
    """Bytes of `digest` the tar's journal lists as durably written (0: none yet)."""
    try:
        doc = json.loads(journal_path(output).read_bytes())
    except (OSError, ValueError):
        return 0
    for entry in doc.get("partials", []):
        if entry[0] == digest:
            return int(entry[3])
    return 0


def _kill_mid_blob(args: list[str], written: Callable[[], int], tmp_path: Path) -> int:
    """Run the save paced at 2 MiB/s and SIGKILL it once `written()` says at least 4 MiB of
    the layer are kept (never at a fixed time); returns what `written()` said then."""
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(
        [*args, "--limit-rate", "2M", "-q"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and written() < 4 << 20:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    kept = written()
    assert 0 < kept < BIG, "the kill did not come mid-blob"
    return kept


def _rerun(cli: CLI, args: list[str]) -> tuple[Any, dict[str, Any]]:
    report = Path(args[args.index("--report") + 1])
    out = cli(*args[3:])
    assert out.code == ExitCode.OK, out.err
    return out, json.loads(report.read_text())


def _layer_gets(proxy: FaultProxy, digest: str, since: int) -> list[Any]:
    return [r for r in proxy.log("GET", rf"/blobs/{digest}$") if r.seq >= since]


def _archive_right(
    cli: CLI, archive: Path, image: Image, source: RegistryProcess, make_registry: MakeRegistry
) -> None:
    """`archive verify` passes, and a load gives the source's exact layer bytes."""
    assert cli("archive", "verify", str(archive)).code == 0
    dest = make_registry("plain")
    out = cli("load", str(archive), "--dest", f"{dest.host}/x", "-q")
    assert out.code == 0, out.err
    for blob in image.blobs:
        data = dest.blob_path(blob.digest).read_bytes()
        assert data == source.blob_path(blob.digest).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest


@pytest.mark.parametrize("kind", ["dir", "tar"])
@pytest.mark.parametrize("source_kind", ["ranges", "no-ranges"])
def test_a_killed_save_continues_its_partly_saved_blob(
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
    kind: str,
    source_kind: str,
) -> None:
    source, image = big_source
    layer = image.layers[-1]
    proxy = make_fault_proxy(source, ignore_range=source_kind == "no-ranges")
    output = tmp_path / ("out" if kind == "dir" else "out.tar")
    args = _args(proxy, output, tmp_path / "report.json")

    def written() -> int:
        if kind == "tar":
            return _partial_in_journal(output, layer.digest)
        try:
            return _partial_file(output, layer.digest).stat().st_size
        except FileNotFoundError:
            return 0

    kept = _kill_mid_blob(args, written, tmp_path)
    mark = len(proxy.records)
    out, doc = _rerun(cli, args)

    gets = _layer_gets(proxy, layer.digest, mark)
    assert len(gets) == 1, [(r.range, r.status) for r in gets]
    assert gets[0].range == f"bytes={kept}-"  # only the rest was asked for
    if source_kind == "ranges":
        assert gets[0].status == 206 and gets[0].bytes_out == layer.size - kept
        assert doc["stats"]["bytesRefetched"] == 0, doc
    else:  # the whole blob came again: the kept bytes skipped, and counted
        assert gets[0].status == 200 and gets[0].bytes_out == layer.size
        assert doc["stats"]["bytesRefetched"] == kept, doc
    assert doc["stats"]["bytesResumed"] == kept, doc
    assert "kept from partly saved blobs" in out.err
    if kind == "dir":
        assert not (output / TMP_DIR).exists()
    _archive_right(cli, output, image, source, make_registry)


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_a_flipped_byte_in_the_kept_part_restarts_the_blob_from_zero(
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
    kind: str,
) -> None:
    source, image = big_source
    layer = image.layers[-1]
    proxy = make_fault_proxy(source)
    output = tmp_path / ("out" if kind == "dir" else "out.tar")
    args = _args(proxy, output, tmp_path / "report.json")

    def written() -> int:
        if kind == "tar":
            return _partial_in_journal(output, layer.digest)
        try:
            return _partial_file(output, layer.digest).stat().st_size
        except FileNotFoundError:
            return 0

    kept = _kill_mid_blob(args, written, tmp_path)
    if kind == "dir":
        damaged, at = _partial_file(output, layer.digest), kept // 2
    else:
        doc = json.loads(journal_path(output).read_bytes())
        entry = next(e for e in doc["partials"] if e[0] == layer.digest)
        damaged, at = output.with_name(output.name + ".partial"), int(entry[2]) + kept // 2
    with damaged.open("r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0xFF]))

    mark = len(proxy.records)
    out, doc = _rerun(cli, args)

    gets = _layer_gets(proxy, layer.digest, mark)
    assert [(r.range, r.status) for r in gets] == [(f"bytes={kept}-", 206), (None, 200)]
    assert doc["stats"]["bytesResumed"] == 0, doc
    assert doc["stats"]["bytesRefetched"] == layer.size - kept, doc
    assert "kept from partly saved blobs" not in out.err
    _archive_right(cli, output, image, source, make_registry)


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_bytes_this_run_sent_are_never_counted_as_kept(
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
    kind: str,
) -> None:
    """One layer in two images: the first image's transfer of it is cut and then fails for
    good (its partial kept), the second continues it. Those kept bytes came in this run:
    never reported as kept from an earlier run (bytesResumed, the 'kept' line)."""
    source = make_registry("plain")
    images = build_images_sharing_base(9402, 2, base_sizes=(4 << 20,), layer_sizes=(1024,))
    seed = SeedClient.for_registry(source)
    for name, image in zip(("x/one", "x/two"), images, strict=True):
        seed.push_image(name, image, "v1")
    shared = images[0].layers[0].digest
    assert shared == images[1].layers[0].digest
    proxy = make_fault_proxy(
        source,
        Fault.reset(rf"/x/one/blobs/{shared}$", count=1),  # cut midway, resumed at once:
        Fault.http(404, rf"/x/one/blobs/{shared}$", "GET", count=1),  # and gone for good
    )
    output = tmp_path / ("out" if kind == "dir" else "out.tar")
    listing = tmp_path / "images.txt"
    listing.write_text(f"{proxy.ref('x/one:v1')}\n{proxy.ref('x/two:v1')}\n")
    report = tmp_path / "report.json"
    out = cli(
        *("save", "--images", str(listing), "-o", str(output), "--src-plain-http"),
        *("--report", str(report), "--parallel", "1"),
    )
    assert out.code != ExitCode.OK
    gets = [r for r in proxy.log("GET", rf"/blobs/{shared}$")]
    assert [r.status for r in gets][:2] == [200, 404], [(r.range, r.status) for r in gets]
    assert gets[-1].range is not None and gets[-1].status == 206, "the second image resumed"
    doc = json.loads(report.read_text())
    assert doc["stats"]["bytesResumed"] == 0, doc
    assert "kept from partly saved blobs" not in out.err


async def test_a_finished_save_drops_its_partials_before_releasing_the_lock(
    tmp_path: Path,
) -> None:
    """A finished save drops the partial blobs it no longer needs, writes SHA256SUMS and
    removes its INCOMPLETE marker while it still holds the directory's lock: a save that
    takes the lock after it keeps its own partial files and marker."""
    out = tmp_path / "out"
    data = os.urandom(2 * CHUNK + 5)
    blob = Descriptor(
        "application/octet-stream",
        Digest.parse(f"sha256:{hashlib.sha256(data).hexdigest()}"),
        len(data),
    )

    @contextlib.asynccontextmanager
    async def cut(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def one_mib_then_gone() -> AsyncIterator[bytes]:
            yield data[:CHUNK]
            raise RetryableError("source gone", exhausted=True)

        yield one_mib_then_gone()

    async def stop_a_blob(layout: OCILayout) -> None:
        with pytest.raises(RetryableError):
            await layout.put_blob_resuming("r", blob, cut)

    mark_unfinished(out)
    first = OCILayout(out, writable=True)
    for name in ("archive.json", "plan.yaml"):  # as `SaveJob.open` writes them
        first.write_extra(name, "{}")
    await stop_a_blob(first)  # a blob this plan needed no more (an earlier plan's)
    job = SaveJob(cast(Any, None), cast(Any, None), SaveTarget(out), first, None)
    await job.close(finished=True)
    assert not list((out / TMP_DIR).glob("*")), "dropped while the lock was held"

    sums = out / "transship" / "SHA256SUMS"
    finished = sums.read_bytes() if sums.is_file() else None
    marker_gone = not (out / "transship" / "INCOMPLETE").exists()

    mark_unfinished(out)  # a save that took the lock right after
    second = OCILayout(out, writable=True)
    try:
        await stop_a_blob(second)
        await job.finish()
        assert len(list((out / TMP_DIR).glob("*.partial"))) == 1, "the second save's"
        assert (out / "transship" / "INCOMPLETE").exists(), "the second save's marker stays"
        assert sums.read_bytes() == finished, "no SHA256SUMS of a layout still changing"
    finally:
        await second.close()
    assert finished is not None and marker_gone, "finished by close(finished=True), locked"


def test_a_source_refusing_the_range_of_a_kept_blob_sends_it_whole(
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
) -> None:
    """A source answering the rerun's `Range: bytes=N-` with 416: the blob is asked again
    without `Range`, its first N bytes skipped (and counted as downloaded again), instead of
    failing on every rerun."""
    source, image = big_source
    layer = image.layers[-1]
    proxy = make_fault_proxy(source)
    output = tmp_path / "out"
    args = _args(proxy, output, tmp_path / "report.json")

    def written() -> int:
        try:
            return _partial_file(output, layer.digest).stat().st_size
        except FileNotFoundError:
            return 0

    kept = _kill_mid_blob(args, written, tmp_path)
    mark = len(proxy.records)
    proxy.add(Fault.http(416, rf"/blobs/{layer.digest}$", "GET", count=1))  # the ranged GET
    _, doc = _rerun(cli, args)

    gets = _layer_gets(proxy, layer.digest, mark)
    assert [(r.range, r.status) for r in gets] == [(f"bytes={kept}-", 416), (None, 200)]
    assert gets[1].bytes_out == layer.size
    assert doc["stats"]["bytesRefetched"] == kept, doc
    _archive_right(cli, output, image, source, make_registry)


async def test_a_symlink_named_like_a_partial_blob_is_never_written_through(
    tmp_path: Path,
) -> None:
    """A symlink in the layout's temp directory with a partial blob's name (planted, or
    left by anything else) is removed, never followed: the file it points at stays as it was."""
    out = tmp_path / "out"
    data = os.urandom(CHUNK + 5)
    digest = Digest.parse(f"sha256:{hashlib.sha256(data).hexdigest()}")
    blob = Descriptor("application/octet-stream", digest, len(data))
    outside = tmp_path / "precious"
    outside.write_bytes(os.urandom(3 * CHUNK))
    before = outside.read_bytes()
    (out / TMP_DIR).mkdir(parents=True)
    (out / TMP_DIR / f"sha256-{digest.hex}.partial").symlink_to(outside)

    @contextlib.asynccontextmanager
    async def whole(hasher: Hasher) -> AsyncIterator[AsyncIterator[bytes]]:
        async def rest() -> AsyncIterator[bytes]:
            yield data[hasher.size :]

        yield rest()

    layout = OCILayout(out, writable=True)
    try:
        assert await layout.put_blob_resuming("r", blob, whole) == (len(data), 0)
    finally:
        await layout.close()
    assert outside.read_bytes() == before
    assert (out / "blobs" / "sha256" / digest.hex).read_bytes() == data
