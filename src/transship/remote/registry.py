"""The OCI distribution API over `Transport`: manifests, blobs, mounts and tags.

Implements `transship.endpoint.Endpoint` for one registry host. Every byte read is checked: a
manifest against the digest it was asked for (and `Docker-Content-Digest`), a blob against its
descriptor while it streams.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from transship.digest import Digest, Hasher
from transship.errors import (
    AuthenticationError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RetryableError,
    TransshipError,
)
from transship.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor, Manifest, Referrer
from transship.remote.transport import Transport, TransportOptions

CHUNK = 1024 * 1024
_MANIFEST_CACHE_BYTES = 64 * 1024 * 1024


@dataclass
class RegistryOptions(TransportOptions):
    """Transport options plus upload tuning."""

    #: blobs larger than this go up in PATCH chunks of this size; smaller ones in one PUT
    chunk_size: int = 256 * 1024 * 1024
    read_chunk: int = CHUNK
    tag_page_size: int = 1000


def pull(repository: str) -> tuple[str, ...]:
    return (f"repository:{repository}:pull",)


def push(repository: str) -> tuple[str, ...]:
    return (f"repository:{repository}:pull,push",)


async def registry_error(resp: aiohttp.ClientResponse, what: str) -> Exception:
    """Turn an error response into a typed error naming `what` was being done."""
    try:
        body = await resp.content.read(16384)
        doc = json.loads(body) if body else {}
        errors = doc.get("errors") or [] if isinstance(doc, dict) else []
    except (ValueError, aiohttp.ClientError, TimeoutError):
        errors = []
    codes = [str(e.get("code", "")) for e in errors if isinstance(e, dict)]
    detail = "; ".join(
        str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)
    )
    suffix = f" (registry says: {detail})" if detail else ""
    status = resp.status
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

    async def close(self) -> None:
        await self.transport.close()

    # -- manifests --------------------------------------------------------------------------

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """GET (or reuse) a manifest. By digest it is immutable, so what this run already read
        — planning resolves every manifest before the engine copies it — is not read again."""
        requested = Digest.parse(identifier) if ":" in identifier else None
        if requested is not None:
            cached = self._manifests.get((repository, requested))
            if cached is not None:
                return cached
        manifest = await self._get_manifest(repository, identifier, requested)
        if self._manifest_bytes_cached + manifest.size <= _MANIFEST_CACHE_BYTES:
            self._manifests[(repository, manifest.digest)] = manifest
            self._manifest_bytes_cached += manifest.size
        return manifest

    async def _get_manifest(
        self, repository: str, identifier: str, requested: Digest | None
    ) -> Manifest:
        where = f"{self.host}/{repository}{'@' if ':' in identifier else ':'}{identifier}"
        async with self.transport.request(
            "GET",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=pull(repository),
            headers={"Accept": ACCEPT},
        ) as resp:
            if resp.status != 200:
                raise await registry_error(resp, f"manifest {where}")
            length = resp.content_length
            if length is not None and length > MAX_MANIFEST_BYTES:
                raise IntegrityError(
                    f"{where}: manifest is {length} bytes, over the {MAX_MANIFEST_BYTES} limit"
                )
            try:
                raw = await _read_bounded(resp, MAX_MANIFEST_BYTES + 1)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
                raise RetryableError(f"{where}: manifest download interrupted") from None
            if length is not None and len(raw) != length:
                raise RetryableError(f"{where}: manifest body cut short ({len(raw)} of {length})")
            content_type = resp.headers.get("Content-Type")
            header_digest = resp.headers.get("Docker-Content-Digest")
        if requested is not None:
            actual = Digest.of(raw, requested.algorithm)
            if actual != requested:
                raise IntegrityError(
                    f"{where}: manifest bytes hash to {actual.short}, not the requested digest"
                )
        elif header_digest:
            try:
                claimed = Digest.parse(header_digest)
            except Exception:
                raise IntegrityError(f"{where}: bad Docker-Content-Digest header") from None
            if Digest.of(raw, claimed.algorithm) != claimed:
                raise IntegrityError(
                    f"{where}: manifest bytes do not match the registry's "
                    f"Docker-Content-Digest {claimed.short}"
                )
        return Manifest.parse(raw, content_type, where)  # only bytes whose digest checked out

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        async with self.transport.request(
            "HEAD",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=pull(repository),
            headers={"Accept": ACCEPT},
        ) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise await registry_error(resp, f"manifest {self.host}/{repository}:{identifier}")
            header = resp.headers.get("Docker-Content-Digest")
            media_type = (resp.headers.get("Content-Type") or "").split(";")[0]
            size = resp.content_length or 0
        if not header:
            manifest = await self.get_manifest(repository, identifier)
            return manifest.descriptor
        return Descriptor(media_type, Digest.parse(header), size)

    async def put_manifest(self, repository: str, manifest: Manifest, tag: str | None) -> None:
        reference = tag or str(manifest.digest)
        where = f"{self.host}/{repository}:{reference}"
        async with self.transport.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=push(repository),
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
        ) as resp:
            if resp.status not in (200, 201, 202):
                error = await registry_error(resp, f"pushing manifest {where}")
                raise _push_hint(error, repository)
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
            "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=pull(repository)
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
        where = f"blob {self.host}/{repository}@{descriptor.digest.short}"
        async with self.transport.request(
            "GET",
            f"/v2/{repository}/blobs/{descriptor.digest}",
            scopes=pull(repository),
            follow_redirects=True,
        ) as resp:
            if resp.status != 200:
                raise await registry_error(resp, where)
            if resp.content_length is not None and resp.content_length != descriptor.size:
                raise IntegrityError(
                    f"{where}: registry sends {resp.content_length} bytes, "
                    f"the descriptor says {descriptor.size}"
                )
            yield self._verified_chunks(resp, descriptor, where)

    async def _verified_chunks(
        self, resp: aiohttp.ClientResponse, descriptor: Descriptor, where: str
    ) -> AsyncIterator[bytes]:
        hasher = Hasher(descriptor.digest, descriptor.size)
        try:
            async for chunk in resp.content.iter_chunked(self.options.read_chunk):
                hasher.update(chunk)
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RetryableError(f"{where}: download interrupted ({type(exc).__name__})") from None
        hasher.verify("blob")

    async def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Cross-repository mount; a refusal leaves an upload session for `put_blob` to use."""
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
                self._pending_uploads[(repository, digest)] = self._location(resp)
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
                raise _push_hint(
                    await registry_error(resp, f"starting upload to {self.host}/{repository}"),
                    repository,
                )
            return self._location(resp)

    async def list_referrers(
        self, repository: str, digest: Digest
    ) -> tuple[Referrer, ...] | None:
        """The referrers API's list (all pages), or None when this registry has no such API."""
        from transship.remote.referrers import list_referrers  # it builds on this module

        return await list_referrers(self, repository, digest)

    async def check_push(self, repository: str) -> None:
        """Preflight: open an upload session and cancel it; raises what a real push would."""
        location = await self._start_upload(repository, None)
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
                raise await registry_error(resp, where)
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
                    raise await registry_error(resp, where)
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
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n={self.options.tag_page_size}"
        while path:
            async with self.transport.request("GET", path, scopes=pull(repository)) as resp:
                if resp.status == 404:
                    return tags
                if resp.status != 200:
                    raise await registry_error(resp, f"listing tags of {self.host}/{repository}")
                try:
                    doc = await resp.json(content_type=None)
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ValueError):
                    raise RetryableError(
                        f"listing tags of {self.host}/{repository}: bad body"
                    ) from None
                tags += [str(t) for t in (doc.get("tags") or [])]
                path = _next_link(resp.headers.get("Link"), str(resp.url))
        return tags


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read a body up to `limit` bytes (a manifest is never allowed to be larger)."""
    raw = b""
    while len(raw) < limit:
        more = await resp.content.read(limit - len(raw))
        if not more:
            break
        raw += more
    return raw


def _push_hint(error: Exception, repository: str) -> Exception:
    """A push refused as "repository unknown" or "denied": record the fact for advisors
    (`transship.harbor` knows it means a missing project there)."""
    refused = isinstance(error, NotFoundError | AuthenticationError)
    if refused and isinstance(error, TransshipError) and error.hint is None and "/" in repository:
        error.refused_push = repository
    return error


def _with_digest(location: str, digest: Digest) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _next_link(header: str | None, current: str) -> str | None:
    """RFC 5988 `Link: </v2/...?last=x>; rel="next"` → absolute URL."""
    if not header:
        return None
    for part in header.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return urljoin(current, url.strip().strip("<>"))
    return None
