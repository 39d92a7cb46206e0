"""Seed registries with deterministic random images using only the standard library.

Deliberately independent from `transship`: if our client and this code disagree, the registry
(and skopeo) arbitrate. Everything built from the same seed is byte-identical across runs on
one machine (layers are gzip with mtime 0).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import random
import ssl
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlencode, urljoin, urlsplit

Format = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = {"oci": OCI_MANIFEST, "docker": DOCKER_MANIFEST}
INDEX_TYPES = {"oci": OCI_INDEX, "docker": DOCKER_LIST}
CONFIG_TYPES = {"oci": OCI_CONFIG, "docker": DOCKER_CONFIG}
LAYER_TYPES = {"oci": OCI_LAYER, "docker": DOCKER_LAYER}
FOREIGN_LAYER_TYPES = {"oci": OCI_LAYER_NONDIST, "docker": DOCKER_FOREIGN_LAYER}

#: Every manifest media type, for `Accept` headers.
ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)

IMGPKG_BUNDLE_LABEL = {"dev.carvel.imgpkg.bundle": "true"}

DEFAULT_PLATFORMS: tuple[tuple[str, str], ...] = (("linux", "amd64"), ("linux", "arm64"))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- content model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A blob with its descriptor fields. `urls` marks a foreign layer (never pushed)."""

    data: bytes = field(repr=False)
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    diff_id: str | None = None  # sha256 of the uncompressed tar, for layers

    @classmethod
    def of(cls, data: bytes, media_type: str, **kw: Any) -> Blob:
        return cls(
            data=data, media_type=media_type, digest=sha256_digest(data), size=len(data), **kw
        )

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if self.urls:
            desc["urls"] = list(self.urls)
        return desc


@dataclass(frozen=True)
class Image:
    """A single-platform image: exact manifest bytes plus the blobs it references."""

    manifest: bytes = field(repr=False)
    media_type: str
    digest: str
    config: Blob
    layers: tuple[Blob, ...]
    platform: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config then layers (foreign layers included: check `Blob.urls`)."""
        return (self.config, *self.layers)

    @property
    def pushable_blobs(self) -> tuple[Blob, ...]:
        return tuple(b for b in self.blobs if not b.urls)

    @property
    def blob_digests(self) -> list[str]:
        return [b.digest for b in self.blobs]

    @property
    def blob_sizes(self) -> dict[str, int]:
        return {b.digest: b.size for b in self.blobs}

    def descriptor(self, with_platform: bool = True) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if with_platform:
            desc["platform"] = dict(self.platform)
        return desc


@dataclass(frozen=True)
class Index:
    """A multi-platform index (OCI index or Docker manifest list) and its child images."""

    manifest: bytes = field(repr=False)
    media_type: str
    digest: str
    images: tuple[Image, ...]

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """All distinct blobs of all children, in first-seen order."""
        seen: dict[str, Blob] = {}
        for img in self.images:
            for blob in img.blobs:
                seen.setdefault(blob.digest, blob)
        return tuple(seen.values())

    @property
    def blob_digests(self) -> list[str]:
        return [b.digest for b in self.blobs]

    @property
    def blob_sizes(self) -> dict[str, int]:
        return {b.digest: b.size for b in self.blobs}

    @property
    def manifest_digests(self) -> list[str]:
        """Index digest first, then each child manifest's digest."""
        return [self.digest, *(i.digest for i in self.images)]


def canonical_json(obj: Any) -> bytes:
    """Compact JSON, keys in insertion order (what we seed is exactly what gets pushed)."""
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- builders ----------------------------------------------------------------------------


def _rng(seed: int | random.Random) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def random_layer(
    seed: int | random.Random, size: int, fmt: Format = "oci", *, compresslevel: int = 1
) -> Blob:
    """A real tar.gz holding one file of `size` random bytes (so sizes are ~size + 200)."""
    rng = _rng(seed)
    payload = rng.randbytes(size)
    name = f"file-{rng.getrandbits(32):08x}.bin"
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(payload))
    raw = tar_buf.getvalue()
    data = gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    return Blob.of(data, LAYER_TYPES[fmt], diff_id=sha256_digest(raw))


