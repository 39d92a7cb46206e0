"""TKG's own variables as defaults for the destination side (what TKG itself will use)."""

from __future__ import annotations

import os

from transship.connect import SideSettings


def tkg_dest_defaults(settings: SideSettings) -> SideSettings:
    """Fill destination CA / skip-verify from TKG's own variables when not given explicitly."""
    if settings.ca is None and os.environ.get("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"):
        settings.ca = os.environ["TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"]
        settings.ca_from = "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"
    skip = os.environ.get("TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY", "").lower()
    if skip == "true":
        settings.insecure = True
    return settings
