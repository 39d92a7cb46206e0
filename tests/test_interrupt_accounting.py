"""Ctrl-C of a transfer is neither a retry nor a refetch: `load` and `copy` interrupted while a
big blob streams (rate-limited) into a real TLS registry with credentials report what happened,
and the report agrees with the summary table."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clirunner import CLI
from harness.faultproxy import Fault
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import SeedClient, build_image, seed_image

from transship.progress import human_bytes

CREDS = "alice:s3cret-Pa55"
BIG = 12_000_000


def summary(err: str) -> dict[str, str]:
    """The summary table's rows: what -> value."""
    rows = {}
    for line in err.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def interrupt(args: list[str], dest: RegistryProcess, tmp_path: Path) -> tuple[int, str]:
    """Run transship, SIGINT it once the big blob has streamed for a while; (code, stderr)."""
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "transship", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if dest.requests("POST", r"/blobs/uploads/"):
            break
        time.sleep(0.02)
    time.sleep(2.0)  # about 2 MB of the big layer streamed, at 1M/s
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_no_phantom_retries(doc: dict[str, Any], err: str) -> None:
    assert "retrying blob" not in err, err  # the shutdown is not a failed attempt
    assert "Server disconnected" not in err, err
    assert "Traceback" not in err, err
    stats = doc["stats"]
    assert stats["retries"] == 0, doc
    assert stats["bytesRefetched"] == 0 and doc["bytes_refetched"] == 0, doc
    assert all(e["bytes_refetched"] == 0 for e in doc["entries"]), doc
    rows = summary(err)  # the summary printed at the interrupt says the same as the report
    assert rows["bytes sent"] == human_bytes(stats["bytesSent"]), err
    assert rows["bytes downloaded again"] == human_bytes(stats["bytesRefetched"]), err
    assert rows["blobs sent / mounted / already there"] == (
        f"{stats['blobsSent']} / {stats['blobsMounted']} / {stats['blobsPresent']}"
    ), err
    assert "retries" not in rows, err
    assert stats["bytesSent"] == sum(e["bytes"] for e in doc["entries"]), doc
    assert doc["interrupted"] is True and doc["exitCode"] == 130, doc
    assert [e["status"] for e in doc["entries"]] == ["interrupted"], doc


@pytest.mark.parametrize("command", ["load", "copy"])
def test_ctrl_c_mid_blob_counts_no_retry_and_no_refetch(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    pki: PKI,
    tmp_path: Path,
    command: str,
) -> None:
    image = build_image(720 if command == "load" else 721, layer_sizes=(BIG,))
    repo = f"intacc/{command}"
    SeedClient.for_registry(plain_registry).push_image(repo, image, "v1")
    listing = tmp_path / "images.txt"
    listing.write_text(plain_registry.ref(f"{repo}:v1") + "\n")
    dest = make_registry("tls_basic")
    report = tmp_path / "report.json"
    side = [
        "--dest",
        f"{dest.host}/far",
        "--dest-ca",
        str(pki.ca_pem_path),
        "--dest-creds",
        CREDS,
        "--limit-rate",
        "1M",
        "-v",
        "--report",
        str(report),
    ]
    if command == "load":
        archive = tmp_path / "big.tar"
        saved = cli("save", "--images", str(listing), "-o", str(archive), "-q")
        assert saved.code == 0, saved.err
        args = ["load", str(archive), *side]
    else:
        args = ["copy", "--images", str(listing), *side]
    code, err = interrupt(args, dest, tmp_path)
    assert code == 130, err
    doc = json.loads(report.read_text())
    assert_no_phantom_retries(doc, err)


def _interrupt_when(args: list[str], ready: Callable[[], bool], tmp_path: Path) -> tuple[int, str]:
    """Run transship, SIGINT it once `ready()` (a request it is stuck on); (code, stderr)."""
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "transship", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _assert_all_not_started(doc: dict[str, Any], err: str, expected: set[str]) -> None:
    assert doc["interrupted"] is True and doc["exitCode"] == 130, doc
    assert {e["destination"].split("/", 1)[1] for e in doc["entries"]} == expected, doc
    assert {e["status"] for e in doc["entries"]} == {"not-started"}, doc
    assert doc["counts"]["imagesNotStarted"] == doc["counts"]["entries"] == len(expected), doc
    assert doc["stats"]["bytesSent"] == 0 and doc["stats"]["blobsSent"] == 0, doc
    assert "transship: interrupted" in err and "Traceback" not in err, err
    rows = summary(err)  # the summary is printed as once the engine runs, and agrees
    assert rows["images copied / skipped / failed"] == "0 / 0 / 0", err
    assert rows["bytes sent"] == human_bytes(0), err


