"""TKG's CA form: the PEM CA base64-encoded on one line, and never with a key beside it.

`TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE` holds it; `transship ca encode` and `tkg config`
write it.
"""

from __future__ import annotations

import base64

from transship.errors import CertificateError
from transship.remote.tls import CABundle


def tkg_ca_form(bundle: CABundle) -> str:
    """The single-line form TKG takes (same bytes as `base64 -w 0 FILE`)."""
    return base64.b64encode(bundle.pem).decode("ascii")


def refuse_private_key(bundle: CABundle) -> None:
    """A CA that travels into TKG settings must never carry a key: it would reach every node."""
    if b"PRIVATE KEY-----" in bundle.pem:
        raise CertificateError(
            f"{bundle.origin} contains a private key; give only the CA certificate "
            "(the key must never leave the CA)"
        )
