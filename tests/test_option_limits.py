"""Options and plans that cannot work are one-line usage errors before any byte moves: a
`--parallel` below 1, a `--split-size` of a few bytes, a `--dest` beside a plan that cannot
be moved below it, and two images claiming one destination tag (bug hunt items 2, 4, 6 and 10)."""

from __future__ import annotations

import base64
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, seed_image

from transship.digest import Digest
from transship.errors import ExitCode, PlanError
from transship.plan.model import EntryKind, Plan, PlanEntry


class Hung(Exception):
    pass


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: `--parallel 0` used to wait forever on an empty semaphore."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.fixture
def planned(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> tuple[Path, RegistryProcess, Path]:
    """A plan of two images on the plain registry for `DEST/mirror`, and its saved tar."""
    host = plain_registry.host
    seed_image(plain_registry, "limits/app", "v1", seed=6101, layer_sizes=(20_000,))
    seed_image(plain_registry, "limits/tool", "v2", seed=6102, layer_sizes=(10_000,))
    images = write(tmp_path / "images.txt", f"{host}/limits/app:v1", f"{host}/limits/tool:v2")
    dest = make_registry("plain")
    plan = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(images), "--dest", f"{dest.host}/mirror", "-o", str(plan))
    assert out.code == 0, out.err
    archive = tmp_path / "saved.tar"
    out = cli("save", "--plan", str(plan), "-o", str(archive), "-q")
    assert out.code == 0, out.err
    return plan, dest, archive


@pytest.mark.parametrize("value", ["0", "-1"])
def test_parallel_below_one_is_refused_by_every_command(
    cli: CLI, planned: tuple[Path, RegistryProcess, Path], tmp_path: Path, value: str
) -> None:
    plan, dest, archive = planned
    images, again = str(tmp_path / "images.txt"), tmp_path / "p.yaml"
    commands = {
        "copy": ("copy", "--plan", str(plan)),
        "save": ("save", "--plan", str(plan), "-o", str(tmp_path / "again.tar")),
        "load": ("load", str(archive), "--dest", f"{dest.host}/loaded"),
        "verify": ("verify", "--plan", str(plan)),
        "tkg config": ("tkg", "config", "--plan", str(plan), "--dest", f"{dest.host}/mirror"),
        "plan": ("plan", "images", images, "--dest", f"{dest.host}/m", "-o", str(again)),
    }
    for name, args in commands.items():
        with deadline(20):
            out = cli(*args, "--parallel", value, "-q")
        assert out.code == ExitCode.USAGE, (name, out.err)
        assert "'--parallel'" in out.error_line and value in out.error_line, (name, out.err)
    client = SeedClient.for_registry(dest)
    assert client.list_tags("mirror/limits/app") == []  # nothing was copied or loaded
    assert client.list_tags("loaded/limits/app") == []
    assert not (tmp_path / "again.tar").exists() and not again.exists()


