"""Shared fixtures: a test PKI, a bearer token service and real `docker-registry` processes.

Session-scoped registries are shared by many tests: use a unique repository name per test
(e.g. from `request.node.name`), or take a fresh one from `make_registry`. Missing binaries
(`docker-registry`, `skopeo`, `htpasswd`) make these fixtures fail, never skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.pki import PKI, build_pki
from harness.registry import Mode, RegistryProcess
from harness.registry import closed_port as hold_closed_port
from harness.skopeo import Skopeo
from harness.tokenserver import TokenServer

pytest_plugins = ["clirunner"]  # the `cli` fixture

MakeRegistry = Callable[..., RegistryProcess]
MakeTokenServer = Callable[..., TokenServer]


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own `$XDG_CACHE_HOME` (landed log, kept resolutions, manifest store):
    a test never reads what an earlier one, or the machine's user, left in `~/.cache`.
    Tests that share a cache between runs set their own directory."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("TRANSSHIP_NO_CACHE", raising=False)
    return cache


#: What makes rich treat a pipe as a terminal (colours, the terminal's width, live bars) or
#: changes its width: a CI machine may set any of these, and the tests parse plain tables.
TERMINAL_VARS = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS", "LINES")


@pytest.fixture(autouse=True)
def plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output as on a pipe, 200 columns wide, whatever the machine's environment says.

    Set in `os.environ`, so the `cli` fixture and subprocesses started with
    `{**os.environ, ...}` both get it. A test that wants another width sets `COLUMNS` itself.
    """
    for var in TERMINAL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def closed_port() -> Iterator[Callable[[], str]]:
    """`closed_port() -> "127.0.0.1:PORT"`: connections there are refused until the test ends
    (the port stays bound, without listening, so no other process can take it meanwhile)."""
    with contextlib.ExitStack() as held:
        yield lambda: held.enter_context(hold_closed_port())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Test CA, wrong CA, server certs (good/expired/wrong host/wrong CA), token signer."""
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def token_server(pki: PKI) -> Iterator[TokenServer]:
    """HTTPS token service (test CA cert), user alice/s3cret-Pa55, anonymous pull allowed.

    Shared: change settings only via `with token_server.override(...)`, and call `reset()`
    before counting requests.
    """
    with TokenServer(pki.token_signer, tls=pki.server) as server:
        yield server


@pytest.fixture(scope="session")
def plain_registry(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """HTTP, no auth."""
    with RegistryProcess(tmp_path_factory.mktemp("registry-plain"), "plain", pki=pki) as reg:
        yield reg


@pytest.fixture(scope="session")
def tls_registry(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """HTTPS (test CA) + htpasswd Basic auth, alice / s3cret-Pa55 (mode `tls_basic`)."""
    with RegistryProcess(
        tmp_path_factory.mktemp("registry-tls-basic"), "tls_basic", pki=pki
    ) as reg:
        yield reg


@pytest.fixture(scope="session")
def token_registry(
    pki: PKI, token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """HTTPS (test CA) + bearer tokens from `token_server` (mode `tls_token`)."""
    with RegistryProcess(
        tmp_path_factory.mktemp("registry-tls-token"),
        "tls_token",
        pki=pki,
        token_server=token_server,
    ) as reg:
        yield reg


@pytest.fixture
def make_token_server(pki: PKI) -> Iterator[MakeTokenServer]:
    """Factory for a private token server: `make_token_server(lifetime=2, anonymous=False)`."""
    servers: list[TokenServer] = []

    def make(**kw: Any) -> TokenServer:
        kw.setdefault("tls", pki.server)
        server = TokenServer(pki.token_signer, **kw).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_registry(
    pki: PKI,
    token_server: TokenServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MakeRegistry]:
    """Factory for fresh, empty registries stopped at the end of the test.

    `make_registry(mode="plain", *, token_server=None, cert=None, extra_config=None, ...)`;
    `tls_token` uses the session `token_server` unless one is given; `cert=pki.expired` etc.
    serves a bad certificate.
    """
    registries: list[RegistryProcess] = []

    def make(mode: Mode = "plain", **kw: Any) -> RegistryProcess:
        if mode == "tls_token":
            kw.setdefault("token_server", token_server)
        kw.setdefault("pki", pki)
        reg = RegistryProcess(tmp_path_factory.mktemp(f"registry-{mode}"), mode, **kw)
        registries.append(reg)
        return reg.start()

    yield make
    for reg in registries:
        reg.stop()


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """`skopeo(registry, "repo:tag") -> bytes` (inspect --raw), plus `.run(*args)`."""
    return Skopeo.create(tmp_path_factory.mktemp("skopeo"))


@pytest.fixture
def make_fault_proxy() -> Iterator[Callable[..., Any]]:
    """Factory for fault-injecting proxies (`harness.faultproxy`), stopped after the test:
    `make_fault_proxy(registry, *faults, seed=0, **kw) -> FaultProxy`, already started, in front
    of `registry` (plain HTTP towards the client; trusts the registry's CA upstream)."""
    from harness.faultproxy import FaultProxy

    proxies: list[FaultProxy] = []

    def make(registry: RegistryProcess, *faults: Any, seed: int = 0, **kw: Any) -> FaultProxy:
        kw.setdefault("max_lifetime", 300)
        proxy = FaultProxy.for_registry(registry, faults, seed=seed, **kw).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
