"""`load_ca`: a self-signed CA is recognised by OpenSSL alone; everything else still gets the
full check (which reads the certificate with cryptography) and its one-line refusals."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness.pki import PKI

from transship.errors import CertificateError
from transship.remote.tls import _self_signed_cas, load_ca


def _cert(
    subject: str, issuer: str | None = None, *, ca: bool | None, key_cert_sign: bool = False
) -> bytes:
    """A certificate named `subject`, issued by `issuer` (itself by default), with
    basicConstraints CA:`ca` (none when None) and a keyUsage allowing certificate signing
    when `key_cert_sign`; signed by a throwaway key (only names and extensions matter)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if key_cert_sign:
        usage = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        builder = builder.add_extension(x509.KeyUsage(key_cert_sign=True, **usage), True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_self_signed_ca_and_a_bundle_of_them_need_no_cryptography(pki: PKI) -> None:
    assert _self_signed_cas(pki.ca.cert_pem)
    assert _self_signed_cas(pki.ca.cert_pem + pki.wrong_ca.cert_pem)
    bundle = load_ca(pki.ca.cert_pem.decode())
    assert bundle.pem == pki.ca.cert_pem and bundle.origin == "PEM text"


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(_cert("inter", "root", ca=True), id="an intermediate CA"),
        pytest.param(_cert("leaf", "root", ca=False), id="a server certificate"),
        pytest.param(_cert("self", ca=False), id="self-signed, CA:FALSE"),
        pytest.param(_cert("ku", "root", ca=None, key_cert_sign=True), id="keyUsage, no BC"),
        pytest.param(_cert("old", ca=None), id="self-signed without basicConstraints"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="junk"),
    ],
)
def test_anything_but_self_signed_cas_gets_the_full_check(pem: bytes) -> None:
    """What OpenSSL alone does not show to be a self-signed CA is left to the full check
    (`test_the_full_check_keeps_its_verdicts`); keyUsage alone makes a CA for OpenSSL, not
    for that check, so it is never taken on OpenSSL's word."""
    assert not _self_signed_cas(pem)


def test_the_full_check_keeps_its_verdicts(pki: PKI) -> None:
    accepted = [
        _cert("inter", "root", ca=True),
        _cert("old", ca=None),
        pki.ca.cert_pem + _cert("inter", "root", ca=True),
    ]
    for pem in accepted:
        assert load_ca(pem.decode()).pem == pem
    refused = {
        _cert("leaf", "root", ca=False): "is not a CA (basicConstraints CA:FALSE)",
        _cert("self", ca=False): "is not a CA (basicConstraints CA:FALSE)",
        _cert("ku", "root", ca=None, key_cert_sign=True): "no basicConstraints",
        pki.ca.cert_pem + _cert("leaf", "root", ca=False): "is not a CA",
        pki.server.cert_path.read_bytes(): "is not a CA",
    }
    for pem, why in refused.items():
        with pytest.raises(CertificateError, match=why.replace("(", r"\(").replace(")", r"\)")):
            load_ca(pem.decode(), given_as="--dest-ca")