def test_dest_beside_a_plan_moves_it_as_load_does(
    cli: CLI,
    planned: tuple[Path, RegistryProcess, Path],
    make_registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--dest` beside `--plan` is never ignored: the plan's destinations move below it,
    each keeping its path below the prefix the plan records, as `load --dest` moves an
    archive; so the carried plan verifies what a load elsewhere pushed."""
    plan, dest, archive = planned
    other = make_registry("plain")
    elsewhere = f"{other.host}/elsewhere"
    out = cli("verify", "--plan", str(plan), "--dest", elsewhere, "-q")
    assert out.code == ExitCode.INCOMPLETE, out.err  # was "complete": it looked elsewhere
    out = cli("load", str(archive), "--dest", elsewhere, "-q")
    assert out.code == 0, out.err
    out = cli("verify", "--plan", str(plan), "--dest", elsewhere, "-q")
    assert out.code == 0, out.err  # the carried plan checks the load
    monkeypatch.setenv("TKG_CUSTOM_IMAGE_REPOSITORY", f"{other.host}/viaenv")
    out = cli("copy", "--plan", str(plan), "-q")  # --dest read from TKG's variable
    assert out.code == 0, out.err
    monkeypatch.delenv("TKG_CUSTOM_IMAGE_REPOSITORY")
    client = SeedClient.for_registry(other)
    assert client.list_tags("viaenv/limits/app") == ["v1"]
    assert SeedClient.for_registry(dest).list_tags("mirror/limits/app") == []  # not there

    # a plan recording no prefix cannot be moved: it must already be below --dest
    bare = tmp_path / "bare.yaml"
    bare.write_text("".join(
        line + "\n" for line in plan.read_text().splitlines()
        if not line.startswith("destinationPrefix:")
    ))  # fmt: skip
    out = cli("verify", "--plan", str(bare), "--dest", elsewhere, "-q")
    assert out.code == ExitCode.USAGE, out.err
    line = out.error_line
    assert f"--dest {elsewhere}" in line and "records no prefix" in line, line
    assert f"{dest.host}/mirror/limits/" in line, line  # where the plan sends it
    # the prefix the plan was made for (or one above it) changes nothing
    out = cli("copy", "--plan", str(plan), "--dest", f"{dest.host}/mirror", "-q")
    assert out.code == 0, out.err
    out = cli("verify", "--plan", str(bare), "--dest", dest.host, "-q")
    assert out.code == 0, out.err
    assert SeedClient.for_registry(dest).list_tags("mirror/limits/app") == ["v1"]


def test_split_size_below_the_floor_is_refused(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    seed_image(plain_registry, "limits/split", "v1", seed=6103, layer_sizes=(20_000,))
    images = write(tmp_path / "images.txt", f"{plain_registry.host}/limits/split:v1")
    media = tmp_path / "media"
    for size in ("10", "1K", "65535"):  # `10` meant 10G: it made 20,000 volumes
        out = cli("save", "--images", str(images), "-o", str(media / "t.tar"), "--split-size", size)
        assert out.code == ExitCode.USAGE, (size, out.err)
        assert "--split-size" in out.error_line and "at least 64K" in out.error_line
        assert not media.exists()
    out = cli("save", "--images", str(images), "-o", str(media / "t.tar"), "--split-size", "64K")
    assert out.code == 0, out.err
    assert (media / "t.tar.001").is_file()


def test_two_images_for_one_destination_tag_are_refused(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    mirror = make_registry("plain")
    seed_image(plain_registry, "coll/etcd", "v3", seed=6104, layer_sizes=(10_000,))
    seed_image(mirror, "coll/etcd", "v3", seed=6105, layer_sizes=(10_000,))  # another image
    seed_image(mirror, "coll/same", "v1", seed=6106, layer_sizes=(10_000,))
    seed_image(plain_registry, "coll/same", "v1", seed=6106, layer_sizes=(10_000,))  # a mirror
    first, second = f"{plain_registry.host}/coll/etcd:v3", f"{mirror.host}/coll/etcd:v3"
    clash = write(tmp_path / "clash.txt", first, second)
    dest = make_registry("plain")
    for args in (
        ("plan", "images", str(clash), "--dest", f"{dest.host}/m", "-o", str(tmp_path / "p.yaml")),
        ("copy", "--images", str(clash), "--dest", f"{dest.host}/m"),
        ("save", "--images", str(clash), "--dest", f"{dest.host}/m", "-o", str(tmp_path / "s")),
    ):
        out = cli(*args, "-q")
        assert out.code == ExitCode.USAGE, (args[0], out.err)
        line = out.error_line
        assert first in line and second in line, line
        assert f"{dest.host}/m/coll/etcd:v3" in line and "clash.txt:1" in line, line
    assert SeedClient.for_registry(dest).list_tags("m/coll/etcd") == []
    assert not (tmp_path / "p.yaml").exists()

    # the same source twice, or the same image from two registries, is one image: fine
    fine = write(
        tmp_path / "fine.txt",
        first,
        first,
        f"{plain_registry.host}/coll/same:v1",
        f"{mirror.host}/coll/same:v1",
    )
    out = cli("plan", "images", str(fine), "--dest", f"{dest.host}/m", "-o", str(tmp_path / "f"))
    assert out.code == 0, out.err
    out = cli("copy", "--images", str(fine), "--dest", f"{dest.host}/m", "-q")
    assert out.code == 0, out.err
    assert SeedClient.for_registry(dest).list_tags("m/coll/etcd") == ["v3"]


def _entry(source: str, digest: str | None, where: str) -> PlanEntry:
    known = Digest.parse(f"sha256:{digest * 64}") if digest else None
    return PlanEntry.create(source, "h.example/m/etcd", source_digest=known, origins=(where,))


def test_a_destination_tag_holds_one_digest() -> None:
    quay, hub = "quay.example/coreos/etcd:v3", "hub.example/coreos/etcd:v3"
    with pytest.raises(PlanError) as caught:
        Plan((_entry(quay, "a", "l.txt:1"), _entry(hub, "b", "l.txt:2")))
    message = str(caught.value)
    assert "h.example/m/etcd:v3" in message and quay in message and hub in message
    assert "l.txt:1" in message and "l.txt:2" in message and "\n" not in message
    # the same digest from two registries, the same source twice, or a digest not known yet
    assert len(Plan((_entry(quay, "a", "l.txt:1"), _entry(hub, "a", "l.txt:2"))).entries) == 2
    assert len(Plan((_entry(quay, "a", "l.txt:1"), _entry(quay, "a", "l.txt:3"))).entries) == 1
    assert len(Plan((_entry(quay, "a", "l.txt:1"), _entry(hub, None, "l.txt:2"))).entries) == 2
    # other tags of the same repository do not collide
    other = PlanEntry.create(
        "hub.example/coreos/etcd:v4", "h.example/m/etcd",
        source_digest=Digest.parse(f"sha256:{'c' * 64}"),
    )  # fmt: skip
    assert len(Plan((_entry(quay, "a", "l.txt:1"), other)).entries) == 2


def test_signatures_of_one_image_from_two_repositories_keep_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same image from two repositories under one destination brings two signatures for
    one `sha256-<subject>.sig` tag (a signature names its repository): the first is kept, the
    other left out with a warning, instead of refusing the whole plan."""
    subject = Digest.parse(f"sha256:{'e' * 64}")
    tag = f"sha256-{subject.hex}.sig"

    def signature(host: str, fill: str) -> PlanEntry:
        return PlanEntry.create(
            f"{host}/coreos/etcd:{tag}", "h.example/m/etcd", kind=EntryKind.ATTACHMENT,
            source_digest=Digest.parse(f"sha256:{fill * 64}"), subject=subject,
        )  # fmt: skip

    with caplog.at_level("WARNING", logger="transship.plan"):
        plan = Plan((signature("quay.example", "1"), signature("hub.example", "2")))
    assert [e.source for e in plan.entries] == [f"hub.example/coreos/etcd:{tag}"]
    assert "quay.example/coreos/etcd" in caplog.text and "left out" in caplog.text
    other = PlanEntry.create(
        f"hub.example/coreos/etcd:{tag}", "h.example/m/etcd", kind=EntryKind.ATTACHMENT,
        source_digest=Digest.parse(f"sha256:{'3' * 64}"), subject=Digest.of(b"another"),
    )  # fmt: skip
    with pytest.raises(PlanError):  # attachments of different subjects still clash
        Plan((signature("quay.example", "1"), other))


def test_an_output_below_a_file_names_the_file_that_is_no_directory(
    cli: CLI, planned: tuple[Path, RegistryProcess, Path], pki, tmp_path: Path
) -> None:
    """`-o notes.txt/plan.yaml` (a file where a directory should be) failed with mkdir's bare
    'File exists', which names no culprit: each output says which path is not a directory."""
    plan, _dest, archive = planned
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory\n")
    pem = pki.ca_pem_path.read_text()
    for args in (
        ("archive", "plan", str(archive), "-o", str(blocker / "plan.yaml")),
        ("ca", "decode", base64.b64encode(pem.encode()).decode(), "-o", str(blocker / "d/ca.pem")),
        ("save", "--plan", str(plan), "-o", str(blocker / "again.tar"), "-q"),
    ):
        out = cli(*args)
        assert out.code == ExitCode.USAGE, (args, out.err)
        assert f"{blocker} is not a directory" in out.error_line, out.err
        assert "File exists" not in out.error_line
