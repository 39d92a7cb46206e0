"""The error hierarchy: what went wrong decides the type; the README's exit codes stay."""

from __future__ import annotations

import base64
import errno
import subprocess
import sys
from pathlib import Path

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from transship.errors import (
    AuthenticationError,
    ExitCode,
    NotFoundError,
    PermissionDeniedError,
    PreflightError,
    StorageError,
    UnreachableError,
    UsageError,
    advice_for,
    describe_unexpected,
    io_error,
    shown_text,
)
from transship.harbor.advice import install, missing_project_advice


def test_a_full_disk_is_storage_not_usage_and_keeps_exit_code_1() -> None:
    error = io_error("oci:/x: writing blob", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(error, StorageError) and not isinstance(error, UsageError)
    assert error.exit_code == ExitCode.USAGE == 1
    assert error.out_of_space
    assert str(error) == (
        "oci:/x: writing blob: No space left on device (free some space and run the same "
        "command again: what was written is kept)"
    )
    other = io_error("oci:/x", OSError(errno.EACCES, "Permission denied"))
    assert not other.out_of_space and other.hint is None


def test_a_refused_push_is_a_fact_the_harbor_wing_turns_into_advice() -> None:
    error = NotFoundError("pushing manifest r.local/missing/app:v1: repository not found")
    assert missing_project_advice(error) is None  # no fact, no advice
    error.refused_push = "missing/app"
    hint = missing_project_advice(error)
    assert hint is not None and "create the project 'missing' first" in hint
    install()
    install()  # idempotent: one advisor, one hint
    assert advice_for(error) == hint
    assert str(error).endswith(f"({hint})")
    given = AuthenticationError("wrong username or password for r.local", hint="check --creds")
    given.refused_push = "missing/app"
    assert str(given).endswith("(check --creds)")  # a hint given where the fact is known wins


def test_preflight_keeps_every_refusal_and_the_first_ones_exit_code() -> None:
    first = PermissionDeniedError("r.local: the user has no permission for push")
    first.refused_push = "team/app"
    second = UnreachableError("other.local: connection refused")
    error = PreflightError([first, second], asked=5)
    assert error.problems == (first, second)
    assert error.exit_code == ExitCode.AUTH
    assert error.message.startswith("preflight: 2 of 5 destination repositories refuse a push")
    assert first.message == "r.local: the user has no permission for push"  # not rewritten
    install()
    assert "create the project 'team' first" in str(error)


def test_unwritable_output_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An OSError on a file the user named (here `-o` under a path that cannot exist) ends in
    one `transship: error:` line and exit 1, never a traceback."""
    listing = tmp_path / "images.txt"
    listing.write_text("example.com/a/b:v1\n")
    run = subprocess.run(
        [sys.executable, "-m", "transship", "plan", "images", str(listing),
         "--dest", "127.0.0.1:5000/x", "--no-resolve", "-o", "/proc/no-such-dir/plan.yaml"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transship: error: /proc/no-such-dir"), lines


def test_an_unforeseen_error_is_described_without_request_headers() -> None:
    """The engine's catch-all: aiohttp's errors carry the request in their repr, the
    Authorization header included; what is shown is the type and a scrubbed first line."""
    basic = "Basic " + base64.b64encode(b"alice:SuperSecretPW9").decode()
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": basic}))
    url = URL("http://127.0.0.1:5000/v2/x/manifests/1")
    info = aiohttp.RequestInfo(url, "HEAD", headers, url)
    exc = aiohttp.ClientResponseError(info, (), status=400, message="Data after\nmore")
    assert basic.split()[1] in repr(exc)  # the hazard itself
    text = describe_unexpected(exc)
    assert text.startswith("ClientResponseError: 400") and "\n" not in text, text
    assert "SuperSecretPW9" not in text and basic.split()[1] not in text
    for raw, shown in [
        (f"sent {basic} to x", "sent Basic *** to x"),
        ("{'Authorization': 'Bearer abc.def'}", "{'Authorization': 'Bearer ***'}"),
        ("GET http://alice:pw@h/v2/", "GET http://***@h/v2/"),
    ]:
        assert describe_unexpected(ValueError(raw)) == f"ValueError: {shown}"
    assert describe_unexpected(ValueError("")) == "ValueError"


def test_a_secret_is_masked_where_it_stands_as_a_token_the_longest_first() -> None:
    """The run's credentials are masked as tokens, the longest first: a shorter secret masked
    first would leave part of a longer one shown."""
    assert (
        shown_text("login admin12345 refused for admin", ["admin", "admin12345"])
        == "login *** refused for ***"
    )
    assert shown_text("user ab: refused (ab)", ["ab"]) == "user ***: refused (***)"
    assert shown_text("token=xHarbor12345y", ["Harbor12345"]) == "token=x***y"  # 4+: anywhere
    assert shown_text("a * b", ["*"]) == "a *** b"


def test_a_short_secret_inside_a_word_withholds_the_text_rather_than_garble_it() -> None:
    """A password `a` masked everywhere turned Harbor's "project name" into "project n***me";
    a secret under 4 characters found inside a word withholds the whole text instead."""
    said = shown_text("project name is invalid", ["a"], withheld="(withheld)")
    assert said == "(withheld)"
    assert "withheld" in shown_text("the name is taken", ["am"])
    assert shown_text("project name", ["xyz"]) == "project name"  # absent: shown as it is
