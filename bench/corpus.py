"""A deterministic TKG-shaped corpus of synthetic images, pushed into a loopback registry.

Run by hand, never in CI:

    .venv/bin/python bench/corpus.py --out /tmp/corpus [--walk release|old] [--scale 1.0] \
        [--replicas 1]

starts a plain-HTTP `docker-registry` (the test harness), pushes the corpus and writes
`OUT/images.txt` (one `host/path:tag` per line) and `OUT/corpus.json` (totals, every reference
with its digest, the bundles' image copies, every unique blob with its size, first repository
and every repository that needs it, and the manifest graph: each unique manifest's media type,
blobs and children); `--serve` keeps the registry running until Ctrl-C. `bench/run.py` imports
`build_corpus` / `push_corpus` instead.

Names come from the real TKG 1.5.3 fixtures (`tests/data/tkg`) through transship's own planning
code: `--walk release` is the release set (189 references), `--walk old` what the vendor script
walks (476). Each reference keeps its repository path and tag under `tkg/`. The content is
synthetic and shaped like TKG's:

- regular images: 85% start with one of 3 shared base layers (30, 15 and 5 MB at scale 1); a
  third are "tiny" (KB-sized layers), the rest get 1-3 medium layers, and repositories with
  several tags share one repository layer across them; 6 images carry one 20-60 MB layer;
- 10% of regular images are multi-arch indexes (amd64 + arm64 children);
- Windows `pause` tags are Windows images with a non-distributable (foreign) layer;
- bundle entries are imgpkg bundles: config label `dev.carvel.imgpkg.bundle: "true"` and one
  layer holding `.imgpkg/images.yml` that locks 1-4 corpus images by digest (package bundles
  lock images, `packages/*/repo` bundles lock package bundles); as in a mirror that imgpkg
  filled, every image a bundle needs (nested ones too) is also in the bundle's repository under
  `sha256-<hex>.imgpkg`, which is where imgpkg and transship look first;
- BOM / compatibility entries are one-layer images holding the fixture YAML itself;
- 70% Docker schema 2, 30% OCI media types (by reference).

`--replicas N` multiplies the names: replica 0 is the set above (same digests as without the
option), replica i >= 1 is the same set again under `r<ii>/` (`r01/tkg/ako:...`), with its own
content (only the 3 base layers are shared by all replicas, as releases share their bases),
its own 6 big layers, and bundles that lock images of their own replica only. This is the
corpus for cost growth: `--walk old --replicas 10` is 4,760 references and 1,411 bundle images,
6,171 tags in 1,450 repositories.

Medium layer sizes are normalised so that the unique blob bytes come to `scale` GB (10^9 bytes)
per replica; bases and big layers are multiplied by `scale`, KB-sized content is not scaled.
Every byte derives from `--seed` and the reference names: the same arguments give the same
digests.
Random payloads come from AES-CTR (fast) and layers are real tar.gz streams made of stored
(uncompressed) deflate blocks, so tools that sniff compression see gzip without anyone paying
for compression.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import struct
import sys
import tarfile
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.registry import RegistryProcess  # noqa: E402
from harness.seed import RegistryLike, SeedClient  # noqa: E402

from transship.plan import (  # noqa: E402
    EntryKind,
)
from transship.reference import Reference  # noqa: E402
from transship.tkg.bom import (  # noqa: E402
    TkgCompatibility,
    TkrCompatibility,
    load_bom,
    load_compatibility,
    plan_from_boms,
    tkr_bom_filename,
)

DATA = ROOT / "tests" / "data" / "tkg"
TKG_BOM = "tkg-bom-v1.5.3.yaml"
TKR_COMPAT = "tkr-compatibility-v13-v1.5.3.yaml"
TKG_COMPAT = "tkg-compatibility-v1.5.3.yaml"
RELEASE = "v1.5.3"

Walk = Literal["release", "old"]
Format = Literal["docker", "oci"]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA: dict[Format, dict[str, str]] = {
    "docker": {
        "manifest": DOCKER_MANIFEST,
        "index": DOCKER_LIST,
        "config": DOCKER_CONFIG,
        "layer": DOCKER_LAYER,
    },
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER},
}

MB = 1_000_000
KB = 1_000
GB = 1_000_000_000
BASE_SIZES = (30 * MB, 15 * MB, 5 * MB)
BASE_WEIGHTS = (0.45, 0.35, 0.20)
BASE_SHARE = 0.85
INDEX_SHARE = 0.10
TINY_SHARE = 0.35
OCI_SHARE = 0.30
BIG_LAYERS = 6
BIG_RANGE = (20 * MB, 60 * MB)
KEEP_IN_MEMORY = 1 << 20  # blobs up to this size are kept; bigger ones are regenerated to push
UPSTREAM_PREFIX = "projects.registry.vmware.com/"
CREATED = "2022-05-01T00:00:00Z"


# ---- deterministic bytes --------------------------------------------------------------------


def _hash(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts`."""
    return int.from_bytes(_hash(*parts)[:8], "big") / 2**64


