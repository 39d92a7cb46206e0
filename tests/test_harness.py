"""Proof that the registry test harness works, so failures elsewhere point at our client."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from harness.pki import PKI
from harness.registry import RegistryProcess, closed_port, open_connections
from harness.seed import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMGPKG_BUNDLE_LABEL,
    OCI_INDEX,
    OCI_MANIFEST,
    Format,
    SeedClient,
    build_image,
    build_images_sharing_base,
    build_index,
    parse_challenge,
    sha256_digest,
)
from harness.skopeo import Skopeo
from harness.tokenserver import TokenServer, basic_header, parse_scope

MakeRegistry = Callable[..., RegistryProcess]


@pytest.fixture(params=["plain_registry", "tls_registry", "token_registry"])
def registry(request: pytest.FixtureRequest) -> RegistryProcess:
    """Each shared registry mode in turn."""
    reg: RegistryProcess = request.getfixturevalue(request.param)
    return reg


def _get(
    url_host: str, port: int, path: str, *, ctx: ssl.SSLContext | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection(url_host, port, timeout=5)
    else:
        conn = http.client.HTTPSConnection(url_host, port, context=ctx, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _token(server: TokenServer, query: str, auth: str | None) -> tuple[int, dict[str, object]]:
    """Call the token service the way a client would."""
    ctx = ssl.create_default_context(cafile=str(server.signer.ca.cert_path))
    headers = {"Authorization": auth} if auth else {}
    status, _, body = _get("127.0.0.1", server.port, f"/token?{query}", ctx=ctx, headers=headers)
    return status, json.loads(body)


# ---- processes and challenges ------------------------------------------------------------


def test_plain_registry_answers_without_auth(plain_registry: RegistryProcess) -> None:
    status, headers = plain_registry.probe()
    assert status == 200
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert plain_registry.url == f"http://127.0.0.1:{plain_registry.port}"
    assert plain_registry.ca_pem_path is None and plain_registry.credentials is None


def test_tls_registry_asks_for_basic(tls_registry: RegistryProcess, pki: PKI) -> None:
    status, headers = tls_registry.probe()
    assert status == 401
    assert parse_challenge(headers["www-authenticate"]) == ("basic", {"realm": "transship-test"})
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_pem_path == pki.ca.cert_path
    assert tls_registry.credentials == ("alice", "s3cret-Pa55")


def test_token_registry_asks_for_bearer(
    token_registry: RegistryProcess, token_server: TokenServer
) -> None:
    status, headers = token_registry.probe()
    assert status == 401
    scheme, params = parse_challenge(headers["www-authenticate"])
    assert scheme == "bearer"
    assert params == {"realm": token_server.realm, "service": token_registry.service}
    _, headers = token_registry.probe("/v2/some/repo/tags/list")
    assert parse_challenge(headers["www-authenticate"])[1]["scope"] == "repository:some/repo:pull"


def test_tls_without_auth_and_fresh_registry_is_empty(make_registry: MakeRegistry) -> None:
    reg = make_registry("tls")
    assert reg.probe()[0] == 200
    client = SeedClient.for_registry(reg)
    assert client.list_tags("nothing/here") == []
    image = build_image(10)
    client.push_image("restart/me", image, "v1")
    port = reg.port
    reg.restart()  # same port, same storage
    assert reg.port == port and client.list_tags("restart/me") == ["v1"]
    reg.stop()
    assert not reg.running


def test_registry_process_ignores_hostile_environment(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """REGISTRY_* variables break docker-registry; SSL_CERT_FILE must not matter to us."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("REGISTRY_HTTP_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    reg = make_registry("tls_basic")
    assert reg.pid is not None
    environ = Path(f"/proc/{reg.pid}/environ").read_bytes().split(b"\0")
    leaked = sorted(v.split(b"=")[0] for v in environ if v.startswith((b"REGISTRY_", b"SSL_")))
    assert leaked == []  # none of the hostile variables reached the registry process
    # it serves on its own port with its own auth, despite REGISTRY_HTTP_ADDR / _AUTH_FILE
    anonymous = SeedClient.for_registry(reg, anonymous=True)
    assert anonymous.request("GET", "/v2/").status == 401
    image = build_image(11)
    client = SeedClient.for_registry(reg)  # trusts the test CA, whatever SSL_CERT_FILE says
    assert client.push_image("env/check", image, "v1") == image.digest
    assert client.get_manifest("env/check", "v1")[0] == image.manifest


