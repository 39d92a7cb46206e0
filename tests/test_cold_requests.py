"""Requests into a cold destination: one catalog request instead of a tag list per repository.

Counted in a real docker-registry's access log (and the Harbor emulator's records): a missing
repository costs no tag list and no manifest HEAD, a partly filled destination lists and HEADs
only what it holds, a refused catalog (a token without `registry:catalog:*`, Harbor for
non-admins) costs that one request and the tag lists as before, a rerun still skips everything
with a HEAD per tag, and a tag that moved at the destination is copied again. The catalog walk
itself is checked against distribution's path-aware order with one name per page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from clirunner import CLI
from harness.faultproxy import Fault
from harness.harbor import ADMIN, ADMIN_PASSWORD, HarborEmulator
from harness.pki import PKI
from harness.registry import USERNAME, AccessLogEntry, RegistryProcess
from harness.seed import Image, SeedClient, build_images_sharing_base, seed_image, seed_index
from harness.skopeo import Skopeo
from harness.tokenserver import TokenServer

from transship.remote import Registry, RegistryOptions
from transship.remote.auth import Credentials
from transship.remote.tls import load_ca

_WRITES = {"PUT", "POST", "PATCH", "DELETE"}
CREDS = "alice:s3cret-Pa55"
BOB = ("bob", "bob-Pa55-secret")


def _manifest_reads(entries: list[AccessLogEntry]) -> list[AccessLogEntry]:
    return [e for e in entries if e.method in ("HEAD", "GET") and "/manifests/" in e.path]


def _tag_lists(entries: list[AccessLogEntry]) -> list[AccessLogEntry]:
    return [e for e in entries if e.method == "GET" and re.search(r"/tags/list", e.path)]


def _catalogs(entries: list[AccessLogEntry]) -> list[AccessLogEntry]:
    return [e for e in entries if e.method == "GET" and e.path.startswith("/v2/_catalog")]


def _repository(entry: AccessLogEntry) -> str:
    return re.sub(r"^/v2/(.+?)/(manifests|tags|blobs)/.*$", r"\1", entry.path)


def _images(client: SeedClient, repos: int, count: int, seed: int) -> tuple[list[str], list[Image]]:
    """`count` small images spread over `repos` repositories `cold/app<i>` of the source."""
    images = build_images_sharing_base(seed, count, base_sizes=(50_000,), layer_sizes=(20_000,))
    refs = []
    for i, image in enumerate(images):
        repo = f"cold/app{i % repos}"
        client.push_image(repo, image, f"v{i}")
        refs.append(f"{repo}:v{i}")
    return refs, images


def test_cold_copy_asks_the_catalog_once_and_lists_and_heads_nothing(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    paths, images = _images(client, 3, 8, seed=161)
    seed_index(plain_registry, "cold/multi", "v1", seed=162)
    refs = [f"{plain_registry.host}/{p}" for p in [*paths, "cold/multi:v1"]]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    dest = make_registry("plain")
    args = ("copy", "--images", str(listing), "--dest", f"{dest.host}/mirror")

    out = cli(*args)
    assert out.code == 0, out.err
    dest.wait_for_log(r"PUT /v2/mirror/cold/multi/manifests/v1")
    cold = [e for e in dest.access_log() if e.path != "/v2/"]
    assert not _manifest_reads(cold), "a manifest was HEADed or read in a missing repository"
    assert not _tag_lists(cold), "a tag list was asked for although the catalog answered"
    [catalog] = _catalogs(cold)  # one request for the 4 repositories, near their prefix
    assert catalog.status == 200 and unquote(catalog.path).endswith("last=mirror/cold")
    reads = [e for e in cold if e.method in ("HEAD", "GET")]
    writes = [e for e in cold if e.method in _WRITES]
    assert reads == [catalog] and len(writes) > 20 * len(reads)

    mark = dest.sync_log()
    again = cli(*args, "--report", str(tmp_path / "again.json"))
    assert again.code == 0, again.err
    dest.wait_for_log(r"HEAD /v2/mirror/cold/multi/manifests/v1", since=mark)
    rerun = [e for e in dest.access_log(since=mark) if e.path != "/v2/"]
    assert not [e for e in rerun if e.method in _WRITES], "a no-op rerun wrote something"
    # the catalog stands in for the first check's tag list; after it the destination looks
    # complete: a HEAD per tag is the whole cost, one request more than the tags, as before
    assert len(_catalogs(rerun)) == 1 and not _tag_lists(rerun)
    assert len([e for e in rerun if e.method == "HEAD"]) == len(refs) == len(rerun) - 1
    assert '"copied"' not in (tmp_path / "again.json").read_text()

    # The destination's tag moves (another writer): its repository is in the catalog, so the
    # tag is HEADed, found pointing elsewhere and copied again; nothing is trusted blindly.
    SeedClient.for_registry(dest).push_image("mirror/cold/app0", images[1], "v0")
    mark = dest.sync_log()
    moved = cli(*args)
    assert moved.code == 0, moved.err
    dest.wait_for_log(r"PUT /v2/mirror/cold/app0/manifests/v0", since=mark)
    assert dest.requests("PUT", r"/v2/mirror/cold/app0/manifests/v0$", since=mark)
    assert skopeo(dest, "mirror/cold/app0:v0") == skopeo(plain_registry, "cold/app0:v0")


def test_a_partly_filled_destination_lists_and_heads_only_the_repositories_it_holds(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    images = build_images_sharing_base(171, 8, base_sizes=(40_000,), layer_sizes=(10_000,))
    refs = []
    for i, image in enumerate(images):
        client.push_image(f"part/app{i % 4}", image, f"v{i}")
        refs.append(f"{plain_registry.host}/part/app{i % 4}:v{i}")
    dest = make_registry("tls_basic")
    held = SeedClient.for_registry(dest)
    held.push_image("mirror/part/app1", images[1], "v1")  # one of its two tags
    held.push_image("mirror/part/app3", images[3], "v3")
    held.push_image("mirror/part/app3", images[7], "v7")  # both of its tags
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    mark = dest.sync_log()
    out = cli(
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-ca",
        str(dest.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--report",
        str(tmp_path / "report.json"),
    )
    assert out.code == 0, out.err
    dest.wait_for_log(r"PUT /v2/mirror/part/app\d/manifests/v\d", since=mark)
    dest.sync_log()
    entries = [e for e in dest.access_log(since=mark) if e.path != "/v2/"]
    assert len(_catalogs(entries)) == 1
    checked = {_repository(e) for e in _tag_lists(entries) + _manifest_reads(entries)}
    assert checked and checked <= {"mirror/part/app1", "mirror/part/app3"}
    report = json.loads((tmp_path / "report.json").read_text())
    statuses = sorted(e["status"] for e in report["entries"])
    assert statuses == ["copied"] * 5 + ["skipped"] * 3
    for i in range(8):
        assert skopeo(dest, f"mirror/part/app{i % 4}:v{i}") == images[i].manifest


def test_a_refused_catalog_costs_one_request_and_falls_back_to_tag_lists(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    make_token_server: Callable[..., TokenServer],
    pki: PKI,
    tmp_path: Path,
) -> None:
    client = SeedClient.for_registry(plain_registry)
    paths, _ = _images(client, 3, 6, seed=181)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(f"{plain_registry.host}/{p}" for p in paths) + "\n")
    tokens = make_token_server(catalog_users=frozenset())  # alice may not read the catalog
    dest = make_registry("tls_token", token_server=tokens)
    mark = dest.sync_log()
    out = cli(
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/mirror",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
    )
    assert out.code == 0, out.err
    assert "catalog" not in out.err.lower()  # silent
    dest.wait_for_log(r"PUT /v2/mirror/cold/app\d/manifests/v\d", since=mark)
    dest.sync_log()
    entries = [e for e in dest.access_log(since=mark) if e.path != "/v2/"]
    [refused] = _catalogs(entries)
    assert refused.status == 401  # insufficient_scope, taken as the answer: no retry
    lists = _tag_lists(entries)  # then exactly as without a catalog
    assert sorted(_repository(e) for e in lists) == [f"mirror/cold/app{i}" for i in range(3)]
    assert {e.status for e in lists} == {404} and not _manifest_reads(entries)
    asked = [r for r in tokens.token_requests(status=None) if "registry:catalog:*" in r.scopes]
    assert len(asked) == 1 and asked[0].access == ()  # a token was issued, without the scope


# -- Harbor: the catalog is for system admins --------------------------------------------------


@pytest.fixture
def harbor(make_registry: Callable[..., RegistryProcess], pki: PKI) -> Iterator[HarborEmulator]:
    emulator = HarborEmulator(
        make_registry("plain"), tls=pki.server, users={ADMIN: ADMIN_PASSWORD, BOB[0]: BOB[1]}
    ).start()
    emulator.add_project("tkg")
    yield emulator
    emulator.stop()


@pytest.mark.parametrize("user", ["admin", "bob"])
def test_harbor_catalog_for_admins_and_tag_lists_for_everyone_else(
    cli: CLI,
    plain_registry: RegistryProcess,
    harbor: HarborEmulator,
    pki: PKI,
    tmp_path: Path,
    user: str,
) -> None:
    client = SeedClient.for_registry(plain_registry)
    paths, _ = _images(client, 3, 6, seed=191)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(f"{plain_registry.host}/{p}" for p in paths) + "\n")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}" if user == "admin" else ":".join(BOB)
    out = cli(
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{harbor.host}/tkg",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        creds,
    )
    assert out.code == 0, out.err
    v2 = [r for r in harbor.records if r.path.startswith("/v2/") and r.path != "/v2/"]
    catalogs = [r for r in v2 if r.path.startswith("/v2/_catalog")]
    lists = [r for r in v2 if "/tags/list" in r.path]
    assert not [r for r in v2 if r.method in ("GET", "HEAD") and "/manifests/" in r.path]
    if user == "admin":
        # Harbor wants `last` to name an existing repository (400): asked again from the start
        assert [r.status for r in catalogs] == [400, 200] and lists == []
    else:
        # a Basic challenge to a Bearer token: the one refusal, nothing re-authenticated
        assert [r.status for r in catalogs] == [401] and len(lists) == 3


# -- the walk against distribution's order ---------------------------------------------------


async def test_catalog_near_a_prefix_pages_distributions_path_order_without_missing_a_name(
    make_registry,
) -> None:
    """One name per page: paging that stopped at the first name past the prefix *as a
    string* would miss bench/tkg-x, which distribution lists after bench/tkg/x."""
    reg = make_registry("plain")
    names = [
        "bench/tkf",
        "bench/tkg",
        "bench/tkg-x",
        "bench/tkg.y",
        "bench/tkg/x",
        "bench/tkg/x/deep",
        "bench/tkg0",
        "bench/tkh",
        "other/app",
    ]
    for n, name in enumerate(names):
        seed_image(reg, name, "v1", seed=200 + n, layer_sizes=(100,))
    registry = Registry(reg.host, RegistryOptions(catalog_page_size=1))

    async def near(prefix: str, max_pages: int = 20) -> tuple[frozenset[str] | None, int]:
        # access lines are written after the replies: count a call's pages only once the log
        # has settled, before (the previous call's last line) and after it
        mark = reg.sync_log()
        found = await registry.existing_repositories(prefix, max_pages=max_pages)
        reg.sync_log()
        return found, len(_catalogs(reg.access_log(since=mark)))

    try:
        # pages: bench/tkg/x, bench/tkg/x/deep, bench/tkg-x (found), bench/tkg.y (past: stop)
        assert await near("bench/tkg-") == ({"bench/tkg-x"}, 4)
        assert await near("bench/tkg/") == ({"bench/tkg/x", "bench/tkg/x/deep"}, 3)
        found, pages = await near("bench/tkg")
        assert found == {n for n in names if n.startswith("bench/tkg")}
        assert pages == 8  # from bench/tkf to bench/tkh: other/app is never asked for
        assert await near("", max_pages=3) == (None, 3)  # too many pages: not used
    finally:
        await registry.close()


async def test_a_token_without_the_catalog_scope_is_one_refused_request(
    make_registry, make_token_server: Callable[..., TokenServer], pki: PKI
) -> None:
    tokens = make_token_server(catalog_users=frozenset())
    reg = make_registry("tls_token", token_server=tokens)
    seed_image(reg, "some/app", "v1", seed=210)
    options = RegistryOptions(
        ca=load_ca(str(pki.ca_pem_path)), credentials=Credentials(USERNAME, "s3cret-Pa55")
    )
    registry = Registry(reg.host, options)
    try:
        mark = reg.sync_log()
        assert await registry.existing_repositories("some/", max_pages=5) is None
        assert await registry.existing_tags("some/app") == {"v1"}  # the run carries on
        reg.wait_for_log(r"tags/list", since=mark)
        [refused] = _catalogs(reg.access_log(since=mark))
        assert refused.status == 401
    finally:
        await registry.close()
    with tokens.override(catalog_users=frozenset({USERNAME})):
        granted = Registry(reg.host, options)
        try:
            assert await granted.existing_repositories("some/", max_pages=5) == {"some/app"}
        finally:
            await granted.close()


async def test_a_catalog_answer_that_is_no_repository_list_is_not_asked_again(
    make_registry, make_fault_proxy
) -> None:
    """The catalog only spares requests: an answer that does not parse (here a byte flipped on
    the way) is not fetched again under the retry budget; the tag lists tell instead."""
    reg = make_registry("plain")
    seed_image(reg, "some/app", "v1", seed=211)
    proxy = make_fault_proxy(reg, Fault.flip(r"/v2/_catalog", at=0.0, count=1))
    registry = Registry(proxy.host, RegistryOptions(plain_http=True))
    try:
        assert await registry.existing_repositories("some/", max_pages=5) is None
        assert await registry.existing_tags("some/app") == {"v1"}
        assert len(proxy.log("GET", r"/v2/_catalog")) == 1
        assert await registry.existing_repositories("some/", max_pages=5) == {"some/app"}
    finally:
        await registry.close()
