"""A registry that cannot be reached at all stops the run: exit 6, one line, within 30 s.

Against real parts: a port nobody listens on (refused), a registry process stopped before or
during a run (and started again on the same port for the rerun), a name that does not resolve,
a server that fails the TLS handshake, and the fault proxy for registries that answer badly or
slowly (those keep their retries). The tracker itself (`transship.remote.health`) is unit-tested
with an injected clock that starts at zero, as on a freshly booted machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest
from clirunner import CLI, Outcome
from harness.faultproxy import Fault, FaultProxy
from harness.registry import RegistryProcess
from harness.registry import closed_port as hold_closed_port
from harness.seed import Image, SeedClient, build_image, build_images_sharing_base
from harness.skopeo import Skopeo

import transship.remote.health as health
from transship.errors import ExitCode, HostDownError
from transship.remote.health import HealthPolicy, HostHealth, connection_failure

MakeRegistry = Callable[..., RegistryProcess]
MakeProxy = Callable[..., FaultProxy]

ENTRIES = 55
DEADLINE = 30.0  # the bound for "a dead registry is reported", from start to exit
SHORT = HealthPolicy(window=0.05, failures=2)  # for tests that must be able to see a verdict


# -- the tracker ----------------------------------------------------------------------------


class FakeClock:
    """Starts at 0.0: a machine booted a moment ago."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def refused() -> aiohttp.ClientConnectorError:
    """A real refused connection, as aiohttp reports it."""
    async with aiohttp.ClientSession() as session:
        with hold_closed_port() as dead:
            try:
                await session.get(f"http://{dead}/v2/")
            except aiohttp.ClientConnectorError as exc:
                return exc
    raise AssertionError("a closed port answered")


def test_down_only_after_a_window_of_nothing_but_connection_failures(
    refused: aiohttp.ClientConnectorError,
) -> None:
    clock = FakeClock()
    tracker = HostHealth("reg.example:5000", HealthPolicy(window=8.0, failures=3), clock)
    for t in (0.0, 1.0, 2.0, 7.9):  # the first failure at clock 0.0 counts like any other
        clock.now = t
        tracker.failed(refused)
        tracker.check()
    clock.now = 8.0
    with pytest.raises(HostDownError) as caught:
        tracker.check()
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert "reg.example:5000" in message and "connection refused" in message
    assert "8 s" in message
    tracker.answered()  # a late answer does not revive it within the run
    with pytest.raises(HostDownError):
        tracker.check()


def test_an_answer_clears_the_record(refused: aiohttp.ClientConnectorError) -> None:
    clock = FakeClock()
    tracker = HostHealth("r", HealthPolicy(window=8.0, failures=3), clock)
    for t in (0.0, 3.0, 7.0):
        clock.now = t
        tracker.failed(refused)
    clock.now = 7.5
    tracker.answered()  # e.g. a 503: the registry is there
    for t in (9.0, 12.0, 16.0):
        clock.now = t
        tracker.failed(refused)
        tracker.check()  # the window counts from 9.0, not 0.0
    clock.now = 17.0
    assert tracker.down is not None


def test_too_few_failures_or_other_errors_are_no_verdict(
    refused: aiohttp.ClientConnectorError,
) -> None:
    clock = FakeClock()
    tracker = HostHealth("r", HealthPolicy(window=8.0, failures=3), clock)
    tracker.failed(refused)
    clock.now = 20.0
    tracker.failed(refused)
    for _ in range(50):  # timeouts and cut answers say nothing about the host
        tracker.failed(TimeoutError())
        tracker.failed(aiohttp.ServerDisconnectedError())
        tracker.failed(aiohttp.ClientPayloadError("cut"))
    clock.now = 100.0
    assert tracker.down is None
    tracker.check()


def test_what_counts_as_a_connection_failure(refused: aiohttp.ClientConnectorError) -> None:
    assert connection_failure(refused) == "connection refused"
    assert connection_failure(TimeoutError()) is None
    assert connection_failure(aiohttp.ServerDisconnectedError()) is None
    assert connection_failure(aiohttp.ClientOSError(104, "Connection reset by peer")) is None


async def test_backoff_wakes_when_the_host_is_found_down(
    refused: aiohttp.ClientConnectorError,
) -> None:
    tracker = HostHealth("r", HealthPolicy(window=0.3, failures=2))
    tracker.failed(refused)
    tracker.failed(refused)
    start = time.monotonic()
    with pytest.raises(HostDownError):
        await tracker.pause(60.0)
    assert time.monotonic() - start < 5.0


