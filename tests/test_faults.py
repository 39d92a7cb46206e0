"""Fault injection: `transship copy` against real registries behind `harness.faultproxy`.

The source is a plain `docker-registry` seeded once per module with a small corpus (three images
sharing a base layer or not, and a two-platform index); every test copies it with
`copy --images LIST --dest PREFIX` into a fresh TLS + Basic-auth registry, with a fault proxy on
the source side, the destination side or both. Results are always checked against the real
registries (skopeo and the registry's storage), never through the proxy.

transship has no command-line knob for its backoff, so an autouse fixture shortens the transport
backoff and the engine's blob retry base by patching them; `Retry-After` is left untouched.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clirunner import CLI, Outcome
from harness.faultproxy import Fault, FaultProxy
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import (
    Image,
    Index,
    SeedClient,
    build_image,
    build_images_sharing_base,
    build_index,
)
from harness.skopeo import Skopeo

import transship.commands.common as commands_common
import transship.remote.transport as transport
import transship.retry as retry
from transship.engine import EngineOptions
from transship.errors import ExitCode

CREDS = "alice:s3cret-Pa55"
BLOB_GET = r"^/v2/.+/blobs/sha256:"
UPLOAD = r"^/v2/.+/blobs/uploads/"
MOUNT = r"^/v2/.+/blobs/uploads/\?(?:.*&)?mount="
BLOB_ATTEMPTS = EngineOptions().blob_attempts
TRANSPORT_RETRIES = transport.TransportOptions().retries

MakeRegistry = Callable[..., RegistryProcess]
MakeProxy = Callable[..., FaultProxy]


# -- corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    registry: RegistryProcess
    content: dict[str, Image | Index]  # "repo:tag" -> what was pushed there

    def blobs(self, name: str) -> set[str]:
        return {b.digest for b in self.content[name].blobs if not b.urls}

    def manifests(self, name: str) -> dict[str, bytes]:
        """Digest -> exact bytes of the manifest and, for an index, of every child."""
        item = self.content[name]
        out = {item.digest: item.manifest}
        if isinstance(item, Index):
            out.update({child.digest: child.manifest for child in item.images})
        return out


@pytest.fixture(scope="module")
def corpus(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    with RegistryProcess(tmp_path_factory.mktemp("faults-src"), "plain", pki=pki) as reg:
        app_a, app_b = build_images_sharing_base(
            9101, 2, base_sizes=(120_000,), layer_sizes=(60_000, 8_000)
        )
        content: dict[str, Image | Index] = {
            "corpus/app-a:v1": app_a,
            "corpus/app-b:v1": app_b,
            "corpus/tool:v1": build_image(9102, fmt="docker", layer_sizes=(150_000, 30_000)),
            "corpus/multi:v1": build_index(9103, layer_sizes=(50_000,)),
        }
        client = SeedClient.for_registry(reg)
        for name, item in content.items():
            repo, tag = name.split(":")
            if isinstance(item, Index):
                client.push_index(repo, item, tag)
            else:
                client.push_image(repo, item, tag)
        yield Corpus(reg, content)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in milliseconds instead of seconds; `Retry-After` still wins when longer."""
    original = retry.backoff_delay

    def fast(
        attempt: int, base: float, cap: float, retry_after: float | None, after_cap: float
    ) -> float:
        return original(attempt, min(base, 0.02), min(cap, 0.2), retry_after, after_cap)

    monkeypatch.setattr(retry, "backoff_delay", fast)
    monkeypatch.setattr(
        commands_common, "EngineOptions", functools.partial(EngineOptions, retry_base=0.05)
    )


@pytest.fixture
def dest(make_registry: MakeRegistry) -> RegistryProcess:
    """A fresh, empty HTTPS + Basic-auth destination."""
    return make_registry("tls_basic")


# -- running and checking -------------------------------------------------------------------


