"""Every image of a list failing for one reason exits with that reason's code, not "partial".

A wrong password, an unknown CA or a missing repository fails each image alike; a script must
see 3, 5 or 4 as for a single image. Something copied, or different reasons, stay 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image

from transship.engine import CopyTask, Status, TaskResult
from transship.errors import (
    AuthenticationError,
    DependencyError,
    ExitCode,
    NotFoundError,
    TLSError,
    TransshipError,
)
from transship.ops.run import shared_failure

NAMES = ("alike/a:v1", "alike/b:v1", "alike/c:v1")


@pytest.fixture(scope="module")
def refs(plain_registry: RegistryProcess) -> list[str]:
    for n, name in enumerate(NAMES):
        repo, tag = name.split(":")
        seed_image(plain_registry, repo, tag, seed=900 + n)
    return [plain_registry.ref(name) for name in NAMES]


def listing(tmp_path: Path, refs: list[str]) -> Path:
    path = tmp_path / "images.txt"
    path.write_text("".join(f"{ref}\n" for ref in refs))
    return path


def copy(cli: CLI, tmp_path: Path, refs: list[str], dest: str, *extra: str):  # type: ignore[no-untyped-def]
    report = tmp_path / "report.json"
    out = cli(
        "copy", "--images", str(listing(tmp_path, refs)), "--dest", dest,
        "--src-plain-http", "--report", str(report), *extra,
    )  # fmt: skip
    statuses = [e["status"] for e in json.loads(report.read_text())["entries"]]
    return out, statuses


def test_a_wrong_password_for_every_image_is_exit_3(
    cli: CLI, tls_registry: RegistryProcess, pki: PKI, refs: list[str], tmp_path: Path
) -> None:
    out, statuses = copy(
        cli, tmp_path, refs, f"{tls_registry.host}/alike-pw",
        "--dest-ca", str(pki.ca_pem_path), "--dest-creds", "alice:wrong-password",
    )  # fmt: skip
    assert statuses == ["failed"] * 3
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line  # one error line for the run, not one per image
    assert "all 3 images failed" in line and "wrong username or password" in line, line
    assert tls_registry.host in line


def test_an_unknown_ca_for_every_image_is_exit_5(
    cli: CLI, tls_registry: RegistryProcess, refs: list[str], tmp_path: Path
) -> None:
    out, statuses = copy(
        cli, tmp_path, refs, f"{tls_registry.host}/alike-ca", "--dest-creds", "alice:s3cret-Pa55"
    )
    assert statuses == ["failed"] * 3
    assert out.code == ExitCode.TLS, out.err
    assert "unknown authority" in out.error_line and "--dest-ca" in out.error_line


def test_every_image_missing_at_the_source_is_exit_4(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    dest = make_registry("plain")
    missing = [plain_registry.ref(f"alike/nosuch{n}:v1") for n in range(3)]
    out, statuses = copy(cli, tmp_path, missing, f"{dest.host}/m", "--dest-plain-http")
    assert statuses == ["failed"] * 3
    assert out.code == ExitCode.NOT_FOUND, out.err


def test_something_copied_or_reasons_that_differ_stay_partial(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    refs: list[str],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    dest = make_registry("plain")
    missing = plain_registry.ref("alike/nosuch:v1")
    out, statuses = copy(cli, tmp_path, [refs[0], missing], f"{dest.host}/m", "--dest-plain-http")
    assert statuses == ["copied", "failed"]
    assert out.code == ExitCode.PARTIAL, out.err


def _result(error: TransshipError | None, status: Status = "failed") -> TaskResult:
    return TaskResult(cast(CopyTask, None), status, error=error)  # the task is not looked at


def test_shared_failure_decides_on_the_failures_own_codes() -> None:
    auth = AuthenticationError("wrong username or password for h")
    tls = TLSError("unknown authority")
    gone = NotFoundError("not found")
    after = DependencyError("not pushed, because an image it depends on failed")
    assert shared_failure([_result(auth), _result(AuthenticationError("x"))]) is auth
    assert shared_failure([_result(auth), _result(after)]) is auth  # caused by the same
    assert shared_failure([_result(after)]) is None
    assert shared_failure([_result(auth), _result(tls)]) is None
    assert shared_failure([_result(gone), _result(None, "copied")]) is None
    assert shared_failure([_result(gone), _result(None, "skipped")]) is None
    assert shared_failure([]) is None
