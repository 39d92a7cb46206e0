"""Registries that answer outside HTTP: one line, the README's exit code, never a secret.

Against real parts: a tiny server that speaks broken HTTP after a Basic challenge (bytes after
`Connection: close`, which aiohttp's parser refuses with the request, headers included, in the
exception), and plain HTTP sent to a real TLS registry (a common mistake with
`--dest-plain-http`), which answers 400 and then bytes after `Connection: close` too.
"""

from __future__ import annotations

import base64
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import seed_image

from transship.errors import ExitCode

SECRET = "SuperSecretPW9"
SECRETS = (SECRET, base64.b64encode(f"alice:{SECRET}".encode()).decode())


class _Evil(socketserver.StreamRequestHandler):
    """401 Basic without credentials; 200 on `/v2/`; anything else a malformed 404."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            request = line.decode("latin-1").strip()
            headers: dict[str, str] = {}
            while True:
                raw = self.rfile.readline().decode("latin-1")
                if raw in ("\r\n", "\n", ""):
                    break
                key, value = raw.split(":", 1)
                headers[key.strip().lower()] = value.strip()
            if "authorization" not in headers:
                self.wfile.write(
                    b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\n'
                    b"Content-Length: 0\r\nDocker-Distribution-API-Version: registry/2.0\r\n\r\n"
                )
                continue
            if request.startswith("GET /v2/ "):
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                    b"Docker-Distribution-API-Version: registry/2.0\r\n\r\n{}"
                )
                continue
            self.wfile.write(
                b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\nGARBAGE"
            )
            return


@pytest.fixture
def evil() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Evil)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def source(plain_registry: RegistryProcess) -> str:
    seed_image(plain_registry, "badanswers/pause", "3.5", seed=4711)
    return plain_registry.ref("badanswers/pause:3.5")


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"the password leaked into {where}"
    assert "Traceback" not in text, f"a traceback in {where}"
    assert "RequestInfo" not in text and "CIMultiDict" not in text, f"a raw repr in {where}"


def test_a_malformed_answer_is_one_line_without_the_password(
    cli: CLI, evil: str, source: str, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    out = cli(
        "copy", source, f"{evil}/x/pause", "--dest-creds", f"alice:{SECRET}",
        "--dest-plain-http", "--src-plain-http", "--report", str(report),
    )  # fmt: skip
    assert_clean(out.out + out.err, "the output")
    assert_clean(report.read_text(), "the report")
    assert out.code == ExitCode.REGISTRY, out.err
    line = out.error_line
    assert evil in line and "malformed" in line, line


def test_a_malformed_answer_in_a_plan(cli: CLI, evil: str, source: str, tmp_path: Path) -> None:
    images = tmp_path / "images.txt"
    images.write_text(f"{source}\n")
    plan = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(images), "--dest", f"{evil}/m", "-o", str(plan), "-q")
    assert out.code == ExitCode.OK, out.err
    report = tmp_path / "report.json"
    out = cli(
        "copy", "--plan", str(plan), "--dest-creds", f"alice:{SECRET}", "--dest-plain-http",
        "--src-plain-http", "--report", str(report), "-v",
    )  # fmt: skip
    assert_clean(out.out + out.err, "the output")
    assert_clean(report.read_text(), "the report")
    assert out.code == ExitCode.REGISTRY, out.err


def test_plain_http_to_a_tls_registry_is_exit_5(
    cli: CLI, tls_registry: RegistryProcess, source: str, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    out = cli(
        "copy", source, tls_registry.ref("badanswers/ph/pause"), "--dest-plain-http",
        "--src-plain-http", "--dest-creds", "alice:s3cret-Pa55", "--report", str(report),
    )  # fmt: skip
    assert_clean(out.out + out.err, "the output")
    assert_clean(report.read_text(), "the report")
    assert out.code == ExitCode.TLS, out.err
    line = out.error_line
    assert tls_registry.host in line and "HTTPS" in line and "--dest-plain-http" in line, line
