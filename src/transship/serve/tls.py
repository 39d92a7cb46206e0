"""TLS for `serve`: a given certificate, or a CA and server certificate made in a directory.

`--tls-self-signed DIR` keeps the CA across restarts (clients that trusted it keep trusting it)
and issues a new server certificate whenever the names change or it nears expiry. File names
suit `skopeo --cert-dir DIR` and docker's `certs.d`: only the CA ends in `.crt`; keys end in
`-key.pem` (containers/image would take a `*.key` for a client key and want its `.cert`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from transship.errors import UsageError, io_error
from transship.fsutil import write_atomic

CA_FILE = "ca.crt"
CA_KEY_FILE = "ca-key.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca: Path | None = None  # set when transship made the CA


def server_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot use certificate {files.cert} with key {files.key}: {exc}"
        ) from None
    return ctx


def self_signed(directory: Path, names: list[str]) -> TLSFiles:
    """The CA in DIRECTORY (made if absent) and a server certificate for `names`."""
    try:
        return _self_signed(directory, names)
    except OSError as exc:  # the directory cannot be written: local storage, not usage
        raise io_error(f"--tls-self-signed {directory}", exc) from None


def _self_signed(directory: Path, names: list[str]) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca(directory)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not _current(cert_path, key_path, ca_cert, names):
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name(names))]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(key_path, key)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return TLSFiles(cert_path, key_path, directory / CA_FILE)


#: X.509's upper bound on a common name (RFC 5280 ub-common-name)
MAX_COMMON_NAME = 64


def common_name(names: list[str]) -> str:
    """The server certificate's subject CN: its first name when that fits X.509's 64
    characters, else "transship serve" (a DNS name may be 253): clients match the SANs, which
    carry every name whole, the CN is only a label."""
    first = names[0] if names else ""
    return first if 0 < len(first) <= MAX_COMMON_NAME else "transship serve"


def _ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{directory}: cannot read the CA made earlier ({exc}); "
                "remove the directory to make a new one"
            ) from None
        lasting = cert.not_valid_after_utc - RENEW_BEFORE > dt.datetime.now(dt.UTC)
        if isinstance(key, ec.EllipticCurvePrivateKey) and lasting:
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transship serve CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    (directory / CERT_FILE).unlink(missing_ok=True)  # issued by the CA this one replaces
    return cert, key


def _current(cert_path: Path, key_path: Path, ca: x509.Certificate, names: list[str]) -> bool:
    """True if the server certificate on disk is the CA's, names exactly `names`, and lasts."""
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have = {str(n) for n in alt.get_values_for_type(x509.DNSName)}
    have |= {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)}
    want = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    fresh = cert.not_valid_after_utc - RENEW_BEFORE > dt.datetime.now(dt.UTC)
    return cert.issuer == ca.subject and have == want and fresh


#: one label of a host name (RFC 1123 2.1): letters, digits, hyphens, 1-63, no hyphen at an end
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: a DNS name's longest text form (RFC 1035 2.3.4, without the trailing dot)
MAX_NAME = 253


def check_san(name: str) -> str:
    """`--san NAME` as a certificate carries it, when it is an IP address (in its canonical
    form) or a host name (RFC 1123: labels of 1-63 letters, digits or hyphens, no hyphen at
    either end, the last one not all digits, 253 characters in all; one leading `*.` for a
    wildcard; lower-cased, as names compare without case; one trailing dot, the root, left
    off); anything else is a one-line `UsageError` naming it and what to give instead."""
    if _is_ip(name):
        if "%" in name:  # a zone (`fe80::1%eth0`) is local to one host: a SAN has no place for it
            zone = _shown(name.split("%", 1)[1])
            raise UsageError(
                f"--san '{_shown(name)}': an IP address with a zone is not allowed; "
                f"give it without '%{zone}'"
            )
        ip = ipaddress.ip_address(name)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # `::ffff:1.2.3.4` is how an IPv4 address looks on an IPv6 socket; an IPv4 client
            # checks an IPv4 SAN, never an IPv6 one
            return str(ip.ipv4_mapped)
        return str(ip)
    bare = name[:-1] if name.endswith(".") else name
    host = bare[2:] if bare.startswith("*.") else bare
    labels = host.split(".")
    if (
        len(bare) <= MAX_NAME
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return bare.lower()
    rule = (
        "give labels of 1-63 letters, digits or hyphens (no hyphen first or last) joined by "
        "dots, 253 characters at most, optionally after one leading '*.' (and before at most one "
        "trailing dot)"
    )
    if not name.isascii() and name.isprintable():
        rule += f"; a name in other letters goes in its punycode (xn--) form{_punycode(name)}"
    raise UsageError(f"--san '{_shown(name)}' is neither an IP address nor a DNS name: {rule}")


def _shown(name: str) -> str:
    """`name` on one line (control characters escaped), cut when long."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    if len(name) > 80:
        shown = f"{shown[:40]}... ({len(name)} characters)"
    return shown


def _punycode(name: str) -> str:
    """`: xn--…` for a name IDNA can encode, else nothing."""
    try:
        return f": {name.encode('idna').decode('ascii').lower()}"
    except UnicodeError:
        return ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, data, private=True)  # 0600: the key is never readable by others