async def test_settle_waits_for_the_verdict(refused: aiohttp.ClientConnectorError) -> None:
    alive = HostHealth("r", HealthPolicy(window=30.0, failures=2))
    alive.failed(refused)
    alive.failed(refused)
    waiting = asyncio.ensure_future(alive.settle())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # undecided: neither the request's error nor a verdict yet
    alive.answered()  # another request got an answer: report this request's own error
    await asyncio.wait_for(waiting, 5.0)

    dead = HostHealth("r", HealthPolicy(window=0.3, failures=2))
    dead.failed(refused)
    dead.failed(refused)
    with pytest.raises(HostDownError):
        await asyncio.wait_for(dead.settle(), 5.0)

    healthy = HostHealth("r")
    await asyncio.wait_for(healthy.settle(), 1.0)  # nothing failed: returns at once


# -- a corpus of many entries ---------------------------------------------------------------


def seed_many(registry: RegistryProcess, count: int = ENTRIES, seed: int = 4101) -> list[str]:
    """`count` small images sharing a base layer: `many/appN:v1`."""
    client = SeedClient.for_registry(registry)
    images = build_images_sharing_base(seed, count, base_sizes=(8_000,), layer_sizes=(600,))
    refs = []
    for i, image in enumerate(images):
        client.push_image(f"many/app{i}", image, "v1")
        refs.append(registry.ref(f"many/app{i}:v1"))
    return refs


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("dead-src"), "plain") as reg:
        seed_many(reg)
        yield reg


def listing(tmp_path: Path, refs: list[str], name: str = "images.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{ref}\n" for ref in refs))
    return path


def many_refs(registry: RegistryProcess, count: int = ENTRIES) -> list[str]:
    return [registry.ref(f"many/app{i}:v1") for i in range(count)]


def make_plan(cli: CLI, tmp_path: Path, refs: list[str], dest: str) -> Path:
    plan = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(listing(tmp_path, refs)), "--dest", dest, "-o", str(plan), "-q")
    assert out.code == ExitCode.OK, out.err
    return plan


def timed(cli: CLI, *args: str) -> tuple[Outcome, float]:
    start = time.monotonic()
    out = cli(*args)
    return out, time.monotonic() - start


def assert_stopped(out: Outcome, seconds: float, host: str, cause: str) -> None:
    """Exit 6 within the deadline, and one line naming the registry and the cause."""
    assert out.code == ExitCode.UNREACHABLE, out.err
    assert seconds < DEADLINE, f"took {seconds:.1f} s"
    line = out.error_line  # exactly one error line
    assert host in line and cause in line, line
    assert not re.search(r"\] failed |preflight:|gap:", out.err), out.err  # nothing per entry


# -- copy -----------------------------------------------------------------------------------


def test_copy_plan_to_a_closed_port_stops_within_30s(
    cli: CLI, many: RegistryProcess, tmp_path: Path, closed_port: Callable[[], str]
) -> None:
    dead = closed_port()
    plan = make_plan(cli, tmp_path, many_refs(many), f"{dead}/mirror")
    report = tmp_path / "report.json"
    out, seconds = timed(cli, "copy", "--plan", str(plan), "--report", str(report))
    assert_stopped(out, seconds, dead, "connection refused")
    assert report.is_file()  # the run still says what it did, entry by entry
    assert report.read_text().count('"status": "failed"') == ENTRIES


def test_copy_from_a_stopped_source_stops_within_30s(
    cli: CLI, make_registry: MakeRegistry, tmp_path: Path
) -> None:
    source = make_registry("plain")
    dest = make_registry("plain")
    refs = seed_many(source, seed=4102)
    plan = make_plan(cli, tmp_path, refs, f"{dest.host}/mirror")  # pinned while it was up
    source.stop()
    out, seconds = timed(cli, "copy", "--plan", str(plan), "--dest-plain-http")
    assert_stopped(out, seconds, source.host, "connection refused")
    assert not dest.requests("PUT"), "nothing can have been pushed without a source"


def test_preflight_says_it_once(
    cli: CLI, many: RegistryProcess, tmp_path: Path, closed_port: Callable[[], str]
) -> None:
    dead = closed_port()
    plan = make_plan(cli, tmp_path, many_refs(many), f"{dead}/mirror")
    out, seconds = timed(cli, "copy", "--plan", str(plan), "--preflight")
    assert_stopped(out, seconds, dead, "connection refused")


