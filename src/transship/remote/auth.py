"""Registry authentication: challenges, credentials and bearer tokens.

Credentials come, in order, from explicit options, then `~/.docker/config.json` (`credHelpers`,
`auths`, `credsStore`), as the Docker CLI, crane and skopeo do; the config is read (and its
helpers run) only once a registry asks for credentials. Secrets are kept out of `repr` and
never put into messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from transship.errors import AuthenticationError, UsageError

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        params: dict[str, str] = {}
        pos = 0
        while pos < len(rest):
            m = _PARAM.match(rest, pos)
            if not m or m.end() == pos:
                break
            value = m.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[m.group(1).lower()] = value
            pos = m.end()
        return cls(scheme.lower(), params)


@dataclass(frozen=True)
class Credentials:
    """A username/password pair or an identity (refresh) token."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = "options"

    def basic(self) -> str:
        return self._basic

    @cached_property
    def _basic(self) -> str:  # the same header on every request of a run
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r})"


def parse_creds(text: str, source: str) -> Credentials:
    """`user:password` as given on the command line or in an environment variable."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError(f"{source}: credentials must be 'USERNAME:PASSWORD'")
    return Credentials(user, password, source=source)


def _config_keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return keys


#: how long a credential helper may take to answer: one waiting on a passphrase prompt
#: (`pass` via pinentry, `secretservice` via D-Bus) on a headless host never will
HELPER_TIMEOUT = 30.0


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def from_docker_config(
    host: str, path: Path | None = None, *, helper_timeout: float = HELPER_TIMEOUT
) -> Credentials | None:
    """`lookup_docker_config` for callers outside an event loop."""
    return asyncio.run(lookup_docker_config(host, path, helper_timeout=helper_timeout))


async def lookup_docker_config(
    host: str, path: Path | None = None, *, helper_timeout: float = HELPER_TIMEOUT
) -> Credentials | None:
    """Look a registry up in a Docker config file, running credential helpers if named.
    Async, so a run interrupted while a helper hangs ends it at once (`_run_helper`)."""
    path = path or docker_config_path()
    found = _config_entry(host, path)
    if isinstance(found, tuple):
        helper, named_by = found
        return await _run_helper(helper, host, path, named_by, helper_timeout)
    return found


def _config_entry(host: str, path: Path) -> Credentials | tuple[str, str] | None:
    """What the config says for `host`: credentials, a helper to ask (name, the key naming
    it), or nothing."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise UsageError(f"{path}: not a readable Docker config JSON file") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: not a Docker config JSON object")
    keys = _config_keys(host)
    helpers = _section(config, "credHelpers", path)
    for key in keys:
        if key in helpers:
            named_by = f"credHelpers[{key!r}]"
            return _helper_name(helpers[key], named_by, path), named_by
    auths = _section(config, "auths", path)
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            # the password too, if `auth` has one: a token service without OAuth2 is asked
            # by GET with Basic user:password instead, as go-containerregistry does
            user, password = _decode_auth(entry, path, key) if entry.get("auth") else ("", "")
            return Credentials(user, password, str(entry["identitytoken"]), source=str(path))
        if entry.get("auth"):
            user, password = _decode_auth(entry, path, key)
            return Credentials(user, password, source=str(path))
        if entry.get("username"):
            return Credentials(
                str(entry["username"]), str(entry.get("password", "")), source=str(path)
            )
    store = config.get("credsStore")
    if store:
        return _helper_name(store, "credsStore", path), "credsStore"
    return None


