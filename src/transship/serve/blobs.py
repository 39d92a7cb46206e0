"""Blob bodies: sent in place with `sendfile`, hashed the first time, never wrong silently.

A blob's bytes are runs of one or more files (a layout's blob file, a tar member, a member that
crosses split volumes). The first full GET of a blob streams it through memory, hashed, and holds
its last chunk back until the digest matches: on a mismatch the connection is aborted, so the
client sees a short body and no wrong blob ever arrives whole. Once a digest has matched, later
requests go out with `loop.sendfile` (zero-copy on plain HTTP; asyncio reads in a thread under
TLS). A Range request on a blob not yet verified, or a GET arriving while another client's
first serve is still streaming it, waits for one whole-blob hash from the medium (shared by all
such requests) and then uses `sendfile`: a popular base layer is hashed at most twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import BinaryIO

from aiohttp import web

from transship.digest import Digest, Hasher
from transship.errors import IntegrityError
from transship.layout.reader import Extent
from transship.serve.errors import APIError
from transship.serve.files import ChangedOnDisk, PinnedFiles

log = logging.getLogger("transship.serve")

#: read size of a first (hashed) serve: small enough that 32 clients at once stay in ~50 MB
#: (a chunk held back, one in the socket buffer), big enough that thread hops cost nothing
SERVE_READ = 256 * 1024
#: a corrupt verdict is trusted this long, then the blob is hashed again on request: a medium
#: that read wrong once (or a blob file put back as it was, mtime and all) is not refused forever
CORRUPT_RECHECK = 60.0
#: most bytes one `loop.sendfile` call sends: its count is known only when it returns, so a
#: client that goes away partway leaves at most this much of what it got out of the access log
SENDFILE_SLICE = 4 * 1024 * 1024
_RANGE = re.compile(r"^\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$")
#: request key: body bytes of a blob actually sent (sendfile bypasses aiohttp's byte count,
#: which counts the headers too), for the access log
BODY_SENT = "transship.body_sent"


class RangeNotSatisfiable(Exception):
    """The Range header cannot be served (reversed, past the end, malformed)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as (first, last) inclusive; None means "send everything".

    Other units and multiple ranges are ignored (RFC 9110 lets a server send the whole
    representation); a malformed, reversed or unsatisfiable range raises. Numbers longer
    than 19 digits are malformed: no blob is that big.
    """
    if header is None:
        return None
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    m = _RANGE.match(spec)
    if not m or (not m[1] and not m[2]):
        raise RangeNotSatisfiable(f"malformed range {header[:64]!r}")
    if not m[1]:  # suffix: the last N bytes
        suffix = int(m[2])
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, size - suffix), size - 1
    first = int(m[1])
    last = int(m[2]) if m[2] else size - 1
    if m[2] and last < first:
        raise RangeNotSatisfiable(f"reversed range {first}-{last}")
    if first >= size:
        raise RangeNotSatisfiable(f"range starts at {first}, the blob has {size} bytes")
    return first, min(last, size - 1)


def slice_extents(extents: Sequence[Extent], first: int, length: int) -> list[Extent]:
    """The runs holding bytes [first, first + length) of the concatenated extents."""
    out = []
    for extent in extents:
        if length <= 0:
            break
        if first >= extent.size:
            first -= extent.size
            continue
        take = min(length, extent.size - first)
        out.append(Extent(extent.path, extent.offset + first, take))
        length -= take
        first = 0
    return out


def describe(extents: Sequence[Extent]) -> str:
    """Where a blob lies, for the log: `tkg.tar.002 at 1234 (5678 bytes)`, and so on."""
    return ", then ".join(f"{e.path} at offset {e.offset} ({e.size} bytes)" for e in extents)


class ShortFile(OSError):
    """A file gave fewer bytes than the blob's extent: it changed under us, or the medium."""


