"""`transship tkg config`: settings parsed back, refused for an incomplete destination."""

from __future__ import annotations

import base64
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, seed_image

from transship.errors import ExitCode

CREDS = "alice:s3cret-Pa55"

CLUSTER_CONFIG = """\
#! ---------------------------------------------------------------------
#! Basic cluster creation configuration
#! ---------------------------------------------------------------------

CLUSTER_NAME: tkg-mgmt   # the management cluster
CLUSTER_PLAN: dev
INFRASTRUCTURE_PROVIDER: vsphere
VSPHERE_SERVER: "vcenter.corp.example"
VSPHERE_PASSWORD: "<encoded:c2VjcmV0>"

#! ---------------------------------------------------------------------
#! Image repository configuration
#! ---------------------------------------------------------------------

TKG_CUSTOM_IMAGE_REPOSITORY: ""   # set by transship
TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY: true
ENABLE_CEIP_PARTICIPATION: "false"
"""


def settings_of(stdout: str) -> dict[str, str]:
    """Parse `tanzu config set env.KEY VALUE` lines back, as a shell would split them."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        words = shlex.split(line)
        assert words[:3] == ["tanzu", "config", "set"], line
        assert words[3].startswith("env.") and len(words) == 5, line
        out[words[3].removeprefix("env.")] = words[4]
    return out


@pytest.fixture
def release(tls_registry: RegistryProcess, request: pytest.FixtureRequest) -> str:
    """A destination prefix holding tkg-compatibility v2 and v7 plus an imgpkg-style tag."""
    prefix = f"tkgcfg-{abs(hash(request.node.name)) % 10**8}"
    for tag in ("v2", "v7", "sha256-0123.imgpkg"):
        seed_image(tls_registry, f"{prefix}/tkg-compatibility", tag, seed=501, layer_sizes=(64,))
    return f"{tls_registry.host}/{prefix}"


def test_prints_tanzu_commands_that_parse_back(
    cli: CLI, release: str, pki: PKI, tmp_path: Path
) -> None:
    out = cli(
        "tkg", "config", "--dest", release, "--ca", str(pki.ca_pem_path), "--dest-creds", CREDS
    )
    assert out.code == 0, out.out + out.err
    settings = settings_of(out.out)
    assert list(settings) == [
        "TKG_CUSTOM_IMAGE_REPOSITORY",
        "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY",
        "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
    ]
    assert settings["TKG_CUSTOM_IMAGE_REPOSITORY"] == release
    assert settings["TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY"] == "false"
    ca_b64 = settings["TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"]
    assert (
        ca_b64
        == subprocess.run(
            ["base64", "-w", "0", str(pki.ca_pem_path)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert base64.b64decode(ca_b64) == pki.ca_pem_path.read_bytes()
    decoded = cli("ca", "decode", ca_b64, "-q")
    assert decoded.out.encode() == pki.ca_pem_path.read_bytes()
    assert "tkg-compatibility:v7" in out.err  # what was checked, on stderr


def test_base64_ca_and_tkg_variables_are_taken_as_given(
    cli: CLI, release: str, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_b64 = base64.b64encode(pki.ca_pem_path.read_bytes()).decode()
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY", release)
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE", ca_b64)
    monkeypatch.setenv("TRANSSHIP_DEST_CREDS", CREDS)
    out = cli("tkg", "config", "-q")
    assert out.code == 0, out.out + out.err
    assert out.err == ""
    settings = settings_of(out.out)
    assert settings["TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"] == ca_b64
    assert settings["TKG_CUSTOM_IMAGE_REPOSITORY"] == release


def test_skip_tls_verify_without_ca(cli: CLI, release: str) -> None:
    out = cli("tkg", "config", "--dest", release, "--skip-tls-verify", "--dest-creds", CREDS)
    assert out.code == 0, out.out + out.err
    settings = settings_of(out.out)
    assert settings == {
        "TKG_CUSTOM_IMAGE_REPOSITORY": release,
        "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY": "true",
    }


def test_refuses_without_a_tkg_release_unless_forced(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI
) -> None:
    empty = f"{tls_registry.host}/tkgcfg-empty"
    args = ["tkg", "config", "--dest", empty, "--ca", str(pki.ca_pem_path), "--dest-creds", CREDS]
    out = cli(*args)
    assert out.code == ExitCode.INCOMPLETE
    assert out.out == ""
    assert f"{empty}/tkg-compatibility has no tags" in out.error_line
    assert "--force" in out.error_line
    forced = cli(*args, "--force")
    assert forced.code == 0, forced.err
    assert "warning" in forced.err and "--force" in forced.err
    assert settings_of(forced.out)["TKG_CUSTOM_IMAGE_REPOSITORY"] == empty


def test_refuses_an_untrusted_registry(cli: CLI, release: str) -> None:
    out = cli("tkg", "config", "--dest", release, "--dest-creds", CREDS)
    assert out.code == ExitCode.TLS
    assert "unknown authority" in out.error_line
    assert out.out == ""


def test_refuses_a_ca_with_its_private_key(cli: CLI, release: str, pki: PKI, tmp_path: Path):
    both = tmp_path / "ca.pem"
    both.write_bytes(pki.ca.cert_path.read_bytes() + pki.ca.key_path.read_bytes())
    out = cli("tkg", "config", "--dest", release, "--ca", str(both), "--force")
    assert out.code == ExitCode.USAGE
    assert "private key" in out.error_line
    assert out.out == ""


@pytest.mark.parametrize("dest", ["https://harbor.example.com/tkg", "tkg", "harbor.example.com"])
def test_rejects_a_malformed_dest(cli: CLI, dest: str) -> None:
    out = cli("tkg", "config", "--dest", dest, "--force")
    assert out.code == ExitCode.USAGE
    assert dest in out.error_line


def test_write_cluster_config_keeps_comments_and_other_keys(
    cli: CLI, release: str, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a log or pipe of the default width
    config = tmp_path / "mgmt.yaml"
    config.write_text(CLUSTER_CONFIG)
    config.chmod(0o640)
    args = [
        "tkg",
        "config",
        "--dest",
        release,
        "--ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--write-cluster-config",
        str(config),
    ]
    out = cli(*args)
    assert out.code == 0, out.out + out.err
    assert out.out == ""  # written, not printed
    lines = out.err.splitlines()  # each message one line, however long, for logs and grep
    assert any(ln.startswith("transship: checked: ") and ln.endswith("first)") for ln in lines)
    assert any(ln.startswith("transship: set ") and ln.endswith(str(config)) for ln in lines)
    text = config.read_text()
    for line in CLUSTER_CONFIG.splitlines():
        if line.startswith(("#", "CLUSTER_NAME", "VSPHERE", "ENABLE", "CLUSTER_PLAN")):
            assert line in text, f"lost: {line!r}"
    [line] = [ln for ln in text.splitlines() if ln.startswith("TKG_CUSTOM_IMAGE_REPOSITORY:")]
    assert release in line and line.endswith("# set by transship")  # comment kept on its key
    doc = yaml.safe_load(text)
    before = yaml.safe_load(CLUSTER_CONFIG)
    for key, value in before.items():
        if not key.startswith("TKG_CUSTOM"):
            assert doc[key] == value
    assert doc["TKG_CUSTOM_IMAGE_REPOSITORY"] == release
    assert doc["TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY"] is False
    ca_b64 = doc["TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"]
    assert base64.b64decode(ca_b64) == pki.ca_pem_path.read_bytes()
    assert list(doc)[-1] == "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"  # appended, order kept
    assert config.stat().st_mode & 0o777 == 0o640
    again = cli(*args)
    assert again.code == 0
    assert config.read_text() == text  # idempotent


def test_write_cluster_config_creates_a_new_file(cli: CLI, release: str, tmp_path: Path) -> None:
    config = tmp_path / "new" / "cluster.yaml"
    out = cli(
        "tkg",
        "config",
        "--dest",
        release,
        "--skip-tls-verify",
        "--dest-creds",
        CREDS,
        "--write-cluster-config",
        str(config),
    )
    assert out.code == 0, out.err
    assert yaml.safe_load(config.read_text()) == {
        "TKG_CUSTOM_IMAGE_REPOSITORY": release,
        "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY": True,
    }


def test_write_cluster_config_refuses_invalid_yaml(
    cli: CLI, release: str, pki: PKI, tmp_path: Path
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("CLUSTER_NAME: ok\nOTHER: [unclosed\n")
    out = cli(
        "tkg",
        "config",
        "--dest",
        release,
        "--ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--write-cluster-config",
        str(config),
    )
    assert out.code == ExitCode.USAGE
    assert "not valid YAML" in out.error_line
    assert f"{config}:3:1: " in out.error_line, out.error_line  # where (the end, still open)
    assert config.read_text() == "CLUSTER_NAME: ok\nOTHER: [unclosed\n"


def test_plan_check_refuses_an_incomplete_destination(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
) -> None:
    images = [
        seed_image(plain_registry, f"tkgsrc/img{i}", "v1", seed=520 + i, layer_sizes=(256,))
        for i in range(3)
    ]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(plain_registry.ref(f"tkgsrc/img{i}:v1\n") for i in range(3)))
    dest = f"{tls_registry.host}/tkgcfg-plan"
    ca = ["--ca", str(pki.ca_pem_path), "--dest-creds", CREDS]
    copy = cli(
        "copy",
        "--images",
        str(listing),
        "--dest",
        dest,
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
    )
    assert copy.code == 0, copy.err
    ok = cli("tkg", "config", "--dest", dest, *ca, "--images", str(listing))
    assert ok.code == 0, ok.out + ok.err
    assert "complete: 3 entries" in ok.err
    assert settings_of(ok.out)["TKG_CUSTOM_IMAGE_REPOSITORY"] == dest

    client = SeedClient.for_registry(tls_registry)
    client.delete_manifest("tkgcfg-plan/tkgsrc/img1", images[1].digest)
    refused = cli("tkg", "config", "--dest", dest, *ca, "--images", str(listing))
    assert refused.code == ExitCode.INCOMPLETE
    assert refused.out == ""
    assert "incomplete" in refused.error_line and "1 missing" in refused.error_line
    assert "tkgcfg-plan/tkgsrc/img1:v1" in refused.err  # the table names it
    forced = cli("tkg", "config", "--dest", dest, *ca, "--images", str(listing), "--force")
    assert forced.code == 0
    assert settings_of(forced.out)["TKG_CUSTOM_IMAGE_REPOSITORY"] == dest


def test_plan_for_another_destination_is_refused(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "apiVersion: transship/v1alpha1\nkind: Plan\ncreated: '2024-01-01T00:00:00Z'\n"
        "entries:\n- source: registry.example.com/a/b:v1\n"
        f"  destination: {tls_registry.host}/elsewhere/b\n  tags: [v1]\n  kind: image\n"
    )
    out = cli(
        "tkg",
        "config",
        "--dest",
        f"{tls_registry.host}/tkg",
        "--ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--plan",
        str(plan),
    )
    assert out.code == ExitCode.INCOMPLETE
    assert "none of the plan's 1 entries go below" in out.error_line


def test_the_plan_an_archive_carried_checks_where_it_was_loaded(
    cli: CLI, plain_registry: RegistryProcess, tls_registry: RegistryProcess, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The air gap: saved without --dest, loaded with --dest; the carried plan (made for the
    placeholder) is moved below `tkg config --dest` as the load moved the archive."""
    seed_image(plain_registry, "tkgair/img", "v1", seed=530, layer_sizes=(256,))
    listing = tmp_path / "images.txt"
    listing.write_text(plain_registry.ref("tkgair/img:v1\n"))
    archive = tmp_path / "tkg.tar"
    assert cli("save", "--images", str(listing), "-o", str(archive), "-q").code == 0
    dest = f"{tls_registry.host}/tkgair-site"
    ca = ["--ca", str(pki.ca_pem_path), "--dest-creds", CREDS]
    out = cli("load", str(archive), "--dest", dest, "--dest-ca", str(pki.ca_pem_path),
              "--dest-creds", CREDS, "-q")  # fmt: skip
    assert out.code == 0, out.err
    carried = tmp_path / "plan.yaml"
    with tarfile.open(archive) as tar:
        member = tar.extractfile("transship/plan.yaml")
        assert member is not None
        carried.write_bytes(member.read())
    ok = cli("tkg", "config", "--dest", dest, *ca, "--plan", str(carried))
    assert ok.code == 0, ok.out + ok.err
    assert "complete: 1 entries" in ok.err


