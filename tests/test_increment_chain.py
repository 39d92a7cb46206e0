"""Increments of increments: `save --since B` where B is itself an increment leaves out what
B's own bases hold (found beside B by name, as `serve` finds them), as far as they are there: a
missing base is carried again with a warning; a repeated `--since` is refused in one line.
Real saves from a real registry."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import Image, SeedClient, seed_image
from harness.serve import ServeProcess
from harness.skopeo import Skopeo

from transship.digest import Digest
from transship.errors import ExitCode
from transship.layout import OCILayout, OCILayoutTar
from transship.ops import load as load_ops
from transship.ops.load import LoadJob, missing_blob_hint
from transship.plan.model import Plan
from transship.serve.archive import ServedArchive

TRANSSHIP = [sys.executable, "-m", "transship"]


def _images(reg: RegistryProcess, name: str) -> tuple[list[str], list[Image]]:
    refs, images = [], []
    for i in range(3):
        images.append(seed_image(reg, f"{name}/app{i}", "v1", seed=700 + i, layer_sizes=(40_000,)))
        refs.append(f"{reg.host}/{name}/app{i}:v1")
    return refs, images


def _save(cli: CLI, tmp_path: Path, refs: list[str], out: Path, *since: Path) -> None:
    listing = tmp_path / f"{out.name}.txt"
    listing.write_text("\n".join(refs) + "\n")
    args = [a for s in since for a in ("--since", str(s))]
    result = cli("save", "--images", str(listing), "-o", str(out), *args, "-q")
    assert result.code == 0, result.err


def _blobs(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}


def test_an_increment_of_an_increment_carries_only_what_the_chain_lacks(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    refs, images = _images(plain_registry, "chain1")
    usb = tmp_path / "usb"
    first, second, third = usb / "tkg.tar", usb / "tkg-2", usb / "tkg-3"
    _save(cli, tmp_path, refs[:1], first)
    _save(cli, tmp_path, refs[:2], second, first)
    _save(cli, tmp_path, refs, third, second)
    assert set(images[0].blob_digests).isdisjoint(_blobs(second))
    carried = _blobs(third)
    assert set(images[2].blob_digests) <= carried
    # neither what tkg-2 holds nor what its base tkg.tar holds travels again
    assert carried.isdisjoint(images[1].blob_digests)
    assert carried.isdisjoint(images[0].blob_digests)

    # serve follows the chain by name: tkg-3 + tkg-2 + tkg.tar
    async def layers() -> int:
        served, _info = await ServedArchive.open(third, [], None)
        try:
            return len(served.layers)
        finally:
            await served.close()

    assert asyncio.run(layers()) == 3
    # and the three loads in order land every image whole
    dest = make_registry("plain")
    for archive in (first, second, third):
        out = cli("load", str(archive), "--dest", f"{dest.host}/far", "-q")
        assert out.code == 0, out.err
    for i in range(3):
        assert skopeo(dest, f"far/chain1/app{i}:v1") == skopeo(plain_registry, f"chain1/app{i}:v1")
    out = cli("verify", "--plan", str(third), "--dest", f"{dest.host}/far", "--deep", "-q")
    assert out.code == 0, out.err


def test_a_repeated_since_is_refused(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    refs, _ = _images(plain_registry, "chain2")
    usb = tmp_path / "usb"
    first, second = usb / "tkg.tar", usb / "tkg-2.tar"
    _save(cli, tmp_path, refs[:1], first)
    _save(cli, tmp_path, refs[:2], second, first)
    listing = tmp_path / "all.txt"
    listing.write_text("\n".join(refs) + "\n")
    out = cli("save", "--images", str(listing), "-o", str(tmp_path / "x.tar"),
              "--since", str(second), "--since", str(first))  # fmt: skip
    assert out.code == ExitCode.USAGE and "--since given 2 times" in out.error_line, out.err
    assert not (tmp_path / "x.tar").exists()


def _served(archive: Path, bases: list[Path]) -> tuple[int, set[str]]:
    """(layers opened, served name:tag) of `serve ARCHIVE --base …`, every blob there."""

    async def run() -> tuple[int, set[str]]:
        served, _info = await ServedArchive.open(archive, bases, None)
        try:
            assert not served.absent and not served.problems, served.problems
            names = {f"{r.name}:{t}" for r in served.repositories.values() for t in r.tags}
            return len(served.layers), names
        finally:
            await served.close()

    return asyncio.run(run())


def test_a_chain_whose_oldest_base_is_gone_is_saved_on_and_served_as_far_as_it_goes(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only last month's increment kept (its base gone): `save --since` it carries what that
    base held again, saying so in one line, never refusing; `serve` of the result with its
    base and without the gone one serves it whole; an increment that does need the gone
    base is refused naming it."""
    refs, images = _images(plain_registry, "chain4")
    usb = tmp_path / "usb"
    first, second = usb / "tkg.tar", usb / "tkg-2.tar"
    _save(cli, tmp_path, refs[:1], first)
    _save(cli, tmp_path, refs[:2], second, first)
    lean = usb / "tkg-3-lean"
    _save(cli, tmp_path, refs, lean, second)  # tkg.tar beside: app0's blobs left out
    assert _blobs(lean).isdisjoint(images[0].blob_digests)
    away = tmp_path / "away"
    away.mkdir()
    shutil.move(first, away / first.name)  # only last month's archive kept

    listing = tmp_path / "all.txt"
    listing.write_text("\n".join(refs) + "\n")
    third = usb / "tkg-3"
    with caplog.at_level("WARNING", logger="transship.archive"):
        out = cli("save", "--images", str(listing), "-o", str(third), "--since", str(second))
    assert out.code == 0, out.err
    said = [r.getMessage() for r in caplog.records if r.name == "transship.archive"]
    assert len(said) == 1 and "\n" not in said[0], said  # once, though the chain is reopened
    assert "tkg-2.tar is an increment on top of tkg.tar, which is not beside it" in said[0]
    assert "blobs tkg.tar holds are carried again" in said[0]
    carried = _blobs(third)
    assert set(images[0].blob_digests) <= carried  # carried again: tkg.tar is not at hand
    assert carried.isdisjoint(images[1].blob_digests)  # what tkg-2 holds still left out
    assert set(images[2].blob_digests) <= carried

    # tkg-3 + tkg-2 hold everything: served without tkg.tar, found beside or given
    whole = {f"chain4/app{i}:v1" for i in range(3)}
    assert _served(third, []) == (2, whole)
    assert _served(third, [second]) == (2, whole)
    dest = make_registry("plain")
    with ServeProcess(tmp_path / "srv", third) as server:
        skopeo.copy(server, "chain4/app0:v1", dest, "far/app0:v1")  # type: ignore[arg-type]
    assert skopeo(dest, "far/app0:v1") == skopeo(plain_registry, "chain4/app0:v1")

    # the lean one needs app0's blobs from tkg.tar: refused, naming it
    for bases in ([], ["--base", str(second)]):
        out = cli("serve", str(lean), *bases)
        assert out.code == ExitCode.USAGE, out.err
        line = out.error_line
        assert "tkg-2.tar is an increment on top of tkg.tar, which is not beside it" in line
        assert "--base PATH/tkg.tar" in line
        assert "the archive's own chain4/app0:v1 need manifests or blobs" in line  # by name
    shutil.move(away / first.name, first)  # back beside it: served whole
    assert _served(lean, []) == (3, whole)


