"""Harbor-style refusals say "create the project first"; --preflight finds them early."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image
from harness.tokenserver import TokenServer

from transship.errors import ExitCode

CREDS = "alice:s3cret-Pa55"


def no_project_missing(
    user: str | None, rtype: str, name: str, actions: frozenset[str]
) -> Iterable[str]:
    """Like Harbor: nothing but pull is granted in a project that does not exist."""
    if name.startswith("missing/"):
        return actions & {"pull"}
    return actions if user else actions & {"pull"}


def test_preflight_names_the_missing_project_before_any_upload(
    cli: CLI,
    plain_registry: RegistryProcess,
    token_registry: RegistryProcess,
    token_server: TokenServer,
    pki: PKI,
    tmp_path: Path,
) -> None:
    seed_image(plain_registry, "pf/app", "v1", seed=61)
    listing = tmp_path / "images.txt"
    listing.write_text(plain_registry.ref("pf/app:v1") + "\n")
    common = ["--dest-ca", str(pki.ca_pem_path), "--dest-creds", CREDS]
    with token_server.override(policy=no_project_missing):
        mark = token_registry.log_offset()
        out = cli(
            "copy",
            "--images",
            str(listing),
            "--dest",
            f"{token_registry.host}/missing",
            "--preflight",
            *common,
        )
        assert out.code == ExitCode.AUTH
        assert "preflight" in out.error_line and "create the project 'missing'" in out.error_line
        assert token_registry.blob_uploads(since=mark) == []
        # without --preflight the push itself fails with the same advice, per image
        out = cli(
            "copy", plain_registry.ref("pf/app:v1"), token_registry.ref("missing/app:v1"), *common
        )
        assert out.code == ExitCode.AUTH and "create the project 'missing'" in out.error_line
        # a project that exists passes the preflight and copies
        out = cli(
            "copy",
            "--images",
            str(listing),
            "--dest",
            f"{token_registry.host}/present",
            "--preflight",
            *common,
            "-q",
        )
        assert out.code == 0, out.err


def test_preflight_says_a_wrong_password_once_not_once_per_repository(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI, tmp_path: Path
) -> None:
    # three repositories in an archive, then a load into a password registry with a wrong one
    archive = tmp_path / "three"
    listing = tmp_path / "images.txt"
    refs = []
    for n in range(3):
        seed_image(tls_registry, f"pfpw/app{n}", "v1", seed=70 + n)
        refs.append(tls_registry.ref(f"pfpw/app{n}:v1"))
    listing.write_text("\n".join(refs) + "\n")
    ca = ["--src-ca", str(pki.ca_pem_path), "--src-creds", CREDS]
    out = cli("save", "--images", str(listing), "-o", str(archive), *ca, "-q")
    assert out.code == 0, out.err
    side = ["--dest", f"{tls_registry.host}/pfpw-far", "--dest-ca", str(pki.ca_pem_path)]
    out = cli("load", str(archive), *side, "--dest-creds", "alice:wrong", "--preflight", "-q")
    assert out.code == ExitCode.AUTH, out.err
    lines = [ln for ln in out.err.splitlines() if ln.startswith("transship: preflight: ")]
    assert len(lines) == 1 and "(3 repositories)" in lines[0], out.err
    assert "wrong username or password" in lines[0]
    # the count belongs to the message: it comes before the hint (what to do), not after it
    message, _, hint = lines[0].partition(" (3 repositories)")
    assert "wrong username or password" in message and hint.startswith(" ("), out.err
