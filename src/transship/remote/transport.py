"""The HTTP layer: connections, TLS, auth challenges, retries and redirects.

Only this module knows about 401 dances, `Retry-After` and redirects; the protocol layer above it
asks for a path with a set of scopes and gets a response or a typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from transship import __version__
from transship.errors import (
    AuthenticationError,
    IntegrityError,
    PermissionDeniedError,
    RegistryError,
    RetryableError,
    TLSError,
    TransshipError,
    UnreachableError,
)
from transship.remote.auth import (
    Challenge,
    Credentials,
    HelperFailedError,
    HelperMissingError,
    TokenCache,
    identity_token_refused,
    missing_credentials,
)
from transship.remote.health import HostHealth, NoAnswerError
from transship.remote.tls import CABundle, peer_certificate_summary, shared_ssl_context
from transship.retry import Attempts, RetryPolicy, parse_retry_after
from transship.streams import read_bounded_async

log = logging.getLogger("transship.remote")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"transship/{__version__}"
#: a push token also asks pull on this many of the repositories most mounted from so far
HUB_ORIGINS = 3
#: seconds the first contact with a host (`GET /v2/`, which every registry answers at once)
#: may wait for its answer once sent, and its connection attempt may take: silence this long is
#: a registry that accepts connections but does not answer, or a network path that drops them
#: (`health.NoAnswerError`, a strike towards "down"). Only the first contact: once a host has
#: answered, a slow answer (Harbor's catalog, a proxy cache fetching upstream) is slowness and
#: keeps `TransportOptions.read_timeout` and its retries
ANSWER_TIMEOUT = 10.0

Body = bytes | AsyncIterable[bytes] | None
#: (status, first bytes of the body) of a retryable answer -> the error if it is a refusal
Refusal = Callable[[int, bytes], TransshipError | None]
#: bytes of a retryable answer's body a `Refusal` reads (distribution's errors fit easily)
REFUSAL_BYTES = 16384


#: why an identity token only got anonymous tokens
NO_OAUTH2_ANONYMOUS = (
    "the service has no OAuth2 endpoint and the entry no password, so only anonymous "
    "access was granted"
)


@dataclass
class TransportOptions:
    """How to reach one registry; the `*_option` names go into hints in error messages."""

    ca: CABundle | None = None
    verify_tls: bool = True
    plain_http: bool = False
    credentials: Credentials | None = field(default=None, repr=False)
    #: where credentials come from when none were given (the Docker config): called once, the
    #: first time the registry asks for them (a 401), so a registry that never asks never
    #: runs a credential helper
    credential_lookup: Callable[[], Awaitable[Credentials | None]] | None = field(
        default=None, repr=False
    )
    max_connections: int = 16
    retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    #: a token answer is a few hundred bytes: a service silent this long is retried
    token_timeout: float = 30.0
    #: the first contact's wait for an answer and for a connection; None: `ANSWER_TIMEOUT`
    answer_timeout: float | None = None
    ca_option: str = "--ca"
    insecure_option: str = "--insecure"
    plain_http_option: str = "--plain-http"
    creds_option: str = "--creds"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff_base, self.backoff_max)


def is_loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Fetched:
    """A whole (bounded) answer, read inside the retried region of `Transport.fetch`."""

    status: int
    headers: Mapping[str, str]
    url: str
    body: bytes
    #: `Content-Length` when the registry sent one
    length: int | None

    def too_large(self, limit: int) -> bool:
        return len(self.body) > limit or (self.length is not None and self.length > limit)


class Transport:
    """One registry host: a connection pool, its auth state and the retry policy."""

    def __init__(self, host: str, options: TransportOptions) -> None:
        self.host = host
        self.options = options
        self.policy = options.retry_policy
        self._session: aiohttp.ClientSession | None = None
        self._base: str | None = None
        self._ping_lock = asyncio.Lock()
        self._challenge: Challenge | None = None
        self._tokens = TokenCache()
        #: pull scopes asked beside a push scope (mount origins) by token fetches, counted
        self._origins: Counter[str] = Counter()
        #: token keys once served by a token asked with more pull scopes than the key names,
        #: and that token (the service may grant fewer than asked): a request that sent it and
        #: met `insufficient_scope` asks again exactly, however many were in flight with it
        self._speculative: dict[str, str] = {}
        #: keys fetched exactly from now on (a speculative token fell short for them)
        self._exact: set[str] = set()
        #: hub pulls a service granted short, asked no more; and hubs off altogether once a
        #: service refused a whole request for them
        self._short: set[str] = set()
        self._hubs_off = False
        #: an identity token's service had no OAuth2 endpoint and the config no password, so
        #: its tokens are anonymous ones: a refusal is then said as one of the identity token
        self._identity_anonymous = False
        #: (realm, identity token) -> (message, hint) of the refusal of that token itself (its
        #: OAuth2 POST answered 400/401): every later token asked of that realm with it is
        #: refused alike, at once (a fresh error each time), rather than posted again per
        #: scope; a 403 (one scope denied) is said for its request only
        self._identity_refused: dict[tuple[str, str], tuple[str, str | None]] = {}
        #: token realms whose OAuth2 POST answered (so identity tokens are posted), and those
        #: without one (asked by GET from then on); the first POST to a realm goes alone
        self._oauth2: set[str] = set()
        self._no_oauth2: set[str] = set()
        self._oauth2_probe = asyncio.Lock()
        #: connection failures of this host; hooks marked "health:" below feed and consult it
        self.health = HostHealth(host)
        self._credentials = options.credentials
        self._lookup = None if options.credentials else options.credential_lookup
        #: the lookup under way or done, one task every request awaits (shielded): a request
        #: cancelled while it runs leaves it to the others, and never makes them anonymous
        self._lookup_task: asyncio.Task[None] | None = None
        #: the lookup found a credential helper missing: said if the registry then refuses us
        self._lookup_problem: HelperMissingError | None = None
        #: the lookup failed (a helper timed out or answered nonsense, an unreadable config):
        #: it is not run again, every later request fails with this at once
        self._lookup_failure: TransshipError | None = None

    def attempts(self) -> Attempts:
        """A fresh retry budget for one operation against this host. Its backoff is
        `HostHealth.pause`: it wakes and raises `HostDownError` once the host is found down."""
        return self.policy.attempts(sleep=self.health.pause)  # health: every backoff

    # -- connection -------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = shared_ssl_context(self.options.ca, verify=self.options.verify_tls)
            connector = aiohttp.TCPConnector(
                limit=self.options.max_connections, ssl=context, ttl_dns_cache=300
            )
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.options.connect_timeout,
                sock_read=self.options.read_timeout,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
            )
        return self._session

    def session(self) -> aiohttp.ClientSession:
        """The pooled session (same TLS trust), for a wing's calls to a registry's own API."""
        return self._client()

    async def close(self) -> None:
        task = self._lookup_task
        if task is not None and not task.done():  # nobody is left to want its answer
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._lookup_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def base_url(self) -> str:
        """`scheme://host`, learnt by pinging `/v2/` once (HTTPS unless told or on loopback)."""
        if self._base is not None:
            return self._base
        async with self._ping_lock:
            if self._base is None:
                await self._ping()
        assert self._base is not None
        return self._base

    async def _ping(self) -> None:
        schemes = ["http"] if self.options.plain_http else ["https"]
        if not self.options.plain_http and is_loopback(self.host):
            schemes.append("http")  # like Docker, loopback may speak plain HTTP
        last: Exception | None = None
        for scheme in schemes:
            base = f"{scheme}://{self.host}"
            try:
                status, headers = await self._ping_once(base)
            except TLSError as exc:
                if len(schemes) > 1 and scheme == "https" and "plain HTTP" in str(exc):
                    last = exc
                    continue
                raise
            if status == 404:
                raise RegistryError(
                    f"{self.host} is not an OCI registry (/v2/ answered 404)", status=404
                )
            if status == 401:
                header = headers.get("WWW-Authenticate", "")
                if header:
                    self._challenge = Challenge.parse(header)
            elif status >= 500:
                raise RetryableError(
                    f"{self.host}: /v2/ answered {status}", status=status, exhausted=True
                )
            self._base = base
            return
        assert last is not None
        raise last

    async def _ping_once(self, base: str) -> tuple[int, Mapping[str, str]]:
        attempts = self.attempts()
        while True:
            self.health.check()  # health: a host found down fails at once
            retry_after: float | None = None
            try:
                async with self._first_contact(f"{base}/v2/") as resp:
                    await resp.read()
                    self.health.answered()  # health: any answer
                    if resp.status not in RETRY_STATUSES or not attempts.left:
                        return resp.status, dict(resp.headers)
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except aiohttp.ClientConnectorCertificateError as exc:
                raise await self._tls_error(exc) from None
            except aiohttp.ClientSSLError as exc:
                error = self._ssl_error(base, exc)
                if "plain HTTP" in error.message:
                    raise error from None
                self.health.failed(exc)  # health: a handshake that fails is retried and counted
                if not attempts.left:
                    await self.health.settle()  # health: down, or this request's own error
                    raise error from None
            except aiohttp.ClientResponseError as exc:
                self.health.answered()  # health: it answered, if not in HTTP
                raise self._malformed(f"{base}/v2/", exc) from None
            except aiohttp.ServerDisconnectedError as exc:
                if base.startswith("https"):
                    raise TLSError(
                        f"{self.host} closed the TLS handshake; it may speak plain HTTP",
                        hint=f"use {self.options.insecure_option} if it really is plain HTTP",
                    ) from exc
                if not attempts.left:
                    raise UnreachableError(f"cannot reach {self.host}: {exc}") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                self.health.failed(exc)  # health: refused / DNS / no answer count, others not
                if not attempts.left:
                    await self.health.settle()  # health: down, or this request's own error
                    raise UnreachableError(
                        f"cannot reach registry {self.host}: {_describe(exc)}",
                        hint="check the host name, port and network path",
                    ) from None
            except aiohttp.ClientError as exc:  # anything else aiohttp raises: one line
                raise RegistryError(f"GET {self.host}/v2/: {_describe(exc)}") from None
            await attempts.pause(retry_after)  # health: backoff that wakes when the host is down

    @asynccontextmanager
    async def _first_contact(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url` with `ANSWER_TIMEOUT` for the connection and, from when the request is
        sent, for the answer (aiohttp's `sock_read`): a pool wait does not count, and silence
        becomes `NoAnswerError`, said at -v while the retries go on."""
        seconds = self.options.answer_timeout
        if seconds is None:
            seconds = ANSWER_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        try:
            async with self._client().get(url, allow_redirects=False, timeout=timeout) as resp:
                yield resp
        except aiohttp.ServerTimeoutError as exc:
            connecting = isinstance(exc, aiohttp.ConnectionTimeoutError)
            log.info(
                "GET %s: %s in %g s",
                url.split("://", 1)[-1],
                "no connection" if connecting else "no answer",
                seconds,
            )
            raise NoAnswerError(seconds, connecting=connecting) from None

    def _ssl_error(self, base: str, exc: Exception) -> TLSError:
        text = str(exc)
        if (
            "WRONG_VERSION_NUMBER" in text
            or "record layer failure" in text
            or "packet length" in text
        ):
            return TLSError(
                f"{self.host} speaks plain HTTP, not HTTPS",
                hint=f"use {self.options.insecure_option} to allow plain HTTP for it",
            )
        return TLSError(f"TLS handshake with {self.host} failed: {_describe(exc)}")

    async def _tls_error(self, exc: aiohttp.ClientConnectorCertificateError) -> TLSError:
        cert_error = exc.certificate_error
        code = getattr(cert_error, "verify_code", None)
        detail = getattr(cert_error, "verify_message", "") or str(cert_error)
        summary = await peer_certificate_summary(self.host)
        fix = (
            f"pass {self.options.ca_option} FILE|BASE64 with the CA that signed it, "
            f"or {self.options.insecure_option} to skip verification"
        )
        if code in (2, 18, 19, 20, 21, 27):
            issuer = f" issued by {summary.issuer!r}" if summary else ""
            return TLSError(
                f"{self.host} presents a certificate{issuer} from an unknown authority", hint=fix
            )
        if code in (62, 64):  # host name or IP address mismatch
            names = f" (it is valid for: {', '.join(summary.names)})" if summary else ""
            return TLSError(
                f"{self.host}: certificate hostname mismatch{names}",
                hint=f"use the name the certificate was issued for, or "
                f"{self.options.insecure_option}",
            )
        if code == 10:
            when = f" on {summary.not_after}" if summary else ""
            return TLSError(f"{self.host}: certificate expired{when}", hint="renew it")
        if code == 9:
            when = f" until {summary.not_before}" if summary else ""
            return TLSError(f"{self.host}: certificate is not valid yet{when}")
        return TLSError(f"{self.host}: certificate verification failed: {detail}", hint=fix)

    # -- auth -------------------------------------------------------------------------------

    @property
    def known_credentials(self) -> Credentials | None:
        """The credentials given, or found once the registry asked; never looks them up."""
        return self._credentials

    async def credentials(self) -> Credentials | None:
        """The credentials to answer this registry's challenge with, looked up (Docker config,
        credential helpers) the first time it has challenged us: a registry that needs no login
        never runs a helper. A helper that is not installed is anonymous access, said at once
        as a warning and again, with what to do, if the registry then refuses it. A lookup
        that fails (a helper that times out waiting on a prompt) runs once: every request
        after it fails with the same error at once, so a run of many images ends with it in
        one line instead of waiting on the helper again for each."""
        if self._lookup_failure is not None:
            raise self._lookup_failure.with_traceback(None)
        if self._challenge is None:
            return self._credentials
        if self._lookup is not None:  # the first request to need them starts the lookup
            lookup, self._lookup = self._lookup, None
            self._lookup_task = asyncio.create_task(self._look_up(lookup))
        if self._lookup_task is not None:
            await asyncio.shield(self._lookup_task)
        if self._lookup_failure is not None:
            raise self._lookup_failure.with_traceback(None)
        return self._credentials

    async def _look_up(self, lookup: Callable[[], Awaitable[Credentials | None]]) -> None:
        """Run the lookup once, keeping what it found or why it failed."""
        try:
            self._credentials = await lookup()
        except asyncio.CancelledError:  # closed under it: a request after asks again
            self._lookup = lookup
            raise
        except HelperMissingError as exc:
            self._lookup_problem = exc
            log.warning("%s asks for credentials: %s; going on without", self.host, exc)
        except HelperFailedError as exc:
            self._lookup_failure = AuthenticationError(
                f"{self.host} asks for credentials and {exc.message}",
                hint=exc.fix(self.options.creds_option),
            )
        except TransshipError as exc:  # an unreadable config: a usage error
            self._lookup_failure = exc

    def _missing(self, challenge: Challenge) -> AuthenticationError:
        """No credentials for a registry that wants them; a missing helper is the reason."""
        problem = self._lookup_problem
        if problem is None:
            return missing_credentials(self.host, challenge, self.options.creds_option)
        return AuthenticationError(
            f"{self.host} requires credentials and {problem.message}",
            hint=problem.fix(self.options.creds_option),
        )

    async def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        creds = await self.credentials()
        if challenge.scheme == "basic":
            if creds is None or not creds.username:
                raise self._missing(challenge)
            return creds.basic()
        if challenge.scheme == "bearer":
            key = " ".join(sorted(scopes))
            token = self._tokens.get(key)
            if token is None:
                async with self._tokens.lock(key):
                    token = self._tokens.get(key) or await self._token_for(challenge, scopes, key)
            return f"Bearer {token}"
        raise AuthenticationError(
            f"{self.host} asks for unsupported auth scheme {challenge.scheme!r}"
        )

    async def _token_for(self, challenge: Challenge, scopes: tuple[str, ...], key: str) -> str:
        """Fetch a token for `scopes`. A push token also asks pull on the repositories most
        mounted from so far (`HUB_ORIGINS`), and is kept under the keys of those mounts too:
        a copy mounts its shared base layers into every repository from the one they first
        landed in, so a Bearer registry (Harbor) then needs one token per repository instead
        of one per (repository, origin) pair. Only the keys with such extra scopes are
        speculative: the service grants each scope on its own, and may refuse those."""
        pushes = [s for s in scopes if s.endswith(":pull,push")]
        if len(pushes) != 1 or key in self._exact or self._hubs_off:
            token, lifetime = await self._fetch_token(challenge, scopes)
            self._tokens.put(key, token, lifetime)
            return token
        pushed = pushes[0].rsplit(":", 1)[0]  # "repository:NAME"
        origins = [s for s in scopes if s.startswith("repository:") and s.endswith(":pull")]
        ranked = self._origins.most_common(HUB_ORIGINS + len(scopes) + len(self._short))
        hubs = [
            origin
            for origin, _ in ranked
            if origin not in scopes
            and origin not in self._short
            and origin.rsplit(":", 1)[0] != pushed
        ][:HUB_ORIGINS]
        try:
            token, lifetime = await self._fetch_token(challenge, scopes + tuple(hubs))
        except AuthenticationError:
            if not hubs:
                raise
            # a service that refuses a whole request over one scope: ask as before, from now on
            self._hubs_off = True
            token, lifetime = await self._fetch_token(challenge, scopes)
            hubs = []
        self._origins.update(origins)  # counted once granted: a refused origin ranks nowhere
        self._tokens.put(key, token, lifetime)
        # the requests this token can also serve: the push alone (a transfer's own mount) and
        # the push with one pull (a mount from there); not a key a short grant had to refetch
        for pull in (None, *(s for s in scopes if s != pushes[0]), *hubs):
            also = " ".join(sorted((pushes[0],) if pull is None else (pushes[0], pull)))
            if also == key or also in self._exact:
                continue
            self._tokens.put(also, token, lifetime)
            if pull in hubs:
                self._speculative[also] = token
        return token

    async def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...]
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationError(f"{self.host}: bearer challenge without a realm")
        creds = await self.credentials()
        query: list[tuple[str, str]] = []
        if "service" in challenge.params:
            query.append(("service", challenge.params["service"]))
        query += [("scope", s) for s in scopes]
        identity = creds is not None and bool(creds.identity_token)
        refused = (
            self._identity_refused.get((realm, creds.identity_token))
            if creds is not None and creds.identity_token
            else None
        )
        if refused is not None:
            raise AuthenticationError(refused[0], hint=refused[1])
        sent_identity = False  # the token service's answer is to the identity token itself
        basic: str | None = None
        try:
            answer = None
            if creds is not None and identity:
                answer = await self._oauth2_post(realm, query, scopes, creds)
                sent_identity = answer is not None
                if answer is None:
                    # no OAuth2 endpoint (the token spec's GET is the one every service has):
                    # ask by GET, with Basic only if the config also had a password, as
                    # go-containerregistry does; the refresh token itself never goes there
                    basic = creds.basic() if creds.username and creds.password else None
                    self._identity_anonymous = basic is None
            elif creds is not None and creds.username:
                basic = creds.basic()
            status, body, retry_after = answer or await self._token_get(realm, query, basic)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise RetryableError(
                f"cannot reach the token service of {self.host} ({realm}): {_describe(exc)}"
            ) from None
        if creds is not None and sent_identity and status in (400, 401):  # OAuth2: 400
            error = identity_token_refused(self.host, creds, self.options.creds_option)
            refused = (error.message, error.hint)
            self._identity_refused[(realm, creds.identity_token or "")] = refused
            raise error
        if creds is not None and sent_identity and status == 403:  # these scopes, not the token
            raise permission_denied(self.host, scopes)
        if creds is not None and identity and basic is None and status in (401, 403):
            raise identity_token_refused(
                self.host, creds, self.options.creds_option, NO_OAUTH2_ANONYMOUS
            )
        if status in (401, 403):
            if creds is None:
                raise self._missing(challenge)
            given = creds.source == self.options.creds_option
            raise AuthenticationError(
                f"wrong username or password for {self.host}"
                + ("" if given else f" in {creds.source}")
                + f" (token service said {status})",
                hint=f"check {self.options.creds_option} or 'docker login {self.host}'",
            )
        if status >= 500 or status == 429:
            raise RetryableError(
                f"token service of {self.host} answered {status}",
                status=status,
                retry_after=retry_after,
            )
        if status != 200:
            raise AuthenticationError(f"token service of {self.host} answered {status}")
        try:
            doc: dict[str, Any] = json.loads(body)
            token = str(doc.get("token") or doc["access_token"])
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError(f"token service of {self.host} gave no token") from None
        return token, float(doc.get("expires_in") or 60)

    def _token_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.options.token_timeout, connect=self.options.connect_timeout
        )

    async def _token_get(
        self, realm: str, query: list[tuple[str, str]], basic: str | None
    ) -> tuple[int, bytes, float | None]:
        """The token spec's `GET realm?service=&scope=`, with Basic credentials or none."""
        headers = {"Authorization": basic} if basic else {}
        async with self._client().get(
            realm, params=query, headers=headers, timeout=self._token_timeout()
        ) as resp:
            body = await resp.read()
            return resp.status, body, parse_retry_after(resp.headers.get("Retry-After"))

    async def _oauth2_post(
        self, realm: str, query: list[tuple[str, str]], scopes: tuple[str, ...], creds: Credentials
    ) -> tuple[int, bytes, float | None] | None:
        """The identity token's OAuth2 `POST`, or None when the service has none (404/405).
        Found out once per realm: the first POST goes alone, and every token after it is
        asked by GET at once rather than by a POST bound to fail first."""
        if realm in self._no_oauth2:
            return None
        if realm in self._oauth2:
            return await self._token_post(realm, query, scopes, creds)
        async with self._oauth2_probe:
            if realm in self._no_oauth2:
                return None
            answer = await self._token_post(realm, query, scopes, creds)
            if answer[0] in (404, 405):
                log.debug("token service of %s has no OAuth2 POST (%s): GET", self.host, answer[0])
                self._no_oauth2.add(realm)
                return None
            if answer[0] < 500 and answer[0] != 429:
                self._oauth2.add(realm)
            return answer

    async def _token_post(
        self, realm: str, query: list[tuple[str, str]], scopes: tuple[str, ...], creds: Credentials
    ) -> tuple[int, bytes, float | None]:
        """OAuth2 `POST realm` with the identity (refresh) token as `grant_type=refresh_token`."""
        form = dict(query[:1])
        form.update(
            grant_type="refresh_token",
            refresh_token=creds.identity_token,
            client_id="transship",
            scope=" ".join(scopes),
        )
        async with self._client().post(realm, data=form, timeout=self._token_timeout()) as resp:
            body = await resp.read()
            return resp.status, body, parse_retry_after(resp.headers.get("Retry-After"))

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: Body = None,
        follow_redirects: bool = False,
        refusal: Refusal | None = None,
    ) -> Exchange:
        """Send one request with auth, retries (if the body can be resent) and redirects.

        `path` is a path under the registry or an absolute URL (upload locations). Entering the
        returned context sends it and gives the response for any final status (the caller maps
        statuses to errors); leaving it releases the response. `refusal` reads a retryable
        answer's status and body (its first `REFUSAL_BYTES`) and returns the error to raise
        at once when the caller knows that answer is no transient failure.
        """
        return Exchange(
            self, method, path, scopes, headers, params, data, follow_redirects, refusal
        )

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...],
        limit: int,
        headers: Mapping[str, str] | None = None,
        check: Callable[[Fetched], None] | None = None,
        optional: bool = False,
    ) -> Fetched:
        """A whole answer of at most `limit` bytes (manifests, referrers, tag lists).

        The body is read inside the retried region: a body cut short, or one `check` refuses
        with IntegrityError (a manifest whose bytes do not match their digest), is fetched
        again under the same budget as a 503. A body over `limit` is returned as read
        (`too_large`), never retried; `check` runs only on 200 answers.

        `optional`: a question the registry may refuse (the catalog): its 401 is returned as
        the answer, with no new token or scheme tried and nothing learnt from its challenge,
        so a refusal costs this one request and leaves how the run authenticates unchanged
        (Harbor answers a non-admin's catalog with a Basic challenge even to a Bearer token).
        """
        attempts = self.attempts()
        while True:
            resp = await self._send_retried(
                method, path, scopes, headers, None, None, True, attempts, optional=optional
            )
            try:
                length = resp.content_length
                body = b""
                if length is None or length <= limit:
                    body = await read_bounded_async(resp.content.read, limit)
                    if length is not None and len(body) != length:
                        raise RetryableError(
                            f"{self._where(method, path)}: body cut short ({len(body)} of {length})"
                        )
                fetched = Fetched(resp.status, resp.headers, str(resp.url), body, length)
                if check is not None and resp.status == 200 and not fetched.too_large(limit):
                    check(fetched)
                return fetched
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                failure: TransshipError = RetryableError(
                    f"{self._where(method, path)}: answer interrupted ({_describe(exc)})"
                )
            except (RetryableError, IntegrityError) as exc:
                failure = exc
            finally:
                resp.release()
            if not attempts.left:
                if isinstance(failure, RetryableError):
                    failure.exhausted = True
                raise failure
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s, fetching again", self._where(method, path), failure)
            await attempts.pause()

    async def _send_retried(
        self,
        method: str,
        path: str,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: Body,
        follow_redirects: bool,
        attempts: Attempts,
        *,
        optional: bool = False,
        refusal: Refusal | None = None,
    ) -> aiohttp.ClientResponse:
        """The retried region: token fetch, send, 401 dance, retryable statuses.

        Returns a response with a final status for the caller to read and release. A streamed
        body (`data` not bytes) cannot be resent once sent: its failures are raised at once for
        the caller (the engine) to restart the stream; a token fetch that fails before it was
        sent is retried all the same.
        """
        base = await self.base_url()
        url = path if "://" in path else base + path
        resendable = data is None or isinstance(data, bytes)
        reauthed = False
        while True:
            self.health.check()  # health: a host found down fails at once
            hdrs = dict(headers or {})
            retry_after: float | None = None
            try:
                auth = await self._authorization(scopes)
            except RetryableError as exc:  # the token service: nothing was sent yet
                if not attempts.left:
                    exc.exhausted = True
                    raise
                log.debug("%s: %s, retrying", self._where(method, url), exc)
                await attempts.pause(exc.retry_after)
                continue
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = await self._send(method, url, hdrs, params, data, follow_redirects, auth)
            except aiohttp.ClientConnectorCertificateError as exc:
                raise await self._tls_error(exc) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                own = _our_error(exc)
                if own is not None:  # raised by our own body stream (e.g. a digest mismatch)
                    raise own from None
                self.health.failed(exc)  # health: refused / DNS / handshake count
                if not resendable or not attempts.left:
                    await self.health.settle()  # health: down, or this request's own error
                    raise RetryableError(
                        f"{self._where(method, url)}: {_describe(exc)}", exhausted=resendable
                    ) from None
                await attempts.pause()  # health: backoff (`Transport.attempts`)
                continue
            except aiohttp.ClientResponseError as exc:  # not HTTP: the same again, so no retry
                self.health.answered()  # health: it answered, if not in HTTP
                raise self._malformed(url, exc, method) from None
            except aiohttp.ClientError as exc:  # anything else aiohttp raises: one line
                raise RegistryError(f"{self._where(method, url)}: {_describe(exc)}") from None
            self.health.answered()  # health: any answer, 5xx and 429 included
            if resp.status == 401 and optional:
                return resp  # refused: the caller does without (see `fetch`)
            if resp.status == 401:
                header = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                await self._on_unauthorized(header, scopes, auth, reauthed)
                if not resendable:
                    raise RetryableError(
                        f"{self.host}: authorization expired mid-upload", status=401
                    )
                reauthed = True
                continue
            if resp.status in RETRY_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                body: bytes | None = None
                if refusal is not None:
                    body = await _read_some(resp, REFUSAL_BYTES)
                    refused = refusal(resp.status, body)
                    if refused is not None:  # the same answer on every try: not retried
                        resp.release()
                        raise refused
                if not resendable or not attempts.left:
                    text = _shown(body) if body is not None else await _error_text(resp)
                    resp.release()
                    raise RetryableError(
                        f"{self._where(method, url)} answered {resp.status}{text}",
                        status=resp.status,
                        retry_after=retry_after,
                        exhausted=resendable,
                    )
                resp.release()
                log.debug("%s: %s, retrying", self._where(method, url), resp.status)
                await attempts.pause(retry_after)  # health: backoff (`Transport.attempts`)
                continue
            return resp

    def _malformed(
        self, url: str, exc: aiohttp.ClientResponseError, method: str = "GET"
    ) -> TransshipError:
        """An answer aiohttp could not parse as HTTP, described by the parser's message only:
        the exception's repr carries the request's headers, Authorization included."""
        detail = _describe(exc)
        if "HTTP request to an HTTPS server" in str(exc.message):
            return TLSError(
                f"{self.host} speaks HTTPS, not plain HTTP",
                hint=f"drop {self.options.plain_http_option}, and pass "
                f"{self.options.ca_option} if its CA is not trusted",
            )
        return RegistryError(
            f"{self._where(method, url)}: malformed HTTP answer ({detail})",
            hint="is this port a registry? a proxy or load balancer in between may be broken",
        )

    def _where(self, method: str, url: str) -> str:
        """`GET host/v2/...` for messages: built only when one is written."""
        return f"{method} {self.host}{urlsplit(url).path}"

    async def _on_unauthorized(
        self, header: str, scopes: tuple[str, ...], sent: str | None, reauthed: bool
    ) -> None:
        """Learn the challenge and return if another try can help; otherwise raise why not."""
        challenge = Challenge.parse(header) if header else self._challenge
        if challenge is None:
            raise AuthenticationError(f"{self.host} answered 401 without a challenge")
        key = " ".join(sorted(scopes))
        if not (sent or "").startswith("Bearer ") or sent == f"Bearer {self._tokens.get(key)}":
            self._tokens.drop(key)  # not a fresher one a request in flight beside it fetched
        if sent is None:
            self._challenge = challenge  # first contact: now we know how to authenticate
            return
        creds = await self.credentials()
        if creds is None:
            raise self._missing(challenge)
        if sent.startswith("Bearer"):
            short = challenge.params.get("error") == "insufficient_scope"
            if short and sent == f"Bearer {self._speculative.get(key)}":
                # asked with a hub pull, granted less: this key is asked exactly from now on,
                # that hub no more (a request in flight with the same token comes here too)
                self._exact.add(key)
                self._short.update(s for s in scopes if s.endswith(":pull"))
                return
            if challenge.params.get("error") != "insufficient_scope" and not reauthed:
                self._challenge = challenge  # expired or revoked token: fetch a new one
                return
            if self._identity_anonymous:
                raise identity_token_refused(
                    self.host,
                    creds,
                    self.options.creds_option,
                    NO_OAUTH2_ANONYMOUS,
                )
            raise permission_denied(self.host, scopes)
        raise AuthenticationError(
            f"wrong username or password for {self.host}",
            hint=f"check {self.options.creds_option} or 'docker login {self.host}'",
        )

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: Mapping[str, str] | None,
        data: Body,
        follow_redirects: bool,
        auth: str | None,
    ) -> aiohttp.ClientResponse:
        session = self._client()
        origin = None  # parsed at the first redirect: most requests have none
        for _hop in range(6):
            resp = await session.request(
                method, url, headers=headers, params=params, data=data, allow_redirects=False
            )
            if not follow_redirects or resp.status not in REDIRECT_STATUSES:
                return resp
            if origin is None:
                origin = urlsplit(url)
            location = resp.headers.get("Location")
            resp.release()
            if not location:
                raise RegistryError(f"{self.host}: redirect without a Location", status=resp.status)
            target = urlsplit(urljoin(url, location))
            if origin.scheme == "https" and target.scheme != "https":
                raise RegistryError(
                    f"{self.host} redirected to plain HTTP ({target.hostname}); refusing to "
                    "download content over an unencrypted connection"
                )
            if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url, params = target.geturl(), None
        raise RegistryError(f"{self.host}: too many redirects")


