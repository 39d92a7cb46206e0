"""`transship serve`: an archive served in place as a read-only registry, checked with real
clients (skopeo, transship itself) and real `docker-registry` destinations."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess, make_htpasswd
from harness.seed import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Blob,
    Image,
    Index,
    build_image,
    build_index,
    canonical_json,
    sha256_digest,
)
from harness.serve import ServeProcess
from harness.skopeo import Skopeo

from transship.digest import Digest
from transship.errors import ExitCode
from transship.layout import OCILayout, write_tar
from transship.layout.volumes import split_archive
from transship.manifest import Descriptor, Manifest

PREFIX = "harbor.corp/tkg"
SPDX = "application/spdx+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LONG_TAG = "v" + "1234567890" * 12 + "abcdefg"  # 128 characters


@dataclass
class Corpus:
    layout: Path
    #: "repository:tag" inside the archive → manifest digest
    tags: dict[str, str]
    images: dict[str, Image | Index]
    sbom: Image
    blob: Blob  # a big layer, for ranges and tampering


def _empty_layer_image() -> Image:
    config = Blob.of(b"{}", OCI_EMPTY)
    empty = Blob.of(b"", "application/vnd.oci.image.layer.v1.tar")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [empty.descriptor()],
    }
    raw = canonical_json(doc)
    return Image(raw, OCI_MANIFEST, sha256_digest(raw), config, (empty,), {})


def _zero_layer_image() -> Image:
    config = Blob.of(canonical_json({"architecture": "amd64", "os": "linux"}), OCI_EMPTY)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [],
    }
    raw = canonical_json(doc)
    return Image(raw, OCI_MANIFEST, sha256_digest(raw), config, (), {})


def _sbom(subject: Image) -> Image:
    spdx = Blob.of(canonical_json({"spdxVersion": "SPDX-2.3", "name": "sbom"}), SPDX)
    config = Blob.of(b"{}", OCI_EMPTY)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SPDX,
        "config": config.descriptor(),
        "layers": [spdx.descriptor()],
        "subject": subject.descriptor(with_platform=False),
        "annotations": {"org.example.kind": "sbom"},
    }
    raw = canonical_json(doc)
    return Image(raw, OCI_MANIFEST, sha256_digest(raw), config, (spdx,), {})


async def _put(layout: OCILayout, repo: str, item: Image | Index, tag: str) -> None:
    images = item.images if isinstance(item, Index) else (item,)
    for image in images:
        for blob in image.blobs:
            await layout.put_blob(
                repo,
                Descriptor(blob.media_type, Digest.parse(blob.digest), blob.size),
                _chunks(blob.data),
            )
        if isinstance(item, Index):
            await layout.put_manifest(repo, Manifest.parse(image.manifest, None, "t"), None)
    await layout.put_manifest(repo, Manifest.parse(item.manifest, None, "t"), tag)


async def _chunks(data: bytes) -> Any:
    yield data


def build_corpus(path: Path) -> Corpus:
    big = build_image(7, layer_sizes=(3_000_000,))
    items: dict[str, Image | Index] = {
        "apps/oci-index:v1": build_index(1),
        "apps/docker-list:v1": build_index(2, fmt="docker"),
        "apps/docker-image:v1": build_image(3, fmt="docker"),
        "apps/zero-layers:v1": _zero_layer_image(),
        "apps/empty-layer:v1": _empty_layer_image(),
        f"apps/oci-image:{LONG_TAG}": build_image(4),
        "apps/oci-image:v1": build_image(4),
        "apps/big:v1": big,
        "tkg/antrea:v1.2.3": build_image(5),
    }
    for i in range(25):
        items[f"apps/many:t{i:03d}"] = build_image(100 + i, layer_sizes=(100,))
    subject = items["apps/oci-image:v1"]
    assert isinstance(subject, Image)
    sbom = _sbom(subject)
    items[f"apps/oci-image:sha256-{sbom.digest[7:]}"] = sbom  # untagged, as save stores it

    async def write() -> None:
        layout = OCILayout(path, writable=True)
        try:
            for name, item in items.items():
                repo, tag = name.rsplit(":", 1)
                await _put(layout, repo, item, tag)
            info = {
                "format": "transship-archive/v1",
                "destinationPrefix": PREFIX,
                "phases": {},
                "base": None,
            }
            layout.write_extra("archive.json", json.dumps(info))
        finally:
            await layout.close()

    asyncio.run(write())
    tags = {name: item.digest for name, item in items.items()}
    return Corpus(path, tags, items, sbom, big.layers[0])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("serve-corpus") / "layout")


@pytest.fixture(scope="module")
def served(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path_factory.mktemp("serve"), corpus.layout) as server:
        yield server


def request(
    server: ServeProcess,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.host.rsplit(":", 1)
    conn: http.client.HTTPConnection
    if server.tls:
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


# -- real clients -------------------------------------------------------------------------


def test_skopeo_copies_every_image_with_its_digest(
    corpus: Corpus, served: ServeProcess, make_registry, skopeo: Skopeo
) -> None:
    assert served.ready["repository"] == f"{served.host}/tkg"  # path of the archive's prefix
    dest = make_registry("plain")
    for name, digest in corpus.tags.items():
        if ":sha256-" in name:
            continue
        ref = f"tkg/{name}"
        raw = skopeo.inspect_raw(served, ref)  # type: ignore[arg-type]
        assert sha256_digest(raw) == digest, name
        skopeo.copy(served, ref, dest, name)  # type: ignore[arg-type]
        assert skopeo.digest(dest, name) == digest, name
    # the referrer travels by digest
    sbom = f"tkg/apps/oci-image@{corpus.sbom.digest}"
    skopeo.copy(served, sbom, dest, "apps/oci-image:sbom")  # type: ignore[arg-type]
    assert skopeo.digest(dest, "apps/oci-image:sbom") == corpus.sbom.digest


def test_tar_and_split_volumes_are_served_in_place(
    corpus: Corpus, tmp_path: Path, make_registry, skopeo: Skopeo
) -> None:
    tar = tmp_path / "media" / "tkg.tar"
    write_tar(corpus.layout, tar)
    split_archive(tar, 1_000_000)
    media = tmp_path / "media"
    before = sorted(p.name for p in media.iterdir())
    assert len(before) > 4  # several volumes plus the list
    dest = make_registry("plain")
    with ServeProcess(tmp_path / "srv", media / "tkg.tar.001") as server:
        for name in ("apps/big:v1", "apps/docker-list:v1", "apps/empty-layer:v1"):
            skopeo.copy(server, f"tkg/{name}", dest, name)  # type: ignore[arg-type]
            assert skopeo.digest(dest, name) == corpus.tags[name]
        log = server.read_log()
    assert sorted(p.name for p in media.iterdir()) == before  # nothing extracted
    assert "serving" in log and "tkg.tar" in log


def test_transship_copy_and_save_read_from_serve(
    cli: CLI, corpus: Corpus, served: ServeProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    dest = make_registry("plain")
    for name in ("apps/oci-index:v1", "apps/docker-list:v1", "apps/zero-layers:v1"):
        out = cli("copy", f"{served.host}/tkg/{name}", f"{dest.host}/copied/{name}", "-q")
        assert out.code == 0, out.err
        assert skopeo.digest(dest, f"copied/{name}") == corpus.tags[name]
    # through an archive again: save from serve, load into the registry
    listing = tmp_path / "images.txt"
    listing.write_text(
        f"{served.host}/tkg/apps/oci-index:v1\n{served.host}/tkg/tkg/antrea:v1.2.3\n"
    )
    again = tmp_path / "again.tar"
    out = cli("save", "--images", str(listing), "--dest", "x.corp/p", "-o", str(again), "-q")
    assert out.code == 0, out.err
    out = cli("load", str(again), "--dest", f"{dest.host}/loaded", "-q")
    assert out.code == 0, out.err
    loaded = "loaded/tkg/apps/oci-index:v1"  # the image list keeps the path below the host
    assert skopeo.digest(dest, loaded) == corpus.tags["apps/oci-index:v1"]


def test_push_is_refused(served: ServeProcess, skopeo: Skopeo, corpus: Corpus) -> None:
    for method, path in [
        ("POST", "/v2/tkg/apps/big/blobs/uploads/"),
        ("PUT", "/v2/tkg/apps/big/manifests/v9"),
        ("PATCH", "/v2/tkg/apps/big/blobs/uploads/abc"),
        ("DELETE", f"/v2/tkg/apps/big/manifests/{corpus.tags['apps/big:v1']}"),
    ]:
        status, headers, body = request(served, method, path, body=b"x")
        assert status == 405 and error_code(body) == "UNSUPPORTED", (method, path)
        assert headers["allow"] == "GET, HEAD"
    # the status of an upload (end-13: 204 or 404): none ever exists on a read-only registry
    for path in ("/v2/tkg/apps/big/blobs/uploads/abc", "/v2/tkg/apps/big/blobs/uploads/"):
        status, _headers, body = request(served, "GET", path)
        assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN", path
        status, _headers, body = request(served, "HEAD", path)
        assert status == 404 and body == b"", path
    proc = skopeo.run(
        "copy",
        *skopeo.authfile_args,
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{served.ref('tkg/apps/big:v1')}",
        f"docker://{served.ref('tkg/apps/pushed:v1')}",
        check=False,
    )
    assert proc.returncode != 0
    status, _, _ = request(served, "GET", "/v2/tkg/apps/pushed/tags/list")
    assert status == 404


# -- the API, request by request ------------------------------------------------------------


def test_manifest_headers_and_negotiation(served: ServeProcess, corpus: Corpus) -> None:
    index = corpus.tags["apps/oci-index:v1"]
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    status, headers, body = request(served, "GET", "/v2/tkg/apps/oci-index/manifests/v1", accept)
    assert status == 200 and sha256_digest(body) == index
    assert headers["docker-content-digest"] == index
    assert headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    status, headers, body = request(served, "HEAD", f"/v2/tkg/apps/oci-index/manifests/{index}")
    assert status == 200 and body == b"" and headers["docker-content-digest"] == index
    assert int(headers["content-length"]) == len(corpus.images["apps/oci-index:v1"].manifest)
    # a client that takes only Docker types gets no OCI index (as from distribution)...
    docker_only = {"Accept": DOCKER_MANIFEST}
    status, _, body = request(served, "GET", "/v2/tkg/apps/oci-index/manifests/v1", docker_only)
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"
    # ...and for a Docker list by tag, its linux/amd64 image
    status, headers, body = request(
        served, "GET", "/v2/tkg/apps/docker-list/manifests/v1", docker_only
    )
    docker_list = corpus.images["apps/docker-list:v1"]
    assert isinstance(docker_list, Index)
    amd64 = next(i for i in docker_list.images if i.platform["architecture"] == "amd64")
    assert status == 200 and headers["docker-content-digest"] == amd64.digest
    # conditional GET
    status, _, _ = request(
        served,
        "GET",
        "/v2/tkg/apps/oci-index/manifests/v1",
        {**accept, "If-None-Match": f'"{index}"'},
    )
    assert status == 304
    # 128-character tags are tags like any other
    status, headers, _ = request(served, "HEAD", f"/v2/tkg/apps/oci-image/manifests/{LONG_TAG}")
    assert status == 200


def test_if_none_match_compares_weakly_and_takes_a_star(
    served: ServeProcess, corpus: Corpus
) -> None:
    """RFC 9110 13.1.2: If-None-Match uses the weak comparison (`W/"x"` matches `"x"`) and `*`
    matches any current representation; a GET or HEAD then answers 304, manifests and blobs
    alike. A tag that does not match still gets the body."""
    index = corpus.tags["apps/oci-index:v1"]
    blob = corpus.blob.digest
    for path, digest in [
        ("/v2/tkg/apps/oci-index/manifests/v1", index),
        (f"/v2/tkg/apps/oci-index/manifests/{index}", index),
        (f"/v2/tkg/apps/big/blobs/{blob}", blob),
    ]:
        for value in (f'W/"{digest}"', "*", f'"sha256:{"0" * 64}", W/"{digest}"'):
            for method in ("GET", "HEAD"):
                status, headers, body = request(served, method, path, {"If-None-Match": value})
                assert status == 304 and body == b"", (method, path, value)
                assert headers["etag"] == f'"{digest}"'
        status, _, body = request(served, "GET", path, {"If-None-Match": f'"sha256:{"0" * 64}"'})
        assert status == 200 and sha256_digest(body) == digest, path


def test_blob_get_head_and_ranges(served: ServeProcess, corpus: Corpus) -> None:
    blob = corpus.blob
    path = f"/v2/tkg/apps/big/blobs/{blob.digest}"
    status, headers, body = request(served, "HEAD", path)
    assert status == 200 and body == b"" and int(headers["content-length"]) == blob.size
    assert headers["docker-content-digest"] == blob.digest and headers["etag"] == f'"{blob.digest}"'
    for rng, first, last in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, blob.size - 1),
        ("bytes=-500", blob.size - 500, blob.size - 1),
        ("bytes=10-99999999999999", 10, blob.size - 1),  # huge: clamped to the end
        (f"bytes={blob.size - 1}-{blob.size - 1}", blob.size - 1, blob.size - 1),
    ]:
        status, headers, body = request(served, "GET", path, {"Range": rng})
        assert status == 206, rng
        assert body == blob.data[first : last + 1], rng
        assert headers["content-range"] == f"bytes {first}-{last}/{blob.size}"
    for rng in ("bytes=99-10", f"bytes={blob.size}-", "bytes=x-y", "bytes=" + "9" * 40 + "-"):
        status, headers, body = request(served, "GET", path, {"Range": rng})
        assert status == 416 and error_code(body) == "RANGE_INVALID", rng
        assert headers["content-range"] == f"bytes */{blob.size}"
    status, _, body = request(served, "GET", path)
    assert status == 200 and hashlib.sha256(body).hexdigest() == blob.digest[7:]
    # the zero-byte layer
    empty = "sha256:" + hashlib.sha256(b"").hexdigest()
    status, headers, body = request(served, "GET", f"/v2/tkg/apps/empty-layer/blobs/{empty}")
    assert status == 200 and body == b"" and headers["content-length"] == "0"
    # a blob of another repository is unknown here
    status, _, body = request(served, "GET", f"/v2/tkg/tkg/antrea/blobs/{blob.digest}")
    assert status == 404 and error_code(body) == "BLOB_UNKNOWN"


def test_head_of_a_blob_ignores_range(served: ServeProcess, corpus: Corpus) -> None:
    """RFC 9110 14.2: Range is defined for GET only and MUST be ignored on HEAD: the whole
    length with 200, whether the range could be satisfied or not (never 206, never 416)."""
    blob = corpus.blob
    path = f"/v2/tkg/apps/big/blobs/{blob.digest}"
    for rng in ("bytes=0-9", f"bytes={blob.size}-", "bytes=99-10", "bytes=-0"):
        status, headers, body = request(served, "HEAD", path, {"Range": rng})
        assert status == 200, rng
        assert body == b"" and int(headers["content-length"]) == blob.size, rng
        assert "content-range" not in headers and headers["accept-ranges"] == "bytes", rng
    # GET still honours it
    status, _, _ = request(served, "GET", path, {"Range": f"bytes={blob.size}-"})
    assert status == 416


def test_if_range_that_does_not_match_sends_the_whole_blob(
    served: ServeProcess, corpus: Corpus
) -> None:
    """RFC 9110 13.1.5: with If-Range, the Range is served only when the validator matches
    strongly; another entity tag, a weak one or a date means the whole blob with 200."""
    blob = corpus.blob
    path = f"/v2/tkg/apps/big/blobs/{blob.digest}"
    status, headers, body = request(
        served, "GET", path, {"Range": "bytes=0-99", "If-Range": f'"{blob.digest}"'}
    )
    assert status == 206 and body == blob.data[:100]
    for validator in (
        f'"sha256:{"0" * 64}"',
        f'W/"{blob.digest}"',
        "Tue, 01 Dec 2026 00:00:00 GMT",
    ):
        status, headers, body = request(
            served, "GET", path, {"Range": "bytes=0-99", "If-Range": validator}
        )
        assert status == 200 and body == blob.data, validator
        assert "content-range" not in headers


def test_tags_paginate_and_catalog(served: ServeProcess) -> None:
    seen: list[str] = []
    path = "/v2/tkg/apps/many/tags/list?n=10"
    pages = 0
    while path:
        status, headers, body = request(served, "GET", path)
        assert status == 200
        doc = json.loads(body)
        assert doc["name"] == "tkg/apps/many" and len(doc["tags"]) <= 10
        seen += doc["tags"]
        pages += 1
        link = headers.get("link")
        path = link[1 : link.index(">")] if link else ""
    assert seen == [f"t{i:03d}" for i in range(25)] and pages == 3
    status, _, body = request(served, "GET", "/v2/tkg/apps/many/tags/list?n=5&last=t020")
    assert json.loads(body)["tags"] == ["t021", "t022", "t023", "t024"]
    status, _, body = request(served, "GET", "/v2/tkg/apps/oci-image/tags/list")
    assert json.loads(body)["tags"] == sorted([LONG_TAG, "v1"])  # no `sha256-<self>` pseudo-tag
    status, _, body = request(served, "GET", "/v2/tkg/apps/many/tags/list?n=-1")
    assert status == 400 and error_code(body) == "PAGINATION_NUMBER_INVALID"
    status, headers, body = request(served, "GET", "/v2/_catalog?n=3")
    assert json.loads(body)["repositories"] == [
        "tkg/apps/big",
        "tkg/apps/docker-image",
        "tkg/apps/docker-list",
    ]
    assert "last=tkg%2Fapps%2Fdocker-list" in headers["link"]
    status, _, body = request(served, "GET", "/v2/_catalog")
    assert "tkg/tkg/antrea" in json.loads(body)["repositories"]


def test_referrers_api(served: ServeProcess, corpus: Corpus) -> None:
    subject = corpus.tags["apps/oci-image:v1"]
    status, headers, body = request(served, "GET", f"/v2/tkg/apps/oci-image/referrers/{subject}")
    assert status == 200 and headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    doc = json.loads(body)
    assert [m["digest"] for m in doc["manifests"]] == [corpus.sbom.digest]
    assert doc["manifests"][0]["artifactType"] == SPDX
    assert doc["manifests"][0]["annotations"] == {"org.example.kind": "sbom"}
    status, headers, body = request(
        served, "GET", f"/v2/tkg/apps/oci-image/referrers/{subject}?artifactType=text/other"
    )
    assert json.loads(body)["manifests"] == [] and headers["oci-filters-applied"] == "artifactType"
    status, _, body = request(
        served,
        "GET",
        f"/v2/tkg/apps/oci-image/referrers/{subject}?artifactType={quote(SPDX, safe='')}",
    )
    assert len(json.loads(body)["manifests"]) == 1
    status, _, body = request(served, "GET", "/v2/tkg/apps/oci-image/referrers/sha256:abc")
    assert status == 400 and error_code(body) == "DIGEST_INVALID"


def test_hostile_requests_get_spec_errors(served: ServeProcess, corpus: Corpus) -> None:
    big = corpus.blob.digest
    cases = [
        ("/v2/tkg/../../etc/passwd/manifests/v1", {"NAME_INVALID", "NAME_UNKNOWN", "NOT_FOUND"}),
        ("/v2/tkg/apps/%2e%2e/%2e%2e/blobs/" + big, {"NAME_INVALID", "NAME_UNKNOWN"}),
        ("/v2/..%2F..%2Fetc/tags/list", {"NAME_INVALID"}),
        ("/v2/tkg/apps/big/blobs/sha256:../../../../etc/passwd", {"DIGEST_INVALID", "NOT_FOUND"}),
        ("/v2/tkg/apps/big/blobs/sha256:" + "A" * 64, {"DIGEST_INVALID"}),
        ("/v2/tkg/apps/big/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", {"DIGEST_INVALID"}),
        ("/v2/tkg/apps/big/manifests/sha256:zz", {"DIGEST_INVALID"}),
        ("/v2/tkg/apps/big/manifests/-bad-tag", {"TAG_INVALID"}),
        ("/v2/tkg/apps/big/manifests/v%C3%A91", {"TAG_INVALID"}),  # "vé1": \w took Unicode
        ("/v2/tkg/apps/big/manifests/v1%0A", {"TAG_INVALID"}),  # `$` took a final newline
        ("/v2/" + "a/" * 5000 + "manifests/v1", {"NAME_INVALID"}),  # a 10,000-character path
        ("/v2/tkg/apps/big/" + "x" * 10_000, {"NOT_FOUND"}),
        ("/v2/nothing/here/manifests/v1", {"NAME_UNKNOWN"}),
        ("/etc/passwd", {"NOT_FOUND"}),
    ]
    for path, codes in cases:
        status, _, body = request(served, "GET", path)
        assert 400 <= status < 500, path[:80]
        assert error_code(body) in codes, (path[:80], body[:200])
        assert b"root:" not in body and b"Traceback" not in body
    assert "Traceback" not in served.read_log()


def test_access_log_and_ready_file(served: ServeProcess) -> None:
    request(served, "GET", "/v2/", {"User-Agent": "probe/1.0"})
    assert served.ready["url"] == f"http://{served.host}"
    # the server logs a request once its response is sent: the client may read the log first
    deadline = time.monotonic() + 10
    while True:
        lines = [ln for ln in served.read_log().splitlines() if '"probe/1.0"' in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines and lines[-1].startswith("127.0.0.1 - - [")
    assert '"GET /v2/ HTTP/1.1" 200' in lines[-1] and lines[-1].endswith('"probe/1.0"')


def test_access_log_counts_body_bytes(corpus: Corpus, tmp_path: Path) -> None:
    """The size field of an access line is the body bytes sent, as in distribution's (Apache
    combined) format: a blob's whole size on its first (hashed) serve and on later `sendfile`
    ones alike, the range's length for a 206, nothing for a HEAD or a 304; never the headers."""
    blob = corpus.blob
    path = f"/v2/tkg/apps/big/blobs/{blob.digest}"
    manifest = corpus.images["apps/big:v1"].manifest
    etag = f'"{blob.digest}"'
    asked = [
        ("GET", path, {}),  # first serve: streamed and hashed
        ("GET", path, {}),  # verified: sendfile
        ("GET", path, {"Range": "bytes=0-99"}),
        ("HEAD", path, {}),
        ("GET", path, {"If-None-Match": etag}),
        ("GET", "/v2/tkg/apps/big/manifests/v1", {}),
        ("GET", "/v2/", {}),
    ]
    with ServeProcess(tmp_path / "srv", corpus.layout) as server:
        for number, (method, where, headers) in enumerate(asked):
            request(server, method, where, {**headers, "User-Agent": f"count/{number}"})
    log = server.read_log()  # stopped: every access line is written
    sizes = {}
    for line in log.splitlines():
        if '"count/' in line:
            number = int(line.rsplit('"count/', 1)[1].rstrip('"'))
            sizes[number] = int(line.split('" ', 1)[1].split()[1])
    assert sizes == {0: blob.size, 1: blob.size, 2: 100, 3: 0, 4: 0, 5: len(manifest), 6: 2}