def copy_corpus(
    cli: CLI,
    corpus: Corpus,
    tmp_path: Path,
    *,
    src: FaultProxy | None,
    dest: RegistryProcess,
    dest_proxy: FaultProxy | None = None,
    prefix: str = "mirror",
    names: tuple[str, ...] | None = None,
) -> Outcome:
    src_host = src.host if src is not None else corpus.registry.host
    listing = tmp_path / f"images-{prefix}.txt"
    listing.write_text("".join(f"{src_host}/{name}\n" for name in names or tuple(corpus.content)))
    args = ["copy", "--images", str(listing), "--src-plain-http", "--dest-creds", CREDS]
    if dest_proxy is not None:
        args += ["--dest", f"{dest_proxy.host}/{prefix}", "--dest-plain-http"]
    else:
        assert dest.ca_pem_path is not None
        args += ["--dest", f"{dest.host}/{prefix}", "--dest-ca", str(dest.ca_pem_path)]
    try:
        return cli(*args)
    except Exception as exc:  # anything but SystemExit escaping main() is a crash
        pytest.fail(
            f"transship crashed with an uncaught {type(exc).__module__}.{type(exc).__name__} "
            f"({exc}) instead of retrying or reporting the image as failed",
            pytrace=False,
        )


def blob_intact(registry: RegistryProcess, digest: str) -> bool:
    """In the registry's storage, with exactly the bytes the digest names."""
    path = registry.blob_path(digest)
    return path.is_file() and "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


def assert_copied(
    skopeo: Skopeo,
    corpus: Corpus,
    dest: RegistryProcess,
    prefix: str = "mirror",
    names: tuple[str, ...] | None = None,
) -> None:
    """Tags answer the exact source bytes (skopeo); every manifest and blob is stored intact."""
    for name in names or tuple(corpus.content):
        item = corpus.content[name]
        raw = skopeo(dest, f"{prefix}/{name}")
        assert raw == item.manifest, f"{prefix}/{name}: manifest bytes differ from the source"
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == item.digest
        for digest in corpus.manifests(name):
            assert blob_intact(dest, digest), f"{prefix}/{name}: manifest {digest} not stored"
        for digest in corpus.blobs(name):
            assert blob_intact(dest, digest), f"{prefix}/{name}: blob {digest} missing or corrupt"


def assert_absent(skopeo: Skopeo, corpus: Corpus, dest: RegistryProcess, name: str) -> None:
    proc = skopeo.run(
        "inspect",
        "--raw",
        *skopeo.authfile_args,
        *skopeo.transport_args(dest),
        f"docker://{dest.ref('mirror/' + name)}",
        check=False,
    )
    assert proc.returncode != 0, f"mirror/{name} exists in the destination"
    for digest in corpus.manifests(name):
        assert not dest.has_blob(digest), f"manifest {digest} of {name} was pushed"


# -- each fault alone -----------------------------------------------------------------------

BLOB_GET_FAULTS = {
    "reset": lambda: Fault.reset(BLOB_GET, count=4),
    "stall": lambda: Fault.stall(0.4, BLOB_GET, count=4),
    "trickle": lambda: Fault.trickle(256 * 1024, BLOB_GET, count=4, max_seconds=2),
    "truncate": lambda: Fault.truncate(BLOB_GET, count=4),
    "flip": lambda: Fault.flip(BLOB_GET, count=4),
    "500": lambda: Fault.http(500, BLOB_GET, "GET", count=4),
    "502": lambda: Fault.http(502, BLOB_GET, "GET", count=4),
    "503": lambda: Fault.http(503, BLOB_GET, "GET", count=4),
    "429": lambda: Fault.throttle(BLOB_GET, "GET", count=4),
    "429-retry-after": lambda: Fault.throttle(BLOB_GET, "GET", retry_after=1, count=2),
}

UPLOAD_FAULTS = {
    "reset": lambda: Fault.reset(UPLOAD, "PUT", count=4),
    "stall": lambda: Fault.stall(0.4, UPLOAD, "PUT", count=4),
    "trickle": lambda: Fault.trickle(256 * 1024, UPLOAD, "PUT", count=4, max_seconds=2),
    "truncate": lambda: Fault.truncate(UPLOAD, "PUT", count=4),
    "500": lambda: Fault.http(500, UPLOAD, "POST|PUT", count=4),
    "502": lambda: Fault.http(502, UPLOAD, "POST|PUT", count=4),
    "503": lambda: Fault.http(503, UPLOAD, "POST|PUT", count=4),
    "429": lambda: Fault.throttle(UPLOAD, "POST|PUT", count=4),
    "429-retry-after": lambda: Fault.throttle(UPLOAD, "POST|PUT", retry_after=1, count=2),
}


