"""`transship copy` against real registries, checked with skopeo (an independent client)."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from pathlib import Path

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_image, seed_image, seed_index
from harness.skopeo import Skopeo
from harness.tokenserver import TokenServer

from transship.errors import ExitCode
from transship.fsutil import write_atomic

CREDS = "alice:s3cret-Pa55"


def dest_args(reg: RegistryProcess, pki: PKI) -> list[str]:
    return ["--dest-ca", str(pki.ca_pem_path), "--dest-creds", CREDS]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_copy_image_plain_to_tls_basic(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
    fmt: str,
) -> None:
    image = seed_image(
        plain_registry, f"core/img-{fmt}", "v1", seed=11, fmt=fmt, layer_sizes=(200_000, 3_000_000)
    )
    out = cli(
        "copy",
        plain_registry.ref(f"core/img-{fmt}:v1"),
        tls_registry.ref(f"mirror/img-{fmt}"),
        *dest_args(tls_registry, pki),
    )
    assert out.code == 0, out.err
    raw = skopeo(tls_registry, f"mirror/img-{fmt}:v1")  # tag defaulted from the source
    assert raw == image.manifest
    assert sha(raw) == image.digest


def test_copy_index_to_token_registry_all_children(
    cli: CLI,
    plain_registry: RegistryProcess,
    token_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
) -> None:
    index = seed_index(plain_registry, "core/multi", "v2", seed=12, fmt="docker")
    out = cli(
        "copy",
        plain_registry.ref("core/multi:v2"),
        token_registry.ref("tkg/multi:v2"),
        *dest_args(token_registry, pki),
    )
    assert out.code == 0, out.err
    assert skopeo(token_registry, "tkg/multi:v2") == index.manifest
    for child in index.images:
        assert skopeo(token_registry, f"tkg/multi@{child.digest}") == child.manifest


def test_rerun_sends_no_blob_bytes_and_one_request_per_manifest(
    cli: CLI, plain_registry: RegistryProcess, tls_registry: RegistryProcess, pki: PKI
) -> None:
    seed_index(plain_registry, "core/again", "v1", seed=13)
    args = [
        "copy",
        plain_registry.ref("core/again:v1"),
        tls_registry.ref("mirror/again:v1"),
        *dest_args(tls_registry, pki),
    ]
    assert cli(*args).code == 0
    assert tls_registry.wait_for_log(r"PUT /v2/mirror/again/manifests/v1")
    mark = tls_registry.log_offset()
    second = cli(*args)
    assert second.code == 0
    assert "skipped" in second.err or "0 / 1 / 0" in second.err
    tls_registry.wait_for_log(r"HEAD /v2/mirror/again/manifests/v1", since=mark)
    after = [e for e in tls_registry.access_log(since=mark) if e.path.startswith("/v2/mirror")]
    assert tls_registry.blob_uploads(since=mark) == []
    assert [(e.method, e.path) for e in after] == [
        ("GET", "/v2/mirror/again/tags/list?n=1000"),  # one tag list per repository
        ("HEAD", "/v2/mirror/again/manifests/v1"),  # a listed tag is still HEADed
    ]


def test_copy_by_digest_keeps_digest_and_pushes_untagged(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
) -> None:
    image = seed_image(plain_registry, "core/bydigest", "v1", seed=14)
    out = cli(
        "copy",
        plain_registry.ref(f"core/bydigest@{image.digest}"),
        tls_registry.ref("mirror/bydigest"),
        *dest_args(tls_registry, pki),
    )
    assert out.code == 0, out.err
    assert skopeo(tls_registry, f"mirror/bydigest@{image.digest}") == image.manifest
    assert tls_registry.requests("PUT", rf"/v2/mirror/bydigest/manifests/{image.digest}")


def test_platform_filter_copies_one_child(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
) -> None:
    index = seed_index(plain_registry, "core/plat", "v1", seed=15)
    arm = next(i for i in index.images if i.platform["architecture"] == "arm64")
    out = cli(
        "copy",
        plain_registry.ref("core/plat:v1"),
        tls_registry.ref("mirror/plat:arm"),
        "--platform",
        "linux/arm64",
        *dest_args(tls_registry, pki),
    )
    assert out.code == 0, out.err
    assert skopeo(tls_registry, "mirror/plat:arm") == arm.manifest
    missing = cli(
        "copy",
        plain_registry.ref("core/plat:v1"),
        tls_registry.ref("mirror/plat:s"),
        "--platform",
        "linux/s390x",
        *dest_args(tls_registry, pki),
    )
    assert missing.code == ExitCode.NOT_FOUND
    assert "linux/amd64" in missing.error_line and "linux/s390x" in missing.error_line


def test_ca_as_tkg_base64_and_from_tkg_variable(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = seed_image(plain_registry, "core/b64", "v1", seed=16)
    b64 = base64.b64encode(pki.ca_pem_path.read_bytes()).decode()
    out = cli(
        "copy",
        plain_registry.ref("core/b64:v1"),
        tls_registry.ref("mirror/b64:a"),
        "--dest-ca",
        b64,
        "--dest-creds",
        CREDS,
    )
    assert out.code == 0, out.err
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE", b64)
    monkeypatch.setenv("TRANSSHIP_DEST_CREDS", CREDS)
    out = cli("copy", plain_registry.ref("core/b64:v1"), tls_registry.ref("mirror/b64:b"))
    assert out.code == 0, out.err
    assert skopeo(tls_registry, "mirror/b64:b") == image.manifest


def test_credentials_from_docker_config(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_image(plain_registry, "core/cfg", "v1", seed=17)
    config = tmp_path / "dockercfg"
    config.mkdir()
    auth = base64.b64encode(CREDS.encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {tls_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    out = cli(
        "copy",
        plain_registry.ref("core/cfg:v1"),
        tls_registry.ref("mirror/cfg:v1"),
        "--dest-ca",
        str(pki.ca_pem_path),
    )
    assert out.code == 0, out.err


def test_anonymous_pull_from_token_registry(
    cli: CLI,
    plain_registry: RegistryProcess,
    token_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
) -> None:
    image = seed_image(token_registry, "public/anon", "v1", seed=18)
    out = cli(
        "copy",
        token_registry.ref("public/anon:v1"),
        plain_registry.ref("anon/copy:v1"),
        "--src-ca",
        str(pki.ca_pem_path),
    )
    assert out.code == 0, out.err
    assert skopeo(plain_registry, "anon/copy:v1") == image.manifest


# -- errors, each produced for real -------------------------------------------------------


@pytest.fixture(scope="module")
def source_image(plain_registry: RegistryProcess) -> str:
    seed_image(plain_registry, "core/src", "v1", seed=19)
    return plain_registry.ref("core/src:v1")


def test_unknown_ca_names_issuer_and_option(
    cli: CLI, source_image: str, tls_registry: RegistryProcess, pki: PKI
) -> None:
    out = cli(
        "copy",
        source_image,
        tls_registry.ref("e/ca:v1"),
        "--dest-creds",
        CREDS,
        "--dest-ca",
        str(pki.wrong_ca.cert_path),
    )
    assert out.code == ExitCode.TLS
    assert "unknown authority" in out.error_line
    assert "transship-test-ca" in out.error_line and "--dest-ca" in out.error_line


def test_hostname_mismatch(
    cli: CLI,
    source_image: str,
    make_registry,
    pki: PKI,  # type: ignore[no-untyped-def]
) -> None:
    reg = make_registry("tls", cert=pki.wrong_host)
    out = cli("copy", source_image, reg.ref("e/host:v1"), "--dest-ca", str(pki.ca_pem_path))
    assert out.code == ExitCode.TLS
    assert "hostname mismatch" in out.error_line and "wrong-host.invalid" in out.error_line


def test_expired_certificate(
    cli: CLI,
    source_image: str,
    make_registry,
    pki: PKI,  # type: ignore[no-untyped-def]
) -> None:
    reg = make_registry("tls", cert=pki.expired)
    out = cli("copy", source_image, reg.ref("e/exp:v1"), "--dest-ca", str(pki.ca_pem_path))
    assert out.code == ExitCode.TLS
    assert "expired" in out.error_line


def test_insecure_skips_verification_for_that_side_only(
    cli: CLI,
    source_image: str,
    make_registry,
    pki: PKI,  # type: ignore[no-untyped-def]
) -> None:
    """Both registries serve an expired certificate from the trusted CA: `--dest-insecure`
    lets the destination through and still refuses the source, and the other way round."""
    src = make_registry("tls", cert=pki.expired)
    dest = make_registry("tls", cert=pki.expired)
    seeder = SeedClient.for_registry(src)
    seeder.ssl_context = ssl._create_unverified_context()  # the seeder only, not transship
    image = build_image(23)
    seeder.push_image("e/src", image, "v1")
    trust = ("--src-ca", str(pki.ca_pem_path), "--dest-ca", str(pki.ca_pem_path))
    source, target = src.ref("e/src:v1"), dest.ref("e/insecure:v1")

    out = cli("copy", source, target, *trust, "--dest-insecure")
    assert out.code == ExitCode.TLS  # the source side is still verified
    assert src.host in out.error_line and "expired" in out.error_line
    out = cli("copy", source, target, *trust, "--src-insecure")
    assert out.code == ExitCode.TLS  # and the destination side when only the source is lax
    assert dest.host in out.error_line and "expired" in out.error_line
    assert src.host not in out.error_line.replace(target, "")

    out = cli("copy", source, target, *trust, "--src-insecure", "--dest-insecure")
    assert out.code == 0, out.err
    check = SeedClient.for_registry(dest)
    check.ssl_context = ssl._create_unverified_context()
    assert check.get_manifest("e/insecure", "v1")[0] == image.manifest
    out = cli("copy", source_image, dest.ref("e/plain:v1"), "--dest-insecure")  # plain source
    assert out.code == 0, out.err


def test_wrong_password(cli: CLI, source_image: str, tls_registry: RegistryProcess, pki: PKI):
    out = cli(
        "copy",
        source_image,
        tls_registry.ref("e/pw:v1"),
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        "alice:wrong-password",
    )
    assert out.code == ExitCode.AUTH
    assert "wrong username or password" in out.error_line
    assert "wrong-password" not in out.err


def test_wrong_password_token_registry(
    cli: CLI, source_image: str, token_registry: RegistryProcess, pki: PKI
) -> None:
    out = cli(
        "copy",
        source_image,
        token_registry.ref("e/pw:v1"),
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        "alice:wrong-password",
    )
    assert out.code == ExitCode.AUTH
    assert "wrong username or password" in out.error_line


def test_missing_credentials(
    cli: CLI, source_image: str, token_registry: RegistryProcess, pki: PKI
):
    out = cli(
        "copy", source_image, token_registry.ref("e/anon:v1"), "--dest-ca", str(pki.ca_pem_path)
    )
    assert out.code == ExitCode.AUTH
    assert "requires credentials" in out.error_line and "--dest-creds" in out.error_line


def test_no_permission(
    cli: CLI,
    source_image: str,
    token_registry: RegistryProcess,
    token_server: TokenServer,
    pki: PKI,
) -> None:
    with token_server.override(user_actions=frozenset({"pull"})):
        out = cli(
            "copy",
            source_image,
            token_registry.ref("e/denied:v1"),
            "--dest-ca",
            str(pki.ca_pem_path),
            "--dest-creds",
            CREDS,
        )
    assert out.code == ExitCode.AUTH
    assert "no permission" in out.error_line


def test_repository_and_tag_not_found(
    cli: CLI, plain_registry: RegistryProcess, tls_registry: RegistryProcess, pki: PKI
) -> None:
    out = cli(
        "copy",
        plain_registry.ref("core/absent:v1"),
        tls_registry.ref("e/nf:v1"),
        *dest_args(tls_registry, pki),
    )
    assert out.code == ExitCode.NOT_FOUND
    assert "core/absent:v1" in out.error_line and "not found" in out.error_line


def test_unreachable(cli: CLI, source_image: str) -> None:
    out = cli("copy", source_image, "127.0.0.1:9/e/x:v1", "--dest-plain-http")
    assert out.code == ExitCode.UNREACHABLE
    assert "connection refused" in out.error_line


def test_invalid_reference_and_bad_ca(cli: CLI, source_image: str, pki: PKI) -> None:
    out = cli("copy", "Bad/Ref:v1", "127.0.0.1:9/x:v1")
    assert out.code == ExitCode.USAGE and "invalid image reference 'Bad/Ref:v1'" in out.error_line
    out = cli("copy", source_image, "127.0.0.1:9/x:v1", "--dest-ca", str(pki.server.cert_path))
    assert out.code == ExitCode.USAGE and "not a CA" in out.error_line
    out = cli("copy", source_image, "127.0.0.1:9/x:v1", "--dest-ca", "bm90IGEgY2VydA==")
    assert out.code == ExitCode.USAGE and "not a PEM certificate" in out.error_line
    out = cli("copy", source_image, "127.0.0.1:9/x:v1", "--dest-ca", "/nonexistent/ca.pem")
    assert out.code == ExitCode.USAGE and "does not exist" in out.error_line
    assert out.error_line.startswith("transship: error: --dest-ca: ")


def test_ca_errors_name_where_the_value_was_given_and_what_it_is(
    cli: CLI, source_image: str, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo'd relative path is a missing file (not "bad base64"); a private key is said to
    be one; a bad CA in TKG's variable names the variable."""
    monkeypatch.chdir(tmp_path)
    out = cli("copy", source_image, "127.0.0.1:9/x:v1", "--dest-ca", "ca.crtx")
    assert out.code == ExitCode.USAGE, out.err
    assert out.error_line.startswith("transship: error: --dest-ca: no CA file ca.crtx")
    out = cli("copy", source_image, "127.0.0.1:9/x:v1", "--src-ca", str(pki.server.key_path))
    assert out.code == ExitCode.USAGE, out.err
    assert "--src-ca: " in out.error_line and "holds a PEM PRIVATE KEY" in out.error_line
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE", "garbage!")
    out = cli("copy", source_image, "127.0.0.1:9/x:v1", "--dest-plain-http")
    assert out.code == ExitCode.USAGE, out.err
    assert "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE: no CA file garbage!" in out.error_line
    assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err