def test_access_log_counts_a_sendfile_the_client_cut_short(tmp_path: Path) -> None:
    """A client that takes part of a big blob sent with `sendfile` and goes away: the access
    line counts what went out (sent in slices, each counted once sent), not 0. The client's
    small receive buffer keeps the server from getting the whole blob out before the cut."""
    big = build_image(8, layer_sizes=(32 * 1024 * 1024,))
    blob = big.layers[0]
    layout = tmp_path / "layout"

    async def write() -> None:
        writer = OCILayout(layout, writable=True)
        try:
            await _put(writer, "apps/huge", big, "v1")
            info = {"format": "transship-archive/v1", "destinationPrefix": PREFIX, "base": None}
            writer.write_extra("archive.json", json.dumps({**info, "phases": {}}))
        finally:
            await writer.close()

    asyncio.run(write())
    path = f"/v2/tkg/apps/huge/blobs/{blob.digest}"
    with ServeProcess(tmp_path / "srv", layout) as server:
        status, _, _ = request(server, "GET", path, {"Range": "bytes=0-0"})  # hashed: verified
        assert status == 206
        host, port = server.host.rsplit(":", 1)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(30)
            sock.connect((host, int(port)))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: cut/1\r\n\r\n".encode())
            received = 0
            while received < 10 * 1024 * 1024:  # past two slices, then gone
                chunk = sock.recv(1024 * 1024)
                assert chunk, "the server closed first"
                received += len(chunk)
    log = server.read_log()  # stopped: every access line is written
    line = next(line for line in log.splitlines() if line.endswith('"cut/1"'))
    size = int(line.split('" ', 1)[1].split()[1])
    assert 0 < size <= blob.size, line


