"""Content digests: parsing, validation and incremental hashing.

A digest string comes from untrusted places (manifests, archives, user input) and is later used in
URLs and file paths, so it is validated strictly here: known algorithm, exact hex length, lowercase.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import lru_cache

from transship.errors import IntegrityError, InvalidDigestError

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
#: digests (and references, `transship.reference`) parsed and kept: a run parses the same ones
#: again and again (plan, tasks, engine), and a `Digest` is immutable, so one parse serves every
#: caller. Far above what a run needs (a 6000-entry plan parses ~10x that many distinct texts;
#: at 4096 each pass evicted what the next one needed: no hits at all), yet bounded: `serve`
#: runs for long and parses what clients send
PARSED_KEPT = 1 << 17


@dataclass(frozen=True, order=True)
class Digest:
    """A validated `algorithm:hex` content address."""

    algorithm: str
    hex: str

    @classmethod
    @lru_cache(maxsize=PARSED_KEPT)
    def parse(cls, text: str) -> Digest:
        """Parse and validate; raises InvalidDigestError naming what is wrong (not kept)."""
        if not _GRAMMAR.match(text):
            raise InvalidDigestError(f"invalid digest {text!r}: expected 'sha256:<64 hex digits>'")
        algorithm, _, hexpart = text.partition(":")
        want = _HEX_LENGTHS.get(algorithm)
        if want is None:
            raise InvalidDigestError(
                f"invalid digest {text!r}: unsupported algorithm {algorithm!r} (sha256 or sha512)"
            )
        if len(hexpart) != want or not _LOWER_HEX.fullmatch(hexpart):
            raise InvalidDigestError(
                f"invalid digest {text!r}: {algorithm} needs {want} lowercase hex digits"
            )
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of in-memory bytes (manifests, configs: never whole layers)."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Hasher:
        """A fresh incremental hasher that checks against this digest."""
        return Hasher(self)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """First 12 hex digits, for humans."""
        return f"{self.algorithm}:{self.hex[:12]}"


class Hasher:
    """Hashes a stream chunk by chunk and verifies digest and size at the end."""

    def __init__(self, expected: Digest, expected_size: int | None = None) -> None:
        self.expected = expected
        self.expected_size = expected_size
        self._hash = hashlib.new(expected.algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        if self.expected_size is not None and self.size > self.expected_size:
            raise IntegrityError(
                f"blob {self.expected.short} is larger than its descriptor says "
                f"({self.size} > {self.expected_size} bytes)"
            )

    def copy(self) -> Hasher:
        """An independent hasher in the same state (the same bytes seen)."""
        twin = Hasher(self.expected, self.expected_size)
        twin._hash = self._hash.copy()
        twin.size = self.size
        return twin

    def verify(self, what: str = "blob") -> None:
        """Raise IntegrityError if the bytes seen do not match."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise IntegrityError(
                f"{what} {self.expected.short} has {self.size} bytes, "
                f"its descriptor says {self.expected_size}"
            )
        actual = self._hash.hexdigest()
        if actual != self.expected.hex:
            raise IntegrityError(
                f"{what} {self.expected.short} does not match its digest "
                f"(content hashes to {self.expected.algorithm}:{actual[:12]})"
            )


#: opens the rest of a blob from byte `hasher.size`, the hasher already fed the bytes before
#: it (what a resuming sink re-read); the stream verifies the whole blob's digest at its end
RestOpener = Callable[[Hasher], AbstractAsyncContextManager[AsyncIterator[bytes]]]
