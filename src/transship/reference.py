"""Image references: the Docker/OCI grammar, `docker.io` normalisation, clear errors.

Mirrors the grammar of distribution's `reference` package: `[host[:port]/]path[:tag][@digest]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from transship.digest import PARSED_KEPT, Digest
from transship.errors import InvalidDigestError, InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# `\Z`, not `$` (which also matches before a final newline), and ASCII classes, not `\w` (which
# takes any Unicode letter or digit): the distribution grammar, nothing more
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_MAX_NAME = 255
#: far longer than any reference or prefix can be (host 253 + port, path 255, tag 128, digest
#: 135, with room for a `user:password@` or token left in): such text is refused as too long
#: before it is scanned for credentials (~0.5 µs a character: 9 s for a hostile 16 MiB line),
#: and never quoted, since where credentials in it end is not looked for
MAX_REFERENCE_CHARS = 8192


#: skopeo's transport prefixes and URL schemes, which a reference here goes without
_TRANSPORTS = frozenset({"docker", "oci", "https", "http"})


#: `user:password@host/…` (with or without a scheme): credentials written into a reference,
#: as in a URL; the last `@` followed by `host[:port]/` ends them (a digest's `@` is followed
#: by `algorithm:hex`, which is no host[:port])
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOST_THEN_PATH = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?/")


def without_userinfo(text: str) -> str | None:
    """`text` with credentials written into it (`user:password@host/path`) masked as
    `***@host/path`, or None when it holds none. An error must never echo a password.
    Linear in the text (no backtracking regex): a damaged file may hold a huge line. Text
    longer than `MAX_REFERENCE_CHARS` is not scanned: it is masked whole."""
    if len(text) > MAX_REFERENCE_CHARS:
        return f"<{len(text)} characters, not shown>"
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme else 0
    colon = text.find(":", start)
    at = len(text)
    while colon != -1:
        at = text.rfind("@", colon + 1, at)
        if at == -1:
            return None
        if _HOST_THEN_PATH.match(text, at + 1):
            return f"{text[:start]}***@{text[at + 1 :]}"
    return None


def refuse_too_long(text: str, what: str) -> None:
    """Refuse text far longer than any reference, without scanning or quoting it."""
    if len(text) > MAX_REFERENCE_CHARS:
        raise InvalidReferenceError(
            f"{what} of {len(text)} characters: far longer than any reference can be (at most "
            f"{MAX_REFERENCE_CHARS}); not shown, it may hold credentials: is this the right line?"
        )


def _refuse_userinfo(text: str, what: str) -> None:
    refuse_too_long(text, what)
    masked = without_userinfo(text)
    if masked is not None:
        raise InvalidReferenceError(
            f"{what} {masked!r} holds credentials (user:password@): give the reference "
            "without them and the credentials with --src-creds/--dest-creds USER:PASSWORD "
            "(or docker login)"
        )


def is_tag(text: str) -> bool:
    """Whether `text` is a tag the distribution grammar allows (what goes after `:`): ASCII
    only, no final newline. The one check of a tag: layouts, `serve` and references use it."""
    return bool(_TAG.match(text))


def _fail(text: str, why: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"invalid image reference {text!r}: {why}")


def _looks_like_host_port(name: str, tag: str) -> bool:
    """`127.0.0.1:5000`, `localhost:5000`, `registry.example:443`: a registry named where an
    image was meant (a port for a tag, a host for a Docker Hub name)."""
    if not (tag.isdigit() and 1 <= len(tag) <= 5):
        return False
    if name == "localhost" or re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", name):
        return True
    last = name.rsplit(".", 1)[-1]
    return "." in name and len(tag) >= 2 and last.isalpha() and len(last) >= 2


def _looks_like_domain(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


@dataclass(frozen=True)
class Reference:
    """A parsed reference; `registry` and `repository` are always normalised."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    @lru_cache(maxsize=PARSED_KEPT)  # immutable, and a run parses each reference many times
    def parse(cls, text: str) -> Reference:
        """Parse a reference, adding `docker.io` and `library/` like the Docker CLI does."""
        _refuse_userinfo(text, "invalid image reference")
        if not text or text != text.strip():
            raise _fail(text, "empty or surrounded by white space")
        transport, sep, after = text.partition("://")
        if sep and transport in _TRANSPORTS:
            raise _fail(text, f"drop the {transport}:// prefix (transship takes {after!r})")
        rest = text
        digest: Digest | None = None
        if "@" in rest:
            rest, _, digest_text = rest.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except InvalidDigestError as exc:
                raise _fail(text, str(exc).removeprefix("invalid digest ")) from None
        tag: str | None = None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not is_tag(tag):
                raise _fail(text, f"tag {tag!r} must be 1-128 of letters, digits, '_', '.', '-'")
        if not rest:
            raise _fail(text, "no repository name")
        first, sep, remainder = rest.partition("/")
        if not sep and tag is not None and _looks_like_host_port(rest, tag):
            raise _fail(  # docker.io/library/127.0.0.1:5000 is never what was meant
                text, f"names a registry, not an image: add the repository, e.g. {text}/REPO:TAG"
            )
        if sep and _looks_like_domain(first):
            registry, path = first, remainder
            if not _DOMAIN.match(registry):
                raise _fail(text, f"registry host {registry!r} is not a valid host[:port]")
        else:
            registry, path = DOCKER_HUB, rest
        if registry in ("index.docker.io", "registry-1.docker.io"):
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        for component in path.split("/"):
            if not component:
                raise _fail(text, "empty path component (double or trailing '/')")
            if not _PATH_COMPONENT.match(component):
                raise _fail(
                    text,
                    f"repository component {component!r} must be lowercase letters and digits "
                    "separated by '.', '_', '__' or '-'",
                )
        if len(path) > _MAX_NAME:
            raise _fail(text, f"repository name longer than {_MAX_NAME} characters")
        return cls(registry, path, tag, digest)

    @classmethod
    def parse_repository(cls, text: str) -> Reference:
        """Parse `host/path` naming a repository: no tag or digest allowed."""
        ref = cls.parse(text)
        if ref.tag or ref.digest:
            raise _fail(text, "a repository is expected here, without tag or digest")
        return ref

    @property
    def api_host(self) -> str:
        """Host:port to send HTTP requests to (Docker Hub's API lives elsewhere)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after `/manifests/`: the digest if pinned, else the tag (default latest)."""
        if self.digest:
            return str(self.digest)
        return self.tag or "latest"

    def with_tag(self, tag: str | None) -> Reference:
        return replace(self, tag=tag)

    def with_digest(self, digest: Digest | None) -> Reference:
        return replace(self, digest=digest)

    def in_repository(self, repository: str) -> Reference:
        """Same registry, another repository, no tag or digest."""
        return Reference(self.registry, repository)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_prefix(text: str, what: str = "destination prefix", *, need_path: bool = False) -> str:
    """Validate a registry prefix `host[:port][/path]` that repository paths are put under
    (the TKG_CUSTOM_IMAGE_REPOSITORY form); returns it without white space or trailing '/'.

    The one check for every prefix transship takes (`--dest`, `--source`, a BOM's
    imageRepository, a plan's or archive's recorded prefix): no scheme, tag or digest, and the
    registry host spelled out, so that `tkg` is never silently read as `docker.io/tkg`.
    `need_path`: a bare host is not enough (TKG wants a project below it).
    """
    _refuse_userinfo(text.strip(), what)
    value = text.strip().rstrip("/")

    def fail(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"{what} {text!r} is not a registry prefix: {why}".lstrip())

    if "://" in value:
        raise fail("give it without a scheme, as host[:port]/path")
    host, _, path = value.partition("/")
    if not host:
        raise fail("give host[:port]/path, e.g. harbor.example.com/tkg")
    if not (_looks_like_domain(host) and _DOMAIN.match(host)):
        raise fail(f"{host!r} is not a registry host[:port]; give e.g. harbor.example.com/tkg")
    if need_path and not path:
        raise fail("give the registry host and a project, e.g. harbor.example.com/tkg")
    try:
        Reference.parse_repository(f"{value}/x")
    except InvalidReferenceError as exc:
        raise fail(str(exc).removeprefix("invalid image reference ")) from None
    return value


def shared_parts(paths: Sequence[Sequence[str]]) -> list[str]:
    """The leading path parts (`host`, `project`, …) every one of `paths` begins with; the
    callers decide how much of a repository name must stay outside it. Empty for no paths."""
    if not paths:
        return []
    common = list(paths[0])
    for parts in paths[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return common
