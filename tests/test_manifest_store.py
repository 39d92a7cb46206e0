"""`plan`, then `copy --plan` in another process: the copy reads the manifests the plan fetched
from the manifest store, not from the source, and nothing the store holds is trusted unverified.

Counted in a real docker-registry's access log (manifest GETs at the source), the copies checked
with skopeo against the source's exact bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_image, build_images_sharing_base, seed_index
from harness.skopeo import Skopeo

from transship.connect import RegistryPool, SideSettings
from transship.digest import Digest
from transship.errors import NotFoundError
from transship.manifest import OCI_MANIFEST


def _manifest_gets(source: RegistryProcess, prefix: str, since: int) -> list[str]:
    """Paths of the manifest GETs under `prefix` at the source after `since`."""
    return [
        e.path
        for e in source.access_log(since)
        if e.method == "GET" and e.path.startswith(f"/v2/{prefix}/") and "/manifests/" in e.path
    ]


def _seed(source: RegistryProcess, prefix: str, seed: int) -> dict[str, tuple[str, bytes]]:
    """Three images sharing a base in two repositories, an index, and an OCI manifest without
    `mediaType` in its body: reference path → (digest, exact bytes)."""
    client = SeedClient.for_registry(source)
    seeded: dict[str, tuple[str, bytes]] = {}
    for i, image in enumerate(build_images_sharing_base(seed, 3, base_sizes=(20_000,))):
        path = f"{prefix}/app{i % 2}:v{i}"
        client.push_image(path.split(":")[0], image, f"v{i}")
        seeded[path] = (image.digest, image.manifest)
    index = seed_index(source, f"{prefix}/multi", "v1", seed=seed + 1)
    seeded[f"{prefix}/multi:v1"] = (index.digest, index.manifest)
    for child in index.images:
        seeded[f"{prefix}/multi@{child.digest}"] = (child.digest, child.manifest)
    bare = build_image(seed + 2)
    body = json.loads(bare.manifest)
    del body["mediaType"]  # optional in OCI: the type is the Content-Type it was pushed with
    raw = json.dumps(body).encode()
    for blob in bare.pushable_blobs:
        client.push_blob(f"{prefix}/bare", blob.data, blob.digest)
    digest = client.push_manifest(f"{prefix}/bare", "v1", raw, OCI_MANIFEST)
    seeded[f"{prefix}/bare:v1"] = (digest, raw)
    return seeded


def _plan(cli: CLI, source: RegistryProcess, seeded: dict, dest: str, tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{source.host}/{p}\n" for p in seeded if "@" not in p))
    plan_file = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(listing), "--dest", dest, "-o", str(plan_file), "-q")
    assert out.code == 0, out.err
    return plan_file


def _copy_in_a_process(plan_file: Path, dest: RegistryProcess, cache: Path, **env: str) -> None:
    """`copy --plan` as its own process (as after `plan` in a shell), with its cache."""
    environment = {**os.environ, "XDG_CACHE_HOME": str(cache), **env}
    if "TRANSSHIP_NO_CACHE" not in env:
        environment.pop("TRANSSHIP_NO_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "transship", "copy", "--plan", str(plan_file), "-q"],
        env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def _same_as_source(
    skopeo: Skopeo, dest: RegistryProcess, seeded: dict[str, tuple[str, bytes]]
) -> None:
    for path, (_digest, raw) in seeded.items():
        assert skopeo(dest, f"mirror/{path}") == raw, path


def test_copy_plan_reads_what_plan_fetched_from_the_store_not_the_source(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, prefix = plain_registry, "mstore1"
    seeded = _seed(source, prefix, 401)
    dest = make_registry("plain")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    mark = source.sync_log()
    plan_file = _plan(cli, source, seeded, f"{dest.host}/mirror", tmp_path)
    planned = _manifest_gets(source, prefix, mark)
    every_manifest = {f"/v2/{p.split(':')[0].split('@')[0]}/manifests/{d}" for p, (d, _) in
                      seeded.items()}  # fmt: skip
    kept = {p.name for p in (cache / "transship" / "manifests" / "sha256").iterdir()}
    assert planned and kept == {d.removeprefix("sha256:") for d, _ in seeded.values()}

    mark = source.sync_log()
    _copy_in_a_process(plan_file, dest, cache)
    source.sync_log()
    assert _manifest_gets(source, prefix, mark) == [], "copy --plan GET a manifest plan had read"
    _same_as_source(skopeo, dest, seeded)
    # a hit keeps the type a body without `mediaType` was served with
    _raw, content_type = SeedClient.for_registry(dest).get_manifest(f"mirror/{prefix}/bare", "v1")
    assert content_type.split(";")[0] == OCI_MANIFEST

    # with an empty store the same copy asks the source for every manifest, and keeps them
    empty, cold = tmp_path / "empty", make_registry("plain")
    plan_file = _plan(cli, source, seeded, f"{cold.host}/mirror", tmp_path / "other")
    mark = source.sync_log()
    _copy_in_a_process(plan_file, cold, empty)
    source.sync_log()
    assert set(_manifest_gets(source, prefix, mark)) == every_manifest
    assert len(list((empty / "transship" / "manifests" / "sha256").iterdir())) == len(seeded)
    _same_as_source(skopeo, cold, seeded)

    # TRANSSHIP_NO_CACHE: a full store is not read (the GETs are sent), nothing is written
    off, third = tmp_path / "off", make_registry("plain")
    shutil.copytree(cache, off)
    before = sorted(str(p.relative_to(off)) for p in off.rglob("*"))
    plan_file = _plan(cli, source, seeded, f"{third.host}/mirror", tmp_path / "third")
    mark = source.sync_log()
    _copy_in_a_process(plan_file, third, off, TRANSSHIP_NO_CACHE="1")
    source.sync_log()
    assert set(_manifest_gets(source, prefix, mark)) == every_manifest
    assert sorted(str(p.relative_to(off)) for p in off.rglob("*")) == before  # no landed log
    _same_as_source(skopeo, third, seeded)


def test_a_damaged_or_substituted_store_file_is_fetched_again_never_copied(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, prefix = plain_registry, "mstore2"
    seeded = _seed(source, prefix, 411)
    dest = make_registry("plain")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    plan_file = _plan(cli, source, seeded, f"{dest.host}/mirror", tmp_path)
    store = cache / "transship" / "manifests" / "sha256"

    def file_of(path: str) -> Path:
        return store / seeded[path][0].removeprefix("sha256:")

    damaged = file_of(f"{prefix}/app0:v0")
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0x20
    damaged.write_bytes(bytes(data))
    # a whole, valid manifest under the name of another: the index pushed under a tag
    substituted = file_of(f"{prefix}/multi:v1")
    substituted.write_bytes(file_of(f"{prefix}/app1:v1").read_bytes())

    mark = source.sync_log()
    _copy_in_a_process(plan_file, dest, cache)
    source.sync_log()
    fetched = sorted(_manifest_gets(source, prefix, mark))
    assert fetched == sorted(
        f"/v2/{path.split(':')[0]}/manifests/{seeded[path][0]}"
        for path in (f"{prefix}/app0:v0", f"{prefix}/multi:v1")
    )  # exactly the two files that did not verify, by digest
    _same_as_source(skopeo, dest, seeded)  # the destination has the source's exact bytes
    for path in (f"{prefix}/app0:v0", f"{prefix}/multi:v1"):  # written back as they should be
        assert file_of(path).read_bytes().split(b"\n", 2)[2] == seeded[path][1]


async def test_only_a_source_uses_the_store_and_only_by_digest(
    plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag always goes to the registry (tags move); a destination never reads the store, so
    its content is always asked of it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("TRANSSHIP_NO_CACHE", raising=False)
    source, repo = plain_registry, "mstore3/app"
    first, second = build_image(421), build_image(422)
    client = SeedClient.for_registry(source)
    client.push_image(repo, first, "v1")
    sources, dests = RegistryPool(SideSettings("src")), RegistryPool(SideSettings("dest"))
    try:
        reader, writer = sources.get(source.host), dests.get(source.host)
        store = reader.options.manifest_store
        assert store is not None and writer.options.manifest_store is None
        assert str((await reader.get_manifest(repo, "v1")).digest) == first.digest
        assert store.path(Digest.parse(first.digest)).is_file()  # written when read by tag

        client.push_image(repo, second, "v1")  # the tag moves
        mark = source.sync_log()
        again = RegistryPool(SideSettings("src"))
        try:
            moved = await again.get(source.host).get_manifest(repo, "v1")
            assert str(moved.digest) == second.digest  # asked of the registry, not the store
            kept = await again.get(source.host).get_manifest(repo, first.digest)
            assert kept.raw == first.manifest and store.hits == 1  # by digest: the store
        finally:
            await again.close()
        source.sync_log()
        assert _manifest_gets(source, "mstore3", mark) == [f"/v2/{repo}/manifests/v1"]

        # the destination's view: it does not have `second` by digest elsewhere, so it says so
        assert await writer.head_manifest("mstore3/other", second.digest) is None
        with pytest.raises(NotFoundError):
            await writer.get_manifest("mstore3/other", second.digest)
    finally:
        await sources.close()
        await dests.close()


def test_a_digest_under_the_wrong_repository_fails_as_without_the_store(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A reference pinning one repository's digest under another repository (a typo) is
    "not found", whether or not an earlier run kept that manifest: the store answers only for
    where it read it."""
    monkeypatch.delenv("TRANSSHIP_NO_CACHE", raising=False)
    source = plain_registry
    client = SeedClient.for_registry(source)
    image = build_image(431)
    client.push_image("mstore4/right", image, "v1")
    client.push_image("mstore4/wrong", build_image(432), "v1")  # exists, lacks that digest
    dest = make_registry("plain")
    out = cli("copy", source.ref("mstore4/right:v1"), dest.ref("x/right:v1"), "-q")
    assert out.code == 0, out.err  # the store now holds the manifest (and the destination it)
    out = cli("copy", source.ref(f"mstore4/wrong:v1@{image.digest}"), dest.ref("x/typo:v1"), "-q")
    assert out.code == 4, out.err  # NOT_FOUND, as with TRANSSHIP_NO_CACHE=1
    assert "mstore4/wrong" in out.error_line
