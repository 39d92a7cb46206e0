"""The protocol client (`transship.remote`) against real registries: auth, uploads, mounts."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, seed_image
from harness.tokenserver import TokenServer

from transship.digest import Digest
from transship.errors import IntegrityError, NotFoundError, RegistryError, RetryableError
from transship.manifest import Descriptor
from transship.remote import Registry, RegistryOptions
from transship.remote.auth import Credentials
from transship.remote.tls import load_ca

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def client(reg: RegistryProcess, pki: PKI, **kw: object) -> Registry:
    creds = reg.credentials
    options = RegistryOptions(
        ca=load_ca(str(pki.ca_pem_path)) if reg.tls else None,
        credentials=Credentials(*creds) if creds else None,
        **kw,  # type: ignore[arg-type]
    )
    return Registry(reg.host, options)


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def blob(data: bytes) -> Descriptor:
    return Descriptor(LAYER, Digest.of(data), len(data))


async def test_token_cached_per_scope_and_refreshed(
    make_token_server,
    make_registry,
    pki: PKI,  # type: ignore[no-untyped-def]
) -> None:
    tokens: TokenServer = make_token_server(lifetime=2, registry_lifetime=2)
    reg = make_registry("tls_token", token_server=tokens)
    image = seed_image(reg, "cache/img", "v1", seed=21)
    tokens.reset()
    registry = client(reg, pki)
    try:
        for _ in range(5):
            await registry.get_manifest("cache/img", "v1")
            assert await registry.has_blob("cache/img", Digest.parse(image.config.digest))
        assert len(tokens.token_requests()) == 1  # one scope, one token
        await asyncio.sleep(2.5)  # the registry now rejects that token
        manifest = await registry.get_manifest("cache/img", "v1")
        assert str(manifest.digest) == image.digest
        assert len(tokens.token_requests()) == 2
    finally:
        await registry.close()


async def test_token_service_hiccups_are_retried(make_token_server, make_registry, pki: PKI):  # type: ignore[no-untyped-def]
    """The token fetch sits inside the retried region: a 503 from the token service, or a
    token service that stalls past `token_timeout`, costs one more try, not the request."""
    tokens: TokenServer = make_token_server()
    reg = make_registry("tls_token", token_server=tokens)
    image = seed_image(reg, "hiccup/img", "v1", seed=24)
    other = seed_image(reg, "hiccup/other", "v1", seed=26)
    registry = client(reg, pki, backoff_base=0.01)
    try:
        tokens.reset()
        tokens.hiccups = [503]
        manifest = await registry.get_manifest("hiccup/img", "v1")
        assert str(manifest.digest) == image.digest
        assert [r.status for r in tokens.token_requests(status=None)] == [503, 200]
    finally:
        await registry.close()

    # A loaded machine signs and serves a token in well under 3 s; the stall lasts 10 s.
    registry = client(reg, pki, backoff_base=0.01, token_timeout=3.0)
    try:
        tokens.reset()
        tokens.hiccups = [10.0]
        start = time.monotonic()
        manifest = await registry.get_manifest("hiccup/other", "v1")
        assert str(manifest.digest) == other.digest
        assert time.monotonic() - start < 8.0, "waited for the stalled token service"
        assert tokens.hiccups == [] and len(tokens.token_requests()) >= 1
    finally:
        await registry.close()


async def test_token_service_down_fails_after_the_retry_budget(
    make_token_server, make_registry, pki: PKI
):  # type: ignore[no-untyped-def]
    tokens: TokenServer = make_token_server()
    reg = make_registry("tls_token", token_server=tokens)
    seed_image(reg, "hiccup/down", "v1", seed=25)
    registry = client(reg, pki, backoff_base=0.01, retries=2)
    try:
        tokens.reset()
        tokens.hiccups = [503] * 10
        with pytest.raises(RetryableError, match=r"token service .* answered 503"):
            await registry.get_manifest("hiccup/down", "v1")
        assert len(tokens.token_requests(status=503)) == 3  # the first try and 2 retries
    finally:
        await registry.close()


async def test_chunked_upload_and_integrity(tls_registry: RegistryProcess, pki: PKI) -> None:
    registry = client(tls_registry, pki, chunk_size=100_000)
    data = os.urandom(350_000)
    try:
        mark = tls_registry.log_offset()
        await registry.put_blob("client/chunked", blob(data), chunks(data, 30_000))
        assert await registry.has_blob("client/chunked", Digest.of(data))
        assert tls_registry.wait_for_log(r"PUT /v2/client/chunked/blobs/uploads/", since=mark)
        patches = tls_registry.requests("PATCH", r"/v2/client/chunked/blobs/uploads/", since=mark)
        assert len(patches) == 4  # 350 kB in 100 kB chunks
        async with registry.open_blob("client/chunked", blob(data)) as stream:
            assert b"".join([c async for c in stream]) == data
        # a stream whose bytes do not match the descriptor never lands
        bad = bytearray(data)
        bad[1000] ^= 0xFF
        for chunk_size in (100_000, 10_000_000):
            registry.options.chunk_size = chunk_size
            # the registry refuses `?digest=` (our own streams verify themselves on read)
            with pytest.raises(RegistryError, match="digest"):
                await registry.put_blob("client/bad", blob(data), chunks(bytes(bad)))
            assert not await registry.has_blob("client/bad", Digest.of(data))
            assert not await registry.has_blob("client/bad", Digest.of(bytes(bad)))
    finally:
        await registry.close()


async def test_mount_and_fallback(tls_registry: RegistryProcess, pki: PKI) -> None:
    registry = client(tls_registry, pki)
    data = os.urandom(5000)
    try:
        await registry.put_blob("client/mount-a", blob(data), chunks(data))
        assert await registry.mount_blob("client/mount-b", Digest.of(data), "client/mount-a")
        assert await registry.has_blob("client/mount-b", Digest.of(data))
        other = os.urandom(5000)
        # refused (blob not in the source repo): the open upload session is used for the PUT
        assert not await registry.mount_blob("client/mount-c", Digest.of(other), "client/mount-a")
        await registry.put_blob("client/mount-c", blob(other), chunks(other))
        assert await registry.has_blob("client/mount-c", Digest.of(other))
    finally:
        await registry.close()


async def test_a_refused_mount_leaves_one_session_which_the_upload_uses(
    tls_registry: RegistryProcess, pki: PKI
) -> None:
    """The engine asks "is it here?" by mounting from the repository itself, which opens an
    upload session when it is not. After a refused cross-repository mount already opened one,
    that question is a HEAD: no second session is opened and left behind, and the upload
    uses the first. When the blob turns out to be here, the open session is cancelled."""
    registry = client(tls_registry, pki)
    absent, present = os.urandom(3000), os.urandom(3000)
    since = tls_registry.log_offset()
    try:
        assert not await registry.mount_blob("client/two-a", Digest.of(absent), "client/nowhere")
        assert not await registry.mount_blob("client/two-a", Digest.of(absent), "client/two-a")
        await registry.put_blob("client/two-a", blob(absent), chunks(absent))
        assert await registry.has_blob("client/two-a", Digest.of(absent))

        await registry.put_blob("client/two-b", blob(present), chunks(present))
        assert not await registry.mount_blob("client/two-b", Digest.of(present), "client/nowhere")
        assert await registry.mount_blob("client/two-b", Digest.of(present), "client/two-b")
    finally:
        await registry.close()
    await asyncio.sleep(0.3)  # access lines are written just after the answer
    log = [e for e in tls_registry.access_log(since) if "/blobs/" in e.path]
    posts = [e for e in log if e.method == "POST"]
    assert [(e.status, "two-a" in e.path) for e in posts] == [
        (202, True),  # the refused mount; the upload PUTs into its session
        (202, False),  # two-b's own upload
        (202, False),  # two-b's refused mount, cancelled below
    ]
    assert [e.method for e in log if "two-a" in e.path] == ["POST", "HEAD", "PUT", "HEAD"]
    deletes = [e for e in log if e.method == "DELETE"]
    assert len(deletes) == 1 and "/blobs/uploads/" in deletes[0].path


async def test_tag_listing(plain_registry: RegistryProcess, pki: PKI) -> None:
    seeder = SeedClient.for_registry(plain_registry)
    image = seed_image(plain_registry, "client/tags", "t0", seed=22)
    for i in range(1, 7):
        seeder.push_manifest("client/tags", f"t{i}", image.manifest, image.media_type)
    registry = client(plain_registry, pki, tag_page_size=2)
    try:
        assert sorted(await registry.list_tags("client/tags")) == [f"t{i}" for i in range(7)]
        assert await registry.list_tags("client/never-pushed") == []
        # the engine's TagIndex: a set, and None (not empty) for a repository never pushed
        assert await registry.existing_tags("client/tags") == {f"t{i}" for i in range(7)}
        assert await registry.existing_tags("client/never-pushed") is None
        # distribution 2.8 ignores `n` and answers in one page, so `Link` following is covered
        # by the unit test of `_next_link`; here the result must simply be complete.
    finally:
        await registry.close()


async def test_head_and_missing(plain_registry: RegistryProcess, pki: PKI) -> None:
    image = seed_image(plain_registry, "client/head", "v1", seed=23)
    registry = client(plain_registry, pki)
    try:
        found = await registry.head_manifest("client/head", "v1")
        assert found is not None and str(found.digest) == image.digest
        assert await registry.head_manifest("client/head", "nope") is None
        with pytest.raises(NotFoundError, match="not found"):
            await registry.get_manifest("client/head", "nope")
        by_digest = await registry.get_manifest("client/head", image.digest)
        assert by_digest.raw == image.manifest
    finally:
        await registry.close()


async def test_redirected_blob_download_drops_credentials() -> None:
    """A registry that redirects blob GETs to another host (as to S3 storage) gets no
    credentials sent there, and the redirected bytes are still verified against the digest.

    distribution's filesystem driver never redirects, so the two hosts here are small
    HTTP servers: the front answers like a registry that uses Basic auth and redirects.
    """
    data = os.urandom(20_000)
    digest = Digest.of(data)
    seen: list[tuple[str, str | None]] = []

    async def storage(request: web.Request) -> web.StreamResponse:
        seen.append(("storage", request.headers.get("Authorization")))
        body = data if request.path.startswith("/good/") else data[:-1] + bytes([data[-1] ^ 1])
        return web.Response(body=body)

    async def front(request: web.Request) -> web.StreamResponse:
        seen.append(("front", request.headers.get("Authorization")))
        if "Authorization" not in request.headers:
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="front"'})
        if request.path == "/v2/":
            return web.Response()
        repo = request.match_info["tail"].split("/")[2]  # v2/r/<good or bad>/blobs/…
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{ports[0]}/{repo}/{digest}")

    runners = []
    ports: list[int] = []
    for handler in (storage, front):
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    registry = Registry(
        f"127.0.0.1:{ports[1]}",
        RegistryOptions(plain_http=True, credentials=Credentials("alice", "s3cret-Pa55")),
    )
    try:
        async with registry.open_blob("r/good", blob(data)) as stream:
            assert b"".join([c async for c in stream]) == data
        assert ("storage", None) in seen
        assert all(auth is None for who, auth in seen if who == "storage")
        assert any(auth for who, auth in seen if who == "front")
        with pytest.raises(IntegrityError, match="does not match"):
            async with registry.open_blob("r/bad", blob(data)) as stream:
                async for _ in stream:
                    pass
    finally:
        await registry.close()
        for runner in runners:
            await runner.cleanup()


async def test_redirect_from_https_to_plain_http_is_refused(pki: PKI) -> None:
    """Blob bytes must not leave TLS: an HTTPS registry redirecting to http:// is refused."""
    import ssl

    from transship.errors import RegistryError

    data = os.urandom(1000)

    async def front(request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/":
            return web.Response()
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/blob")

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server.chain_path, pki.server.key_path)
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", front)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    registry = Registry(f"127.0.0.1:{port}", RegistryOptions(ca=load_ca(str(pki.ca_pem_path))))
    try:
        with pytest.raises(RegistryError, match="redirected to plain HTTP"):
            async with registry.open_blob("r/x", blob(data)) as stream:
                async for _ in stream:
                    pass
    finally:
        await registry.close()
        await runner.cleanup()