class BlobServer:
    """Sends blob bodies; remembers which digests were verified and which are corrupt.

    Every read goes through `files` (the archive's files as indexed): a file rewritten or
    truncated since is refused with 503 before any header goes out, and if it changes while a
    body is going out, the connection is aborted: a short answer, never a hang or a wrong blob.
    """

    def __init__(self, files: PinnedFiles, corrupt_recheck: float = CORRUPT_RECHECK) -> None:
        self.files = files
        self.corrupt_recheck = corrupt_recheck
        self.verified: set[Digest] = set()
        self.corrupt: dict[Digest, tuple[str, float]] = {}  # digest → (where, when found)
        self._locks: dict[Digest, asyncio.Lock] = {}
        self._streaming: set[Digest] = set()  # first serves in flight, hashed as they go

    async def respond(
        self, request: web.Request, digest: Digest, extents: list[Extent]
    ) -> web.StreamResponse:
        self._refuse_corrupt(digest)
        await asyncio.to_thread(self._check_files, extents)
        size = sum(e.size for e in extents)
        etag = f'"{digest}"'
        headers = {
            "Docker-Content-Digest": str(digest),
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000",
        }
        if not_modified(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        # RFC 9110 14.2: range handling is defined for GET only; a server MUST ignore Range
        # on any other method, so a HEAD answers 200 with the whole length, never 206 or 416
        ranged = request.headers.get("Range") if request.method == "GET" else None
        if_range = request.headers.get("If-Range")
        if ranged is not None and if_range is not None and if_range.strip() != etag:
            # RFC 9110 13.1.5: a validator that does not match (strong comparison; a date can
            # never match, no Last-Modified is sent) means the Range MUST be ignored: all of it
            ranged = None
        try:
            wanted = parse_range(ranged, size)
        except RangeNotSatisfiable as exc:
            raise APIError(
                "RANGE_INVALID", str(exc), headers={"Content-Range": f"bytes */{size}"}
            ) from None
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "application/octet-stream"
        if request.method == "HEAD":
            response.content_length = size
            await response.prepare(request)
            await response.write_eof()
            return response
        if wanted is not None:
            first, last = wanted
            if digest not in self.verified:
                await self.verify(digest, extents)
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            response.content_length = last - first + 1
            extents = slice_extents(extents, first, last - first + 1)
        else:
            response.content_length = size
            if digest not in self.verified and digest in self._streaming:
                # another client's first serve is hashing it at that client's pace: one fast
                # pass from the medium now serves every other client with sendfile
                await self.verify(digest, extents)
        try:
            if wanted is not None or digest in self.verified:
                await _sendfile(request, response, self.files, extents)
            else:
                await self._send_hashed(request, response, digest, extents)
        except ConnectionError:
            pass  # the client went away; aiohttp logs the request as cut short
        except (OSError, ChangedOnDisk) as exc:
            if isinstance(exc, ShortFile):  # changed on disk (logged by files), else the medium
                exc = await asyncio.to_thread(self._changed_or, extents, exc)
            if not response.prepared:
                raise exc from None
            # headers are out: no error answer is possible, only a short body the client sees
            if not isinstance(exc, ChangedOnDisk):
                log.error("blob %s in %s: %s; response cut short", digest, describe(extents), exc)
            _abort(request)
        return response

    def _check_files(self, extents: Sequence[Extent]) -> None:
        for extent in extents:
            self.files.check(extent.path)

    def _changed_or(self, extents: Sequence[Extent], exc: OSError) -> OSError | ChangedOnDisk:
        """The file's change, when that is what cut a read short; else the error itself."""
        try:
            self._check_files(extents)
        except ChangedOnDisk as changed:
            return changed
        return exc

    def _refuse_corrupt(self, digest: Digest) -> None:
        found = self.corrupt.get(digest)
        if found is not None and time.monotonic() - found[1] >= self.corrupt_recheck:
            del self.corrupt[digest]  # hash it again: a verdict is not kept forever
            found = None
        if found is not None:
            raise APIError(
                "UNKNOWN",
                {"digest": str(digest)},
                message=f"blob {digest.short} is corrupt in the served archive; "
                "copy the archive again from the source media",
            )

    def _mismatch(self, digest: Digest, extents: Sequence[Extent], exc: IntegrityError) -> None:
        self._check_files(extents)  # a file changed since indexing: say that, not "corrupt"
        where = describe(extents)
        self.corrupt[digest] = (where, time.monotonic())
        log.error("corrupt blob %s in %s: %s; not served", digest, where, exc.message)

    async def verify(self, digest: Digest, extents: list[Extent]) -> None:
        """Hash the whole blob once (concurrent callers wait for the same pass)."""
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if digest not in self.verified and digest not in self.corrupt:
                try:
                    await asyncio.to_thread(_hash_extents, self.files, digest, extents)
                except IntegrityError as exc:
                    await asyncio.to_thread(self._mismatch, digest, extents, exc)
                else:
                    self.verified.add(digest)
        self._locks.pop(digest, None)
        self._refuse_corrupt(digest)

    async def _send_hashed(
        self,
        request: web.Request,
        response: web.StreamResponse,
        digest: Digest,
        extents: list[Extent],
    ) -> None:
        """Stream through memory, hashing; the last chunk waits for the digest to match."""
        self._streaming.add(digest)
        try:
            await self._stream_hashed(request, response, digest, extents)
        finally:
            self._streaming.discard(digest)

    async def _stream_hashed(
        self,
        request: web.Request,
        response: web.StreamResponse,
        digest: Digest,
        extents: list[Extent],
    ) -> None:
        hasher = Hasher(digest, sum(e.size for e in extents))
        await response.prepare(request)
        held: bytes | None = None
        for extent in extents:
            handle = await asyncio.to_thread(self.files.open, extent.path)
            try:
                done = 0
                while done < extent.size:
                    n = min(SERVE_READ, extent.size - done)
                    chunk = await asyncio.to_thread(
                        _pread_hashed, handle.fileno(), n, extent.offset + done, hasher
                    )
                    if not chunk:
                        break
                    done += len(chunk)
                    if held is not None:
                        await response.write(held)
                        _count(request, len(held))
                    held = chunk
            finally:
                handle.close()
        try:
            hasher.verify("blob")
        except IntegrityError as exc:
            try:
                await asyncio.to_thread(self._mismatch, digest, extents, exc)
            finally:
                _abort(request)  # a short body: the client cannot take it as whole
            return
        if held is not None:
            await response.write(held)
            _count(request, len(held))
        self.verified.add(digest)
        await response.write_eof()


def _pread_hashed(fd: int, n: int, offset: int, hasher: Hasher) -> bytes:
    """Read and hash off the event loop (hashlib releases the GIL on big buffers)."""
    chunk = os.pread(fd, n, offset)
    hasher.update(chunk)
    return chunk


def _hash_extents(files: PinnedFiles, digest: Digest, extents: Sequence[Extent]) -> None:
    hasher = Hasher(digest, sum(e.size for e in extents))
    for extent in extents:
        with files.open(extent.path) as handle:
            fd = handle.fileno()
            done = 0
            while done < extent.size:
                chunk = os.pread(fd, min(SERVE_READ, extent.size - done), extent.offset + done)
                if not chunk:
                    break
                hasher.update(chunk)
                done += len(chunk)
    hasher.verify("blob")


async def _sendfile(
    request: web.Request,
    response: web.StreamResponse,
    files: PinnedFiles,
    extents: Sequence[Extent],
) -> None:
    """Headers through aiohttp, then each run straight from its file (as FileResponse does).

    The files are opened (as indexed, checked) before the headers go out, so a changed file is
    an error answer; one that shrinks while sending gives fewer bytes than promised: ShortFile.
    """
    handles: list[BinaryIO] = []
    try:
        for extent in extents:
            if extent.size:
                handles.append(await asyncio.to_thread(files.open, extent.path))
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        sized = (extent for extent in extents if extent.size)  # count 0: "to the end"
        for extent, handle in zip(sized, handles, strict=True):
            done = 0
            while done < extent.size:  # in slices, each counted once sent (see SENDFILE_SLICE)
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("connection lost")
                count = min(SENDFILE_SLICE, extent.size - done)
                sent = await loop.sendfile(transport, handle, extent.offset + done, count)
                _count(request, sent)
                done += sent
                if sent != count:
                    raise ShortFile(
                        f"{extent.path} gave {done} of {extent.size} bytes "
                        f"at offset {extent.offset}"
                    )
    finally:
        for handle in handles:
            handle.close()
    await response.write_eof()


def _count(request: web.Request, sent: int) -> None:
    request[BODY_SENT] = request.get(BODY_SENT, 0) + sent


def _abort(request: web.Request) -> None:
    """Cut the connection: the client sees a body shorter than Content-Length, not a hang."""
    if request.transport is not None:
        request.transport.abort()


def not_modified(header: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names `etag`: RFC 9110 13.1.2 compares weakly (`W/"x"` is
    `"x"`), and `*` matches any current representation; a GET or HEAD then answers 304."""
    if not header:
        return False
    tags = {part.strip().removeprefix("W/") for part in header.split(",")}
    return "*" in tags or etag in tags