def _get(server: ServeProcess, path: str) -> tuple[int, object]:
    """(status, the first error code, or the tags listed) of GET path."""
    conn = http.client.HTTPConnection(server.host, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    return response.status, body["errors"][0]["code"] if "errors" in body else body["tags"]


def test_a_name_only_a_gone_base_could_serve_is_left_out_and_the_rest_served(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Images dropped from this month's list: tkg-2.tar (app0, app1:v0 and app1, --since
    tkg.tar) names app0 and app1:v0, whose blobs went with tkg.tar; tkg-3.tar (app1 + app2,
    --since tkg-2.tar) does not. `serve tkg-3.tar` serves app1 and app2 whole, the dropped
    ones not (404 as any unknown name, one warning line naming them and tkg.tar), rather
    than refusing what tkg-3.tar + tkg-2.tar hold whole."""
    refs, images = _images(plain_registry, "chain6")
    old = seed_image(plain_registry, "chain6/app1", "v0", seed=710, layer_sizes=(40_000,))
    old_ref = f"{plain_registry.host}/chain6/app1:v0"
    usb = tmp_path / "usb"
    first, second, third = usb / "tkg.tar", usb / "tkg-2.tar", usb / "tkg-3.tar"
    _save(cli, tmp_path, [refs[0], old_ref], first)
    _save(cli, tmp_path, [*refs[:2], old_ref], second, first)
    away = tmp_path / "away"
    away.mkdir()
    shutil.move(first, away / first.name)
    _save(cli, tmp_path, refs[1:], third, second)

    async def index() -> tuple[int, set[str], list[str], list[str]]:
        served, _info = await ServedArchive.open(third, [], None)
        try:
            names = {f"{r.name}:{t}" for r in served.repositories.values() for t in r.tags}
            blobs = {str(d) for r in served.repositories.values() for d in r.blobs}
            assert blobs.isdisjoint([*images[0].blob_digests, *old.blob_digests])  # not indexed
            return len(served.layers), names, served.problems, sorted(map(str, served.absent))
        finally:
            await served.close()

    layers, names, problems, absent = asyncio.run(index())
    assert (layers, names, absent) == (2, {"chain6/app1:v1", "chain6/app2:v1"}, [])
    assert len(problems) == 1, problems
    assert "not served: chain6/app0:v1, chain6/app1:v0," in problems[0]
    assert "in tkg.tar, which is not beside" in problems[0]

    dest = make_registry("plain")
    with ServeProcess(tmp_path / "srv", third) as server:
        for i in (1, 2):
            skopeo.copy(server, f"chain6/app{i}:v1", dest, f"far/app{i}:v1")  # type: ignore[arg-type]
        answers = {path: _get(server, path) for path in (
            "/v2/chain6/app0/manifests/v1", "/v2/chain6/app1/manifests/v0",
            "/v2/chain6/app1/tags/list")}  # fmt: skip
        log = server.read_log()
    assert answers["/v2/chain6/app0/manifests/v1"] == (404, "NAME_UNKNOWN")  # no app0 at all
    assert answers["/v2/chain6/app1/manifests/v0"] == (404, "MANIFEST_UNKNOWN")
    assert answers["/v2/chain6/app1/tags/list"] == (200, ["v1"])
    warned = [line for line in log.splitlines() if "warning" in line]
    assert len(warned) == 1 and "chain6/app0:v1, chain6/app1:v0" in warned[0], log
    assert "tkg.tar, which is not beside" in warned[0], log
    for i in (1, 2):
        assert skopeo(dest, f"far/app{i}:v1") == skopeo(plain_registry, f"chain6/app{i}:v1")

    # an image of tkg-3.tar's own whose blobs only tkg.tar held: refused, naming it
    shutil.move(away / first.name, first)
    lean = usb / "tkg-3-lean.tar"
    _save(cli, tmp_path, refs, lean, second)  # app0's blobs left out: tkg.tar is beside
    shutil.move(first, away / first.name)
    out = cli("serve", str(lean))
    assert out.code == ExitCode.USAGE, out.err
    assert "the archive's own chain6/app0:v1 need" in out.error_line, out.err
    assert "chain6/app1" not in out.error_line and "--base PATH/tkg.tar" in out.error_line


def test_a_base_that_is_not_the_one_the_increment_names_is_refused_when_content_lacks(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """inc2 saved on inc1 (on a): `serve s1/inc2 --base a` (inc1 not beside, a given instead)
    is refused in one line naming inc1 (what it needs) and a (what was given), as when the
    base is missing, rather than serving app1 whose blobs only inc1 holds; the right base
    given serves it whole."""
    refs, _ = _images(plain_registry, "chain7")
    first, second, third = tmp_path / "a.tar", tmp_path / "inc1.tar", tmp_path / "inc2.tar"
    _save(cli, tmp_path, refs[:1], first)
    _save(cli, tmp_path, refs[:2], second, first)
    _save(cli, tmp_path, refs, third, second)
    s1 = tmp_path / "s1"
    s1.mkdir()
    shutil.copy(third, s1 / third.name)
    out = cli("serve", str(s1 / third.name), "--base", str(first))
    assert out.code == ExitCode.USAGE, out.err
    line = out.error_line
    assert "inc2.tar is an increment on top of inc1.tar, but --base" in line, out.err
    assert f"--base {first} was given" in line and "chain7/app1:v1 need" in line, out.err
    assert "--base PATH/inc1.tar" in line
    whole = {f"chain7/app{i}:v1" for i in range(3)}
    assert _served(s1 / third.name, [second]) == (3, whole)  # inc1, then a beside it


def test_load_repair_of_an_increment_reads_a_lost_blob_from_the_base_beside_it(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """a.tar, inc1.tar, inc2.tar loaded in order; the registry loses app0's layer (only a.tar
    holds it, two down the chain): `load inc2.tar --repair` reads it from a.tar lying beside
    and mends it. With a.tar gone from beside it, the lost blob is reported naming the chain
    and what to run, as before; `load a.tar --repair` then mends it."""
    refs, images = _images(plain_registry, "chain8")
    first, second, third = tmp_path / "a.tar", tmp_path / "inc1.tar", tmp_path / "inc2.tar"
    _save(cli, tmp_path, refs[:1], first)
    _save(cli, tmp_path, refs[:2], second, first)
    _save(cli, tmp_path, refs, third, second)
    dest = make_registry("plain")
    for archive in (first, second, third):
        out = cli("load", str(archive), "--dest", f"{dest.host}/far", "-q")
        assert out.code == 0, out.err
    lost = images[0].layers[0].digest
    dest.blob_path(lost).unlink()
    out = cli("load", str(third), "--dest", f"{dest.host}/far", "--repair", "-q")
    assert out.code == 0, out.err
    assert dest.has_blob(lost)
    assert skopeo(dest, "far/chain8/app0:v1") == skopeo(plain_registry, "chain8/app0:v1")
    out = cli("verify", "--plan", str(third), "--dest", f"{dest.host}/far", "--deep", "-q")
    assert out.code == 0, out.err

    # a.tar not beside inc2.tar's chain: reported as before, naming the chain and the way out
    away = tmp_path / "away"
    away.mkdir()
    shutil.move(first, away / first.name)
    dest.blob_path(lost).unlink()
    out = cli("load", str(third), "--dest", f"{dest.host}/far", "--repair", "-q")
    assert out.code == ExitCode.PARTIAL, out.err
    assert "incremental on top of inc1.tar (saved on a.tar), and none of them beside" in out.err
    assert "run `transship load BASE --repair` with each of them, oldest first" in out.err
    assert "(a.tar, then inc1.tar)" in out.err, out.err
    out = cli("load", str(away / first.name), "--dest", f"{dest.host}/far", "--repair", "-q")
    assert out.code == 0, out.err
    assert dest.has_blob(lost)


def test_the_readme_chain_on_split_volumes(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """The README's steps as written: a split first archive, `--since` its first volume, an
    increment of that increment; loaded in order, then verified with the newest one's plan."""
    refs, images = _images(plain_registry, "chain3")
    usb = tmp_path / "usb"
    listing = tmp_path / "one.txt"
    listing.write_text(refs[0] + "\n")
    out = cli("save", "--images", str(listing), "-o", str(usb / "tkg.tar"), "--split-size", "64K",
              "-q")  # fmt: skip
    assert out.code == 0, out.err
    first = usb / "tkg.tar.001"
    _save(cli, tmp_path, refs[:2], usb / "tkg-2.tar", first)
    _save(cli, tmp_path, refs, usb / "tkg-3", usb / "tkg-2.tar")
    assert _blobs(usb / "tkg-3").isdisjoint(images[0].blob_digests)
    dest = make_registry("plain")
    for archive in (first, usb / "tkg-2.tar", usb / "tkg-3"):
        out = cli("load", str(archive), "--dest", f"{dest.host}/far", "-q")
        assert out.code == 0, out.err
    out = cli("verify", "--plan", str(usb / "tkg-3"), "--dest", f"{dest.host}/far", "--deep")
    assert out.code == 0, out.err
    assert skopeo(dest, "far/chain3/app0:v1") == skopeo(plain_registry, "chain3/app0:v1")