def _rng(*parts: str) -> random.Random:
    return random.Random(int.from_bytes(_hash(*parts)[:8], "big"))


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def random_payload(seed: bytes, size: int) -> bytes:
    """`size` pseudo-random bytes from AES-256-CTR keyed by `seed` (GB/s, deterministic)."""
    encryptor = Cipher(
        algorithms.AES(hashlib.sha256(seed).digest()), modes.CTR(bytes(16))
    ).encryptor()
    return encryptor.update(bytes(size)) + encryptor.finalize()


_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown


def stored_gzip(raw: bytes) -> bytes:
    """A valid gzip stream of `raw` in stored (level 0) deflate blocks: no compression cost."""
    parts: list[bytes | memoryview] = [_GZIP_HEADER]
    view = memoryview(raw)
    offsets = range(0, len(raw), 0xFFFF) if raw else range(1)
    for offset in offsets:
        block = view[offset : offset + 0xFFFF]
        final = 1 if offset + 0xFFFF >= len(raw) else 0
        parts.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
    parts.append(struct.pack("<II", zlib.crc32(raw) & 0xFFFFFFFF, len(raw) & 0xFFFFFFFF))
    return b"".join(parts)


def tar_of(files: Sequence[tuple[str, bytes]]) -> bytes:
    """A USTAR archive of regular files (mtime 0, root-owned): deterministic bytes."""
    parts: list[bytes] = []
    for name, data in files:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uname = info.gname = "root"
        parts += [info.tobuf(format=tarfile.USTAR_FORMAT), data, bytes(-len(data) % 512)]
    parts.append(bytes(1024))
    return b"".join(parts)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- content model --------------------------------------------------------------------------


@dataclass
class LayerSpec:
    """A layer before its bytes exist: random payload of `payload` bytes, or given files."""

    key: str  # identity: equal keys are the same blob
    payload: int = 0
    files: tuple[tuple[str, bytes], ...] = ()
    compress: bool = False  # real gzip (small YAML layers) instead of stored blocks

    def render(self) -> tuple[bytes, bytes]:
        """(blob bytes, uncompressed tar bytes)."""
        files = self.files or ((f"layer/{_hash(self.key).hex()[:16]}.bin", self._random()),)
        raw = tar_of(files)
        blob = gzip.compress(raw, compresslevel=6, mtime=0) if self.compress else stored_gzip(raw)
        return blob, raw

    def _random(self) -> bytes:
        return random_payload(self.key.encode(), self.payload)


@dataclass
class Blob:
    """A pushable blob: digest, size, media type; bytes kept when small."""

    digest: str
    size: int
    media_type: str
    diff_id: str = ""
    data: bytes | None = field(default=None, repr=False)
    spec: LayerSpec | None = field(default=None, repr=False)
    urls: tuple[str, ...] = ()

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if self.urls:
            desc["urls"] = list(self.urls)
        return desc

    def bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.spec is not None
        data, _raw = self.spec.render()
        if digest_of(data) != self.digest:
            raise AssertionError(f"regenerated {self.spec.key} does not match {self.digest}")
        return data