def test_restart_on_a_port_held_for_a_moment_waits_for_it(make_registry: MakeRegistry) -> None:
    """Coming back on the same port retries while another process still holds it."""
    reg = make_registry("plain")
    port = reg.port
    reg.stop()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    threading.Timer(1.0, holder.close).start()
    reg.start(port=port)
    assert reg.port == port and reg.probe()[0] == 200
    assert "address already in use" in reg.read_log()  # it did meet the holder


def test_closed_port_refuses_and_open_connections_see_clients(make_registry: MakeRegistry) -> None:
    with closed_port() as dead:
        host, _, port = dead.partition(":")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=5).close()
        with socket.socket() as other, pytest.raises(OSError):  # nobody else can take it
            other.bind((host, int(port)))
    reg = make_registry("plain")
    reg.wait_idle(quiet=0.1)  # the readiness probe's connection, closed by the client
    assert open_connections(reg.port) == []
    with socket.create_connection(("127.0.0.1", reg.port), timeout=5):
        assert len(open_connections(reg.port)) == 1
        with pytest.raises(AssertionError, match="still serves 1 connection"):
            reg.wait_idle(timeout=0.3)
    reg.wait_idle(quiet=0.1)
    assert open_connections(reg.port) == []


# ---- seeding and independent verification ------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_seed_image_and_index_match_skopeo(
    registry: RegistryProcess, skopeo: Skopeo, fmt: Format
) -> None:
    repo = f"seed/{fmt}-{registry.mode.replace('_', '-')}"
    client = SeedClient.for_registry(registry)
    image = build_image(1, fmt=fmt, labels=IMGPKG_BUNDLE_LABEL)
    assert client.push_image(repo, image, "img") == image.digest
    index = build_index(2, fmt=fmt)
    assert client.push_index(repo, index, "multi") == index.digest

    body, ctype = client.get_manifest(repo, "img")
    assert body == image.manifest and ctype == image.media_type
    assert ctype == (OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST)
    for blob in image.blobs:
        assert client.get_blob(repo, blob.digest) == blob.data

    raw = skopeo(registry, f"{repo}:img")
    assert raw == image.manifest
    assert sha256_digest(raw) == image.digest
    raw_index = skopeo(registry, f"{repo}:multi")
    assert raw_index == index.manifest and sha256_digest(raw_index) == index.digest
    assert json.loads(raw_index)["mediaType"] == (OCI_INDEX if fmt == "oci" else DOCKER_LIST)
    child = index.images[1]
    assert skopeo.digest(registry, f"{repo}@{child.digest}") == child.digest
    assert [d["platform"]["architecture"] for d in json.loads(index.manifest)["manifests"]] == [
        "amd64",
        "arm64",
    ]


def test_skopeo_anonymous_pull_through_token_service(
    token_registry: RegistryProcess, skopeo: Skopeo
) -> None:
    image = build_image(3)
    SeedClient.for_registry(token_registry).push_image("anon/pull", image, "v1")
    assert skopeo(token_registry, "anon/pull:v1", anonymous=True) == image.manifest


def test_skopeo_copy_between_modes(
    plain_registry: RegistryProcess, token_registry: RegistryProcess, skopeo: Skopeo
) -> None:
    index = build_index(12, fmt="docker")
    SeedClient.for_registry(plain_registry).push_index("copy/src", index, "v1")
    skopeo.copy(plain_registry, "copy/src:v1", token_registry, "copy/dest:v1")
    assert skopeo.digest(token_registry, "copy/dest:v1") == index.digest


