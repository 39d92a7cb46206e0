"""`transship ca encode|decode|check` against the real `base64` tool and real TLS registries."""

from __future__ import annotations

import base64
import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.tokenserver import TokenServer

from transship.cacheck import CheckExit
from transship.errors import ExitCode


def gnu_base64(path: Path) -> str:
    """What the vendor's procedure runs: `base64 -w 0 FILE`."""
    return subprocess.run(
        ["base64", "-w", "0", str(path)], check=True, capture_output=True, text=True
    ).stdout


# -- encode / decode -------------------------------------------------------------------------


def test_encode_equals_base64_w0_and_decode_round_trips(cli: CLI, pki: PKI, tmp_path: Path) -> None:
    encoded = cli("ca", "encode", str(pki.ca_pem_path))
    assert encoded.code == 0, encoded.err
    line = encoded.out.rstrip("\n")
    assert "\n" not in line
    assert line == gnu_base64(pki.ca_pem_path)
    assert "transship-test-ca" in encoded.err  # described on stderr, stdout stays clean

    decoded = cli("ca", "decode", line)
    assert decoded.code == 0, decoded.err
    assert decoded.out.encode() == pki.ca_pem_path.read_bytes()

    out_file = tmp_path / "ca-again.pem"
    to_file = cli("ca", "decode", line, "-o", str(out_file))
    assert to_file.code == 0, to_file.err
    assert to_file.out == ""
    assert out_file.read_bytes() == pki.ca_pem_path.read_bytes()
    # what `base64 -d` makes of our output is the file again
    again = subprocess.run(["base64", "-d"], input=line, capture_output=True, text=True)
    assert again.stdout.encode() == pki.ca_pem_path.read_bytes()


def test_encode_and_decode_read_standard_input(
    cli: CLI, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = pki.ca_pem_path.read_text()
    # stdin as a terminal or pipe has bytes under it (the size check reads those)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(pem.encode())))
    encoded = cli("ca", "encode", "-", "-q")
    assert encoded.code == 0, encoded.err
    assert encoded.err == ""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(encoded.out.encode())))
    decoded = cli("ca", "decode", "-", "-q")
    assert decoded.code == 0, decoded.err
    assert decoded.out == pem


def test_encode_rejects_a_server_certificate(cli: CLI, pki: PKI) -> None:
    out = cli("ca", "encode", str(pki.server.cert_path))
    assert out.code == ExitCode.USAGE
    assert "not a CA" in out.error_line and "CN=localhost" in out.error_line
    assert out.out == ""


def test_decode_rejects_a_server_certificate(cli: CLI, pki: PKI) -> None:
    server_b64 = base64.b64encode(pki.server.cert_path.read_bytes()).decode()
    out = cli("ca", "decode", server_b64)
    assert out.code == ExitCode.USAGE
    assert "not a CA" in out.error_line


