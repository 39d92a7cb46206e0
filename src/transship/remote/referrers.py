"""The OCI 1.1 referrers API (`GET /v2/<repo>/referrers/<digest>`), all pages.

Only this wire layer knows which statuses mean "no API here"; above it, `Endpoint.list_referrers`
answers a tuple of referrers or None. Each page is read whole through `Transport.fetch`, so a
page cut short or damaged on the way is fetched again under the one retry policy.
"""

from __future__ import annotations

from transship.digest import Digest
from transship.errors import IntegrityError, RegistryError, TransshipError
from transship.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, Referrer, parse_referrers
from transship.remote.links import next_link
from transship.remote.registry import Registry, error_for, pull
from transship.remote.transport import Fetched

#: a referrers API answer this many pages long is not a registry we understand
MAX_REFERRERS_PAGES = 100
#: answers that mean "this registry has no referrers API" (the spec forbids 404 when it has one)
API_MISSING = frozenset({400, 404, 405})


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

    def check(answer: Fetched) -> None:
        """A list that does not parse was damaged on the way: fetched again (bounded)."""
        try:
            parse_referrers(answer.body, where)
        except TransshipError as exc:
            raise IntegrityError(exc.message) from None

    while path is not None:
        answer = await registry.transport.fetch(  # a cut or unreadable answer is fetched again
            "GET",
            path,
            scopes=pull(repository),
            headers={"Accept": OCI_INDEX},
            limit=MAX_MANIFEST_BYTES,  # a referrers list is a manifest
            check=check,
        )
        if answer.status in API_MISSING and pages == 0:
            return None
        if answer.status != 200:
            raise error_for(answer.status, answer.body, where)
        if answer.too_large(MAX_MANIFEST_BYTES):
            raise RegistryError(f"{where}: answer is over the {MAX_MANIFEST_BYTES} byte limit")
        following = next_link(answer.headers.get("Link"), answer.url)
        found += parse_referrers(answer.body, where)
        pages += 1
        if following is not None and pages >= MAX_REFERRERS_PAGES:
            raise RegistryError(f"{where}: more than {MAX_REFERRERS_PAGES} pages of referrers")
        path = following
    return tuple(found)
