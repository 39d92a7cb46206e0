"""Digests (`transship.digest`): strict parsing and hashing while streaming."""

from __future__ import annotations

import hashlib

import pytest

from transship.digest import Digest, Hasher
from transship.errors import IntegrityError, InvalidDigestError

DATA = b"transship" * 1000
SHA256 = "sha256:" + hashlib.sha256(DATA).hexdigest()
SHA512 = "sha512:" + hashlib.sha512(DATA).hexdigest()


def test_parse_round_trips_and_shortens() -> None:
    digest = Digest.parse(SHA256)
    assert (digest.algorithm, str(digest)) == ("sha256", SHA256)
    assert digest.short == SHA256[:19]
    assert str(Digest.parse(SHA512)) == SHA512
    assert {Digest.parse(SHA256), Digest.parse(SHA256)} == {digest}  # hashable, by value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected"),
        ("sha256", "expected"),
        ("sha256:" + "A" * 64, "lowercase hex"),
        ("sha256:" + "a" * 63, "64 lowercase"),
        ("sha256:" + "a" * 65, "64 lowercase"),
        ("sha512:" + "a" * 64, "128 lowercase"),
        ("md5:" + "a" * 32, "unsupported algorithm"),
        ("sha256:../../etc/passwd", "expected"),
        ("sha256:" + "g" * 64, "lowercase hex"),
        (" sha256:" + "a" * 64, "expected"),
    ],
)
def test_parse_refuses_anything_else(text: str, why: str) -> None:
    with pytest.raises(InvalidDigestError, match=why):
        Digest.parse(text)


def test_of_matches_hashlib() -> None:
    assert str(Digest.of(DATA)) == SHA256
    assert str(Digest.of(DATA, "sha512")) == SHA512


@pytest.mark.parametrize("expected", [SHA256, SHA512])
def test_hasher_accepts_the_right_stream_in_any_chunks(expected: str) -> None:
    for size in (1, 7, 4096, len(DATA)):
        hasher = Hasher(Digest.parse(expected), len(DATA))
        for i in range(0, len(DATA), size):
            hasher.update(DATA[i : i + size])
        hasher.verify()
        assert hasher.size == len(DATA)


def test_hasher_refuses_a_flipped_byte() -> None:
    bad = bytearray(DATA)
    bad[100] ^= 0xFF
    hasher = Hasher(Digest.parse(SHA256), len(DATA))
    hasher.update(bytes(bad))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        hasher.verify("blob")


def test_hasher_refuses_too_many_bytes_as_they_arrive() -> None:
    hasher = Hasher(Digest.parse(SHA256), len(DATA))
    hasher.update(DATA)
    with pytest.raises(IntegrityError, match="larger than its descriptor"):
        hasher.update(b"x")


def test_hasher_refuses_a_short_stream() -> None:
    hasher = Hasher(Digest.parse(SHA256), len(DATA))
    hasher.update(DATA[:-1])
    with pytest.raises(IntegrityError, match=f"has {len(DATA) - 1} bytes"):
        hasher.verify("manifest")


def test_hasher_without_a_size_checks_the_hash_only() -> None:
    hasher = Digest.parse(SHA256).hasher()
    hasher.update(DATA)
    hasher.verify()
    wrong = Digest.parse(SHA256).hasher()
    wrong.update(DATA + b"!")
    with pytest.raises(IntegrityError, match="does not match"):
        wrong.verify()


def test_a_digest_is_parsed_once_per_run_and_a_bad_one_refused_every_time() -> None:
    """A no-op rerun parses the same few hundred digests thousands of times (plan, tasks,
    engine): the immutable result is kept; a refusal is never kept."""
    text = "sha256:" + "ab" * 32
    assert Digest.parse(text) is Digest.parse(text)
    for _ in range(2):
        with pytest.raises(InvalidDigestError, match="lowercase hex"):
            Digest.parse("sha256:" + "AB" * 32)
