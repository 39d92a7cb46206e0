"""The read side of the distribution API over a `ServedArchive`, as an aiohttp application.

One catch-all route parses `/v2/...` itself: repository names hold slashes, and a hostile path
(10,000 characters, `..`, percent-encoded tricks) must end in a spec error, never in a router's
guess. Names and digests are validated, then looked up in dictionaries; no request string ever
becomes a file path. Writes answer 405 UNSUPPORTED (401 first, without credentials); a GET of
an upload's status 404 BLOB_UPLOAD_UNKNOWN.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from transship.digest import Digest
from transship.errors import InvalidDigestError, TransshipError
from transship.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from transship.reference import is_tag
from transship.serve.archive import Repository, ServedArchive, valid_name
from transship.serve.auth import Htpasswd
from transship.serve.blobs import BlobServer, not_modified
from transship.serve.errors import API_VERSION_HEADER, APIError

log = logging.getLogger("transship.serve")

READ_METHODS = frozenset({"GET", "HEAD"})
CATALOG_PAGE = 1000
_UPLOADS = re.compile(r"^(?P<name>.+)/blobs/uploads(?:/[^/]*)?$")
_ITEM = re.compile(r"^(?P<name>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)$")
_TAGS = re.compile(r"^(?P<name>.+)/tags/list$")
#: what a client may say it accepts, among the manifest types this server can hold
_KNOWN_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})
_DEFAULT_PLATFORM = ("linux", "amd64")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def accepted_types(values: list[str]) -> frozenset[str] | None:
    """Manifest media types the Accept headers list; None when they list none (or `*/*`)."""
    found = set()
    for value in values:
        for part in value.split(","):
            media_type, _, params = part.partition(";")
            if re.search(r"(?:^|;)\s*q\s*=\s*0(?:\.0*)?\s*(?:;|$)", params):
                continue  # q=0: explicitly not acceptable
            found.add(media_type.strip().lower())
    known = frozenset(found & _KNOWN_TYPES)
    return known or None


def negotiate(stored: str, accepted: frozenset[str] | None, by_tag: bool) -> str:
    """What to send, as distribution decides: "stored", "platform" (a list's linux/amd64
    image for a client that takes no lists, by tag only) or an APIError.

    Distribution refuses an OCI manifest or index to a client whose Accept header leaves it
    out. Docker types are sent as stored (distribution would rewrite them to schema 1, which
    transship never produces)."""
    if accepted is None or stored in accepted:
        return "stored"
    if stored == DOCKER_MANIFEST_LIST and by_tag and DOCKER_MANIFEST in accepted:
        return "platform"
    if stored == OCI_MANIFEST:
        raise APIError(
            "MANIFEST_UNKNOWN",
            message="OCI manifest found, but accept header does not support OCI manifests",
        )
    if stored == OCI_INDEX:
        raise APIError(
            "MANIFEST_UNKNOWN",
            message="OCI index found, but accept header does not support OCI indexes",
        )
    return "stored"


def page(
    items: list[str], n_param: str | None, last: str | None, default: int | None
) -> tuple[list[str], bool, int | None]:
    """Sorted items after `last`, at most `n` (or `default`); (page, more follow, n used)."""
    n = default
    if n_param is not None:
        if not re.fullmatch(r"\d{1,18}", n_param):
            raise APIError("PAGINATION_NUMBER_INVALID", {"n": n_param[:32]})
        n = int(n_param)
    items = sorted(items)
    if last:
        items = [item for item in items if item > last]
    if n is None:
        return items, False, None
    return items[:n], len(items) > n and n > 0, n


class RegistryAPI:
    """Request handling; `application()` wires it into aiohttp with auth and error handling."""

    def __init__(self, archive: ServedArchive, auth: Htpasswd | None = None) -> None:
        self.archive = archive
        self.auth = auth
        self.blobs = BlobServer(archive.files)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        # `[\s\S]`, not `.`: a percent-encoded newline in the path (`…/manifests/v1%0A`) must
        # reach dispatch for a spec error, not fail the route match (an HTTPNotFound, a 500)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.dispatch)
        app.on_response_prepare.append(_api_version_header)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if self.auth is not None:
                request["user"] = await self.auth.require(request.headers.get("Authorization"))
            return await handler(request)
        except APIError as exc:
            return exc.response()
        except TransshipError as exc:  # the archive failed us: say so, in one line
            log.error("%s %s: %s", request.method, request.path[:200], exc)
            return APIError("UNKNOWN", message=str(exc)).response()
        except ConnectionError:
            raise  # the client is gone; nothing to answer
        except Exception as exc:  # an unreadable medium, or a bug: one line (-vv: traceback)
            log.error("%s %s: %s: %s", request.method, request.path[:200], type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            return APIError("UNKNOWN", message="internal error reading the archive").response()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method not in READ_METHODS:
            raise APIError(
                "UNSUPPORTED",
                message="this registry is read-only: it serves an archive",
                headers={"Allow": "GET, HEAD"},
            )
        if path in ("/v2", "/v2/"):
            return web.json_response({})
        if not path.startswith("/v2/"):
            raise APIError("NOT_FOUND")
        rest = path[len("/v2/") :]
        if rest == "_catalog":
            return self.catalog(request)
        if _UPLOADS.match(rest):
            # a GET of an upload's status (end-13) answers 204 or 404: no upload ever exists here
            raise APIError(
                "BLOB_UPLOAD_UNKNOWN", message="this registry is read-only: it holds no uploads"
            )
        item = _ITEM.match(rest)
        if item:
            name, kind, ref = item["name"], item["kind"], item["ref"]
            if kind == "referrers":
                return self.referrers(request, _name(name), _digest(ref))
            repo = self._repository(name)
            if kind == "manifests":
                return await self.manifest(request, repo, ref)
            return await self.blob(request, repo, _digest(ref))
        tags = _TAGS.match(rest)
        if tags:
            return self.tags(request, self._repository(tags["name"]))
        raise APIError("NOT_FOUND")

    def _repository(self, name: str) -> Repository:
        repo = self.archive.repositories.get(_name(name))
        if repo is None:
            raise APIError("NAME_UNKNOWN", {"name": name})
        return repo

    # -- manifests --------------------------------------------------------------------------

    async def manifest(self, request: web.Request, repo: Repository, ref: str) -> web.Response:
        by_tag = ":" not in ref
        if by_tag:
            if not is_tag(ref):
                raise APIError("TAG_INVALID", {"tag": ref[:128]})
            descriptor = repo.tags.get(ref)
            if descriptor is None:
                raise APIError("MANIFEST_UNKNOWN", {"tag": ref})
            digest, media_type = descriptor.digest, repo.manifests[descriptor.digest]
        else:
            digest = _digest(ref)
            found = repo.manifests.get(digest)
            if found is None:
                raise APIError("MANIFEST_UNKNOWN", {"digest": str(digest)})
            media_type = found
        manifest = await self.archive.manifest(digest, media_type)
        accepted = accepted_types(request.headers.getall("Accept", []))
        if negotiate(manifest.media_type, accepted, by_tag) == "platform":
            child = next(
                (
                    c
                    for c in manifest.manifests
                    if c.platform is not None
                    and (c.platform.os, c.platform.architecture) == _DEFAULT_PLATFORM
                ),
                None,
            )
            if child is None or child.digest not in repo.manifests:
                raise APIError(
                    "MANIFEST_UNKNOWN",
                    message="manifest list has no linux/amd64 image for a client that "
                    "accepts no lists",
                )
            manifest = await self.archive.manifest(child.digest, child.media_type)
        etag = f'"{manifest.digest}"'
        headers = {"Docker-Content-Digest": str(manifest.digest), "ETag": etag}
        if not_modified(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        response = web.Response(body=manifest.raw, headers=headers)
        response.headers["Content-Type"] = manifest.media_type
        return response

    # -- blobs ------------------------------------------------------------------------------

    async def blob(
        self, request: web.Request, repo: Repository, digest: Digest
    ) -> web.StreamResponse:
        if digest not in repo.blobs and digest not in repo.manifests:
            raise APIError("BLOB_UNKNOWN", {"digest": str(digest)})
        found = self.archive.blob(digest)
        if found is None:
            raise APIError(
                "BLOB_UNKNOWN",
                {"digest": str(digest)},
                message="blob unknown: it lives in a base archive that is not being served",
            )
        extents, _layer = found
        return await self.blobs.respond(request, digest, extents)

    # -- listings ---------------------------------------------------------------------------

    def tags(self, request: web.Request, repo: Repository) -> web.Response:
        query = request.query
        tags, more, n = page(list(repo.tags), query.get("n"), query.get("last"), None)
        headers = {}
        if more and tags:
            link = f"/v2/{repo.name}/tags/list?" + urlencode({"n": n, "last": tags[-1]})
            headers["Link"] = f'<{link}>; rel="next"'
        return web.json_response({"name": repo.name, "tags": tags}, headers=headers)

    def catalog(self, request: web.Request) -> web.Response:
        query = request.query
        names, more, n = page(
            list(self.archive.repositories), query.get("n"), query.get("last"), CATALOG_PAGE
        )
        headers = {}
        if more and names:
            link = "/v2/_catalog?" + urlencode({"n": n, "last": names[-1]}, quote_via=quote)
            headers["Link"] = f'<{link}>; rel="next"'
        return web.json_response({"repositories": names}, headers=headers)

    def referrers(self, request: web.Request, name: str, digest: Digest) -> web.Response:
        """OCI 1.1: an index of the manifests whose subject is `digest`; never 404."""
        repo = self.archive.repositories.get(name)
        found = repo.referrers.get(digest, {}) if repo is not None else {}
        entries: list[dict[str, Any]] = [found[d] for d in sorted(found)]
        headers = {}
        wanted = request.query.getall("artifactType", [])
        if wanted:
            entries = [e for e in entries if e.get("artifactType") in wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        response = web.Response(body=json.dumps(body).encode(), headers=headers)
        response.headers["Content-Type"] = OCI_INDEX
        return response


def _name(name: str) -> str:
    if not valid_name(name):
        raise APIError("NAME_INVALID", {"name": name[:256]})
    return name


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigestError:
        raise APIError("DIGEST_INVALID", {"digest": text[:160]}, message="invalid digest") from None


async def _api_version_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(API_VERSION_HEADER)
