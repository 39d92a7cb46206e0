"""A throw-away PKI for TLS tests: a test CA, server certificates it signs (good, expired,
wrong hostname), an unrelated "wrong" CA and an RSA certificate that signs bearer tokens.

Keys are ECDSA P-256 by default (instant to generate); the token signer is RSA because the
token service signs RS256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_DNS_NAMES: tuple[str, ...] = ("localhost",)
DEFAULT_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (use 'ec' or 'rsa')")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA whose certificate and key are on disk; `issue_*` signs new certificates."""

    name: str
    cert_path: Path
    key_path: Path
    cert_dir: Path  # a directory holding only `ca.crt` (skopeo/containers `--cert-dir`)
    cert: x509.Certificate = field(repr=False)
    key: PrivateKey = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    def issue_server_cert(
        self,
        out_dir: Path,
        name: str,
        *,
        dns_names: tuple[str, ...] = DEFAULT_DNS_NAMES,
        ip_addresses: tuple[str, ...] = DEFAULT_IP_ADDRESSES,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: str = "ec",
    ) -> ServerCert:
        """Sign a TLS server certificate; pass a past `not_after` to get an expired one."""
        now = _now()
        not_before = not_before or now - dt.timedelta(hours=1)
        not_after = not_after or now + dt.timedelta(days=30)
        key = _new_key(key_type)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        common_name = (dns_names or ip_addresses or (name,))[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=key_type == "rsa",
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path = _write(out_dir / f"{name}.crt", _cert_pem(cert))
        key_path = _write(out_dir / f"{name}.key", _key_pem(key), 0o600)
        chain_path = _write(out_dir / f"{name}-chain.crt", _cert_pem(cert) + self.cert_pem)
        return ServerCert(
            name=name,
            cert_path=cert_path,
            key_path=key_path,
            chain_path=chain_path,
            ca=self,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            not_before=not_before,
            not_after=not_after,
            cert=cert,
            key=key,
        )

    def issue_signing_cert(self, out_dir: Path, name: str = "token-signer") -> SigningCert:
        """Sign an RSA certificate for signing JWTs (bearer tokens)."""
        now = _now()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return SigningCert(
            name=name,
            cert_path=_write(out_dir / f"{name}.crt", _cert_pem(cert)),
            key_path=_write(out_dir / f"{name}.key", _key_pem(key), 0o600),
            ca=self,
            cert=cert,
            key=key,
        )


@dataclass(frozen=True)
class ServerCert:
    """A server certificate and key on disk. `chain_path` holds leaf + CA."""

    name: str
    cert_path: Path
    key_path: Path
    chain_path: Path
    ca: CertificateAuthority
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    cert: x509.Certificate = field(repr=False)
    key: PrivateKey = field(repr=False)


@dataclass(frozen=True)
class SigningCert:
    """The RSA certificate/key a token service signs JWTs with (issued by the test CA)."""

    name: str
    cert_path: Path
    key_path: Path
    ca: CertificateAuthority
    cert: x509.Certificate = field(repr=False)
    key: rsa.RSAPrivateKey = field(repr=False)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


def make_ca(
    out_dir: Path, name: str = "transship-test-ca", key_type: str = "ec"
) -> CertificateAuthority:
    """Create a self-signed CA (BasicConstraints CA=true) and write `NAME.crt`/`NAME.key`."""
    now = _now()
    key = _new_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "transship tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
    cert_path = _write(out_dir / f"{name}.crt", _cert_pem(cert))
    key_path = _write(out_dir / f"{name}.key", _key_pem(key), 0o600)
    cert_dir = out_dir / f"{name}.certs.d"
    _write(cert_dir / "ca.crt", _cert_pem(cert))
    return CertificateAuthority(
        name=name, cert_path=cert_path, key_path=key_path, cert_dir=cert_dir, cert=cert, key=key
    )


@dataclass(frozen=True)
class PKI:
    """Everything TLS tests need, generated once per session.

    - `ca` signs `server` (localhost + 127.0.0.1), `expired` (valid SANs, not_after in the
      past), `wrong_host` (SAN `wrong-host.invalid` only) and `token_signer`.
    - `wrong_ca` is unrelated; `wrong_ca_server` has valid SANs but is signed by it.
    """

    root: Path
    ca: CertificateAuthority
    wrong_ca: CertificateAuthority
    server: ServerCert
    expired: ServerCert
    wrong_host: ServerCert
    wrong_ca_server: ServerCert
    token_signer: SigningCert

    @property
    def ca_pem_path(self) -> Path:
        return self.ca.cert_path


def build_pki(out_dir: Path) -> PKI:
    """Generate the whole test PKI under `out_dir` (takes well under a second)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = make_ca(out_dir, "transship-test-ca")
    wrong_ca = make_ca(out_dir, "transship-wrong-ca")
    now = _now()
    return PKI(
        root=out_dir,
        ca=ca,
        wrong_ca=wrong_ca,
        server=ca.issue_server_cert(out_dir, "server"),
        expired=ca.issue_server_cert(
            out_dir,
            "expired",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        ),
        wrong_host=ca.issue_server_cert(
            out_dir, "wrong-host", dns_names=("wrong-host.invalid",), ip_addresses=()
        ),
        wrong_ca_server=wrong_ca.issue_server_cert(out_dir, "wrong-ca-server"),
        token_signer=ca.issue_signing_cert(out_dir, "token-signer"),
    )