def test_ctrl_c_while_a_list_is_resolved_lists_every_image_not_started(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    make_fault_proxy,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """`copy --images` stopped while resolving the list (the source stalls a manifest): the
    engine never ran, yet the summary is printed and the report lists both images as
    not-started, as it lists what the engine had not started."""
    for i in range(2):
        seed_image(plain_registry, f"intpre/app{i}", "v1", seed=730 + i)
    source = make_fault_proxy(plain_registry, Fault.stall(30, "/v2/intpre/app1/manifests/", None))
    listing = tmp_path / "images.txt"
    listing.write_text("".join(source.ref(f"intpre/app{i}:v1") + "\n" for i in range(2)))
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    args = ["copy", "--images", str(listing), "--dest", f"{dest.host}/far",
            "--dest-plain-http", "--report", str(report)]  # fmt: skip

    def stuck() -> bool:
        return any(r.finished is None for r in source.log(None, "/intpre/app1/manifests/"))

    code, err = _interrupt_when(args, stuck, tmp_path)
    assert code == 130, err
    names = {"far/intpre/app0:v1", "far/intpre/app1:v1"}
    _assert_all_not_started(json.loads(report.read_text()), err, names)
    assert not dest.blob_uploads("far/intpre/app0") and not dest.blob_uploads("far/intpre/app1")


def test_ctrl_c_during_the_preflight_of_a_load_lists_every_image_not_started(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    make_fault_proxy,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """`load --preflight` stopped while the destination stalls the preflight's upload: the
    report lists the archive's images as not-started and the summary is printed."""
    refs = []
    for i in range(2):
        seed_image(plain_registry, f"intpf/app{i}", "v1", seed=740 + i)
        refs.append(plain_registry.ref(f"intpf/app{i}:v1"))
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    archive = tmp_path / "two.tar"
    saved = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert saved.code == 0, saved.err
    dest = make_fault_proxy(make_registry("plain"), Fault.stall(30, "/blobs/uploads/", "POST"))
    report = tmp_path / "report.json"
    args = ["load", str(archive), "--dest", f"{dest.host}/far", "--dest-plain-http",
            "--preflight", "--report", str(report)]  # fmt: skip

    def stuck() -> bool:
        return any(r.finished is None for r in dest.log("POST", "/blobs/uploads/"))

    code, err = _interrupt_when(args, stuck, tmp_path)
    assert code == 130, err
    names = {"far/intpf/app0:v1", "far/intpf/app1:v1"}
    _assert_all_not_started(json.loads(report.read_text()), err, names)


def test_ctrl_c_while_a_save_resolves_its_list_lists_every_image_not_started(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_fault_proxy,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """`save --images` stopped while resolving (before the archive is opened): every image is
    not-started, named as the save that then runs through names it in its report."""
    for i in range(2):
        seed_image(plain_registry, f"intsv/app{i}", "v1", seed=750 + i)
    source = make_fault_proxy(plain_registry, Fault.stall(30, "/v2/intsv/app1/manifests/", None))
    listing = tmp_path / "images.txt"
    listing.write_text("".join(source.ref(f"intsv/app{i}:v1") + "\n" for i in range(2)))
    out, report = tmp_path / "out.tar", tmp_path / "report.json"
    args = ["save", "--images", str(listing), "-o", str(out), "--report", str(report)]

    def stuck() -> bool:
        return any(r.finished is None for r in source.log(None, "/intsv/app1/manifests/"))

    code, err = _interrupt_when(args, stuck, tmp_path)
    assert code == 130, err
    doc = json.loads(report.read_text())
    assert {e["status"] for e in doc["entries"]} == {"not-started"}, doc
    assert doc["counts"]["imagesNotStarted"] == doc["counts"]["entries"] == 2, doc
    assert summary(err)["images copied / skipped / failed"] == "0 / 0 / 0", err
    source.clear()
    done = cli(*args, "-q")  # the rerun, not stopped: the same entries, saved
    assert done.code == 0, done.err
    saved = json.loads(report.read_text())
    assert {e["status"] for e in saved["entries"]} == {"copied"}, saved
    assert {e["destination"] for e in saved["entries"]} == {
        e["destination"] for e in doc["entries"]
    }, (saved, doc)


def test_ctrl_c_while_a_save_without_a_report_resolves_its_list_prints_the_summary(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_fault_proxy,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """`save --images` without `--report` stopped while resolving: the summary is printed
    all the same (whether a report is asked for changes nothing on the terminal)."""
    for i in range(2):
        seed_image(plain_registry, f"intsn/app{i}", "v1", seed=752 + i)
    source = make_fault_proxy(plain_registry, Fault.stall(30, "/v2/intsn/app1/manifests/", None))
    listing = tmp_path / "images.txt"
    listing.write_text("".join(source.ref(f"intsn/app{i}:v1") + "\n" for i in range(2)))
    out = tmp_path / "out.tar"
    args = ["save", "--images", str(listing), "-o", str(out)]

    def stuck() -> bool:
        return any(r.finished is None for r in source.log(None, "/intsn/app1/manifests/"))

    code, err = _interrupt_when(args, stuck, tmp_path)
    assert code == 130, err
    assert "transship: interrupted" in err and "Traceback" not in err, err
    rows = summary(err)
    assert rows.get("images copied / skipped / failed") == "0 / 0 / 0", err
    assert rows.get("bytes sent") == human_bytes(0), err
    assert rows.get("blobs sent / mounted / already there") == "0 / 0 / 0", err


IMGPKG_TARS = Path(__file__).parent / "data" / "imgpkg-tars"


@pytest.mark.parametrize("given", ["tar", "script"])
def test_ctrl_c_during_the_preflight_of_an_imgpkg_tar_load_lists_every_image_not_started(
    make_registry,  # type: ignore[no-untyped-def]
    make_fault_proxy,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    given: str,
) -> None:
    """`load TAR` and `load --script publish-images-fromtar.sh` (imgpkg tars) stopped while
    the destination stalls the preflight's upload: as for a `load` of an archive, the report
    lists the images as not-started and the summary is printed."""
    dest = make_fault_proxy(make_registry("plain"), Fault.stall(30, "/blobs/uploads/", "POST"))
    report = tmp_path / "report.json"
    side = ["--dest", f"{dest.host}/far", "--dest-plain-http", "--preflight",
            "--report", str(report)]  # fmt: skip
    if given == "tar":
        args = ["load", str(IMGPKG_TARS / "image-app-a.tar"), *side]
        repositories = {"far"}
    else:
        script = tmp_path / "publish-images-fromtar.sh"
        script.write_text(
            "imgpkg copy --tar image-app-a.tar --to-repo old.example/tkg/app/a\n"
            "imgpkg copy --tar index-app-multi.tar --to-repo old.example/tkg/app/multi\n"
        )
        args = ["load", "--script", str(script), "--tars", str(IMGPKG_TARS), *side]
        repositories = {"far/a", "far/multi"}  # the shared prefix is replaced

    def stuck() -> bool:
        return any(r.finished is None for r in dest.log("POST", "/blobs/uploads/"))

    code, err = _interrupt_when(args, stuck, tmp_path)
    assert code == 130, err
    doc = json.loads(report.read_text())
    assert {e["status"] for e in doc["entries"]} == {"not-started"}, doc
    found = {e["destination"].split("/", 1)[1].split(":")[0] for e in doc["entries"]}
    assert found == repositories, doc
    assert doc["interrupted"] is True and doc["exitCode"] == 130, doc
    assert "Traceback" not in err, err
    rows = summary(err)
    assert rows.get("images copied / skipped / failed") == "0 / 0 / 0", err
    assert rows.get("bytes sent") == human_bytes(0), err


def _blocked_on_a_fifo(pid: int) -> bool:
    """Some thread of `pid` waits in open(2) of a FIFO for a writer (Linux: its wchan)."""
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"):
        with contextlib.suppress(OSError):
            if wchan.read_text() == "wait_for_partner":
                return True
    return False


def test_ctrl_c_while_load_reads_its_archive_to_build_its_tasks_lists_every_image_not_started(
    cli: CLI,
    plain_registry: RegistryProcess,
    make_registry,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """`load` stopped while it reads the archive's manifests to size its tasks (one manifest
    file is a FIFO nobody writes, so the read waits there): nothing was pushed, and the
    report and summary list both images as not-started, exit 130, no traceback."""
    refs = []
    for i in range(2):
        seed_image(plain_registry, f"intld/app{i}", "v1", seed=760 + i)
        refs.append(plain_registry.ref(f"intld/app{i}:v1"))
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(refs) + "\n")
    archive = tmp_path / "two"
    saved = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert saved.code == 0, saved.err
    index = json.loads((archive / "index.json").read_text())
    named = next(m for m in index["manifests"] if "intld/app1" in json.dumps(m["annotations"]))
    manifest = archive / "blobs" / "sha256" / named["digest"].split(":")[1]
    manifest.unlink()
    os.mkfifo(manifest)
    dest = make_registry("plain")
    report = tmp_path / "report.json"
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "transship", "load", str(archive), "--dest", f"{dest.host}/far",
         "--report", str(report)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _blocked_on_a_fifo(proc.pid):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        # the stuck read is let go once the interrupt is accounted for (the summary printed),
        # or, when it is not, after a while, so the run can end and the test say what it lacks
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if any("images copied / skipped / failed" in line for line in lines):
                break
            time.sleep(0.02)
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(manifest, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the reader
        proc.wait(timeout=60)
        reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 130, err
    names = {"far/intld/app0:v1", "far/intld/app1:v1"}
    _assert_all_not_started(json.loads(report.read_text()), err, names)
    assert not dest.blob_uploads("far/intld/app0") and not dest.blob_uploads("far/intld/app1")
