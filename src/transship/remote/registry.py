"""The OCI distribution API over `Transport`: manifests, blobs, mounts and tags.

Implements `transship.endpoint.Endpoint` for one registry host. Every byte read is checked: a
manifest against the digest it was asked for (and `Docker-Content-Digest`), a blob against its
descriptor while it streams.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from transship.digest import Digest, Hasher
from transship.errors import (
    AuthenticationError,
    ForeignLayersRefusedError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RetryableError,
    TransshipError,
)
from transship.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor, Manifest, Referrer
from transship.manifeststore import ManifestStore
from transship.remote.catalog import CatalogWalk, start_after
from transship.remote.links import next_link
from transship.remote.transport import Fetched, Transport, TransportOptions
from transship.streams import CHUNK

log = logging.getLogger("transship.remote")

#: Reads a refused push (the error, the repository) and may return a more specific error,
#: e.g. `NamespaceFullError`; installed by a registry-specific wing such as `transship.harbor`.
RefusalHook = Callable[[TransshipError, str], Awaitable[TransshipError]]
_MANIFEST_CACHE_BYTES = 64 * 1024 * 1024
_TAG_PAGE_BYTES = 64 * 1024 * 1024  # ~500k tags: far more than any page a registry sends
_CATALOG_PAGE_BYTES = 16 * 1024 * 1024  # Harbor sends its whole catalog in one answer
#: the token scope of `GET /v2/_catalog` (docker_auth and Harbor grant it to admins only)
CATALOG = ("registry:catalog:*",)


@dataclass
class RegistryOptions(TransportOptions):
    """Transport options plus upload tuning."""

    #: blobs larger than this go up in PATCH chunks of this size; smaller ones in one PUT
    chunk_size: int = 256 * 1024 * 1024
    read_chunk: int = CHUNK
    tag_page_size: int = 1000
    #: names per catalog page: distribution refuses more than its `catalog.maxentries` (1000)
    catalog_page_size: int = 1000
    #: a push destination: existence checks ask for pull,push as `docker push` does, so a
    #: refusal (e.g. Harbor's for a project that does not exist) is read as one of pushing
    destination: bool = False
    #: a source's manifests kept on disk across runs (`transship.manifeststore`): lookups by
    #: digest read it before the network, every fetch is written to it. Never a destination's:
    #: its checks must ask the destination itself
    manifest_store: ManifestStore | None = None


def pull(repository: str) -> tuple[str, ...]:
    return (f"repository:{repository}:pull",)


def push(repository: str) -> tuple[str, ...]:
    return (f"repository:{repository}:pull,push",)


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.content.read(16384)
    except (aiohttp.ClientError, TimeoutError):
        return b""


async def registry_error(resp: aiohttp.ClientResponse, what: str) -> Exception:
    """Turn an error response into a typed error naming `what` was being done."""
    return error_for(resp.status, await _error_body(resp), what)


def foreign_layers_refused(
    body: bytes, manifest: Manifest, where: str
) -> ForeignLayersRefusedError | None:
    """The refusal of a manifest over its foreign layers, read from the registry's answer.

    distribution (2.7+) checks a layer's `urls` against `validation.manifests.urls`; one it
    does not allow makes the PUT fail with 500 (`UNKNOWN`) and `MANIFEST_BLOB_UNKNOWN` naming
    that layer, which was never pushed (nobody pushes foreign layers). Only an answer naming a
    layer of this very manifest that carries `urls` counts: any other 500 stays transient.
    """
    foreign = {str(layer.digest): layer for layer in manifest.layers if layer.urls}
    if not foreign:
        return None
    named = []
    for error in _errors_of(body):
        if error.get("code") != "MANIFEST_BLOB_UNKNOWN":
            continue
        detail = error.get("detail")
        if isinstance(detail, dict):
            detail = detail.get("digest")
        if isinstance(detail, str) and detail in foreign and detail not in named:
            named.append(detail)
    if not named:
        return None
    layer = foreign[named[0]]
    others = f" and {len(named) - 1} more" if len(named) > 1 else ""
    origin = urlsplit(layer.urls[0]).netloc or layer.urls[0]
    return ForeignLayersRefusedError(
        f"{where}: the image has foreign (non-distributable) layers the registry refuses: "
        f"{layer.digest.short}{others}, with urls on {origin}",
        hint="allow their URLs in the registry's configuration (distribution: "
        "validation.manifests.urls.allow, or validation.disabled: true), or copy the image "
        "into a registry that accepts foreign layers",
    )


def _errors_of(body: bytes) -> list[dict[str, object]]:
    """The `errors` of distribution's JSON error body; empty when it is not that."""
    try:
        doc = json.loads(body[:16384]) if body else {}
        errors = doc.get("errors") or [] if isinstance(doc, dict) else []
    except (ValueError, UnicodeDecodeError):
        errors = []
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def error_for(status: int, body: bytes, what: str) -> Exception:
    """A typed error for an error answer whose body (distribution's JSON errors) was read."""
    errors = _errors_of(body)
    codes = [str(e.get("code", "")) for e in errors]
    detail = "; ".join(str(e.get("message") or e.get("code")) for e in errors)
    suffix = f" (registry says: {detail})" if detail else ""
    if status == 404:
        if "NAME_UNKNOWN" in codes:
            return NotFoundError(f"{what}: repository not found{suffix}")
        return NotFoundError(f"{what} not found{suffix}")
    if status == 401:
        return AuthenticationError(f"{what}: unauthorized{suffix}")
    if status == 403:
        return PermissionDeniedError(f"{what}: permission denied{suffix}")
    if status in (429,) or status >= 500:
        return RetryableError(f"{what}: registry answered {status}{suffix}", status=status)
    return RegistryError(
        f"{what}: registry answered {status}{suffix}", status=status, codes=tuple(codes)
    )


