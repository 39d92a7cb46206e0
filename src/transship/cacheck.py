"""`transship ca check`: why a registry's TLS is trusted or not, in plain words.

A copy classifies a TLS failure just far enough to print one error line. Setting up TKG needs
more: which CA anchors the chain (or which issuer nobody trusts), the names and dates of the
certificate, whether the port speaks TLS at all, and whether `/v2/` is a registry. Each of these
verdicts has its own exit code so that install scripts can branch on it.

Three connections at most: a TLS handshake that verifies nothing (to read what the server
presents), one with the trust TKG will use (system roots plus `--ca`), and `GET /v2/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from transship.errors import UsageError
from transship.remote.auth import Challenge
from transship.remote.tls import CABundle, PeerCertificate, describe_certificate, ssl_context
from transship.remote.transport import USER_AGENT


class Verdict(StrEnum):
    """What `ca check` concluded, one per distinct exit code (auth-required is a success)."""

    TRUSTED = "trusted"
    AUTH_REQUIRED = "auth-required"
    UNKNOWN_AUTHORITY = "unknown-authority"
    HOSTNAME_MISMATCH = "hostname-mismatch"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    PLAIN_HTTP = "plain-http"
    NOT_A_REGISTRY = "not-a-registry"
    TLS_FAILED = "tls-failed"
    UNREACHABLE = "unreachable"


class CheckExit(IntEnum):
    """Exit codes of `ca check`; 1, 5, 6 and 8 mean what they mean for every command."""

    OK = 0  # trusted; /v2/ answers (200, or 401 asking for credentials)
    USAGE = 1  # bad address or --ca
    UNKNOWN_AUTHORITY = 5  # no trusted CA signed the chain: pass --ca
    UNREACHABLE = 6  # DNS failure, connection refused, timeout
    NOT_A_REGISTRY = 8  # TLS fine but /v2/ is not the registry API (404, HTML, redirect, 5xx)
    HOSTNAME_MISMATCH = 10  # the certificate is for other names
    EXPIRED = 11  # expired or not yet valid
    PLAIN_HTTP = 12  # the port speaks plain HTTP, not TLS
    TLS_FAILED = 13  # any other TLS failure (handshake refused, bad signature, key usage)


EXIT_CODES: dict[Verdict, CheckExit] = {
    Verdict.TRUSTED: CheckExit.OK,
    Verdict.AUTH_REQUIRED: CheckExit.OK,
    Verdict.UNKNOWN_AUTHORITY: CheckExit.UNKNOWN_AUTHORITY,
    Verdict.HOSTNAME_MISMATCH: CheckExit.HOSTNAME_MISMATCH,
    Verdict.EXPIRED: CheckExit.EXPIRED,
    Verdict.NOT_YET_VALID: CheckExit.EXPIRED,
    Verdict.PLAIN_HTTP: CheckExit.PLAIN_HTTP,
    Verdict.NOT_A_REGISTRY: CheckExit.NOT_A_REGISTRY,
    Verdict.TLS_FAILED: CheckExit.TLS_FAILED,
    Verdict.UNREACHABLE: CheckExit.UNREACHABLE,
}

# OpenSSL X509_V_ERR_* codes, grouped as people think of them.
_UNKNOWN_AUTHORITY_CODES = frozenset({2, 18, 19, 20, 21, 27})
_HOSTNAME_CODES = frozenset({62, 64})
_EXPIRED_CODE = 10
_NOT_YET_VALID_CODE = 9
_PLAIN_HTTP_MARKERS = (
    "WRONG_VERSION_NUMBER",
    "record layer failure",
    "packet length",
    "HTTP_REQUEST",
)


@dataclass(frozen=True)
class Target:
    """Where to connect: `host[:port]`, also accepted as a URL or a TKG repository prefix."""

    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Target:
        raw = text.strip()
        if "@" in raw:  # a registry has no digest: an `@` ends credentials, never echoed
            scheme = "https://" if raw.lower().startswith("https://") else ""
            scheme = "http://" if raw.lower().startswith("http://") else scheme
            masked = f"{scheme}***@{raw[raw.rfind('@') + 1 :]}"
            raise UsageError(  # refused as in a reference, not dropped without a word
                f"registry {masked!r} holds credentials (user:password@): 'ca check' sends "
                "none; give host[:port]"
            )
        for scheme in ("https://", "http://"):
            if raw.lower().startswith(scheme):
                raw = raw[len(scheme) :]
        hostport = raw.split("/", 1)[0]
        if not hostport:
            raise UsageError(f"{text!r} names no registry; give host[:port]")
        try:
            parts = urlsplit(f"//{hostport}")
            port = parts.port or 443
        except ValueError:
            raise UsageError(f"{text!r}: invalid port; give host[:port]") from None
        if not parts.hostname:
            raise UsageError(f"{text!r} names no registry; give host[:port]")
        return cls(parts.hostname, port)


@dataclass
class CheckResult:
    """The verdict, the one-line summary, and the facts behind it."""

    target: Target
    verdict: Verdict
    summary: str
    hint: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    chain: tuple[PeerCertificate, ...] = ()
    anchor: str | None = None
    challenge: Challenge | None = None

    @property
    def exit_code(self) -> int:
        return int(EXIT_CODES[self.verdict])

    @property
    def ok(self) -> bool:
        return EXIT_CODES[self.verdict] is CheckExit.OK

    def lines(self) -> list[str]:
        """The report for people: the verdict, then one fact per line."""
        width = max((len(label) for label, _ in self.facts), default=0)
        out = [f"{self.target.address}: {self.summary}"]
        out += [f"  {label.ljust(width)}  {value}" for label, value in self.facts]
        return out


async def check_registry(
    target: Target, ca: CABundle | None, *, timeout: float = 10.0
) -> CheckResult:
    """Connect, read the chain, verify it as TKG would, then ask `/v2/` who is there."""
    unreachable = await _tcp_probe(target, timeout)
    if unreachable is not None:
        return CheckResult(
            target,
            Verdict.UNREACHABLE,
            f"cannot connect: {unreachable}",
            hint="check the host name, the port and the network path",
        )
    presented = await _unverified_chain(target, timeout)
    if isinstance(presented, str):
        return await _not_tls(target, presented, timeout)
    chain = tuple(describe_certificate(c) for c in presented)
    result = CheckResult(target, Verdict.TRUSTED, "", chain=chain)
    _certificate_facts(result, presented)
    ctx = ssl_context(ca)
    outcome = await _verified_handshake(target, ctx, timeout)
    if isinstance(outcome, ssl.SSLCertVerificationError):
        return _verification_failure(result, outcome, presented, ca)
    if isinstance(outcome, BaseException):
        result.verdict = Verdict.TLS_FAILED
        result.summary = f"TLS handshake with verification failed: {_ssl_reason(outcome)}"
        return result
    anchor, from_ca = _find_anchor(outcome, presented, ca, ctx)
    result.anchor = anchor
    origin = f"--ca {ca.origin}" if from_ca and ca is not None else "the system trust store"
    result.facts.append(("trusted by", f"{anchor or 'a trusted CA'} (from {origin})"))
    await _probe_registry(result, ctx, timeout)
    return result


# -- connections ---------------------------------------------------------------------------


async def _tcp_probe(target: Target, timeout: float) -> str | None:
    """None if a TCP connection opens, else why not in a few words."""
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout
        )
    except socket.gaierror:
        return f"cannot resolve host name {target.host!r}"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return None


async def _handshake(
    target: Target, ctx: ssl.SSLContext, timeout: float
) -> tuple[asyncio.StreamWriter, Any]:
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            target.host,
            target.port,
            ssl=ctx,
            server_hostname=target.host,
            ssl_handshake_timeout=timeout,
        ),
        timeout + 1,
    )
    return writer, writer.get_extra_info("ssl_object")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def _unverified_chain(target: Target, timeout: float) -> list[x509.Certificate] | str:
    """What the server presents, leaf first; a string says why no TLS session came up."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        writer, sslobj = await _handshake(target, ctx, timeout)
    except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return _ssl_reason(exc)
    try:
        chain = _chain_of(sslobj, verified=False)
    finally:
        await _close(writer)
    return chain or "the server sent no certificate"


