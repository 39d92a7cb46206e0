"""Start-up: running one command imports that command's module, not every command's.

A no-op rerun is about a second, so what the interpreter imports before the first request
counts; `transship copy` must not pay for the archive server, the TKG wing or the CA checker.
"""

from __future__ import annotations

import subprocess
import sys

from transship.commands import MODULES, all_commands, command


def test_every_command_is_found_by_name_in_its_own_module() -> None:
    everything = {c.name: c for c in all_commands()}
    assert set(everything) == set(MODULES)
    for name, expected in everything.items():
        assert command(name) is expected
    assert command("no-such-command") is None


def _modules_after(*argv: str) -> set[str]:
    """The modules a fresh interpreter holds after `transship ARGV` (help only: no work)."""
    probe = (
        "import sys\n"
        "from transship.cli import cli\n"
        f"cli.main(args={list(argv)!r}, standalone_mode=False)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
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