def test_registry_stopped_mid_run_then_rerun_resumes(
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """The destination goes away during a copy: exit 6 within 30 s, one line. Started again
    on the same port, the same command completes and sends no blob that had landed."""
    source = make_registry("plain")
    dest = make_registry("plain")
    client = SeedClient.for_registry(source)
    images: dict[str, Image] = {}
    for i in range(8):
        images[f"big/app{i}:v1"] = build_image(4200 + i, layer_sizes=(1_000_000,))
        client.push_image(f"big/app{i}", images[f"big/app{i}:v1"], "v1")
    # source blobs trickle, so the destination can be stopped while most are still to come
    slow = make_fault_proxy(source, Fault.trickle(500_000, r"/blobs/sha256:", max_seconds=5))
    refs = [slow.ref(name) for name in images]
    args = [
        sys.executable, "-m", "transship", "copy", "--images", str(listing(tmp_path, refs)),
        "--dest", f"{dest.host}/mirror", "--src-plain-http", "--parallel", "2", "-q",
    ]  # fmt: skip
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not dest.blob_uploads() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    port = dest.port
    dest.stop()
    stopped_at = time.monotonic()
    _, err = proc.communicate(timeout=DEADLINE + 30)
    seconds = time.monotonic() - stopped_at
    assert proc.returncode == ExitCode.UNREACHABLE, err
    assert seconds < DEADLINE, f"took {seconds:.1f} s after the registry went away"
    lines = [ln for ln in err.splitlines() if ln.startswith("transship: error:")]
    assert len(lines) == 1 and dest.host in lines[0], err
    # what landed is what the registry keeps linked, not what its log says: stopped, it may
    # have committed a PUT without writing the access-log line (seen on CI)
    everything = {b.digest for image in images.values() for b in image.pushable_blobs}
    landed = {
        b.digest
        for name, image in images.items()
        for b in image.pushable_blobs
        if linked(dest, f"mirror/{name.partition(':')[0]}", b.digest)
    }
    assert set(uploaded(dest)) <= landed
    assert landed and landed != everything, "the registry stopped too late to test a resume"

    dest.start(port=port)
    slow.clear()
    mark = dest.log_offset()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == ExitCode.OK, rerun.stderr
    dest.wait_idle()  # access lines are written after the replies
    again = set(uploaded(dest, since=mark))
    assert not landed & again, "a blob that had landed was sent again"
    assert landed | again == everything
    for name, image in images.items():
        assert skopeo(dest, f"mirror/{name}") == image.manifest


def linked(registry: RegistryProcess, repo: str, digest: str) -> bool:
    """Whether the registry's storage holds the blob and links it into the repository."""
    algo, _, hexpart = digest.partition(":")
    layers = registry.storage_dir / "docker/registry/v2/repositories" / repo / "_layers"
    return registry.has_blob(digest) and (layers / algo / hexpart / "link").is_file()


def uploaded(registry: RegistryProcess, since: int = 0) -> list[str]:
    found = []
    for entry in registry.blob_uploads(since=since):
        match = re.search(r"digest=([^&]+)", entry.path)
        if match:
            found.append(unquote(match.group(1)))
    return found


# -- plan, verify, save, load ---------------------------------------------------------------


@pytest.mark.parametrize("keep_going", [False, True], ids=["plain", "keep-going"])
def test_plan_from_a_dead_source(
    cli: CLI, tmp_path: Path, keep_going: bool, closed_port: Callable[[], str]
) -> None:
    """Even with --keep-going: a dead registry is not a gap per image."""
    dead = closed_port()
    refs = [f"{dead}/many/app{i}:v1" for i in range(ENTRIES)]
    args = ["plan", "images", str(listing(tmp_path, refs)), "--dest", "mirror.example/m"]
    out, seconds = timed(cli, *args, *(["--keep-going"] if keep_going else []))
    assert_stopped(out, seconds, dead, "connection refused")


def test_verify_against_a_dead_destination(
    cli: CLI, many: RegistryProcess, tmp_path: Path, closed_port: Callable[[], str]
) -> None:
    dead = closed_port()
    plan = make_plan(cli, tmp_path, many_refs(many), f"{dead}/mirror")
    report = tmp_path / "verify.json"
    report.write_text('{"exitCode": 0, "complete": true}')  # an old run's answer
    out, seconds = timed(cli, "verify", "--plan", str(plan), "--report", str(report))
    assert_stopped(out, seconds, dead, "connection refused")
    doc = json.loads(report.read_text())  # this run's answer, as $? gives it
    assert doc["exitCode"] == ExitCode.UNREACHABLE and doc["complete"] is False, doc
    assert dead in doc["error"], doc


def test_save_from_a_dead_source(cli: CLI, make_registry: MakeRegistry, tmp_path: Path) -> None:
    source = make_registry("plain")
    refs = seed_many(source, count=20, seed=4103)
    plan = make_plan(cli, tmp_path, refs, "mirror.example/m")
    source.stop()
    out, seconds = timed(cli, "save", "--plan", str(plan), "-o", str(tmp_path / "layout"))
    assert_stopped(out, seconds, source.host, "connection refused")


def test_load_into_a_dead_destination(
    cli: CLI, many: RegistryProcess, tmp_path: Path, closed_port: Callable[[], str]
) -> None:
    archive = tmp_path / "archive"
    plan = make_plan(cli, tmp_path, many_refs(many), "mirror.example/m")
    out = cli("save", "--plan", str(plan), "-o", str(archive), "-q")
    assert out.code == ExitCode.OK, out.err
    dead = closed_port()
    out, seconds = timed(cli, "load", str(archive), "--dest", f"{dead}/loaded")
    assert_stopped(out, seconds, dead, "connection refused")


# -- other ways of being unreachable (a short window, so the verdict comes quickly) ---------


@pytest.fixture
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "DEFAULT_POLICY", SHORT)