@dataclass
class Manifest:
    """Exact manifest bytes; `blobs` for an image, `children` for an index."""

    data: bytes = field(repr=False)
    media_type: str
    digest: str
    blobs: tuple[Blob, ...] = ()
    children: tuple[Manifest, ...] = ()
    platform: dict[str, str] = field(default_factory=dict)

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": len(self.data),
            "digest": self.digest,
        }
        if self.platform:
            desc["platform"] = self.platform
        return desc

    def all_blobs(self) -> list[Blob]:
        found = list(self.blobs)
        for child in self.children:
            found += child.all_blobs()
        return found

    def all_manifests(self) -> list[Manifest]:
        """Children first, this one last (push order)."""
        out: list[Manifest] = []
        for child in self.children:
            out += child.all_manifests()
        return [*out, self]


RefKind = Literal["image", "index", "windows", "bundle", "metadata"]


@dataclass
class CorpusRef:
    repository: str  # e.g. tkg/packages/core/antrea (r01/tkg/packages/core/antrea: replica 1)
    tag: str
    kind: RefKind
    replica: int = 0
    manifest: Manifest | None = None
    locked: list[CorpusRef] = field(default_factory=list)  # a bundle's images.yml rows

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def digest(self) -> str:
        assert self.manifest is not None
        return self.manifest.digest

    def closure(self) -> list[CorpusRef]:
        """Every image a bundle needs, nested bundles' images included (imgpkg copy -b)."""
        seen: dict[str, CorpusRef] = {}
        todo = list(self.locked)
        while todo:
            ref = todo.pop()
            if ref.digest not in seen:
                seen[ref.digest] = ref
                todo += ref.locked
        return sorted(seen.values(), key=lambda r: r.name)


def imgpkg_tag(digest: str) -> str:
    """`sha256-<hex>.imgpkg`, the tag imgpkg gives each image it copies next to a bundle."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}.imgpkg"


@dataclass(frozen=True)
class BundleImage:
    """An image a bundle locks, in the bundle's repository under its imgpkg tag: the upstream
    looks like an imgpkg-relocated mirror, where imgpkg (and transship) find them first."""

    repository: str
    manifest: Manifest

    @property
    def tag(self) -> str:
        return imgpkg_tag(self.manifest.digest)

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass
class Corpus:
    walk: Walk
    scale: float
    seed: str
    refs: list[CorpusRef]
    blobs: dict[str, Blob]  # pushable unique blobs by digest
    homes: dict[str, str]  # digest -> first repository that holds it
    placements: set[tuple[str, str]]  # (repository, digest) every blob must be found at
    bundle_images: list[BundleImage] = field(default_factory=list)
    seconds_to_build: float = 0.0
    replicas: int = 1

    def manifest_digests(self) -> set[str]:
        return {m.digest for r in self.refs if r.manifest for m in r.manifest.all_manifests()}

    def totals(self) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for ref in self.refs:
            kinds[ref.kind] += 1
        manifests = self.manifest_digests()
        foreign = {
            b.digest for r in self.refs if r.manifest for b in r.manifest.all_blobs() if b.urls
        }
        sizes = [b.size for b in self.blobs.values()]
        return {
            "walk": self.walk,
            "scale": self.scale,
            "seed": self.seed,
            "replicas": self.replicas,
            "refs": len(self.refs),
            "tags": len(self.refs) + len(self.bundle_images),
            "repositories": len({r.repository for r in self.refs}),
            "kinds": dict(sorted(kinds.items())),
            "unique_manifests": len(manifests),
            "unique_blobs": len(self.blobs),
            "unique_bytes": sum(sizes),
            "blobs_over_1MiB": sum(1 for s in sizes if s > 1 << 20),
            "largest_blob": max(sizes, default=0),
            "foreign_layers": len(foreign),
            "placements": len(self.placements),
            "bundle_images": len(self.bundle_images),
        }

    def to_json(self, host: str | None) -> dict[str, Any]:
        where: dict[str, set[str]] = defaultdict(set)
        for repository, digest in self.placements:
            where[digest].add(repository)
        return {
            "upstream": host,
            "totals": self.totals(),
            "refs": [
                {
                    "ref": r.name,
                    "repository": r.repository,
                    "tag": r.tag,
                    "kind": r.kind,
                    "digest": r.manifest.digest if r.manifest else None,
                }
                for r in self.refs
            ],
            "bundle_images": [
                {
                    "ref": b.name,
                    "repository": b.repository,
                    "tag": b.tag,
                    "digest": b.manifest.digest,
                }
                for b in self.bundle_images
            ],
            "blobs": [
                {
                    "digest": d,
                    "size": b.size,
                    "repository": self.homes[d],
                    "repositories": [self.homes[d], *sorted(where[d] - {self.homes[d]})],
                }
                for d, b in sorted(self.blobs.items(), key=lambda kv: -kv[1].size)
            ],
            "manifests": self.manifest_graph(),
        }

    def manifest_graph(self) -> list[dict[str, Any]]:
        """Every unique manifest: media type, a source repository holding it, the blobs it
        needs in a repository (foreign layers excluded: registries do not hold them) and its
        children (by digest), for a client that pushes without looking."""
        graph: dict[str, dict[str, Any]] = {}
        holders = [(r.repository, r.manifest) for r in self.refs if r.manifest]
        holders += [(b.repository, b.manifest) for b in self.bundle_images]
        for repository, top in holders:
            for m in top.all_manifests():
                graph.setdefault(
                    m.digest,
                    {
                        "digest": m.digest,
                        "mediaType": m.media_type,
                        "size": len(m.data),
                        "repository": repository,
                        "blobs": [b.digest for b in m.blobs if not b.urls],
                        "children": [c.digest for c in m.children],
                    },
                )
        return [graph[d] for d in sorted(graph)]


# ---- names from the fixtures ----------------------------------------------------------------


@dataclass(frozen=True)
class NamedRef:
    repository: str
    tag: str
    kind: EntryKind
    replica: int = 0


def tkg_names(walk: Walk) -> list[NamedRef]:
    """Repository and tag of every plan entry, as transship's planning finds them."""
    tkr_compat = load_compatibility(DATA / TKR_COMPAT)
    tkg_compat = load_compatibility(DATA / TKG_COMPAT)
    assert isinstance(tkr_compat, TkrCompatibility) and isinstance(tkg_compat, TkgCompatibility)
    versions = tkr_compat.tkrs_for(RELEASE) if walk == "release" else tkr_compat.all_tkrs()
    tkrs = [load_bom(DATA / tkr_bom_filename(v)) for v in versions]
    plan = plan_from_boms(
        load_bom(DATA / TKG_BOM), tkrs, [tkr_compat, tkg_compat], "bench.invalid/tkg"
    )
    out = []
    for entry in plan.entries:
        ref = Reference.parse(entry.source)
        assert ref.tag is not None, entry.source
        out.append(NamedRef(ref.repository, ref.tag, entry.kind))
    return out