@pytest.mark.parametrize("kind", list(BLOB_GET_FAULTS))
def test_fault_alone_on_source_blob_gets(
    kind: str,
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    fault = BLOB_GET_FAULTS[kind]()
    src = make_fault_proxy(corpus.registry, fault)
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest)
    assert fault.fired == fault.count, src.summary()  # the faults really happened
    assert out.code == ExitCode.OK, out.err
    assert_copied(skopeo, corpus, dest)


@pytest.mark.parametrize("kind", list(UPLOAD_FAULTS))
def test_fault_alone_on_uploads(
    kind: str,
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    fault = UPLOAD_FAULTS[kind]()
    dest_proxy = make_fault_proxy(dest, fault)
    out = copy_corpus(cli, corpus, tmp_path, src=None, dest=dest, dest_proxy=dest_proxy)
    assert fault.fired == fault.count, dest_proxy.summary()
    assert out.code == ExitCode.OK, out.err
    assert_copied(skopeo, corpus, dest)


MANIFEST_GET = r"^/v2/.+/manifests/"
PING = r"^/v2/$"
SOURCE_REQUEST_FAULTS = {
    "manifest-reset": lambda: Fault.reset(MANIFEST_GET, count=2),
    "manifest-truncate": lambda: Fault.truncate(MANIFEST_GET, count=2),
    "manifest-stall": lambda: Fault.stall(0.4, MANIFEST_GET, count=2),
    "manifest-trickle": lambda: Fault.trickle(2048, MANIFEST_GET, count=2),
    "manifest-503": lambda: Fault.http(503, MANIFEST_GET, count=2),
    "ping-reset": lambda: Fault.reset(PING, count=1),
    "ping-truncate": lambda: Fault.truncate(PING, count=1),
    "ping-503": lambda: Fault.http(503, PING, count=2),
}


@pytest.mark.parametrize("kind", list(SOURCE_REQUEST_FAULTS))
def test_fault_alone_on_source_manifests_and_ping(
    kind: str,
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """A dropped or slow manifest / `/v2/` answer is as transient as a dropped blob."""
    fault = SOURCE_REQUEST_FAULTS[kind]()
    src = make_fault_proxy(corpus.registry, fault)
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest)
    assert fault.fired == fault.count, src.summary()
    assert out.code == ExitCode.OK, out.err
    assert_copied(skopeo, corpus, dest)


def test_flipped_manifest_is_never_accepted(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """One corrupted manifest answer: the image may fail (transship does not retry manifests),
    but nothing corrupt is pushed and a rerun completes."""
    fault = Fault.flip(MANIFEST_GET, count=1)
    src = make_fault_proxy(corpus.registry, fault)
    first = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest)
    assert fault.fired == 1
    assert first.code in (ExitCode.OK, ExitCode.PARTIAL), first.err
    for name in corpus.content:  # whatever landed is the source's exact bytes
        repo = "mirror/" + name.split(":")[0]
        revisions = dest.storage_dir / f"docker/registry/v2/repositories/{repo}/_manifests"
        stored = {p.parent.name for p in revisions.glob("revisions/sha256/*/link")}
        assert stored <= {d.split(":")[1] for d in corpus.manifests(name)}, name
    rerun = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest)
    assert rerun.code == ExitCode.OK, rerun.err
    assert_copied(skopeo, corpus, dest)


