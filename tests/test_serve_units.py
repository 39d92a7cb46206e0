"""Pure parts of `serve`: ranges, content negotiation, pagination, listen addresses, htpasswd,
where a blob lies in split volumes, the served prefix, the archive's files as indexed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from harness.registry import make_htpasswd

import transship.serve.auth
from transship.digest import Digest
from transship.errors import StorageError, UsageError
from transship.layout.reader import Extent
from transship.layout.volumes import Volumes, split_archive
from transship.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from transship.ops.archive import (
    PREFIX_COMMON,
    PREFIX_LEGACY,
    PREFIX_NONE,
    PREFIX_PLANNED,
    ArchiveInfo,
)
from transship.serve.api import accepted_types, negotiate, page
from transship.serve.archive import ChainCut, served_prefix, valid_name
from transship.serve.auth import Htpasswd
from transship.serve.blobs import BlobServer, RangeNotSatisfiable, parse_range, slice_extents
from transship.serve.errors import APIError
from transship.serve.files import ChangedOnDisk, Identity, PinnedFiles
from transship.serve.server import Listen, Ready, tls_names, write_ready_file
from transship.serve.tls import check_san, self_signed, server_context


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=90-5000", (90, 99)),
        ("bytes=0-0", (0, 0)),
        ("items=0-5", None),  # another unit: ignored
        ("bytes=0-1,5-6", None),  # several ranges: the whole blob
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    ["bytes=9-1", "bytes=100-", "bytes=-0", "bytes=-", "bytes=a-b", "bytes=" + "1" * 20 + "-"],
)
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)  # nothing to give from an empty blob


def test_slice_extents_across_volumes() -> None:
    runs = [Extent(Path("a"), 100, 10), Extent(Path("b"), 0, 20)]
    assert slice_extents(runs, 0, 30) == runs
    assert slice_extents(runs, 5, 10) == [Extent(Path("a"), 105, 5), Extent(Path("b"), 0, 5)]
    assert slice_extents(runs, 12, 3) == [Extent(Path("b"), 2, 3)]


def test_volume_extents(tmp_path: Path) -> None:
    tar = tmp_path / "x.tar"
    tar.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    split_archive(tar, 4096)
    volumes = Volumes(tmp_path / "x.tar.parts")
    try:
        runs = volumes.extents(4000, 5000)
        assert [(r.path.name, r.offset, r.size) for r in runs] == [
            ("x.tar.001", 4000, 96),
            ("x.tar.002", 0, 4096),
            ("x.tar.003", 0, 808),
        ]
        data = b"".join(r.path.read_bytes()[r.offset : r.offset + r.size] for r in runs)
        assert data == volumes.pread(5000, 4000)
    finally:
        volumes.close()


def test_content_negotiation_as_distribution() -> None:
    assert accepted_types([]) is None
    assert accepted_types(["*/*"]) is None
    both = accepted_types([f"{OCI_MANIFEST}, {DOCKER_MANIFEST};q=0.5", OCI_INDEX])
    assert both == {OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX}
    assert accepted_types([f"{OCI_INDEX};q=0, {DOCKER_MANIFEST}"]) == {DOCKER_MANIFEST}
    docker = frozenset({DOCKER_MANIFEST})
    assert negotiate(OCI_INDEX, None, True) == "stored"
    assert negotiate(DOCKER_MANIFEST_LIST, docker, True) == "platform"
    assert negotiate(DOCKER_MANIFEST_LIST, docker, False) == "stored"  # by digest: as stored
    for stored in (OCI_MANIFEST, OCI_INDEX):
        with pytest.raises(APIError) as caught:
            negotiate(stored, docker, True)
        assert caught.value.code == "MANIFEST_UNKNOWN" and caught.value.status == 404


def test_pagination() -> None:
    tags = [f"t{i}" for i in range(5)]
    assert page(tags, None, None, None) == (tags, False, None)
    assert page(tags, "2", None, None) == (["t0", "t1"], True, 2)
    assert page(tags, "2", "t3", None) == (["t4"], False, 2)
    assert page(tags, "0", None, None) == ([], False, 0)
    assert page(tags, "9" * 18, None, None) == (tags, False, 10**18 - 1)
    for bad in ("-1", "x", "9" * 20, ""):
        with pytest.raises(APIError) as caught:
            page(tags, bad, None, None)
        assert caught.value.code == "PAGINATION_NUMBER_INVALID"


def test_listen_and_certificate_names() -> None:
    assert Listen.parse("5000") == Listen("127.0.0.1", 5000)
    assert Listen.parse("[::1]:5001") == Listen("::1", 5001)
    assert Listen.parse("localhost:5000").loopback
    assert not Listen.parse("0.0.0.0:5000").loopback
    assert not Listen.parse("10.0.0.5:5000").loopback
    for bad in ("nohost", "host:port", "1.2.3.4:70000", ":5000"):
        with pytest.raises(UsageError):
            Listen.parse(bad)
    assert tls_names(Listen("10.0.0.5", 5000), ["reg.lab"]) == ["10.0.0.5", "reg.lab"]
    assert tls_names(Listen("127.0.0.1", 5000), []) == ["127.0.0.1", "localhost"]


@pytest.mark.parametrize(
    "name",
    ["reg.lab", "reg-1.corp.example", "*.corp.example", "localhost", "x", "10.0.0.5", "::1",
     "a" * 63 + ".lab", ".".join(["a" * 63] * 3 + ["b" * 61]), "xn--bcher-kva.example"],
)  # fmt: skip
def test_san_takes_an_ip_address_or_an_rfc_1123_name(name: str) -> None:
    assert check_san(name) == name


@pytest.mark.parametrize(
    ("name", "carried"),
    [("REG-1.Corp.example", "reg-1.corp.example"), ("reg.lab.", "reg.lab"),
     ("*.Corp.Example.", "*.corp.example"), ("::0001", "::1"), ("FE80::A", "fe80::a"),
     ("::ffff:10.0.0.5", "10.0.0.5"), ("::FFFF:a00:5", "10.0.0.5")],
)  # fmt: skip
def test_san_is_carried_lower_case_without_the_root_dot(name: str, carried: str) -> None:
    """Names compare without case and `lab.` is `lab`: one form each, so a certificate never
    carries Registry.Lab and registry.lab both. An IPv4-mapped IPv6 address is carried as the
    IPv4 address it maps: an IPv4 client never matches an IPv6 SAN."""
    assert check_san(name) == carried
    listen = Listen("Registry.Lab", 5000)
    assert tls_names(listen, [check_san("registry.lab."), check_san("REGISTRY.lab")]) == [
        "registry.lab"
    ]


def test_san_refusals_say_what_to_give() -> None:
    with pytest.raises(UsageError, match=r"an IP address with a zone is not allowed.*'%eth0'"):
        check_san("fe80::1%eth0")
    with pytest.raises(UsageError, match=r"punycode \(xn--\) form: xn--bcher-kva\.example$"):
        check_san("bücher.example")
    with pytest.raises(UsageError, match=r"at most one trailing dot"):
        check_san("lab..")


@pytest.mark.parametrize(
    "name",
    ["bad name", "-x", "x-", "a..b", ".lab", "lab..", ".", "", "*", "*.", "a.*.lab", "**.lab",
     "under_score.lab", "a" * 64, "b" * 300, ".".join(["a" * 63] * 3 + ["b" * 62]),
     "1.2.3.999", "fe80::1%eth0", "bücher.example", "a\nb"],
)  # fmt: skip
def test_san_refuses_anything_else_in_one_line_naming_it(name: str) -> None:
    with pytest.raises(UsageError) as refused:
        check_san(name)
    text = str(refused.value)
    assert "\n" not in text and text.startswith("--san '")
    shown = name.replace("\n", "\\n")  # a control character is shown escaped
    assert (shown if len(name) <= 80 else name[:40]) in text, text


def test_a_first_name_too_long_for_a_common_name_still_makes_a_certificate(
    tmp_path: Path,
) -> None:
    """The first name (the listen host, a long `--san`) may be a DNS name of up to 253
    characters, X.509 allows 64 in the CN: the CN is "transship serve" then, the SANs carry
    every name whole, and a client checking the long name against the CA accepts it."""
    long = ".".join(["a" * 63, "b" * 63, "lab"])  # 131 characters
    files = self_signed(tmp_path / "certs", [long, "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["transship serve"]
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == [long]

    # a TLS handshake in memory, the client verifying the long name as a registry client does
    bios = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in ("client", "server")}
    ends = {
        "server": server_context(files).wrap_bio(*bios["server"], server_side=True),
        "client": ssl.create_default_context(cafile=str(files.ca)).wrap_bio(
            *bios["client"], server_hostname=long
        ),
    }
    done = {"client": False, "server": False}
    for _ in range(10):  # a handshake takes a few flights; each step moves the bytes across
        for side, peer in (("client", "server"), ("server", "client")):
            try:
                ends[side].do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            bios[peer][0].write(bios[side][1].read())  # my outgoing into the peer's incoming
        if all(done.values()):
            break
    assert all(done.values()), done
    client = ends["client"]
    assert client.getpeercert()["subjectAltName"][0] == ("DNS", long)

    short = self_signed(tmp_path / "short", ["reg.lab"])  # a name that fits stays the CN
    cert = x509.load_pem_x509_certificate(short.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "reg.lab"


def test_served_prefix_and_names() -> None:
    assert served_prefix(ArchiveInfo("harbor.corp/tkg-1.5")) == "tkg-1.5"
    assert served_prefix(ArchiveInfo("harbor.corp:8443/a/b")) == "a/b"
    assert served_prefix(ArchiveInfo("archive.local")) == ""
    assert served_prefix(ArchiveInfo()) == ""
    # each origin the archive records: a planned or common prefix is served, a placeholder not
    for origin in (PREFIX_PLANNED, PREFIX_COMMON, PREFIX_LEGACY):
        assert served_prefix(ArchiveInfo("harbor.corp/tkg", prefix_origin=origin)) == "tkg"
    assert served_prefix(ArchiveInfo("archive.local/x", prefix_origin=PREFIX_NONE)) == ""
    assert served_prefix(ArchiveInfo("harbor.corp/tkg", recorded=False)) == ""
    assert valid_name("tkg/antrea") and valid_name("a__b/c-d.e")
    for bad in ("", "A", "a/../b", "a//b", "/a", "a/", "a" * 256, "a/%2e", "a\n", "a/b\n"):
        assert not valid_name(bad), bad


def test_htpasswd(tmp_path: Path) -> None:
    path = make_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret-Pa55", "bob": "other"})
    auth = Htpasswd.load(path)

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def check() -> None:
        assert await auth.require(header("alice", "s3cret-Pa55")) == "alice"
        assert await auth.require(header("alice", "s3cret-Pa55")) == "alice"  # remembered
        for bad in (
            header("alice", "wrong-password"),
            header("carol", "s3cret-Pa55"),
            "Bearer abc",
            "Basic !!!",
            None,
        ):
            with pytest.raises(APIError) as caught:
                await auth.require(bad)
            assert caught.value.status == 401

    asyncio.run(check())
    weak = tmp_path / "weak"
    weak.write_text("# users\nalice:$apr1$abc$def\n")
    with pytest.raises(UsageError, match=f"{weak}:2: .*htpasswd -B"):
        Htpasswd.load(weak)


def test_htpasswd_checks_an_unknown_user_as_hard_as_a_known_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 for a user name that is not in the file costs the same bcrypt check as one for a
    wrong password, so how long it takes does not tell which names exist (counted, not timed)."""
    path = make_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret-Pa55"})
    auth = Htpasswd.load(path)
    checked: list[bytes] = []
    real = transship.serve.auth._check

    def counting(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(transship.serve.auth, "_check", counting)

    async def refused(user: str, password: str) -> None:
        value = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        with pytest.raises(APIError) as caught:
            await auth.require(value)
        assert caught.value.status == 401

    asyncio.run(refused("alice", "wrong-password"))
    asyncio.run(refused("mallory", "wrong-password"))
    asyncio.run(refused("mallory", "s3cret-Pa55"))  # alice's password gets mallory nothing
    assert checked == [auth.users["alice"], auth._decoy, auth._decoy]
    assert bcrypt_cost(auth._decoy) == bcrypt_cost(auth.users["alice"])


def bcrypt_cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


def test_htpasswd_decoy_is_as_costly_as_the_costliest_entry(tmp_path: Path) -> None:
    """The unknown user's decoy is not the file's first entry, which may be cheap: it is made at
    load at the highest cost an entry has."""
    good = make_htpasswd(tmp_path / "good", {"cheap": "a", "dear": "b"})
    cheap, dear = good.read_text().splitlines()
    cheap = cheap.replace("$05$", "$04$", 1)  # htpasswd -B's least cost is 5; bcrypt's is 4
    dear = dear.replace("$05$", "$06$", 1)
    path = tmp_path / "htpasswd"
    path.write_text(f"{cheap}\n{dear}\n")
    auth = Htpasswd.load(path)
    assert bcrypt_cost(auth._decoy) == 6
    assert not transship.serve.auth._check(b"b", auth._decoy)  # well formed: checked
    assert bcrypt_cost(transship.serve.auth.decoy_hash([])) == 12  # none: bcrypt's default


def test_htpasswd_refuses_a_malformed_or_too_costly_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed bcrypt entry, or one above htpasswd's maximum cost (17), is a one-line usage
    error naming file:line: the decoy an unknown user is checked against is made at load at the
    file's highest cost, and a `$2y$31$` entry would keep serve from starting for days."""
    good = make_htpasswd(tmp_path / "good", {"alice": "a"}).read_text().strip()
    tail = good.split("$")[3]
    decoys: list[list[bytes]] = []  # not made: one at cost 17 or more takes seconds to days

    def cheap_decoy(hashes: Iterable[bytes]) -> bytes:
        decoys.append(list(hashes))
        return good.split(":", 1)[1].encode()

    monkeypatch.setattr(transship.serve.auth, "decoy_hash", cheap_decoy)
    for bad, why in (
        ("broken:$2y$05$not-a-hash", "not a well-formed bcrypt hash"),
        (f"odd:$2y$99${tail}", "not a well-formed bcrypt hash"),
        (f"slow:$2y$18${tail}", "cost 18, above htpasswd's maximum of 17"),
        (f"days:$2y$31${tail}", "cost 31, above htpasswd's maximum of 17"),
    ):
        path = tmp_path / "htpasswd"
        path.write_text(f"# users\n{good}\n{bad}\n")
        with pytest.raises(UsageError, match=f"^{re.escape(str(path))}:3: .*{why}") as caught:
            Htpasswd.load(path)
        assert "\n" not in str(caught.value)
    path.write_text(f"{good}\n" + f"top:$2y$17${tail}\n")  # htpasswd's maximum: loaded
    assert sorted(Htpasswd.load(path).users) == ["alice", "top"]
    assert decoys == [[good.split(":", 1)[1].encode(), f"$2y$17${tail}".encode()]]


def test_htpasswd_password_longer_than_bcrypt_reads(tmp_path: Path) -> None:
    """htpasswd makes an entry from a password of 100 bytes out of its first 72, as bcrypt does;
    bcrypt 5 raises on such a password, which must not lock its user out."""
    password = "p" * 100
    auth = Htpasswd.load(make_htpasswd(tmp_path / "htpasswd", {"long": password}))

    async def check() -> None:
        value = "Basic " + base64.b64encode(f"long:{password}".encode()).decode()
        assert await auth.require(value) == "long"
        value = "Basic " + base64.b64encode(f"long:{'q' * 100}".encode()).decode()
        with pytest.raises(APIError):
            await auth.require(value)

    asyncio.run(check())


def test_error_body_is_the_spec_form() -> None:
    response = APIError("BLOB_UNKNOWN", {"digest": "sha256:x"}).response()
    assert response.status == 404
    assert response.body is not None
    doc = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert doc == {
        "errors": [
            {
                "code": "BLOB_UNKNOWN",
                "message": "blob unknown to registry",
                "detail": {"digest": "sha256:x"},
            }
        ]
    }


def test_local_writes_that_fail_are_storage_errors(tmp_path: Path) -> None:
    """A TLS directory or ready file that cannot be written is local I/O, not bad usage."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="--tls-self-signed") as caught:
        self_signed(blocker / "certs", ["localhost"])
    assert not isinstance(caught.value, UsageError)
    ready = Ready("127.0.0.1:5000", "http://127.0.0.1:5000", "127.0.0.1:5000/tkg", 1, 1)
    with pytest.raises(StorageError, match="--ready-file"):
        write_ready_file(blocker / "ready.json", ready, None)
    write_ready_file(tmp_path / "ready.json", ready, None)
    assert json.loads((tmp_path / "ready.json").read_text())["repository"] == "127.0.0.1:5000/tkg"


@pytest.mark.parametrize("budget", [1, 0])
def test_pinned_files_serve_the_file_as_indexed(tmp_path: Path, budget: int) -> None:
    """Held (budget 1): a rename over the name changes nothing read. Not held (budget 0): the
    new file is refused. Either way a rewrite in place or a truncation is refused."""
    path = tmp_path / "a.tar"
    path.write_bytes(b"A" * 100)
    files = PinnedFiles(f"oci-archive:{path}", budget=budget)
    try:
        files.pin(path)
        with files.open(path) as handle:
            assert handle.read() == b"A" * 100
        other = tmp_path / "b.tar"
        other.write_bytes(b"B" * 100)
        other.replace(path)
        if budget:
            with files.open(path) as handle, files.open(path) as second:
                assert handle.read(10) == b"A" * 10 and second.read() == b"A" * 100
                assert handle.read() == b"A" * 90  # each handle has its own offset
            files.check(path)
        else:
            with pytest.raises(ChangedOnDisk, match="restarted"):
                files.open(path)
            with pytest.raises(ChangedOnDisk):
                files.check(path)
    finally:
        files.close()
    files = PinnedFiles(f"oci-archive:{path}", budget=budget)
    try:
        files.pin(path)
        st = path.stat()
        path.write_bytes(b"C" * 100)  # same inode, same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        with pytest.raises(ChangedOnDisk) as caught:
            files.open(path)
        assert caught.value.status == 503 and "rewritten" in caught.value.log_line
        assert caught.value.log_line.startswith(f"archive oci-archive:{path} changed on disk;")
        os.truncate(path, 10)
        with pytest.raises(ChangedOnDisk):
            files.check(path)
    finally:
        files.close()


def test_identity_differences_in_words() -> None:
    first = Identity(1, 2, 100, 5)
    assert first.differs(first) == ""
    assert first.differs(Identity(1, 3, 100, 5)) == "replaced by another file"
    assert first.differs(Identity(1, 2, 10, 6)) == "size 100 → 10 bytes"
    assert first.differs(Identity(1, 2, 100, 6)).startswith("rewritten")


def test_a_corrupt_verdict_is_not_kept_forever() -> None:
    digest = Digest.parse("sha256:" + "ab" * 32)
    files = PinnedFiles("x")
    kept = BlobServer(files, corrupt_recheck=60.0)
    kept.corrupt[digest] = ("x at offset 0 (1 bytes)", time.monotonic())
    with pytest.raises(APIError, match="corrupt"):
        kept._refuse_corrupt(digest)
    again = BlobServer(files, corrupt_recheck=60.0)
    again.corrupt[digest] = ("x at offset 0 (1 bytes)", time.monotonic() - 61)
    again._refuse_corrupt(digest)  # hashed again on this request
    assert digest not in again.corrupt


def test_a_chain_cut_from_an_archive_given_as_dot_names_its_base_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From inside a directory archive `.` has no parent but '.': where a base beside it
    should be is named beside the directory, absolute, not as a relative `base`."""
    inc = tmp_path / "inc"
    inc.mkdir()
    monkeypatch.chdir(inc)
    why = ChainCut(Path("."), "base")._why()
    assert why.endswith(f"which is not beside it ({tmp_path / 'base'})"), why