def replicate(names: Sequence[NamedRef], replicas: int) -> list[NamedRef]:
    """`names` as is (replica 0), then again under `r01/`, `r02/`, ... for the growth corpus."""
    out = list(names)
    for i in range(1, replicas):
        out += [NamedRef(f"r{i:02d}/{n.repository}", n.tag, n.kind, i) for n in names]
    return out


def metadata_file(repository: str, tag: str) -> tuple[str, bytes]:
    """The fixture YAML a BOM / compatibility image holds (name as TKG's tooling writes it)."""
    base = repository.rsplit("/", 1)[-1]
    if base == "tkg-bom":
        name = f"tkg-bom-{tag}.yaml"
        path = DATA / name
    elif base == "tkr-bom":
        name = f"tkr-bom-{tag.replace('_', '+', 1)}.yaml"
        path = DATA / name
    elif base == "tkr-compatibility":
        name, path = "tkr-compatibility.yaml", DATA / TKR_COMPAT
    else:
        name, path = "tkg-compatibility.yaml", DATA / TKG_COMPAT
    return name, path.read_bytes()


# ---- building -------------------------------------------------------------------------------


@dataclass
class _Draft:
    """A regular image (or one index child) before sizes are normalised."""

    layers: list[LayerSpec]
    medium: list[LayerSpec]  # the subset whose payload is normalised


