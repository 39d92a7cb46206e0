"""A Harbor *emulator*: Harbor's v2.0 project API and its registry front, over a real registry.

There is no Harbor on these machines (it needs PostgreSQL, Redis and half a dozen services), so
this emulator answers the calls transship makes the way goharbor/harbor `api/v2.0/swagger.yaml`
describes them, and reverse-proxies `/v2/` to a real `docker-registry` (`RegistryProcess` in
`plain` mode) the way Harbor's core fronts its distribution:

======================================================  =========================================
swagger path (basePath `/api/v2.0`)                      emulated
======================================================  =========================================
`GET /ping`                                              200 `Pong` (text/plain)
`GET /systeminfo`                                        200 `GeneralInfo` (anonymous: a subset)
`HEAD /projects?project_name=`                           200 / 404 (`headProject`), 401 anonymous
`GET /projects/{project_name_or_id}`                     200 `Project`, 404, 401 private+anonymous
`GET /projects/{project_name_or_id}/summary`             200 `ProjectSummary` with `quota`
`POST /projects` (`ProjectReq`)                          201 + `Location`, 400, 401, 403, 409
`GET /projects/{p}/repositories/{r}/artifacts/{ref}/`    200 list of `Accessory` (cosign tag
`accessories`                                            signatures and OCI `subject` referrers)
======================================================  =========================================

Errors use the swagger `Errors` shape: `{"errors": [{"code": ..., "message": ...}]}`.

The registry front behaves as Harbor does for what transship relies on:

- `auth="bearer"` (Harbor's default): `/v2/` challenges with `Bearer realm=…/service/token`; the
  token service grants nothing in a project that does not exist, so a push there answers 401
  `insufficient_scope`. `auth="basic"`: `/v2/` challenges with Basic; a request into an unknown
  project answers 404 `NAME_UNKNOWN`. Either way a Basic header sent up front is accepted.
- Storage quota: a blob upload that would take a project over its `storage_limit` is refused with
  `quota_status` (403 `DENIED` by default, 412 `PRECONDITION` as older Harbor) and Harbor's
  message: "Quota exceeded when processing the request of adding …" (`quota_wording="quota"`,
  1.9 on) or, as Harbor 2.x prints it, without the word ("adding … will exceed the configured
  upper limit of …", `quota_wording="upper-limit"`); the registry never receives the blob.
  `POST /projects` takes a `storage_limit` of -1 or 1 to 2**63-1 (Harbor's int64; larger is
  refused 400 as Go's JSON decoder refuses it).
- `GET /v2/<name>/referrers/<digest>` (Harbor ≥ 2.8) from the `subject` of manifests pushed
  through the emulator (`referrers_api=False` answers 404 like older Harbor).
- `GET /v2/_catalog` (src/server/registry/catalog.go, middleware/v2auth): system admins only;
  anyone else gets 401 `UNAUTHORIZED` with a `Basic realm="harbor"` challenge, even to a Bearer
  token. Names are sorted as plain strings; with `n`, a page after `last`, which must name an
  existing repository (else 400 `BAD_REQUEST`), and a `Link` while more follow; without `n`,
  every name at once.

Everything runs in a background thread with its own event loop on 127.0.0.1; every request is
recorded in `records` (method, path with query, status) for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .pki import ServerCert
from .registry import RegistryProcess

#: Harbor's project name rule (src/common/utils: `^[a-z0-9]+(?:[._-][a-z0-9]+)*$`, ≤ 255).
PROJECT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
INT64_MAX = 2**63 - 1  # Harbor's storage_limit (swagger ProjectReq) is an int64 of bytes
ADMIN = "admin"
ADMIN_PASSWORD = "Harbor12345"  # Harbor's documented default; a test secret only

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_V2_NAME = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags|referrers)(?P<rest>/.*)?$")
#: set on a streamed answer `_forward` has recorded already
_RECORDED = web.RequestKey("recorded", bool)
_COSIGN_SIG = re.compile(r"^sha256-(?P<hex>[0-9a-f]{64})\.sig$")


@dataclass(frozen=True)
class Record:
    method: str
    path: str  # raw path with query
    status: int
    user: str | None


@dataclass
class Project:
    project_id: int
    name: str
    public: bool
    owner: str
    storage_limit: int = -1  # bytes; -1: unlimited
    used: int = 0
    reserved: int = 0  # uploads admitted and not finished yet (Harbor reserves, then commits)
    blobs: set[str] = field(default_factory=set)
    created: str = ""


@dataclass
class _Upload:
    project: str
    received: int = 0


def human(n: float) -> str:
    """Harbor's quota message units (`1.3 MiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"  # pragma: no cover


