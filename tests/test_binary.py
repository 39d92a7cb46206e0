"""The single-file build (`scripts/build-binary.sh`): run in an empty environment, it copies,
saves itself into an archive, and the copy taken out of that archive loads it.

The file comes from `$TRANSSHIP_BINARY` (scripts/test.sh builds it first and sets that) or is
built once per session here. A missing or broken file fails these tests; they never skip.
Also here: what a venv install does with `--include-tool`, the tool's place in the tar, and the
archive compatibility check.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from clirunner import CLI
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image, seed_index
from harness.skopeo import Skopeo

from transship.errors import ExitCode
from transship.layout import write_tar
from transship.layout.archive import tool_head_size
from transship.layout.index import TOOL_FILE

ROOT = Path(__file__).resolve().parent.parent
CREDS = "alice:s3cret-Pa55"


@pytest.fixture(scope="session")
def binary() -> Path:
    """The one-file executable: `$TRANSSHIP_BINARY`, else built now by the build script."""
    given = os.environ.get("TRANSSHIP_BINARY")
    if given:
        path = Path(given)
        assert path.is_file() and os.access(path, os.X_OK), (
            f"TRANSSHIP_BINARY={given} is not an executable file; run bash scripts/build-binary.sh"
        )
        return path
    assert os.environ.get("CI") != "true", "CI must build the file first (scripts/test.sh does)"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-binary.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, f"build-binary.sh failed:\n{done.stderr[-3000:]}"
    return ROOT / "dist" / "transship"


def run_bare(
    exe: Path, *args: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`env -i EXE ARGS…`: no PATH, no venv, no HOME, nothing from this test process."""
    done = subprocess.run(
        ["env", "-i", str(exe), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr, done.stderr
    for secret in ("s3cret-Pa55",):
        assert secret not in done.stdout + done.stderr
    return done


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def test_version_in_an_empty_environment(binary: Path, tmp_path: Path) -> None:
    done = run_bare(binary, "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    m = re.fullmatch(
        r"transship (\S+) \(commit ([0-9a-f]{7,40})(-dirty)?, single-file build\)\n", done.stdout
    )
    assert m, done.stdout
    from transship import __version__

    assert m.group(1) == __version__
    known = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{m.group(2)}^{{commit}}"], check=False
    )
    assert known.returncode == 0, f"commit {m.group(2)} is not a commit of this repository"


def test_copy_between_loopback_registries(
    binary: Path,
    plain_registry: RegistryProcess,
    make_registry,
    pki: PKI,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    seed_index(plain_registry, "bin/multi", "v1", seed=1501)
    dest = make_registry("tls_basic")  # TLS with the test CA and a password: the bundled ssl
    done = run_bare(
        binary,
        "copy",
        f"{plain_registry.host}/bin/multi:v1",
        f"{dest.host}/copied/multi:v1",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "-q",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert skopeo(dest, "copied/multi:v1") == skopeo(plain_registry, "bin/multi:v1")


def test_save_include_tool_then_the_extracted_copy_loads(
    binary: Path,
    plain_registry: RegistryProcess,
    make_registry,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    seed_image(plain_registry, "bin/app", "v1", seed=1502, layer_sizes=(300_000, 200_000))
    seed_index(plain_registry, "bin/idx", "v2", seed=1503)
    images = tmp_path / "images.txt"
    images.write_text(f"{plain_registry.host}/bin/app:v1\n{plain_registry.host}/bin/idx:v2\n")
    media = tmp_path / "media"
    head = tool_head_size(binary.stat().st_size)
    args = ["save", "--images", str(images), "-o", str(media / "tkg.tar"), "-q", "--include-tool"]

    # a split size too small for the tool is refused before anything is read or written
    small = run_bare(binary, *args, "--split-size", str(head - 512), cwd=tmp_path)
    assert small.returncode == ExitCode.USAGE and "at least" in small.stderr
    assert not media.exists()

    # the first volume ends exactly where the tool does: it holds it whole, nothing else
    done = run_bare(binary, *args, "--split-size", str(head), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    parts = sorted(media.glob("tkg.tar.[0-9][0-9][0-9]"))
    assert len(parts) >= 2 and parts[0].stat().st_size == head

    # the far side: only the first volume, GNU tar, nothing installed
    far = tmp_path / "far"
    far.mkdir()
    untar = subprocess.run(
        ["tar", "-xf", str(parts[0]), "--occurrence", TOOL_FILE],
        cwd=far,
        capture_output=True,
        text=True,
    )
    assert untar.returncode == 0, untar.stderr
    tool = far / TOOL_FILE
    assert tool.stat().st_mode & 0o777 == 0o755
    assert sha256_file(tool) == sha256_file(binary)
    whole = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        sums = tar.extractfile("transship/SHA256SUMS").read().decode()  # type: ignore[union-attr]
        writer = json.loads(tar.extractfile("transship/archive.json").read())["writer"]  # type: ignore[union-attr]
    assert f"{sha256_file(binary)}  {TOOL_FILE}\n" in sums
    # the same archive unsplit: plain `tar -xf tkg.tar transship/bin/transship` finds it too
    (tmp_path / "whole").mkdir()
    (tmp_path / "whole" / "tkg.tar").write_bytes(whole)
    untar = subprocess.run(["tar", "-xf", "tkg.tar", TOOL_FILE], cwd=tmp_path / "whole")
    assert untar.returncode == 0
    assert sha256_file(tmp_path / "whole" / TOOL_FILE) == sha256_file(binary)
    assert writer["program"] == "transship" and writer["commit"] != "unknown"

    verified = run_bare(tool, "archive", "verify", str(parts[0]), cwd=far)
    assert verified.returncode == 0, verified.stderr
    assert "compatible with this" in verified.stdout and "0 problem(s)" in verified.stdout
    assert f"carries {TOOL_FILE}" in verified.stdout
    dest = make_registry("plain")
    loaded = run_bare(tool, "load", str(parts[0]), "--dest", f"{dest.host}/far", "-q", cwd=far)
    assert loaded.returncode == 0, loaded.stderr
    assert skopeo(dest, "far/bin/app:v1") == skopeo(plain_registry, "bin/app:v1")
    assert skopeo(dest, "far/bin/idx:v2") == skopeo(plain_registry, "bin/idx:v2")


def test_include_tool_from_a_venv_says_how_to_build_it(cli: CLI, tmp_path: Path) -> None:
    images = tmp_path / "images.txt"
    images.write_text("127.0.0.1:9/never/read:v1\n")
    out = cli("save", "--images", str(images), "-o", str(tmp_path / "a.tar"), "--include-tool")
    assert out.code == ExitCode.USAGE
    assert "bash scripts/build-binary.sh" in out.error_line
    assert not (tmp_path / "a.tar.partial").exists()


def _layout_with_tool(root: Path, tool: bytes) -> Path:
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    (root / "transship" / "bin").mkdir(parents=True)
    (root / "transship" / "archive.json").write_text("{}")
    (root / TOOL_FILE).write_bytes(tool)
    return root


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 70_001])
def test_the_tool_is_the_first_file_of_the_tar(tmp_path: Path, size: int) -> None:
    tool = os.urandom(size)
    layout = _layout_with_tool(tmp_path / "layout", tool)
    write_tar(layout, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["transship", "transship/bin", TOOL_FILE, "oci-layout"]
    assert names.count("transship") == 1  # the directory is not added twice
    assert members[2].mode == 0o755 and members[2].size == size
    assert members[3].offset == tool_head_size(size)  # the tool ends exactly there
    data = (tmp_path / "a.tar").read_bytes()
    assert data[members[2].offset_data : members[2].offset_data + size] == tool


def test_archive_verify_names_the_writer_and_refuses_another_format(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    seed_image(plain_registry, "bin/compat", "v1", seed=1504)
    images = tmp_path / "images.txt"
    images.write_text(f"{plain_registry.host}/bin/compat:v1\n")
    archive = tmp_path / "arch"
    assert cli("save", "--images", str(images), "-o", str(archive), "-q").code == 0
    info_file = archive / "transship" / "archive.json"
    doc = json.loads(info_file.read_text())
    from transship import __version__

    assert doc["writer"]["version"] == __version__
    out = cli("archive", "verify", str(archive))
    assert out.code == 0
    assert f"written by transship {__version__} (commit " in out.out
    assert "compatible with this" in out.out

    doc["format"] = "transship-archive/v2"
    doc["writer"]["version"] = "9.0.0"
    info_file.write_text(json.dumps(doc))
    out = cli("archive", "verify", str(archive))
    assert out.code == ExitCode.INCOMPATIBLE
    assert "written by transship 9.0.0" in out.error_line
    assert "transship-archive/v2" in out.error_line and "--occurrence" in out.error_line
    out = cli("load", str(archive), "--dest", "127.0.0.1:9/x")
    assert out.code == ExitCode.INCOMPATIBLE


def test_archive_verify_checks_the_carried_tool_against_sha256sums(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    seed_image(plain_registry, "bin/sums", "v1", seed=1505)
    images = tmp_path / "images.txt"
    images.write_text(f"{plain_registry.host}/bin/sums:v1\n")
    archive = tmp_path / "arch"
    assert cli("save", "--images", str(images), "-o", str(archive), "-q").code == 0
    tool = os.urandom(4096)
    (archive / TOOL_FILE).parent.mkdir(parents=True)
    (archive / TOOL_FILE).write_bytes(tool)
    sums = archive / "transship" / "SHA256SUMS"
    out = cli("archive", "verify", str(archive))
    assert out.code == ExitCode.INCOMPLETE and "is not listed in" in out.err
    sums.write_text(sums.read_text() + f"{hashlib.sha256(tool).hexdigest()}  {TOOL_FILE}\n")
    out = cli("archive", "verify", str(archive))
    assert out.code == 0 and f"carries {TOOL_FILE} (4096 bytes" in out.out
    (archive / TOOL_FILE).write_bytes(b"x" + tool[1:])
    out = cli("archive", "verify", str(archive))
    assert out.code == ExitCode.INTEGRITY and "does not match" in out.err


def test_system_roots_fall_back_to_the_distributions_bundle(tmp_path: Path) -> None:
    """A Debian-built libcrypto on RHEL finds nothing at /usr/lib/ssl: use RHEL's bundle."""
    import ssl

    from transship.buildinfo import system_roots_file

    rhel = tmp_path / "ca-bundle.crt"
    rhel.write_text("-----BEGIN CERTIFICATE-----\n")
    candidates = [str(tmp_path / "absent.crt"), str(rhel)]
    nothing = ssl.DefaultVerifyPaths(None, None, "SSL_CERT_FILE", "", "SSL_CERT_DIR", "")  # type: ignore[arg-type]
    assert system_roots_file({}, nothing, candidates) == str(rhel)
    # the compiled-in place exists, or the user chose: left alone
    found = ssl.DefaultVerifyPaths(str(rhel), None, "SSL_CERT_FILE", "", "SSL_CERT_DIR", "")  # type: ignore[arg-type]
    assert system_roots_file({}, found, candidates) is None
    assert system_roots_file({"SSL_CERT_FILE": "/x.pem"}, nothing, candidates) is None
    assert system_roots_file({}, nothing, [str(tmp_path / "absent.crt")]) is None