async def _verified_handshake(
    target: Target, ctx: ssl.SSLContext, timeout: float
) -> BaseException | list[x509.Certificate]:
    """The verified chain (leaf first, may be empty if unknown), or the handshake's error."""
    try:
        writer, sslobj = await _handshake(target, ctx, timeout)
    except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return exc
    try:
        return _chain_of(sslobj, verified=True)
    finally:
        await _close(writer)


def _chain_of(sslobj: Any, *, verified: bool) -> list[x509.Certificate]:
    """The peer chain: the public API of Python 3.13, the private one before; else the leaf."""
    name = "get_verified_chain" if verified else "get_unverified_chain"
    items: Sequence[Any] | None = None
    for holder in (sslobj, getattr(sslobj, "_sslobj", None)):
        method = getattr(holder, name, None)
        if method is not None:
            with contextlib.suppress(Exception):
                items = method()
                break
    if items:
        der_encoding = getattr(importlib.import_module("_ssl"), "ENCODING_DER", 2)
        out = []
        for item in items:
            der = item if isinstance(item, bytes) else item.public_bytes(der_encoding)
            out.append(x509.load_der_x509_certificate(der))
        return out
    if verified:
        return []
    leaf = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return [x509.load_der_x509_certificate(leaf)] if leaf else []


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the TLS handshake timed out"
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, ConnectionResetError | asyncio.IncompleteReadError | EOFError):
        return "the server closed the connection during the TLS handshake"
    return str(exc) or type(exc).__name__