class HarborEmulator:
    """`HarborEmulator(registry, tls=pki.server).start()`; `stop()` or use as a context manager.

    Settings are attributes read per request: `users` (name → password; `admin` is the system
    admin), `robots_may_create` (robot accounts holding the system "create project"
    permission), `creation_restriction` ("adminonly" — Harbor's default — or "everyone"),
    `read_only_users` (may pull, never push), `quota_status`, `quota_wording`,
    `referrers_api`, `version`.
    """

    def __init__(
        self,
        upstream: RegistryProcess,
        *,
        tls: ServerCert | None = None,
        auth: Literal["bearer", "basic"] = "bearer",
        users: dict[str, str] | None = None,
        creation_restriction: Literal["adminonly", "everyone"] = "adminonly",
        robots_may_create: frozenset[str] = frozenset(),
        read_only_users: frozenset[str] = frozenset(),
        quota_status: int = 403,
        quota_wording: Literal["quota", "upper-limit"] = "quota",
        referrers_api: bool = True,
        version: str = "v2.10.0-emulated",
    ) -> None:
        if upstream.mode != "plain":
            raise ValueError("the emulator fronts a plain registry: it does the auth itself")
        self.upstream = upstream
        self.tls = tls
        self.auth = auth
        self.users = dict(users) if users is not None else {ADMIN: ADMIN_PASSWORD}
        self.users.setdefault(ADMIN, ADMIN_PASSWORD)
        self.creation_restriction = creation_restriction
        self.robots_may_create = robots_may_create
        self.read_only_users = read_only_users
        self.quota_status = quota_status
        self.quota_wording = quota_wording
        self.referrers_api = referrers_api
        self.version = version
        self.projects: dict[str, Project] = {}
        self.records: list[Record] = []
        self._next_id = 1
        self._tokens: dict[str, tuple[str | None, dict[str, frozenset[str]]]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._sizes: dict[str, int] = {}  # blob digest → size, as seen on upload
        #: (repository, subject digest) → accessories as referrer descriptors (OCI `subject`
        #: referrers and cosign `sha256-<hex>.sig` signatures, as Harbor attaches both)
        self._referrers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._accessory_types: dict[str, str] = {}  # accessory digest → Harbor type
        self._lock = threading.Lock()
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._error: BaseException | None = None
        self.add_project("library", public=True)  # every Harbor has it

    # -- addresses and lifecycle ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("harbor emulator not started")
        return self._port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ref(self, repo_and_tag: str) -> str:
        return f"{self.host}/{repo_and_tag}"

    def start(self, timeout: float = 10.0) -> HarborEmulator:
        if self._thread is not None and self._thread.is_alive():
            return self
        self.upstream.start()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name="harbor-emulator"
        )
        self._thread.start()
        if not ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"harbor emulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(10)
        self._thread = None

    def __enter__(self) -> HarborEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # pragma: no cover - reported by start()
            self._error = exc
        finally:
            ready.set()
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=120),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        ssl_ctx = None
        if self.tls is not None:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(self.tls.chain_path, self.tls.key_path)
        runner = web.ServerRunner(web.Server(self._handle, access_log=None), shutdown_timeout=1)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
            await site.start()
            self._port = int(runner.addresses[0][1])
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    # -- state helpers ---------------------------------------------------------------------------

    def add_project(
        self, name: str, *, public: bool = False, owner: str = ADMIN, storage_limit: int = -1
    ) -> Project:
        """Create a project directly (as an admin would in the UI)."""
        with self._lock:
            project = Project(
                self._next_id,
                name,
                public,
                owner,
                storage_limit,
                created=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            )
            self._next_id += 1
            self.projects[name] = project
            return project

    def requests(self, method: str | None = None, path_re: str = "") -> list[Record]:
        rx = re.compile(path_re)
        with self._lock:
            return [
                r
                for r in self.records
                if (method is None or r.method == method) and rx.search(r.path)
            ]

    def _project_json(self, p: Project) -> dict[str, Any]:
        return {
            "project_id": p.project_id,
            "owner_id": 1,
            "name": p.name,
            "registry_id": 0,
            "creation_time": p.created,
            "update_time": p.created,
            "deleted": False,
            "owner_name": p.owner,
            "togglable": True,
            "current_user_role_id": 1,
            "current_user_role_ids": [1],
            "repo_count": 0,
            "chart_count": 0,
            "metadata": {"public": "true" if p.public else "false"},
            "cve_allowlist": {"id": 0, "project_id": p.project_id, "items": []},
        }

    # -- auth --------------------------------------------------------------------------------------

    def _basic_user(self, request: web.BaseRequest) -> tuple[bool, str | None]:
        """(valid, user): no header is (True, None); a wrong password is (False, None)."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return True, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        if user and self.users.get(user) == password:
            return True, user
        return False, None

    def _can_push(self, user: str | None, project: str) -> bool:
        return user is not None and project in self.projects and user not in self.read_only_users

    def _can_pull(self, user: str | None, project: str) -> bool:
        p = self.projects.get(project)
        return p is not None and (p.public or user is not None)

    def _may_create(self, user: str) -> bool:
        if user == ADMIN or (
            self.creation_restriction == "everyone" and not user.startswith("robot$")
        ):
            return True
        return user in self.robots_may_create

    # -- dispatch ----------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        user: str | None = None
        try:
            if path.startswith("/api/v2.0/"):
                resp, user = await self._api(request, path[len("/api/v2.0") :])
            elif path == "/service/token":
                resp, user = self._token(request)
            elif path == "/v2" or path.startswith("/v2/"):
                resp, user = await self._registry(request)
            else:
                resp = _errors(404, "NOT_FOUND", f"{path} not found")
        except Exception as exc:  # a bug in the emulator must show, not hang the client
            resp = _errors(500, "UNKNOWN", f"emulator: {type(exc).__name__}: {exc}")
        if not request.get(_RECORDED):  # once, even when a forward failed after recording
            self._record(request, resp.status, user)
        return resp

    # -- /api/v2.0 ---------------------------------------------------------------------------------

    async def _api(
        self, request: web.BaseRequest, path: str
    ) -> tuple[web.StreamResponse, str | None]:
        valid, user = self._basic_user(request)
        if not valid:
            return _errors(401, "UNAUTHORIZED", "unauthorized"), None
        method = request.method
        if path == "/ping" and method == "GET":
            return web.Response(text="Pong", content_type="text/plain"), user
        if path == "/systeminfo" and method == "GET":
            return web.json_response(self._systeminfo(user)), user
        if path == "/projects":
            if method == "HEAD":
                return self._head_project(request, user), user
            if method == "POST":
                return await self._create_project(request, user), user
        parts = [unquote(p) for p in path.split("/")[1:]]
        if len(parts) >= 2 and parts[0] == "projects" and method == "GET":
            project = self._lookup(parts[1], request)
            if project is None:
                return _errors(404, "NOT_FOUND", f"project {parts[1]} not found"), user
            if not project.public and user is None:
                return _errors(401, "UNAUTHORIZED", "unauthorized"), user
            if len(parts) == 2:
                return web.json_response(self._project_json(project)), user
            if parts[2:] == ["summary"]:
                return web.json_response(self._summary(project)), user
            if len(parts) == 6 and parts[2] == "repositories" and parts[4] == "artifacts":
                repo = f"{project.name}/{unquote(parts[3])}"
                artifact = await self._artifact(repo, parts[5])
                if artifact is None:
                    return _errors(404, "NOT_FOUND", f"artifact {repo}@{parts[5]} not found"), user
                return web.json_response(artifact), user
            if (
                len(parts) == 7
                and parts[2] == "repositories"
                and parts[4] == "artifacts"
                and parts[6] == "accessories"
            ):
                repo = f"{project.name}/{unquote(parts[3])}"
                return web.json_response(await self._accessories(repo, parts[5])), user
        return _errors(404, "NOT_FOUND", f"{method} /api/v2.0{path} is not emulated"), user

    def _systeminfo(self, user: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "auth_mode": "db_auth",
            "primary_auth_mode": False,
            "self_registration": False,
            "banner_message": "",
            "harbor_version": self.version,
            "current_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if user is not None:
            info.update(
                {
                    "with_notary": False,
                    "with_chartmuseum": False,
                    "registry_url": self.host,
                    "external_url": self.url,
                    "project_creation_restriction": self.creation_restriction,
                    "has_ca_root": False,
                    "read_only": False,
                    "notification_enable": True,
                    "registry_storage_provider_name": "filesystem",
                }
            )
        return info

    def _lookup(self, name_or_id: str, request: web.BaseRequest) -> Project | None:
        by_name = request.headers.get("X-Is-Resource-Name", "").lower() == "true"
        if not by_name and name_or_id.isdigit():
            return next(
                (p for p in self.projects.values() if p.project_id == int(name_or_id)), None
            )
        return self.projects.get(name_or_id)

    def _head_project(self, request: web.BaseRequest, user: str | None) -> web.StreamResponse:
        if user is None:
            return web.Response(status=401)
        name = request.query.get("project_name", "")
        return web.Response(status=200 if name in self.projects else 404)

    async def _create_project(
        self, request: web.BaseRequest, user: str | None
    ) -> web.StreamResponse:
        if user is None:
            return _errors(401, "UNAUTHORIZED", "UnAuthorized")
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            return _errors(400, "BAD_REQUEST", "invalid JSON body")
        if not isinstance(body, dict):
            return _errors(400, "BAD_REQUEST", "project must be a JSON object")
        name = body.get("project_name")
        if not isinstance(name, str) or not name or len(name) > 255 or not PROJECT_NAME.match(name):
            return _errors(
                400,
                "BAD_REQUEST",
                "project name is not in lower case or contains illegal characters",
            )
        limit = body.get("storage_limit")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > INT64_MAX:
            # swagger `ProjectReq.storage_limit` is int64: Go's JSON decoder refuses the body
            return _errors(
                400,
                "BAD_REQUEST",
                f'parsing body body from "" failed, because json: cannot unmarshal number '
                f"{limit} into Go struct field ProjectReq.storage_limit of type int64",
            )
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit == 0 or limit < -1
        ):
            return _errors(400, "BAD_REQUEST", "storage_limit must be -1 or a positive size")
        if not self._may_create(user):
            return _errors(403, "FORBIDDEN", "Only system admin can create project")
        metadata = body.get("metadata") or {}
        public = str(metadata.get("public", "false")).lower() == "true"
        with self._lock:
            exists = name in self.projects
        if exists:
            return _errors(409, "CONFLICT", f"The project named {name} already exists")
        project = self.add_project(
            name, public=public, owner=user, storage_limit=limit if isinstance(limit, int) else -1
        )
        in_location = request.headers.get("X-Resource-Name-In-Location", "").lower() == "true"
        ident = project.name if in_location else str(project.project_id)
        return web.Response(
            status=201,
            headers={"Location": f"/api/v2.0/projects/{ident}", "X-Request-Id": uuid.uuid4().hex},
        )

    def _summary(self, p: Project) -> dict[str, Any]:
        return {
            "repo_count": 0,
            "chart_count": 0,
            "project_admin_count": 1,
            "quota": {"hard": {"storage": p.storage_limit}, "used": {"storage": p.used}},
        }

    async def _accessories(self, repo: str, reference: str) -> list[dict[str, Any]]:
        digest = reference if ":" in reference else await self._resolve(repo, reference)
        with self._lock:
            items = list(self._referrers.get((repo, digest), []))
        return [
            _accessory(
                n,
                repo,
                digest,
                item["digest"],
                item["size"],
                self._accessory_types.get(item["digest"], "subject.accessory"),
            )
            for n, item in enumerate(items, 1)
        ]

    async def _artifact(self, repo: str, reference: str) -> dict[str, Any] | None:
        """swagger `Artifact` (`getArtifact`): Harbor reads it from its database; the emulator
        from the registry behind it (not a pull through the front, so not recorded as one)."""
        status, headers, raw = await self._upstream(
            "GET", f"/v2/{repo}/manifests/{reference}", {"Accept": _ACCEPT}
        )
        if status != 200:
            return None
        doc = json.loads(raw)
        references = [
            {
                "parent_id": 1,
                "child_id": n,
                "child_digest": child["digest"],
                "platform": child.get("platform"),
                "annotations": child.get("annotations") or {},
                "urls": child.get("urls") or [],
            }
            for n, child in enumerate(doc.get("manifests") or [], 2)
        ]
        media_type = headers.get("Content-Type", "")
        return {
            "id": 1,
            "type": "IMAGE",
            "media_type": (doc.get("config") or {}).get("mediaType", media_type),
            "manifest_media_type": media_type,
            "digest": headers.get("Docker-Content-Digest", ""),
            "size": len(raw),
            "references": references,
        }

    def forget_accessory(self, digest: str) -> None:
        """Drop an accessory from the referrers and accessories lists (as if Harbor had not
        attached it, e.g. pushed where Harbor did not recognise it)."""
        with self._lock:
            for listed in self._referrers.values():
                listed[:] = [d for d in listed if d["digest"] != digest]

    async def _resolve(self, repo: str, tag: str) -> str:
        _, headers, _ = await self._upstream(
            "HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": _ACCEPT}
        )
        return headers.get("Docker-Content-Digest", "")

    async def _upstream(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, CIMultiDict[str], bytes]:
        assert self._session is not None
        async with self._session.request(method, self.upstream.url + path, headers=headers) as r:
            return r.status, CIMultiDict(r.headers), await r.read()

    # -- token service -----------------------------------------------------------------------------

    def _token(self, request: web.BaseRequest) -> tuple[web.StreamResponse, str | None]:
        valid, user = self._basic_user(request)
        if not valid:
            return _errors(401, "UNAUTHORIZED", "invalid credentials"), None
        granted: dict[str, frozenset[str]] = {}
        for scope in request.query.getall("scope", []):
            for part in scope.split(" "):
                rtype, _, rest = part.partition(":")
                name, _, actions = rest.rpartition(":")
                if rtype != "repository" or not name:
                    continue
                project = name.split("/")[0]
                wanted = set(actions.split(","))
                allowed = set()
                if "pull" in wanted and self._can_pull(user, project):
                    allowed.add("pull")
                if "push" in wanted and self._can_push(user, project):
                    allowed.add("push")
                if "delete" in wanted and user == ADMIN and project in self.projects:
                    allowed.add("delete")
                granted[name] = granted.get(name, frozenset()) | frozenset(allowed)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (user, granted)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": 1800,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return web.json_response(body), user

    # -- /v2/ front -------------------------------------------------------------------------------

    def _challenge(self, scope: str | None = None, error: str | None = None) -> str:
        if self.auth == "basic":
            return 'Basic realm="harbor"'
        value = f'Bearer realm="{self.url}/service/token",service="harbor-registry"'
        if scope:
            value += f',scope="{scope}"'
        if error:
            value += f',error="{error}"'
        return value

    async def _registry(self, request: web.BaseRequest) -> tuple[web.StreamResponse, str | None]:
        header = request.headers.get("Authorization", "")
        user: str | None = None
        token_access: dict[str, frozenset[str]] | None = None
        if header.lower().startswith("bearer "):
            entry = self._tokens.get(header[7:].strip())
            if entry is None:
                return _unauthorized(self._challenge(error="invalid_token")), None
            user, token_access = entry
        elif header:
            valid, user = self._basic_user(request)
            if not valid:
                return _unauthorized(self._challenge()), None
        path = request.path
        if path in ("/v2", "/v2/"):
            if user is None and token_access is None:
                return _unauthorized(self._challenge()), None
            return web.json_response({}), user
        if path == "/v2/_catalog" and request.method == "GET":
            if user != ADMIN:
                return _unauthorized('Basic realm="harbor"', "unauthorized to list catalog"), user
            return await self._catalog(request), user
        m = _V2_NAME.match(path)
        if m is None:
            return _errors(404, "NOT_FOUND", "not found"), user
        name, kind, rest = m["name"], m["kind"], m["rest"] or ""
        project = name.split("/")[0]
        action = (
            "pull"
            if request.method in ("GET", "HEAD")
            else ("delete" if request.method == "DELETE" else "push")
        )
        if token_access is not None:
            if action not in token_access.get(name, frozenset()):
                scope = f"repository:{name}:{action}"
                return _unauthorized(
                    self._challenge(scope, "insufficient_scope"),
                    f"unauthorized to access repository: {name}, action: {action}",
                ), user
        else:
            if user is None and not (action == "pull" and self._can_pull(None, project)):
                return _unauthorized(self._challenge()), None
            if project not in self.projects:
                return _errors(404, "NAME_UNKNOWN", f"project {project} not found"), user
            allowed = (
                self._can_pull(user, project)
                if action == "pull"
                else (self._can_push(user, project) if action == "push" else user == ADMIN)
            )
            if not allowed:
                return _errors(403, "DENIED", "requested access to the resource is denied"), user
        if kind == "referrers" and request.method == "GET" and self.referrers_api:
            return self._referrers_index(name, rest.lstrip("/"), request), user
        refused, reserved = self._check_quota(request, name, kind, rest)
        if refused is not None:
            async for _chunk in request.content.iter_any():  # read it all: the client then
                pass  # sees the answer, not a reset
            return refused, user
        try:
            return await self._forward(request, name, kind, rest, user), user
        finally:
            if reserved:
                with self._lock:
                    self.projects[project].reserved -= reserved

    async def _catalog(self, request: web.BaseRequest) -> web.StreamResponse:
        """Harbor's catalog: its repositories (here: the registry's) sorted as strings."""
        names: list[str] = []
        path: str | None = "/v2/_catalog?n=1000"
        while path is not None:
            _, headers, raw = await self._upstream("GET", path, {})
            names += json.loads(raw).get("repositories") or []
            link = re.match(r"<([^>]+)>", headers.get("Link", ""))
            path = urlsplit(link[1])._replace(scheme="", netloc="").geturl() if link else None
        names.sort()
        if "n" not in request.query:
            return web.json_response({"repositories": names})
        try:
            n = int(request.query["n"])
        except ValueError:
            n = -1
        if n < 0:
            return _errors(400, "BAD_REQUEST", "the N must be a positive int type")
        last = request.query.get("last", "")
        start = 0
        if last:
            if last not in names:
                return _errors(
                    400, "BAD_REQUEST", f"the last: {last} should be a valid repository name."
                )
            start = names.index(last) + 1
        page = names[start : start + n]
        resp = web.json_response({"repositories": page})
        if page and page[-1] != names[-1]:
            query = urlencode({"n": n, "last": page[-1]})
            resp.headers["Link"] = f'</v2/_catalog?{query}>; rel="next"'
        return resp

    def _check_quota(
        self, request: web.BaseRequest, name: str, kind: str, rest: str
    ) -> tuple[web.StreamResponse | None, int]:
        """Refuse an upload's last request (or a mount) that would overflow the project;
        otherwise reserve its size until the registry answered, as Harbor does, so uploads
        in flight together cannot all squeeze under the limit."""
        if kind != "blobs":
            return None, 0
        if request.method == "PUT" and "digest" in request.query:
            digest = request.query["digest"]
            session = self._uploads.get(rest.rsplit("/", 1)[-1])
            size = (session.received if session else 0) + (request.content_length or 0)
        elif request.method == "POST" and "mount" in request.query:
            digest = request.query["mount"]
            size = self._sizes.get(digest, 0)
        else:
            return None, 0
        with self._lock:
            project = self.projects[name.split("/")[0]]
            if project.storage_limit < 0 or digest in project.blobs:
                return None, 0
            current = project.used + project.reserved
            if current + size <= project.storage_limit:
                project.reserved += size
                return None, size
        message = (
            f"adding {human(size)} of storage resource, which when updated to current usage "
            f"of {human(current)} will exceed the configured upper limit of "
            f"{human(project.storage_limit)}."
        )
        if self.quota_wording == "quota":
            message = "Quota exceeded when processing the request of " + message
        code = "DENIED" if self.quota_status == 403 else "PRECONDITION"
        return _errors(self.quota_status, code, message), 0

    def _referrers_index(
        self, name: str, digest: str, request: web.BaseRequest
    ) -> web.StreamResponse:
        wanted = request.query.get("artifactType")
        items = [
            d
            for d in self._referrers.get((name, digest), [])
            if wanted is None or d.get("artifactType") == wanted
        ]
        body = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": items,
        }
        headers = {"OCI-Filters-Applied": "artifactType"} if wanted else {}
        return web.Response(
            body=json.dumps(body).encode(),
            headers=headers,
            content_type="application/vnd.oci.image.index.v1+json",
        )

    def _record(self, request: web.BaseRequest, status: int, user: str | None) -> None:
        with self._lock:
            self.records.append(Record(request.method, request.raw_path, status, user))

    async def _forward(
        self, request: web.BaseRequest, name: str, kind: str, rest: str, user: str | None
    ) -> web.StreamResponse:
        assert self._session is not None
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in request.headers.items():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "authorization":
                headers.add(key, value)
        headers["Host"] = self.host
        headers["X-Forwarded-Proto"] = self.scheme
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        received = 0
        manifest_body = b""
        is_manifest_put = kind == "manifests" and request.method == "PUT"

        async def body() -> Any:
            nonlocal received, manifest_body
            async for chunk in request.content.iter_any():
                received += len(chunk)
                if is_manifest_put:
                    manifest_body += chunk
                yield chunk

        has_body = request.can_read_body
        url = URL(self.upstream.url + request.raw_path, encoded=True)
        async with self._session.request(
            request.method,
            url,
            headers=headers,
            data=body() if has_body else None,
            allow_redirects=False,
        ) as upstream:
            self._account(request, name, kind, rest, upstream, received, manifest_body)
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            # recorded before the client can have the answer: a test reading `records` right
            # after its client finished must find it (a streamed answer is sent from here)
            self._record(request, upstream.status, user)
            request[_RECORDED] = True
            for key, value in upstream.headers.items():
                lower = key.lower()
                if lower in _HOP_BY_HOP or lower in ("date", "server"):
                    continue
                if lower == "location":
                    value = self._rewrite_location(value)
                resp.headers.add(key, value)
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            await resp.write_eof()
            return resp

    def _rewrite_location(self, location: str) -> str:
        parts = urlsplit(location)
        if parts.netloc in (self.upstream.host, self.host):
            return urlunsplit((self.scheme, self.host, parts.path, parts.query, parts.fragment))
        return location

    def _account(
        self,
        request: web.BaseRequest,
        name: str,
        kind: str,
        rest: str,
        upstream: aiohttp.ClientResponse,
        received: int,
        manifest_body: bytes,
    ) -> None:
        """Track upload sessions, quota usage and referrers from what the registry accepted."""
        project = self.projects.get(name.split("/")[0])
        if project is None:
            return
        status = upstream.status
        with self._lock:
            if kind == "blobs" and request.method == "POST" and status == 202:
                session_id = upstream.headers.get("Docker-Upload-UUID", "")
                self._uploads[session_id] = _Upload(project.name)
            elif kind == "blobs" and request.method == "PATCH" and status == 202:
                session = self._uploads.get(rest.rsplit("/", 1)[-1])
                if session is not None:
                    session.received += received
            elif kind == "blobs" and request.method == "PUT" and status == 201:
                session_id = rest.rsplit("/", 1)[-1]
                session = self._uploads.pop(session_id, None)
                size = (session.received if session else 0) + received
                digest = request.query.get("digest", "")
                self._sizes.setdefault(digest, size)
                if digest not in project.blobs:
                    project.blobs.add(digest)
                    project.used += size
            elif kind == "blobs" and request.method == "POST" and status == 201:
                digest = request.query.get("mount", "")
                if digest and digest not in project.blobs:
                    project.blobs.add(digest)
                    project.used += self._sizes.get(digest, 0)
            elif is_put_manifest(kind, request.method, status):
                self._index_referrer(name, rest.lstrip("/"), manifest_body, upstream, request)

    def _index_referrer(
        self,
        name: str,
        reference: str,
        raw: bytes,
        upstream: aiohttp.ClientResponse,
        request: web.BaseRequest,
    ) -> None:
        """Harbor attaches a manifest to another when its `subject` names it, or when it is a
        cosign signature tagged `sha256-<hex>.sig`."""
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        digest = upstream.headers.get("Docker-Content-Digest", "")
        descriptor: dict[str, Any] = {
            "mediaType": doc.get("mediaType") or request.headers.get("Content-Type", ""),
            "digest": digest,
            "size": len(raw),
        }
        subject = doc.get("subject")
        cosign = _COSIGN_SIG.match(reference)
        if isinstance(subject, dict) and "digest" in subject:
            target = str(subject["digest"])
            kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType") or ""
            harbor_type = _accessory_type(kind)
        elif cosign is not None:
            target = f"sha256:{cosign['hex']}"
            kind = "application/vnd.dev.cosign.artifact.sig.v1+json"
            harbor_type = "signature.cosign"
        else:
            return
        if kind:
            descriptor["artifactType"] = kind
        if doc.get("annotations"):
            descriptor["annotations"] = doc["annotations"]
        self._accessory_types[digest] = harbor_type
        listed = self._referrers.setdefault((name, target), [])
        if all(d["digest"] != digest for d in listed):
            listed.append(descriptor)


_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


def is_put_manifest(kind: str, method: str, status: int) -> bool:
    return kind == "manifests" and method == "PUT" and status == 201


def _accessory_type(artifact_type: str) -> str:
    """Harbor's accessory types (src/pkg/accessory/model)."""
    if artifact_type == "application/vnd.cncf.notary.signature":
        return "signature.notation"
    if artifact_type.startswith("application/vnd.dev.cosign"):
        return "signature.cosign"
    if "sbom" in artifact_type:
        return "harbor.sbom"
    return "subject.accessory"


def _accessory(
    ident: int, repo: str, subject: str, digest: str, size: int, kind: str
) -> dict[str, Any]:
    return {
        "id": ident,
        "artifact_id": 1000 + ident,
        "subject_artifact_id": 1,
        "subject_artifact_digest": subject,
        "subject_artifact_repo": repo,
        "size": size,
        "digest": digest,
        "type": kind,
        "icon": "",
        "creation_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
    }


def _errors(status: int, code: str, message: str) -> web.Response:
    """The swagger `Errors` shape."""
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json")


def _unauthorized(challenge: str, message: str = "unauthorized") -> web.Response:
    resp = _errors(401, "UNAUTHORIZED", message)
    resp.headers["WWW-Authenticate"] = challenge
    return resp