def _section(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """`auths` or `credHelpers`: an object keyed by registry (absent or null: empty). Another
    type is a hand-edited file Docker itself would not read: say so rather than fail on it."""
    section = config.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        # the kind of value only, never the value: it may hold a password
        found = {list: "a list", str: "a string", bool: "true/false"}.get(type(section), "a number")
        raise UsageError(
            f"{path}: {name} must be a JSON object keyed by registry, not {found}; fix the file "
            "(or move it aside and run 'docker login' again)"
        )
    return section


def _helper_name(value: object, key: str, path: Path) -> str:
    if not isinstance(value, str):
        raise UsageError(
            f"{path}: {key} must be the name of a credential helper (a string, as 'pass' for "
            "docker-credential-pass); fix the file"
        )
    return value


def _decode_auth(entry: dict[str, object], path: Path, key: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        sep, user, password = "", "", ""
    if not sep:
        raise UsageError(f"{path}: auths[{key!r}].auth is not base64 of 'user:password'")
    return user, password


class HelperMissingError(UsageError):
    """A credential helper a Docker config names is not installed (a Docker Desktop leftover
    `"credsStore": "desktop"` on a build machine): what to do depends on whether the registry
    asks for credentials at all, so the transport decides (`Transport.credentials`)."""

    def __init__(self, program: str, path: Path, named_by: str) -> None:
        super().__init__(f"credential helper {program} ({named_by} in {path}) is not on PATH")
        self.program = program
        self.path = path
        self.named_by = named_by

    def fix(self, option: str) -> str:
        return (
            f"install {self.program}, remove {self.named_by} from {self.path}, "
            f"or pass {option} USER:PASSWORD"
        )


class HelperFailedError(AuthenticationError):
    """A credential helper that ran and gave no usable answer (timed out, or answered what is
    not its JSON): no credentials can be had for the registry that asked, so every request
    to it would fail alike; the transport says it once for the run (`Transport.credentials`)
    with the side's option (`fix`)."""

    def __init__(self, program: str, path: Path, named_by: str, what: str) -> None:
        super().__init__(f"credential helper {program} ({named_by} in {path}) {what}")
        self.program = program
        self.path = path
        self.named_by = named_by

    def fix(self, option: str) -> str:
        return (
            f"make '{self.program} get' answer here without a prompt (unlock its store), "
            f"remove {self.named_by} from that file, or pass {option} USER:PASSWORD"
        )


class _HelperOutput(asyncio.SubprocessProtocol):
    """A helper's standard output, and when it has exited / closed its pipes too."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()  # only its first part, for the error it reports
        self.exited: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if not isinstance(data, bytes):
            return
        if fd == 1:
            self.stdout += data
        elif fd == 2 and len(self.stderr) < HELPER_STDERR_LIMIT:
            self.stderr += data[: HELPER_STDERR_LIMIT - len(self.stderr)]

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


#: how long to wait for a killed helper to be reaped
HELPER_REAP_TIMEOUT = 2.0
#: how much of a helper's standard error is kept (its error message is its first line)
HELPER_STDERR_LIMIT = 64 * 1024
#: the answer of a helper that has nothing for the host (docker-credential-helpers'
#: `ErrCredentialsNotFound`); Docker takes only this as not-found, any other failure as an error
HELPER_NOT_FOUND = "credentials not found in native keychain"
#: how much of a failing helper's first output line the error quotes
HELPER_MESSAGE_LIMIT = 200


async def _end_helper(transport: asyncio.SubprocessTransport, output: _HelperOutput) -> None:
    """Kill a helper with whatever it started (its session's process group) and close our
    ends of its pipes, so a child that left the group holding them cannot keep us waiting;
    then wait a bounded while for it to be reaped (a run ending right after would otherwise
    leave the child watcher reporting to a closed loop)."""
    if transport.get_returncode() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(transport.get_pid(), signal.SIGKILL)
    transport.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(output.exited), HELPER_REAP_TIMEOUT)


async def _run_helper(
    helper: str, host: str, path: Path, named_by: str, timeout: float
) -> Credentials | None:
    program = f"docker-credential-{helper}"
    loop = asyncio.get_running_loop()
    try:
        # its own session, so a timeout or Ctrl-C ends the helper with whatever it started
        # (pinentry); it no longer gets the terminal's SIGINT, so cancelling kills it here
        transport, output = await loop.subprocess_exec(
            lambda: _HelperOutput(loop),
            program,
            "get",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise HelperMissingError(program, path, named_by) from None
    except OSError as exc:
        raise HelperFailedError(
            program, path, named_by, f"cannot be run: {exc.strerror or exc}"
        ) from None
    try:
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write(host.encode())
        stdin.close()
        await asyncio.wait_for(asyncio.shield(output.finished), timeout)
    except TimeoutError:
        await _end_helper(transport, output)
        raise HelperFailedError(
            program, path, named_by, f"did not answer within {timeout:g} s"
        ) from None
    except BaseException:  # cancelled (Ctrl-C): the helper, in its own session, never saw it
        await _end_helper(transport, output)
        raise
    returncode = transport.get_returncode()
    transport.close()
    if returncode != 0:
        _raise_unless_not_found(program, path, named_by, returncode, output)
        return None  # "credentials not found in native keychain": anonymous
    try:
        doc = json.loads(bytes(output.stdout))
        user, secret = str(doc["Username"]), str(doc["Secret"])
    except (ValueError, KeyError, TypeError):
        raise HelperFailedError(program, path, named_by, "gave an unreadable answer") from None
    if user == "<token>":
        return Credentials("", "", secret, source=program)
    return Credentials(user, secret, source=program)


def _raise_unless_not_found(
    program: str, path: Path, named_by: str, returncode: int | None, output: _HelperOutput
) -> None:
    """A helper that exited non-zero: "not found" is no credentials (anonymous); anything
    else (a locked store, no D-Bus on a headless host) is its error, quoted by its first line
    (helpers report errors on stdout, some on stderr; the secret only ever comes with exit 0)."""
    texts = [bytes(output.stdout).decode(errors="replace"), output.stderr.decode(errors="replace")]
    if any(HELPER_NOT_FOUND in text.lower() for text in texts):
        return
    lines = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    what = (
        f"exited {returncode}"
        if returncode is None or returncode >= 0
        else (f"was killed by signal {-returncode}")
    )
    if lines:
        first = lines[0]
        if "secret" in first.lower():  # never quote what might be an answer
            first = "(an answer not shown)"
        elif len(first) > HELPER_MESSAGE_LIMIT:
            first = first[:HELPER_MESSAGE_LIMIT] + "..."
        what += f": {first}"
    raise HelperFailedError(program, path, named_by, what)


@dataclass
class Token:
    value: str = field(repr=False)
    expires_at: float


class TokenCache:
    """Bearer tokens per scope set, expired a little early to avoid racing the registry."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, key: str) -> str | None:
        token = self._tokens.get(key)
        if token and token.expires_at > time.monotonic():
            return token.value
        return None

    def put(self, key: str, value: str, lifetime: float) -> None:
        margin = min(10.0, lifetime / 5)
        self._tokens[key] = Token(value, time.monotonic() + lifetime - margin)

    def drop(self, key: str) -> None:
        self._tokens.pop(key, None)

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def identity_token_refused(
    host: str, creds: Credentials, option: str, why: str = ""
) -> AuthenticationError:
    """The identity token of a Docker config (or helper) that the token service did not take:
    said as such, since "wrong password" would send people looking for a password they never
    typed."""
    return AuthenticationError(
        f"the token service of {host} refused the identitytoken for {host} in {creds.source}"
        + (f": {why}" if why else ""),
        hint=f"run 'docker login {host}' again, or pass {option} USER:PASSWORD",
    )


def missing_credentials(host: str, challenge: Challenge, option: str) -> AuthenticationError:
    realm = challenge.params.get("realm", "")
    where = f" (realm {realm})" if realm else ""
    return AuthenticationError(
        f"{host} requires credentials{where}",
        hint=f"pass {option} USER:PASSWORD or run 'docker login {host}'",
    )