def test_flipped_upload_is_never_stored(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """A byte flipped on the way up: the registry refuses the digest (400 DIGEST_INVALID).
    transship does not retry that answer, so the image may fail; a rerun completes."""
    fault = Fault.flip(UPLOAD, "PUT", count=1)
    dest_proxy = make_fault_proxy(dest, fault)
    first = copy_corpus(cli, corpus, tmp_path, src=None, dest=dest, dest_proxy=dest_proxy)
    assert fault.fired == 1
    [flipped] = dest_proxy.log("PUT", fault="flip")
    assert flipped.upstream_status == 400  # the registry saw the wrong digest
    assert first.code in (ExitCode.OK, ExitCode.PARTIAL), first.err
    rerun = copy_corpus(cli, corpus, tmp_path, src=None, dest=dest, dest_proxy=dest_proxy)
    assert rerun.code == ExitCode.OK, rerun.err
    assert_copied(skopeo, corpus, dest)


# -- corrupt content is never accepted ------------------------------------------------------


@pytest.mark.parametrize("kind", ["flip", "truncate"])
def test_corrupt_blob_is_never_accepted(
    kind: str,
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """The fault on every GET of one layer, nothing of it lands, and the other images are
    complete. A flip is found only once the whole blob has streamed: the engine restarts it
    `blob_attempts` times. A cut is resumed by the wire layer (`Range`) under its own budget,
    `retries` times, and not restarted again by the engine."""
    tool = corpus.content["corpus/tool:v1"]
    assert isinstance(tool, Image)
    bad = tool.layers[0].digest  # only corpus/tool has it
    fault = {"flip": Fault.flip, "truncate": Fault.truncate}[kind](rf"/blobs/{bad}$")
    src = make_fault_proxy(corpus.registry, fault)
    dest_proxy = make_fault_proxy(dest)  # no faults: a witness of what reached the destination
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest, dest_proxy=dest_proxy)

    assert out.code == ExitCode.PARTIAL, out.err
    assert "corpus/tool" in out.err
    tries = BLOB_ATTEMPTS if kind == "flip" else TRANSPORT_RETRIES + 1
    assert fault.fired == tries  # every attempt got the bad bytes, then it gave up
    assert not dest.has_blob(bad), "the corrupted blob landed in the destination"
    assert_absent(skopeo, corpus, dest, "corpus/tool:v1")
    pushed = {r.target for r in dest_proxy.log("PUT", r"/corpus/tool/manifests/")}
    assert pushed == set(), f"manifests pushed for the failed image: {pushed}"
    others = tuple(n for n in corpus.content if n != "corpus/tool:v1")
    assert_copied(skopeo, corpus, dest, names=others)


def test_corrupt_blob_upload_is_aborted_before_its_last_byte(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    tmp_path: Path,
) -> None:
    """`Registry.put_blob` promises "a wrong hash aborts before the commit": a blob whose source
    bytes do not hash to its digest must never reach the destination as a complete upload
    (`PUT …?digest=` with every byte), whether or not the registry checks the digest itself.
    Witness: distribution logs `err.code="digest invalid"` only for a complete body whose hash
    differs (an aborted upload is logged differently)."""
    tool = corpus.content["corpus/tool:v1"]
    assert isinstance(tool, Image)
    bad = tool.layers[0]
    src = make_fault_proxy(corpus.registry, Fault.flip(rf"/blobs/{bad.digest}$"))
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest)
    assert out.code == ExitCode.PARTIAL, out.err
    assert not dest.has_blob(bad.digest)
    hexpart = bad.digest.split(":")[1]
    refused = rf'err\.code="digest invalid".*method=PUT .*digest=sha256(?::|%3A){hexpart}'
    dest.sync_log()  # log lines trail the answers: every earlier one is written by now
    complete = len(re.findall(refused, dest.read_log()))
    assert complete == 0, (
        f"{complete} of {BLOB_ATTEMPTS} attempts sent the whole corrupt blob ({bad.size} bytes) "
        "as PUT ?digest=…; the registry refused it with DIGEST_INVALID, so only the registry's "
        "own check kept the corrupt bytes out"
    )


# -- retry pacing ---------------------------------------------------------------------------


def test_503_bursts_on_both_sides(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """Bursts of 503 on pings, manifests, blob GETs and uploads, each within the retry budget
    (a burst longer than `retries` on one request fails that request, by design)."""
    src_burst = [
        Fault.http(503, r"^/v2/$", count=TRANSPORT_RETRIES),
        Fault.http(503, r"/manifests/", count=TRANSPORT_RETRIES),
        Fault.http(503, BLOB_GET, count=TRANSPORT_RETRIES),
    ]
    dest_burst = [
        Fault.http(503, r"^/v2/$", count=TRANSPORT_RETRIES),
        Fault.http(503, r"/manifests/", count=TRANSPORT_RETRIES),
        Fault.http(503, UPLOAD, count=BLOB_ATTEMPTS - 1),
    ]
    src = make_fault_proxy(corpus.registry, *src_burst)
    dest_proxy = make_fault_proxy(dest, *dest_burst)
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest, dest_proxy=dest_proxy)
    assert [f.fired for f in src_burst + dest_burst] == [f.count for f in src_burst + dest_burst]
    assert out.code == ExitCode.OK, out.err
    assert_copied(skopeo, corpus, dest)