class _Builder:
    def __init__(self, walk: Walk, scale: float, seed: str, threads: int, replicas: int) -> None:
        self.walk = walk
        self.scale = scale
        self.replicas = replicas
        self.seed = seed
        self.threads = threads
        self.bases = [
            LayerSpec(f"{seed}/base/{i}", payload=max(1024, int(size * scale)))
            for i, size in enumerate(BASE_SIZES)
        ]
        self.repo_layers: dict[str, LayerSpec] = {}
        self.rendered: dict[str, Blob] = {}  # LayerSpec.key -> Blob
        self.by_replica: dict[int, list[CorpusRef]] = defaultdict(list)

    def u(self, *parts: str) -> float:
        return _unit(self.seed, *parts)

    def fmt(self, name: str) -> Format:
        return "oci" if self.u("fmt", name) < OCI_SHARE else "docker"

    def build(self) -> Corpus:
        start = time.monotonic()
        names = replicate(tkg_names(self.walk), self.replicas)
        regular = [n for n in names if n.kind is EntryKind.IMAGE]
        tags_per_repo: dict[str, int] = defaultdict(int)
        for n in regular:
            tags_per_repo[n.repository] += 1
        ranked = sorted(
            (n for n in regular if "windows" not in n.tag),
            key=lambda n: self.u("big", n.repository, n.tag),
        )
        big = {(n.repository, n.tag) for n in ranked[: BIG_LAYERS * self.replicas]}

        drafts: dict[tuple[str, str], list[tuple[_Draft, dict[str, str]]]] = {}
        kinds: dict[tuple[str, str], RefKind] = {}
        for n in regular:
            key = (n.repository, n.tag)
            if "windows" in n.tag:
                kinds[key] = "windows"
                drafts[key] = [(self._windows_draft(n), {"os": "windows", "architecture": "amd64"})]
                continue
            is_index = self.u("index", *key) < INDEX_SHARE
            kinds[key] = "index" if is_index else "image"
            arches = ("amd64", "arm64") if is_index else ("amd64",)
            shared = tags_per_repo[n.repository] > 1
            drafts[key] = [
                (
                    self._draft(n, arch, shared=shared, big=key in big and arch == "amd64"),
                    {"os": "linux", "architecture": arch},
                )
                for arch in arches
            ]
        self._normalise([d for pairs in drafts.values() for d, _p in pairs])

        # render every random layer once (hashing is what costs; threads overlap it)
        specs: dict[str, LayerSpec] = {}
        for pairs in drafts.values():
            for draft, _platform in pairs:
                for spec in draft.layers:
                    specs.setdefault(spec.key, spec)
        self._render(specs.values())

        refs: list[CorpusRef] = []
        by_key: dict[tuple[str, str], CorpusRef] = {}
        for n in names:
            ref = CorpusRef(n.repository, n.tag, "image", replica=n.replica)
            key = (n.repository, n.tag)
            if n.kind is EntryKind.METADATA:
                ref.kind = "metadata"
                name, data = metadata_file(n.repository, n.tag)
                ref.manifest = self._image(
                    ref.name,
                    "docker",
                    [LayerSpec(f"meta/{ref.name}", files=((name, data),), compress=True)],
                )
            elif n.kind is EntryKind.IMAGE:
                ref.kind = kinds[key]
                ref.manifest = self._regular(ref, drafts[key])
            by_key[key] = ref
            refs.append(ref)
        # bundles last: package bundles lock images, repository bundles lock package bundles
        bundles = [r for r in refs if r.manifest is None]
        for ref in refs:
            self.by_replica[ref.replica].append(ref)
        for ref in bundles:
            ref.kind = "bundle"
        for ref in sorted(bundles, key=lambda r: r.repository.endswith("/repo")):
            ref.manifest = self._bundle(ref, refs)
        copies: dict[tuple[str, str], BundleImage] = {}
        for ref in bundles:
            for locked in ref.closure():
                assert locked.manifest is not None
                copies.setdefault(
                    (ref.repository, locked.digest), BundleImage(ref.repository, locked.manifest)
                )

        blobs: dict[str, Blob] = {}
        homes: dict[str, str] = {}
        placements: set[tuple[str, str]] = set()
        holders = [(r.repository, r.manifest) for r in refs]
        holders += [(b.repository, b.manifest) for b in copies.values()]
        for repository, manifest in holders:
            assert manifest is not None
            for blob in manifest.all_blobs():
                if blob.urls:
                    continue
                blobs.setdefault(blob.digest, blob)
                homes.setdefault(blob.digest, repository)
                placements.add((repository, blob.digest))
        corpus = Corpus(self.walk, self.scale, self.seed, refs, blobs, homes, placements)
        corpus.replicas = self.replicas
        corpus.bundle_images = sorted(copies.values(), key=lambda b: b.name)
        corpus.seconds_to_build = time.monotonic() - start
        return corpus

    # -- drafts -----------------------------------------------------------------------------

    def _draft(self, n: NamedRef, arch: str, *, shared: bool, big: bool) -> _Draft:
        rng = _rng(self.seed, "draft", n.repository, n.tag, arch)
        name = f"{n.repository}:{n.tag}/{arch}"
        layers: list[LayerSpec] = []
        medium: list[LayerSpec] = []
        if rng.random() < BASE_SHARE:
            layers.append(rng.choices(self.bases, weights=BASE_WEIGHTS)[0])
        if rng.random() < TINY_SHARE:
            for i in range(rng.randint(1, 2)):
                payload = int(_log_uniform(rng, 1 * KB, 200 * KB))
                layers.append(LayerSpec(f"{self.seed}/{name}/tiny{i}", payload=payload))
        else:
            if shared:
                repo_layer = self.repo_layers.get(n.repository)
                if repo_layer is None:
                    repo_rng = _rng(self.seed, "repo", n.repository)
                    repo_layer = LayerSpec(
                        f"{self.seed}/{n.repository}/shared",
                        payload=int(_log_uniform(repo_rng, 500 * KB, 8 * MB)),
                    )
                    self.repo_layers[n.repository] = repo_layer
                    medium.append(repo_layer)
                layers.append(repo_layer)
            for i in range(rng.randint(1, 3)):
                spec = LayerSpec(
                    f"{self.seed}/{name}/medium{i}",
                    payload=int(_log_uniform(rng, 100 * KB, 16 * MB)),
                )
                layers.append(spec)
                medium.append(spec)
        if big:
            payload = int(rng.uniform(*BIG_RANGE) * self.scale)
            layers.append(LayerSpec(f"{self.seed}/{name}/big", payload=max(1024, payload)))
        return _Draft(layers, medium)

    def _windows_draft(self, n: NamedRef) -> _Draft:
        rng = _rng(self.seed, "windows", n.tag)
        layer = LayerSpec(
            f"{self.seed}/{n.repository}:{n.tag}/win", payload=rng.randint(1, 50) * KB
        )
        return _Draft([layer], [])

    def _normalise(self, drafts: Sequence[_Draft]) -> None:
        """Scale medium payloads so that the unique bytes come to `scale` GB."""
        fixed: dict[str, int] = {}
        medium: dict[str, LayerSpec] = {}
        for draft in drafts:
            for spec in draft.layers:
                fixed[spec.key] = spec.payload
            for spec in draft.medium:
                medium[spec.key] = spec
        for key in medium:
            fixed.pop(key)
        overhead = 2 * 1024 * (len(fixed) + len(medium))  # tar headers, configs, manifests
        budget = self.scale * self.replicas * GB - sum(fixed.values()) - overhead
        raw = sum(s.payload for s in medium.values())
        factor = max(0.02, budget / raw) if raw else 1.0
        for spec in medium.values():
            spec.payload = max(1024, int(spec.payload * factor))

    def _render(self, specs: Iterable[LayerSpec]) -> None:
        todo = [s for s in specs if s.key not in self.rendered]
        todo.sort(key=lambda s: -s.payload)

        def render(spec: LayerSpec) -> tuple[str, Blob]:
            data, raw = spec.render()
            keep = data if len(data) <= KEEP_IN_MEMORY else None
            blob = Blob(digest_of(data), len(data), "", digest_of(raw), keep, spec)
            return spec.key, blob

        with ThreadPoolExecutor(self.threads) as pool:
            for key, blob in pool.map(render, todo):
                self.rendered[key] = blob

    # -- manifests --------------------------------------------------------------------------

    def _layer(self, spec: LayerSpec, fmt: Format) -> Blob:
        if spec.key not in self.rendered:
            self._render([spec])
        blob = self.rendered[spec.key]
        return Blob(blob.digest, blob.size, MEDIA[fmt]["layer"], blob.diff_id, blob.data, blob.spec)

    def _image(
        self,
        name: str,
        fmt: Format,
        layers: Sequence[LayerSpec],
        *,
        platform: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        foreign: Blob | None = None,
    ) -> Manifest:
        platform = platform or {"os": "linux", "architecture": "amd64"}
        blobs = [self._layer(spec, fmt) for spec in layers]
        if foreign is not None:
            blobs.insert(0, foreign)
        config_obj = {
            "architecture": platform["architecture"],
            "os": platform["os"],
            "created": CREATED,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": labels or {}},
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
            "history": [{"created": CREATED, "created_by": f"transship bench corpus {name}"}],
        }
        data = canonical_json(config_obj)
        config = Blob(digest_of(data), len(data), MEDIA[fmt]["config"], data=data)
        manifest_obj = {
            "schemaVersion": 2,
            "mediaType": MEDIA[fmt]["manifest"],
            "config": config.descriptor(),
            "layers": [b.descriptor() for b in blobs],
        }
        raw = canonical_json(manifest_obj)
        return Manifest(
            raw, MEDIA[fmt]["manifest"], digest_of(raw), (config, *blobs), platform=platform
        )

    def _regular(self, ref: CorpusRef, pairs: list[tuple[_Draft, dict[str, str]]]) -> Manifest:
        fmt: Format = "docker" if ref.kind == "windows" else self.fmt(ref.name)
        foreign = None
        if ref.kind == "windows":
            seed = _hash(self.seed, "foreign", ref.name)
            size = 100 * MB + int.from_bytes(seed[:2], "big")
            foreign = Blob(
                "sha256:" + seed.hex(),
                size,
                DOCKER_FOREIGN,
                diff_id="sha256:" + _hash(self.seed, "foreign-diff", ref.name).hex(),
                urls=(f"https://foreign.example.invalid/windows/{seed.hex()[:16]}",),
            )
        children = [
            self._image(
                f"{ref.name}/{p['architecture']}", fmt, d.layers, platform=p, foreign=foreign
            )
            for d, p in pairs
        ]
        if ref.kind != "index":
            return children[0]
        index_obj = {
            "schemaVersion": 2,
            "mediaType": MEDIA[fmt]["index"],
            "manifests": [c.descriptor() for c in children],
        }
        raw = canonical_json(index_obj)
        return Manifest(raw, MEDIA[fmt]["index"], digest_of(raw), children=tuple(children))

    def _bundle(self, ref: CorpusRef, refs: Sequence[CorpusRef]) -> Manifest:
        """An imgpkg bundle locking 1-4 corpus images (package) or package bundles (repo) of
        its own replica."""
        rng = _rng(self.seed, "bundle", ref.name)
        refs = self.by_replica[ref.replica]
        parent, _, leaf = ref.repository.rpartition("/")
        if leaf == "repo":
            pool = [r for r in refs if r.kind == "bundle" and r.repository.startswith(parent + "/")]
            pool = [r for r in pool if r.manifest is not None and r.repository != ref.repository]
        else:
            pool = [r for r in refs if r.kind in ("image", "index") and leaf in r.repository]
        if not pool:
            pool = [r for r in refs if r.kind in ("image", "index")]
        locked = rng.sample(pool, min(len(pool), rng.randint(1, 4)))
        ref.locked = locked
        lines = ["apiVersion: imgpkg.carvel.dev/v1alpha1", "kind: ImagesLock", "images:"]
        for r in sorted(locked, key=lambda r: r.name):
            assert r.manifest is not None
            lines += [
                f"- image: {UPSTREAM_PREFIX}{r.repository}@{r.manifest.digest}",
                "  annotations:",
                f"    kbld.carvel.dev/id: {UPSTREAM_PREFIX}{r.name}",
            ]
        images_yml = ("\n".join(lines) + "\n").encode()
        bundle_yml = (
            "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: Bundle\nmetadata:\n"
            f"  name: {ref.repository}\n"
        ).encode()
        values = random_payload(_hash(self.seed, "values", ref.name), rng.randint(2, 40) * KB)
        files = (
            (".imgpkg/bundle.yml", bundle_yml),
            (".imgpkg/images.yml", images_yml),
            ("config/payload.bin", values),
        )
        layer = LayerSpec(f"{self.seed}/bundle/{ref.name}", files=files, compress=True)
        return self._image(ref.name, "docker", [layer], labels={"dev.carvel.imgpkg.bundle": "true"})