def test_debug_output_and_report_never_contain_secrets(
    source_image: str,
    token_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
) -> None:
    """Run as a user would, at the chattiest log level, and grep everything it wrote."""
    import os
    import subprocess
    import sys

    from clirunner import assert_no_secrets

    for reg, password in ((token_registry, "s3cret-Pa55"), (tls_registry, "wrong-password")):
        report = tmp_path / f"report-{reg.mode}.json"
        env = {
            **os.environ,
            "DOCKER_CONFIG": str(tmp_path),
            "TRANSSHIP_DEST_CREDS": f"alice:{password}",
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "transship",
                "copy",
                source_image,
                reg.ref("secret/x:v1"),
                "--dest-ca",
                str(pki.ca_pem_path),
                "-vv",
                "--report",
                str(report),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode in (0, ExitCode.AUTH), proc.stderr
        assert "DEBUG" in proc.stderr  # the debug log really was on
        assert_no_secrets(proc.stdout + proc.stderr, "debug output")
        assert_no_secrets(report.read_text(), "the report")


def test_an_output_file_that_cannot_be_written_is_refused_before_any_work(
    cli: CLI, source_image: str, tmp_path: Path
) -> None:
    """`--report`, `--lock-output` and `plan -o` are checked before the run, and a write that
    fails names the file given, never the temporary file beside it."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    for option in ("--report", "--lock-output"):
        out = cli("copy", source_image, "127.0.0.1:9/x:v1", option, str(blocker / "out.json"))
        assert out.code == ExitCode.USAGE, out.err
        assert option in out.error_line and "not-a-dir is not a directory" in out.error_line
    listing = tmp_path / "images.txt"
    listing.write_text(source_image + "\n")
    out = cli("plan", "images", str(listing), "--dest", "r.example/x", "-o", str(blocker / "p"))
    assert out.code == ExitCode.USAGE and "-o" in out.error_line, out.err
    with pytest.raises(OSError) as failed:
        write_atomic(blocker / "report.json", "{}")
    assert failed.value.filename == str(blocker / "report.json")


def test_dest_prefix_beside_source_and_destination_is_refused_not_ignored(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`copy SRC DST --dest PREFIX` used to copy to DST and drop --dest without a word: the
    conflicting option is one usage line, and nothing is pushed. TKG_CUSTOM_IMAGE_REPOSITORY in
    the environment (the same option's default) stays harmless for a single copy."""
    seed_image(plain_registry, "conflict/app", "v1", seed=7301)
    dest: RegistryProcess = make_registry("plain")
    since = dest.log_offset()
    out = cli(
        "copy",
        plain_registry.ref("conflict/app:v1"),
        dest.ref("single/app:v1"),
        "--dest",
        f"{dest.host}/elsewhere",
    )
    assert out.code == ExitCode.USAGE, out.err
    assert "--dest" in out.error_line and dest.ref("single/app:v1") in out.error_line
    assert [e for e in dest.access_log(since=since) if e.method in ("PUT", "POST")] == []
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY", f"{dest.host}/elsewhere")
    out = cli("copy", plain_registry.ref("conflict/app:v1"), dest.ref("single/app:v1"), "-q")
    assert out.code == 0, out.err
    assert skopeo.digest(dest, "single/app:v1") == skopeo.digest(plain_registry, "conflict/app:v1")


def test_dest_prefix_refusal_masks_a_password_in_destination(cli: CLI) -> None:
    """The `--dest beside SRC DST` refusal quoted DESTINATION as typed, so
    `bob:S3cret@reg.example/b` printed the password: it is quoted masked. Refused before any
    network use, so no registry is needed."""
    out = cli("copy", "reg.example/a:v1", "bob:S3cret@reg.example/b", "--dest", "reg.example/proj")
    assert out.code == ExitCode.USAGE, out.err
    assert "--dest" in out.error_line and "***@reg.example/b" in out.error_line
    assert "S3cret" not in out.out + out.err and "bob" not in out.err


def test_a_password_written_into_a_reference_is_never_printed(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """`copy alice:PASSWORD@host/app:v1 …`, `--dest alice:PASSWORD@host/p` or such a line in a
    list used to print the password back in the bad-reference error (the `cli` fixture fails
    any output holding the suite's password). Each is one line saying where credentials go."""
    secret = "alice:s3cret-Pa55@"
    host = plain_registry.host
    images = tmp_path / "images.txt"
    images.write_text(f"{secret}{host}/cred/app:v1\n")
    two = tmp_path / "two.txt"  # two references on one line: the line was echoed whole
    two.write_text(f"{secret}{host}/cred/app:v1 {host}/cred/tool:v1\n")
    for args in (
        ("copy", f"{secret}{host}/cred/app:v1", f"{host}/cred/copy:v1"),
        ("copy", f"https://{secret}{host}/cred/app:v1", f"{host}/cred/copy:v1"),
        ("copy", "--images", str(images), "--dest", f"{host}/mirror"),
        ("copy", "--images", str(images), "--dest", f"{secret}{host}/mirror"),
        ("copy", "--images", str(two), "--dest", f"{host}/mirror"),
        ("ca", "check", f"https://{secret}{host}:port/"),
    ):
        out = cli(*args)
        assert out.code == ExitCode.USAGE, (args, out.err)
        assert "***@" in out.error_line, out.err