# -- no TLS session --------------------------------------------------------------------------


async def _not_tls(target: Target, reason: str, timeout: float) -> CheckResult:
    """The handshake failed: plain HTTP on that port, or TLS that does not work at all."""
    status, _headers = await _http_get(f"http://{target.address}/v2/", None, timeout)
    if status is None:
        looks_plain = any(marker in reason for marker in _PLAIN_HTTP_MARKERS)
        return CheckResult(
            target,
            Verdict.TLS_FAILED,
            f"TLS handshake failed: {reason}"
            + (" (and it does not answer plain HTTP either)" if looks_plain else ""),
            hint="check that this is the registry's HTTPS port",
        )
    result = CheckResult(
        target,
        Verdict.PLAIN_HTTP,
        "speaks plain HTTP, not TLS: TKG and the container runtimes on the nodes need HTTPS",
        hint="enable TLS on the registry, or give the port of its HTTPS listener",
    )
    if status in (200, 401):
        what = "a registry" + (" (asks for credentials)" if status == 401 else "")
    else:
        what = f"not a registry (/v2/ answered {status})"
    result.facts.append(("over plain HTTP", what))
    return result


# -- certificates ------------------------------------------------------------------------------


def _certificate_facts(result: CheckResult, presented: Sequence[x509.Certificate]) -> None:
    leaf = result.chain[0]
    result.facts.append(("certificate", leaf.subject))
    result.facts.append(("issued by", leaf.issuer))
    result.facts.append(("valid for", ", ".join(leaf.names) or "(no subjectAltName)"))
    cert = presented[0]
    left = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    note = f" ({left} days left)" if left >= 0 else ""
    result.facts.append(("valid", f"{_day(leaf.not_before)} to {_day(leaf.not_after)}{note}"))
    if len(result.chain) > 1:
        result.facts.append(
            ("chain sent", " <- ".join(c.subject for c in result.chain) + f" ({len(presented)})")
        )


def _day(iso: str) -> str:
    return iso.replace("T", " ").split("+")[0]


def _verification_failure(
    result: CheckResult,
    error: ssl.SSLCertVerificationError,
    presented: Sequence[x509.Certificate],
    ca: CABundle | None,
) -> CheckResult:
    code = error.verify_code
    leaf = result.chain[0]
    tried = "the system trust store" + (f" and --ca {ca.origin}" if ca else "")
    if code in _UNKNOWN_AUTHORITY_CODES:
        result.verdict = Verdict.UNKNOWN_AUTHORITY
        result.summary = f"unknown authority: the certificate is issued by {leaf.issuer!r}"
        result.hint = (
            "pass --ca FILE|BASE64 with the CA that signed it"
            if ca is None
            else f"--ca {ca.origin} did not sign it: pass the CA named as its issuer instead"
        )
        result.facts.append(("tried", tried))
        if ca is not None and leaf.issuer in ca.subjects:
            result.facts.append(
                ("note", "--ca has that name but another key: was the CA re-generated?")
            )
    elif code in _HOSTNAME_CODES:
        names = ", ".join(leaf.names) or "(none)"
        result.verdict = Verdict.HOSTNAME_MISMATCH
        result.summary = f"hostname mismatch: the certificate is valid for {names}"
        result.hint = (
            f"use one of those names, or re-issue the certificate for {result.target.host}"
        )
    elif code == _EXPIRED_CODE:
        result.verdict = Verdict.EXPIRED
        result.summary = f"certificate expired on {_day(leaf.not_after)} UTC"
        result.hint = "renew the registry's certificate"
    elif code == _NOT_YET_VALID_CODE:
        result.verdict = Verdict.NOT_YET_VALID
        result.summary = f"certificate is not valid before {_day(leaf.not_before)} UTC"
        result.hint = "check the clocks of this machine and of the CA"
    else:
        result.verdict = Verdict.TLS_FAILED
        result.summary = f"certificate verification failed: {error.verify_message}"
    result.facts += _also(result, presented[0])
    return result


