"""Harbor's own REST API (`/api/v2.0`), over the registry's existing transport.

Harbor is recognised by what its API answers (`GET /api/v2.0/systeminfo` returns a `GeneralInfo`
object with an `auth_mode`), never by its host name. The API takes the destination's own
credentials as HTTP Basic (users and robot accounts `robot$…` alike), through the same connection
pool and TLS trust the registry calls use. Paths and shapes follow goharbor/harbor
`api/v2.0/swagger.yaml`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from transship.errors import (
    AuthenticationError,
    ExitCode,
    PermissionDeniedError,
    RegistryError,
    TransshipError,
    UnreachableError,
    UsageError,
    shown_text,
)
from transship.remote.registry import Registry
from transship.sizes import parse_size

#: The registry behind an endpoint, from the endpoint factory (`RegistryPool.registry_of`);
#: None for an endpoint that is no registry. Harbor's API is reached through that registry's
#: transport (same TLS trust and credentials).
RegistryOf = Callable[[object], Registry | None]

API = "/api/v2.0"


@dataclass(frozen=True)
class HarborInfo:
    """What `GET /systeminfo` told us (fields absent for anonymous callers are None)."""

    version: str | None
    creation_restriction: str | None  # "adminonly" or "everyone"


@dataclass(frozen=True)
class Quota:
    """A project's storage quota in bytes; `limit` -1 means unlimited."""

    limit: int
    used: int