def build_corpus(
    walk: Walk = "release",
    scale: float = 1.0,
    seed: str = "1",
    threads: int = 2,
    replicas: int = 1,
) -> Corpus:
    """The corpus model with every digest computed (big blob bytes are regenerated to push);
    `replicas` copies of the names, `scale` GB of unique bytes per replica."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    return _Builder(walk, scale, seed, threads, replicas).build()


# ---- pushing --------------------------------------------------------------------------------


def _parallel(threads: int, items: Sequence[Any], work: Callable[[Any], object]) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(work, items):
            pass


def push_corpus(registry: RegistryLike, corpus: Corpus, threads: int = 8) -> dict[str, float]:
    """Push every unique blob once (largest first), mount it where else it is needed, then the
    manifests (index children by digest first, then each reference under its tag)."""
    local = threading.local()

    def client() -> SeedClient:
        if not hasattr(local, "client"):
            local.client = SeedClient.for_registry(registry)
        c: SeedClient = local.client
        return c

    timings: dict[str, float] = {}
    start = time.monotonic()
    blobs = sorted(corpus.blobs.values(), key=lambda b: -b.size)
    _parallel(
        threads,
        blobs,
        lambda b: client().push_blob(corpus.homes[b.digest], b.bytes(), b.digest),
    )
    timings["blobs"] = time.monotonic() - start
    start = time.monotonic()
    mounts = sorted((r, d) for r, d in corpus.placements if corpus.homes[d] != r)

    def mount(item: tuple[str, str]) -> None:
        repo, digest = item
        if not client().mount_blob(repo, digest, corpus.homes[digest]):
            raise RuntimeError(f"upstream refused to mount {digest} into {repo}")

    _parallel(threads, mounts, mount)
    timings["mounts"] = time.monotonic() - start
    start = time.monotonic()

    def push_ref(ref: CorpusRef) -> None:
        assert ref.manifest is not None
        *children, top = ref.manifest.all_manifests()
        for m in children:
            client().push_manifest(ref.repository, m.digest, m.data, m.media_type)
        client().push_manifest(ref.repository, ref.tag, top.data, top.media_type)

    _parallel(threads, corpus.refs, push_ref)

    def push_copy(copy: BundleImage) -> None:
        *children, top = copy.manifest.all_manifests()
        for m in children:
            client().push_manifest(copy.repository, m.digest, m.data, m.media_type)
        client().push_manifest(copy.repository, copy.tag, top.data, top.media_type)

    _parallel(threads, corpus.bundle_images, push_copy)
    timings["manifests"] = time.monotonic() - start
    return timings


def write_outputs(corpus: Corpus, host: str, out: Path) -> tuple[Path, Path]:
    """`images.txt` (one `host/repository:tag` per line) and `corpus.json`."""
    out.mkdir(parents=True, exist_ok=True)
    images = out / "images.txt"
    images.write_text("".join(f"{host}/{r.name}\n" for r in corpus.refs))
    doc = out / "corpus.json"
    doc.write_text(json.dumps(corpus.to_json(host), indent=1) + "\n")
    return images, doc


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="where images.txt and corpus.json go"
    )
    parser.add_argument("--walk", choices=("release", "old"), default="release")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="GB of unique blob bytes per replica"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="copies of the names (r01/..., r02/...)"
    )
    parser.add_argument("--seed", default="1")
    parser.add_argument("--threads", type=int, default=8, help="parallel pushes")
    parser.add_argument("--serve", action="store_true", help="keep the registry up until Ctrl-C")
    args = parser.parse_args(argv)
    corpus = build_corpus(args.walk, args.scale, args.seed, replicas=args.replicas)
    print(f"built in {corpus.seconds_to_build:.1f}s: {json.dumps(corpus.totals())}")
    registry = RegistryProcess(args.out / "upstream", "plain").start()
    try:
        start = time.monotonic()
        timings = push_corpus(registry, corpus, args.threads)
        took = time.monotonic() - start
        mb = corpus.totals()["unique_bytes"] / MB
        print(f"pushed {mb:.0f} MB in {took:.1f}s ({mb / took:.0f} MB/s) {timings}")
        images, doc = write_outputs(corpus, registry.host, args.out)
        print(f"wrote {images} and {doc}; registry {registry.url}")
        if args.serve:
            print("serving; Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        registry.stop()


if __name__ == "__main__":
    main()
