"""Run skopeo as an independent witness (e.g. `inspect --raw` for exact manifest bytes).

skopeo runs with a scratch HOME/XDG_RUNTIME_DIR and an empty `--authfile` in a temp dir, so it
never reads or writes the user's credentials; trust comes only from `--cert-dir`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .registry import RegistryProcess, require_binary


@dataclass(frozen=True)
class Skopeo:
    """Callable: `skopeo(registry, "repo:tag") -> bytes` is `inspect --raw`."""

    workdir: Path
    binary: str

    @classmethod
    def create(cls, workdir: Path) -> Skopeo:
        binary = require_binary("skopeo")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "run").mkdir(mode=0o700, exist_ok=True)
        (workdir / "auth.json").write_text('{"auths": {}}\n')
        return cls(workdir=workdir, binary=binary)

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "XDG_RUNTIME_DIR": str(self.workdir / "run"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        }

    def transport_args(
        self, registry: RegistryProcess, *, anonymous: bool = False, prefix: str = ""
    ) -> list[str]:
        """TLS trust (`--cert-dir` or `--tls-verify=false`) and `--creds` for `registry`;
        `prefix="src-"`/`"dest-"` gives the `skopeo copy` spellings."""
        args = []
        if registry.cert_dir is not None:
            args += [f"--{prefix}cert-dir", str(registry.cert_dir)]
        else:
            args += [f"--{prefix}tls-verify=false"]
        creds = registry.credentials
        if creds and not anonymous:
            args += [f"--{prefix}creds", f"{creds[0]}:{creds[1]}"]
        return args

    @property
    def authfile_args(self) -> list[str]:
        """An empty private auth file, so skopeo never reads the user's credentials."""
        return ["--authfile", str(self.workdir / "auth.json")]

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `skopeo ARGS…`; raises with stderr on failure when `check`."""
        proc = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            env=self.env(),
            cwd=self.workdir,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"skopeo {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def inspect_raw(self, registry: RegistryProcess, ref: str, *, anonymous: bool = False) -> bytes:
        """Exact manifest bytes of `registry`'s `ref` ("repo:tag" or "repo@sha256:…")."""
        args = ["inspect", "--raw", *self.authfile_args]
        args += self.transport_args(registry, anonymous=anonymous)
        return self.run(*args, f"docker://{registry.ref(ref)}").stdout

    def copy(
        self,
        src: RegistryProcess,
        src_ref: str,
        dest: RegistryProcess,
        dest_ref: str,
        *extra: str,
        all_images: bool = True,
    ) -> None:
        """`skopeo copy [--all] --preserve-digests` between two harness registries."""
        args = ["copy", *self.authfile_args, "--preserve-digests"]
        if all_images:
            args.append("--all")
        args += self.transport_args(src, prefix="src-")
        args += self.transport_args(dest, prefix="dest-")
        args += [*extra, f"docker://{src.ref(src_ref)}", f"docker://{dest.ref(dest_ref)}"]
        self.run(*args, timeout=300)

    def digest(self, registry: RegistryProcess, ref: str) -> str:
        """sha256 of `inspect --raw` output: an independent manifest digest."""
        return "sha256:" + hashlib.sha256(self.inspect_raw(registry, ref)).hexdigest()

    def __call__(self, registry: RegistryProcess, ref: str, *, anonymous: bool = False) -> bytes:
        return self.inspect_raw(registry, ref, anonymous=anonymous)