async def test_a_push_token_also_carries_pull_on_the_origin_most_mounted_from(
    make_token_server,
    make_registry,
    pki: PKI,  # type: ignore[no-untyped-def]
) -> None:
    """A copy mounts shared base layers into every repository from where they first landed:
    once that origin is known, each repository's push token asks pull on it too, so its
    mounts need no token of their own (one token per repository, not per pair)."""
    tokens: TokenServer = make_token_server()
    reg = make_registry("tls_token", token_server=tokens)
    image = seed_image(reg, "hub/base", "v1", seed=31)
    layer = Digest.parse(image.layers[0].digest)
    tokens.reset()
    registry = client(reg, pki, destination=True)
    repositories = [f"app/r{i}" for i in range(5)]
    try:
        for repository in repositories:  # the engine's order: a check, then the mounts
            assert await registry.head_manifest(repository, "v1") is None
            assert await registry.mount_blob(repository, layer, "hub/base")
    finally:
        await registry.close()
    asked = [r.scopes for r in tokens.token_requests()]
    # r0: its push token, then one for the pair; every later repository: one token, with the hub
    assert len(asked) == 1 + len(repositories)
    assert all("repository:hub/base:pull" in scopes for scopes in asked[2:])
    reg.sync_log()  # access lines are written after the replies
    mounts = [e for e in reg.access_log() if e.method == "POST" and "mount=" in e.path]
    assert [e.status for e in mounts] == [201] * len(repositories)


