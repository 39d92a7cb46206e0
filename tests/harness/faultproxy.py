"""A fault-injecting HTTP reverse proxy to put between transship and a real registry.

The proxy is an aiohttp server running in a background thread with its own event loop, listening
on plain HTTP at `127.0.0.1:<free port>`. It forwards every request to one upstream (`http://` or
`https://` with a CA), streaming bodies in both directions (no blob is ever held in memory), and
injects faults chosen per request by `Fault` rules:

==========  ==============================================================================
kind        what the client sees
==========  ==============================================================================
reset       headers and part of the body, then a TCP RST (an answer without a body, e.g. to a
            HEAD: RST before the headers; request direction: the proxy reads part of the
            upload, then resets)
stall       nothing for `seconds` (bounded by `MAX_STALL`), then the normal answer
trickle     the body at `bytes_per_second` (for at most `max_seconds`, then full speed);
            request direction: the upload is read that slowly
truncate    fewer bytes than `Content-Length`, then a clean close (FIN) (no body: FIN before
            the headers; request direction: the proxy stops reading the upload and closes)
flip        one byte of the body XOR 0xFF at `at` (response direction: 2xx answers only,
            `Content-Length` and headers unchanged; request direction: the registry sees a
            wrong digest)
status      an immediate `status` answer (500/502/503, or 429 with optional `Retry-After`)
            with a registry-style JSON error; the upstream never sees the request
==========  ==============================================================================

Rules match by method (regex, full match) and path (regex searched in the raw request target,
query included). A rule fires on every matching request, on the first `count` ones, with
probability `rate`, or both (at most `count` times); `per_key=N` caps it at N times for any one
request key (defined below), so a client that retries always gets through. The first rule that
fires wins. Rate
decisions are reproducible: each one is drawn from `Random(f"{seed}:{rule}:{request key}:{n}")`
where the key is the method and path with upload UUIDs and `_state` removed and `n` counts earlier
requests with that key, so concurrency does not change which requests are hit.

`Host` is forwarded as the proxy's own address (with `X-Forwarded-Proto: http`), so registry
`Location` headers already point at the proxy; any `Location` naming the upstream is rewritten
too, so upload sessions always come back through the proxy.

`ignore_range=True` drops `Range` headers on the way up, so the registry answers 200 with the
whole body, as a server without range support would.

Every request is logged (`records`, with monotonic timestamps) and injected faults are counted
per kind (`injected`); `summary_table()` renders counts for a README.

    with FaultProxy.for_registry(reg, [Fault.flip(path=r"/blobs/sha256:", count=2)]) as proxy:
        run_client(proxy.ref("repo:tag"))
        assert proxy.injected["flip"] == 2
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import random
import re
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

FaultKind = Literal["reset", "stall", "trickle", "truncate", "flip", "status"]
Direction = Literal["auto", "request", "response"]

#: No stall lasts longer than this, whatever a rule asks for.
MAX_STALL = 30.0
#: A trickle never lasts longer than this; the rest of the body then goes at full speed.
MAX_TRICKLE = 30.0

_BODY_KINDS = frozenset({"reset", "trickle", "truncate", "flip"})
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_UPLOAD_UUID = re.compile(r"(/blobs/uploads/)[^/?]+")
_STATE_PARAM = re.compile(r"(?:(?<=\?)|&)_state=[^&]*&?")
_STATUS_CODES = {
    429: "TOOMANYREQUESTS",
    500: "UNKNOWN",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}

_LIVE: weakref.WeakSet[FaultProxy] = weakref.WeakSet()


@dataclass
class Fault:
    """One fault rule. Prefer the constructors: `Fault.reset(...)`, `Fault.http(503, ...)`, ..."""

    kind: FaultKind
    method: str | None = None  # regex, full match ("GET", "GET|HEAD"); None: any method
    path: str = ""  # regex searched in the raw request target (path + query)
    rate: float | None = None  # probability per matching request (seeded)
    count: int | None = None  # fire at most this many times (the first matching requests)
    per_key: int | None = None  # fire at most this many times for any one request key
    status: int = 503  # for kind "status"
    retry_after: str | None = None  # `Retry-After` value for kind "status"
    seconds: float = 1.0  # for "stall" (capped at MAX_STALL)
    bytes_per_second: int = 32 * 1024  # for "trickle"
    max_seconds: float = 10.0  # for "trickle" (capped at MAX_TRICKLE)
    at: float = 0.5  # where in the body reset / truncate / flip happen (fraction of its length)
    direction: Direction = "auto"  # auto: the request body if there is one, else the response
    name: str = ""  # free text, shown in records

    matched: int = field(default=0, init=False)  # matching requests seen
    fired: int = field(default=0, init=False)  # faults actually injected
    fired_by_key: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("reset", "stall", "trickle", "truncate", "flip", "status"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate is a probability in [0, 1]")
        if not 0.0 <= self.at <= 1.0:
            raise ValueError("at is a fraction of the body in [0, 1]")
        self._method_re = re.compile(self.method) if self.method else None
        self._path_re = re.compile(self.path) if self.path else None

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def reset(cls, path: str = "", method: str | None = "GET", **kw: Any) -> Fault:
        return cls("reset", method, path, **kw)

    @classmethod
    def stall(cls, seconds: float, path: str = "", method: str | None = "GET", **kw: Any) -> Fault:
        return cls("stall", method, path, seconds=seconds, **kw)

    @classmethod
    def trickle(
        cls, bytes_per_second: int, path: str = "", method: str | None = "GET", **kw: Any
    ) -> Fault:
        return cls(
            "trickle",
            method,
            path,
            bytes_per_second=bytes_per_second,
            **kw,
        )

    @classmethod
    def truncate(cls, path: str = "", method: str | None = "GET", **kw: Any) -> Fault:
        return cls("truncate", method, path, **kw)

    @classmethod
    def flip(cls, path: str = "", method: str | None = "GET", **kw: Any) -> Fault:
        return cls("flip", method, path, **kw)

    @classmethod
    def http(cls, status: int, path: str = "", method: str | None = None, **kw: Any) -> Fault:
        """An immediate error answer (500, 502, 503, ...)."""
        return cls("status", method, path, status=status, **kw)

    @classmethod
    def throttle(
        cls,
        path: str = "",
        method: str | None = None,
        retry_after: float | str | None = None,
        **kw: Any,
    ) -> Fault:
        """429 Too Many Requests, with `Retry-After` when given."""
        value = None if retry_after is None else _retry_after_text(retry_after)
        return cls("status", method, path, status=429, retry_after=value, **kw)

    # -- matching -----------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The kind used for counting: `reset`, ..., `http-503`, `http-429+retry-after`."""
        if self.kind != "status":
            return self.kind
        return f"http-{self.status}" + ("+retry-after" if self.retry_after is not None else "")

    def matches(self, method: str, target: str) -> bool:
        if self._method_re is not None and not self._method_re.fullmatch(method):
            return False
        return self._path_re is None or self._path_re.search(target) is not None