def test_access_log_fields_cannot_be_forged(corpus: Corpus, tmp_path: Path) -> None:
    """What a client sends (User-Agent, Referer, the request target) is escaped in its quoted
    field, as Apache and distribution's logger do: a `"` cannot end the field early and make
    the rest of the line say another status, size or agent."""
    forged = 'x" 200 1 "-" "forged'
    # raw bytes no http.client sends: NEL (U+0085) and U+2028 cut a line for `splitlines`, the
    # C1 CSI (U+009B) drives a terminal the log is read on, a byte that is no UTF-8 reaches the
    # logger as a lone surrogate. (The parser itself refuses C0 controls such as ESC.)
    raw_agent = b"raw\xc2\x85nel\xe2\x80\xa8ls\xc2\x9bcsi\xffend"
    with ServeProcess(tmp_path / "srv", corpus.layout) as server:
        request(server, "GET", "/v2/", {"User-Agent": forged, "Referer": 'r"ef\\'})
        request(server, "GET", '/v2/a"b/tags/list', {"User-Agent": "probe-2"})
        host, port = server.host.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"User-Agent: " + raw_agent + b"\r\n\r\n"
            )
            while sock.recv(65536):  # the whole response: the server closes
                pass
    lines = server.read_log().splitlines()  # stopped: every access line is written
    first = next(line for line in lines if "GET /v2/ " in line and "forged" in line)
    assert first.endswith(' 200 2 "r\\"ef\\\\" "x\\" 200 1 \\"-\\" \\"forged"'), first
    second = next(line for line in lines if '"probe-2"' in line)
    assert '"GET /v2/a\\"b/tags/list HTTP/1.1" 400 ' in second, second
    third = next(line for line in lines if '"raw' in line)
    assert third.startswith("127.0.0.1 - - ["), third
    assert third.endswith(
        '"GET /v2/ HTTP/1.1" 200 2 "-" "raw\\xc2\\x85nel\\xe2\\x80\\xa8ls\\xc2\\x9bcsi\\xffend"'
    ), third


