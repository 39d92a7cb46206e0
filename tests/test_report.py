"""`--report` of copy/save/load: the outcome (exit code, interrupted) and the summary's
counters are in it, and Ctrl-C still leaves it, with what was done so far."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clirunner import CLI
from harness.faultproxy import Fault
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_image, seed_image

from transship.errors import ExitCode
from transship.progress import human_bytes


def listing(tmp_path: Path, refs: list[str]) -> Path:
    path = tmp_path / "images.txt"
    path.write_text("\n".join(refs) + "\n")
    return path


def summary(err: str) -> dict[str, list[str]]:
    """The summary table's rows: what -> its values (split on " / ")."""
    rows = {}
    for line in err.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1].split(" / ")
    return rows


def assert_matches_summary(doc: dict[str, Any], err: str) -> None:
    rows = summary(err)
    counts, stats = doc["counts"], doc["stats"]
    assert rows["images copied / skipped / failed"] == [
        str(counts["imagesCopied"]),
        str(counts["imagesSkipped"]),
        str(counts["imagesFailed"]),
    ], err
    assert rows["blobs sent / mounted / already there"] == [
        str(stats["blobsSent"]),
        str(stats["blobsMounted"]),
        str(stats["blobsPresent"]),
    ], err
    assert rows["manifests pushed / already there"] == [
        str(stats["manifestsPushed"]),
        str(stats["manifestsPresent"]),
    ], err
    assert rows["bytes sent"] == [human_bytes(stats["bytesSent"])], err
    assert rows["bytes downloaded again"] == [human_bytes(stats["bytesRefetched"])], err
    shown = float(rows["time"][0].removesuffix(" s"))
    assert abs(shown - doc["seconds"]) <= 0.1, err


