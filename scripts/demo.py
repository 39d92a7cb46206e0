"""The main job end to end, against two registries this script starts on loopback.

Upstream: plain HTTP, no auth (stands in for projects.registry.vmware.com).
Internal: TLS with its own CA + htpasswd (stands in for Harbor behind a private CA).
Seeds the upstream with TKG-named images, copies them with `transship`, copies again (nothing
is sent), then checks every digest with skopeo, an independent client.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.pki import build_pki  # noqa: E402
from harness.registry import RegistryProcess  # noqa: E402
from harness.seed import seed_image, seed_index  # noqa: E402

TRANSSHIP = str(ROOT / ".venv" / "bin" / "transship")
IMAGES = [
    # (repository:tag, kind, format)
    ("tkg/antrea/antrea-debian:v1.2.3_vmware.4", "image", "docker"),
    ("tkg/kube-vip:v0.3.3_vmware.1", "image", "oci"),
    ("tkg/pause:3.5", "index", "oci"),
    ("tkg/cluster-api/cluster-api-controller:v1.0.1_vmware.1", "index", "docker"),
]


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(a if " " not in a else repr(a) for a in args), flush=True)
    proc = subprocess.run(args, env=env, text=True, capture_output=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"demo: command failed with exit code {proc.returncode}")
    return proc


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="transship-demo-"))
    pki = build_pki(work / "pki")
    say("starting an upstream registry (plain HTTP) and an internal one (TLS + password)")
    with (
        RegistryProcess(work / "upstream", "plain").start() as up,
        RegistryProcess(work / "internal", "tls_basic", pki=pki).start() as internal,
    ):
        print(f"upstream: {up.url}   internal: {internal.url} (CA {pki.ca_pem_path})")
        say("seeding the upstream with TKG-named images")
        for i, (name, kind, fmt) in enumerate(IMAGES):
            repo, tag = name.rsplit(":", 1)
            if kind == "index":
                seed_index(up, repo, tag, seed=100 + i, fmt=fmt)
            else:
                seed_image(up, repo, tag, seed=100 + i, fmt=fmt, layer_sizes=(2_000_000, 30_000))
            print(f"  {up.host}/{name}  ({kind}, {fmt})")

        # The CA as TKG takes it: base64 of the PEM on one line.
        ca_b64 = base64.b64encode(pki.ca_pem_path.read_bytes()).decode()
        env = dict(os.environ)
        env.update(
            TRANSSHIP_DEST_CREDS=f"{internal.username}:{internal.password}",
            TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE=ca_b64,
        )
        images = work / "images.txt"
        images.write_text("".join(f"{up.host}/{name}\n" for name, _k, _f in IMAGES))
        plan = work / "plan.yaml"
        dest = f"{internal.host}/tkg-mirror"
        say("plan: resolve every image to a digest, with sizes")
        run([TRANSSHIP, "plan", "images", str(images), "--dest", dest, "-o", str(plan)], env)
        say("is the internal registry's certificate right? (TKG's base64 CA from the environment)")
        run([TRANSSHIP, "ca", "check", internal.host], env)
        say("copy the whole plan: each blob once, concurrently")
        run([TRANSSHIP, "copy", "--plan", str(plan), "--report", str(work / "report.json")], env)
        say("copy again: nothing is sent, one HEAD per image")
        run([TRANSSHIP, "copy", "--plan", str(plan), "-q"], env)
        say("verify the destination against the plan")
        run([TRANSSHIP, "verify", "--plan", str(plan)], env)
        say("the settings for the tanzu CLI")
        run([TRANSSHIP, "tkg", "config", "--dest", dest, "--plan", str(plan)], env)

        say("checking every digest with skopeo (independent client)")
        certs = work / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(pki.ca_pem_path.read_bytes())
        for name, _kind, _fmt in IMAGES:
            src = subprocess.run(
                ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{up.host}/{name}"],
                capture_output=True,
                check=True,
            ).stdout
            dst = subprocess.run(
                [
                    "skopeo",
                    "inspect",
                    "--raw",
                    "--cert-dir",
                    str(certs),
                    "--creds",
                    f"{internal.username}:{internal.password}",
                    f"docker://{internal.host}/tkg-mirror/{name}",
                ],
                capture_output=True,
                check=True,
            ).stdout
            same = "identical" if src == dst else "DIFFERENT"
            print(f"  {name:60} sha256:{hashlib.sha256(dst).hexdigest()[:12]}  {same}")
            if src != dst:
                raise SystemExit("demo: digests differ")
        say("demo finished: every image is in the internal registry with its original digest")


if __name__ == "__main__":
    main()