class Registry:
    """One registry host as an `Endpoint`."""

    def __init__(self, host: str, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self.host = host
        self.label = host
        self.transport = Transport(host, self.options)
        # upload sessions opened by a refused mount, reused by the following put_blob
        self._pending_uploads: dict[tuple[str, Digest], str] = {}
        self._manifests: dict[tuple[str, Digest], Manifest] = {}
        self._manifest_bytes_cached = 0  # bounded: memory stays flat for any plan
        self.refusal_hook: RefusalHook | None = None

    async def _refused(self, error: Exception, repository: str) -> Exception:
        """Let the installed hook read a refused push; network errors are not refusals."""
        if self.refusal_hook is None or not isinstance(error, TransshipError):
            return error
        if isinstance(error, RetryableError):
            return error
        return await self.refusal_hook(error, repository)

    async def close(self) -> None:
        await self.transport.close()

    # -- manifests --------------------------------------------------------------------------

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """GET (or reuse) a manifest. By digest it is immutable, so what this run already read
        — planning resolves every manifest before the engine copies it — is not read again,
        nor, on a source with a `manifest_store`, what an earlier run (`plan`) read."""
        requested = Digest.parse(identifier) if ":" in identifier else None
        store = self.options.manifest_store
        origin = f"{self.host}/{repository}"
        manifest: Manifest | None = None
        if requested is not None:
            cached = self._manifests.get((repository, requested))
            if cached is not None:
                return cached
            if store is not None:  # verified against `requested` as it is read
                manifest = store.get(requested, f"{origin}@{requested}", origin=origin)
        if manifest is None:
            manifest = await self._get_manifest(repository, identifier, requested)
            if store is not None:
                store.put(manifest, requested, origin=origin)
        if self._manifest_bytes_cached + manifest.size <= _MANIFEST_CACHE_BYTES:
            self._manifests[(repository, manifest.digest)] = manifest
            self._manifest_bytes_cached += manifest.size
        return manifest

    async def _get_manifest(
        self, repository: str, identifier: str, requested: Digest | None
    ) -> Manifest:
        """One GET; a body cut short or not matching its digest is fetched again by the
        transport under its retry budget, so planning and copying both get the retries."""
        where = f"{self.host}/{repository}{'@' if ':' in identifier else ':'}{identifier}"

        def check(answer: Fetched) -> None:
            _check_manifest_digest(answer, requested, where)

        answer = await self.transport.fetch(
            "GET",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=pull(repository),
            headers={"Accept": ACCEPT},
            limit=MAX_MANIFEST_BYTES,
            check=check,
        )
        if answer.status != 200:
            raise error_for(answer.status, answer.body, f"manifest {where}")
        if answer.too_large(MAX_MANIFEST_BYTES):
            size = answer.length if answer.length is not None else len(answer.body)
            raise IntegrityError(
                f"{where}: manifest is {size} bytes, over the {MAX_MANIFEST_BYTES} limit"
            )
        content_type = answer.headers.get("Content-Type")
        return Manifest.parse(answer.body, content_type, where)  # bytes whose digest checked out

    def _check_scopes(self, repository: str) -> tuple[str, ...]:
        return push(repository) if self.options.destination else pull(repository)

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        async with self.transport.request(
            "HEAD",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=self._check_scopes(repository),
            headers={"Accept": ACCEPT},
        ) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise await registry_error(resp, f"manifest {self.host}/{repository}:{identifier}")
            header = resp.headers.get("Docker-Content-Digest")
            media_type = (resp.headers.get("Content-Type") or "").split(";")[0]
            size = resp.content_length or 0
        if not header and ":" in identifier:
            # asked by digest: the 200 says it is there; no GET (some registries count a GET
            # as a pull, which moves retention)
            return Descriptor(media_type, Digest.parse(identifier), size)
        if not header:  # a tag on a registry that does not say its digest: read it
            manifest = await self.get_manifest(repository, identifier)
            return manifest.descriptor
        return Descriptor(media_type, Digest.parse(header), size)

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        reference = tag or str(manifest.digest)
        sep = "@" if tag is None else ":"
        where = f"{self.host}/{repository}{sep}{reference}"

        def refusal(status: int, body: bytes) -> TransshipError | None:
            return foreign_layers_refused(body, manifest, where)

        async with self.transport.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=push(repository),
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
            refusal=refusal,  # distribution answers 500 for them: not worth a retry
        ) as resp:
            if resp.status not in (200, 201, 202):
                body = await _error_body(resp)
                error = foreign_layers_refused(body, manifest, where) or error_for(
                    resp.status, body, f"pushing manifest {where}"
                )
                raise await self._refused(_push_hint(error, repository), repository)
            header = resp.headers.get("Docker-Content-Digest")
        if header and header != str(manifest.digest):
            raise IntegrityError(
                f"{where}: registry stored the manifest as {header}, expected {manifest.digest}"
            )

    async def delete_manifest(self, repository: str, digest: Digest) -> None:
        async with self.transport.request(
            "DELETE", f"/v2/{repository}/manifests/{digest}", scopes=push(repository)
        ) as resp:
            if resp.status not in (200, 202):
                raise await registry_error(resp, f"deleting {self.host}/{repository}@{digest}")

    # -- blobs ------------------------------------------------------------------------------

    async def has_blob(self, repository: str, digest: Digest, size: int | None = None) -> bool:
        async with self.transport.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=self._check_scopes(repository)
        ) as resp:
            if resp.status == 200:
                length = resp.content_length
                return size is None or length is None or length == size
            if resp.status == 404:
                return False
            raise await registry_error(resp, f"blob {self.host}/{repository}@{digest.short}")

    @asynccontextmanager
    async def open_blob(
        self, repository: str, descriptor: Descriptor
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob, hashed as it arrives; a cut download resumes (see `BlobDownload`)."""
        download = BlobDownload(self, repository, descriptor)
        async with download:
            yield download

    @asynccontextmanager
    async def open_blob_at(
        self, repository: str, descriptor: Descriptor, hasher: Hasher
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The blob from byte `hasher.size` (`Range`), the bytes before it already hashed:
        a save continuing a blob an earlier run partly wrote (`endpoint.RangeSource`)."""
        download = BlobDownload(self, repository, descriptor, hasher)
        async with download:
            yield download

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Cross-repository mount; a refusal leaves an upload session for `put_blob` to use.

        "Mount from this very repository" asks whether the blob is here (201) and opens the
        upload session in one request; when a refused mount already left that session open,
        a HEAD asks instead, so no second session is opened and left behind.
        """
        key = (repository, digest)
        if from_repository == repository and key in self._pending_uploads:
            if not await self.has_blob(repository, digest):
                return False
            unused = self._pending_uploads.pop(key, None)  # an upload may have taken it meanwhile
            if unused is not None:
                await self._cancel_upload(repository, unused)
            return True
        scopes = push(repository)
        if from_repository != repository:
            scopes += pull(from_repository)
        async with self.transport.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=scopes,
            params={"mount": str(digest), "from": from_repository},
        ) as resp:
            if resp.status == 201:
                return True
            if resp.status == 202 and resp.headers.get("Location"):
                earlier = self._pending_uploads.get(key)
                self._pending_uploads[key] = self._location(resp)
                if earlier is not None:  # two refused mounts of one blob at once
                    await self._cancel_upload(repository, earlier)
                return False
            if resp.status in (401, 403, 404):
                return False  # no pull right on the source, or no such blob: upload instead
            raise await registry_error(resp, f"mounting {digest.short} into {repository}")

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        location = resp.headers.get("Location", "")
        if not location:
            raise RegistryError(f"{self.host}: upload answer without a Location header")
        return urljoin(str(resp.url), location)

    async def _start_upload(self, repository: str, digest: Digest | None) -> str:
        """A new upload session, or the one a refused mount of `digest` left open."""
        pending = self._pending_uploads.pop((repository, digest), None) if digest else None
        if pending:
            return pending
        async with self.transport.request(
            "POST", f"/v2/{repository}/blobs/uploads/", scopes=push(repository)
        ) as resp:
            if resp.status not in (202, 201):
                error = await registry_error(resp, f"starting upload to {self.host}/{repository}")
                raise await self._refused(_push_hint(error, repository), repository)
            return self._location(resp)

    async def list_referrers(self, repository: str, digest: Digest) -> tuple[Referrer, ...] | None:
        """The referrers API's list (all pages), or None when this registry has no such API."""
        from transship.remote.referrers import list_referrers  # it builds on this module

        return await list_referrers(self, repository, digest)

    async def check_push(self, repository: str) -> None:
        """Preflight: open an upload session and cancel it; raises what a real push would."""
        await self._cancel_upload(repository, await self._start_upload(repository, None))

    async def _cancel_upload(self, repository: str, location: str) -> None:
        """Close an upload session nobody will use."""
        try:  # best effort: distribution wants the delete right for this; sessions expire anyway
            async with self.transport.request("DELETE", location, scopes=push(repository)):
                pass
        except TransshipError:
            pass

    async def put_blob(
        self, repository: str, descriptor: Descriptor, chunks: AsyncIterator[bytes]
    ) -> int:
        """Upload from a stream that verifies itself (every endpoint's `open_blob` does).

        The last chunk is held back until the stream has ended cleanly, so a stream that fails
        its own check aborts the request before the registry has the whole blob; the registry
        checks `?digest=` as well. Bytes are hashed once, where they are read.
        """
        where = f"uploading blob {descriptor.digest.short} to {self.host}/{repository}"
        location = await self._start_upload(repository, descriptor.digest)

        async def hashed() -> AsyncIterator[bytes]:
            # Each chunk is sent only when the next one has arrived, and the last only after
            # the source stream finished (and so verified): a bad blob never arrives whole.
            held: bytes | None = None
            sent = 0
            async for chunk in chunks:
                if held is not None:
                    yield held
                held = chunk
                sent += len(chunk)
                if sent > descriptor.size:
                    raise IntegrityError(f"{where}: source sends more than {descriptor.size} bytes")
            if sent != descriptor.size:
                raise IntegrityError(f"{where}: source sent {sent} of {descriptor.size} bytes")
            if held is not None:
                yield held

        if descriptor.size > self.options.chunk_size:
            location = await self._patch_chunks(repository, location, hashed(), descriptor, where)
            body: bytes | AsyncIterator[bytes] = b""
            headers = {"Content-Length": "0"}
        else:
            body = hashed()
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(descriptor.size),
            }
        async with self.transport.request(
            "PUT",
            _with_digest(location, descriptor.digest),
            scopes=push(repository),
            headers=headers,
            data=body,
        ) as resp:
            if resp.status not in (201, 204):
                raise await self._refused(await registry_error(resp, where), repository)
        return descriptor.size

    async def _patch_chunks(
        self,
        repository: str,
        location: str,
        stream: AsyncIterator[bytes],
        descriptor: Descriptor,
        where: str,
    ) -> str:
        """Send the stream as PATCH requests of at most `chunk_size` bytes each."""
        offset = 0
        leftover = b""
        exhausted = False
        size = self.options.chunk_size

        while not exhausted or leftover:
            sent = 0

            async def segment() -> AsyncIterator[bytes]:
                nonlocal leftover, exhausted, sent
                if leftover:
                    piece, leftover = leftover[: size - sent], leftover[size - sent :]
                    sent += len(piece)
                    yield piece
                while sent < size and not exhausted:
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    room = size - sent
                    piece, leftover = chunk[:room], chunk[room:]
                    sent += len(piece)
                    yield piece

            end = min(offset + size, descriptor.size) - 1
            async with self.transport.request(
                "PATCH",
                location,
                scopes=push(repository),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end}",
                    "Content-Length": str(end - offset + 1),
                },
                data=segment(),
            ) as resp:
                if resp.status != 202:
                    raise await self._refused(await registry_error(resp, where), repository)
                location = self._location(resp)
            offset += sent
            if offset >= descriptor.size and not leftover:
                # drain the stream so the hasher verifies the end
                async for _extra in stream:
                    raise IntegrityError(f"{where}: source has more bytes than {descriptor.size}")
                break
        return location

    # -- tags -------------------------------------------------------------------------------

    async def list_tags(self, repository: str) -> list[str]:
        """Every page of the tag list (empty if the repository does not exist)."""
        return await self._tag_pages(repository, missing_ok=True) or []

    async def existing_tags(self, repository: str) -> frozenset[str] | None:
        """`TagIndex`: the tags, or None for a repository the registry names unknown
        (404 NAME_UNKNOWN). Only tags/list is sent, never a manifest GET (Harbor counts those
        as pulls)."""
        # a destination lists with the push scope its uploads use: one token per repository
        tags = await self._tag_pages(
            repository, missing_ok=False, scopes=self._check_scopes(repository)
        )
        return None if tags is None else frozenset(tags)

    # -- catalog ----------------------------------------------------------------------------

    async def existing_repositories(self, prefix: str, *, max_pages: int) -> frozenset[str] | None:
        """`RepositoryIndex`: the repositories whose names start with `prefix`, from the
        catalog, or None when it cannot say in `max_pages` requests.

        The first page starts just before the prefix (`last=`, see `remote.catalog`) and
        paging stops once the names are past it, so a shared registry costs the pages near
        the prefix only. A 400 (Harbor: `last` must name an existing repository; a registry
        whose page limit is below `n`) is asked again once from the start, without either.
        A refusal (401: no `registry:catalog:*` scope, Harbor for non-admins; 403; 404 where
        there is no catalog) is one request and None, never an error; so is an answer that
        is not a repository list (not fetched again: the tag lists can tell instead).
        """
        where = f"the catalog of {self.host}"
        walk = CatalogWalk(prefix, start_after(prefix))
        query = {"n": str(self.options.catalog_page_size)}
        if walk.last:
            query["last"] = walk.last
        path: str | None = f"/v2/_catalog?{urlencode(query)}"
        page: list[str] | None = []

        def parse(answer: Fetched) -> None:  # parsed once, here; kept for the loop below
            nonlocal page
            try:
                page = _catalog_page(answer.body, where)
            except IntegrityError:  # not worth a retry: the tag lists can tell instead
                page = None

        for sent in range(max_pages):
            if path is None:
                break
            answer = await self.transport.fetch(
                "GET", path, scopes=CATALOG, limit=_CATALOG_PAGE_BYTES, check=parse, optional=True
            )
            if answer.status == 400 and sent == 0:
                walk, path = CatalogWalk(prefix), "/v2/_catalog"
                continue
            if answer.status != 200 or answer.too_large(_CATALOG_PAGE_BYTES) or page is None:
                log.debug("%s: not read (answered %d)", where, answer.status)
                return None
            if walk.take(page):
                return frozenset(walk.names)
            path = next_link(answer.headers.get("Link"), answer.url)
        if path is not None:
            log.debug("%s: more than %d pages near %r; not used", where, max_pages, prefix)
            return None
        return frozenset(walk.names)

    async def _tag_pages(
        self, repository: str, *, missing_ok: bool, scopes: tuple[str, ...] | None = None
    ) -> list[str] | None:
        """Every page of the tag list; a page cut short or unreadable is fetched again.

        A 404 ends the list when `missing_ok`; otherwise only a first page answered 404
        NAME_UNKNOWN means "no such repository" (None), and any other 404 raises, so a caller
        falls back to asking tag by tag.
        """
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n={self.options.tag_page_size}"
        where = f"listing tags of {self.host}/{repository}"

        page: list[str] = []

        def check(answer: Fetched) -> None:  # parsed once, here; kept for the loop below
            page[:] = _tag_page(answer.body, where)

        first = True
        while path:
            answer = await self.transport.fetch(
                "GET",
                path,
                scopes=scopes or pull(repository),
                limit=_TAG_PAGE_BYTES,
                check=check,
            )
            if answer.status == 404:
                if missing_ok:
                    return tags
                codes = {str(e.get("code", "")) for e in _errors_of(answer.body)}
                if first and "NAME_UNKNOWN" in codes:
                    return None
                raise error_for(answer.status, answer.body, where)
            if answer.status != 200:
                raise error_for(answer.status, answer.body, where)
            if answer.too_large(_TAG_PAGE_BYTES):
                raise RegistryError(f"{where}: a page is over {_TAG_PAGE_BYTES} bytes")
            tags += page
            path = next_link(answer.headers.get("Link"), answer.url)
            first = False
        return tags