def _retry_after_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass
class ProxyRecord:
    """One request as the proxy saw it. Times are `time.monotonic()` seconds."""

    seq: int
    method: str
    target: str  # raw path + query as the client sent it
    started: float
    finished: float | None = None  # answer complete, or connection cut
    status: int | None = None  # status sent to the client (None: cut before any headers)
    upstream_status: int | None = None  # None: the upstream never answered / was not asked
    fault: str | None = None  # label of the injected fault, if any
    rule: str | None = None  # the rule's name (or its index) if a fault was injected
    bytes_in: int = 0  # request body bytes read from the client
    bytes_out: int = 0  # response body bytes written to the client
    error: str | None = None  # upstream or client connection trouble (not injected)
    range: str | None = None  # the request's `Range` header, as the client sent it

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class _RegistryLike(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def ca_pem_path(self) -> Path | None: ...


class _Cut(Exception):
    """The connection was cut on purpose; the handler returns without answering."""


class FaultProxy:
    """Reverse proxy with fault rules; `start()`/`stop()` or use it as a context manager.

    It stops by itself after `max_lifetime` seconds (and at interpreter exit), so a forgotten
    proxy never outlives a test session. Rules may be changed while it runs (`add`, `clear`,
    `faults`); counters are thread-safe.
    """

    def __init__(
        self,
        upstream: str,
        faults: Iterable[Fault] = (),
        *,
        ca: Path | str | None = None,
        seed: int = 0,
        max_lifetime: float = 600.0,
        name: str = "faultproxy",
        ignore_range: bool = False,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream must be http(s)://host:port, not {upstream!r}")
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.upstream_netloc = parts.netloc
        self.ca = Path(ca) if ca is not None else None
        self.seed = seed
        self.max_lifetime = max_lifetime
        self.name = name
        #: drop `Range` from requests, so the upstream answers 200 with the whole body (a
        #: server or cache that does not do ranges)
        self.ignore_range = ignore_range
        self.rules: list[Fault] = list(faults)
        self.records: list[ProxyRecord] = []
        self.injected: Counter[str] = Counter()
        self._occurrences: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._error: BaseException | None = None

    @classmethod
    def for_registry(
        cls, registry: _RegistryLike, faults: Iterable[Fault] = (), **kw: Any
    ) -> FaultProxy:
        """A proxy in front of a harness `RegistryProcess` (trusting its CA)."""
        return cls(registry.url, faults, ca=registry.ca_pem_path, **kw)

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("fault proxy not started")
        return self._port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of references through the proxy."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo_and_tag: str) -> str:
        return f"{self.host}/{repo_and_tag}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> FaultProxy:
        if self.running:
            return self
        ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name=f"{self.name}-loop"
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"{self.name} did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed to start: {self._error!r}") from self._error
        _LIVE.add(self)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: stalls end at once, open connections are closed."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(timeout)
        self._thread = None
        _LIVE.discard(self)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.host if self._port else "stopped"
        return f"FaultProxy({where} -> {self.upstream}, {len(self.rules)} rules)"

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
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        ssl_ctx: ssl.SSLContext | bool = False
        if self.upstream.startswith("https://"):
            ssl_ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=ssl_ctx),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=60),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._port = int(runner.addresses[0][1])
            ready.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.max_lifetime)
            self._stopping.set()
        finally:
            await runner.cleanup()
            await self._session.close()

    # -- rules and bookkeeping ----------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every rule (counters and records are kept)."""
        with self._lock:
            self.rules.clear()

    @contextlib.contextmanager
    def faults(self, *faults: Fault) -> Iterator[list[Fault]]:
        """Add rules for the duration of a `with` block."""
        with self._lock:
            self.rules.extend(faults)
        try:
            yield list(faults)
        finally:
            with self._lock:
                self.rules = [r for r in self.rules if all(r is not f for f in faults)]

    def reset_stats(self) -> None:
        """Forget records, counters and rule counts (rules stay)."""
        with self._lock:
            self.records.clear()
            self.injected.clear()
            self._occurrences.clear()
            for rule in self.rules:
                rule.matched = rule.fired = 0
                rule.fired_by_key.clear()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.records)

    @property
    def injected_total(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def log(
        self, method: str | None = None, path_re: str | None = None, *, fault: str | None = None
    ) -> list[ProxyRecord]:
        """Records filtered by method, a regex searched in the target and a fault label."""
        rx = re.compile(path_re) if path_re else None
        with self._lock:
            records = list(self.records)
        return [
            r
            for r in records
            if (method is None or r.method == method)
            and (rx is None or rx.search(r.target))
            and (fault is None or r.fault == fault)
        ]

    def retry_gaps(
        self, fault: str, *, method: str | None = None, key: str = "path"
    ) -> list[float]:
        """For each request answered with `fault`, seconds until the next request for the same
        resource started (key `path`: same method and path; `target`: same method, path and
        query; `digest`: same method and `digest=` parameter, for uploads that restart under a
        new session URL)."""
        with self._lock:
            records = sorted(self.records, key=lambda r: r.started)
        gaps = []
        for i, rec in enumerate(records):
            if rec.fault != fault or rec.finished is None:
                continue
            if method is not None and rec.method != method:
                continue
            ident = _retry_key(rec, key)
            for later in records[i + 1 :]:
                if later.started >= rec.finished and _retry_key(later, key) == ident:
                    gaps.append(later.started - rec.finished)
                    break
        return gaps

    def summary(self) -> dict[str, int]:
        """`{"requests": N, "<fault label>": n, ...}`."""
        with self._lock:
            return {"requests": len(self.records), **dict(sorted(self.injected.items()))}

    def summary_table(self) -> str:
        """A Markdown table of requests and injected faults per kind (for the README)."""
        counts = self.summary()
        lines = ["| fault | injected |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in counts.items() if k != "requests"]
        lines.append(f"| **total** | **{sum(v for k, v in counts.items() if k != 'requests')}** |")
        lines.append(f"| requests proxied | {counts['requests']} |")
        return "\n".join(lines)

    def _record(self, method: str, target: str) -> ProxyRecord:
        with self._lock:
            rec = ProxyRecord(len(self.records), method, target, time.monotonic())
            self.records.append(rec)
        return rec

    def _pick(self, method: str, target: str, has_request_body: bool) -> tuple[int, Fault] | None:
        key = f"{method} {_normalize(target)}"
        with self._lock:
            occurrence = self._occurrences[key]
            self._occurrences[key] += 1
            for index, rule in enumerate(self.rules):
                if not rule.matches(method, target):
                    continue
                if rule.kind in _BODY_KINDS and not _has_body_for(rule, method, has_request_body):
                    continue  # e.g. a flip on a HEAD: nothing to apply it to
                rule.matched += 1
                if rule.count is not None and rule.fired >= rule.count:
                    continue
                if rule.per_key is not None and rule.fired_by_key[key] >= rule.per_key:
                    continue
                if rule.rate is not None:
                    draw = random.Random(f"{self.seed}:{index}:{key}:{occurrence}").random()
                    if draw >= rule.rate:
                        continue
                rule.fired += 1  # reserved; refunded if it turns out not to apply
                rule.fired_by_key[key] += 1
                return index, rule
        return None

    def _injected(self, rec: ProxyRecord, index: int, rule: Fault) -> None:
        with self._lock:
            rec.fault = rule.label
            rec.rule = rule.name or str(index)
            self.injected[rule.label] += 1

    def _refund(self, rule: Fault, rec: ProxyRecord) -> None:
        with self._lock:
            rule.fired -= 1
            rule.fired_by_key[f"{rec.method} {_normalize(rec.target)}"] -= 1

    # -- request handling ---------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        rec = self._record(request.method, target)
        rec.range = request.headers.get("Range")
        has_body = _request_has_body(request)
        picked = self._pick(request.method, target, has_body)
        try:
            if picked is not None:
                index, rule = picked
                if rule.kind == "stall":
                    self._injected(rec, index, rule)
                    await self._sleep(min(rule.seconds, MAX_STALL))
                elif rule.kind == "status":
                    self._injected(rec, index, rule)
                    rec.bytes_in = await _drain(request)
                    return self._error_response(rec, rule)
            return await self._forward(request, rec, picked, has_body)
        except _Cut:
            return web.Response()  # the transport is gone: aiohttp just drops this
        except Exception as exc:
            rec.error = f"proxy: {type(exc).__name__}: {exc}"
            raise
        finally:
            rec.finished = time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _error_response(self, rec: ProxyRecord, rule: Fault) -> web.Response:
        code = _STATUS_CODES.get(rule.status, "UNKNOWN")
        body = json.dumps(
            {"errors": [{"code": code, "message": f"injected by {self.name}", "detail": None}]}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if rule.retry_after is not None:
            headers["Retry-After"] = rule.retry_after
        rec.status = rule.status
        rec.bytes_out = len(body)
        return web.Response(status=rule.status, body=body, headers=headers)

    def _upstream_headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            if name.lower() in _HOP_BY_HOP or name.lower() == "host":
                continue
            if self.ignore_range and name.lower() in ("range", "if-range"):
                continue
            headers.add(name, value)
        headers["Host"] = self.host
        headers["X-Forwarded-Proto"] = "http"
        return headers

    def _client_headers(self, upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in ("content-length", "date", "server"):
                continue
            if lower == "location":
                value = self._rewrite_location(value)
            headers.add(name, value)
        return headers

    def _rewrite_location(self, location: str) -> str:
        parts = urlsplit(location)
        if parts.netloc in (self.upstream_netloc, self.host):
            return urlunsplit(("http", self.host, parts.path, parts.query, parts.fragment))
        return location

    async def _forward(
        self,
        request: web.BaseRequest,
        rec: ProxyRecord,
        picked: tuple[int, Fault] | None,
        has_body: bool,
    ) -> web.StreamResponse:
        assert self._session is not None
        body_rule = picked if picked is not None and picked[1].kind in _BODY_KINDS else None
        request_rule = None
        if body_rule is not None and _direction(body_rule[1], has_body) == "request":
            request_rule, body_rule = body_rule, None
        cut = asyncio.Event()
        data = self._request_body(request, rec, request_rule, cut) if has_body else None
        url = URL(self.upstream + request.raw_path, encoded=True)
        call = asyncio.ensure_future(
            self._session.request(
                request.method,
                url,
                headers=self._upstream_headers(request),
                data=data,
                allow_redirects=False,
            )
        )
        cut_wait = asyncio.ensure_future(cut.wait())
        try:
            await asyncio.wait({call, cut_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut_wait.cancel()
        if cut.is_set():
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            assert request_rule is not None
            self._cut(request, reset=request_rule[1].kind == "reset")
            raise _Cut
        try:
            upstream = call.result()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            rec.error = f"upstream: {type(exc).__name__}: {exc}"
            if request.transport is None or request.transport.is_closing():
                raise _Cut from None  # the client went away mid-upload
            rec.status = 502
            return web.Response(status=502, text=f"{self.name}: upstream failed: {exc}\n")
        try:
            return await self._respond(request, rec, upstream, body_rule)
        finally:
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()  # a partly read body must not go back to the pool

    async def _respond(
        self,
        request: web.BaseRequest,
        rec: ProxyRecord,
        upstream: aiohttp.ClientResponse,
        picked: tuple[int, Fault] | None,
    ) -> web.StreamResponse:
        rec.upstream_status = upstream.status
        length = upstream.content_length
        empty = request.method == "HEAD" or upstream.status in (204, 304) or length == 0
        rule = picked[1] if picked is not None else None
        if picked is not None and rule is not None:
            if empty and rule.kind in ("reset", "truncate"):
                # nothing to cut in the middle of: drop the connection before any answer
                self._injected(rec, *picked)
                self._cut(request, reset=rule.kind == "reset")
                raise _Cut
            if empty or (rule.kind == "flip" and not 200 <= upstream.status < 300):
                self._refund(rule, rec)  # nothing to trickle; flips corrupt content, not errors
                picked = rule = None
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        resp.headers.extend(self._client_headers(upstream))
        if length is not None:
            resp.content_length = length
        rec.status = upstream.status
        try:
            await resp.prepare(request)
            if empty:
                await resp.write_eof()
                return resp
            if picked is not None and rule is not None:
                self._injected(rec, *picked)
            await self._stream_out(request, resp, rec, upstream, rule, length)
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionError) as exc:
            if rec.error is None:
                rec.error = f"client: {type(exc).__name__}"
            raise _Cut from None
        except (aiohttp.ClientPayloadError, TimeoutError) as exc:
            rec.error = f"upstream body: {type(exc).__name__}: {exc}"
            self._cut(request, reset=True)
            raise _Cut from None
        return resp

    async def _stream_out(
        self,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        rec: ProxyRecord,
        upstream: aiohttp.ClientResponse,
        rule: Fault | None,
        length: int | None,
    ) -> None:
        kind = rule.kind if rule is not None else None
        cut_at = flip_at = None
        pacer = _Pacer(rule) if rule is not None and kind == "trickle" else None
        sent = 0
        async for raw in upstream.content.iter_any():
            chunk = raw
            if sent == 0 and rule is not None:  # offsets: of the whole body, else of this chunk
                if kind in ("reset", "truncate"):
                    cut_at = _offset(rule.at, length or len(chunk), cut=True)
                elif kind == "flip":
                    flip_at = _offset(rule.at, length or len(chunk), cut=False)
            if flip_at is not None and sent <= flip_at < sent + len(chunk):
                chunk = _flipped(chunk, flip_at - sent)
            if cut_at is not None and sent + len(chunk) >= cut_at:
                await resp.write(chunk[: cut_at - sent])
                rec.bytes_out = cut_at
                assert rule is not None
                await asyncio.sleep(0.05)  # let the client read headers and the partial body
                self._cut(request, reset=rule.kind == "reset")
                raise _Cut
            if pacer is not None:
                async for piece in pacer.pace(chunk):
                    await resp.write(piece)
            else:
                await resp.write(chunk)
            sent += len(chunk)
            rec.bytes_out = sent
        if rule is not None and kind in ("reset", "truncate") and sent == 0:
            self._cut(request, reset=kind == "reset")  # no body arrived after all
            raise _Cut

    async def _request_body(
        self,
        request: web.BaseRequest,
        rec: ProxyRecord,
        picked: tuple[int, Fault] | None,
        cut: asyncio.Event,
    ) -> AsyncIterator[bytes]:
        """The client's body as it arrives, with a request-direction fault applied."""
        rule = picked[1] if picked is not None else None
        length = request.content_length
        cut_at = flip_at = None
        pacer = _Pacer(rule) if rule is not None and rule.kind == "trickle" else None
        if picked is not None:
            self._injected(rec, *picked)
        received = 0
        async for raw in request.content.iter_any():
            chunk = raw
            if received == 0 and rule is not None:
                if rule.kind in ("reset", "truncate"):
                    cut_at = _offset(rule.at, length or len(chunk), cut=True)
                elif rule.kind == "flip":
                    flip_at = _offset(rule.at, length or len(chunk), cut=False)
            if flip_at is not None and received <= flip_at < received + len(chunk):
                chunk = _flipped(chunk, flip_at - received)
            if cut_at is not None and received + len(chunk) >= cut_at:
                rec.bytes_in = cut_at
                if cut_at > received:
                    yield chunk[: cut_at - received]
                cut.set()
                await asyncio.Event().wait()  # parked until the upstream call is cancelled
            received += len(chunk)
            rec.bytes_in = received
            if pacer is not None:
                async for piece in pacer.pace(chunk):
                    yield piece
            else:
                yield chunk
        if rule is not None and rule.kind in ("reset", "truncate"):  # no body arrived after all
            cut.set()
            await asyncio.Event().wait()

    def _cut(self, request: web.BaseRequest, *, reset: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()


class _Pacer:
    """Splits chunks and sleeps so they leave at `bytes_per_second`, for a bounded time."""

    def __init__(self, rule: Fault) -> None:
        self.rate = max(1, rule.bytes_per_second)
        self.deadline = time.monotonic() + min(rule.max_seconds, MAX_TRICKLE)
        self.piece = max(1, self.rate // 20)  # ~20 writes per second

    async def pace(self, chunk: bytes) -> AsyncIterator[bytes]:
        view = memoryview(chunk)
        for start in range(0, len(view), self.piece):
            piece = bytes(view[start : start + self.piece])
            if time.monotonic() < self.deadline:
                await asyncio.sleep(len(piece) / self.rate)
            yield piece


def _normalize(target: str) -> str:
    """Request key for reproducible draws: no upload UUID, no `_state`."""
    out = _UPLOAD_UUID.sub(r"\1*", target)
    return _STATE_PARAM.sub("", out).rstrip("?&")


def _retry_key(rec: ProxyRecord, key: str) -> str:
    if key == "target":
        return f"{rec.method} {rec.target}"
    if key == "digest":
        match = re.search(r"[?&]digest=([^&]+)", rec.target)
        return f"{rec.method} {match.group(1) if match else rec.path}"
    return f"{rec.method} {rec.path}"


def _request_has_body(request: web.BaseRequest) -> bool:
    length = request.content_length
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def _direction(rule: Fault, has_request_body: bool) -> Literal["request", "response"]:
    if rule.direction == "auto":
        return "request" if has_request_body else "response"
    return rule.direction


def _has_body_for(rule: Fault, method: str, has_request_body: bool) -> bool:
    """Whether a body fault can apply at all (a HEAD has no body to trickle or flip)."""
    direction = _direction(rule, has_request_body)
    if direction == "request":
        return has_request_body
    if method == "HEAD":
        return rule.kind in ("reset", "truncate")  # these drop the connection instead
    return True


def _offset(at: float, length: int | None, *, cut: bool) -> int:
    """Byte offset for a fault at fraction `at` of a body of `length` bytes.

    Cuts leave at least one byte unsent (and send one when possible); flips hit a real byte.
    With no known length, `length` is the first chunk's.
    """
    if not length:
        return 0
    offset = int(length * at)
    if cut:
        return max(min(offset, length - 1), 1 if length > 1 else 0)
    return min(offset, length - 1)


def _flipped(chunk: bytes, index: int) -> bytes:
    data = bytearray(chunk)
    data[index] ^= 0xFF
    return bytes(data)


async def _drain(request: web.BaseRequest) -> int:
    """Read and discard the request body (an error answer after the upload arrived)."""
    total = 0
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        async for chunk in request.content.iter_any():
            total += len(chunk)
    return total


@atexit.register
def _stop_leftovers() -> None:
    for proxy in list(_LIVE):
        with contextlib.suppress(Exception):
            proxy.stop(timeout=2)
