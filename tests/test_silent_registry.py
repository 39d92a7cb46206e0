"""A registry that accepts connections but never answers: exit 6 in seconds, not silence.

Real parts: a TCP server on loopback (plain, or TLS with the test CA and the handshake done)
that reads requests and never writes a byte. The answer timeout and the health window are
shortened for the test (`ANSWER_TIMEOUT`, `health.DEFAULT_POLICY`), as in
tests/test_dead_registry.py; the defaults' arithmetic is checked on its own.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from clirunner import CLI
from harness.faultproxy import Fault
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image

import transship.remote.health as health
import transship.remote.transport as transport
from transship.errors import ExitCode
from transship.remote.health import HealthPolicy, NoAnswerError, connection_failure

ANSWER = 0.5


@pytest.fixture(params=["plain", "tls"])
def silent(request: pytest.FixtureRequest, pki: PKI) -> Iterator[tuple[str, str]]:
    """(kind, host:port) of a server that takes requests and answers nothing."""
    context = None
    if request.param == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server.chain_path, pki.server.key_path)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    alive = True
    held: list[socket.socket] = []

    def hold(conn: socket.socket) -> None:
        try:
            if context is not None:  # the handshake completes (a loaded machine is slow)
                conn.settimeout(5)
                conn = context.wrap_socket(conn, server_side=True)
            conn.settimeout(0.2)  # then: read, answer nothing, notice the end of the test
            held.append(conn)
            while alive:
                try:
                    if not conn.recv(65536):
                        return
                except TimeoutError:
                    continue
        except (OSError, ssl.SSLError):
            return

    def serve() -> None:
        while alive:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=hold, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    # the address it is bound to: `localhost` may resolve to ::1 first
    yield request.param, f"127.0.0.1:{server.getsockname()[1]}"
    alive = False
    thread.join(timeout=5)
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "ANSWER_TIMEOUT", ANSWER)
    monkeypatch.setattr(health, "DEFAULT_POLICY", HealthPolicy(window=1.0, failures=3))


@pytest.mark.usefixtures("short_waits")
def test_a_registry_that_never_answers_is_exit_6_with_a_line_meanwhile(
    cli: CLI,
    plain_registry: RegistryProcess,
    pki: PKI,
    silent: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="transship.remote")
    kind, host = silent
    seed_image(plain_registry, "silent/pause", "3.5", seed=31)
    tls = ["--dest-ca", str(pki.ca_pem_path)] if kind == "tls" else ["--dest-plain-http"]
    start = time.monotonic()
    out = cli(
        "copy", plain_registry.ref("silent/pause:3.5"), f"{host}/x/pause", "--src-plain-http",
        *tls, "-v",
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert out.code == ExitCode.UNREACHABLE, out.err
    line = out.error_line
    assert host in line and "sends no answer" in line, line
    assert seconds < 15, f"took {seconds:.1f} s"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"GET {host}/v2/: no answer in {ANSWER:g} s" in said  # said while it waits


@pytest.mark.usefixtures("short_waits")
def test_a_registry_that_answered_once_may_then_be_slow(
    cli: CLI, plain_registry: RegistryProcess, make_registry, make_fault_proxy, skopeo
) -> None:
    """Only the first contact is held to the answer timeout: after it, a manifest or tag
    list that takes longer (Harbor's catalog, a proxy cache fetching upstream) is slowness,
    waited for, and never a strike towards "down"."""
    seed_image(plain_registry, "slow/pause", "3.5", seed=32)
    dest = make_registry("plain")
    stall = Fault.stall(4 * ANSWER, r"/manifests/", method="GET|HEAD")
    slow = make_fault_proxy(plain_registry, stall)
    out = cli("copy", slow.ref("slow/pause:3.5"), dest.ref("x/pause:3.5"), "--src-plain-http",
              "--dest-plain-http", "-q")  # fmt: skip
    assert out.code == ExitCode.OK, out.err
    assert slow.log(fault="stall")  # the answers really were slower than ANSWER
    assert skopeo.digest(dest, "x/pause:3.5") == skopeo.digest(plain_registry, "slow/pause:3.5")


@pytest.mark.usefixtures("short_waits")
def test_a_path_that_drops_connections_says_so(cli: CLI, plain_registry: RegistryProcess) -> None:
    """A listener whose queue is full drops further connection attempts, as a firewall that
    drops packets does: the verdict names time-outs while connecting, not a silent registry."""
    seed_image(plain_registry, "dropped/pause", "3.5", seed=33)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        out = cli("copy", plain_registry.ref("dropped/pause:3.5"), f"127.0.0.1:{port}/x/pause",
                  "--src-plain-http", "--dest-plain-http")  # fmt: skip
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert out.code == ExitCode.UNREACHABLE, out.err
    assert "connection attempts time out" in out.error_line, out.error_line


def test_no_answer_is_a_strike_a_slow_one_is_not() -> None:
    assert connection_failure(NoAnswerError(10)) == (
        "it accepts connections but sends no answer (no answer in 10 s)"
    )
    assert connection_failure(NoAnswerError(10, connecting=True)) == (
        "connection attempts time out (no connection in 10 s; a firewall dropping them?)"
    )
    assert connection_failure(TimeoutError()) is None  # mid-answer: a slow registry


def test_the_defaults_end_a_silent_registry_in_tens_of_seconds() -> None:
    """With nothing shortened: three unanswered `/v2/` of ANSWER_TIMEOUT each (plus the
    backoff between) reach the verdict; the window is far shorter than that."""
    policy = health.DEFAULT_POLICY
    assert policy.window < 2 * transport.ANSWER_TIMEOUT
    worst = policy.failures * transport.ANSWER_TIMEOUT + 2 * 1.0  # backoff: <= 0.5 s, 1 s
    assert 20 <= worst <= 45
    assert transport.TransportOptions().read_timeout > 10 * transport.ANSWER_TIMEOUT