@pytest.mark.usefixtures("short_window")
def test_a_name_that_does_not_resolve(cli: CLI, tmp_path: Path) -> None:
    host = "registry.transship-test.invalid:5000"  # RFC 6761: never resolves
    refs = [f"{host}/many/app{i}:v1" for i in range(ENTRIES)]
    out = cli("plan", "images", str(listing(tmp_path, refs)), "--dest", "m.example/m")
    assert out.code == ExitCode.UNREACHABLE, out.err
    assert host in out.error_line and "does not resolve" in out.error_line


@pytest.fixture(params=["alert", "close"])
def failing_handshake(request: pytest.FixtureRequest) -> Iterator[str]:
    """A TCP port whose server answers every TLS ClientHello with a handshake_failure alert,
    or closes the connection before any handshake (a TLS front whose backend is gone)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    alive = True

    def serve() -> None:
        while alive:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                if request.param == "close":
                    continue
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(bytes.fromhex("15030300020228"))  # alert: fatal, handshake
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    alive = False
    thread.join(timeout=5)
    server.close()


@pytest.mark.usefixtures("short_window")
def test_a_tls_handshake_that_always_fails(
    cli: CLI, many: RegistryProcess, tmp_path: Path, failing_handshake: str
) -> None:
    plan = make_plan(cli, tmp_path, many_refs(many), f"{failing_handshake}/mirror")
    out, seconds = timed(cli, "copy", "--plan", str(plan))
    assert_stopped(out, seconds, failing_handshake, "TLS handshake fails")


@pytest.mark.usefixtures("short_window")
def test_a_short_window_is_a_quick_verdict(
    cli: CLI, many: RegistryProcess, tmp_path: Path, closed_port: Callable[[], str]
) -> None:
    """The control for the tests below: with this window a dead registry stops a run fast."""
    dead = closed_port()
    plan = make_plan(cli, tmp_path, many_refs(many), f"{dead}/mirror")
    out, seconds = timed(cli, "copy", "--plan", str(plan))
    assert_stopped(out, seconds, dead, "connection refused")
    # ~0.3 s here; the bound leaves room for a loaded machine and stays below the default
    # window (8 s), which a run without the short window cannot stop before
    assert seconds < 0.75 * HealthPolicy().window, f"took {seconds:.1f} s"


SLOW_OR_ANSWERING = {
    "503": lambda: Fault.http(503, count=5),
    "429": lambda: Fault.throttle(count=5),
    "reset": lambda: Fault.reset(method=None, count=4),
    "stall": lambda: Fault.stall(0.5, method=None, count=4),
}


@pytest.mark.usefixtures("short_window")
@pytest.mark.parametrize("kind", list(SLOW_OR_ANSWERING))
def test_answering_or_slow_registries_keep_their_retries(
    kind: str,
    cli: CLI,
    many: RegistryProcess,
    make_registry: MakeRegistry,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """5xx, 429, a reset mid-answer or a stall spread over more than the window: a registry
    that is there, so the run retries and completes instead of stopping."""
    dest = make_registry("plain")
    fault = SLOW_OR_ANSWERING[kind]()
    proxy = make_fault_proxy(dest, fault)
    names = [f"many/app{i}:v1" for i in range(3)]
    refs = [many.ref(name) for name in names]
    out = cli(
        "copy", "--images", str(listing(tmp_path, refs)), "--dest", f"{proxy.host}/mirror",
        "--src-plain-http", "--dest-plain-http",
    )  # fmt: skip
    assert out.code == ExitCode.OK, out.err
    assert fault.fired == fault.count
    hit = sorted(r.started for r in proxy.log() if r.fault is not None)
    assert hit[-1] - hit[0] > SHORT.window, "the faults did not outlast the window"
    for name in names:
        assert skopeo(dest, f"mirror/{name}") == skopeo(many, name)