def _also(result: CheckResult, cert: x509.Certificate) -> list[tuple[str, str]]:
    """Problems OpenSSL stopped before reporting, so that one fix does not reveal the next."""
    out: list[tuple[str, str]] = []
    now = dt.datetime.now(dt.UTC)
    leaf = result.chain[0]
    if result.verdict not in (Verdict.EXPIRED, Verdict.NOT_YET_VALID):
        if cert.not_valid_after_utc < now:
            out.append(("also", f"the certificate expired on {_day(leaf.not_after)} UTC"))
        elif cert.not_valid_before_utc > now:
            out.append(("also", f"the certificate is not valid before {_day(leaf.not_before)}"))
    if result.verdict is not Verdict.HOSTNAME_MISMATCH and not _matches(
        result.target.host, leaf.names
    ):
        out.append(("also", f"the certificate is not valid for {result.target.host}"))
    return out


def _matches(host: str, names: Sequence[str]) -> bool:
    """Exact name or address, or a one-label wildcard: enough to spot an obvious mismatch."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for name in names:
        if address is not None:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(name) == address:
                    return True
            continue
        lowered = name.lower()
        if lowered == host.lower():
            return True
        if lowered.startswith("*.") and host.lower().partition(".")[2] == lowered[2:]:
            return True
    return False


def _find_anchor(
    verified: list[x509.Certificate],
    presented: Sequence[x509.Certificate],
    ca: CABundle | None,
    ctx: ssl.SSLContext,
) -> tuple[str | None, bool]:
    """Subject of the trust anchor, and whether it came from `--ca` (else system roots)."""
    ca_ders = {_der(c) for c in ca.certificates} if ca else set()
    if verified:
        root = verified[-1]
        return root.subject.rfc4514_string(), _der(root) in ca_ders
    # No verified chain from this Python: the anchor is a trusted CA named by the last issuer.
    issuer = presented[-1].issuer
    for cert in ca.certificates if ca else []:
        if cert.subject == issuer:
            return cert.subject.rfc4514_string(), True
    for der in ctx.get_ca_certs(binary_form=True):
        with contextlib.suppress(ValueError):
            cert = x509.load_der_x509_certificate(der)
            if cert.subject == issuer:
                return cert.subject.rfc4514_string(), False
    return issuer.rfc4514_string(), False


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- the registry API ------------------------------------------------------------------------


async def _http_get(
    url: str, ctx: ssl.SSLContext | None, timeout: float
) -> tuple[int | None, dict[str, str]]:
    """Status and headers of one GET, without following redirects; None if it failed."""
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=client_timeout, headers={"User-Agent": USER_AGENT}
            ) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            await resp.content.read(4096)
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError):
        return None, {}


async def _probe_registry(result: CheckResult, ctx: ssl.SSLContext, timeout: float) -> None:
    """TLS is trusted: say whether `/v2/` is a registry and how it wants to be spoken to."""
    status, headers = await _http_get(f"https://{result.target.address}/v2/", ctx, timeout)
    anchor = result.anchor or "a trusted CA"
    trusted = f"trusted: the certificate chains to {anchor!r}"
    if status is None:
        result.verdict = Verdict.NOT_A_REGISTRY
        result.summary = f"{trusted}, but GET /v2/ got no HTTP answer"
        return
    api = headers.get("docker-distribution-api-version")
    if status == 401 and headers.get("www-authenticate"):
        challenge = Challenge.parse(headers["www-authenticate"])
        result.challenge = challenge
        result.verdict = Verdict.AUTH_REQUIRED
        realm = challenge.params.get("realm", "")
        shown = f"{challenge.scheme.capitalize()}" + (f' realm="{realm}"' if realm else "")
        if challenge.params.get("service"):
            shown += f' service="{challenge.params["service"]}"'
        result.summary = f"{trusted}; the registry asks for credentials ({shown}), TLS is fine"
        result.facts.append(("registry", f"/v2/ answered 401: {shown}"))
        return
    if status == 200 and (api or "html" not in headers.get("content-type", "")):
        result.summary = f"{trusted}; the registry answers /v2/ without credentials"
        result.facts.append(("registry", f"/v2/ answered 200 ({api or 'no API version header'})"))
        return
    result.verdict = Verdict.NOT_A_REGISTRY
    if status in (301, 302, 303, 307, 308):
        why = f"/v2/ redirects to {headers.get('location', '?')}"
    elif status == 200:
        why = "/v2/ answers with a web page"
    elif status == 404:
        why = "/v2/ answered 404"
    else:
        why = f"/v2/ answered {status}"
    result.summary = f"TLS is trusted (anchor {anchor!r}) but this is not a registry: {why}"
    result.hint = "check the port: the registry API may be served elsewhere"
    result.facts.append(("registry", why))