def foreign_layer(seed: int | random.Random, size: int, fmt: Format = "oci") -> Blob:
    """A non-distributable layer: descriptor with `urls`, content never pushed."""
    blob = random_layer(seed, size, fmt)
    url = f"https://foreign.example.invalid/layers/{blob.digest}"
    return Blob(
        data=blob.data,
        media_type=FOREIGN_LAYER_TYPES[fmt],
        digest=blob.digest,
        size=blob.size,
        urls=(url,),
        diff_id=blob.diff_id,
    )


def build_image(
    seed: int | random.Random,
    *,
    fmt: Format = "oci",
    layer_sizes: Sequence[int] = (1024, 2048),
    base_layers: Sequence[Blob] = (),
    foreign_layer_sizes: Sequence[int] = (),
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """A random image: `base_layers` (shared), then foreign layers, then fresh layers.

    `labels` go to the config's `config.Labels` (e.g. `IMGPKG_BUNDLE_LABEL`); `annotations`
    to the manifest (OCI only; Docker schema 2 has none).
    """
    rng = _rng(seed)
    layers: list[Blob] = list(base_layers)
    layers += [foreign_layer(rng, size, fmt) for size in foreign_layer_sizes]
    layers += [random_layer(rng, size, fmt) for size in layer_sizes]
    platform = {"architecture": architecture, "os": os}
    if variant:
        platform["variant"] = variant
    config_obj: dict[str, Any] = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": architecture,
        "os": os,
    }
    if variant:
        config_obj["variant"] = variant
    config_obj["config"] = {"Env": ["PATH=/usr/bin:/bin"], "Labels": dict(labels or {})}
    config_obj["rootfs"] = {"type": "layers", "diff_ids": [b.diff_id or b.digest for b in layers]}
    config_obj["history"] = [{"created_by": f"transship seed {rng.getrandbits(32):08x}"}]
    config = Blob.of(canonical_json(config_obj), CONFIG_TYPES[fmt])
    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPES[fmt],
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("Docker schema 2 manifests carry no annotations")
        manifest_obj["annotations"] = dict(annotations)
    manifest = canonical_json(manifest_obj)
    return Image(
        manifest=manifest,
        media_type=MANIFEST_TYPES[fmt],
        digest=sha256_digest(manifest),
        config=config,
        layers=tuple(layers),
        platform=platform,
    )