# -- TLS, auth, integrity, lifecycle ------------------------------------------------------------


def test_self_signed_tls_and_htpasswd_with_skopeo(
    corpus: Corpus, tmp_path: Path, skopeo: Skopeo, make_registry
) -> None:
    certs = tmp_path / "certs"
    htpasswd = make_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret-Pa55"})
    server = ServeProcess(
        tmp_path / "srv",
        corpus.layout,
        "--tls-self-signed",
        str(certs),
        "--htpasswd",
        str(htpasswd),
        credentials=("alice", "s3cret-Pa55"),
        cert_dir=certs,
    )
    with server:
        log = server.read_log()
        assert server.url.startswith("https://") and (certs / "ca.crt").is_file()
        ca_b64 = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
        assert f"CA base64: {ca_b64}" in log
        assert f"tanzu config set env.TKG_CUSTOM_IMAGE_REPOSITORY {server.host}/tkg" in log
        assert "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE" in log
        dest = make_registry("plain")
        skopeo.copy(server, "tkg/apps/oci-index:v1", dest, "tls/oci-index:v1")  # type: ignore[arg-type]
        assert skopeo.digest(dest, "tls/oci-index:v1") == corpus.tags["apps/oci-index:v1"]
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        status, headers, body = request(server, "GET", "/v2/", context=context)
        assert status == 401 and error_code(body) == "UNAUTHORIZED"
        assert headers["www-authenticate"].startswith("Basic realm=")
        bad = base64.b64encode(b"alice:wrong-password").decode()
        status, _, _ = request(
            server, "GET", "/v2/", {"Authorization": f"Basic {bad}"}, context=context
        )
        assert status == 401
        status, _, body = request(server, "PUT", "/v2/tkg/apps/x/manifests/v1", context=context)
        assert status == 401  # writes: 401 first without credentials, as registries do
        good = base64.b64encode(b"alice:s3cret-Pa55").decode()
        status, _, body = request(
            server,
            "PUT",
            "/v2/tkg/apps/x/manifests/v1",
            {"Authorization": f"Basic {good}"},
            context=context,
        )
        assert status == 405 and error_code(body) == "UNSUPPORTED"
        # the big layer twice over TLS: hashed the first time, then sendfile's TLS fallback
        auth = {"Authorization": f"Basic {good}"}
        for _ in range(2):
            status, _, body = request(
                server, "GET", f"/v2/tkg/apps/big/blobs/{corpus.blob.digest}", auth, context=context
            )
            assert status == 200 and body == corpus.blob.data
        assert " - alice [" in server.read_log()
    # a restart keeps the CA clients already trust
    ca_before = (certs / "ca.crt").read_bytes()
    with ServeProcess(tmp_path / "srv2", corpus.layout, "--tls-self-signed", str(certs)):
        pass
    assert (certs / "ca.crt").read_bytes() == ca_before
    assert "s3cret" not in log


