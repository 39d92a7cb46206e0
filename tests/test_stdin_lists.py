"""`--images -` (and `--script -`, `plan images -`) read the list from standard input, as in an
`xargs`-style pipeline; messages name it `<stdin>` with the line. Run as a real process."""

from __future__ import annotations

import subprocess
import sys

from harness.registry import RegistryProcess
from harness.seed import seed_image
from harness.skopeo import Skopeo

from transship.errors import ExitCode


def _run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transship", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_copy_and_verify_read_the_image_list_from_stdin(
    plain_registry: RegistryProcess, make_registry, skopeo: Skopeo
) -> None:
    refs = []
    for i in range(2):
        seed_image(plain_registry, f"stdin1/app{i}", "v1", seed=810 + i, layer_sizes=(5_000,))
        refs.append(f"{plain_registry.host}/stdin1/app{i}:v1")
    listing = "# from a pipeline\n" + "\n".join(refs) + "\n"
    dest = make_registry("plain")
    out = _run("copy", "--images", "-", "--dest", f"{dest.host}/m", "-q", stdin=listing)
    assert out.returncode == 0, out.stderr
    for i in range(2):
        assert skopeo(dest, f"m/stdin1/app{i}:v1") == skopeo(plain_registry, f"stdin1/app{i}:v1")
    out = _run("verify", "--images", "-", "--dest", f"{dest.host}/m", stdin=listing)
    assert out.returncode == 0, out.stderr
    out = _run("plan", "images", "-", "--dest", f"{dest.host}/m", "-q", stdin=listing)
    assert out.returncode == 0, out.stderr
    assert "<stdin>:2" in out.stdout and "stdin1/app1" in out.stdout  # origins name stdin


def test_a_bad_line_on_stdin_is_named_by_its_number() -> None:
    listing = "ok.example/a:v1\nNOT A REF\n"
    out = _run("copy", "--images", "-", "--dest", "127.0.0.1:1/m", stdin=listing)
    assert out.returncode == ExitCode.USAGE, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transship: error: <stdin>:2:"), out.stderr
    assert "Traceback" not in out.stderr
