"""Progress: bytes sent out of the total still to send, and an ETA, for copy, save and load.

The arithmetic is pure and tested as such; the totals are checked on real copies against what
the seeded images independently add up to.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import yaml
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_images_sharing_base
from rich.console import Console

from transship.engine import CopyTask, Stats, TaskResult
from transship.layout import OCILayout
from transship.progress import (
    ByteBudget,
    bytes_detail,
    eta_seconds,
    format_duration,
    summary_table,
)

# --- pure functions ------------------------------------------------------------------------


def test_format_duration() -> None:
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(125) == "2:05"
    assert format_duration(6 * 3600 + 61) == "6:01:01"
    assert format_duration(-3) == "0:00"


def test_eta_is_what_is_left_at_the_average_rate() -> None:
    assert eta_seconds(0, 100, 5.0) is None  # nothing sent yet: no rate to go on
    assert eta_seconds(10, None, 5.0) is None  # no total: no ETA
    assert eta_seconds(25, 100, 5.0) == 15.0  # 5 B/s, 75 B left
    assert eta_seconds(100, 100, 5.0) == 0.0
    assert eta_seconds(120, 100, 5.0) == 0.0  # retries sent more than planned


def test_bytes_detail_shows_done_total_rate_and_eta() -> None:
    assert bytes_detail(90_000_000, 117_000_000, 9.0) == "90.0 MB / 117.0 MB  10.0 MB/s  ETA 0:03"
    assert bytes_detail(5_000, None, 1.0) == "5.0 KB  5.0 KB/s"  # a single copy: no total


def test_kept_bytes_count_as_done_but_not_in_the_rate() -> None:
    """A resumed save kept 80 MB an earlier run wrote and moved 10 MB in 10 s: the bar
    shows 90 MB done, at 1 MB/s, 27 MB left taking 27 s, not 90 MB/s and 0:00."""
    assert bytes_detail(90_000_000, 117_000_000, 10.0, kept=80_000_000) == (
        "90.0 MB / 117.0 MB  1.0 MB/s  ETA 0:27"
    )
    assert eta_seconds(80, 100, 5.0, kept=80) is None  # nothing moved yet: no rate
    budget = ByteBudget([_task("a", 100)])
    budget.resumed(80)
    budget.sent(10)
    assert (budget.done, budget.kept) == (90, 80)


def test_summary_rate_leaves_kept_bytes_out() -> None:
    stats = Stats(bytes_uploaded=100_000_000, bytes_resumed=90_000_000)
    console = Console(width=100, file=io.StringIO())
    console.print(summary_table([], stats, 10.0))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert re.search(r"effective rate\s*│\s*1\.0 MB/s", text), text


def _task(name: str, size: int | None) -> CopyTask:
    layout = OCILayout.__new__(OCILayout)  # the budget never touches endpoints
    return CopyTask(layout, name, "v1", layout, name, ("v1",), size=size)


def test_budget_counts_down_from_the_plans_unique_bytes() -> None:
    # three images of 100 bytes each sharing a 60-byte base: 180 unique bytes
    a, b, c = (_task(n, 100) for n in "abc")
    budget = ByteBudget([a, b, c], unique_bytes=180)
    assert budget.total == 180
    budget.sent(100)
    budget.finished(TaskResult(a, "copied", bytes_sent=100))  # sent its share and the base
    assert budget.total == 220  # a's share was 60; b and c still count 60 each
    budget.sent(40)
    budget.finished(TaskResult(b, "copied", bytes_sent=40))  # the base was mounted
    budget.finished(TaskResult(c, "skipped"))  # already at the destination
    assert (budget.done, budget.total) == (140, 140)  # exact once every task is done


def test_budget_without_unique_bytes_or_sizes() -> None:
    a, b = _task("a", 50), _task("b", 70)
    assert ByteBudget([a, b]).total == 120  # an unresolved total: every image on its own
    assert ByteBudget([a, b], unique_bytes=500).total == 120  # never above the plan's sizes
    unknown = ByteBudget([_task("x", None)])
    unknown.sent(10)
    assert unknown.total is None and unknown.done == 10
    mixed = ByteBudget([a, _task("y", None)])
    mixed.sent(80)
    assert mixed.total == 80  # never below what was sent


# --- real runs -----------------------------------------------------------------------------

START = re.compile(r"progress: 0/(\d+) images, .* to send \((\d+) bytes\)")


def test_copy_save_and_load_report_the_total_to_send(
    cli: CLI, plain_registry: RegistryProcess, make_registry, tmp_path: Path
) -> None:
    client = SeedClient.for_registry(plain_registry)
    images = build_images_sharing_base(61, 5, base_sizes=(300_000,), layer_sizes=(40_000,))
    refs = []
    for i, image in enumerate(images):
        client.push_image(f"prog/app{i}", image, "v1")
        refs.append(plain_registry.ref(f"prog/app{i}:v1"))
    # each blob and manifest once: what a fresh destination has to receive
    unique = {b.digest: b.size for img in images for b in img.pushable_blobs}
    unique |= {img.digest: img.size for img in images}
    expected = sum(unique.values())
    naive = sum(img.size + sum(b.size for b in img.pushable_blobs) for img in images)
    assert naive > expected + 1_000_000  # the shared base makes them differ a lot

    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    dest = make_registry("plain")
    plan_file = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(listing), "--dest", f"{dest.host}/m", "-o", str(plan_file))
    assert out.code == 0, out.err
    assert yaml.safe_load(plan_file.read_text())["totals"]["bytes"] == expected

    out = cli("copy", "--plan", str(plan_file))
    assert out.code == 0, out.err
    assert START.search(out.err) is not None, out.err
    assert START.search(out.err).groups() == ("5", str(expected))  # type: ignore[union-attr]

    archive = tmp_path / "layout"
    out = cli("save", "--plan", str(plan_file), "-o", str(archive))
    assert out.code == 0, out.err
    assert START.search(out.err).groups() == ("5", str(expected))  # type: ignore[union-attr]

    stored = sum(p.stat().st_size for p in (archive / "blobs" / "sha256").iterdir())
    assert stored == expected
    other = make_registry("plain")
    out = cli("load", str(archive), "--dest", f"{other.host}/n")
    assert out.code == 0, out.err
    assert START.search(out.err).groups() == ("5", str(expected))  # type: ignore[union-attr]