def test_tampered_blob_in_a_tar_is_refused(
    corpus: Corpus, tmp_path: Path, skopeo: Skopeo, make_registry
) -> None:
    tar = tmp_path / "tkg.tar"
    write_tar(corpus.layout, tar)
    data = bytearray(tar.read_bytes())
    blob = corpus.blob.data
    at = bytes(data).index(blob[1000:1100])
    data[at + 10] ^= 0xFF  # one flipped bit in the middle of the big layer
    tar.write_bytes(bytes(data))
    dest = make_registry("plain")
    with ServeProcess(tmp_path / "srv", tar) as server:
        proc = skopeo.run(
            "copy",
            *skopeo.authfile_args,
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{server.ref('tkg/apps/big:v1')}",
            f"docker://{dest.ref('apps/big:v1')}",
            check=False,
        )
        assert proc.returncode != 0
        assert not dest.has_blob(corpus.blob.digest)
        status, _, body = request(server, "GET", f"/v2/tkg/apps/big/blobs/{corpus.blob.digest}")
        assert status == 500 and b"corrupt" in body
        log = server.read_log()
    assert f"corrupt blob {corpus.blob.digest} in {tar}" in log and "Traceback" not in log


def test_ctrl_c_stops_cleanly_and_bad_options_say_one_line(
    cli: CLI, corpus: Corpus, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path / "srv", corpus.layout).start()
    assert server.stop() == 0
    assert "transship: stopped" in server.read_log() and "Traceback" not in server.read_log()
    out = cli("serve", str(corpus.layout), "--listen", "0.0.0.0:5999")
    assert (
        out.code == 1 and "--tls-self-signed" in out.error_line and "--plain-http" in out.error_line
    )
    out = cli("serve", str(tmp_path / "missing.tar"))
    assert out.code == 1 and "missing.tar" in out.error_line
    bad = tmp_path / "htpasswd"
    bad.write_text("bob:{SHA}abcdefg=\n")
    out = cli("serve", str(corpus.layout), "--htpasswd", str(bad))
    assert out.code == 1 and f"{bad}:1" in out.error_line


