"""The Kubernetes Indexed Job in docs/kubernetes: it parses, has what Kubernetes needs, and
its shell line gives every pod a distinct `--shard I/N` that transship accepts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import click
import yaml

from transship.buildinfo import CA_BUNDLES
from transship.commands.copy import copy
from transship.commands.verify import verify
from transship.plan.shard import Shard

DOCS = Path(__file__).resolve().parent.parent / "docs" / "kubernetes"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def documents(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DOCS / name).read_text()) if d is not None]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert DNS_LABEL.fullmatch(doc["metadata"]["name"])
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    assert container["name"] and container["image"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def option_names(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in p.opts if opt.startswith("--")}


def transship_args(container: dict[str, Any], env: dict[str, str], tmp: Path) -> list[str]:
    """Run the container's shell line with a `transship` that prints its arguments, as the
    pod's /bin/sh would: the arithmetic and quoting are the shell's, not ours."""
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    script = fake / "transship"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    script.chmod(0o755)
    assert container["command"] == ["/bin/sh", "-c"]
    assert shlex.split(container["args"][0])[0] == "exec"  # transship is the pod's process
    out = subprocess.run(
        ["/bin/sh", "-c", container["args"][0]],
        env={"PATH": f"{fake}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def created(name: str) -> dict[tuple[str, str], set[str]]:
    """The objects the file's header says to make with `kubectl create`, and their keys:
    (kind, name) → keys (`--from-file=KEY=…`, `--from-literal=KEY=…`)."""
    header = " ".join(
        line[1:].strip().removesuffix("\\")
        for line in (DOCS / name).read_text().splitlines()
        if line.startswith("#")
    )
    out: dict[tuple[str, str], set[str]] = {}
    for command in re.findall(
        r"kubectl create (configmap \S+|secret generic \S+)([^#]*?)"
        r"(?=kubectl|$)",
        header,
    ):
        kind, _, obj = command[0].rpartition(" ")
        keys = set(re.findall(r"--from-(?:file|literal)=([^=\s]+)=", command[1]))
        out[("ConfigMap" if kind == "configmap" else "Secret", obj)] = keys
    return out


def check_mounts(
    pod: dict[str, Any],
    container: dict[str, Any],
    objects: dict[tuple[str, str], set[str]],
    args: list[str],
) -> None:
    """Every file an option names lies in a mounted volume whose ConfigMap or Secret key the
    documented `kubectl create` makes."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for arg in args:
        if not arg.startswith("/etc/"):
            continue
        directory, key = arg.rsplit("/", 1)
        volume = mounts[directory]
        if "configMap" in volume:
            assert key in objects[("ConfigMap", volume["configMap"]["name"])]
        else:
            paths = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
            assert paths.get(key, key) in objects[("Secret", volume["secret"]["secretName"])]


def test_the_indexed_job_has_what_kubernetes_needs_and_a_distinct_shard_per_pod(
    tmp_path: Path,
) -> None:
    docs = documents("transship-shards.yaml")
    (job,) = by_kind(docs, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    count = spec["completions"]
    assert isinstance(count, int) and 1 <= spec["parallelism"] <= count
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex requires it
    container = container_of(job)
    env = env_of(container)
    assert int(env["SHARDS"]["value"]) == count  # N is the number of completions
    secret_refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
    objects = created("transship-shards.yaml")
    for ref in secret_refs:  # a required Secret key is made by the documented kubectl create
        assert ref.get("optional") or ref["key"] in objects[("Secret", ref["name"])]
    assert "TRANSSHIP_DEST_CREDS" in env

    shards = []
    for index in range(count):  # what each pod runs
        pod_env = {"JOB_COMPLETION_INDEX": str(index), "SHARDS": str(count)}
        args = transship_args(container, pod_env, tmp_path)
        assert args[0] == "copy"
        assert {a for a in args if a.startswith("--")} <= option_names(copy)
        shards.append(Shard.parse(args[args.index("--shard") + 1]))
        check_mounts(pod, container, objects, args)
    assert sorted((s.index, s.count) for s in shards) == [(i, count) for i in range(1, count + 1)]


def test_applying_the_job_keeps_the_plan_and_credentials_kubectl_create_made() -> None:
    """The header says `kubectl create` the plan's ConfigMap and the credentials' Secret, then
    `kubectl apply -f` this file: an object of the same name in the file would be patched over
    the real one (the placeholder plan has no entries, so every shard and the verify Job of the
    whole plan passed having copied nothing; the CA and password became CHANGE-ME)."""
    objects = created("transship-shards.yaml")
    assert ("ConfigMap", "transship-plan") in objects and ("Secret", "transship-dest") in objects
    for name in ("transship-shards.yaml", "transship-verify.yaml"):
        defined = {(d["kind"], d["metadata"]["name"]) for d in documents(name)}
        assert not defined & objects.keys(), defined


def test_the_verify_job_checks_the_whole_plan_from_the_same_configmap(tmp_path: Path) -> None:
    (job,) = by_kind(documents("transship-verify.yaml"), "Job")
    assert job["spec"].get("completionMode", "NonIndexed") == "NonIndexed"
    container = container_of(job)
    args = transship_args(container, {}, tmp_path)
    assert args[0] == "verify" and "--shard" not in args  # the whole plan, not a part
    assert {a for a in args if a.startswith("--")} <= option_names(verify)
    check_mounts(job["spec"]["template"]["spec"], container, created("transship-shards.yaml"), args)


def test_the_image_has_a_ca_bundle_for_public_sources() -> None:
    """The pods copy from public registries over TLS: the single file trusts the system's
    roots (`buildinfo.CA_BUNDLES`), and debian:12-slim has none until ca-certificates is
    installed (every public source was an unknown authority)."""
    lines = (DOCS / "Containerfile").read_text().splitlines()
    steps = " ".join(
        line.strip().removesuffix("\\") for line in lines if not line.lstrip().startswith("#")
    )
    (base,) = re.findall(r"\bFROM\s+(\S+)", steps)
    if base.split("/")[-1].startswith("debian:"):
        assert re.search(r"\bRUN\b[^A-Z]*apt-get install\b[^A-Z]*\bca-certificates\b", steps), steps
        assert "/etc/ssl/certs/ca-certificates.crt" in CA_BUNDLES  # where Debian puts it
