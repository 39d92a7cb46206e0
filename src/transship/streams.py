"""How bytes are read: the one chunk size, and reads that stop past a limit.

Every blob streams in `CHUNK` pieces (registry downloads, layout files, tar volumes), so memory
is bounded by concurrency × CHUNK whatever the blob size. Anything read whole (a manifest, a
referrers list, `index.json`) is read with a limit: at most `limit + 1` bytes, so the caller can
refuse an oversized answer without ever holding more.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import BinaryIO

#: the streaming unit of every blob transfer
CHUNK = 1024 * 1024


def read_bounded(handle: BinaryIO, limit: int) -> bytes:
    """At most `limit + 1` bytes of a file: more than `limit` means "too large"."""
    return handle.read(limit + 1)


async def read_bounded_async(read: Callable[[int], Awaitable[bytes]], limit: int) -> bytes:
    """At most `limit + 1` bytes from `read(n)` (e.g. an HTTP body's `content.read`), stopping
    at the end of the stream; more than `limit` means "too large"."""
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        more = await read(limit + 1 - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


async def in_batches(
    chunks: AsyncIterator[bytes], at_least: int = CHUNK
) -> AsyncGenerator[list[bytes], None]:
    """`chunks` gathered into lists of at least `at_least` bytes (the last may hold less), so
    a writer that hands each list to a thread makes one hop per MiB however small the chunks
    come. The pieces are not joined here: that copy is for the thread to make."""
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in chunks:
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= at_least:
            yield pending
            pending, pending_size = [], 0
    if pending:
        yield pending