def test_skip_tls_verify_variable_is_honoured_as_verify_honours_it(
    cli: CLI,
    release: str,
    tls_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY=true lets the check reach a registry whose CA
    is not trusted (as verify does) and is emitted as `true`: never turned into false."""
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY", "true")
    out = cli("tkg", "config", "--dest", release, "--dest-creds", CREDS)
    assert out.code == 0, out.out + out.err
    assert settings_of(out.out) == {
        "TKG_CUSTOM_IMAGE_REPOSITORY": release,
        "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY": "true",
    }
    config = tmp_path / "cluster.yaml"
    written = cli(
        "tkg",
        "config",
        "--dest",
        release,
        "--dest-creds",
        CREDS,
        "--write-cluster-config",
        str(config),
    )
    assert written.code == 0, written.err
    assert yaml.safe_load(config.read_text())["TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY"] is True
    # --force on a destination that fails its check still emits what the operator set
    empty = f"{tls_registry.host}/tkgcfg-empty-skip"
    forced = cli("tkg", "config", "--dest", empty, "--dest-creds", CREDS, "--force")
    assert forced.code == 0, forced.err
    assert "has no tags" in " ".join(forced.err.split())  # reached, failed on content
    assert settings_of(forced.out)["TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY"] == "true"
    # any other value is not `true`: the certificate is checked, as verify checks it
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY", "false")
    checked = cli("tkg", "config", "--dest", release, "--dest-creds", CREDS)
    assert checked.code == ExitCode.TLS
    assert checked.out == ""


def test_write_cluster_config_keeps_crlf_line_endings(
    cli: CLI, release: str, pki: PKI, tmp_path: Path
) -> None:
    """A cluster configuration edited on Windows stays CRLF: only the keys change."""
    config = tmp_path / "windows.yaml"
    original = CLUSTER_CONFIG.replace("\n", "\r\n").encode()
    config.write_bytes(original)
    args = [
        "tkg",
        "config",
        "--dest",
        release,
        "--ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--write-cluster-config",
        str(config),
    ]
    out = cli(*args)
    assert out.code == 0, out.out + out.err
    data = config.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n")  # every line ends in CRLF
    assert b"\r\r" not in data
    lines = data.decode().split("\r\n")
    for line in CLUSTER_CONFIG.splitlines():
        if line.startswith(("#", "CLUSTER_NAME", "VSPHERE", "ENABLE")):
            assert line in lines, f"lost: {line!r}"
    doc = yaml.safe_load(data)
    assert doc["TKG_CUSTOM_IMAGE_REPOSITORY"] == release
    assert base64.b64decode(doc["TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"]) == (
        pki.ca_pem_path.read_bytes()
    )
    again = cli(*args)
    assert again.code == 0
    assert config.read_bytes() == data  # idempotent
    lf = tmp_path / "unix.yaml"
    lf.write_text(CLUSTER_CONFIG)
    assert cli(*args[:-1], str(lf)).code == 0
    assert b"\r" not in lf.read_bytes()  # an LF file stays LF