def build_index(
    seed: int | random.Random,
    *,
    fmt: Format = "oci",
    platforms: Sequence[tuple[str, str]] = DEFAULT_PLATFORMS,
    layer_sizes: Sequence[int] = (1024, 2048),
    base_layers: Sequence[Blob] = (),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Index:
    """A multi-arch index (OCI index or Docker manifest list), one child per platform."""
    rng = _rng(seed)
    images = tuple(
        build_image(
            rng,
            fmt=fmt,
            layer_sizes=layer_sizes,
            base_layers=base_layers,
            os=os_,
            architecture=arch,
            labels=labels,
        )
        for os_, arch in platforms
    )
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPES[fmt],
        "manifests": [img.descriptor() for img in images],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("Docker manifest lists carry no annotations")
        obj["annotations"] = dict(annotations)
    manifest = canonical_json(obj)
    return Index(
        manifest=manifest,
        media_type=INDEX_TYPES[fmt],
        digest=sha256_digest(manifest),
        images=images,
    )


def build_images_sharing_base(
    seed: int | random.Random,
    count: int,
    *,
    fmt: Format = "oci",
    base_sizes: Sequence[int] = (4096,),
    layer_sizes: Sequence[int] = (1024,),
    labels: Mapping[str, str] | None = None,
) -> list[Image]:
    """`count` images whose first layers (from `base_sizes`) are the same blobs."""
    rng = _rng(seed)
    base = [random_layer(rng, size, fmt) for size in base_sizes]
    return [
        build_image(rng, fmt=fmt, layer_sizes=layer_sizes, base_layers=base, labels=labels)
        for _ in range(count)
    ]


# ---- a tiny registry client --------------------------------------------------------------


class RegistryLike(Protocol):
    """What `SeedClient.for_registry` needs (satisfied by `RegistryProcess`)."""

    @property
    def url(self) -> str: ...
    @property
    def ca_pem_path(self) -> Path | None: ...
    @property
    def credentials(self) -> tuple[str, str] | None: ...


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class RegistryError(Exception):
    def __init__(self, what: str, resp: Response) -> None:
        super().__init__(f"{what}: HTTP {resp.status} {resp.body[:500]!r}")
        self.response = resp


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` -> ("bearer", {...}); quoted values may hold commas."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = i + 1
            value_chars: list[str] = []
            while end < len(rest) and rest[end] != '"':
                if rest[end] == "\\" and end + 1 < len(rest):
                    end += 1
                value_chars.append(rest[end])
                end += 1
            params[key] = "".join(value_chars)
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


class SeedClient:
    """Minimal OCI distribution client: Basic auth and the bearer-token dance, nothing more.

    One HTTP connection per request (simple, and fine for seeding a few megabytes).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca_pem_path: Path | str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.ssl_context: ssl.SSLContext | None = (
            ssl.create_default_context(cafile=str(ca_pem_path)) if ca_pem_path else None
        )
        self.username = username
        self.password = password
        self.timeout = timeout
        self._auth: dict[str, str] = {}  # scope key -> Authorization header value
        self._basic_accepted = False  # after one Basic challenge, send it up front
        self.token_fetches = 0

    @classmethod
    def for_registry(cls, registry: RegistryLike, *, anonymous: bool = False) -> SeedClient:
        creds = None if anonymous else registry.credentials
        return cls(
            registry.url,
            ca_pem_path=registry.ca_pem_path,
            username=creds[0] if creds else None,
            password=creds[1] if creds else None,
        )

    # ---- HTTP --------------------------------------------------------------------------------

    def _raw(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        parts = urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            ctx = self.ssl_context or ssl.create_default_context()
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            hdrs = dict(headers)
            if body is not None or method in ("PUT", "POST", "PATCH"):
                hdrs.setdefault("Content-Length", str(len(body or b"")))
            conn.request(method, target or "/", body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def _basic(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        scope: str | None = None,
    ) -> Response:
        """One request; on a 401 challenge authenticate (Basic or Bearer) and retry once."""
        url = urljoin(self.base_url + "/", path_or_url)
        key = scope or "*"
        hdrs = dict(headers or {})
        if key in self._auth:
            hdrs["Authorization"] = self._auth[key]
        elif self._basic_accepted and (basic := self._basic()):
            hdrs["Authorization"] = basic
        resp = self._raw(method, url, body, hdrs)
        if resp.status != 401:
            return resp
        challenge = resp.header("www-authenticate")
        if not challenge:
            return resp
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            auth = self._basic()
            if auth is None:
                return resp
            self._basic_accepted = True
        elif scheme == "bearer":
            auth = "Bearer " + self.fetch_token(params, scope)
        else:
            return resp
        self._auth[key] = auth
        hdrs["Authorization"] = auth
        return self._raw(method, url, body, hdrs)

    def fetch_token(self, challenge: Mapping[str, str], scope: str | None = None) -> str:
        """GET realm?service=…&scope=… with Basic credentials if we have them."""
        query: list[tuple[str, str]] = []
        if challenge.get("service"):
            query.append(("service", challenge["service"]))
        for s in ([scope] if scope else []) + (
            [challenge["scope"]] if challenge.get("scope") and challenge["scope"] != scope else []
        ):
            query.append(("scope", s))
        url = challenge["realm"] + ("?" + urlencode(query) if query else "")
        hdrs = {}
        basic = self._basic()
        if basic:
            hdrs["Authorization"] = basic
        resp = self._raw("GET", url, None, hdrs)
        self.token_fetches += 1
        if resp.status != 200:
            raise RegistryError(f"token request {url}", resp)
        doc = json.loads(resp.body)
        return str(doc.get("token") or doc["access_token"])

    # ---- API ---------------------------------------------------------------------------------

    @staticmethod
    def _scope(repo: str, push: bool) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    def ping(self) -> Response:
        return self.request("GET", "/v2/")

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=self._scope(repo, False))
        return resp.status == 200

    def push_blob(self, repo: str, data: bytes, digest: str | None = None) -> str:
        """Monolithic upload: POST /blobs/uploads/ then PUT Location?digest=…; returns digest."""
        digest = digest or sha256_digest(data)
        scope = self._scope(repo, True)
        start = self.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"", scope=scope)
        if start.status != 202:
            raise RegistryError(f"start upload to {repo}", start)
        location = start.header("location")
        if not location:
            raise RegistryError("upload without Location", start)
        sep = "&" if "?" in location else "?"
        put_url = urljoin(self.base_url + "/", location) + f"{sep}digest={quote(digest)}"
        done = self.request(
            "PUT",
            put_url,
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            scope=scope,
        )
        if done.status != 201:
            raise RegistryError(f"finish upload {digest} to {repo}", done)
        return digest

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True if the registry mounted (201)."""
        scope = f"repository:{repo}:pull,push repository:{from_repo}:pull"
        path = f"/v2/{repo}/blobs/uploads/?{urlencode({'mount': digest, 'from': from_repo})}"
        resp = self.request("POST", path, body=b"", scope=scope)
        return resp.status == 201

    def get_blob(self, repo: str, digest: str) -> bytes:
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=self._scope(repo, False))
        if resp.status != 200:
            raise RegistryError(f"get blob {digest}", resp)
        return resp.body

    def push_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT exact bytes under a tag or digest; returns the registry's Docker-Content-Digest."""
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=data,
            headers={"Content-Type": media_type},
            scope=self._scope(repo, True),
        )
        if resp.status != 201:
            raise RegistryError(f"put manifest {repo}:{reference}", resp)
        digest = resp.header("docker-content-digest") or sha256_digest(data)
        if digest != sha256_digest(data):
            raise AssertionError(f"registry digest {digest} != {sha256_digest(data)}")
        return digest

    def get_manifest(
        self, repo: str, reference: str, accept: Iterable[str] = ALL_MANIFEST_TYPES
    ) -> tuple[bytes, str]:
        """(exact bytes, Content-Type)."""
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Accept": ", ".join(accept)},
            scope=self._scope(repo, False),
        )
        if resp.status != 200:
            raise RegistryError(f"get manifest {repo}:{reference}", resp)
        return resp.body, resp.header("content-type") or ""

    def delete_manifest(self, repo: str, digest: str) -> None:
        resp = self.request(
            "DELETE", f"/v2/{repo}/manifests/{digest}", scope=f"repository:{repo}:delete"
        )
        if resp.status != 202:
            raise RegistryError(f"delete manifest {repo}@{digest}", resp)

    def list_tags(self, repo: str) -> list[str]:
        resp = self.request("GET", f"/v2/{repo}/tags/list", scope=self._scope(repo, False))
        if resp.status == 404:
            return []
        if resp.status != 200:
            raise RegistryError(f"list tags {repo}", resp)
        return list(json.loads(resp.body).get("tags") or [])

    def push_image(self, repo: str, image: Image, tag: str | None = None) -> str:
        """Push missing blobs, then the manifest (by tag, or by digest if no tag)."""
        for blob in image.pushable_blobs:
            if not self.blob_exists(repo, blob.digest):
                self.push_blob(repo, blob.data, blob.digest)
        return self.push_manifest(repo, tag or image.digest, image.manifest, image.media_type)

    def push_index(self, repo: str, index: Index, tag: str | None = None) -> str:
        """Push every child by digest, then the index (by tag, or by digest if no tag)."""
        for image in index.images:
            self.push_image(repo, image)
        return self.push_manifest(repo, tag or index.digest, index.manifest, index.media_type)


def seed_image(
    registry: RegistryLike, repo: str, tag: str | None = "latest", seed: int = 0, **kw: Any
) -> Image:
    """Build an image with `build_image(seed, **kw)` and push it to `registry` as repo:tag."""
    image = build_image(seed, **kw)
    SeedClient.for_registry(registry).push_image(repo, image, tag)
    return image


def seed_index(
    registry: RegistryLike, repo: str, tag: str | None = "latest", seed: int = 0, **kw: Any
) -> Index:
    """Build an index with `build_index(seed, **kw)` and push it (children by digest)."""
    index = build_index(seed, **kw)
    SeedClient.for_registry(registry).push_index(repo, index, tag)
    return index