def test_an_invalid_san_is_a_one_line_usage_error_before_anything_is_made(
    cli: CLI, tmp_path: Path
) -> None:
    """`--san` takes an IP address or a DNS name (RFC 1123); anything else is refused, naming
    it, before the CA or certificate is made or the archive opened."""
    certs = tmp_path / "certs"
    for bad in ("bad name", "-x", "a..b", "c" * 300):
        out = cli("serve", str(tmp_path / "missing"), "--tls-self-signed", str(certs),
                  "--san", "reg.lab", "--san", bad)  # fmt: skip
        assert out.code == ExitCode.USAGE, out.err
        assert out.error_line.startswith(f"transship: error: --san '{bad[:40]}"), out.err
        assert "Traceback" not in out.err
    assert not certs.exists()


def test_increment_is_served_with_its_base(
    cli: CLI, corpus: Corpus, tmp_path: Path, make_registry, skopeo: Skopeo
) -> None:
    base = tmp_path / "base"
    shutil.copytree(corpus.layout, base)
    increment = tmp_path / "incr"
    shutil.copytree(corpus.layout, increment)
    big = corpus.blob.digest.split(":")[1]
    (increment / "blobs" / "sha256" / big).unlink()  # the increment lacks what the base holds
    info = json.loads((increment / "transship" / "archive.json").read_text())
    info["base"] = "base"
    (increment / "transship" / "archive.json").write_text(json.dumps(info))
    dest = make_registry("plain")
    with ServeProcess(tmp_path / "srv", increment) as server:  # finds ../base by its name
        skopeo.copy(server, "tkg/apps/big:v1", dest, "incr/big:v1")  # type: ignore[arg-type]
        assert skopeo.digest(dest, "incr/big:v1") == corpus.tags["apps/big:v1"]
    shutil.rmtree(base)
    out = cli("serve", str(increment))
    assert out.code == 1 and "--base" in out.error_line