def test_429_retry_after_is_honoured(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """`Retry-After: 1` on blob GETs, a mount and an upload PUT: each retry waits ≥ 1 s.

    Retries are matched by request target (by `digest=` for a PUT, which restarts under a new
    upload URL). Plain upload-start POSTs are not measured: concurrent POSTs of other blobs share
    their target, so the proxy cannot tell a retry from a sibling.
    """
    src = make_fault_proxy(corpus.registry, Fault.throttle(BLOB_GET, "GET", retry_after=1, count=2))
    dest_proxy = make_fault_proxy(
        dest,
        Fault.throttle(MOUNT, "POST", retry_after=1, count=1),
        Fault.throttle(UPLOAD, "PUT", retry_after=1, count=1),
    )
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest, dest_proxy=dest_proxy)
    assert out.code == ExitCode.OK, out.err
    assert_copied(skopeo, corpus, dest)

    label = "http-429+retry-after"
    gaps = {
        "blob GET": src.retry_gaps(label),
        "mount POST": dest_proxy.retry_gaps(label, method="POST", key="target"),
        "upload PUT": dest_proxy.retry_gaps(label, method="PUT", key="digest"),
    }
    assert [len(g) for g in gaps.values()] == [2, 1, 1], gaps
    for what, seconds in gaps.items():
        assert min(seconds) >= 1.0, f"{what} retried {min(seconds):.3f} s after Retry-After: 1"
        # 1 s plus the client's own work; well under the 30 s backoff cap and a Retry-After
        # read as minutes, with room for a loaded machine
        assert max(seconds) < 5.0, f"{what} waited {max(seconds):.3f} s for Retry-After: 1"


# -- a permanently broken image -------------------------------------------------------------