async def test_a_push_token_granted_less_than_asked_is_asked_again_exactly(
    make_token_server,
    make_registry,
    pki: PKI,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """The token service grants scope by scope and may leave out the extra pull: the mounts
    that relied on it (two at once, as a manifest's layers go) are refused (401
    insufficient_scope) and tried again with a token asked for exactly their scopes, not
    reported as a permission error; that hub is not asked again."""
    tokens: TokenServer = make_token_server()
    reg = make_registry("tls_token", token_server=tokens)
    image = seed_image(reg, "hub/base", "v1", seed=32, layer_sizes=(300, 400))
    layers = [Digest.parse(layer.digest) for layer in image.layers]
    granted = tokens.grant
    withheld: list[list[str]] = []

    def grant(user: str | None, scopes: list[str]) -> list[dict[str, object]]:
        scopes = list(scopes)
        if "repository:app/r2:pull,push" in scopes and not withheld:  # once, for r2's push
            withheld.append(scopes)
            scopes = [s for s in scopes if s != "repository:hub/base:pull"]
        return granted(user, scopes)

    monkeypatch.setattr(tokens, "grant", grant)
    registry = client(reg, pki, destination=True)
    try:
        for repository in ("app/r0", "app/r1", "app/r2", "app/r3"):
            assert await registry.head_manifest(repository, "v1") is None
            mounted = await asyncio.gather(
                *(registry.mount_blob(repository, layer, "hub/base") for layer in layers)
            )
            assert mounted == [True, True], repository
    finally:
        await registry.close()
    assert withheld and "repository:hub/base:pull" in withheld[0]  # it was asked, not granted
    asked = [r.scopes for r in tokens.token_requests()]
    exact = ("repository:app/r2:pull,push", "repository:hub/base:pull")
    assert [a for a in asked if sorted(a) == sorted(exact)], asked  # asked again, exactly
    assert not any(
        "repository:hub/base:pull" in a and "repository:app/r3:pull,push" in a and len(a) > 2
        for a in asked
    )  # and the short hub not added again
    reg.sync_log()  # access lines are written after the replies
    statuses = [e.status for e in reg.access_log() if e.method == "POST" and "mount=" in e.path]
    assert statuses.count(201) == 8 and 1 <= statuses.count(401) <= 2
