"""Real `docker-registry` (CNCF distribution 2.8) processes on free 127.0.0.1 ports.

Why a clean environment: the binary reads every `REGISTRY_*` variable as a config override, and
unrelated ones (e.g. `REGISTRY_AUTH_FILE` set for skopeo/podman) make it refuse to start.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .pki import PKI, ServerCert
from .tokenserver import TokenServer

Mode = Literal["plain", "tls", "tls_basic", "tls_token"]
MODES: tuple[Mode, ...] = ("plain", "tls", "tls_basic", "tls_token")

USERNAME = "alice"
PASSWORD = "s3cret-Pa55"

_LIVE: weakref.WeakSet[RegistryProcess] = weakref.WeakSet()


def require_binary(name: str) -> str:
    """Path of a required tool; fails loudly (never skips) so CI notices a missing install."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"`{name}` is not installed; the registry tests need it "
            "(Debian: apt-get install docker-registry skopeo apache2-utils)"
        )
    return path


def free_port() -> int:
    """A port that was free a moment ago (the registry binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """`127.0.0.1:PORT` where connections are refused for as long as the block runs.

    The port stays bound without `listen()`: the kernel refuses connects to it, and no other
    process can take it meanwhile (a port from `free_port()` that nobody listens on may be
    bound by anyone a moment later).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


#: /proc/net/tcp states of a connection the server side still serves: ESTABLISHED, SYN_RECV
#: and CLOSE_WAIT (the client is gone, the server has not finished with it yet: a killed
#: client's connection sits there while the registry completes the PUT it had received).
_BUSY_STATES = frozenset({"01", "03", "08"})


def open_connections(port: int) -> list[str]:
    """Connections to a local `port` the server has not closed yet (IPv4 and IPv6 tables),
    as `STATE remote-address` lines, read from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state in _BUSY_STATES:
                found.append(f"{state} {remote}")
    return found


def clean_env(home: Path) -> dict[str, str]:
    """Only PATH and HOME: no REGISTRY_*, no SSL_CERT_FILE, no proxies."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def make_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """Write a bcrypt htpasswd file (distribution accepts only bcrypt entries)."""
    htpasswd = require_binary("htpasswd")
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            [htpasswd, "-Bbn", user, password],
            check=True,
            capture_output=True,
            text=True,
            env=clean_env(path.parent),
        ).stdout.strip()
        lines.append(out)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as distribution's access log (combined log format) reports it."""

    method: str
    path: str  # request-URI, including the query string
    status: int
    size: int
    user_agent: str


_ACCESS_RE = re.compile(
    r'^\S+ - \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) '
    r'(?P<size>\d+|-) "[^"]*" "(?P<ua>[^"]*)"'
)
#: `sync_log`'s own requests: left out of `access_log`, they are not what a client asked
_SYNC_PATH = "/v2/?sync="
_UPLOAD_DONE_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/[^/?]*\?(?:.*&)?digest=")
_MOUNT_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/\?(?:.*&)?mount=")