class ProjectRefused(TransshipError):
    """Harbor refused to create a project; `status` says why (400, 401, 403)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.exit_code = ExitCode.AUTH if status in (401, 403) else ExitCode.USAGE


class HarborAPI:
    """The few project calls transship needs, against one Harbor host."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.host = registry.host
        self.info: HarborInfo | None = None  # from the last detect()

    @property
    def user(self) -> str | None:
        creds = self.registry.transport.known_credentials
        return creds.username if creds and creds.username else None

    def _secrets(self) -> tuple[str, ...]:
        """The credentials this run sends Harbor: never in a message, whatever Harbor echoes."""
        creds = self.registry.transport.known_credentials
        if creds is None:
            return ()
        basic = creds.basic().removeprefix("Basic ") if creds.username else ""
        return tuple(s for s in (creds.password, creds.identity_token, basic) if s)

    async def _headers(self) -> dict[str, str]:
        # looked up only if the registry asked for credentials on /v2/ (Harbor always does)
        creds = await self.registry.transport.credentials()
        headers = {"Accept": "application/json"}
        if creds is not None and creds.username:
            headers["Authorization"] = creds.basic()
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        base = await self.registry.transport.base_url()
        headers = await self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            async with self.registry.transport.session().request(
                method,
                f"{base}{API}{path}",
                headers=headers,
                params=params,
                data=data,
                allow_redirects=False,
            ) as resp:
                return resp.status, await resp.read(), dict(resp.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UnreachableError(f"Harbor API of {self.host}: {exc}") from None

    async def detect(self) -> HarborInfo | None:
        """Harbor if `/api/v2.0/systeminfo` answers like Harbor; None for any other registry."""
        status, raw, _ = await self._call("GET", "/systeminfo")
        if status == 401 and self.user is not None:
            raise AuthenticationError(
                f"Harbor at {self.host} refused the destination credentials",
                hint=f"check {self.registry.options.creds_option}",
            )
        if status != 200:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict) or "auth_mode" not in doc:
            return None
        version = doc.get("harbor_version")
        restriction = doc.get("project_creation_restriction")
        self.info = HarborInfo(
            str(version) if version else None, str(restriction) if restriction else None
        )
        return self.info

    async def project_exists(self, name: str) -> bool:
        """`HEAD /projects?project_name=` (swagger `headProject`)."""
        status, _, _ = await self._call("HEAD", "/projects", params={"project_name": name})
        if status == 200:
            return True
        if status == 404:
            return False
        if status == 401:
            raise AuthenticationError(
                f"Harbor at {self.host} needs credentials to look projects up",
                hint=f"pass {self.registry.options.creds_option} USER:PASSWORD",
            )
        raise RegistryError(
            f"Harbor at {self.host}: HEAD /projects answered {status}", status=status
        )

    async def create_project(self, name: str, *, public: bool, storage_limit: int | None) -> bool:
        """`POST /projects`; True if created, False if it already existed (409: someone else
        just made it). Raises `ProjectRefused` for 400/401/403."""
        body = project_body(name, public=public, storage_limit=storage_limit)
        status, raw, _ = await self._call("POST", "/projects", body=body)
        if status == 201:
            return True
        if status == 409:
            return False
        detail = _message(raw, self._secrets())
        who = f"user '{self.user}'" if self.user else "an anonymous caller"
        if status == 403:
            if self.info is not None and self.info.creation_restriction == "everyone":
                needed = (
                    "a user account, or a robot account with the 'create project' system permission"
                )
            else:
                needed = (
                    "the system administrator role (or a robot account with the 'create "
                    "project' system permission) while project creation is restricted to admins"
                )
            raise ProjectRefused(
                f"Harbor at {self.host} does not let {who} create project '{name}': it needs "
                + needed,
                status=403,
                hint=f"Harbor says: {detail}" if detail else None,
            )
        if status == 401:
            raise ProjectRefused(
                f"Harbor at {self.host} wants credentials to create project '{name}'",
                status=401,
                hint=f"pass {self.registry.options.creds_option} USER:PASSWORD",
            )
        if status == 400:  # the name, the storage limit, the body: Harbor's reason says which
            raise ProjectRefused(
                f"Harbor at {self.host} refused to create project '{name}': "
                + (detail or "400 Bad Request, no reason given"),
                status=400,
            )
        raise RegistryError(
            f"Harbor at {self.host}: creating project '{name}' answered {status}"
            + (f": {detail}" if detail else ""),
            status=status,
        )

    async def quota(self, name: str) -> Quota | None:
        """The storage quota from `GET /projects/{name}/summary` (None if not readable)."""
        status, raw, _ = await self._call("GET", f"/projects/{quote(name, safe='')}/summary")
        if status != 200:
            return None
        try:
            quota = json.loads(raw)["quota"]
            return Quota(int(quota["hard"]["storage"]), int(quota["used"]["storage"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def accessories(self, project: str, repository: str, digest: str) -> list[str] | None:
        """Digests of an artifact's accessories (signatures, SBOMs, subject referrers), or None
        if this Harbor has no accessories API (before 2.5)."""
        repo = quote(quote(repository, safe=""), safe="")  # swagger: a/b -> a%252Fb
        status, raw, _ = await self._call(
            "GET",
            f"/projects/{quote(project, safe='')}/repositories/{repo}/artifacts/{digest}"
            "/accessories",
            params={"page_size": "100"},
        )
        if status == 404:
            return None
        if status in (401, 403):
            raise PermissionDeniedError(
                f"Harbor at {self.host}: cannot read accessories of "
                f"{project}/{repository}@{digest[:19]}"
            )
        if status != 200:
            raise RegistryError(
                f"Harbor at {self.host}: accessories answered {status}", status=status
            )
        try:
            return [str(item["digest"]) for item in json.loads(raw)]
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"Harbor at {self.host}: unreadable accessories list") from None

    async def artifact_children(
        self, project: str, repository: str, digest: str
    ) -> list[tuple[str, dict[str, Any] | None]] | None:
        """`GET /projects/{p}/repositories/{r}/artifacts/{digest}`: the child digests (and
        platforms) of an index from Harbor's database — an API call, not a registry pull."""
        repo = quote(quote(repository, safe=""), safe="")
        status, raw, _ = await self._call(
            "GET", f"/projects/{quote(project, safe='')}/repositories/{repo}/artifacts/{digest}"
        )
        if status != 200:
            return None
        try:
            references = json.loads(raw).get("references") or []
            return [
                (str(r["child_digest"]), r.get("platform") if isinstance(r, dict) else None)
                for r in references
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _message(raw: bytes, secrets: Iterable[str] = ()) -> str:
    """Harbor's reason from a swagger `Errors` body (each `errors[].message`, else its
    `code`), else the body's own `message`, else the body's text: one line as `shown_text`
    shows it, `secrets` never."""
    body_text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(raw)
        errors = body.get("errors") or []
        text = "; ".join(
            str(e.get("message") or e.get("code") or "") for e in errors if isinstance(e, dict)
        )
        text = text or str(body.get("message") or "") or body_text
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError):
        text = body_text
    return shown_text(
        text, secrets, withheld="(Harbor's reason withheld: it may quote the password)"
    )


#: Harbor's `storage_limit` (swagger `ProjectReq`) is an int64 count of bytes
MAX_STORAGE_LIMIT = 2**63 - 1


def parse_quota(text: str) -> int:
    """`--project-quota`: `10G`, `500M`, `1T` (binary multiples) or bytes; -1 is unlimited.
    Above Harbor's int64 (`MAX_STORAGE_LIMIT`, 8 EiB less a byte) is a one-line usage error."""
    if text.strip() == "-1":
        return -1
    size = parse_size(text, option="--project-quota", example="10G or 500M, or -1")
    if size > MAX_STORAGE_LIMIT:
        raise UsageError(
            f"--project-quota {text!r}: over the largest storage limit Harbor takes "
            f"({MAX_STORAGE_LIMIT} bytes, 8 EiB less a byte); give a size such as 10G, or -1 "
            "for unlimited"
        )
    return size


def project_body(name: str, *, public: bool, storage_limit: int | None) -> dict[str, Any]:
    """The `POST /projects` body (swagger `ProjectReq`): what `--create-projects` sends and
    what the preflight's curl command shows, from one place."""
    body: dict[str, Any] = {
        "project_name": name,
        "metadata": {"public": "true" if public else "false"},
    }
    if storage_limit is not None:
        body["storage_limit"] = storage_limit
    return body