def test_seeding_is_deterministic_and_shares_base() -> None:
    a, b = build_image(7, fmt="docker"), build_image(7, fmt="docker")
    assert a.manifest == b.manifest and [x.data for x in a.blobs] == [x.data for x in b.blobs]
    assert build_image(8).digest != build_image(7).digest
    assert build_index(7).digest == build_index(7).digest

    images = build_images_sharing_base(5, 3, base_sizes=(4096, 100), layer_sizes=(10,))
    bases = {tuple(b.digest for b in img.layers[:2]) for img in images}
    assert len(bases) == 1
    assert len({img.layers[2].digest for img in images}) == 3
    assert images[0].blob_sizes[images[0].layers[0].digest] == images[0].layers[0].size

    labelled = build_image(1, labels=IMGPKG_BUNDLE_LABEL, layer_sizes=(50, 60, 70))
    config = json.loads(labelled.config.data)
    assert config["config"]["Labels"] == IMGPKG_BUNDLE_LABEL
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert len(config["rootfs"]["diff_ids"]) == 3


def test_upload_counts_from_log(make_registry: MakeRegistry) -> None:
    reg = make_registry("plain")
    client = SeedClient.for_registry(reg)
    images = build_images_sharing_base(9, 2, base_sizes=(2048,), layer_sizes=(100, 200))
    mark = reg.log_offset()
    client.push_image("count/a", images[0], "v1")
    assert reg.wait_for_log(r'"PUT /v2/count/a/manifests/v1 ', since=mark)
    assert len(reg.blob_uploads("count/a", since=mark)) == len(images[0].blobs) == 4

    mark = reg.log_offset()
    client.push_image("count/a", images[1], "v2")  # base layer already there
    assert reg.wait_for_log(r'"PUT /v2/count/a/manifests/v2 ', since=mark)
    assert len(reg.blob_uploads(since=mark)) == 3
    assert len(reg.requests("HEAD", r"/blobs/sha256:", since=mark)) == 4

    mark = reg.log_offset()
    assert client.mount_blob("count/b", images[0].layers[0].digest, "count/a")
    assert reg.wait_for_log(r'"POST /v2/count/b/blobs/uploads/\?', since=mark)
    assert len(reg.blob_mounts("count/b", since=mark)) == 1
    assert reg.blob_uploads(since=mark) == []
    assert reg.has_blob(images[0].layers[0].digest)


def test_foreign_layers_are_accepted(plain_registry: RegistryProcess) -> None:
    image = build_image(4, fmt="docker", foreign_layer_sizes=(300,))
    foreign = image.layers[0]
    assert foreign.media_type == DOCKER_FOREIGN_LAYER and foreign.urls
    client = SeedClient.for_registry(plain_registry)
    client.push_image("foreign/layer", image, "v1")
    assert not client.blob_exists("foreign/layer", foreign.digest)
    assert client.get_manifest("foreign/layer", "v1")[0] == image.manifest


# ---- token service -----------------------------------------------------------------------


def test_token_server_checks_credentials_and_scopes(
    token_server: TokenServer, token_registry: RegistryProcess, pki: PKI
) -> None:
    query = f"service={token_registry.service}&scope=repository:a/b:pull,push"
    status, body = _token(token_server, query, basic_header("alice", "wrong"))
    assert status == 401

    status, body = _token(token_server, query, basic_header("alice", "s3cret-Pa55"))
    assert status == 200 and body["token"] == body["access_token"]
    assert body["expires_in"] == token_server.lifetime and body["issued_at"]
    token = str(body["token"])
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and len(header["x5c"]) == 1
    claims = jwt.decode(
        token,
        pki.token_signer.cert.public_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience=token_registry.service,
        issuer=token_server.issuer,
    )
    assert claims["sub"] == "alice"
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull", "push"]}]

    status, body = _token(token_server, query, None)  # anonymous: pull only
    assert status == 200
    claims = jwt.decode(str(body["token"]), options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]}]

    with token_server.override(anonymous=False):
        assert _token(token_server, query, None)[0] == 401
    assert token_server.anonymous


