"""Run the `transship` CLI in-process, as a user would, and capture what it prints."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from transship.cli import main

#: Every secret the suite uses; none may ever appear in anything transship prints or writes.
SECRETS = (
    "s3cret-Pa55",
    "wrong-password",
    base64.b64encode(b"alice:s3cret-Pa55").decode(),
    base64.b64encode(b"alice:wrong-password").decode(),
)


def assert_no_secrets(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential leaked into {where}"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.startswith("transship: error:")]
        assert len(lines) == 1, f"expected one error line, got: {self.err!r}"
        return lines[0]


class CLI:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> Outcome:
        self.capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code) if exc.code is not None else 0
        else:  # pragma: no cover - main always exits
            code = 0
        captured = self.capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        assert_no_secrets(captured.out + captured.err, "CLI output")
        return Outcome(code, captured.out, captured.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path) -> CLI:  # type: ignore[no-untyped-def]
    """The CLI with an empty Docker config and cache, and no TKG/transship variables from the
    machine."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # kept list resolutions
    for var in (
        "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE",
        "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY",
        "TKG_CUSTOM_IMAGE_REPOSITORY",
        "TRANSSHIP_SRC_CREDS",
        "TRANSSHIP_DEST_CREDS",
    ):
        monkeypatch.delenv(var, raising=False)
    return CLI(capsys)
