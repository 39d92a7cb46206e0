"""The exit codes the README promises for a missing Harbor project, for basic-auth and token
Harbor alike (against the Harbor emulator in front of a real `docker-registry`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image
from test_harbor import BOB, MakeHarbor, dest_args, harbor  # noqa: F401 (harbor: a fixture)

from transship.errors import ExitCode


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_missing_project_exit_codes_as_the_readme_says(
    cli: CLI,
    harbor: MakeHarbor,  # noqa: F811 (the fixture imported above)
    plain_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    auth: str,
) -> None:
    """--preflight asks Harbor's project API: exit 4 whatever the auth, copy and load alike.
    Without it the refused push decides: 4 on basic-auth Harbor (404 NAME_UNKNOWN), 3 on token
    Harbor (the token carries no push), both with the "create the project" line."""
    h = harbor(auth=auth)
    seed_image(plain_registry, f"hx{auth}/e", "v1", seed=147)
    src = plain_registry.ref(f"hx{auth}/e:v1")
    listing = tmp_path / "images.txt"
    listing.write_text(src + "\n")
    archive = tmp_path / "e.tar"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    for user in (BOB, None):
        creds = dest_args(pki, user) if user else dest_args(pki)
        copied = cli(
            "copy", "--images", str(listing), "--dest", f"{h.host}/absent", "--preflight", *creds
        )
        assert copied.code == ExitCode.NOT_FOUND, (auth, copied.err)
        assert "Harbor project(s) missing: 'absent'" in copied.error_line
        loaded = cli("load", str(archive), "--dest", f"{h.host}/absent", "--preflight", *creds)
        assert loaded.code == ExitCode.NOT_FOUND, (auth, loaded.err)
        assert "Harbor project(s) missing: 'absent'" in loaded.error_line
    pushed = cli("copy", src, h.ref("absent/e:v1"), *dest_args(pki, BOB))
    assert pushed.code == (ExitCode.NOT_FOUND if auth == "basic" else ExitCode.AUTH), pushed.err
    assert "create the project 'absent'" in pushed.error_line
    assert "absent" not in h.projects