def test_imgpkg_bundles_keep_their_tags_and_relocate_from_serve(
    cli: CLI, plain_registry: RegistryProcess, make_registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    from test_bundles import Corpus as BundleCorpus

    bundle = BundleCorpus(plain_registry, "srvb", 910)
    listing = tmp_path / "images.txt"
    listing.write_text(bundle.root_ref + "\n")
    archive = tmp_path / "bundle.tar"
    out = cli("save", "--images", str(listing), "--dest", "harbor.corp/tkg", "-o", str(archive))
    assert out.code == 0, out.err
    with ServeProcess(tmp_path / "srv", archive) as server:
        repo = f"tkg/{bundle.repo_path}"
        status, _, body = request(server, "GET", f"/v2/{repo}/tags/list")
        assert status == 200
        tags = set(json.loads(body)["tags"])
        for item in (bundle.root, bundle.package, bundle.contour_image, bundle.envoy):
            assert f"sha256-{item.digest[7:]}.imgpkg" in tags
        # a bundle copied out of serve finds its images in the served repository, by tag
        dest = make_registry("plain")
        listing.write_text(f"{server.host}/{repo}:v1.5.3\n")
        out = cli("copy", "--images", str(listing), "--dest", f"{dest.host}/far", "-q")
        assert out.code == 0, out.err
    for item in (bundle.root, bundle.package, bundle.contour_image, bundle.envoy):
        assert skopeo(dest, f"far/{repo}@{item.digest}") == item.manifest


def test_given_certificate_and_key(
    corpus: Corpus, pki, tmp_path: Path, skopeo: Skopeo, make_registry
) -> None:
    server = ServeProcess(
        tmp_path / "srv",
        corpus.layout,
        "--tls-cert",
        str(pki.server.chain_path),
        "--tls-key",
        str(pki.server.key_path),
        cert_dir=pki.ca.cert_dir,
    )
    with server:
        assert server.url.startswith("https://") and server.ready["ca"] is None
        context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        status, _, body = request(server, "GET", "/v2/_catalog", context=context)
        assert status == 200 and "tkg/apps/big" in json.loads(body)["repositories"]
        dest = make_registry("plain")
        skopeo.copy(server, "tkg/apps/docker-image:v1", dest, "given/img:v1")  # type: ignore[arg-type]
        assert skopeo.digest(dest, "given/img:v1") == corpus.tags["apps/docker-image:v1"]


def test_concurrent_first_serves_of_one_blob(corpus: Corpus, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tar = tmp_path / "tkg.tar"
    write_tar(corpus.layout, tar)
    path = f"/v2/tkg/apps/big/blobs/{corpus.blob.digest}"
    with ServeProcess(tmp_path / "srv", tar) as server, ThreadPoolExecutor(8) as pool:
        ranges = [None, None, None, "bytes=5-20", None, None, "bytes=-7", None]
        results = list(
            pool.map(lambda r: request(server, "GET", path, {"Range": r} if r else None), ranges)
        )
    for wanted, (status, _, body) in zip(ranges, results, strict=True):
        if wanted is None:
            assert status == 200 and body == corpus.blob.data
        else:
            first, last = (5, 20) if wanted == "bytes=5-20" else (len(corpus.blob.data) - 7, None)
            assert (
                status == 206
                and body == corpus.blob.data[first : None if last is None else last + 1]
            )


def test_a_symlink_out_of_the_layout_is_never_followed(corpus: Corpus, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(corpus.layout, layout)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:secret-hash:19000::::::\n" * 40_000)  # > one chunk
    blob = layout / "blobs" / "sha256" / corpus.blob.digest[7:]
    blob.unlink()
    blob.symlink_to(secret)
    with ServeProcess(tmp_path / "srv", layout) as server:
        status, _, body = request(server, "GET", f"/v2/tkg/apps/big/blobs/{corpus.blob.digest}")
        assert status == 404 and error_code(body) == "BLOB_UNKNOWN" and b"root:" not in body


# -- the archive changes on disk while served ---------------------------------------------


def _other_archive(corpus: Corpus, tar: Path, other: Path) -> None:
    """`other`: the same size as `tar`, other bytes where the big layer lies (another save)."""
    data = bytearray(tar.read_bytes())
    at = bytes(data).index(corpus.blob.data[1000:1100])
    data[at : at + 4096] = bytes(b ^ 0x5A for b in data[at : at + 4096])
    other.write_bytes(bytes(data))


def _served_and_verified(tmp_path: Path, corpus: Corpus) -> tuple[Path, ServeProcess, str]:
    """A tar served, its big layer fetched once whole (hashed: later GETs use sendfile)."""
    tar = tmp_path / "srv.tar"
    write_tar(corpus.layout, tar)
    server = ServeProcess(tmp_path / "srv", tar).start()
    path = f"/v2/tkg/apps/big/blobs/{corpus.blob.digest}"
    status, _, body = request(server, "GET", path)
    assert status == 200 and body == corpus.blob.data
    return tar, server, path


def _short_request(server: ServeProcess, path: str, headers: dict[str, str] | None = None) -> Any:
    """A GET that gives up after 5 s (a hang fails the test instead of stalling it)."""
    host, port = server.host.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_archive_rewritten_in_place_is_refused_not_served(corpus: Corpus, tmp_path: Path) -> None:
    """`cp other.tar srv.tar` (same inode, same size, other bytes): never a 200 with bytes that
    are not the blob's; a 503 naming the archive, and one log line saying what to do."""
    tar, server, path = _served_and_verified(tmp_path, corpus)
    try:
        other = tmp_path / "other.tar"
        _other_archive(corpus, tar, other)
        inode = tar.stat().st_ino
        shutil.copyfile(other, tar)
        assert tar.stat().st_ino == inode
        for headers in (None, {"Range": "bytes=0-8191"}):
            status, body = _short_request(server, path, headers)
            assert status == 503, (status, hashlib.sha256(body).hexdigest())
            assert error_code(body) == "UNAVAILABLE" and b"restarted" in body
        status, _, _ = request(server, "HEAD", path)
        assert status == 503
        log = server.read_log()
    finally:
        server.stop()
    line = f"archive oci-archive:{tar} changed on disk; restart serve"
    assert log.count(line) == 1 and "Traceback" not in log


def test_archive_replaced_by_rename_still_serves_the_indexed_bytes(
    corpus: Corpus, tmp_path: Path, make_registry, skopeo: Skopeo
) -> None:
    """A new file renamed over the archive: the file held since indexing is what is served
    (right bytes, 200), with a warning that serve must restart to serve the new one."""
    tar, server, path = _served_and_verified(tmp_path, corpus)
    try:
        other = tmp_path / "other.tar"
        _other_archive(corpus, tar, other)
        other.replace(tar)
        status, body = _short_request(server, path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == corpus.blob.digest[7:]
        dest = make_registry("plain")
        skopeo.copy(server, "tkg/apps/big:v1", dest, "apps/big:v1")  # type: ignore[arg-type]
        assert dest.has_blob(corpus.blob.digest)
        log = server.read_log()
    finally:
        server.stop()
    assert f"{tar} was replaced on disk; still serving the file as indexed" in log


def test_a_blob_file_of_a_directory_replaced_by_rename_still_serves_the_indexed_bytes(
    corpus: Corpus, tmp_path: Path
) -> None:
    """A directory archive whose blob file is replaced by a shorter one (an `rsync --partial`
    over the served copy): the size served is the one indexed and the bytes those of the file
    held since, never a 200 with the first bytes of the blob under its digest."""
    layout = tmp_path / "layout"
    shutil.copytree(corpus.layout, layout)
    server = ServeProcess(tmp_path / "srv", layout).start()
    path = f"/v2/tkg/apps/big/blobs/{corpus.blob.digest}"
    try:
        blob_file = layout / "blobs" / "sha256" / corpus.blob.digest[7:]
        shorter = blob_file.with_name("partial")
        shorter.write_bytes(corpus.blob.data[: len(corpus.blob.data) // 3])
        shorter.replace(blob_file)
        status, body = _short_request(server, path)
    finally:
        server.stop()
    assert status == 200 and body == corpus.blob.data


def test_truncated_archive_is_refused_not_hung(corpus: Corpus, tmp_path: Path) -> None:
    """`truncate -s 1000 srv.tar`: a 503 at once, not 200 headers and a body that never comes."""
    tar, server, path = _served_and_verified(tmp_path, corpus)
    try:
        os.truncate(tar, 1000)
        started = time.monotonic()
        status, body = _short_request(server, path)
        assert status == 503 and error_code(body) == "UNAVAILABLE"
        assert time.monotonic() - started < 5
        log = server.read_log()
    finally:
        server.stop()
    assert f"{tar} changed on disk; restart serve" in log and "Traceback" not in log


def test_archive_truncated_mid_body_cuts_the_connection(tmp_path: Path) -> None:
    """Truncated while a slow client reads a blob bigger than any socket buffer: the connection
    is cut short of its Content-Length (the client knows), never left open with the rest never
    coming (the client would wait forever)."""
    image = build_image(9, layer_sizes=(24_000_000,))
    layout = tmp_path / "layout"

    async def write() -> None:
        out = OCILayout(layout, writable=True)
        try:
            await _put(out, "huge", image, "v1")
            info = {"format": "transship-archive/v1", "destinationPrefix": PREFIX, "phases": {}}
            out.write_extra("archive.json", json.dumps({**info, "base": None}))
        finally:
            await out.close()

    asyncio.run(write())
    layer = image.layers[0]
    tar = tmp_path / "srv.tar"
    write_tar(layout, tar)
    path = f"/v2/tkg/huge/blobs/{layer.digest}"
    with ServeProcess(tmp_path / "srv", tar) as server:
        status, _, body = request(server, "GET", path)  # hashed once: now sent with sendfile
        assert status == 200 and body == layer.data
        host, port = server.host.rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # keep sendfile waiting
        sock.settimeout(10)
        sock.connect((host, int(port)))
        request_line = f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nConnection: close\r\n\r\n"
        sock.sendall(request_line.encode())
        got = b""
        while len(got) < 64 * 1024:
            got += sock.recv(16 * 1024)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"{layer.size}".encode() in head
        os.truncate(tar, 1000)
        received = len(body)
        try:
            while chunk := sock.recv(256 * 1024):
                received += len(chunk)
        except ConnectionResetError:
            pass  # cut: as good as a close
        finally:
            sock.close()
        assert received < layer.size  # and no TimeoutError: the server closed it
        log = server.read_log()
    assert f"oci-archive:{tar} changed on disk; restart serve" in log and "Traceback" not in log