@pytest.mark.parametrize(
    "content",
    [
        b"hello, I am not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
    ids=["text", "broken-pem"],
)
def test_encode_rejects_garbage(cli: CLI, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(content)
    out = cli("ca", "encode", str(path))
    assert out.code == ExitCode.USAGE
    assert str(path) in out.error_line
    assert out.out == ""


@pytest.mark.parametrize("value", ["not*base64!", base64.b64encode(b"just text").decode()])
def test_decode_rejects_garbage(cli: CLI, value: str) -> None:
    out = cli("ca", "decode", value)
    assert out.code == ExitCode.USAGE
    assert "PEM" in out.error_line
    assert out.out == ""


def test_encode_missing_file(cli: CLI, tmp_path: Path) -> None:
    out = cli("ca", "encode", str(tmp_path / "nope.pem"))
    assert out.code == ExitCode.USAGE
    assert "nope.pem" in out.error_line


def test_encode_refuses_a_file_with_a_private_key(cli: CLI, pki: PKI, tmp_path: Path) -> None:
    bundle = tmp_path / "ca-and-key.pem"
    bundle.write_bytes(pki.ca.cert_path.read_bytes() + pki.ca.key_path.read_bytes())
    out = cli("ca", "encode", str(bundle))
    assert out.code == ExitCode.USAGE
    assert "private key" in out.error_line
    assert out.out == ""
    assert "PRIVATE" not in out.err.replace("private key", "")
    decoded = cli("ca", "decode", base64.b64encode(bundle.read_bytes()).decode())
    assert decoded.code == ExitCode.USAGE
    assert "private key" in decoded.error_line
    assert decoded.out == ""


# -- check -----------------------------------------------------------------------------------


def test_check_trusted_with_the_right_ca_reports_anchor_and_basic_realm(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI
) -> None:
    out = cli("ca", "check", tls_registry.host, "--ca", str(pki.ca_pem_path))
    assert out.code == CheckExit.OK == 0, out.out + out.err
    first = out.out.splitlines()[0]
    assert "trusted" in first and "CN=transship-test-ca" in first
    assert 'Basic realm="transship-test"' in out.out
    assert "TLS is fine" in first
    assert f"--ca {pki.ca_pem_path}" in out.out  # which CA did it
    assert "localhost, 127.0.0.1" in out.out
    assert "transship: error" not in out.err


def test_check_accepts_the_tkg_base64_form_and_variable(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    b64 = gnu_base64(pki.ca_pem_path)
    out = cli("ca", "check", f"https://{tls_registry.host}/tkg/project", "--ca", b64)
    assert out.code == 0, out.out + out.err
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE", b64)
    from_env = cli("ca", "check", tls_registry.host)
    assert from_env.code == 0, from_env.out + from_env.err


@pytest.mark.parametrize(
    "registry",
    ["bob:S3cret@reg.example:5000", "https://bob:S3cret@reg.example/tkg", "bob:S3cret@[::1]:5000"],
)
def test_check_refuses_credentials_in_the_registry_masked(cli: CLI, registry: str) -> None:
    """`ca check user:pw@host` dropped the credentials without a word and checked the host: it
    is refused as a reference with credentials is, masked, before any connection."""
    out = cli("ca", "check", registry)
    assert out.code == ExitCode.USAGE, out.err
    assert "holds credentials" in out.error_line and "***@" in out.error_line
    assert "S3cret" not in out.out + out.err and "bob" not in out.out + out.err


def test_check_bearer_realm_of_a_token_registry(
    cli: CLI, token_registry: RegistryProcess, token_server: TokenServer, pki: PKI
) -> None:
    out = cli("ca", "check", token_registry.host, "--ca", str(pki.ca_pem_path))
    assert out.code == 0, out.out + out.err
    assert f'Bearer realm="{token_server.realm}"' in out.out


def test_check_unknown_authority_names_the_issuer(cli: CLI, make_registry, pki: PKI) -> None:
    reg = make_registry("tls", cert=pki.wrong_ca_server)
    out = cli("ca", "check", reg.host, "--ca", str(pki.ca_pem_path))
    assert out.code == CheckExit.UNKNOWN_AUTHORITY == ExitCode.TLS
    assert "unknown authority" in out.error_line
    assert "CN=transship-wrong-ca" in out.error_line
    assert f"--ca {pki.ca_pem_path} did not sign it" in out.error_line  # not "pass --ca"


def test_check_without_ca_is_unknown_authority(cli: CLI, tls_registry: RegistryProcess) -> None:
    out = cli("ca", "check", tls_registry.host)
    assert out.code == CheckExit.UNKNOWN_AUTHORITY
    assert "CN=transship-test-ca" in out.error_line
    assert "pass --ca FILE|BASE64 with the CA that signed it" in out.error_line
    assert "system trust store" in out.out


def test_check_hostname_mismatch_lists_the_names(cli: CLI, make_registry, pki: PKI) -> None:
    reg = make_registry("tls", cert=pki.wrong_host)
    out = cli("ca", "check", reg.host, "--ca", str(pki.ca_pem_path))
    assert out.code == CheckExit.HOSTNAME_MISMATCH == 10
    assert "hostname mismatch" in out.error_line
    assert "wrong-host.invalid" in out.error_line


def test_check_expired_gives_the_dates(cli: CLI, make_registry, pki: PKI) -> None:
    reg = make_registry("tls", cert=pki.expired)
    out = cli("ca", "check", reg.host, "--ca", str(pki.ca_pem_path))
    assert out.code == CheckExit.EXPIRED == 11
    assert "expired" in out.error_line
    assert pki.expired.not_after.strftime("%Y-%m-%d %H:%M:%S") in out.error_line
    assert pki.expired.not_before.strftime("%Y-%m-%d") in out.out


def test_check_plain_http_registry(cli: CLI, plain_registry: RegistryProcess, pki: PKI) -> None:
    out = cli("ca", "check", plain_registry.host, "--ca", str(pki.ca_pem_path))
    assert out.code == CheckExit.PLAIN_HTTP == 12
    assert "plain HTTP" in out.error_line
    assert "a registry" in out.out


def test_check_not_a_registry(cli: CLI, token_server: TokenServer, pki: PKI) -> None:
    # The token service has a certificate from the test CA but no /v2/: 404.
    out = cli("ca", "check", token_server.host, "--ca", str(pki.ca_pem_path))
    assert out.code == CheckExit.NOT_A_REGISTRY == ExitCode.REGISTRY
    assert "not a registry" in out.error_line and "404" in out.error_line
    assert "TLS is trusted" in out.error_line


def test_check_unreachable(cli: CLI, closed_port: Callable[[], str]) -> None:
    out = cli("ca", "check", closed_port(), "--timeout", "3")
    assert out.code == CheckExit.UNREACHABLE == ExitCode.UNREACHABLE
    assert "connection refused" in out.error_line


def test_check_bad_ca_is_a_usage_error(cli: CLI, tls_registry: RegistryProcess, pki: PKI) -> None:
    out = cli("ca", "check", tls_registry.host, "--ca", str(pki.server.cert_path))
    assert out.code == ExitCode.USAGE
    assert "not a CA" in out.error_line


class _Endless(io.RawIOBase):
    """`< /dev/zero`: zeros for ever (fails the test once far more than a CA was read)."""

    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.given > 64 * 1024 * 1024:
            raise AssertionError("standard input read without a bound")
        view = memoryview(buffer).cast("B")
        view[:] = b"\0" * len(view)
        self.given += len(view)
        return len(view)


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_binary_or_endless_standard_input_is_one_usage_line(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """`ca decode -` of a DER file (bytes that are not UTF-8) ended in a UnicodeEncodeError
    traceback; `ca decode - < /dev/zero` read until memory ran out. Both are bad input."""
    der = b"\x30\x82\x01\xb0\x30\x82\x01\x56\xa0\x03\x02\x01\x02\x02\x14\xff\xfe" * 40
    binary = b"-----BEGIN CERTIFICATE-----\n" + der if command == "encode" else der
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(binary)))
    out = cli("ca", command, "-")
    assert out.code == ExitCode.USAGE, out.err
    assert "standard input: not text" in out.error_line and "openssl x509" in out.error_line
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BufferedReader(_Endless())))
    out = cli("ca", command, "-")
    assert out.code == ExitCode.USAGE, out.err
    assert "standard input: larger than" in out.error_line


