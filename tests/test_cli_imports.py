"""Start-up: running one command imports that command's module, not every command's.

A no-op rerun is about a second, so what the interpreter imports before the first request
counts; `transship copy` must not pay for the archive server, the TKG wing or the CA checker.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

from harness.pki import PKI
from harness.registry import PASSWORD, USERNAME, RegistryProcess
from harness.seed import seed_image

from transship.commands import MODULES, all_commands, command
from transship.digest import Digest
from transship.plan.model import Plan, PlanEntry


def test_every_command_is_found_by_name_in_its_own_module() -> None:
    everything = {c.name: c for c in all_commands()}
    assert set(everything) == set(MODULES)
    for name, expected in everything.items():
        assert command(name) is expected
    assert command("no-such-command") is None


def _modules_after(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after `transship ARGV` (the command's exit code
    must be 0)."""
    probe = (
        "import sys\n"
        "from transship.cli import cli\n"
        f"code = cli.main(args={list(argv)!r}, standalone_mode=False)\n"
        "assert not code, code\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    return set(out.stdout.split())


def test_copy_imports_neither_the_server_nor_the_other_commands() -> None:
    loaded = _modules_after("copy", "--help")
    assert "transship.commands.copy" in loaded
    for other in ("serve", "tkg", "ca", "archive", "verify", "plan"):
        assert f"transship.commands.{other}" not in loaded
    assert "aiohttp.web" not in loaded and "transship.serve.server" not in loaded


def test_help_and_a_misspelt_command_still_see_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "transship", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for name in MODULES:
        assert name in out.stdout
    typo = subprocess.run(
        [sys.executable, "-m", "transship", "verfy"], capture_output=True, text=True, timeout=60
    )
    assert typo.returncode != 0 and "verfy" in typo.stderr


#: what `copy --plan` needs only in some runs, so a plain run (a no-op rerun) never imports it:
#: rich draws bars and tables (not under -q), cryptography reads certificates (a CA given, a
#: TLS failure explained), the image-list and script readers, list resolution, --preflight,
#: --lock-output, --shard accounting, verify's use case and the archive layout
LAZY_FOR_COPY = (
    "rich",
    "cryptography",
    "transship.tkg.script",
    "transship.ops.listcache",
    "transship.ops.listed",
    "transship.ops.preflight",
    "transship.imgpkg.lock",
    "transship.ops.shard",
    "transship.ops.verify",
    "transship.harbor.accessories",
    "transship.layout",
)


def test_copy_leaves_what_only_some_runs_use() -> None:
    loaded = _modules_after("copy", "--help")
    assert "aiohttp" in loaded and "transship.remote.registry" in loaded
    for lazy in LAZY_FOR_COPY:
        assert lazy not in loaded, lazy


def test_copy_help_reads_no_yaml() -> None:
    """A single `copy SRC DST` reads no YAML; a plan loads PyYAML when it is read."""
    assert "yaml" not in _modules_after("copy", "--help")


def test_a_quiet_copy_and_its_rerun_leave_them_too(
    plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Not only `--help`: a real quiet copy (and its no-op rerun) draws nothing and reads no
    certificate, so neither rich nor cryptography is imported. (It resolves its source as a
    list is, for bundles and attachments: that part is loaded.)"""
    seed_image(plain_registry, "lazy/src", "v1", seed=71)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env["DOCKER_CONFIG"] = str(tmp_path)
    argv = ("copy", plain_registry.ref("lazy/src:v1"), plain_registry.ref("lazy/dst"), "-q")
    for _run in ("copy", "no-op rerun"):
        loaded = _modules_after(*argv, env=env)
        assert "transship.engine" in loaded
        resolving = ("transship.ops.listcache", "transship.ops.listed")
        for lazy in (*(m for m in LAZY_FOR_COPY if m not in resolving), "yaml"):
            assert lazy not in loaded, lazy


def test_a_copy_into_a_registry_given_its_ca_reads_no_certificate_with_cryptography(
    plain_registry: RegistryProcess, tls_registry: RegistryProcess, pki: PKI, tmp_path: Path
) -> None:
    """`--dest-ca` with a self-signed CA (the common case: a private registry's root) is
    checked to be a CA by OpenSSL alone, so the copy and its no-op rerun import no
    cryptography (~50 ms of a rerun's start-up)."""
    seed_image(plain_registry, "lazy/ca-src", "v1", seed=72)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env["DOCKER_CONFIG"] = str(tmp_path)
    argv = (
        "copy",
        plain_registry.ref("lazy/ca-src:v1"),
        tls_registry.ref("lazy/ca-dst"),
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        f"{USERNAME}:{PASSWORD}",
        "-q",
    )
    for _run in ("copy", "no-op rerun"):
        loaded = _modules_after(*argv, env=env)
        assert "transship.engine" in loaded
        assert "cryptography" not in loaded


def test_a_rerun_of_a_large_plan_reads_no_yaml(
    plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """A plan is read again by every rerun: kept parsed (`load_yaml(keep=True)`), its rerun
    imports no PyYAML, and copies the same."""
    image = seed_image(plain_registry, "lazy/plan-src", "v1", seed=73)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env["DOCKER_CONFIG"] = str(tmp_path)
    entry = PlanEntry.create(
        plain_registry.ref("lazy/plan-src:v1"),
        plain_registry.ref("lazy/plan-dst"),
        source_digest=Digest.parse(image.digest),
    )
    plan = tmp_path / "plan.yaml"
    padding = "# a plan as large as a release's (its size is what counts here)\n" * 400
    plan.write_text(Plan((entry,)).to_yaml() + padding)
    loaded = _modules_after("copy", "--plan", str(plan), "-q", env=env)
    assert "yaml" in loaded  # the first read parses it
    assert "yaml" not in _modules_after("copy", "--plan", str(plan), "-q", env=env)


def test_aiohttp_is_imported_without_loading_the_system_roots() -> None:
    """aiohttp's two import-time TLS contexts, which transship never uses, hold no roots
    (each load costs ~50 ms); OpenSSL's variables are restored, so the contexts transship
    builds afterwards trust the system roots as before."""
    probe = (
        "import os\n"
        "names = ('SSL_CERT_FILE', 'SSL_CERT_DIR')\n"
        "before = [os.environ.get(n) for n in names]\n"
        "from transship.cli import cli\n"
        "cli.main(args=['copy', '--help'], standalone_mode=False)\n"
        "from aiohttp import connector\n"
        "from transship.remote.tls import ssl_context\n"
        "print(connector._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'],\n"
        "      before == [os.environ.get(n) for n in names],\n"
        "      ssl_context(None).cert_store_stats()['x509_ca'])\n"
    )
    bundle = ssl.get_default_verify_paths().cafile
    assert bundle, "this test needs a system CA bundle"
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    for extra in ({}, {"SSL_CERT_FILE": bundle}):  # OpenSSL's default, and the user's choice
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**env, **extra},
        )
        aiohttp_roots, restored, ours = out.stdout.split()[-3:]
        assert aiohttp_roots == "0"
        assert restored == "True"
        assert int(ours) > 0
