"""Credentials from options and Docker config files, and challenge parsing (pure parts)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from transship.errors import RegistryError, UsageError
from transship.remote.auth import Challenge, from_docker_config, parse_creds
from transship.remote.links import next_link


def test_challenge_parsing():
    c = Challenge.parse(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }
    assert Challenge.parse('Basic realm="x \\"y\\""').params == {"realm": 'x "y"'}


def test_parse_creds_keeps_colons_in_password_and_hides_it():
    creds = parse_creds("alice:pa:ss", "--dest-creds")
    assert (creds.username, creds.password) == ("alice", "pa:ss")
    assert "pa:ss" not in repr(creds)
    with pytest.raises(UsageError, match="--dest-creds"):
        parse_creds("nocolon", "--dest-creds")


def _config(tmp_path: Path, doc: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_docker_config_auths(tmp_path: Path):
    auth = base64.b64encode(b"bob:hunter2").decode()
    path = _config(tmp_path, {"auths": {"https://reg.example:5000": {"auth": auth}}})
    creds = from_docker_config("reg.example:5000", path)
    assert creds is not None and (creds.username, creds.password) == ("bob", "hunter2")
    assert from_docker_config("other.example", path) is None


def test_docker_config_identity_token_and_hub_key(tmp_path: Path):
    path = _config(
        tmp_path, {"auths": {"https://index.docker.io/v1/": {"identitytoken": "refresh-me"}}}
    )
    creds = from_docker_config("docker.io", path)
    assert creds is not None and creds.identity_token == "refresh-me"


def test_docker_config_bad_auth_is_a_clear_error(tmp_path: Path):
    path = _config(tmp_path, {"auths": {"reg.example": {"auth": "!!notbase64"}}})
    with pytest.raises(UsageError, match=r"auths\['reg.example'\].auth"):
        from_docker_config("reg.example", path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UsageError, match="not a readable Docker config"):
        from_docker_config("reg.example", tmp_path / "broken.json")


def test_credential_helper_program_is_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real `docker-credential-*` program on PATH answers the host on stdin."""
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread host\n"
        'if [ "$host" = "reg.example" ]; then\n'
        '  echo "{\\"Username\\": \\"carol\\", \\"Secret\\": \\"from-helper\\"}"\n'
        "else echo 'credentials not found in native keychain'; exit 1; fi\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    path = _config(tmp_path, {"credHelpers": {"reg.example": "fake"}, "credsStore": "fake"})
    creds = from_docker_config("reg.example", path)
    assert creds is not None and (creds.username, creds.password) == ("carol", "from-helper")
    assert from_docker_config("other.example", path) is None  # helper says not found
    missing = _config(tmp_path, {"credsStore": "absent"})
    with pytest.raises(UsageError, match="docker-credential-absent"):
        from_docker_config("reg.example", missing)


def test_link_pagination():
    assert (
        next_link('</v2/a/tags/list?n=2&last=b>; rel="next"', "https://r.example/v2/a/tags/list")
        == "https://r.example/v2/a/tags/list?n=2&last=b"
    )
    assert next_link(None, "https://r.example/") is None


def test_link_to_another_host_is_refused_not_followed_with_our_credentials():
    here = "https://r.example/v2/a/tags/list"
    # same origin, spelled absolute (or with another case): followed
    link = '<https://R.example/v2/a/tags/list?last=b>; rel="next"'
    assert next_link(link, here) == "https://R.example/v2/a/tags/list?last=b"
    for elsewhere in ("https://evil.example", "http://r.example", "https://r.example:8443"):
        with pytest.raises(RegistryError, match="another host"):
            next_link(f'<{elsewhere}/v2/a/tags/list?last=b>; rel="next"', here)