def test_a_ca_value_that_is_not_text_is_one_usage_line(
    cli: CLI, tls_registry: RegistryProcess, plain_registry: RegistryProcess
) -> None:
    """`--dest-ca "$(cat ca.der)"`: the shell hands over bytes that are not UTF-8 (Python sees
    surrogates), which ended in a UnicodeEncodeError traceback."""
    der_text = "0\udc82\x01\udcb0" * 150
    out = cli("ca", "check", tls_registry.host, "--ca", der_text)
    assert out.code == ExitCode.USAGE, out.err
    assert "--ca: the CA given is not text" in out.error_line
    out = cli(
        "copy", plain_registry.ref("lib/x:v1"), tls_registry.ref("lib/x:v1"), "--dest-ca", der_text
    )
    assert out.code == ExitCode.USAGE, out.err
    assert "--dest-ca: the CA given is not text" in out.error_line


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_check_timeout_out_of_range_is_a_usage_error(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI, timeout: str
) -> None:
    """`--timeout 0` (or -1, nan) used to declare a registry that answers unreachable: 'no
    answer within 0 s', exit 6; inf could wait for ever on a silent host."""
    out = cli("ca", "check", tls_registry.host, "--ca", str(pki.ca_pem_path), "--timeout", timeout)
    assert out.code == ExitCode.USAGE, out.err
    assert "--timeout" in out.error_line
    out = cli("ca", "check", tls_registry.host, "--ca", str(pki.ca_pem_path), "--timeout", "5")
    assert out.code == 0, out.err


def test_a_ca_path_that_is_a_directory_is_named_as_one(
    cli: CLI, tls_registry: RegistryProcess, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """`--dest-ca certs/` (the directory, not the file in it) or `/dev/null` were reported as
    'CA file … does not exist', sending the user to look for a path that is there."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for value, kind in ((str(certs), "a directory"), ("/dev/null", "a device or special file")):
        out = cli(
            "copy", plain_registry.ref("lib/x:v1"), tls_registry.ref("lib/x:v1"), "--dest-ca", value
        )
        assert out.code == ExitCode.USAGE, out.err
        assert f"--dest-ca: CA file {value} is not a regular file ({kind})" in out.error_line
        assert "does not exist" not in out.error_line
