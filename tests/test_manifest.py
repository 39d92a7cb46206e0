"""Manifest parsing: what a manifest references, and refusal of what we must not copy."""

from __future__ import annotations

import json

import pytest

from transship.digest import Digest, Hasher
from transship.errors import IntegrityError, UnsupportedMediaTypeError
from transship.manifest import (
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    Platform,
)

CFG = {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:" + "1" * 64,
    "size": 2,
}
LAYER = {
    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
    "digest": "sha256:" + "2" * 64,
    "size": 10,
}


def test_image_manifest_keeps_exact_bytes():
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CFG, "layers": [LAYER]}, indent=3
    ).encode()
    m = Manifest.parse(raw, None, "t")
    assert m.raw == raw and m.digest == Digest.of(raw)
    assert [str(b.digest) for b in m.blobs()] == [CFG["digest"], LAYER["digest"]]
    assert not m.is_index


def test_media_type_from_header_when_body_has_none():
    raw = json.dumps({"schemaVersion": 2, "config": CFG, "layers": []}).encode()
    assert (
        Manifest.parse(raw, DOCKER_MANIFEST + "; charset=utf-8", "t").media_type == DOCKER_MANIFEST
    )


def test_index_children_and_platforms():
    child = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + "3" * 64,
        "size": 5,
        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
    }
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}).encode()
    m = Manifest.parse(raw, None, "t")
    assert m.is_index and m.manifests[0].platform == Platform("linux", "arm64", "v8")
    assert Platform.parse("linux/arm64").matches(m.manifests[0].platform)
    assert not Platform.parse("linux/arm64/v7").matches(m.manifests[0].platform)


@pytest.mark.parametrize(
    ("raw", "error", "fragment"),
    [
        (b"not json", IntegrityError, "not valid JSON"),
        (b"[]", IntegrityError, "not a JSON object"),
        (
            json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(),
            UnsupportedMediaTypeError,
            "schema 1",
        ),
        (
            json.dumps({"schemaVersion": 2, "mediaType": "application/x-evil"}).encode(),
            UnsupportedMediaTypeError,
            "unknown manifest media type",
        ),
        (
            json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
            IntegrityError,
            "no config",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {**CFG, "digest": "sha256:../../x"},
                }
            ).encode(),
            Exception,
            "invalid digest",
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {**CFG, "size": -1}}
            ).encode(),
            IntegrityError,
            "not a whole number",
        ),
        (b" " * (MAX_MANIFEST_BYTES + 1), IntegrityError, "limit"),
    ],
)
def test_bad_manifests(raw: bytes, error: type[Exception], fragment: str):
    with pytest.raises(error) as info:
        Manifest.parse(raw, None, "reg/app:v1")
    assert fragment in str(info.value)


def test_hasher_detects_mismatch_and_size():
    data = b"hello world"
    h = Hasher(Digest.of(data), len(data))
    h.update(data)
    h.verify()
    bad = Hasher(Digest.of(data), len(data))
    bad.update(b"hello World")
    with pytest.raises(IntegrityError, match="does not match"):
        bad.verify()
    long = Hasher(Digest.of(data), 3)
    with pytest.raises(IntegrityError, match="larger than its descriptor"):
        long.update(data)
