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

import transship.retry as retry
from transship.errors import ExitCode

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
