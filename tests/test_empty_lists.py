"""An image list or old script that names no image (an empty pipe: a `grep` that matched
nothing, a renamed image) is bad input for every command reading one: one line naming the
file and saying it lists no images (exit 1), never a run that does nothing and reports a
release complete."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess

from transship.errors import ExitCode
from transship.plan.model import API_VERSION, Plan

#: what a list or a script may hold and still name no image
EMPTY = ("", "\n\n", "# only comments\n  # and blank lines\n\n")
SCRIPT_ONLY_SCAFFOLDING = "#!/usr/bin/env bash\nset -euo pipefail\n\n# nothing to copy\n"


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def _commands(flag: str, source: str, dest: str, tmp_path: Path) -> list[tuple[str, ...]]:
    """Every command that reads `flag` (`--images`/`--script`), on `source`."""
    plan = "images" if flag == "--images" else "script"
    return [
        ("verify", flag, source, "--dest", dest),
        ("copy", flag, source, "--dest", dest),
        ("save", flag, source, "-o", str(tmp_path / "out.tar")),
        ("plan", plan, source, "--dest", dest, "-o", str(tmp_path / "plan.yaml")),
        ("tkg", "config", flag, source, "--dest", dest),
    ]


@pytest.mark.parametrize("text", EMPTY)
def test_an_empty_image_list_is_a_usage_error_for_every_command(
    cli: CLI,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
) -> None:
    dest = f"{plain_registry.host}/empty"
    listing = tmp_path / "images.txt"
    listing.write_text(text)
    for source, name in ((str(listing), str(listing)), ("-", "<stdin>")):
        for args in _commands("--images", source, dest, tmp_path):
            _stdin(monkeypatch, text)
            out = cli(*args)
            assert out.code == ExitCode.USAGE, (args, out.err)
            line = out.error_line
            assert f"{name}: lists no images" in line, (args, line)
            assert "complete" not in out.err, out.err
    assert not (tmp_path / "out.tar").exists() and not (tmp_path / "plan.yaml").exists()


@pytest.mark.parametrize("text", (*EMPTY, SCRIPT_ONLY_SCAFFOLDING))
def test_an_old_script_with_no_image_is_a_usage_error_for_every_command(
    cli: CLI,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
) -> None:
    dest = f"{plain_registry.host}/empty"
    script = tmp_path / "publish-images.sh"
    script.write_text(text)
    for source, name in ((str(script), str(script)), ("-", "<stdin>")):
        for args in _commands("--script", source, dest, tmp_path):
            _stdin(monkeypatch, text)
            out = cli(*args)
            assert out.code == ExitCode.USAGE, (args, out.err)
            assert f"{name}: lists no images" in out.error_line, (args, out.err)


def test_a_list_with_one_image_among_comments_still_runs(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check counts images, not lines: one reference among comments is a list."""
    text = f"# one\n\n{plain_registry.ref('empty/one:v1')}  # the image\n"
    _stdin(monkeypatch, text)
    out = cli(
        "plan",
        "images",
        "-",
        "--dest",
        f"{plain_registry.host}/x",
        "-o",
        str(tmp_path / "plan.yaml"),
        "--no-resolve",
    )
    assert out.code == 0, out.err
    assert "empty/one" in (tmp_path / "plan.yaml").read_text()


#: plans naming nothing: as `transship plan` writes one, one with the entries key left out,
#: the placeholder the Kubernetes Job file once carried (applied over the real ConfigMap),
#: and the same in JSON
EMPTY_PLANS = {
    "written": Plan((), destination_prefix="registry.example/empty").to_yaml(),
    "no-entries-key": f"apiVersion: {API_VERSION}\nkind: Plan\ncreated: '2026-01-01T00:00:00Z'\n",
    "placeholder": "apiVersion: transship/v1alpha1\nkind: Plan\n"
    'created: "2026-01-01T00:00:00Z"\nsources: []\nentries: []\n',
    "json": '{"apiVersion": "transship/v1alpha1", "kind": "Plan", "created": '
    '"2026-01-01T00:00:00Z", "entries": []}\n',
}


@pytest.mark.parametrize("text", EMPTY_PLANS.values(), ids=EMPTY_PLANS.keys())
@pytest.mark.parametrize("given", ["file", "stdin"])
def test_a_plan_with_no_entries_is_a_usage_error_for_every_command(
    cli: CLI,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    given: str,
) -> None:
    """`--plan` of a plan that names nothing is refused as an empty list is: one line naming
    the file, exit 1, no run. (`verify --plan` of one said `complete: 0 entries`, exit 0,
    against a real registry, and every `copy --shard` of it passed having copied nothing:
    what proves a sharded copy complete must not pass on nothing.)"""
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    source, name = (str(plan), str(plan)) if given == "file" else ("-", "<stdin>")
    dest = f"{plain_registry.host}/empty"
    for args in (
        ("copy", "--plan", source),
        ("copy", "--plan", source, "--shard", "1/2"),
        ("save", "--plan", source, "-o", str(tmp_path / "out.tar")),
        ("verify", "--plan", source),
        ("verify", "--plan", source, "--dest", dest),
        ("tkg", "config", "--plan", source, "--dest", dest),
    ):
        _stdin(monkeypatch, text)
        out = cli(*args)
        assert out.code == ExitCode.USAGE, (args, out.err)
        assert f"{name}: a plan with no entries" in out.error_line, (args, out.err)
        assert "\n" not in out.err.strip() and "complete" not in out.err, (args, out.err)
    assert not (tmp_path / "out.tar").exists()