def test_token_requests_are_counted(make_token_server: Callable[..., TokenServer]) -> None:
    server = make_token_server(lifetime=5)
    assert server.request_count == 0
    _token(server, "service=s&scope=repository:x:pull&scope=repository:y:push", None)
    _token(server, "service=s", basic_header("alice", "nope"))
    assert server.request_count == 2
    ok = server.token_requests()
    assert len(ok) == 1 and ok[0].scopes == ("repository:x:pull", "repository:y:push")
    assert ok[0].access == ({"type": "repository", "name": "x", "actions": ["pull"]},)
    server.reset()
    assert server.request_count == 0


def test_insufficient_scope_gives_401(
    token_registry: RegistryProcess, token_server: TokenServer
) -> None:
    pull_only = token_server.issue(
        token_registry.service or "", token_server.grant("alice", ["repository:scope/t:pull"])
    )
    conn = http.client.HTTPSConnection(
        "127.0.0.1", token_registry.port, context=token_registry.ssl_context(), timeout=5
    )
    conn.request(
        "POST",
        "/v2/scope/t/blobs/uploads/",
        body=b"",
        headers={"Authorization": f"Bearer {pull_only.token}", "Content-Length": "0"},
    )
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 401
    scheme, params = parse_challenge(resp.getheader("WWW-Authenticate") or "")
    assert scheme == "bearer"
    assert params["error"] == "insufficient_scope"
    # distribution builds this from a Go map: the action order varies between requests
    rtype, name, actions = parse_scope(params["scope"])
    assert (rtype, name, actions) == ("repository", "scope/t", frozenset({"pull", "push"}))


def test_registry_lifetime_defeats_leeway(
    token_registry: RegistryProcess, token_server: TokenServer
) -> None:
    """With registry_lifetime=0 the registry rejects the token at once despite 60 s leeway."""
    access = token_server.grant("alice", ["repository:exp/t:pull"])
    service = token_registry.service or ""
    with token_server.override(registry_lifetime=0):
        expired = token_server.issue(service, access)
    fresh = token_server.issue(service, access)
    ctx = token_registry.ssl_context()
    path = "/v2/exp/t/tags/list"
    status, headers, _ = _get(
        "127.0.0.1",
        token_registry.port,
        path,
        ctx=ctx,
        headers={"Authorization": f"Bearer {expired.token}"},
    )
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    status, _, _ = _get(
        "127.0.0.1",
        token_registry.port,
        path,
        ctx=ctx,
        headers={"Authorization": f"Bearer {fresh.token}"},
    )
    assert status == 404  # authorized; the repository simply does not exist
    assert expired.claims["exp"] < time.time()


# ---- PKI ---------------------------------------------------------------------------------


def test_bad_certificates_fail_verification(make_registry: MakeRegistry, pki: PKI) -> None:
    trusted = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    for cert, reason in [
        (pki.expired, "certificate has expired"),
        (pki.wrong_host, "IP address mismatch"),
        (pki.wrong_ca_server, "unable to get local issuer certificate"),
    ]:
        reg = make_registry("tls", cert=cert)
        assert reg.running
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            _get("127.0.0.1", reg.port, "/v2/", ctx=trusted, headers={})
        assert reg.ca_pem_path == pki.ca.cert_path
        reg.stop()
    # trusting the wrong CA fails against the good certificate too
    reg = make_registry("tls")
    wrong = ssl.create_default_context(cafile=str(pki.wrong_ca.cert_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        _get("127.0.0.1", reg.port, "/v2/", ctx=wrong, headers={})


def test_fault_per_key_caps_each_path(
    plain_registry: RegistryProcess, make_fault_proxy: Callable[..., Any]
) -> None:
    """`per_key=1`: every path is hit once at most, so the second ask of each gets through."""
    from harness.faultproxy import Fault

    fault = Fault.http(503, r"^/v2/", "GET", per_key=1)
    proxy = make_fault_proxy(plain_registry, fault)

    def status(path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    assert [status("/v2/") for _ in range(3)] == [503, 200, 200]
    assert [status("/v2/_catalog") for _ in range(2)] == [503, 200]
    assert fault.fired == 2 and fault.matched == 5
