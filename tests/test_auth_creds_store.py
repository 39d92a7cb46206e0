"""A Docker config's credential helpers run only when a registry asks for credentials: a
`credsStore` naming a helper that is not installed (a Docker Desktop leftover) must not break
copies between registries that need no login, nor one whose credentials were given."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image
from harness.skopeo import Skopeo

from transship.errors import ExitCode
from transship.remote import Registry, RegistryOptions
from transship.remote.auth import HelperFailedError, from_docker_config, lookup_docker_config
from transship.remote.tls import load_ca

CREDS = "alice:s3cret-Pa55"


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict[str, object]) -> Path:
    home = tmp_path / "docker-store"
    home.mkdir(exist_ok=True)
    path = home / "config.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    return path


def _spy_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real `docker-credential-spy` on PATH that gives alice's credentials and logs each
    host it was asked about."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "spy-calls"
    helper = bin_dir / "docker-credential-spy"
    helper.write_text(
        "#!/bin/sh\nread host\n"
        f'echo "$host" >> "{calls}"\n'
        'echo "{\\"Username\\": \\"alice\\", \\"Secret\\": \\"s3cret-Pa55\\"}"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_missing_creds_store_helper_does_not_break_registries_without_login(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    token_registry: RegistryProcess,
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert shutil.which("docker-credential-desktop") is None
    _config(tmp_path, monkeypatch, {"credsStore": "desktop"})
    image = seed_image(plain_registry, "store/one", "v1", seed=311)
    dest: RegistryProcess = make_registry("plain")

    out = cli("copy", plain_registry.ref("store/one:v1"), dest.ref("store/ten:v1"))
    assert out.code == 0, out.err
    assert skopeo(dest, "store/ten:v1") == image.manifest

    # a registry that asks (Bearer) but lets anonymous callers pull: a warning, and the pull
    public = seed_image(token_registry, "store/public", "v1", seed=312)
    out = cli(
        "copy",
        token_registry.ref("store/public:v1"),
        dest.ref("store/public:v1"),
        "--src-ca",
        str(pki.ca_pem_path),
    )
    assert out.code == 0, out.err
    assert skopeo(dest, "store/public:v1") == public.manifest


def test_missing_helper_when_the_registry_asks_is_one_line_saying_what_to_do(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert shutil.which("docker-credential-desktop") is None
    config = _config(tmp_path, monkeypatch, {"credsStore": "desktop"})
    seed_image(plain_registry, "store/two", "v1", seed=313)
    out = cli(
        "copy",
        plain_registry.ref("store/two:v1"),
        tls_registry.ref("store/two:v1"),
        "--dest-ca",
        str(pki.ca_pem_path),
    )
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line
    assert tls_registry.host in line and "docker-credential-desktop" in line, line
    assert f"credsStore from {config}" in line and "--dest-creds" in line, line


def test_explicit_creds_never_run_the_helper_and_the_config_is_read_only_when_asked(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _spy_helper(tmp_path, monkeypatch)
    _config(tmp_path, monkeypatch, {"credsStore": "spy"})
    image = seed_image(tls_registry, "store/three", "v1", seed=314)
    dest: RegistryProcess = make_registry("plain")
    ca = str(pki.ca_pem_path)

    out = cli(
        "copy",
        tls_registry.ref("store/three:v1"),
        dest.ref("store/three:v1"),
        "--src-ca",
        ca,
        "--src-creds",
        CREDS,
    )
    assert out.code == 0, out.err
    assert not calls.exists()  # neither side ran it: creds given, and a plain destination

    out = cli(
        "copy", tls_registry.ref("store/three:v1"), dest.ref("store/three:v2"), "--src-ca", ca
    )
    assert out.code == 0, out.err
    assert calls.read_text().split() == [tls_registry.host]  # once, for the side that asked
    assert skopeo(dest, "store/three:v2") == image.manifest


def _broken_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real `docker-credential-broken` that logs each host it is asked about and answers
    what is not its JSON (as a helper whose keyring is locked may)."""
    bin_dir = tmp_path / "bin-broken"
    bin_dir.mkdir()
    calls = tmp_path / "broken-calls"
    helper = bin_dir / "docker-credential-broken"
    helper.write_text(
        f'#!/bin/sh\nread host\necho "$host" >> "{calls}"\necho "gpg: decryption failed"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_a_failing_helper_runs_once_per_host_and_the_run_ends_in_one_line(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every request of a multi-image run needs the credentials the helper cannot give: it
    runs once for the host (not again behind a lock for each request), and the run ends as a
    wrong password does, with the failure's exit code and one line saying what to do."""
    calls = _broken_helper(tmp_path, monkeypatch)
    config = _config(tmp_path, monkeypatch, {"credsStore": "broken"})
    ca = str(pki.ca_pem_path)
    names = [f"store/many{n}:v1" for n in range(4)]
    for n, name in enumerate(names):
        repo, tag = name.split(":")
        seed_image(plain_registry, repo, tag, seed=320 + n)
        seed_image(tls_registry, repo, tag, seed=320 + n)

    def run(src: RegistryProcess, dest: str, *extra: str):  # type: ignore[no-untyped-def]
        listing = tmp_path / "images.txt"
        listing.write_text("".join(f"{src.ref(name)}\n" for name in names))
        calls.unlink(missing_ok=True)
        return cli("copy", "--images", str(listing), "--dest", dest, *extra)

    # the destination asks: every push fails alike
    out = run(plain_registry, f"{tls_registry.host}/broken", "--src-plain-http", "--dest-ca", ca)
    assert calls.read_text().split() == [tls_registry.host], out.err
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line
    assert tls_registry.host in line and "docker-credential-broken" in line, line
    assert f"credsStore in {config}" in line and "unreadable answer" in line, line
    assert "--dest-creds" in line, line

    # the source asks: every image's resolution and pull
    dest: RegistryProcess = make_registry("plain")
    out = run(tls_registry, f"{dest.host}/broken", "--src-ca", ca, "--dest-plain-http")
    assert calls.read_text().split() == [tls_registry.host], out.err
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line
    assert "docker-credential-broken" in line and "--src-creds" in line, line


def _script_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    """A real `docker-credential-NAME` on PATH running `body` after reading the host."""
    bin_dir = tmp_path / f"bin-{name}"
    bin_dir.mkdir()
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(f"#!/bin/sh\nread host\n{body}\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_helper_that_exits_with_an_error_is_named_and_not_found_stays_anonymous(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    token_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As Docker: only "credentials not found in native keychain" is no credentials (and the
    run goes on anonymous); any other failing exit is the helper's error, quoted by its first
    line with the helper and the config entry, instead of a `docker login` hint."""
    _script_helper(
        tmp_path,
        monkeypatch,
        "nodbus",
        'echo "Cannot autolaunch D-Bus without X11 \\$DISPLAY" >&2\nexit 1',
    )
    _script_helper(
        tmp_path,
        monkeypatch,
        "empty",
        'echo "credentials not found in native keychain"\nexit 1',
    )
    config = _config(
        tmp_path,
        monkeypatch,
        {"credHelpers": {tls_registry.host: "nodbus", token_registry.host: "empty"}},
    )
    ca = str(pki.ca_pem_path)
    seed_image(tls_registry, "store/dbus", "v1", seed=330)
    dest: RegistryProcess = make_registry("plain")

    out = cli("copy", tls_registry.ref("store/dbus:v1"), dest.ref("store/dbus:v1"), "--src-ca", ca)
    assert out.code == ExitCode.AUTH, out.err
    line = out.error_line
    assert "docker-credential-nodbus" in line, line
    assert f"credHelpers[{tls_registry.host!r}] in {config}" in line, line
    assert "exited 1: Cannot autolaunch D-Bus without X11 $DISPLAY" in line, line
    assert "--src-creds" in line and "docker login" not in line, line
    assert out.err.count("transship: error:") == 1, out.err

    # not found: anonymous, which a registry that lets anyone pull accepts
    public = seed_image(token_registry, "store/anyone", "v1", seed=331)
    out = cli(
        "copy", token_registry.ref("store/anyone:v1"), dest.ref("store/anyone:v1"), "--src-ca", ca
    )
    assert out.code == 0, out.err
    assert skopeo(dest, "store/anyone:v1") == public.manifest


def test_a_failing_helper_s_message_is_its_first_line_trimmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helpers report errors on stdout (docker-credential-helpers): the first non-blank line,
    cut to 200 characters, is quoted; a killed helper says so."""
    _script_helper(
        tmp_path,
        monkeypatch,
        "locked",
        f'echo ""\necho "pass: store locked {"x" * 300}"\necho second line\nexit 2',
    )
    _script_helper(tmp_path, monkeypatch, "killed", "kill -9 $$")
    config = _config(
        tmp_path, monkeypatch, {"credHelpers": {"a.example": "locked", "b.example": "killed"}}
    )
    with pytest.raises(HelperFailedError) as caught:
        from_docker_config("a.example", config)
    message = str(caught.value)
    assert "docker-credential-locked" in message and "exited 2: pass: store locked x" in message
    assert message.endswith("x" * (200 - len("pass: store locked ")) + "..."), message
    assert "second line" not in message
    with pytest.raises(HelperFailedError, match=r"credential-killed .* was killed by signal 9"):
        from_docker_config("b.example", config)


def test_a_helper_that_never_answers_is_ended_with_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper waiting on a prompt (pinentry, D-Bus) on a headless host: an error naming the
    helper and the config file once the time is up, even if a child of it holds the pipes."""
    bin_dir = tmp_path / "bin-stuck"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-stuck"
    helper.write_text("#!/bin/sh\nread host\nsleep 30\necho '{}'\n")  # sleep: a child
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = _config(tmp_path, monkeypatch, {"credHelpers": {"reg.example": "stuck"}})
    start = time.monotonic()
    with pytest.raises(HelperFailedError) as caught:
        from_docker_config("reg.example", config, helper_timeout=0.5)
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "docker-credential-stuck" in message and "did not answer within 0.5 s" in message
    assert f"credHelpers['reg.example'] in {config}" in message
    assert caught.value.exit_code == ExitCode.AUTH


def test_ctrl_c_while_a_helper_hangs_ends_the_run_and_the_helper_at_once(
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The helper runs in its own session (so a timeout can end what it started), so the
    terminal's SIGINT never reaches it: Ctrl-C must end it, and the run must not wait out the
    helper's timeout (nor the helper's sleep) before exiting 130."""
    bin_dir = tmp_path / "bin-hang"
    bin_dir.mkdir()
    started, pid_file = tmp_path / "hang-started", tmp_path / "hang-pid"
    helper = bin_dir / "docker-credential-hang"
    # exec: the sleep is the helper process itself, whose pid the test then looks for
    helper.write_text(
        f'#!/bin/sh\nread host\necho $$ > "{pid_file}"\ntouch "{started}"\nexec sleep 20\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _config(tmp_path, monkeypatch, {"credsStore": "hang"})
    seed_image(plain_registry, "store/hang", "v1", seed=330)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transship",
            "copy",
            plain_registry.ref("store/hang:v1"),
            tls_registry.ref("store/hang:v1"),
            "--dest-ca",
            str(pki.ca_pem_path),
        ],
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists(), proc.communicate(timeout=30)[1]
        helper_pid = int(pid_file.read_text())
        assert _alive(helper_pid)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        alive_after = _alive(helper_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid_file.exists() and _alive(int(pid_file.read_text())):  # not left to others
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert took < 5, f"exit {took:.1f} s after Ctrl-C; {err}"
    assert not alive_after, "the helper outlived the run"
    assert "Traceback" not in err and "closed" not in err, err


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not: it has exited)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_request_cancelled_during_the_lookup_leaves_its_answer_to_the_others(
    tls_registry: RegistryProcess, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request to be challenged starts the lookup; cancelled while the helper runs
    (its image failed elsewhere), the lookup goes on for the requests after it, which get
    the helper's credentials: not anonymous access, and not a second run of the helper."""
    bin_dir = tmp_path / "bin-slow"
    bin_dir.mkdir()
    started, calls = tmp_path / "slow-started", tmp_path / "slow-calls"
    helper = bin_dir / "docker-credential-slow"
    helper.write_text(
        f'#!/bin/sh\nread host\necho "$host" >> "{calls}"\ntouch "{started}"\nsleep 1\n'
        'echo "{\\"Username\\": \\"alice\\", \\"Secret\\": \\"s3cret-Pa55\\"}"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _config(tmp_path, monkeypatch, {"credsStore": "slow"})
    image = seed_image(tls_registry, "store/slow", "v1", seed=331)
    host = tls_registry.host
    options = RegistryOptions(
        ca=load_ca(str(pki.ca_pem_path)), credential_lookup=partial(lookup_docker_config, host)
    )
    registry = Registry(host, options)
    try:
        first = asyncio.create_task(registry.get_manifest("store/slow", "v1"))
        for _ in range(3000):
            if started.exists() or first.done():
                break
            await asyncio.sleep(0.01)
        assert started.exists() and not first.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        manifest = await registry.get_manifest("store/slow", "v1")
    finally:
        await registry.close()
    assert manifest.raw == image.manifest
    assert calls.read_text().split() == [host]


def test_a_helper_child_that_leaves_its_group_holding_the_pipes_does_not_hold_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that started a child in a session of its own (out of reach of the kill)
    which keeps its output pipe: once the helper is killed the wait ends all the same."""
    bin_dir = tmp_path / "bin-escape"
    bin_dir.mkdir()
    pid_file = tmp_path / "escaped-pid"
    helper = bin_dir / "docker-credential-escape"
    helper.write_text(
        f"#!/bin/sh\nread host\nsetsid sh -c 'echo $$ > \"{pid_file}\"; exec sleep 30' &\n"
        "sleep 30\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = _config(tmp_path, monkeypatch, {"credHelpers": {"reg.example": "escape"}})
    start = time.monotonic()
    try:
        with pytest.raises(HelperFailedError) as caught:
            from_docker_config("reg.example", config, helper_timeout=1.0)
        took = time.monotonic() - start
        assert pid_file.exists() and _alive(int(pid_file.read_text()))  # it did escape
    finally:
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert took < 10, took
    assert "did not answer within 1 s" in str(caught.value)


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"auths": [{"auth": "YWxpY2U6czNjcmV0LVBhNTU="}]}, "auths must be a JSON object"),
        ({"auths": "YWxpY2U6czNjcmV0LVBhNTU="}, "auths must be a JSON object"),
        ({"credHelpers": "HOST"}, "credHelpers must be a JSON object"),
        ({"credHelpers": ["HOST"]}, "credHelpers must be a JSON object"),
        ({"credHelpers": {"HOST": 5}}, "credHelpers['HOST'] must be the name of a credential"),
        ({"credsStore": ["desktop"]}, "credsStore must be the name of a credential helper"),
    ],
)
def test_a_config_of_the_wrong_shape_is_one_line_naming_the_file_and_key(
    cli: CLI,
    plain_registry: RegistryProcess,
    tls_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    doc: dict[str, object],
    named: str,
) -> None:
    """A hand-edited config.json whose `auths` or `credHelpers` is not an object, or whose
    helper name is not a string, used to end the copy in 'unexpected AttributeError' /
    'TypeError' (exit 8) once the registry asked for credentials. It is bad input: one line
    naming the file and the key (exit 1), never the value (it may be a password's base64)."""
    host = tls_registry.host
    shaped = json.loads(json.dumps(doc).replace("HOST", host))
    config = _config(tmp_path, monkeypatch, shaped)
    seed_image(plain_registry, "shape/one", "v1", seed=317)
    out = cli(
        "copy",
        plain_registry.ref("shape/one:v1"),
        tls_registry.ref("shape/one:v1"),
        "--dest-ca",
        str(pki.ca_pem_path),
    )
    assert out.code == ExitCode.USAGE, out.err
    line = out.error_line
    assert str(config) in line and named.replace("HOST", host) in line, line
    assert "unexpected" not in line and "YWxpY2U6" not in out.err
