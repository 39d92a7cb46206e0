"""A small Docker/OCI bearer-token service (the `realm` of `WWW-Authenticate: Bearer`).

It runs in a background thread on 127.0.0.1. The registry never calls it: the client under
test does, after a 401 challenge. Tokens are RS256 JWTs whose header carries the signing
certificate as `x5c`; distribution verifies that chain against its `rootcertbundle` (our test
CA) and checks `iss`, `aud`, `exp`/`nbf` and the `access` claim.

Clock leeway: distribution 2.8 accepts a token until `exp + 60 s` and from `nbf - 60 s`
(`token.Leeway`). A token whose `exp` has just passed therefore still works at the registry
for up to a minute. `registry_lifetime` compensates for that (see `TokenServer`).
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

from .pki import ServerCert, SigningCert

#: Seconds of clock skew distribution 2.8 tolerates on `exp` and `nbf` (registry/auth/token).
DISTRIBUTION_LEEWAY = 60

DEFAULT_ISSUER = "transship-test-issuer"

#: (user or None for anonymous, resource type, resource name, requested actions) -> granted.
AccessPolicy = Callable[[str | None, str, str, frozenset[str]], Iterable[str]]


@dataclass(frozen=True)
class TokenRequest:
    """One request the service answered, recorded for assertions (e.g. token caching)."""

    method: str
    path: str
    service: str | None
    scopes: tuple[str, ...]
    user: str | None  # None: anonymous (or bad credentials)
    status: int
    access: tuple[dict[str, Any], ...]  # what the issued token grants ([] on error)


@dataclass(frozen=True)
class IssuedToken:
    """A token as returned to the client, with its decoded claims."""

    token: str
    expires_in: int
    issued_at: str
    claims: dict[str, Any]


def parse_scope(scope: str) -> tuple[str, str, frozenset[str]]:
    """Split `type:name:actions` ; the name itself may contain ':' (e.g. `host:port/repo`)."""
    rtype, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        raise ValueError(f"malformed scope {scope!r}")
    return rtype, name, frozenset(a for a in actions.split(",") if a)


def basic_header(username: str, password: str) -> str:
    """Authorization header value for HTTP Basic."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class TokenServer:
    """Bearer token service; `start()` it, `stop()` it, or use it as a context manager.

    Settings are plain attributes read on every request, so a test may change them while the
    server runs (use `override()` on shared servers so the change is undone):

    - `users`: username -> password accepted via Basic auth. A wrong password answers 401.
    - `anonymous`: whether requests without credentials get a token (pull-only by default).
    - `lifetime`: `expires_in` reported to the client and, by default, `exp - iat`.
    - `registry_lifetime`: if set, `exp` is chosen so distribution rejects the token this many
      seconds after issue, i.e. `exp = iat + registry_lifetime - DISTRIBUTION_LEEWAY`. Use it to
      test refresh without waiting a minute of leeway.
    - `policy`: decides granted actions; the default grants users every requested action of
      `user_actions` on repositories and anonymous callers `anonymous_actions`.
    - `catalog_users`: who is granted `registry:catalog:*` (`GET /v2/_catalog`), as a real
      token service grants it to the users its ACL allows (docker_auth's admins, Harbor's
      system admins); others get a token without it, which the registry answers with 401
      `insufficient_scope`. Default: the test user.
    - `tls`: a server certificate to serve HTTPS with (None: plain HTTP).
    - `hiccups`: what the next GET requests get instead of a token, first first: an int is a
      status answered at once (503), a float is a stall of that many seconds before the
      normal answer. Consumed one per request; recorded like any request.
    - `oauth2`: answer the OAuth2 `POST realm` of the distribution token spec (`oauth.md`):
      a form with `grant_type` (`refresh_token`: the `refresh_token` is looked up in
      `refresh_tokens`; `password`: `username`/`password` checked against `users`),
      `service`, `client_id` and `scope` (space-separated); the answer carries
      `access_token`, `scope`, `expires_in` and `issued_at`. A refresh token it does not
      know, or a wrong password, answers 401; a malformed form 400. Off (the default), every
      POST answers 404, which sends Docker-style clients to the GET.
    - `refresh_tokens`: refresh (identity) token -> the user it stands for (`oauth2` only).
    - `denied`: repository names an OAuth2 POST asking a scope on answers 403 `DENIED` (the
      caller is known, that access is not), as some services answer rather than granting
      less (`oauth2` only).
    """

    signer: SigningCert
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret-Pa55"})
    issuer: str = DEFAULT_ISSUER
    anonymous: bool = True
    lifetime: int = 300
    registry_lifetime: int | None = None
    user_actions: frozenset[str] = frozenset({"pull", "push", "delete", "*"})
    anonymous_actions: frozenset[str] = frozenset({"pull"})
    catalog_users: frozenset[str] = frozenset({"alice"})
    policy: AccessPolicy | None = None
    tls: ServerCert | None = None
    hiccups: list[int | float] = field(default_factory=list)
    oauth2: bool = False
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    denied: frozenset[str] = frozenset()

    requests: list[TokenRequest] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _httpd: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> TokenServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        ssl_ctx: ssl.SSLContext | None = None
        if self.tls is not None:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(self.tls.chain_path, self.tls.key_path)
        httpd = _Server(("127.0.0.1", 0), _Handler, self, ssl_ctx)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"token-server-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("token server not started")
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def realm(self) -> str:
        """The URL registries put in `auth.token.realm`."""
        return f"{self.url}/token"

    @property
    def root_cert_bundle(self) -> Path:
        """The PEM distribution verifies the token `x5c` chain against (the test CA)."""
        return self.signer.ca.cert_path

    # ---- bookkeeping -----------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def token_requests(self, *, status: int | None = 200) -> list[TokenRequest]:
        """Recorded requests, by default only those that issued a token."""
        with self._lock:
            return [r for r in self.requests if status is None or r.status == status]

    def reset(self) -> None:
        """Forget recorded requests (e.g. at the start of a caching test)."""
        with self._lock:
            self.requests.clear()

    @contextmanager
    def override(self, **settings: Any) -> Iterator[TokenServer]:
        """Temporarily change settings (`lifetime=2`, `anonymous=False`, ...) on a shared server."""
        for key in settings:
            if key.startswith("_") or key == "requests" or not hasattr(self, key):
                raise AttributeError(f"TokenServer has no setting {key!r}")
        old = {k: getattr(self, k) for k in settings}
        for key, value in settings.items():
            setattr(self, key, value)
        try:
            yield self
        finally:
            for key, value in old.items():
                setattr(self, key, value)

    # ---- token issuing ---------------------------------------------------------------------

    def grant(self, user: str | None, scopes: Iterable[str]) -> list[dict[str, Any]]:
        """The `access` claim for `user` asking for `scopes` (duplicates merged)."""
        merged: dict[tuple[str, str], set[str]] = {}
        for scope in scopes:
            for part in scope.split(" "):  # some clients join scopes with spaces
                if not part:
                    continue
                rtype, name, actions = parse_scope(part)
                if self.policy is not None:
                    allowed = frozenset(self.policy(user, rtype, name, actions))
                elif rtype == "registry":
                    catalog = name == "catalog" and user in self.catalog_users
                    allowed = actions & {"*"} if catalog else frozenset()
                else:
                    allowed = actions & (
                        self.user_actions if user is not None else self.anonymous_actions
                    )
                if allowed:
                    merged.setdefault((rtype, name), set()).update(allowed)
        return [
            {"type": rtype, "name": name, "actions": sorted(actions)}
            for (rtype, name), actions in merged.items()
        ]

    def issue(
        self, service: str, access: list[dict[str, Any]], subject: str | None = None
    ) -> IssuedToken:
        """Sign a token; also usable directly by tests (e.g. for a pull-only token)."""
        now = int(time.time())
        registry_lifetime = self.registry_lifetime
        if registry_lifetime is None:
            exp = now + self.lifetime
        else:
            exp = now + registry_lifetime - DISTRIBUTION_LEEWAY
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": service,  # distribution 2.8 wants a single string here
            "sub": subject or "",
            "exp": exp,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        headers = {"x5c": [base64.b64encode(self.signer.cert_der).decode("ascii")]}
        # The key object, not its PEM: parsing the PEM checks the RSA key every time (~50 ms,
        # ~300 ms on a busy machine), a cost no real token service pays per token.
        token = jwt.encode(claims, self.signer.key, algorithm="RS256", headers=headers)
        issued_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return IssuedToken(
            token=token, expires_in=self.lifetime, issued_at=issued_at, claims=claims
        )

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _next_hiccup(self) -> int | float | None:
        with self._lock:
            return self.hiccups.pop(0) if self.hiccups else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        owner: TokenServer,
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        self.owner = owner
        self.ssl_ctx = ssl_ctx
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the per-connection thread, so a stuck client
        # cannot block the accept loop.
        if self.ssl_ctx is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            tls_sock = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # e.g. the client rejected our certificate: nothing to serve
        try:
            super().finish_request(tls_sock, client_address)
        finally:
            tls_sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    #: headers and body go out in two writes; with Nagle the body waits for the client's
    #: delayed ACK (~40 ms per token on a kept-alive connection). Go servers set this too.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; requests are recorded on the TokenServer

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "\0invalid")
        return user, password

    def do_GET(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        services = query.get("service")
        service = services[0] if services else None
        scopes = tuple(query.get("scope", []))

        def record(status: int, user: str | None, access: list[dict[str, Any]]) -> None:
            owner._record(
                TokenRequest("GET", url.path, service, scopes, user, status, tuple(access))
            )

        if url.path != "/token":
            record(404, None, [])
            self._send_json(404, {"errors": [{"code": "NOT_FOUND"}]}, {})
            return
        hiccup = owner._next_hiccup()
        if isinstance(hiccup, int):
            record(hiccup, None, [])
            self._send_json(hiccup, {"errors": [{"code": "UNAVAILABLE"}]}, {})
            return
        if isinstance(hiccup, float):
            time.sleep(hiccup)  # this connection's own thread: other requests go on
        creds = self._credentials()
        user: str | None = None
        if creds is not None:
            if owner.users.get(creds[0]) != creds[1] or not creds[0]:
                record(401, None, [])
                self._send_json(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]},
                    {"WWW-Authenticate": 'Basic realm="transship-test-token"'},
                )
                return
            user = creds[0]
        elif not owner.anonymous:
            record(401, None, [])
            self._send_json(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": 'Basic realm="transship-test-token"'},
            )
            return
        try:
            access = owner.grant(user, scopes)
        except ValueError as exc:
            record(400, user, [])
            self._send_json(400, {"errors": [{"code": "INVALID_SCOPE", "message": str(exc)}]}, {})
            return
        issued = owner.issue(service or "", access, subject=user)
        record(200, user, access)
        self._send_json(
            200,
            {
                "token": issued.token,
                "access_token": issued.token,
                "expires_in": issued.expires_in,
                "issued_at": issued.issued_at,
            },
            {},
        )

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        if not owner.oauth2 or url.path != "/token":
            # no OAuth2 (POST) flow: answering 404 makes Docker-style clients fall back to GET
            owner._record(TokenRequest("POST", url.path, None, (), None, 404, ()))
            self._send_json(404, {"errors": [{"code": "UNSUPPORTED"}]}, {})
            return
        form = {k: v[0] for k, v in parse_qs(raw.decode(errors="replace")).items()}
        service = form.get("service")
        scopes = tuple(s for s in form.get("scope", "").split(" ") if s)
        grant = form.get("grant_type")

        def answer(status: int, user: str | None, code: str, message: str) -> None:
            owner._record(TokenRequest("POST", url.path, service, scopes, user, status, ()))
            self._send_json(status, {"errors": [{"code": code, "message": message}]}, {})

        if not service or not form.get("client_id") or grant not in ("refresh_token", "password"):
            answer(400, None, "INVALID_REQUEST", "service, client_id and grant_type required")
            return
        user: str | None
        if grant == "refresh_token":
            user = owner.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                answer(401, None, "UNAUTHORIZED", "invalid refresh token")
                return
        else:
            user = form.get("username") or ""
            if not user or owner.users.get(user) != form.get("password"):
                answer(401, None, "UNAUTHORIZED", "invalid credentials")
                return
        named = {parse_scope(p)[1] for s in scopes for p in s.split(" ") if p.count(":") >= 2}
        if named & owner.denied:
            answer(403, user, "DENIED", f"access to {sorted(named & owner.denied)} denied")
            return
        try:
            access = owner.grant(user, scopes)
        except ValueError as exc:
            answer(400, user, "INVALID_SCOPE", str(exc))
            return
        issued = owner.issue(service, access, subject=user)
        owner._record(TokenRequest("POST", url.path, service, scopes, user, 200, tuple(access)))
        self._send_json(
            200,
            {
                "access_token": issued.token,
                "scope": " ".join(scopes),
                "expires_in": issued.expires_in,
                "issued_at": issued.issued_at,
            },
            {},
        )