class RegistryProcess:
    """One `docker-registry serve CONFIG` process.

    Modes: `plain` (HTTP, no auth), `tls` (HTTPS, no auth), `tls_basic` (HTTPS + htpasswd user
    `alice` / `s3cret-Pa55`), `tls_token` (HTTPS + bearer tokens from `token_server`).
    Delete is enabled and layer `urls` matching `^https?://` are allowed.
    """

    def __init__(
        self,
        workdir: Path,
        mode: Mode = "plain",
        *,
        pki: PKI | None = None,
        token_server: TokenServer | None = None,
        cert: ServerCert | None = None,
        username: str = USERNAME,
        password: str = PASSWORD,
        service: str | None = None,
        extra_config: dict[str, Any] | None = None,
        log_level: str = "info",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown registry mode {mode!r}; use one of {MODES}")
        if mode != "plain" and pki is None:
            raise ValueError(f"mode {mode!r} needs a PKI")
        if mode == "tls_token" and token_server is None:
            raise ValueError("mode 'tls_token' needs a token server")
        self.workdir = workdir
        self.mode: Mode = mode
        self.pki = pki
        self.token_server = token_server if mode == "tls_token" else None
        self.cert: ServerCert | None = (cert or pki.server) if pki and mode != "plain" else None
        self.username: str | None = username if mode in ("tls_basic", "tls_token") else None
        self.password: str | None = password if mode in ("tls_basic", "tls_token") else None
        self.extra_config = extra_config or {}
        self.log_level = log_level
        self.port = 0
        self.service = service
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- addresses -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "http" if self.mode == "plain" else "https"

    @property
    def tls(self) -> bool:
        return self.mode != "plain"

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def ca_pem_path(self) -> Path | None:
        """PEM of the test CA clients should trust (None for plain HTTP).

        Always the PKI's main CA, even when the registry serves a bad certificate
        (`cert=pki.wrong_ca_server`), so trusting it is what a correctly configured user does.
        """
        return self.pki.ca.cert_path if self.pki is not None and self.tls else None

    @property
    def cert_dir(self) -> Path | None:
        """A directory holding only the test CA as `ca.crt` (containers/skopeo `--cert-dir`)."""
        return self.pki.ca.cert_dir if self.pki is not None and self.tls else None

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def ref(self, repo_and_tag: str) -> str:
        """`127.0.0.1:PORT/REPO[:TAG|@DIGEST]`."""
        return f"{self.host}/{repo_and_tag}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting exactly the test CA (ignores SSL_CERT_FILE)."""
        if self.ca_pem_path is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_pem_path))

    # ---- config & lifecycle ----------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The YAML config as a dict (written to `config_path` on start)."""
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {
                "level": self.log_level,
                "formatter": "text",
                "accesslog": {"disabled": False},
                "fields": {"service": "registry"},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": "transship-test-secret",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
        }
        if self.cert is not None:
            cfg["http"]["tls"] = {
                "certificate": str(self.cert.cert_path),
                "key": str(self.cert.key_path),
            }
        if self.mode == "tls_basic":
            assert self.username is not None and self.password is not None
            htpasswd = make_htpasswd(self.workdir / "htpasswd", {self.username: self.password})
            cfg["auth"] = {"htpasswd": {"realm": "transship-test", "path": str(htpasswd)}}
        elif self.mode == "tls_token":
            assert self.token_server is not None
            cfg["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.root_cert_bundle),
                }
            }
        return _deep_merge(cfg, self.extra_config)

    def start(self, timeout: float = 15.0, port: int | None = None) -> RegistryProcess:
        """Start the process and wait until `/v2/` answers; retries on a port race.

        `port` reuses a given port (e.g. to come back after an outage), else a free one.
        Starting a running registry is a no-op, so `with RegistryProcess(...).start()` is safe.
        """
        if self.running:
            return self
        binary = require_binary("docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        last_error = ""
        # a free port taken by someone else meanwhile: another free port; a given port (a
        # restart): the same one again for up to 10 s, until whoever holds it lets go
        retry_until = time.monotonic() + (10.0 if port else 0.0)
        attempt = 0
        while True:
            attempt += 1
            self.port = port or free_port()
            if self.service is None or self.service.startswith("transship-test-registry-"):
                self.service = f"transship-test-registry-{self.port}"
            self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            start_offset = self.log_offset()
            log = self.log_path.open("ab")
            try:
                self._proc = subprocess.Popen(
                    [binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=clean_env(home),
                    cwd=self.workdir,
                    start_new_session=True,
                )
            finally:
                log.close()
            _LIVE.add(self)
            if self._wait_ready(timeout, start_offset):
                return self
            last_error = self._log_since(start_offset)[-4000:]
            self._kill()
            if "address already in use" not in last_error:
                break
            if port:
                if time.monotonic() >= retry_until:
                    break
                time.sleep(0.2)
            elif attempt >= 3:
                break
        raise RuntimeError(
            f"docker-registry ({self.mode}) did not come up on {self.host}; log tail:\n{last_error}"
        )

    def _wait_ready(self, timeout: float, log_offset: int) -> bool:
        # Ready = our process logged that it listens on our port AND /v2/ answers; the log
        # check avoids mistaking another server that grabbed the port for ours.
        deadline = time.monotonic() + timeout
        listening = f"listening on {self.host}"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if listening not in self._log_since(log_offset):
                time.sleep(0.02)
                continue
            try:
                status, _ = self.probe(verify=False)
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
                continue
            if status in (200, 401):
                return True
            time.sleep(0.05)
        return False

    def probe(self, path: str = "/v2/", *, verify: bool = True) -> tuple[int, dict[str, str]]:
        """GET `path` without credentials: (status, headers with lower-case names).

        `verify=False` skips certificate checks (readiness of a registry with a bad cert).
        """
        conn: http.client.HTTPConnection
        if self.tls:
            ctx = self.ssl_context()
            if not verify or ctx is None:
                ctx = ssl._create_unverified_context()
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=5)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Terminate, then kill after 5 s."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        _LIVE.discard(self)

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        self._proc = None
        _LIVE.discard(self)

    def restart(self, same_port: bool = True) -> RegistryProcess:
        """Stop and start again with the same storage (content survives), by default on the
        same port so references stay valid."""
        port = self.port
        self.stop()
        return self.start(port=port if same_port else None)

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RegistryProcess(mode={self.mode!r}, url={self.url!r}, pid={self.pid})"

    # ---- log -------------------------------------------------------------------------------

    def read_log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_offset(self) -> int:
        """Current log size; pass it as `since=` to look only at later requests."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def settle_log(self, quiet: float = 0.5, timeout: float = 15.0) -> int:
        """Wait until the access log has not grown for `quiet` seconds; its size then.

        After a client is killed the registry may still finish requests whose bytes had
        reached it (a PUT completes after the client is gone): read the log after that.
        """
        deadline = time.monotonic() + timeout
        size, since = self.log_offset(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.log_offset()
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return size

    def wait_idle(self, quiet: float = 0.5, timeout: float = 30.0) -> int:
        """Wait until no client connection is open or half-closed on the registry's port, then
        until the log has settled; the log's size then.

        After a client is killed the registry still completes requests whose bytes had
        reached it, and writes their access lines after that; a quiet log alone can be a
        registry slowed down by a loaded machine, an open connection cannot.
        """
        deadline = time.monotonic() + timeout
        while busy := open_connections(self.port):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"registry {self.host} still serves {len(busy)} connection(s) after "
                    f"{timeout:.0f} s: {busy}"
                )
            time.sleep(0.05)
        return self.settle_log(quiet=quiet, timeout=max(deadline - time.monotonic(), quiet + 1))

    def sync_log(self, timeout: float = 15.0) -> int:
        """Send a request of our own and wait for its access line; the log's size then.

        A blob GET's line is written only once its body is in socket buffers, after what the
        client saw; an absence check reads the log after this line, so a late line cannot be
        missed (and the check pass falsely) because it had not been written yet.
        """
        marker = f"{_SYNC_PATH}{os.getpid()}-{time.monotonic_ns()}"
        self.probe(marker, verify=False)
        if not self.wait_for_log(re.escape(f"GET {marker} "), timeout=timeout):
            raise AssertionError(f"registry {self.host} did not log {marker} within {timeout} s")
        return self.log_offset()

    def access_log(self, since: int = 0) -> list[AccessLogEntry]:
        """Parsed access-log lines (one per finished request), optionally after `since`.

        Entries can lag the HTTP response by a few milliseconds; `sync_log` (for all of them)
        or `wait_for_log` (for one) helps. `sync_log`'s own requests are left out.
        """
        text = self._log_since(since)
        entries = []
        for line in text.splitlines():
            m = _ACCESS_RE.match(line)
            if m and not m.group("path").startswith(_SYNC_PATH):
                size = m.group("size")
                entries.append(
                    AccessLogEntry(
                        method=m.group("method"),
                        path=m.group("path"),
                        status=int(m.group("status")),
                        size=0 if size == "-" else int(size),
                        user_agent=m.group("ua"),
                    )
                )
        return entries

    def requests(
        self, method: str | None = None, path_re: str | None = None, since: int = 0
    ) -> list[AccessLogEntry]:
        """Access-log entries filtered by method and a regex searched in the request-URI."""
        rx = re.compile(path_re) if path_re else None
        return [
            e
            for e in self.access_log(since)
            if (method is None or e.method == method) and (rx is None or rx.search(e.path))
        ]

    def blob_uploads(self, repo: str | None = None, since: int = 0) -> list[AccessLogEntry]:
        """Completed blob uploads: `PUT /v2/REPO/blobs/uploads/UUID?…digest=…` answered 201
        (also a monolithic `POST …/uploads/?digest=…` answered 201, if a client tries one).

        Cross-repository mounts are not uploads; see `blob_mounts`.
        """
        out = []
        for e in self.access_log(since):
            m = _UPLOAD_DONE_RE.match(e.path)
            if (
                e.method in ("PUT", "POST")
                and e.status == 201
                and m
                and "mount=" not in e.path
                and (repo is None or m["repo"] == repo)
            ):
                out.append(e)
        return out

    def blob_mounts(self, repo: str | None = None, since: int = 0) -> list[AccessLogEntry]:
        """Successful cross-repository mounts: `POST …/blobs/uploads/?mount=…` answered 201."""
        out = []
        for e in self.access_log(since):
            m = _MOUNT_RE.match(e.path)
            if e.method == "POST" and e.status == 201 and m and (repo is None or m["repo"] == repo):
                out.append(e)
        return out

    def wait_for_log(self, predicate_re: str, timeout: float = 2.0, since: int = 0) -> bool:
        """Wait until a log line after `since` matches; access lines are written after replies."""
        rx = re.compile(predicate_re, re.M)
        deadline = time.monotonic() + timeout
        while True:
            if rx.search(self._log_since(since)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # ---- storage ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob (tests may corrupt or inspect it)."""
        algo, _, hexpart = digest.partition(":")
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexpart[:2] / hexpart / "data"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@atexit.register
def _kill_leftovers() -> None:
    """Never leave registry processes behind, even if a fixture's teardown did not run."""
    for reg in list(_LIVE):
        with contextlib.suppress(Exception):
            reg._kill()