class Exchange:
    """`Transport.request`'s context: a plain class, not `asynccontextmanager`, since every
    request of a run goes through it (no generator and wrapper per request)."""

    __slots__ = ("_args", "_refusal", "_resp", "_transport")

    def __init__(
        self,
        transport: Transport,
        method: str,
        path: str,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: Body,
        follow_redirects: bool,
        refusal: Refusal | None = None,
    ) -> None:
        self._transport = transport
        self._args = (method, path, scopes, headers, params, data, follow_redirects)
        self._refusal = refusal
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        transport = self._transport
        self._resp = await transport._send_retried(
            *self._args, transport.attempts(), refusal=self._refusal
        )
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.release()


def permission_denied(host: str, scopes: tuple[str, ...]) -> PermissionDeniedError:
    """A token without the rights asked for; a refused push names its repository (a fact
    vendor advisors read: Harbor answers a push into a missing project this way)."""
    error = PermissionDeniedError(f"{host}: the user has no permission for {', '.join(scopes)}")
    pushes = [s.split(":")[1] for s in scopes if s.endswith("push") and s.count(":") == 2]
    if pushes:
        error.refused_push = pushes[0]
    else:
        error.hint = "ask the registry admin for pull rights on that repository or project"
    return error


def _our_error(exc: BaseException) -> TransshipError | None:
    """aiohttp wraps exceptions raised inside a request body generator; find ours."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TransshipError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


async def _read_some(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of an error answer's body (to its end if shorter); b"" if cut."""
    try:
        return (await read_bounded_async(resp.content.read, limit))[:limit]
    except (aiohttp.ClientError, TimeoutError):
        return b""


def _shown(body: bytes) -> str:
    text = body[:2048].decode("utf-8", "replace").strip().replace("\n", " ")
    return f": {text[:200]}" if text else ""


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    return _shown(await _read_some(resp, 2048))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NoAnswerError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):  # its repr and str hold the request
        text = " ".join(str(exc.message).split())
        return f"{exc.status}, {text[:160]}" if text else f"status {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return exc.strerror or str(exc.os_error) or "connection failed"
    text = str(exc) or type(exc).__name__
    return text.split("\n")[0]
