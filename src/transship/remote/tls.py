"""Trust: system roots by default, a per-registry CA (PEM file, PEM text or base64 of PEM).

Some tools keep a PEM CA base64-encoded on one line in a variable (TKG does, see
`transship.tkg.ca`), so every place that takes a CA accepts either form.

Costs that count in a short run: loading the system roots is ~50 ms of CPU, so it is done
once per (CA, verify) and not at all for a context that verifies nothing; `cryptography` is
imported only where a certificate is read (a TLS failure explained, a CA that OpenSSL alone
does not show to be a self-signed CA).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transship.errors import CertificateError

if TYPE_CHECKING:
    from cryptography import x509

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_ANY = b"-----BEGIN "
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")


@dataclass(frozen=True)
class CABundle:
    """One or more CA certificates in PEM, with where they came from (for messages)."""

    pem: bytes
    origin: str

    @property
    def certificates(self) -> list[x509.Certificate]:
        from cryptography import x509

        return x509.load_pem_x509_certificates(self.pem)

    @property
    def subjects(self) -> list[str]:
        return [c.subject.rfc4514_string() for c in self.certificates]


def load_ca(value: str, *, require_ca: bool = True, given_as: str | None = None) -> CABundle:
    """Load a CA from a file path, PEM text, or base64 of PEM; validate it is a CA.

    `given_as` (the option or variable the value came from) leads every error, so a bad value
    is found where it was given.
    """
    try:
        return _load_ca(value, require_ca)
    except CertificateError as exc:
        if given_as is None:
            raise
        raise CertificateError(f"{given_as}: {exc.message}", hint=exc.hint) from None


#: base64 of the smallest PEM certificate is longer than this: a shorter value that names no
#: file was meant as a file name
_SHORTEST_BASE64_CA = 400


def _load_ca(value: str, require_ca: bool) -> CABundle:
    origin: str
    data: bytes
    try:
        value.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 (`"$(cat ca.der)"`), from argv/stdin
        raise CertificateError(
            "the CA given is not text: give the path of the CA's PEM file, its PEM text or the "
            "base64 of it (a DER file: openssl x509 -inform der -in FILE -out ca.pem)"
        ) from None
    path = Path(value).expanduser()
    try:
        is_file = path.is_file()
    except OSError:  # a long base64 string is not a usable path name
        is_file = False
    if _PEM_ANY.decode() in value:
        data, origin = value.encode(), "PEM text"
    elif is_file:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read CA file {value}: {exc.strerror}") from None
        origin = str(path)
        if _PEM_ANY not in data:
            # A file may hold the base64 form too (what `transship ca encode` writes).
            data = _decode_base64(data.strip(), origin)
    else:
        origin = "base64 CA"
        if len(value) < 4096 and _exists(path):  # a directory, a device: never a CA file
            kind = "a directory" if path.is_dir() else "a device or special file"
            raise CertificateError(
                f"CA file {value} is not a regular file ({kind}); give the CA's PEM file"
            )
        if len(value) < 4096 and ("/" in value[:1] or value.endswith((".pem", ".crt"))):
            raise CertificateError(f"CA file {value} does not exist")
        if len(value.strip()) < _SHORTEST_BASE64_CA and not _is_base64(value.strip()):
            raise CertificateError(
                f"no CA file {value} (and too short to be a base64 PEM certificate): give the "
                "path of the CA's PEM file, its PEM text, or the base64 of it"
            )
        data = _decode_base64(value.strip().encode(), origin)
    _refuse_other_pem(data, origin)
    if _self_signed_cas(data):
        return CABundle(data, origin)
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{origin}: no valid PEM certificate found") from None
    if require_ca:
        for cert in certs:
            _require_ca(cert, origin)
    return CABundle(data, origin)


def _self_signed_cas(data: bytes) -> bool:
    """Whether OpenSSL reads every certificate in `data` as a self-signed CA: then the checks
    below accept each (a CA by basicConstraints, or an old root without the extension) and
    `cryptography` (~50 ms to import) is not needed. Any other case (an intermediate, a server
    certificate, a block OpenSSL cannot read, duplicates) is answered by those checks."""
    blocks = data.count(_PEM_BEGIN)
    if not blocks:
        return False
    store = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # holds nothing but `data`: no roots
    try:
        store.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError):  # not ASCII, not PEM: said by the checks below
        return False
    # only CAs by OpenSSL's test (basicConstraints CA:TRUE, or a v1 root, or without
    # basicConstraints a keyUsage that allows certificate signing): self-signed by name, each
    # is one the checks below accept
    cas = store.get_ca_certs()
    return (
        store.cert_store_stats()["x509"] == blocks
        and len(cas) == blocks
        and all(ca.get("subject") == ca.get("issuer") for ca in cas)
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a long base64 string is not a usable path name
        return False


def _refuse_other_pem(data: bytes, origin: str) -> None:
    """PEM that holds no certificate at all (a private key, a request): say what it is."""
    if _PEM_BEGIN in data:
        return
    found = _PEM_LABEL.search(data)
    if found is not None:
        label = found.group(1).decode("ascii", "replace")
        raise CertificateError(
            f"{origin}: holds a PEM {label}, not a certificate; give the CA certificate that "
            "signed the registry's certificate"
        )


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _decode_base64(data: bytes, origin: str) -> bytes:
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError(
            f"{origin}: neither a readable PEM file nor base64 of a PEM certificate"
        ) from None
    if _PEM_ANY not in decoded:
        raise CertificateError(
            f"{origin}: base64 decodes to something that is not a PEM certificate"
        )
    return decoded


def _require_ca(cert: x509.Certificate, origin: str) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    subject = cert.subject.rfc4514_string()
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        if cert.issuer == cert.subject:
            return  # old self-signed roots without the extension are still roots
        raise CertificateError(
            f"{origin}: certificate {subject!r} is not a CA certificate (no basicConstraints); "
            "give the CA that signed the registry's certificate, not the server certificate"
        ) from None
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        raise CertificateError(
            f"{origin}: certificate {subject!r} is not a CA (basicConstraints CA:FALSE); "
            "give the CA that signed the registry's certificate, not the server certificate"
        )


def unverified_context() -> ssl.SSLContext:
    """`ssl.create_default_context()` with verification off, without loading the system
    roots it would never consult (the same protocol defaults and `SSLKEYLOGFILE`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    return ctx


def ssl_context(ca: CABundle | None, *, verify: bool = True) -> ssl.SSLContext:
    """System trust plus the registry's own CA; no verification only when asked."""
    if not verify:
        return unverified_context()
    ctx = ssl.create_default_context()
    if ca is not None:
        ctx.load_verify_locations(cadata=ca.pem.decode("ascii"))
    return ctx


_SHARED: dict[tuple[bytes | None, bool], ssl.SSLContext] = {}


def shared_ssl_context(ca: CABundle | None, *, verify: bool = True) -> ssl.SSLContext:
    """`ssl_context`, built once per (CA, verify) for the process: loading the system roots
    costs ~0.1 s of CPU, paid per registry host otherwise. Callers must not modify it."""
    key = (ca.pem if ca is not None else None, verify)
    ctx = _SHARED.get(key)
    if ctx is None:
        ctx = _SHARED[key] = ssl_context(ca, verify=verify)
    return ctx


@dataclass(frozen=True)
class PeerCertificate:
    """What a server presented, read without verifying it, to explain a TLS failure."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: str
    not_after: str
    self_signed: bool


async def peer_certificate_summary(host: str, timeout: float = 10.0) -> PeerCertificate | None:
    """Handshake without verification and describe the leaf certificate (None if impossible)."""
    import asyncio

    hostname, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "443")
    ctx = unverified_context()
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(hostname, int(port or 443), ssl=ctx, server_hostname=hostname),
            timeout,
        )
    except (OSError, TimeoutError, ssl.SSLError, ValueError):
        return None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
    finally:
        writer.close()
    if not der:
        return None
    from cryptography import x509

    return describe_certificate(x509.load_der_x509_certificate(der))


def describe_certificate(cert: x509.Certificate) -> PeerCertificate:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        if isinstance(san, x509.SubjectAlternativeName):
            names += san.get_values_for_type(x509.DNSName)
            names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return PeerCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=tuple(names),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        self_signed=cert.issuer == cert.subject,
    )