def test_an_increment_carries_the_whole_plan_it_was_saved_with(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    """`archive plan` / `--plan` of an increment: the plan its save was given, whole (images
    whose blobs its base holds included: its index names them all), read without its base;
    so `verify --plan INCREMENT` checks the release the chain, loaded in order, lands. An
    increment saved from a shorter list carries (and checks) only that list."""
    refs, _ = _images(plain_registry, "chain5")
    usb = tmp_path / "usb"
    first, second, small = usb / "tkg.tar", usb / "tkg-2.tar", usb / "tkg-2-small.tar"
    _save(cli, tmp_path, refs[:2], first)
    _save(cli, tmp_path, refs, second, first)
    _save(cli, tmp_path, refs[2:], small, first)
    away = tmp_path / "away"
    away.mkdir()
    shutil.move(first, away / first.name)  # the carried plan needs no base
    out = cli("archive", "plan", str(second))
    assert out.code == 0, out.err
    whole = {f"archive.local/chain5/app{i}" for i in range(3)}
    assert {e.destination for e in Plan.from_yaml(out.out, "stdout").entries} == whole
    out = cli("archive", "plan", str(small))
    assert out.code == 0, out.err
    assert [e.destination for e in Plan.from_yaml(out.out, "stdout").entries] == [
        "archive.local/chain5/app2"
    ]
    shutil.move(away / first.name, first)

    dest = make_registry("plain")
    far = f"{dest.host}/far"
    assert cli("load", str(first), "--dest", far, "-q").code == 0
    out = cli("verify", "--plan", str(second), "--dest", far)  # the base alone: app2 missing
    assert out.code == ExitCode.INCOMPLETE, out.err
    assert "chain5/app2" in out.out and "chain5/app0" not in out.out
    assert cli("load", str(second), "--dest", far, "-q").code == 0
    out = cli("verify", "--plan", str(second), "--dest", far, "--deep")
    assert out.code == 0, out.err
    assert "complete: 3 entries" in out.out
    out = cli("verify", "--plan", str(small), "--dest", far, "--deep")
    assert out.code == 0, out.err
    assert "complete: 1 entries" in out.out, out.out


def test_a_blob_a_base_stores_unnamed_is_served_but_not_held_for_the_load_hint(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """inc saved on base when base still named app1; then base's name for app1 dropped (as a
    save resumed with another plan drops names, keeping their blobs). Loading base no longer
    pushes app1's blobs, so base does not hold them: load's hint does not send the user to
    base for them. Bytes are another matter: `serve inc` reads them from base's store for the
    app1 that inc names, verified as any blob, as `load inc --repair` does (one rule for
    reading a base's bytes: stored is enough)."""
    refs, images = _images(plain_registry, "chain9")
    usb = tmp_path / "usb"
    base, inc = usb / "base", usb / "inc"
    _save(cli, tmp_path, refs[:2], base)
    _save(cli, tmp_path, refs, inc, base)
    index_file = base / "index.json"
    index = json.loads(index_file.read_text())
    index["manifests"] = [
        m for m in index["manifests"] if "chain9/app1" not in json.dumps(m.get("annotations"))
    ]
    index_file.write_text(json.dumps(index))
    carried = base / "transship" / "plan.yaml"
    plan = Plan.from_yaml(carried.read_text(), str(carried))
    kept = tuple(e for e in plan.entries if "chain9/app1" not in e.source)
    carried.write_text(dataclasses.replace(plan, entries=kept).to_yaml())
    layer = Digest.parse(images[1].blob_digests[-1])
    assert (base / "blobs" / "sha256" / layer.hex).exists()  # stored, unnamed

    async def served_absent() -> tuple[set[Digest], str | None, list[str]]:
        served, _info = await ServedArchive.open(inc, [], None)
        try:
            found = served.blob(layer)
            return set(served.absent), found[1].label if found else None, served.problems
        finally:
            await served.close()

    absent, served_from, problems = asyncio.run(served_absent())
    assert layer not in absent and not problems, problems  # app1 served whole
    assert served_from is not None and served_from.endswith("/usb/base")  # base's unnamed store
    kept_layer = Digest.parse(images[0].blob_digests[-1])  # named in base: held there
    assert kept_layer not in absent
    hint = asyncio.run(missing_blob_hint(inc, "base", layer, False))
    assert "holds it" not in hint, hint
    assert "(base holds it)" in asyncio.run(missing_blob_hint(inc, "base", kept_layer, False))


def test_an_increment_on_a_base_whose_tag_moved_before_its_resume_carries_the_old_image(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """base.tar's save stopped with app0:v1 written; app0:v1 moved to another image before the
    rerun, so base.tar names the new one and keeps the old one's blobs unnamed. An increment
    that wants the old image (by digest) carries its blobs: `load base.tar` never pushes them."""
    old = seed_image(plain_registry, "chain10/app0", "v1", seed=760, layer_sizes=(40_000,))
    other = seed_image(plain_registry, "chain10/app1", "v1", seed=761, layer_sizes=(40_000,))
    client = SeedClient.for_registry(plain_registry)
    lost = other.pushable_blobs[-1].digest
    gone = client.request(
        "DELETE", f"/v2/chain10/app1/blobs/{lost}", scope="repository:chain10/app1:delete"
    )
    assert gone.status == 202
    host = plain_registry.host
    refs = [f"{host}/chain10/app0:v1", f"{host}/chain10/app1:v1"]
    listing = tmp_path / "base.txt"
    listing.write_text("\n".join(refs) + "\n")
    usb = tmp_path / "usb"
    base, inc = usb / "base.tar", usb / "inc.tar"
    first = cli("save", "--images", str(listing), "-o", str(base), "-q")
    assert first.code != 0 and not base.exists()  # app0 written, app1 failed
    seed_image(plain_registry, "chain10/app0", "v1", seed=762, layer_sizes=(40_000,))  # moved
    client.push_image("chain10/app1", other, "v1")  # the source whole again
    again = cli("save", "--images", str(listing), "-o", str(base), "-q")
    assert again.code == 0, again.err
    _save(cli, tmp_path, [*refs, f"{host}/chain10/app0@{old.digest}"], inc, base)

    dest = make_registry("plain")
    for archive in (base, inc):
        out = cli("load", str(archive), "--dest", f"{dest.host}/far", "-q")
        assert out.code == 0, out.err
    assert skopeo(dest, f"far/chain10/app0@{old.digest}") == skopeo(
        plain_registry, f"chain10/app0@{old.digest}"
    )


def test_load_repair_of_an_increment_goes_on_past_an_unfinished_base_it_needs_nothing_from(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """The base beside an increment is unfinished (a save of it again, stopped): `load INC
    --repair`, with nothing lost, reads nothing from it, so it goes through, warning in one
    line that the base is not read from and why."""
    refs, _ = _images(plain_registry, "chain9")
    first, second = tmp_path / "a", tmp_path / "inc"
    _save(cli, tmp_path, refs[:1], first)
    _save(cli, tmp_path, refs[:2], second, first)
    dest = make_registry("plain")
    for archive in (first, second):
        out = cli("load", str(archive), "--dest", f"{dest.host}/far", "-q")
        assert out.code == 0, out.err
    (first / "transship" / "INCOMPLETE").write_text("")
    with caplog.at_level("WARNING", logger="transship.load"):
        out = cli("load", str(second), "--dest", f"{dest.host}/far", "--repair", "-q")
    assert out.code == 0, out.err
    said = [r.getMessage() for r in caplog.records if r.name == "transship.load"]
    assert len(said) == 1, said
    assert "not reading from the base a beside it" in said[0], said
    assert "its save did not finish (transship/INCOMPLETE is there)" in said[0], said
    assert "Traceback" not in out.err, out.err

    # as an operator sees it (default verbosity, its own process: pytest's log capture holds
    # the root logger in-process): the warning reads as every other `transship: warning:`
    run = subprocess.run(
        [*TRANSSHIP, "load", str(second), "--dest", f"{dest.host}/far", "--repair"],
        env={**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    warned = [ln for ln in run.stderr.splitlines() if "not reading from the base" in ln]
    assert len(warned) == 1, run.stderr
    assert warned[0].startswith("transship: warning: load --repair "), run.stderr
    assert "WARNING" not in run.stderr, run.stderr


def test_save_since_walks_each_base_s_named_manifests_at_most_once_per_run(
    cli: CLI, plain_registry: RegistryProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What a base holds (`named_reach`: every manifest its names reach, read and hashed) is
    walked the first time a save asks a base for a blob, then kept: not again by the save
    after `--since` was checked, nor twice by a rerun over the finished save. A real chain
    base → mid → top, saved, then rerun; the walk is counted, not replaced."""
    from transship.layout.reader import LayoutReader

    refs, images = _images(plain_registry, "chain11")
    usb = tmp_path / "usb"
    base, mid, top = usb / "base", usb / "mid.tar", usb / "top"
    _save(cli, tmp_path, refs[:1], base)
    _save(cli, tmp_path, refs[:2], mid, base)
    walks: list[str] = []
    real = LayoutReader.named_reach

    async def counted(self: LayoutReader) -> frozenset[Digest]:
        walks.append(self.label)
        return await real(self)

    monkeypatch.setattr(LayoutReader, "named_reach", counted)
    _save(cli, tmp_path, refs, top, mid)
    assert sorted(walks) == sorted({*walks}), walks  # each base once
    assert len(walks) == 2, walks  # both were asked: mid, and base below it
    carried = _blobs(top)
    assert carried.isdisjoint(images[0].blob_digests)  # what base holds still left out
    assert carried.isdisjoint(images[1].blob_digests)
    walks.clear()
    _save(cli, tmp_path, refs, top, mid)  # the rerun: checks --since, reads the finished save
    assert sorted(walks) == sorted({*walks}), walks


def test_archive_verify_of_an_increment_checks_what_it_leaves_to_the_base_beside_it(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """`archive verify INC`: a blob INC left out is looked for in the base beside it, which
    holds only what its named images reach (what loading it pushes). Once base's name for
    app1 is dropped (its blobs kept, unnamed), app1's blobs are missing: a problem naming the
    base, exit 9. With no base beside, they are counted as expected from it, not checked."""
    refs, images = _images(plain_registry, "chain12")
    usb = tmp_path / "usb"
    base, inc = usb / "base", usb / "inc"
    _save(cli, tmp_path, refs[:2], base)
    _save(cli, tmp_path, refs, inc, base)
    left_out = len(set(images[0].blob_digests) | set(images[1].blob_digests))

    out = cli("archive", "verify", str(inc))
    assert out.code == 0, out.err
    assert f"{left_out} blobs are held by the base archive base beside it" in out.out, out.out

    index_file = base / "index.json"
    index = json.loads(index_file.read_text())
    index["manifests"] = [
        m for m in index["manifests"] if "chain12/app1" not in json.dumps(m.get("annotations"))
    ]
    index_file.write_text(json.dumps(index))
    carried = base / "transship" / "plan.yaml"
    plan = Plan.from_yaml(carried.read_text(), str(carried))
    kept = tuple(e for e in plan.entries if "chain12/app1" not in e.source)
    carried.write_text(dataclasses.replace(plan, entries=kept).to_yaml())
    layer = Digest.parse(images[1].blob_digests[-1])
    assert (base / "blobs" / "sha256" / layer.hex).exists()  # stored, unnamed

    out = cli("archive", "verify", str(inc))
    assert out.code == ExitCode.INCOMPLETE, out.err
    unheld = [ln for ln in out.err.splitlines() if "does not hold it" in ln]
    assert len(unheld) == len(images[1].blob_digests), out.err
    assert any(layer.short in ln and "chain12/app1:v1" in ln for ln in unheld), out.err
    assert all("base archive base beside it" in ln for ln in unheld), out.err
    held = len(images[0].blob_digests)
    assert f"{held} blobs are held by the base archive base beside it" in out.out, out.out

    shutil.move(base, tmp_path / "elsewhere")
    out = cli("archive", "verify", str(inc))
    assert out.code == 0, out.err
    assert f"{left_out} blobs are expected from the base archive base, not checked" in out.out


def test_archive_verify_of_an_intact_increment_is_no_integrity_failure_for_its_base_s_fault(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Whether `archive verify` exits INTEGRITY is decided where a digest or size mismatch is
    found in the archive itself, never from a problem's text: an intact increment beside a
    base named `bytes-2026` that lacks an image, or beside a split base whose volume is cut
    short (its error says "N bytes, the volume list says M"), is INCOMPLETE."""
    refs, _images_seeded = _images(plain_registry, "chain14")
    usb = tmp_path / "usb"
    base, inc = usb / "bytes-2026", usb / "inc"
    _save(cli, tmp_path, refs[:2], base)
    _save(cli, tmp_path, refs, inc, base)
    index_file = base / "index.json"
    index = json.loads(index_file.read_text())
    index["manifests"] = [
        m for m in index["manifests"] if "chain14/app1" not in json.dumps(m.get("annotations"))
    ]
    index_file.write_text(json.dumps(index))
    carried = base / "transship" / "plan.yaml"
    plan = Plan.from_yaml(carried.read_text(), str(carried))
    kept = tuple(e for e in plan.entries if "chain14/app1" not in e.source)
    carried.write_text(dataclasses.replace(plan, entries=kept).to_yaml())
    out = cli("archive", "verify", str(inc))
    assert out.code == ExitCode.INCOMPLETE, out.err
    assert "the base archive bytes-2026 beside it does not hold it" in out.err, out.err

    split = tmp_path / "split"
    listing = tmp_path / "split.txt"
    listing.write_text("\n".join(refs[:2]) + "\n")
    out = cli("save", "--images", str(listing), "-o", str(split / "tkg.tar"), "--split-size",
              "64K", "-q")  # fmt: skip
    assert out.code == 0, out.err
    _save(cli, tmp_path, refs, split / "tkg-2.tar", split / "tkg.tar.001")
    assert cli("archive", "verify", str(split / "tkg-2.tar")).code == 0
    last = sorted(split.glob("tkg.tar.0*"))[-1]
    last.write_bytes(last.read_bytes()[:-1])  # cut short on the way
    out = cli("archive", "verify", str(split / "tkg-2.tar"))
    assert out.code == ExitCode.INCOMPLETE, out.err
    assert "the volume list says" in out.err and "cannot be read" in out.err, out.err


def test_an_increment_given_as_dot_from_inside_finds_its_base_beside_it(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`archive verify .` and `save --since .` from inside a directory archive: its base is
    beside the directory (`..`/<base>), not inside it (Path('.').parent is '.')."""
    refs, images = _images(plain_registry, "chain15")
    usb = tmp_path / "usb"
    base, inc = usb / "base", usb / "inc"
    _save(cli, tmp_path, refs[:2], base)
    _save(cli, tmp_path, refs[:1] + refs[2:], inc, base)
    monkeypatch.chdir(inc)
    out = cli("archive", "verify", ".")
    assert out.code == 0, out.err
    held = len(images[0].blob_digests)
    assert f"{held} blobs are held by the base archive base beside it" in out.out, out.out
    _save(cli, tmp_path, refs, usb / "inc2", Path("."))
    carried = _blobs(usb / "inc2")
    assert carried.isdisjoint(images[1].blob_digests)  # base's, found beside inc (`..`/base)
    assert carried.isdisjoint(images[2].blob_digests)  # inc's own


def test_an_increment_given_as_dot_is_named_by_its_directory_and_its_base_absolute(
    cli: CLI,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`.` has no name (Path('.').name is '', Path('.').parent is '.'): from inside an
    increment whose base is gone, `save --since .` warns naming the directory, and `serve .`
    names where the base should be as an absolute path, not a relative `base`."""
    refs, _seeded = _images(plain_registry, "chain17")
    usb = tmp_path / "usb"
    base, inc = usb / "base", usb / "inc"
    _save(cli, tmp_path, refs[:1], base)
    _save(cli, tmp_path, refs, inc, base)  # app0's blobs left out: base holds them
    away = tmp_path / "away"
    away.mkdir()
    shutil.move(base, away / base.name)
    listing = tmp_path / "chain17.txt"
    listing.write_text("\n".join(refs) + "\n")
    monkeypatch.chdir(inc)
    with caplog.at_level("WARNING", logger="transship.archive"):
        out = cli("save", "--images", str(listing), "-o", str(usb / "inc2"), "--since", ".")
    assert out.code == 0, out.err
    said = [r.getMessage() for r in caplog.records if r.name == "transship.archive"]
    assert len(said) == 1, said
    assert "--since .: inc is an increment on top of base, which is not beside it" in said[0]
    assert f"({usb / 'base'})" in said[0], said
    out = cli("serve", ".")
    assert out.code == ExitCode.USAGE, out.err
    assert f"on top of base, which is not beside it ({usb / 'base'})" in out.error_line, out.err


def test_archive_verify_blames_the_base_that_cannot_be_read_not_the_one_above_it(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """inc on b1 on b0, b0 no finished save (an image its plan lists is not in it): the
    problem names b0 as the base that cannot be read, under b1; not b1, which is fine."""
    refs, _images_seeded = _images(plain_registry, "chain16")
    usb = tmp_path / "usb"
    b0, b1, inc = usb / "b0", usb / "b1", usb / "inc"
    _save(cli, tmp_path, refs[:1], b0)
    _save(cli, tmp_path, refs[:2], b1, b0)
    _save(cli, tmp_path, refs, inc, b1)
    index_file = b0 / "index.json"
    index = json.loads(index_file.read_text())
    index["manifests"] = []
    index_file.write_text(json.dumps(index))
    out = cli("archive", "verify", str(inc))
    assert out.code == ExitCode.INCOMPLETE, out.err
    line = next(ln for ln in out.err.splitlines() if "cannot be read" in ln)
    assert "the base archive b0, under b1 beside it, cannot be read" in line, line


def _chain_of_three(
    cli: CLI, reg: RegistryProcess, tmp_path: Path, name: str
) -> tuple[Path, Digest]:
    """base, mid (on base), inc (on mid), directories side by side; a layer only base holds."""
    refs, images = _images(reg, name)
    usb = tmp_path / "usb"
    _save(cli, tmp_path, refs[:1], usb / "base")
    _save(cli, tmp_path, refs[:2], usb / "mid", usb / "base")
    _save(cli, tmp_path, refs, usb / "inc", usb / "mid")
    return usb / "inc", Digest.parse(images[0].blob_digests[-1])


def _recording_opens(monkeypatch: pytest.MonkeyPatch) -> list[OCILayout | OCILayoutTar]:
    """Every base the load hint opens (`ops.load.open_archive`), to see each is closed."""
    opened: list[OCILayout | OCILayoutTar] = []
    real = load_ops.open_archive

    def recording(path: Path) -> OCILayout | OCILayoutTar:
        layout = real(path)
        opened.append(layout)
        return layout

    monkeypatch.setattr(load_ops, "open_archive", recording)
    return opened


def _closed(layout: OCILayout | OCILayoutTar) -> bool:
    return bool(layout._closed) if isinstance(layout, OCILayout) else False


def test_a_load_hint_asked_as_the_load_closes_leaves_no_base_open(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob missing asked for after (or while) the job closes: the bases the hint opens are
    closed, not kept in a set nobody closes any more."""
    inc, layer = _chain_of_three(cli, plain_registry, tmp_path, "chain20")
    job = LoadJob.open(inc)
    opened = _recording_opens(monkeypatch)

    async def late_hint() -> str:
        await job.close()
        assert job.layout.missing_blob_hint is not None
        return await job.layout.missing_blob_hint(layer)

    assert "(base holds it)" in asyncio.run(late_hint())
    assert len(opened) == 2 and all(_closed(base) for base in opened)


def test_load_closes_every_hint_base_when_closing_one_fails(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inc, layer = _chain_of_three(cli, plain_registry, tmp_path, "chain21")
    job = LoadJob.open(inc)
    opened = _recording_opens(monkeypatch)

    async def failing_close() -> None:
        raise OSError("the stick was pulled")

    async def hint_then_close() -> None:
        assert job.layout.missing_blob_hint is not None
        assert "(base holds it)" in await job.layout.missing_blob_hint(layer)
        assert len(opened) == 2
        opened[0].close = failing_close  # type: ignore[method-assign]
        with pytest.raises(OSError, match="the stick was pulled"):
            await job.close()

    asyncio.run(hint_then_close())
    assert _closed(opened[1])


def test_a_cancelled_load_hint_closes_the_base_its_thread_opened(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inc, layer = _chain_of_three(cli, plain_registry, tmp_path, "chain22")
    job = LoadJob.open(inc)
    opened: list[OCILayout | OCILayoutTar] = []
    real = load_ops.open_archive
    started, go, done = threading.Event(), threading.Event(), threading.Event()

    def held_open(path: Path) -> OCILayout | OCILayoutTar:
        started.set()
        go.wait(60)  # a guard against a hang, not a synchronisation
        try:
            layout = real(path)
            opened.append(layout)
            return layout
        finally:
            done.set()

    monkeypatch.setattr(load_ops, "open_archive", held_open)

    async def cancelled() -> None:
        assert job.layout.missing_blob_hint is not None
        hint = asyncio.ensure_future(job.layout.missing_blob_hint(layer))
        assert await asyncio.to_thread(started.wait, 60)
        hint.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await hint
        assert await asyncio.to_thread(done.wait, 60)
        await job.close()

    asyncio.run(cancelled())
    assert len(opened) == 1 and _closed(opened[0])


def test_load_repair_hints_from_the_bases_it_linked_without_opening_them_again(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inc, layer = _chain_of_three(cli, plain_registry, tmp_path, "chain23")
    job = LoadJob.open(inc, repair=True)
    opened = _recording_opens(monkeypatch)

    async def repair_hint() -> str:
        try:
            await job.read_bases()
            assert job.layout.missing_blob_hint is not None
            return await job.layout.missing_blob_hint(layer)
        finally:
            await job.close()

    assert "base holds it: run `transship load base --repair`" in asyncio.run(repair_hint())
    assert opened == []
