"""Foreign (non-distributable) layers: copied as references (the manifest byte for byte, the
layer itself never fetched nor pushed), and a destination that refuses them — distribution
with `validation.manifests.urls` denying their URLs answers the manifest PUT with 500 — is one
line saying so, at once, without retrying a refusal that would be the same every time."""

from __future__ import annotations

import time
from pathlib import Path

from clirunner import CLI
from harness.faultproxy import Fault
from harness.registry import RegistryProcess
from harness.seed import seed_image
from harness.skopeo import Skopeo

from transship.errors import ExitCode

#: distribution config refusing every layer URL (the harness allows `^https?://` by default)
DENY_URLS = {"validation": {"manifests": {"urls": {"allow": [], "deny": ["^https?://"]}}}}


def test_foreign_layers_are_copied_as_references(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,  # type: ignore[no-untyped-def]
) -> None:
    image = seed_image(
        plain_registry, "foreign/win", "ltsc", seed=321, fmt="docker", foreign_layer_sizes=(400,)
    )
    foreign = next(b for b in image.blobs if b.urls)
    dest: RegistryProcess = make_registry("plain")
    out = cli("copy", plain_registry.ref("foreign/win:ltsc"), dest.ref("foreign/win:ltsc"))
    assert out.code == 0, out.err
    assert skopeo(dest, "foreign/win:ltsc") == image.manifest  # urls kept, byte for byte
    assert not dest.has_blob(foreign.digest)  # the layer itself is not copied
    assert not plain_registry.requests("GET", rf"/blobs/{foreign.digest}")  # nor fetched


def test_refused_foreign_layers_are_one_line_and_not_retried(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    seed_image(
        plain_registry, "foreign/win2", "ltsc", seed=322, fmt="docker", foreign_layer_sizes=(300,)
    )
    strict: RegistryProcess = make_registry("plain", extra_config=DENY_URLS)
    start = time.monotonic()
    out = cli("copy", plain_registry.ref("foreign/win2:ltsc"), strict.ref("w/win2:ltsc"))
    took = time.monotonic() - start
    assert out.code == ExitCode.REGISTRY, out.err
    line = out.error_line
    assert f"{strict.host}/w/win2:ltsc" in line, line
    assert "foreign (non-distributable) layers" in line, line
    assert "validation.manifests.urls.allow" in line, line
    assert "{" not in line  # no raw JSON body
    strict.settle_log()
    puts = strict.requests("PUT", r"/v2/w/win2/manifests/")
    assert [p.status for p in puts] == [500], puts  # asked once: a refusal is not retried
    assert took < 3.0, took


def test_a_transient_manifest_500_is_still_retried(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    make_fault_proxy,  # type: ignore[no-untyped-def]
    skopeo: Skopeo,
) -> None:
    """A 500 that does not name a foreign layer of the manifest keeps its retries, for an
    image with foreign layers too."""
    image = seed_image(
        plain_registry, "foreign/win3", "ltsc", seed=323, fmt="docker", foreign_layer_sizes=(200,)
    )
    dest: RegistryProcess = make_registry("plain")
    fault = Fault.http(500, path=r"/manifests/", method="PUT", count=2)
    proxy = make_fault_proxy(dest, fault)
    out = cli("copy", plain_registry.ref("foreign/win3:ltsc"), proxy.ref("w/win3:ltsc"))
    assert out.code == 0, out.err
    assert fault.fired == 2
    assert skopeo(dest, "w/win3:ltsc") == image.manifest


def test_load_of_refused_foreign_layers_is_the_same_line(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """An archive holds no foreign layer (only its descriptor); loading it into a registry that
    refuses foreign layers says so as `copy` does."""
    seed_image(
        plain_registry, "foreign/win4", "ltsc", seed=324, fmt="docker", foreign_layer_sizes=(300,)
    )
    images = tmp_path / "images.txt"
    images.write_text(plain_registry.ref("foreign/win4:ltsc") + "\n")
    tar = tmp_path / "win.tar"
    out = cli("save", "--images", str(images), "-o", str(tar), "-q")
    assert out.code == 0, out.err
    strict: RegistryProcess = make_registry("plain", extra_config=DENY_URLS)
    out = cli("load", str(tar), "--dest", f"{strict.host}/sw", "-q")
    assert out.code == ExitCode.REGISTRY, out.err
    assert "foreign (non-distributable) layers" in out.error_line
    assert "validation.manifests.urls.allow" in out.error_line
    strict.settle_log()
    assert len(strict.requests("PUT", r"/manifests/")) == 1