def test_permanently_failing_image_is_reported(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    fault = Fault.http(500, r"^/v2/corpus/tool/manifests/", "GET")
    src = make_fault_proxy(corpus.registry, fault)
    out = copy_corpus(cli, corpus, tmp_path, src=src, dest=dest)
    assert out.code == ExitCode.PARTIAL, out.err
    failed = [ln for ln in out.err.splitlines() if "failed" in ln and "corpus/tool" in ln]
    assert failed and "500" in failed[0], out.err
    # bounded: the list is resolved first (one GET with its retries), then copied (again)
    assert fault.fired == 2 * (TRANSPORT_RETRIES + 1)
    assert_absent(skopeo, corpus, dest, "corpus/tool:v1")
    others = tuple(n for n in corpus.content if n != "corpus/tool:v1")
    assert_copied(skopeo, corpus, dest, names=others)


# -- everything at once ---------------------------------------------------------------------


def soak_faults(rate: float) -> list[Fault]:
    """Every fault kind, each at `rate` of the requests it can apply to."""
    return [
        Fault.reset(method=None, rate=rate),
        Fault.stall(0.3, method=None, rate=rate),
        Fault.trickle(512 * 1024, method=None, rate=rate, max_seconds=1),
        Fault.truncate(method=None, rate=rate),
        Fault.flip(method="GET", rate=rate),
        Fault.http(500, rate=rate),
        Fault.http(502, rate=rate),
        Fault.http(503, rate=rate),
        Fault.throttle(rate=rate),
        Fault.throttle(rate=rate, retry_after=1),
    ]


SOAK_ROUNDS = 6
SOAK_MAX_RUNS = 3  # the first run plus at most two reruns


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(3, id="seed3"),  # draws every one of the ten kinds
        pytest.param(5, id="seed5"),  # resets the source's `/v2/` answer mid-body, first run
    ],
)
def test_soak_mixed_faults_both_sides(
    seed: int,
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """~5 % of all requests on both sides get one of the fault kinds. Draws are seeded (source
    proxy `seed`, destination `seed + 1`) and depend only on the request sequence, so a seed
    replays the same faults on the same requests."""
    per_kind = 0.05 / 8  # 8 kinds apply to any request (10 to GETs, 9 to PUTs): ≈ 5 %
    src = make_fault_proxy(corpus.registry, *soak_faults(per_kind), seed=seed)
    dest_proxy = make_fault_proxy(dest, *soak_faults(per_kind), seed=seed + 1)
    runs: list[int] = []
    rerun_causes: list[str] = []
    for round_ in range(SOAK_ROUNDS):
        prefix = f"s{round_}"
        for _attempt in range(SOAK_MAX_RUNS):
            out = copy_corpus(
                cli, corpus, tmp_path, src=src, dest=dest, dest_proxy=dest_proxy, prefix=prefix
            )
            assert out.code in (ExitCode.OK, ExitCode.PARTIAL), out.err
            if out.code == ExitCode.OK:
                break
            rerun_causes += [ln for ln in out.err.splitlines() if "] failed " in ln]
        runs.append(_attempt + 1)
        assert out.code == ExitCode.OK, f"round {round_} still failing after reruns:\n{out.err}"
        assert_copied(skopeo, corpus, dest, prefix=prefix)

    total_requests = src.request_count + dest_proxy.request_count
    injected = src.injected + dest_proxy.injected
    share = sum(injected.values()) / total_requests
    with capsys.disabled():
        print(f"\nsoak (seed {seed}): {SOAK_ROUNDS} rounds, runs per round {runs}")
        print("".join(f"  rerun because: {cause}\n" for cause in rerun_causes), end="")
        print(
            f"source side:\n{src.summary_table()}\ndestination side:\n{dest_proxy.summary_table()}"
        )
        print(
            f"faults in {share:.1%} of {total_requests} requests: {dict(sorted(injected.items()))}"
        )
    assert sum(injected.values()) >= 5, injected  # the soak really injected faults
    assert 0.01 <= share <= 0.12, share


def test_load_from_archive_under_mixed_faults(
    cli: CLI,
    corpus: Corpus,
    dest: RegistryProcess,
    make_fault_proxy: MakeProxy,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """The air-gapped half: an archive loaded through a destination that fails ~5 % of requests
    completes (after at most two reruns) with every digest equal."""
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{corpus.registry.host}/{n}\n" for n in corpus.content))
    archive = tmp_path / "corpus.tar"
    out = cli("save", "--images", str(listing), "-o", str(archive), "--src-plain-http", "-q")
    assert out.code == ExitCode.OK, out.err
    dest_proxy = make_fault_proxy(dest, *soak_faults(0.05 / 8), seed=11)
    for _attempt in range(SOAK_MAX_RUNS):
        out = cli(
            "load",
            str(archive),
            "--dest",
            f"{dest_proxy.host}/loaded",
            "--dest-plain-http",
            "--dest-creds",
            CREDS,
            "-q",
        )
        assert out.code in (ExitCode.OK, ExitCode.PARTIAL), out.err
        if out.code == ExitCode.OK:
            break
    assert out.code == ExitCode.OK, out.err
    assert sum(dest_proxy.injected.values()) > 0
    for name in corpus.content:  # load re-roots the archive's names under --dest
        raw = skopeo(dest, f"loaded/{name}")
        assert raw == corpus.content[name].manifest


def test_repeated_kill_9_then_rerun_resends_at_most_what_was_in_flight(
    corpus: Corpus, make_registry: MakeRegistry, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Several kills at random moments, each followed by another start; the final state is
    complete, and no blob whose upload had completed is ever uploaded again."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    dest = make_registry("plain")
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{corpus.registry.host}/{n}\n" for n in corpus.content))
    args = [
        sys.executable,
        "-m",
        "transship",
        "copy",
        "--images",
        str(listing),
        "--dest",
        f"{dest.host}/k",
        "-q",
        "--parallel",
        "2",
    ]
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    rng = random.Random(7)
    for _kill in range(4):
        proc = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 0.9))  # the interpreter itself takes ~0.3 s to start
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        dest.wait_idle()  # what was in flight lands (or fails) before the next start
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    dest.wait_idle()  # every upload's access line is written, a late one too
    digests = [e.path.split("digest=")[1].split("&")[0] for e in dest.blob_uploads()]
    assert len(digests) == len(set(digests)), "a blob that had landed was uploaded again"
    for name in corpus.content:
        assert skopeo(dest, f"k/{name}") == corpus.content[name].manifest
