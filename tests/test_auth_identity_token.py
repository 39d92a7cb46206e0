"""`identitytoken` in a Docker config. Against a token service without OAuth2 (its POST answers
404, as the harness TokenServer's does by default): transship asks by GET instead, as
go-containerregistry does, with Basic credentials only when the entry's `auth` holds a password
too. Against one with OAuth2 (`TokenServer(oauth2=True)`: the token spec's POST with
`grant_type=refresh_token`): the identity token is posted, and a refusal is one line."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image
from harness.skopeo import Skopeo

from transship.errors import ExitCode

IDENTITY = "opaque-refresh-tok-XYZ"


def _docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, str]) -> Path:
    home = tmp_path / "docker-id"
    home.mkdir()
    path = home / "config.json"
    path.write_text(json.dumps({"auths": {entry.pop("host"): entry}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    return path


def test_identity_token_falls_back_to_get_with_the_config_password(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = make_token_server(anonymous=False)
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    auth = base64.b64encode(b"alice:s3cret-Pa55").decode()
    entry = {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    _docker_config(tmp_path, monkeypatch, entry)
    image = seed_image(plain_registry, "idtok/src", "v1", seed=301)
    ca = str(pki.ca_pem_path)

    push = cli("copy", plain_registry.ref("idtok/src:v1"), reg.ref("idtok/one:v1"), "--dest-ca", ca)
    assert push.code == 0, push.err
    assert skopeo(reg, "idtok/one:v1") == image.manifest
    methods = [(r.method, r.status, r.user) for r in tokens.token_requests(status=None)]
    assert ("POST", 404, None) in methods  # the OAuth2 flow was tried first
    assert ("GET", 200, "alice") in methods  # then the token spec's GET, as alice

    pull = cli("copy", reg.ref("idtok/one:v1"), plain_registry.ref("idtok/back:v1"), "--src-ca", ca)
    assert pull.code == 0, pull.err
    assert skopeo(plain_registry, "idtok/back:v1") == image.manifest


def test_identity_token_alone_pulls_anonymously_and_a_push_names_the_token(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`docker login` with an identity token stores `auth` as "user:" (no password): the GET
    then goes without credentials (ggcr), which gets an anonymous pull token and no push."""
    tokens = make_token_server()
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    seed_image(reg, "idtok/pub", "v1", seed=302)
    seed_image(plain_registry, "idtok/src2", "v1", seed=303)
    auth = base64.b64encode(b"alice:").decode()
    config = _docker_config(
        tmp_path, monkeypatch, {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    )
    ca = str(pki.ca_pem_path)

    pull = cli("copy", reg.ref("idtok/pub:v1"), plain_registry.ref("idtok/pub:v1"), "--src-ca", ca)
    assert pull.code == 0, pull.err

    push = cli(
        "copy", "-vv", plain_registry.ref("idtok/src2:v1"), reg.ref("idtok/two:v1"), "--dest-ca", ca
    )
    assert push.code == ExitCode.AUTH, push.err
    line = push.error_line
    assert "identitytoken" in line and str(config) in line, line
    assert "docker login" in line and "--dest-creds" in line, line
    assert IDENTITY not in push.err + push.out  # -vv included


def test_identity_token_refused_by_the_token_service_is_said_so(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password in `auth` the service no longer takes, sent by GET since the service has no
    OAuth2: the identity token never went there, so the line says the password was wrong and
    names the config file, not that the identitytoken was refused."""
    tokens = make_token_server(anonymous=False)
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    seed_image(plain_registry, "idtok/src3", "v1", seed=304)
    auth = base64.b64encode(b"alice:wrong-password").decode()
    config = _docker_config(
        tmp_path, monkeypatch, {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    )
    out = cli(
        "copy",
        "-vv",
        plain_registry.ref("idtok/src3:v1"),
        reg.ref("idtok/three:v1"),
        "--dest-ca",
        str(pki.ca_pem_path),
    )
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line
    assert "wrong username or password" in line and str(config) in line, line
    assert "identitytoken" not in line, line
    assert IDENTITY not in out.err + out.out


def test_a_service_without_oauth2_is_posted_to_once_per_run(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pushing several repositories asks a token for each scope set: the POST that finds the
    service has no OAuth2 goes once, every other token is asked by GET at once."""
    tokens = make_token_server(anonymous=False)
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    auth = base64.b64encode(b"alice:s3cret-Pa55").decode()
    entry = {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    _docker_config(tmp_path, monkeypatch, entry)
    listing = tmp_path / "images.txt"
    refs = []
    for n in range(4):
        seed_image(plain_registry, f"idtok/many{n}", "v1", seed=305 + n)
        refs.append(plain_registry.ref(f"idtok/many{n}:v1"))
    listing.write_text("".join(f"{ref}\n" for ref in refs))
    out = cli(
        "copy", "--images", str(listing), "--dest", f"{reg.host}/pushed",
        "--src-plain-http", "--dest-ca", str(pki.ca_pem_path),
    )  # fmt: skip
    assert out.code == 0, out.err
    asked = tokens.token_requests(status=None)
    gets = [r for r in asked if r.method == "GET" and r.status == 200]
    assert len({r.scopes for r in gets}) >= 4, gets  # several scope sets: one token each
    assert [r.method for r in asked].count("POST") == 1, [(r.method, r.scopes) for r in asked]


def test_identity_token_is_taken_by_an_oauth2_token_service(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token service with OAuth2 (the spec's `POST realm`, `grant_type=refresh_token`) that
    knows the identity token: every token is asked by POST and granted to the user the
    token stands for; no GET, no password needed (`auth` as `docker login` leaves it)."""
    tokens = make_token_server(anonymous=False, oauth2=True, refresh_tokens={IDENTITY: "alice"})
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    auth = base64.b64encode(b"alice:").decode()
    _docker_config(
        tmp_path, monkeypatch, {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    )
    image = seed_image(plain_registry, "idtok/oauth", "v1", seed=310)
    ca = str(pki.ca_pem_path)

    push = cli("copy", plain_registry.ref("idtok/oauth:v1"), reg.ref("idtok/o1:v1"), "--dest-ca",
               ca)  # fmt: skip
    assert push.code == 0, push.err
    pull = cli("copy", reg.ref("idtok/o1:v1"), plain_registry.ref("idtok/o1b:v1"), "--src-ca", ca)
    assert pull.code == 0, pull.err
    asked = [(r.method, r.status, r.user) for r in tokens.token_requests(status=None)]
    assert asked and set(asked) == {("POST", 200, "alice")}, asked  # never a GET
    assert any("push" in s for r in tokens.token_requests() for s in r.scopes), asked
    assert skopeo(reg, "idtok/o1:v1") == image.manifest  # (skopeo asks by GET, as alice)
    assert skopeo(plain_registry, "idtok/o1b:v1") == image.manifest


def test_identity_token_refused_by_oauth2_is_one_auth_error_and_no_get(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OAuth2 token service that refuses the identity token (401: revoked, expired): one
    line saying the identitytoken was refused and naming the config, exit 3; the POST is not
    followed by a GET (the service has OAuth2: no fallback), nor sent again for each image's
    repository, and the token is never printed, -vv included."""
    tokens = make_token_server(anonymous=False, oauth2=True, refresh_tokens={})
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    refs = []
    for n in range(3):
        seed_image(plain_registry, f"idtok/oauth{n}", "v1", seed=311 + n)
        refs.append(plain_registry.ref(f"idtok/oauth{n}:v1"))
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{ref}\n" for ref in refs))
    auth = base64.b64encode(b"alice:").decode()
    config = _docker_config(
        tmp_path, monkeypatch, {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    )
    out = cli(
        "copy", "-vv", "--images", str(listing), "--dest", f"{reg.host}/o2",
        "--src-plain-http", "--dest-ca", str(pki.ca_pem_path),
    )  # fmt: skip
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line
    assert "refused the identitytoken" in line and str(config) in line, line
    assert "docker login" in line, line
    assert len([e for e in out.err.splitlines() if e.startswith("transship: error")]) == 1, out.err
    asked = [(r.method, r.status) for r in tokens.token_requests(status=None)]
    assert asked == [("POST", 401)], asked  # once for the run, and no GET after it
    assert IDENTITY not in out.err + out.out


def test_one_scope_denied_by_oauth2_fails_that_repository_alone(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_token_server,  # type: ignore[no-untyped-def]
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OAuth2 token service that takes the identity token but answers 403 for one
    repository's scope (the token is good, that access is not): that image fails, saying
    which scope was denied, and the others, asked after it, are copied; the identity token
    is not reported as refused, and is posted again for them."""
    tokens = make_token_server(
        anonymous=False, oauth2=True, refresh_tokens={IDENTITY: "alice"}, denied={"o3/deny0"}
    )
    reg: RegistryProcess = make_registry("tls_token", token_server=tokens)
    refs, images = [], {}
    for n, name in enumerate(("deny0", "ok1", "ok2")):
        images[name] = seed_image(plain_registry, f"o3/{name}", "v1", seed=321 + n)
        refs.append(plain_registry.ref(f"o3/{name}:v1"))
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{ref}\n" for ref in refs))
    auth = base64.b64encode(b"alice:").decode()
    _docker_config(
        tmp_path, monkeypatch, {"host": reg.host, "auth": auth, "identitytoken": IDENTITY}
    )
    out = cli(
        "copy", "--images", str(listing), "--dest", reg.host, "--parallel", "1",
        "--src-plain-http", "--dest-ca", str(pki.ca_pem_path),
    )  # fmt: skip
    assert out.code == ExitCode.PARTIAL, out.err  # one image failed, the others copied
    assert "no permission for repository:o3/deny0" in out.err, out.err
    assert "refused the identitytoken" not in out.err, out.err
    for name in ("ok1", "ok2"):
        assert skopeo(reg, f"o3/{name}:v1") == images[name].manifest
    granted = {s for r in tokens.token_requests() for s in r.scopes}
    assert any("o3/ok2" in s for s in granted), granted
    assert IDENTITY not in out.err + out.out