def _tag_page(body: bytes, where: str) -> list[str]:
    """The `tags` of one page; a body that is not that JSON was damaged on the way."""
    try:
        doc = json.loads(body)
        return [str(t) for t in (doc.get("tags") or [])]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
        raise IntegrityError(f"{where}: the answer is not a tag list") from None


def _catalog_page(body: bytes, where: str) -> list[str]:
    """The `repositories` of one catalog page; a body that is not that JSON was damaged."""
    try:
        doc = json.loads(body)
        return [str(name) for name in (doc.get("repositories") or [])]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
        raise IntegrityError(f"{where}: the answer is not a repository list") from None


def _push_hint(error: Exception, repository: str) -> Exception:
    """A push refused as "repository unknown" or "denied": record the fact for advisors
    (`transship.harbor` knows it means a missing project there)."""
    refused = isinstance(error, NotFoundError | AuthenticationError)
    if refused and isinstance(error, TransshipError) and error.hint is None and "/" in repository:
        error.refused_push = repository
    return error


def _with_digest(location: str, digest: Digest) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _check_manifest_digest(answer: Fetched, requested: Digest | None, where: str) -> None:
    """The bytes must hash to the digest asked for, else to `Docker-Content-Digest`."""
    raw = answer.body
    if requested is not None:
        actual = Digest.of(raw, requested.algorithm)
        if actual != requested:
            raise IntegrityError(
                f"{where}: manifest bytes hash to {actual.short}, not the requested digest"
            )
        return
    header = answer.headers.get("Docker-Content-Digest")
    if not header:
        return
    try:
        claimed = Digest.parse(header)
    except TransshipError:
        raise IntegrityError(f"{where}: bad Docker-Content-Digest header") from None
    if Digest.of(raw, claimed.algorithm) != claimed:
        raise IntegrityError(
            f"{where}: manifest bytes do not match the registry's "
            f"Docker-Content-Digest {claimed.short}"
        )


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class BlobDownload:
    """One blob GET that survives cuts: hashed as it streams, resumed from the bytes already
    hashed with `Range: bytes=N-` (as go-containerregistry and regclient do), under the
    transport's retry policy. A server that ignores `Range` (200, not 206), or answers it with
    416 or a Content-Range not starting at N, is read from byte 0 again (without `Range`) and
    its first N bytes skipped, so every byte is hashed exactly once in order; a later cut
    of that answer, further on, is resumed with `Range` again.

    `refetched` counts bytes received more than once (the skipped ones), for the summary.
    A digest mismatch found at the end raises IntegrityError: the bytes were already passed
    on, so only the consumer (the engine) can start over.
    """

    def __init__(
        self,
        registry: Registry,
        repository: str,
        descriptor: Descriptor,
        hasher: Hasher | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.descriptor = descriptor
        self.where = f"blob {registry.host}/{repository}@{descriptor.digest.short}"
        self.refetched = 0
        #: given: the bytes before `hasher.size` came from elsewhere (a partly saved blob)
        self._hasher = hasher if hasher is not None else Hasher(descriptor.digest, descriptor.size)
        self._stack = AsyncExitStack()
        self._resp: aiohttp.ClientResponse | None = None
        self._skip = 0  # bytes of the current answer already hashed (a 200 to a Range GET)
        #: the offset whose `Range` GET the source answered with 416 or a wrong Content-Range:
        #: not asked again (a later cut, further on, is resumed with `Range` as usual)
        self._no_range_at: int | None = None
        self._stream: AsyncIterator[bytes] | None = None

    async def __aenter__(self) -> BlobDownload:
        # errors of the first answer (404, 401, ...) surface here
        await self._open(self._hasher.size)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _open(self, offset: int) -> None:
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        ranged = offset > 0 and offset != self._no_range_at
        headers = {"Range": f"bytes={offset}-"} if ranged else None
        resp = await self._stack.enter_async_context(
            self.registry.transport.request(
                "GET",
                f"/v2/{self.repository}/blobs/{self.descriptor.digest}",
                scopes=pull(self.repository),
                headers=headers,
                follow_redirects=True,
            )
        )
        size = self.descriptor.size
        length = resp.content_length
        if ranged and resp.status in (206, 416):
            span = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if resp.status == 416 or span is None or int(span.group(1)) != offset:
                # the source cannot serve this range: the whole blob again, bytes skipped
                log.info(
                    "%s: resumed at byte %d, the registry answered %d (Content-Range %r); "
                    "reading it from byte 0",
                    self.where,
                    offset,
                    resp.status,
                    resp.headers.get("Content-Range"),
                )
                self._no_range_at = offset
                await self._open(offset)
                return
            expected = size - offset
            self._skip = 0
        elif resp.status == 200:
            expected = size
            self._skip = offset  # Range ignored: the whole blob again, hashed bytes skipped
        else:
            raise await registry_error(resp, self.where)
        if length is not None and length != expected:
            raise IntegrityError(
                f"{self.where}: registry sends {length} bytes, the descriptor says {size}"
                + (f" (from byte {offset})" if offset and not self._skip else "")
            )
        self._resp = resp

    def __aiter__(self) -> AsyncIterator[bytes]:
        # `async for` reads the generator itself: no extra coroutine per chunk
        if self._stream is None:
            self._stream = self._chunks()
        return self._stream

    async def __anext__(self) -> bytes:
        return await anext(aiter(self))

    async def _chunks(self) -> AsyncIterator[bytes]:
        hasher = self._hasher
        attempts = self.registry.transport.attempts()  # health: backoff wakes when down
        read_chunk = self.registry.options.read_chunk
        while True:
            resp = self._resp
            assert resp is not None
            try:
                async for chunk in resp.content.iter_chunked(read_chunk):
                    if self._skip:
                        dropped = min(self._skip, len(chunk))
                        self._skip -= dropped
                        self.refetched += dropped
                        chunk = chunk[dropped:]
                        if not chunk:
                            continue
                    hasher.update(chunk)
                    yield chunk
                if hasher.size >= self.descriptor.size:
                    break
                failure = f"closed after {hasher.size} of {self.descriptor.size} bytes"
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                if hasher.size >= self.descriptor.size:
                    break  # every byte arrived before the connection went: the hash decides
                failure = type(exc).__name__
            if not attempts.left:
                raise RetryableError(
                    f"{self.where}: download interrupted ({failure}); "
                    f"gave up after {attempts.failures + 1} tries",
                    exhausted=True,
                )
            log.info("%s: %s; resuming at byte %d", self.where, failure, hasher.size)
            await attempts.pause()
            await self._open(hasher.size)
        hasher.verify("blob")
