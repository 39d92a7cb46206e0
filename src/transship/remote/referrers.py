"""The OCI 1.1 referrers API (`GET /v2/<repo>/referrers/<digest>`), all pages.

Only this wire layer knows which statuses mean "no API here"; above it, `Endpoint.list_referrers`
answers a tuple of referrers or None.
"""

from __future__ import annotations

from urllib.parse import urljoin

import aiohttp

from transship.digest import Digest
from transship.errors import RegistryError, RetryableError
from transship.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, Referrer, parse_referrers
from transship.remote.registry import Registry, pull, registry_error

#: a referrers API answer this many pages long is not a registry we understand
MAX_REFERRERS_PAGES = 100
#: answers that mean "this registry has no referrers API" (the spec forbids 404 when it has one)
API_MISSING = frozenset({400, 404, 405})


def next_page(link: str | None, current: str) -> str | None:
    """The `rel="next"` target of a `Link` header (RFC 8288), absolute; None on the last page."""
    for part in (link or "").split(","):
        url, _, params = part.partition(";")
        if "rel=next" in params.replace(" ", "").replace('"', ""):
            return urljoin(current, url.strip().strip("<>"))
    return None


async def list_referrers(
    registry: Registry, repository: str, digest: Digest
) -> tuple[Referrer, ...] | None:
    """Every referrer of `repository@digest` by the referrers API, all pages.

    None when the registry answered 400/404/405 to the first page (a registry that has the API
    must answer 200, with an empty list if nothing refers to the digest).
    """
    where = f"referrers of {registry.host}/{repository}@{digest.short}"
    found: list[Referrer] = []
    path: str | None = f"/v2/{repository}/referrers/{digest}"
    pages = 0
    while path is not None:
        async with registry.transport.request(
            "GET", path, scopes=pull(repository), headers={"Accept": OCI_INDEX}
        ) as resp:
            if resp.status in API_MISSING and pages == 0:
                return None
            if resp.status != 200:
                raise await registry_error(resp, where)
            raw = await _read_bounded(resp, where)
            following = next_page(resp.headers.get("Link"), str(resp.url))
        found += parse_referrers(raw, where)
        pages += 1
        if following is not None and pages >= MAX_REFERRERS_PAGES:
            raise RegistryError(f"{where}: more than {MAX_REFERRERS_PAGES} pages of referrers")
        path = following
    return tuple(found)


async def _read_bounded(resp: aiohttp.ClientResponse, where: str) -> bytes:
    """The body, refused past the manifest size limit (a referrers list is a manifest)."""
    raw = b""
    try:
        while len(raw) <= MAX_MANIFEST_BYTES:
            more = await resp.content.read(MAX_MANIFEST_BYTES + 1 - len(raw))
            if not more:
                return raw
            raw += more
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
        raise RetryableError(f"{where}: answer interrupted") from None
    raise RegistryError(f"{where}: answer is over the {MAX_MANIFEST_BYTES} byte limit")