def test_a_report_says_the_exit_code_and_the_summary_counters(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    images = [seed_image(plain_registry, f"rep/app{i}", "v1", seed=700 + i) for i in range(2)]
    refs = [plain_registry.ref(f"rep/app{i}:v1") for i in range(2)]
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    args = ["copy", "--images", str(listing(tmp_path, refs)), "--dest", f"{dest.host}/m",
            "--dest-plain-http", "--report", str(report)]  # fmt: skip
    out = cli(*args)
    assert out.code == ExitCode.OK, out.err
    doc = json.loads(report.read_text())
    assert doc["exitCode"] == 0 and doc["interrupted"] is False
    assert doc["counts"] == {
        "entries": 2, "imagesCopied": 2, "imagesSkipped": 0, "imagesFailed": 0,
        "imagesInterrupted": 0, "imagesNotStarted": 0,
    }  # fmt: skip
    blobs = {b.digest for image in images for b in image.pushable_blobs}
    assert doc["stats"]["blobsSent"] == len(blobs)
    assert doc["stats"]["bytesSent"] == sum(e["bytes"] for e in doc["entries"]) > 0
    assert doc["stats"]["manifestsPushed"] == 2
    assert {"version", "seconds", "bytes_refetched", "entries"} <= set(doc)  # kept as they were
    assert_matches_summary(doc, out.err)

    again = cli(*args)  # all there: skipped, nothing sent
    assert again.code == ExitCode.OK, again.err
    doc = json.loads(report.read_text())
    assert doc["exitCode"] == 0 and doc["counts"]["imagesSkipped"] == 2
    assert doc["stats"]["blobsSent"] == 0 and doc["stats"]["manifestsPresent"] == 2
    assert_matches_summary(doc, again.err)

    # one image missing at the source: partial, and the report's top says so
    args[2] = str(listing(tmp_path, [*refs, plain_registry.ref("rep/nosuch:v1")]))
    partial = cli(*args)
    assert partial.code == ExitCode.PARTIAL, partial.err
    doc = json.loads(report.read_text())
    assert doc["exitCode"] == ExitCode.PARTIAL and doc["counts"]["imagesFailed"] == 1
    assert_matches_summary(doc, partial.err)


def test_ctrl_c_leaves_a_report_of_what_was_done(
    plain_registry: RegistryProcess,
    make_registry,
    make_fault_proxy,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """SIGINT after one image is copied, while one streams (rate-limited) and one waits:
    exit 130 with its one line, and a report that says so entry by entry."""
    client = SeedClient.for_registry(plain_registry)
    seed_image(plain_registry, "int/a-small", "v1", seed=710)
    bigs = {"int/b-big": build_image(711, layer_sizes=(3_000_000,))}
    bigs["int/c-big"] = build_image(712, layer_sizes=(3_000_000,))
    for name, image in bigs.items():
        client.push_image(name, image, "v1")
    layer = max(bigs["int/b-big"].pushable_blobs, key=lambda b: b.size).digest
    small = {b.digest for b in bigs["int/b-big"].pushable_blobs} - {layer}
    # the source behind a proxy whose own log says when b-big's layer is being read; it
    # trickles that layer as fast as transship takes it, so the record stays open while it
    # streams (socket buffers would hold most of the 3 MB at once)
    source = make_fault_proxy(
        plain_registry, Fault.trickle(500_000, f"/v2/int/b-big/blobs/{layer}", max_seconds=30)
    )
    refs = [source.ref(f"{name}:v1") for name in ("int/a-small", "int/b-big", "int/c-big")]
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    args = [
        sys.executable, "-m", "transship", "copy", "--images", str(listing(tmp_path, refs)),
        "--dest", f"{dest.host}/m", "--dest-plain-http", "--parallel", "1",
        "--limit-rate", "500K", "--report", str(report), "--shard", "1/1",
    ]  # fmt: skip
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        # a-small is done, b-big's small blobs have landed and its layer streams (3 MB at
        # 500 KB/s), c-big waits for its turn
        landed = {e.path for e in dest.blob_uploads("m/int/b-big")}
        if all(any(d.replace(":", "%3A") in p or d in p for p in landed) for d in small) and any(
            r.finished is None for r in source.log("GET", f"/v2/int/b-big/blobs/{layer}")
        ):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the copy ended before b-big started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # as before the report was kept
    assert "transship: interrupted" in err and "Traceback" not in err, err
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True and doc["exitCode"] == 130, doc
    assert doc["shard"]["index"] == 1 and doc["shard"]["count"] == 1  # a shard says which
    status = {e["source"].split("/", 1)[1]: e["status"] for e in doc["entries"]}
    assert status == {
        "int/a-small:v1": "copied", "int/b-big:v1": "interrupted", "int/c-big:v1": "not-started"
    }, doc  # fmt: skip
    small = next(e for e in doc["entries"] if e["status"] == "copied")
    assert small["digest"] and small["bytes"] > 0
    assert doc["counts"]["imagesCopied"] == doc["counts"]["imagesInterrupted"] == 1
    assert doc["counts"]["imagesNotStarted"] == 1 and doc["counts"]["entries"] == 3
    assert doc["stats"]["manifestsPushed"] >= 1 and doc["stats"]["blobsSent"] >= 2
    assert_matches_summary(doc, err)  # the summary is still printed, and agrees
    assert not list(tmp_path.glob(".report.json.*")), "a temporary report was left behind"


def test_ctrl_c_during_a_save_leaves_its_report_too(
    plain_registry: RegistryProcess,
    make_fault_proxy,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The same for `save`: the one image saved is in the report, the one still being read is
    interrupted; the rerun resumes the archive (tested elsewhere), the report says what to."""
    seed_image(plain_registry, "sav/a-small", "v1", seed=720)
    big = build_image(721, layer_sizes=(3_000_000,))
    SeedClient.for_registry(plain_registry).push_image("sav/b-big", big, "v1")
    layer = max(big.pushable_blobs, key=lambda b: b.size).digest
    # the source behind a proxy whose own log says when b-big's layer is being read (the
    # registry logs a GET only once all of it is in socket buffers); it trickles that layer,
    # so the read lasts, whatever the machine's speed
    source = make_fault_proxy(
        plain_registry, Fault.trickle(300_000, rf"/v2/sav/b-big/blobs/{layer}", max_seconds=30)
    )
    refs = [source.ref(f"{name}:v1") for name in ("sav/a-small", "sav/b-big")]
    report = tmp_path / "save.json"
    args = [
        sys.executable, "-m", "transship", "save", "--images", str(listing(tmp_path, refs)),
        "-o", str(tmp_path / "layout"), "--parallel", "1", "--limit-rate", "500K", "-q",
        "--report", str(report),
    ]  # fmt: skip
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.finished is None for r in source.log("GET", f"/v2/sav/b-big/blobs/{layer}")):
            break  # a-small is saved (one image at a time), b-big's layer is being read
        time.sleep(0.01)
    assert proc.poll() is None, "the save ended before b-big's layer was read"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "transship: interrupted" in err and "Traceback" not in err, err
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True and doc["exitCode"] == 130, doc
    status = {e["source"].split("/", 1)[1]: e["status"] for e in doc["entries"]}
    assert status == {"sav/a-small:v1": "copied", "sav/b-big:v1": "interrupted"}, doc
    assert doc["stats"]["blobsSent"] >= 3 and doc["counts"]["entries"] == 2


def test_a_run_ending_in_any_error_writes_its_report_and_a_stale_one_never_stays(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """An earlier run's report is removed when the command starts, so one that stops before
    writing its own (here a plan that cannot be read) leaves none; and an error that is no
    transship error (a disk full while finishing) still writes the report, with the code
    the process exits with."""
    import errno

    from transship.commands.common import RunReport, execute
    from transship.connect import SideSettings

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"exitCode": 0}))
    bad = tmp_path / "plan.yaml"
    bad.write_text("entries: [not, a, plan\n")
    out = cli("copy", "--plan", str(bad), "--report", str(report))
    assert out.code == ExitCode.USAGE, out.err
    assert not report.exists(), "the earlier run's report passes for this one"

    async def full(_sources: object, _dests: object) -> list[Any]:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "SHA256SUMS"))

    written = RunReport(report)
    try:
        execute(full, SideSettings("src"), SideSettings("dest"), written)  # type: ignore[arg-type]
    except OSError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    doc = json.loads(report.read_text())
    assert doc["exitCode"] not in (0, None) and doc["entries"] == []
