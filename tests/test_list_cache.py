"""A rerun of the same image list reuses the last resolution while no tag it depends on moved.

Against real registries: the second `copy --images` asks the source one HEAD per listed tag
and per signature tag, nothing else; a re-signed image brings its new signature, a tag moved
at the source is copied again, and a kept resolution that is corrupt, tampered with or too
old is ignored (resolved afresh) and written anew.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import AccessLogEntry, RegistryProcess
from harness.seed import SeedClient, build_image, seed_index
from harness.skopeo import Skopeo
from test_attachments import signature
from test_engine import generated

from transship.digest import Digest
from transship.memory import MemoryEndpoint
from transship.ops.listcache import ListCache
from transship.plan.attachments import cosign_tag
from transship.plan.model import Plan, PlanEntry

PREFIX = "lcache"


def _source_requests(source: RegistryProcess, since: int) -> list[AccessLogEntry]:
    return [e for e in source.access_log(since) if e.path.startswith(f"/v2/{PREFIX}/")]


def _kept(cache: Path) -> Path:
    [found] = list((cache / "transship" / "resolved").glob("*.json"))
    return found


def test_a_list_rerun_reuses_its_resolution_until_a_tag_moves(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    source = plain_registry
    client = SeedClient.for_registry(source)
    app, moved = build_image(171, layer_sizes=(4000,)), build_image(172, layer_sizes=(4000,))
    client.push_image(f"{PREFIX}/app", app, "v1")
    sig_tag = cosign_tag(Digest.parse(app.digest), "sig")
    client.push_image(f"{PREFIX}/app", signature(app.digest, f"{source.host}/app", 1), sig_tag)
    seed_index(source, f"{PREFIX}/multi", "v1", seed=173)
    listing = tmp_path / "images.txt"
    listing.write_text(f"{source.host}/{PREFIX}/app:v1\n{source.host}/{PREFIX}/multi:v1\n")
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    args = (
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "-q",
        "--report",
        str(report),
    )

    def rerun() -> tuple[list[AccessLogEntry], dict[str, int]]:
        mark = source.log_offset()
        out = cli(*args)
        assert out.code == 0, out.err
        source.wait_for_log(rf"HEAD /v2/{PREFIX}/multi/manifests/v1", since=mark)
        statuses: dict[str, int] = {}
        for entry in json.loads(report.read_text())["entries"]:
            statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
        return _source_requests(source, mark), statuses

    first = cli(*args)
    assert first.code == 0, first.err
    assert _kept(cache).is_file()

    asked, statuses = rerun()
    assert sorted((e.method, e.path) for e in asked) == [
        ("HEAD", f"/v2/{PREFIX}/app/manifests/{sig_tag}"),
        ("HEAD", f"/v2/{PREFIX}/app/manifests/v1"),
        ("HEAD", f"/v2/{PREFIX}/multi/manifests/v1"),
    ]
    assert statuses == {"skipped": 3}  # app, its signature, the index

    # Re-signed: the signature tag moved, so the list is resolved afresh and it is copied.
    resigned = signature(app.digest, f"{source.host}/app", 2)
    client.push_image(f"{PREFIX}/app", resigned, sig_tag)
    asked, statuses = rerun()
    assert any(e.method == "GET" for e in asked) and statuses == {"copied": 1, "skipped": 2}
    assert skopeo(dest, f"mirror/{PREFIX}/app:{sig_tag}") == resigned.manifest

    # The listed tag moved at the source: never the kept digest, the new image is copied.
    client.push_image(f"{PREFIX}/app", moved, "v1")
    asked, statuses = rerun()
    assert any(e.method == "GET" for e in asked) and statuses["copied"] == 1
    assert skopeo(dest, f"mirror/{PREFIX}/app:v1") == moved.manifest
    asked, statuses = rerun()  # and that resolution is kept in turn
    assert {e.method for e in asked} == {"HEAD"} and statuses == {"skipped": 2}

    # Corrupt, tampered with (the body no longer matches its checksum), or cut short: not
    # used, the list is resolved afresh, nothing is copied again, and the file is rewritten.
    kept = _kept(cache)
    good = json.loads(kept.read_text())
    tampered = {**good, "body": good["body"].replace(moved.digest, app.digest)}
    assert tampered["body"] != good["body"]
    for damage in ("not json {", json.dumps(tampered), kept.read_text()[:100]):
        kept.write_text(damage)
        asked, statuses = rerun()
        assert any(e.method == "GET" for e in asked) and statuses == {"skipped": 2}
        rewritten = json.loads(_kept(cache).read_text())
        assert hashlib.sha256(rewritten["body"].encode()).hexdigest() == rewritten["sha256"]
    asked, statuses = rerun()  # the rewritten resolution is used
    assert {e.method for e in asked} == {"HEAD"} and statuses == {"skipped": 2}
    assert skopeo(dest, f"mirror/{PREFIX}/app:v1") == moved.manifest


def test_a_kept_resolution_is_trusted_for_a_while_and_for_its_own_list_only(
    tmp_path: Path,
) -> None:
    image, other = build_image(181, layer_sizes=(1000,)), build_image(182, layer_sizes=(1000,))
    source = MemoryEndpoint(label="src", writable=True)
    source.add(generated(image), "app", ("v1",))
    entry = PlanEntry.create("src.example/app:v1", "dst.example/m/app")
    listed = Plan((entry,), destination_prefix="dst.example/m")
    resolved = Plan((replace(entry, source_digest=Digest.parse(image.digest)),))
    cache = ListCache(tmp_path)

    async def load(cache: ListCache, *, attachments: bool = True) -> Plan | None:
        kept = await cache.load(listed, lambda _: source, 4, attachments=attachments)
        return None if kept is None else kept.plan

    assert asyncio.run(load(cache)) is None  # nothing kept yet
    cache.store(listed, resolved, ("a warning",), attachments=True)
    kept = asyncio.run(cache.load(listed, lambda _: source, 4, attachments=True))
    assert kept is not None and kept.warnings == ("a warning",)
    assert kept.plan.entries == resolved.entries
    assert asyncio.run(load(cache, attachments=False)) is None  # other options, other plan
    assert asyncio.run(load(ListCache(tmp_path, max_age=0.0))) is None  # too old
    source.add(generated(other), "app", ("v1",))  # the tag moved
    assert asyncio.run(load(cache)) is None
