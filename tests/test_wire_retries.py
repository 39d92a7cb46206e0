"""The wire layer's reliability against real registries behind the fault proxy.

- A cut blob download resumes with `Range` from the bytes already hashed; a server that ignores
  `Range` is read again from byte 0 with the hashed bytes skipped. Bytes are counted at the
  proxy, and what was downloaded twice is shown in the summary and the `--report`.
- Every read made while planning (manifests, configs, bundle and BOM layers) is read again when
  it arrives cut or corrupt, under the same bounded policy as the engine; a corruption that
  persists still fails with exit 7.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clirunner import CLI
from harness.faultproxy import Fault, FaultProxy
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import Image, SeedClient, build_image
from test_plan_registry import (
    SMALL,
    TKG_BOM,
    TKG_COMPAT,
    TKR_BOM,
    TKR_COMPAT,
    Release,
    seed_release,
)

import transship.retry as retry
from transship.errors import ExitCode
from transship.plan import Plan

BIG = 64 * 1024 * 1024
MakeRegistry = Callable[..., RegistryProcess]
MakeProxy = Callable[..., FaultProxy]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    original = retry.backoff_delay

    def fast(
        attempt: int, base: float, cap: float, retry_after: float | None, after_cap: float
    ) -> float:
        return original(attempt, min(base, 0.02), min(cap, 0.2), retry_after, after_cap)

    monkeypatch.setattr(retry, "backoff_delay", fast)


@pytest.fixture(scope="module")
def big_source(
    pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryProcess, Image]]:
    """A plain registry holding `big/layer:v1`, one ~64 MiB layer."""
    with RegistryProcess(tmp_path_factory.mktemp("resume-src"), "plain", pki=pki) as reg:
        image = build_image(9301, layer_sizes=(BIG,))
        SeedClient.for_registry(reg).push_image("big/layer", image, "v1")
        yield reg, image


def _copy_big(cli: CLI, proxy: FaultProxy, dest: RegistryProcess, report: Path) -> Any:
    out = cli(
        "copy",
        proxy.ref("big/layer:v1"),
        dest.ref("mirror/big/layer:v1"),
        "--src-plain-http",
        "--dest-plain-http",
        "--report",
        str(report),
    )
    assert out.code == ExitCode.OK, out.err
    return out


def _layer_intact(dest: RegistryProcess, image: Image) -> None:
    layer = image.layers[-1]
    path = dest.blob_path(layer.digest)
    assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == layer.digest


def test_cut_download_resumes_with_range(
    record_property: Callable[[str, object], None],
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
) -> None:
    """Cut twice at 90 %: the layer arrives with less than 1.2x its size read, nothing again."""
    source, image = big_source
    layer = image.layers[-1]
    cut = Fault.reset(rf"/blobs/{layer.digest}$", count=2, at=0.9)
    proxy = make_fault_proxy(source, cut)
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    out = _copy_big(cli, proxy, dest, report)

    assert cut.fired == 2
    gets = proxy.log("GET", rf"/blobs/{layer.digest}$")
    assert len(gets) == 3
    read = sum(r.bytes_out for r in gets)
    record_property("bytes_read_over_size", round(read / layer.size, 4))
    assert read < 1.2 * layer.size, f"read {read} bytes for a {layer.size} byte blob"
    assert [r.status for r in gets] == [200, 206, 206]
    _layer_intact(dest, image)
    doc = json.loads(report.read_text())
    assert doc["bytes_refetched"] == 0
    assert doc["entries"][0]["bytes_refetched"] == 0
    assert "bytes downloaded again" in out.err


def test_server_ignoring_range_is_read_again_and_hashed_right(
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
) -> None:
    """Without Range support (200 instead of 206) the blob is read from byte 0 again and the
    bytes already hashed are skipped: the digest still checks out, and the bytes received
    twice are reported."""
    source, image = big_source
    layer = image.layers[-1]
    cut = Fault.reset(rf"/blobs/{layer.digest}$", count=1, at=0.5)
    proxy = make_fault_proxy(source, cut, ignore_range=True)
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    out = _copy_big(cli, proxy, dest, report)

    gets = proxy.log("GET", rf"/blobs/{layer.digest}$")
    assert [r.status for r in gets] == [200, 200]
    _layer_intact(dest, image)
    doc = json.loads(report.read_text())
    refetched = doc["bytes_refetched"]
    # what the first answer delivered before the cut was received again and skipped
    assert 0.25 * layer.size < refetched <= 0.5 * layer.size + 1, refetched
    assert doc["entries"][0]["bytes_refetched"] == refetched
    assert "bytes downloaded again" in out.err


def test_a_refused_range_is_not_asked_again_but_a_later_cut_resumes_with_range(
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
) -> None:
    """Cut at 50 %, the resume refused with 416: read from byte 0 (the hashed bytes
    skipped); that answer cut at 90 % resumes with `Range` again, from its own offset."""
    source, image = big_source
    layer = image.layers[-1]
    path = rf"/blobs/{layer.digest}$"
    proxy = make_fault_proxy(
        source,
        Fault.reset(path, count=1, at=0.5),
        Fault.http(416, path, "GET", count=1),
        Fault.reset(path, count=1, at=0.9),
    )
    dest = make_registry("plain")
    _copy_big(cli, proxy, dest, tmp_path / "report.json")

    gets = proxy.log("GET", path)
    assert [(r.range is not None, r.status) for r in gets] == [
        (False, 200),
        (True, 416),
        (False, 200),
        (True, 206),
    ]
    assert gets[3].range != gets[1].range  # further on than the refused offset
    _layer_intact(dest, image)


def test_flip_then_resume_still_fails_the_digest(
    big_source: tuple[RegistryProcess, Image],
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    cli: CLI,
    tmp_path: Path,
) -> None:
    """A byte flipped before a cut stays in the hash: the resumed stream fails its digest and
    the blob is restarted whole by the engine (counted as downloaded again); nothing corrupt
    lands."""
    source, image = big_source
    layer = image.layers[-1]
    path = rf"/blobs/{layer.digest}$"
    flip = Fault.flip(path, count=1, at=0.1)
    cut = Fault.reset(path, count=1, at=0.5)
    proxy = make_fault_proxy(source)
    proxy.add(flip)
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    # first request: flipped (and not cut: the first rule that fires wins); the cut comes on
    # the restart, which then resumes with Range
    proxy.add(cut)
    out = _copy_big(cli, proxy, dest, report)
    assert flip.fired == 1 and cut.fired == 1
    _layer_intact(dest, image)
    doc = json.loads(report.read_text())
    assert doc["bytes_refetched"] >= layer.size  # the whole corrupt stream came again
    assert "bytes downloaded again" in out.err


# -- planning reads ---------------------------------------------------------------------------

READS = r"^/v2/.+/(manifests|blobs)/"


@pytest.fixture(scope="module")
def release(plain_registry: RegistryProcess) -> Release:
    return seed_release(plain_registry, "wire153")


def _plan_bom(cli: CLI, source: str) -> Any:
    files = [str(SMALL / TKG_BOM), str(SMALL / TKR_BOM), str(TKG_COMPAT), str(TKR_COMPAT)]
    return cli("plan", "bom", *files, "--dest", "harbor.local/tkg", "--source", source, "-q")


def test_plan_reads_again_what_arrives_corrupt(
    cli: CLI, release: Release, plain_registry: RegistryProcess, make_fault_proxy: MakeProxy
) -> None:
    """A third of the manifest and blob answers (BOM and bundle layers, configs) have a byte
    flipped, and a fifth are cut: the plan is made, identical to the one made without faults.

    Each path is flipped at most twice and cut at most once (`per_key`), so a reader that
    retries within its budget always gets through (no chance of every try being hit), while
    one that does not retry fails on the first flip.
    """
    clean = _plan_bom(cli, release.source)
    assert clean.code == ExitCode.OK, clean.err
    flips = Fault.flip(READS, rate=0.3, per_key=2)
    cuts = Fault.truncate(READS, rate=0.2, per_key=1)
    proxy = make_fault_proxy(plain_registry, flips, cuts, seed=4)
    out = _plan_bom(cli, f"{proxy.host}/wire153")
    assert out.code == ExitCode.OK, out.err
    assert flips.fired >= 10 and cuts.fired >= 2, proxy.summary()
    blob_flips = proxy.log("GET", r"/blobs/", fault="flip")
    manifest_flips = proxy.log("GET", r"/manifests/", fault="flip")
    assert blob_flips and manifest_flips, proxy.summary()
    faulty = Plan.from_yaml(out.out, "stdout")
    expected = Plan.from_yaml(clean.out, "stdout")
    assert {(e.destination, str(e.source_digest)) for e in faulty.entries} == {
        (e.destination, str(e.source_digest)) for e in expected.entries
    }


def test_plan_still_fails_on_corruption_that_persists(
    cli: CLI, release: Release, plain_registry: RegistryProcess, make_fault_proxy: MakeProxy
) -> None:
    """Every answer for a bundle's layer (its images.yml) is corrupt: the bounded retries run
    out and plan fails with exit 7 naming the blob, after the engine's number of tries."""
    bundle = release.items["packages/core/antrea:v1.2.3_vmware.4-tkg.1-advanced"]
    assert isinstance(bundle, Image)
    layer = bundle.layers[-1].digest
    flip = Fault.flip(rf"/blobs/{layer}$")
    proxy = make_fault_proxy(plain_registry, flip)
    out = _plan_bom(cli, f"{proxy.host}/wire153")
    assert out.code == ExitCode.INTEGRITY, out.err
    assert "does not match its digest" in out.err
    assert flip.fired == retry.CONTENT_POLICY.retries + 1
