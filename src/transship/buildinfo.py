"""Which transship this is: the version, and the commit it was built from.

The single-file build (`scripts/build-binary.sh`) bundles a generated module,
`_transship_build_info`, holding the commit; it never lives in the source tree, so a venv
install of a later commit cannot report a stale one. A venv install asks git for the commit of
its source checkout instead, and says "unknown" when there is none.
"""

from __future__ import annotations

import importlib
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from transship import __version__

BUILD_INFO_MODULE = "_transship_build_info"
#: the commit as scripts/build-binary.sh names it: abbreviated hash, never a tag name
GIT_DESCRIBE = ("describe", "--always", "--dirty", "--abbrev=12", "--exclude=*")


@cache
def commit() -> str:
    """The commit this program was built from (`-dirty` if the tree had changes), or 'unknown'."""
    try:
        module = importlib.import_module(BUILD_INFO_MODULE)
    except ImportError:
        pass
    else:
        return str(getattr(module, "COMMIT", "unknown"))
    if getattr(sys, "frozen", False):
        return "unknown"  # a frozen build without build info: nothing else to ask
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *GIT_DESCRIBE],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    found = done.stdout.strip()
    return found if done.returncode == 0 and found else "unknown"


def is_single_file() -> bool:
    """True when running as the PyInstaller one-file executable."""
    return bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def version_line() -> str:
    kind = "single-file build" if is_single_file() else "python install"
    return f"transship {__version__} (commit {commit()}, {kind})"


#: Where distributions keep their CA bundle (the list Go's crypto/x509 searches on Linux).
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7
    "/etc/ssl/cert.pem",  # Alpine
)


def system_roots_file(
    env: Mapping[str, str], defaults: ssl.DefaultVerifyPaths, candidates: Sequence[str] = CA_BUNDLES
) -> str | None:
    """The CA bundle to point OpenSSL at, or None to leave it alone.

    The single-file build carries the build machine's libcrypto, which looks for system roots
    where that distribution keeps them (`/usr/lib/ssl` on Debian). Elsewhere (RHEL, SUSE,
    Alpine) nothing is there; then the distribution's own bundle is used. An `SSL_CERT_FILE` or
    `SSL_CERT_DIR` the user set always wins.
    """
    if env.get("SSL_CERT_FILE") or env.get("SSL_CERT_DIR"):
        return None
    if defaults.cafile or defaults.capath:  # set only when the file / directory exists
        return None
    return next((c for c in candidates if Path(c).is_file()), None)


def adopt_system_roots() -> None:
    """In the single-file build, make the system's CA bundle the default trust (see above)."""
    if is_single_file():
        found = system_roots_file(os.environ, ssl.get_default_verify_paths())
        if found:
            os.environ["SSL_CERT_FILE"] = found


#: OpenSSL's variables for its default trust locations, read each time a context loads them
_OPENSSL_TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def import_http_client() -> None:
    """Import aiohttp without loading the system CA bundle twice for nothing.

    aiohttp builds two default TLS contexts when it is imported, each loading the system roots
    (~50 ms of CPU apiece, a tenth of a no-op rerun's start-up). transship never uses them:
    every connector it makes is given its own context (`remote.tls.shared_ssl_context`, `ca
    check`'s). So, for the first import only, OpenSSL's default locations point at an empty
    file, and are restored before anything else runs: every context built afterwards loads
    the real roots (or `SSL_CERT_FILE` as the user or `adopt_system_roots` set it). Only
    while this is the process's one thread: the environment is process-wide.
    """
    if "aiohttp" in sys.modules:
        return
    if threading.active_count() > 1:  # another thread could build a context meanwhile
        importlib.import_module("aiohttp")
        return
    saved = {name: os.environ.get(name) for name in _OPENSSL_TRUST_VARIABLES}
    try:
        for name in _OPENSSL_TRUST_VARIABLES:
            os.environ[name] = os.devnull
        importlib.import_module("aiohttp")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
