"""Run the server: bind, TLS, access log, a ready signal for scripts, a clean stop on Ctrl-C.

This is the use case behind `transship serve`; it never prints. The caller gets a `Ready`
(address, URL, counts) through a callback once the socket listens, and access lines go to the
`transship.serve.access` logger in distribution's (Apache combined) format.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from transship.errors import UsageError, io_error
from transship.fsutil import write_atomic
from transship.serve.api import RegistryAPI
from transship.serve.archive import ServedArchive
from transship.serve.auth import Htpasswd
from transship.serve.blobs import BODY_SENT

access_log = logging.getLogger("transship.serve.access")

#: aiohttp's limit is 8 KiB; a longer request line must still get a spec error from us
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """`HOST:PORT`, `[V6]:PORT` or a bare `PORT` (on 127.0.0.1)."""
        value = text.strip()
        if value.isdigit():
            host, port = "127.0.0.1", value
        elif value.startswith("["):
            host, _, port = value[1:].partition("]:")
        else:
            host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UsageError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:5000")
        return cls(host, int(port))

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")


@dataclass(frozen=True)
class Ready:
    """What a script needs once the server listens."""

    address: str  # host:port, as clients write it in image references
    url: str
    repository: str  # address/prefix: what TKG_CUSTOM_IMAGE_REPOSITORY should be
    repositories: int
    tags: int


class AccessLogger(AbstractAccessLogger):
    """`127.0.0.1 - alice [30/Nov/2026:05:00:00 +0000] "GET /v2/ HTTP/1.1" 200 2 "-" "ua"`."""

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        user = request.get("user") or "-"
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        target = request.rel_url.raw_path_qs[:2048]
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        line = (
            f"{request.remote or '-'} - {_escaped(user)} [{when}] "
            f'"{_escaped(f"{request.method} {target} {version}")}" '
            f"{response.status} {body_bytes(request, response)} "
            f'"{_escaped(request.headers.get("Referer", "-"))}" '
            f'"{_escaped(request.headers.get("User-Agent", "-"))}"'
        )
        self.logger.info("%s", line)


def _escaped(text: str) -> str:
    """A client-sent field as Apache writes it in a quoted log field: `"` and `\\` escaped, every
    byte outside printable ASCII as `\\xHH` (of its UTF-8; a byte aiohttp kept undecoded, as a
    surrogateescape surrogate, as itself), so a User-Agent cannot end its field and forge the
    rest of the line, nor cut it in two with a character `splitlines` breaks at (NEL, U+2028)."""
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def body_bytes(request: BaseRequest, response: StreamResponse) -> int:
    """The body bytes sent, as the combined format's size field counts them (aiohttp's
    `body_length` counts the headers too, and none of a blob sent with `sendfile`)."""
    sent = request.get(BODY_SENT)
    if isinstance(sent, int):
        return sent
    if request.method == "HEAD" or not isinstance(response, web.Response):
        return 0
    body = response.body
    return len(body) if isinstance(body, bytes | bytearray) else 0


async def serve(
    archive: ServedArchive,
    listen: Listen,
    *,
    ssl_context: ssl.SSLContext | None,
    auth: Htpasswd | None,
    on_ready: Callable[[Ready], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop`), then close connections and return."""
    api = RegistryAPI(archive, auth)
    runner = web.AppRunner(
        api.application(),
        access_log_class=AccessLogger,
        access_log=access_log,
        handle_signals=False,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    try:
        sock = _bind(listen)
        site = web.SockSite(runner, sock, ssl_context=ssl_context, backlog=256)
        await site.start()
        port = sock.getsockname()[1]
        shown = _client_host(listen)
        address = f"{shown}:{port}"
        scheme = "https" if ssl_context else "http"
        prefix = f"/{archive.prefix}" if archive.prefix else ""
        # Ctrl-C is ours before anyone is told we are ready: a script that stops us at once
        # must get a clean stop, not Python's KeyboardInterrupt (exit 130).
        stopped = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        try:
            on_ready(
                Ready(
                    address=address,
                    url=f"{scheme}://{address}",
                    repository=f"{address}{prefix}",
                    repositories=len(archive.repositories),
                    tags=sum(len(r.tags) for r in archive.repositories.values()),
                )
            )
            await stopped.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()


def _bind(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--listen {listen.host}: cannot resolve ({exc})") from None
    sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(infos[0][4])
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _client_host(listen: Listen) -> str:
    """How clients write the address: the listen name (this machine's name when listening
    everywhere), IPv6 in brackets."""
    host = socket.gethostname() if listen.wildcard else listen.host
    return f"[{host}]" if ":" in host else host


def tls_names(listen: Listen, extra: list[str]) -> list[str]:
    """Names the server certificate must carry: the listen host (or this machine's name when
    listening everywhere), loopback names when reachable that way, and every `--san`; each
    once, lower-cased (names compare without case: `Reg.Lab` and `reg.lab` are one)."""
    names: list[str] = []
    if listen.wildcard:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(listen.host)
    if listen.loopback or listen.wildcard:
        names += ["localhost", "127.0.0.1"]
    names += extra
    seen: list[str] = []
    for name in names:
        if name and name.lower() not in seen:
            seen.append(name.lower())
    return seen


def write_ready_file(path: Path, ready: Ready, ca: Path | None) -> None:
    """JSON for scripts, written atomically: a reader never sees half of it."""
    doc = {
        "address": ready.address,
        "url": ready.url,
        "repository": ready.repository,
        "ca": str(ca) if ca else None,
        "pid": os.getpid(),
    }
    try:
        write_atomic(path, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise io_error(f"--ready-file {path}", exc) from None
