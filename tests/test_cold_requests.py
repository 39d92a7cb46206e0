"""Requests into a cold destination: one tag list per repository instead of a HEAD per tag.

Counted in a real docker-registry's access log: a missing repository costs no manifest HEAD,
a rerun still skips everything with a HEAD per tag and one tag list, and a tag that moved at
the destination is copied again.
"""

from __future__ import annotations

import re
from pathlib import Path

from clirunner import CLI
from harness.registry import AccessLogEntry, RegistryProcess
from harness.seed import SeedClient, build_images_sharing_base, seed_index
from harness.skopeo import Skopeo

_WRITES = {"PUT", "POST", "PATCH", "DELETE"}


def _manifest_reads(entries: list[AccessLogEntry]) -> list[AccessLogEntry]:
    return [e for e in entries if e.method in ("HEAD", "GET") and "/manifests/" in e.path]


def _tag_lists(entries: list[AccessLogEntry]) -> list[AccessLogEntry]:
    return [e for e in entries if e.method == "GET" and re.search(r"/tags/list", e.path)]


def test_cold_copy_lists_tags_once_per_repository_and_heads_nothing(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    images = build_images_sharing_base(161, 8, base_sizes=(50_000,), layer_sizes=(20_000,))
    refs = []
    for i, image in enumerate(images):
        repo = f"cold/app{i % 3}"
        client.push_image(repo, image, f"v{i}")
        refs.append(f"{plain_registry.host}/{repo}:v{i}")
    seed_index(plain_registry, "cold/multi", "v1", seed=162)
    refs.append(f"{plain_registry.host}/cold/multi:v1")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    dest = make_registry("plain")
    args = ("copy", "--images", str(listing), "--dest", f"{dest.host}/mirror")

    out = cli(*args)
    assert out.code == 0, out.err
    dest.wait_for_log(r"PUT /v2/mirror/cold/multi/manifests/v1")
    cold = [e for e in dest.access_log() if e.path != "/v2/"]
    assert not _manifest_reads(cold), "a manifest was HEADed or read in a missing repository"
    lists = _tag_lists(cold)
    assert len(lists) == 4 and {e.status for e in lists} == {404}  # one per repository
    reads = [e for e in cold if e.method in ("HEAD", "GET")]
    writes = [e for e in cold if e.method in _WRITES]
    assert writes and len(reads) <= 4  # only the tag lists: a handful against the writes

    mark = dest.log_offset()
    again = cli(*args, "--report", str(tmp_path / "again.json"))
    assert again.code == 0, again.err
    dest.wait_for_log(r"HEAD /v2/mirror/cold/multi/manifests/v1", since=mark)
    rerun = [e for e in dest.access_log(since=mark) if e.path != "/v2/"]
    assert not [e for e in rerun if e.method in _WRITES], "a no-op rerun wrote something"
    # the first check lists its repository; after that the destination looks complete and
    # the other repositories are not listed: a HEAD per tag is the whole cost
    assert len(_tag_lists(rerun)) == 1
    assert len([e for e in rerun if e.method == "HEAD"]) == len(refs)  # a HEAD per listed tag
    assert '"copied"' not in (tmp_path / "again.json").read_text()

    # The destination's tag moves (another writer): it is listed, so it is HEADed, found
    # pointing elsewhere and copied again; the tag list alone is never trusted.
    SeedClient.for_registry(dest).push_image("mirror/cold/app0", images[1], "v0")
    mark = dest.log_offset()
    moved = cli(*args)
    assert moved.code == 0, moved.err
    dest.wait_for_log(r"PUT /v2/mirror/cold/app0/manifests/v0", since=mark)
    assert dest.requests("PUT", r"/v2/mirror/cold/app0/manifests/v0$", since=mark)
    assert skopeo(dest, "mirror/cold/app0:v0") == skopeo(plain_registry, "cold/app0:v0")
